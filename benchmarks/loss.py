"""Loss forward+backward at Skorski's Table 1 (V=100k, S=100, D=300, B=256), paired.

Every method draws its own candidates each call with the same semantics (log-uniform, unique
like TensorFlow) and computes the gradients of weights, biases and inputs:

* ``ours sparse`` / ``ours dense``: ``sampled_softmax.torch.sampled_softmax_loss``.
* ``tf.nn``: ``tf.nn.sampled_softmax_loss`` inside ``tf.function`` (IndexedSlices gradients).
* ``ours tf``: ``sampled_softmax.tensorflow.sampled_softmax_loss``, the same sampler op.
* ``ours tf xla``: the same loss with its TF-op log-uniform sampler (``unique_exact``), the
  whole step under ``jit_compile=True``.
* ``hand dense``: what users write from blog posts: index a dense ``[V, D]`` Parameter,
  concatenate logits, mask hits with a large negative, ``F.cross_entropy``.
* ``hand sparse``: the same through ``F.embedding(..., sparse=True)``.
* ``full softmax``: ``F.cross_entropy(h @ W.T + b)`` (few repeats: it is slow).
* ``tf full softmax``: the same in TensorFlow (``sparse_softmax_cross_entropy_with_logits``).
* ``kernel floor``: not a usable loss but the work any implementation on these BLAS kernels
  must do, in the fewest eager PyTorch calls: gather the ``B + S`` rows (fresh uniform ids each
  call, no sampler), the three ``[B, D] x [D, S]``-sized matrix products, one log-softmax and
  its exp. No sampling, checks, masking or gradient assembly. ``tf.nn / kernel floor`` bounds
  the speed-up any implementation built on these kernels can reach over ``tf.nn``.
* ``tf kernel floor``: the same work in TensorFlow, one XLA-compiled function.
"""

from __future__ import annotations

import numpy as np

from .harness import paired, paired_ratio, summarize

TABLE1 = dict(V=100_000, S=100, D=300, B=256)


def torch_methods(V, S, D, B, seed, *, with_full=True):
    import torch
    import torch.nn.functional as F

    from sampled_softmax.torch import LogUniformSampler, sampled_softmax_loss

    g = torch.Generator().manual_seed(seed)
    W = torch.nn.Parameter(torch.randn(V, D, generator=g).mul_(0.05))  # in place: one table in memory
    b = torch.nn.Parameter(torch.zeros(V))
    b_col = torch.nn.Parameter(torch.zeros(V, 1))  # a sparse embedding's bias is a [V, 1] table
    h = torch.randn(B, D, generator=g, requires_grad=True)
    y = torch.randint(V, (B,), generator=g)
    sampler = LogUniformSampler(V)

    def reset():
        W.grad = b.grad = b_col.grad = h.grad = None

    # Each method frees its own gradients (as zero_grad(set_to_none=True) does): freeing a
    # dense [V, D] gradient is part of a dense method's cost, not of the method after it.
    def ours(sparse):
        def run():
            sampled_softmax_loss(W, b, y, h, S, V, sparse=sparse, generator=g).sum().backward()
            reset()
        return run

    def hand(sparse):
        def run():
            cand, tc, sc = sampler(y[:, None], S, generator=g)
            ids = torch.cat([y, cand])
            if sparse:
                rows, bias = F.embedding(ids, W, sparse=True), F.embedding(ids, b_col, sparse=True)[:, 0]
            else:
                rows, bias = W[ids], b[ids]
            true_logits = (h * rows[:B]).sum(1, keepdim=True) + bias[:B, None] - tc.log()
            samp_logits = h @ rows[B:].t() + bias[B:] - sc.log()
            samp_logits = samp_logits.masked_fill(y[:, None] == cand, -1e9)
            logits = torch.cat([true_logits, samp_logits], 1)
            F.cross_entropy(logits, torch.zeros(B, dtype=torch.long), reduction="sum").backward()
            reset()
        return run

    def full():
        F.cross_entropy(F.linear(h, W, b), y, reduction="sum").backward()
        reset()

    Wd, bd, hd = W.detach(), b.detach(), h.detach()
    g_floor = torch.Generator().manual_seed(seed + 1)

    def kernel_floor():
        ids = torch.randint(V, (B + S,), generator=g_floor)
        rows, bias = Wd.index_select(0, ids), bd.index_select(0, ids)
        w_true, w_cand = rows.split([B, S])
        logits = torch.cat([torch.linalg.vecdot(hd, w_true).unsqueeze_(1),
                            torch.addmm(bias[B:].unsqueeze(0), hd, w_cand.t())], 1)
        p = torch.log_softmax(logits, 1).exp_()
        g_cand = p[:, 1:]
        torch.addmm(w_true * p[:, :1], g_cand, w_cand)  # d inputs
        g_cand.t().mm(hd)  # d candidate rows

    fast = {"ours sparse": ours(True), "hand sparse": hand(True), "kernel floor": kernel_floor}
    dense = {"ours sparse": fast["ours sparse"], "ours dense": ours(False), "hand dense": hand(False)}
    return fast, dense, (full if with_full else None), (W, b, h, y)


