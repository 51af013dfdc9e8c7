"""The JAX front end: Table 1's loss forward+backward under ``jax.jit`` against ``tf.nn`` (in a
``tf.function``, IndexedSlices gradients) and the Keras layer on the JAX backend, paired in one
process; and a training step with the lazy Adam at V=10k and V=1M (is it flat in V?).

    python -m benchmarks.jax_bench [--repeats 30] [--vocabs 10000,1000000]

Methods (gradients of weights, biases and inputs of the summed loss, Table 1 shapes
``V=100k, S=100, D=300, B=256``, log-uniform candidates drawn in the call):

* ``ours jax rows``: :func:`sampled_softmax.jax.sparse.value_and_row_grads` (the table's gradient
  as the ``B + S`` gathered rows');
* ``ours jax dense``: ``jax.value_and_grad`` of :func:`sampled_softmax.jax.sampled_softmax_loss`
  with respect to the table (a dense ``[V, D]`` gradient, what plain autodiff gives);
* ``tf.nn``: ``tf.nn.sampled_softmax_loss``;
* ``keras jax layer``: ``SampledSoftmax.sampled_loss`` under ``jax.jit`` (Keras on JAX), gradients
  by ``jax.value_and_grad`` through ``keras.StatelessScope``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

from .harness import paired, paired_ratio, summarize
from .loss import TABLE1


def loss_methods(V, S, D, B, seed=0):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sampled_softmax.jax import sampled_softmax_loss
    from sampled_softmax.jax.sparse import value_and_row_grads

    rng = np.random.default_rng(seed)
    W = jnp.asarray(rng.normal(size=(V, D)).astype(np.float32) * 0.05)
    b = jnp.zeros(V, jnp.float32)
    h = jnp.asarray(rng.normal(size=(B, D)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, V, (B, 1)))
    keys = iter(jax.random.split(jax.random.key(seed), 1_000_000))

    @jax.jit
    def rows(W, b, h, key):
        return value_and_row_grads(W, b, y, h, S, V, key=key, reduction="sum")

    @jax.jit
    def dense(W, b, h, key):
        return jax.value_and_grad(lambda W, b, h: jnp.sum(sampled_softmax_loss(W, b, y, h, S, V, key=key)),
                                  argnums=(0, 1, 2))(W, b, h)

    methods = {
        "ours jax rows": lambda: jax.block_until_ready(rows(W, b, h, next(keys))),
        "ours jax dense": lambda: jax.block_until_ready(dense(W, b, h, next(keys))),
    }
    try:
        import tensorflow as tf

        tW, tb = tf.Variable(np.asarray(W)), tf.Variable(np.asarray(b))
        th, ty = tf.constant(np.asarray(h)), tf.constant(np.asarray(y))

        @tf.function
        def tf_nn():
            with tf.GradientTape() as tape:
                tape.watch(th)
                loss = tf.reduce_sum(tf.nn.sampled_softmax_loss(tW, tb, ty, th, S, V))
            return tape.gradient(loss, [tW, tb, th])

        methods["tf.nn"] = lambda: [g.values.numpy() if hasattr(g, "values") else g.numpy() for g in tf_nn()]
    except ImportError:
        pass
    if os.environ.get("KERAS_BACKEND") == "jax":
        import keras

        from sampled_softmax.keras import SampledSoftmax

        layer = SampledSoftmax(V, S, seed=seed)
        layer.build((None, D))
        variables = [layer.kernel, layer.bias]

        @jax.jit
        def keras_step(values, hv, seed_state):
            def total(values, hv):
                mapping = list(zip(variables, values)) + [(layer.seed_generator.state, seed_state)]
                with keras.StatelessScope(state_mapping=mapping):
                    return jnp.sum(layer.sampled_loss(y, hv))
            return jax.value_and_grad(total, argnums=(0, 1))(values, hv)

        values = [v.value for v in variables]
        seed_state = layer.seed_generator.state.value
        methods["keras jax layer"] = lambda: jax.block_until_ready(keras_step(values, h, seed_state))
    return methods


def step_time(V, D=300, B=256, S=100, repeats=30, seed=0) -> float:
    """Median seconds of a jitted training step (loss, row gradients, lazy Adam, in-place update
    of a donated table) at vocabulary ``V``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sampled_softmax.jax.sparse import apply_row_updates, lazy_adam, value_and_row_grads

    rng = np.random.default_rng(seed)
    W = jnp.asarray(rng.normal(size=(V, D)).astype(np.float32) * 0.05)
    b = jnp.zeros(V, jnp.float32)
    h = jnp.asarray(rng.normal(size=(B, D)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, V, (B, 1)))
    opt = lazy_adam(1e-3)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(W, state, key):
        loss, grads = value_and_row_grads(W, b, y, h, S, V, key=key)
        updates, state = opt.update(grads.weights, state)
        return apply_row_updates(W, updates), state, loss

    state = opt.init(W)
    keys = jax.random.split(jax.random.key(seed), repeats + 3)
    times = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        W, state, loss = step(W, state, keys[i])
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - start)
    times = sorted(times[3:])
    return times[len(times) // 2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--vocabs", default="10000,1000000")
    args = ap.parse_args(argv)
    shape = TABLE1
    samples = paired(loss_methods(shape["V"], shape["S"], shape["D"], shape["B"]), repeats=args.repeats, block=5)
    lines = [f"Table 1 shapes {shape}, forward+backward, median ms (paired, {args.repeats} rounds)"]
    lines += [f"  {m:<20} {s['median_ms']:>9.3f}" for m, s in summarize(samples).items()]
    for other in ("tf.nn", "ours jax dense", "keras jax layer"):
        if other in samples:
            lines.append(f"  {other} / ours jax rows: {paired_ratio(samples, other, 'ours jax rows'):.2f}x")
    vocabs = [int(v) for v in args.vocabs.split(",") if v]
    steps = {V: step_time(V, repeats=args.repeats) for V in vocabs}
    lines.append("training step with lazy_adam (B=256, S=100, D=300), median ms:")
    lines += [f"  V={V:>9,}: {t * 1e3:.3f}" for V, t in steps.items()]
    if len(vocabs) > 1:
        lines.append(f"  V={vocabs[-1]:,} / V={vocabs[0]:,}: {steps[vocabs[-1]] / steps[vocabs[0]]:.2f} "
                     f"(goal: at most 1.5)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
