"""Run by test_keras_distributed.py in a process of its own (TensorFlow's logical devices must be
set before anything runs): under a MirroredStrategy of 2 CPU replicas, the Keras layer's
evaluate, its fit with SGD, Adam and sample weights, and a custom step on the tf.nn drop-in
with Keras's Adam equal one device's. Prints one JSON line: for each case the largest absolute
difference from one device, and the size of the update it is compared against."""

import json
import os
import sys


def main():
    # Set before TensorFlow starts (this file is imported by pytest's doctest collection too,
    # where nothing may be set: everything happens here).
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["SAMPLED_SOFTMAX_NO_COMPILE"] = "1"
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    from sampled_softmax.keras import SampledSoftmax
    from sampled_softmax.tensorflow import nn as stf

    V, D, S, B = 30, 4, 6, 8
    rng = np.random.default_rng(0)
    X = rng.integers(0, 20, size=(3 * B,)).astype(np.int32)
    Y = np.concatenate([[1, 1, 2, 3, 7, 7, 7, 9], rng.integers(0, V, size=2 * B)]).astype(np.int32)
    WEIGHT = rng.uniform(0.2, 2.0, size=3 * B).astype(np.float32)
    EMB0 = rng.normal(size=(20, D)).astype(np.float32)
    TABLE0 = rng.normal(size=(V, D)).astype(np.float32)
    BIAS0 = rng.normal(size=V).astype(np.float32)
    STRATEGY = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


    def _model(optimizer):
        inputs = keras.Input((), dtype="int32")
        embedding = keras.layers.Embedding(20, D)
        head = SampledSoftmax(V, S, sampler="uniform", seed=3)
        model = keras.Model(inputs, head(embedding(inputs)))
        model.compile(optimizer=optimizer, loss=head.loss, metrics=[head.metric("perplexity"), head.metric("accuracy")])
        embedding.embeddings.assign(EMB0)
        head.kernel.assign(TABLE0)
        head.bias.assign(BIAS0)
        return model, head


    def _dataset(weighted):
        parts = (X, Y, WEIGHT) if weighted else (X, Y)
        return tf.data.Dataset.from_tensor_slices(parts).batch(B)


    def keras_case(optimizer, weighted=False):
        """The table after 3 steps of fit, and evaluate's loss, on one device and on 2 replicas."""
        out = {}
        for where in ("one", "mirrored"):
            scope = STRATEGY.scope() if where == "mirrored" else tf.device("/cpu:0")
            with scope:
                model, head = _model(keras.optimizers.get({"class_name": optimizer, "config": {"learning_rate": 0.1}}))
            evaluated = model.evaluate(_dataset(weighted), verbose=0, return_dict=True)
            history = model.fit(_dataset(weighted), epochs=1, verbose=0, shuffle=False).history
            out[where] = (np.asarray(head.kernel.numpy()), evaluated, {k: v[-1] for k, v in history.items()})
        (table1, eval1, fit1), (table2, eval2, fit2) = out["one"], out["mirrored"]
        return {"table": float(np.abs(table1 - table2).max()), "moved": float(np.abs(table1 - TABLE0).max()),
                "evaluate": max(abs(eval1[k] - eval2[k]) / max(abs(eval1[k]), 1e-3) for k in eval1),
                "fit_logs": max(abs(fit1[k] - fit2[k]) / max(abs(fit1[k]), 1e-3) for k in fit1),
                "evaluate_one": eval1}


    def drop_in_case():
        """A custom step: the drop-in's loss over the global batch, Keras's Adam on its gradients."""
        cand = np.array([1, 7, 12, 20, 25, 29], np.int64)  # 1 and 7 are labels too: accidental hits
        h_all = rng.normal(size=(B, D)).astype(np.float32)
        out = {}
        for where in ("one", "mirrored"):
            strategy = STRATEGY if where == "mirrored" else tf.distribute.OneDeviceStrategy("/cpu:0")
            with strategy.scope():
                table, bias = tf.Variable(TABLE0), tf.Variable(BIAS0)
                optimizer = keras.optimizers.Adam(0.1)
                optimizer.build([table, bias])

            def step(h, y):
                sv = (tf.constant(cand), tf.fill([tf.shape(h)[0], 1], 0.3),
                      tf.constant(np.linspace(0.1, 0.6, S), tf.float32))
                with tf.GradientTape() as tape:
                    per_row = stf.sampled_softmax_loss(table, bias, y[:, None], h, S, V, sampled_values=sv)
                    loss = tf.reduce_sum(per_row) / B  # the global batch's mean, summed over replicas
                grads = tape.gradient(loss, [table, bias])
                optimizer.apply_gradients(zip(grads, [table, bias]))

            data = tf.data.Dataset.from_tensor_slices((h_all, Y[:B].astype(np.int64))).batch(B)
            for _ in range(3):
                for h, y in strategy.experimental_distribute_dataset(data):
                    strategy.run(tf.function(step), args=(h, y))
            out[where] = table.numpy()
        return {"table": float(np.abs(out["one"] - out["mirrored"]).max()),
                "moved": float(np.abs(out["one"] - TABLE0).max())}

    results = {"sgd": keras_case("SGD"), "adam": keras_case("Adam"), "weighted": keras_case("SGD", weighted=True),
               "drop_in_adam": drop_in_case()}
    print(json.dumps(results))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
