"""The JAX front end: Table 1's loss forward+backward under ``jax.jit`` against ``tf.nn`` (in a
``tf.function``, IndexedSlices gradients) and the Keras layer on the JAX backend, paired in one
process; and a training step with the lazy Adam at V=10k and V=1M, interleaved (is it flat in V?).

    python -m benchmarks.jax_bench [--repeats 30] [--vocabs 10000,1000000]

Methods (gradients of weights, biases and inputs of the summed loss, Table 1 shapes
``V=100k, S=100, D=300, B=256``, log-uniform candidates drawn in the call):

* ``ours jax rows``: :func:`sampled_softmax.jax.sparse.value_and_row_grads` (the table's gradient
  as the ``B + S`` gathered rows');
* ``ours jax dense``: ``jax.value_and_grad`` of :func:`sampled_softmax.jax.sampled_softmax_loss`
  with respect to the table (a dense ``[V, D]`` gradient, what plain autodiff gives);
* ``ours jax rows vjp``: the same row gradients with stages 2 and 3 under a hand-written
  ``jax.custom_vjp`` (:func:`custom_vjp_rows`: the backward reuses the forward's softmax and
  forms ``(p - target) @ rows`` and ``(p - target)^T h`` directly), the experiment that decides
  whether the front end needs one;
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


def custom_vjp_rows(W, b, y, h, S, V, key):
    """``(loss, (d rows, d bias rows, d h))`` of the summed sampled softmax loss (``num_true=1``)
    with a hand-written VJP of the corrected logits and the softmax head."""
    import jax
    import jax.numpy as jnp

    from sampled_softmax.jax.functional import _stage1, corrected_logits, softmax_target

    c = _stage1(W, b, y, h, num_sampled=S, num_classes=V, num_true=1, sampled_values=None,
                remove_accidental_hits=True, key=key, sampler="log_uniform", draw=None, ignore_index=None,
                subtract_log_q=True, exclude_true=False, reduction="sum")
    target = softmax_target(c.keep, 1, 0.0, h.dtype)

    @jax.custom_vjp
    def head(h, rows, bias_rows):
        return fwd(h, rows, bias_rows)[0]

    def fwd(h, rows, bias_rows):
        o = corrected_logits(h, rows, bias_rows, c.log_q, c.keep, 1)
        lse = jax.nn.logsumexp(o, axis=1)
        loss = jnp.sum(lse - jnp.sum(target * jnp.where(c.keep, o, 0.0), axis=1))
        return loss, (h, rows, jnp.exp(o - lse[:, None]))

    def bwd(res, g):
        h, rows, p = res
        n = h.shape[0]
        G = g * (p - target)  # removed columns: p = 0 and target = 0
        d_true = G[:, :1] * h  # [N, D], one label per row
        d_cand = G[:, 1:].T @ h  # [S, D]
        dh = G[:, :1] * rows[:n] + G[:, 1:] @ rows[n:]
        return dh, jnp.concatenate([d_true, d_cand]), jnp.concatenate([G[:, 0], G[:, 1:].sum(0)])

    head.defvjp(fwd, bwd)
    rows, bias_rows = jnp.take(W, c.ids, axis=0), jnp.take(b, c.ids)
    return jax.value_and_grad(head, argnums=(1, 2, 0))(c.h, rows, bias_rows)


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

    vjp = jax.jit(functools.partial(custom_vjp_rows, y=y, S=S, V=V))
    methods = {
        "ours jax rows": lambda: jax.block_until_ready(rows(W, b, h, next(keys))),
        "ours jax rows vjp": lambda: jax.block_until_ready(vjp(W, b, h=h, key=next(keys))),
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

        layer = SampledSoftmax(V, S, sampler="log_uniform", seed=seed)  # as tf.nn
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


def step_times(vocabs, D=300, B=256, S=100, repeats=30, seed=0) -> dict:
    """Median seconds of a jitted training step at each vocabulary in ``vocabs``, two ways:
    ``"lazy_adam"`` (loss and row gradients, ``lazy_adam``, ``apply_row_updates`` of a donated
    table) and ``"fused"`` (``value_and_table_step`` with ``row_adam``, table and state donated).
    All steps interleaved round by round, so that a drift of the machine affects them alike.
    Returns ``{(V, method): seconds}``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sampled_softmax.jax.sparse import apply_row_updates, lazy_adam, value_and_row_grads
    from sampled_softmax.jax.table_optim import row_adam, value_and_table_step

    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.normal(size=(B, D)).astype(np.float32))
    opt, fused_opt = lazy_adam(1e-3), row_adam(1e-3)
    runs = {}
    for V in vocabs:
        y = jnp.asarray(rng.integers(0, V, (B, 1)))

        @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
        def step(W, b, state, key, y=y, V=V):
            loss, grads = value_and_row_grads(W, b, y, h, S, V, key=key)
            w_updates, w_state = opt.update(grads.weights, state[0])
            b_updates, b_state = opt.update(grads.biases, state[1])
            return apply_row_updates(W, w_updates), apply_row_updates(b, b_updates), (w_state, b_state), loss

        @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
        def fused_step(W, b, state, key, y=y, V=V):
            loss, s = value_and_table_step(fused_opt, state, W, b, y, h, S, V, key=key)
            return s.weights, s.biases, s.state, loss

        for method, fn in (("lazy_adam", step), ("fused", fused_step)):
            W = jnp.asarray(rng.normal(size=(V, D)).astype(np.float32) * 0.05)
            b = jnp.zeros(V, jnp.float32)
            state = (opt.init(W), opt.init(b)) if method == "lazy_adam" else fused_opt.init(W, b)
            runs[(V, method)] = [fn, W, b, state]
    keys = jax.random.split(jax.random.key(seed), repeats + 3)
    times = {k: [] for k in runs}
    for i in range(repeats + 3):
        for k, run in runs.items():
            start = time.perf_counter()
            run[1], run[2], run[3], loss = run[0](run[1], run[2], run[3], keys[i])
            jax.block_until_ready(loss)
            times[k].append(time.perf_counter() - start)
    return {k: float(np.median(t[3:])) for k, t in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--vocabs", default="10000,1000000")
    args = ap.parse_args(argv)
    shape = TABLE1
    samples = paired(loss_methods(shape["V"], shape["S"], shape["D"], shape["B"]), repeats=args.repeats, block=5)
    lines = [f"Table 1 shapes {shape}, forward+backward, median ms (paired, {args.repeats} rounds)"]
    lines += [f"  {m:<20} {s['median_ms']:>9.3f}" for m, s in summarize(samples).items()]
    for other in ("ours jax rows vjp", "tf.nn", "ours jax dense", "keras jax layer"):
        if other in samples:
            lines.append(f"  {other} / ours jax rows: {paired_ratio(samples, other, 'ours jax rows'):.2f}x")
    vocabs = [int(v) for v in args.vocabs.split(",") if v]
    steps = step_times(vocabs, repeats=args.repeats)
    lines.append("training step (B=256, S=100, D=300, table and bias), median ms: lazy_adam | fused row_adam")
    lines += [f"  V={V:>9,}: {steps[(V, 'lazy_adam')] * 1e3:.3f} | {steps[(V, 'fused')] * 1e3:.3f}  "
              f"(lazy_adam / fused {steps[(V, 'lazy_adam')] / steps[(V, 'fused')]:.2f}x)" for V in vocabs]
    if len(vocabs) > 1:
        for method in ("lazy_adam", "fused"):
            lines.append(f"  {method}: V={vocabs[-1]:,} / V={vocabs[0]:,}: "
                         f"{steps[(vocabs[-1], method)] / steps[(vocabs[0], method)]:.2f} (goal: at most 1.5)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