def tf_methods(W, b, h, y, S, V, seed):
    """``tf.nn`` and this library's TensorFlow front end, each as a ``tf.function`` computing the
    gradients of weights, biases and inputs; None without TensorFlow."""
    try:
        import tensorflow as tf
    except ImportError:
        return None
    from sampled_softmax import tensorflow as sst

    tf.random.set_seed(seed)
    tW, tb = tf.Variable(W.detach().numpy()), tf.Variable(b.detach().numpy())
    th, ty = tf.constant(h.detach().numpy()), tf.constant(y.numpy()[:, None])
    gen = tf.random.Generator.from_seed(seed)

    def make(loss_fn, jit=False, sampler=None):
        @tf.function(jit_compile=jit)
        def step():
            with tf.GradientTape() as tape:
                tape.watch(th)
                sv = None if sampler is None else sampler()
                loss = tf.reduce_sum(loss_fn(tW, tb, ty, th, S, V, sampled_values=sv))
            return tape.gradient(loss, [tW, tb, th])
        return step

    @tf.function
    def full_softmax():
        with tf.GradientTape() as tape:
            tape.watch(th)
            logits = tf.matmul(th, tW, transpose_b=True) + tb
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(ty[:, 0], logits))
        return tape.gradient(loss, [tW, tb, th])

    B = int(th.shape[0])
    floor_gen = tf.random.Generator.from_seed(seed + 1)

    @tf.function(jit_compile=True)
    def kernel_floor():
        # The torch kernel floor's work in one XLA computation (see the module docstring).
        ids = floor_gen.uniform((B + S,), 0, V, dtype=tf.int64)
        rows, bias = tf.gather(tW, ids), tf.gather(tb, ids)
        w_true, w_cand = rows[:B], rows[B:]
        logits = tf.concat([tf.reduce_sum(th * w_true, 1, keepdims=True),
                            tf.matmul(th, w_cand, transpose_b=True) + bias[B:]], 1)
        p = tf.nn.softmax(logits)
        g_cand = p[:, 1:]
        return tf.matmul(g_cand, w_cand) + w_true * p[:, :1], tf.matmul(g_cand, th, transpose_a=True)

    return {
        "tf kernel floor": kernel_floor,
        "tf full softmax": full_softmax,
        "tf.nn": make(tf.nn.sampled_softmax_loss),
        "ours tf": make(sst.sampled_softmax_loss),
        # Its own samplers in TF ops: sampling and loss in one XLA computation.
        "ours tf xla": make(sst.sampled_softmax_loss, jit=True,
                            sampler=lambda: sst.log_uniform_candidate_sampler(ty, S, V, generator=gen)),
    }


