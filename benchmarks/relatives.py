"""NCE and negative sampling against the sampled softmax loss (Table 1 shapes, forward and
backward with sparse gradients, paired in one process): what the compiled path of the relatives
pays. Each loss on the compiled core (``auto``: the draw and the loss in one call) and on the
Python path (``... python``); word2vec's per-example noise (``negative sampling per example``,
``k = 5`` unigram noise words per example) likewise; ``tf.nn.nce_loss`` and ours in TensorFlow
with the same sampler op, for scale.

    python -m benchmarks.relatives [--repeats 30]
"""

from __future__ import annotations

import argparse
import sys

from .harness import paired, paired_ratio, summarize
from .loss import TABLE1


def run(*, repeats=30, block=10, seed=0, shape=None) -> dict:
    import torch

    from sampled_softmax.torch import UnigramSampler, nce_loss, negative_sampling_loss, sampled_softmax_loss

    shape = shape or TABLE1
    V, S, D, B = shape["V"], shape["S"], shape["D"], shape["B"]
    g = torch.Generator().manual_seed(seed)
    W = torch.nn.Parameter(torch.randn(V, D, generator=g).mul_(0.05))
    b = torch.nn.Parameter(torch.zeros(V))
    h = torch.randn(B, D, generator=g, requires_grad=True)
    y = torch.randint(V, (B,), generator=g)

    def step(loss_fn, num_sampled=S, **kw):
        def run_once():
            loss_fn(W, b, y, h, num_sampled, V, sparse=True, generator=g, **kw).sum().backward()
            W.grad = b.grad = h.grad = None
        return run_once

    counts = 1.0 / torch.arange(1, V + 1, dtype=torch.float64)  # Zipf, as words
    unigram = UnigramSampler(V, counts, distortion=0.75, draw="with_replacement")

    def per_example(**kw):
        return step(negative_sampling_loss, sampler=unigram, noise="per_example", remove_accidental_hits=True,
                    num_sampled=5, **kw)

    methods = {
        "ours sampled softmax": step(sampled_softmax_loss),
        "ours sampled softmax python": step(sampled_softmax_loss, implementation="python"),
        "ours nce": step(nce_loss),
        "ours nce python": step(nce_loss, implementation="python"),
        "ours negative sampling": step(negative_sampling_loss),
        "ours negative sampling python": step(negative_sampling_loss, implementation="python"),
        "ours per example": per_example(),
        "ours per example python": per_example(implementation="python"),
    }
    try:
        import tensorflow as tf

        from sampled_softmax import tensorflow as sst

        Wt, bt = tf.Variable(W.detach().numpy()), tf.Variable(b.detach().numpy())
        ht, yt = tf.Variable(h.detach().numpy()), tf.constant(y.numpy()[:, None])

        def tf_step(fn):
            def run_once():
                with tf.GradientTape() as tape:
                    loss = tf.reduce_sum(fn(Wt, bt, yt, ht, S, V))
                tape.gradient(loss, [Wt, bt, ht])
            return run_once

        methods["tf.nn.nce_loss"] = tf_step(tf.nn.nce_loss)
        methods["ours tf nce"] = tf_step(sst.nce_loss)
    except ImportError:
        pass
    samples = paired(methods, repeats=repeats, block=block)
    ratios = {f"{m} / ours sampled softmax": paired_ratio(samples, m, "ours sampled softmax") for m in samples}
    for m in samples:  # what the compiled path pays, loss by loss
        if m.endswith(" python"):
            ratios[f"{m} / {m[:-len(' python')]}"] = paired_ratio(samples, m, m[:-len(" python")])
    if "tf.nn.nce_loss" in samples:
        ratios["tf.nn.nce_loss / ours nce"] = paired_ratio(samples, "tf.nn.nce_loss", "ours nce")
        ratios["tf.nn.nce_loss / ours tf nce"] = paired_ratio(samples, "tf.nn.nce_loss", "ours tf nce")
    return {"case": shape, "summary": summarize(samples), "ratios": ratios}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args(argv)
    res = run(repeats=args.repeats)
    lines = [f"{'method':<32} {'median ms':>10}"]
    lines += [f"{m:<32} {s['median_ms']:>10.3f}" for m, s in res["summary"].items()]
    lines += [f"  {name}: {r:.2f}x" for name, r in res["ratios"].items()]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
