"""A Keras ``fit`` step (``train_on_batch``: forward, backward, Adam) of the classic language
model ``Embedding(V, 256) -> LSTM(1024, return_sequences=True) -> output``, with
``SampledSoftmax(V, S)`` (with Keras' ``Adam`` and with the library's ``LazyAdam``, which updates
only the rows a sparse gradient touches) against ``Dense(V, activation="softmax")`` with
``Adam``, on each Keras backend.

Each backend runs in its own subprocess (Keras fixes its backend at import):

    python -m benchmarks.keras_fit [--quick] [--backends tensorflow,jax,torch]
"""

from __future__ import annotations

import argparse
import json
import sys

FULL = dict(V=100_000, B=32, T=32, embed=256, hidden=1024, S=1024, repeats=3)
QUICK = dict(V=20_000, B=16, T=16, embed=64, hidden=128, S=256, repeats=3)
SMOKE = dict(V=500, B=4, T=4, embed=8, hidden=8, S=16, repeats=1)
METHODS = ("SampledSoftmax + LazyAdam", "SampledSoftmax", "Dense softmax")
# The same LazyAdam model with a near-free output layer (2000 classes, 8 candidates): what the
# rest of the model (embedding lookup, LSTM, its Adam update) costs, a floor under any output
# layer's step.
FLOOR = "LazyAdam at V=2000, S=8"
FLOOR_V, FLOOR_S = 2000, 8


def _model(method: str, shape: dict):
    import keras

    from sampled_softmax.keras import LazyAdam, SampledSoftmax

    keras.utils.set_random_seed(0)
    V = shape["V"]
    sampled = method.startswith("SampledSoftmax")
    head = (SampledSoftmax(V, shape["S"], sampler="log_uniform", seed=0) if sampled  # as tf.nn
            else keras.layers.Dense(V, activation="softmax"))
    model = keras.Sequential([keras.Input((shape["T"],), dtype="int32"), keras.layers.Embedding(V, shape["embed"]),
                              keras.layers.LSTM(shape["hidden"], return_sequences=True), head])
    loss = head.loss if sampled else "sparse_categorical_crossentropy"
    model.compile(optimizer=LazyAdam() if method.endswith("LazyAdam") else "adam", loss=loss)
    return model


def measure(shape: dict) -> dict:
    """In this process (its ``KERAS_BACKEND``): paired per-step seconds of both methods."""
    import numpy as np

    from benchmarks import harness  # the child runs from the checkout's root (see `run`)

    rng = np.random.default_rng(0)
    x = rng.integers(0, shape["V"], (shape["B"], shape["T"])).astype("int32")
    y = rng.integers(0, shape["V"], (shape["B"], shape["T"])).astype("int32")
    models = {m: _model(m, shape) for m in METHODS}
    steps = {m: (lambda model=model: model.train_on_batch(x, y)) for m, model in models.items()}
    floor_shape = dict(shape, V=min(FLOOR_V, shape["V"]), S=min(FLOOR_S, shape["S"]))
    floor = _model("SampledSoftmax + LazyAdam", floor_shape)
    steps[FLOOR] = lambda: floor.train_on_batch(x % floor_shape["V"], y % floor_shape["V"])
    samples = harness.paired(steps, repeats=shape["repeats"], warmup=2)
    import keras

    return {"backend": keras.backend.backend(), "shape": shape, "samples_s": samples,
            "summary": harness.summarize(samples),
            "dense_over_sampled": harness.paired_ratio(samples, "Dense softmax", "SampledSoftmax"),
            "dense_over_lazy": harness.paired_ratio(samples, "Dense softmax", "SampledSoftmax + LazyAdam"),
            "dense_over_floor": harness.paired_ratio(samples, "Dense softmax", FLOOR)}


def run(*, quick=False, smoke=False, backends=("tensorflow", "jax", "torch"), progress=None) -> dict:
    shape = SMOKE if smoke else (QUICK if quick else FULL)
    from benchmarks import harness

    results = harness.per_backend("benchmarks.keras_fit", shape, backends, progress=progress)
    return {"case": {k: v for k, v in shape.items() if k != "repeats"}, "backends": results}


def format_rows(res: dict) -> list[str]:
    rows = [f"{'backend':<11} {'Sampled+LazyAdam ms':>20} {'Sampled+Adam ms':>16} {'Dense+Adam ms':>14} "
            f"{'dense/lazy':>11} {'dense/sampled':>14} {'floor ms':>9} {'dense/floor':>12}"]
    for r in res["backends"]:
        if "skipped" in r:
            rows.append(f"{r['backend']:<11} skipped: {r['skipped']}")
            continue
        s = r["summary"]
        rows.append(f"{r['backend']:<11} {s['SampledSoftmax + LazyAdam']['median_ms']:>20.1f} "
                    f"{s['SampledSoftmax']['median_ms']:>16.1f} {s['Dense softmax']['median_ms']:>14.1f} "
                    f"{r['dense_over_lazy']:>10.1f}x {r['dense_over_sampled']:>13.1f}x "
                    f"{s[FLOOR]['median_ms']:>9.1f} {r['dense_over_floor']:>11.1f}x")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--backends", default="tensorflow,jax,torch")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return 0
    res = run(quick=args.quick, backends=tuple(args.backends.split(",")))
    print("\n".join(format_rows(res)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