def run(*, repeats=30, block=10, seed=0, quick=False, shape=None, progress=None, fast_only=False):
    """Paired loss timings; ``fast_only`` leaves out the dense-gradient and full-softmax methods."""
    shape = dict(shape or TABLE1)
    if quick:
        repeats, block = min(repeats, 8), min(block, 4)
    fast, dense, full, tensors = torch_methods(**shape, seed=seed, with_full=not (quick or fast_only))
    tf_steps = tf_methods(*tensors, shape["S"], shape["V"], seed)
    skipped = []
    tf_full = None
    if tf_steps is not None:
        tf_full = tf_steps.pop("tf full softmax")
        fast.update(tf_steps)
    else:
        skipped.append("tf.nn and sampled_softmax.tensorflow (tensorflow not installed)")
    # Two groups: dense-gradient methods evict the caches of whatever runs after them.
    samples = paired(fast, repeats=repeats, block=block, progress=progress)
    dense_samples = None
    if not fast_only:
        dense_samples = paired(dense, repeats=max(5, repeats // 3), warmup=2, block=max(2, block // 3))
        for name in ("ours dense", "hand dense"):
            samples[name] = dense_samples[name]
    if full is not None:
        slow = {"full softmax": full} if tf_full is None else {"full softmax": full, "tf full softmax": tf_full}
        samples.update(paired(slow, repeats=max(3, repeats // 20), warmup=1))
    summary = summarize(samples)
    ratios = {}
    for other in ("tf.nn", "hand sparse"):
        if other in samples:
            ratios[f"{other} / ours sparse"] = paired_ratio(samples, other, "ours sparse")
    if "tf.nn" in samples:
        ratios["tf.nn / kernel floor (the most any implementation on these kernels can gain)"] = paired_ratio(
            samples, "tf.nn", "kernel floor")
        ratios["tf.nn / tf kernel floor"] = paired_ratio(samples, "tf.nn", "tf kernel floor")
        ratios["ours tf xla / tf kernel floor"] = paired_ratio(samples, "ours tf xla", "tf kernel floor")
    ratios["ours sparse / kernel floor"] = paired_ratio(samples, "ours sparse", "kernel floor")
    for ours_tf in ("ours tf", "ours tf xla"):
        if ours_tf in samples:
            ratios[f"tf.nn / {ours_tf}"] = paired_ratio(samples, "tf.nn", ours_tf)
    if dense_samples is not None:
        for other in ("hand dense", "ours dense"):
            ratios[f"{other} / ours sparse"] = paired_ratio(dense_samples, other, "ours sparse")
    for name in ("full softmax", "tf full softmax"):
        if name in summary:
            ratios[f"{name} / ours sparse (unpaired medians)"] = (
                summary[name]["median_ms"] / summary["ours sparse"]["median_ms"])
    flops = 6 * shape["B"] * shape["S"] * shape["D"]
    return {"case": shape, "kind": "fwd+bwd", "repeats": repeats, "block": block, "summary": summary, "ratios": ratios,
            "skipped": skipped, "flops_6BSD": flops}


def matmul_rate(seconds=1.0):
    """The machine's float32 matrix-multiply rate at Table 1's shapes (FLOP/s), for the lower bound."""
    import time

    import torch

    a, w = torch.randn(256, 300), torch.randn(100, 300)
    for _ in range(20):
        a @ w.t()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ w.t()
        n += 1
    return 2 * 256 * 300 * 100 * n / (time.perf_counter() - t0)


def format_rows(result) -> list[str]:
    lines = [f"{'method':<16} {'median ms':>10} {'q1':>8} {'q3':>8}"]
    for name, s in sorted(result["summary"].items(), key=lambda kv: kv[1]["median_ms"]):
        lines.append(f"{name:<16} {s['median_ms']:>10.3f} {s['q1_ms']:>8.3f} {s['q3_ms']:>8.3f}")
    for name, r in result["ratios"].items():
        lines.append(f"  {name}: {r:.2f}x")
    return lines


if __name__ == "__main__":  # pragma: no cover
    res = run()
    print("\n".join(format_rows(res)))
    print("lower bound fraction", np.round(res["flops_6BSD"] / matmul_rate() * 1e3 / res["summary"]["ours sparse"]["median_ms"], 3))
