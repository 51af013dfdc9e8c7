"""In-batch softmax with mixed negatives: forward+backward time and peak memory, ours against
what users write today, paired in one process; and the frequency estimator's update against a
step.

    python -m benchmarks.retrieval [--repeats 10] [--batch 4096 --dim 128 --extra 4096]

Methods (``B`` queries, ``C = B + M`` candidates, ids with accidental hits, ``log_q`` given,
temperature 0.05; gradients of the query and candidate embeddings):

* ``ours``: :func:`sampled_softmax.torch.in_batch_softmax_loss` (one ``[B, C]`` buffer);
* ``torch cross_entropy``: ``q @ c.T / t - log_q``, hits masked with ``masked_fill(-inf)``,
  ``F.cross_entropy(logits, arange(B))`` (what users write with PyTorch);
* ``ours tf``: :func:`sampled_softmax.tensorflow.in_batch_softmax_loss` in a ``tf.function``,
  ``GradientTape`` (also paired against the next);
* ``tfrs-style tf``: TFRS' ``Retrieval`` steps in TensorFlow (``matmul`` / temperature,
  ``- log p``, hits pushed to the float minimum, ``CategoricalCrossentropy`` against
  ``eye(B, C)``) in a ``tf.function``, ``GradientTape``.

Peak memory: each method in fresh processes (median of 3), the resident high-water mark of two
forward+backward calls beyond what was resident after a first one (``VmHWM - VmRSS``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .harness import median_memory_run, paired, paired_ratio, summarize

METHODS = ("ours", "torch cross_entropy", "ours tf", "tfrs-style tf")
SHAPE = dict(B=4096, D=128, M=4096)
TEMPERATURE = 0.05


def _data(B, D, M, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    C = B + M
    q = (rng.normal(size=(B, D)) / np.sqrt(D)).astype(np.float32)
    c = (rng.normal(size=(C, D)) / np.sqrt(D)).astype(np.float32)
    ids = rng.zipf(1.3, size=C) % 100_000  # popular items repeat: accidental hits
    log_q = np.log(rng.uniform(1e-4, 0.5, size=C)).astype(np.float32)
    return q, c, ids, log_q


def methods(shape=SHAPE, seed=0, only=METHODS) -> dict:
    q, c, ids, log_q = _data(shape["B"], shape["D"], shape["M"], seed)
    B = shape["B"]
    out = {}
    if {"ours", "torch cross_entropy"} & set(only):
        import torch
        import torch.nn.functional as F

        from sampled_softmax.torch import in_batch_softmax_loss

        tq, tc = torch.from_numpy(q).requires_grad_(), torch.from_numpy(c).requires_grad_()
        tids, tlq = torch.from_numpy(ids), torch.from_numpy(log_q)
        target = torch.arange(B)
        eye = torch.eye(B, tc.shape[0], dtype=torch.bool)

        def ours():
            tq.grad = tc.grad = None
            in_batch_softmax_loss(tq, tc, candidate_ids=tids, log_q=tlq, temperature=TEMPERATURE).backward()

        def cross_entropy():
            tq.grad = tc.grad = None
            logits = tq @ tc.T / TEMPERATURE - tlq
            hits = (tids[None, :] == tids[:B, None]) & ~eye
            F.cross_entropy(logits.masked_fill(hits, float("-inf")), target).backward()

        out.update({"ours": ours, "torch cross_entropy": cross_entropy})
    if {"ours tf", "tfrs-style tf"} & set(only):
        try:
            import tensorflow as tf
        except ImportError:
            return {k: v for k, v in out.items() if k in only}
        fq, fc = tf.Variable(q), tf.Variable(c)
        fids, flq = tf.constant(ids), tf.constant(log_q)
        labels = tf.eye(B, c.shape[0])
        xent = tf.keras.losses.CategoricalCrossentropy(from_logits=True, reduction="sum")

        @tf.function
        def tfrs_step():
            with tf.GradientTape() as tape:
                scores = tf.linalg.matmul(fq, fc, transpose_b=True) / TEMPERATURE
                scores = scores - flq
                duplicate = tf.cast(tf.equal(fids[:B, None], fids[None, :]), scores.dtype) - labels
                scores = scores + duplicate * scores.dtype.min
                loss = xent(labels, scores) / B
            return tape.gradient(loss, [fq, fc])

        out["tfrs-style tf"] = lambda: [g.numpy() for g in tfrs_step()]

        from sampled_softmax.tensorflow import in_batch_softmax_loss as tf_in_batch_softmax_loss

        @tf.function
        def ours_tf_step():
            with tf.GradientTape() as tape:
                loss = tf_in_batch_softmax_loss(fq, fc, candidate_ids=fids, log_q=flq, temperature=TEMPERATURE)
            return tape.gradient(loss, [fq, fc])

        out["ours tf"] = lambda: [g.numpy() for g in ours_tf_step()]
    return {k: v for k, v in out.items() if k in only}


def measure_memory(method: str, shape: dict) -> dict:
    """Peak resident memory of two forward+backward calls beyond the state after a first."""
    from .harness import peak_extra_mb

    step = methods(shape, only=(method,)).get(method)
    if step is None:
        return {"method": method, "skipped": "not installed"}
    return {"method": method, "peak_extra_mb": peak_extra_mb(step)}


def estimator_cost(shape=SHAPE, repeats=20) -> dict:
    """Median ms of ``StreamingFrequency(2**22)`` and ``CountMinFrequency(2**22)`` on ``C`` ids."""
    import statistics

    import torch

    from sampled_softmax.torch import CountMinFrequency, StreamingFrequency

    _, _, ids, _ = _data(shape["B"], shape["D"], shape["M"])
    ids = torch.from_numpy(ids)
    out = {}
    for est in (StreamingFrequency(1 << 22), CountMinFrequency(1 << 22)):
        times = []
        for _ in range(repeats + 2):
            t0 = time.perf_counter()
            est(ids)
            times.append(time.perf_counter() - t0)
        out[type(est).__name__] = statistics.median(times[2:]) * 1e3
    return out


def run(repeats=10, shape=SHAPE, memory=True, only=METHODS) -> dict:
    samples = paired(methods(shape, only=only), repeats=repeats, block=3)
    summary = summarize(samples)
    ratios = {f"{m} / ours": paired_ratio(samples, m, "ours") for m in samples if m != "ours" and "ours" in samples}
    if {"ours tf", "tfrs-style tf"} <= set(samples):
        ratios["tfrs-style tf / ours tf"] = paired_ratio(samples, "tfrs-style tf", "ours tf")
    mem = {m: median_memory_run(["-m", "benchmarks.retrieval", "--memory", m, "--shape", json.dumps(shape)])
           for m in samples} if memory else {}
    return {"shape": shape, "summary": summary, "ratios": ratios, "memory": mem, "estimator_ms": estimator_cost(shape)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--batch", type=int, default=SHAPE["B"])
    ap.add_argument("--dim", type=int, default=SHAPE["D"])
    ap.add_argument("--extra", type=int, default=SHAPE["M"])
    ap.add_argument("--memory", help=argparse.SUPPRESS)  # one method's peak, in a fresh process
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory:
        print(json.dumps(measure_memory(args.memory, json.loads(args.shape))))
        return 0
    shape = dict(B=args.batch, D=args.dim, M=args.extra)
    res = run(args.repeats, shape)
    lines = [f"in-batch softmax, B={shape['B']}, D={shape['D']}, C=B+{shape['M']}, forward+backward "
             f"(paired, {args.repeats} rounds): median ms, peak MB beyond the inputs"]
    for m, s in res["summary"].items():
        peak = res["memory"].get(m, {}).get("peak_extra_mb")
        lines.append(f"  {m:<22} {s['median_ms']:>9.1f} ms  " + (f"{peak:>8.1f} MB" if peak is not None else ""))
    lines += [f"  {m}: {r:.2f}x" for m, r in res["ratios"].items()]
    step = res["summary"]["ours"]["median_ms"]
    lines += [f"  estimator update + log_q on the C ids: {name} {ms:.2f} ms ({100 * ms / step:.1f}% of ours' step)"
              for name, ms in res["estimator_ms"].items()]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
