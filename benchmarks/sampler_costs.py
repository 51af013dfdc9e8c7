"""What the sampler choices of issue 22 cost a training step, paired in one process.

The vocabulary-order check (:mod:`sampled_softmax.order_check`) at Table 1's shapes
(``V=100k``, ``S=100``, ``D=300``, ``B=256``):

* PyTorch ``sampled_softmax_loss`` (log-uniform, forward and backward, sparse row gradients,
  as the library's recipe trains) with the check counting
  every call (reset before each: the most it costs, paid only in the first steps) against the
  same call once the verdict is given (nothing runs);
* a jitted JAX step (the loss and its gradient with respect to the inputs) traced while the
  check was pending (its ``jax.debug.callback`` stays in the
  compiled step and returns at once after the verdict: what such a step pays for good) against
  one traced after the verdict (no callback).

The default sampler of the output layers against log-uniform: a PyTorch ``SampledSoftmax``
step (``sparse=True``, forward and backward) at ``V=1M``, ``D=128``, ``B=256``, ``S=8192`` with
``LearnedUnigramSampler`` (an ``O(V)`` cumulative table per draw) and with ``LogUniformSampler``.

    python -m benchmarks.sampler_costs [--repeats 30]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from .harness import paired, paired_ratio, summarize
from .loss import TABLE1


def torch_methods(V, S, D, B, seed=0):
    import torch

    from sampled_softmax import order_check as OC
    from sampled_softmax.torch import sampled_softmax_loss

    rng = np.random.default_rng(seed)
    W = torch.from_numpy(rng.normal(size=(V, D)).astype(np.float32)).requires_grad_()
    b = torch.zeros(V, requires_grad=True)
    h = torch.from_numpy(rng.normal(size=(B, D)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, V, size=B))
    g = torch.Generator().manual_seed(seed)

    def step():
        W.grad = b.grad = None
        sampled_softmax_loss(W, b, y, h, S, V, generator=g, sparse=True).sum().backward()

    def counting():
        OC.reset()  # the check pending: this call counts its labels
        step()

    def decided():
        check = OC.order_check("torch", V, "")
        check.pending = False  # as after the verdict
        step()

    return {"torch, check counting": counting, "torch, after the verdict": decided}


def jax_methods(V, S, D, B, seed=0):
    import warnings

    import jax
    import jax.numpy as jnp

    from sampled_softmax import order_check as OC
    from sampled_softmax.jax import sampled_softmax_loss

    rng = np.random.default_rng(seed)
    W = jnp.asarray(rng.normal(size=(V, D)).astype(np.float32))
    b = jnp.zeros(V)
    h = jnp.asarray(rng.normal(size=(B, D)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, V, size=B))

    def loss(h, key):
        return sampled_softmax_loss(W, b, y, h, S, V, key=key).sum()

    OC.reset()
    with_callback = jax.jit(jax.value_and_grad(loss))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with_callback(h, jax.random.key(0))  # traced while pending
        jax.effects_barrier()
    OC.order_check("jax", V, "").pending = False
    without = jax.jit(jax.value_and_grad(loss))  # traced after the verdict
    keys = iter(jax.random.split(jax.random.key(1), 100_000))

    def run(fn):
        return lambda: jax.block_until_ready(fn(h, next(keys)))

    return {"jax, callback compiled in": run(with_callback), "jax, no callback": run(without)}


LARGE = dict(V=1_000_000, D=128, B=256, S=8192)


def default_sampler_methods(V, D, B, S, seed=0):
    import torch

    from sampled_softmax.torch import LearnedUnigramSampler, LogUniformSampler, SampledSoftmax

    torch.manual_seed(seed)
    h = torch.randn(B, D)
    y = torch.from_numpy(np.random.default_rng(seed).zipf(1.1, size=B) % V)
    methods = {}
    for name, sampler in (("torch V=1M, learned_unigram", LearnedUnigramSampler(V)),
                          ("torch V=1M, log_uniform", LogUniformSampler(V))):
        layer = SampledSoftmax(D, V, S, sampler=sampler, sparse=True)

        def step(layer=layer):
            layer.weight.grad = layer.bias.grad = None
            layer(h, y).loss.backward()

        methods[name] = step
    return methods


def run(repeats=30, shape=TABLE1, large=LARGE) -> dict:
    methods = {}
    methods.update(torch_methods(**shape))
    try:
        methods.update(jax_methods(**shape))
    except ImportError:
        pass
    if large:
        methods.update(default_sampler_methods(**large))
    samples = paired(methods, repeats=repeats, block=5)
    ratios = {"torch: counting / after the verdict": paired_ratio(samples, "torch, check counting",
                                                                  "torch, after the verdict")}
    if "jax, no callback" in samples:
        ratios["jax: callback / none"] = paired_ratio(samples, "jax, callback compiled in", "jax, no callback")
    if large:
        ratios["torch V=1M: learned_unigram / log_uniform"] = paired_ratio(
            samples, "torch V=1M, learned_unigram", "torch V=1M, log_uniform")
    return {"shape": shape, "large": large, "summary": summarize(samples), "ratios": ratios}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args(argv)
    res = run(args.repeats)
    print(f"forward+backward, paired, {args.repeats} rounds: the order check at Table 1 shapes {res['shape']}; "
          f"the default sampler at {res['large']}")
    for m, s in res["summary"].items():
        print(f"  {m:<32} {s['median_ms']:>8.3f} ms")
    for m, r in res["ratios"].items():
        print(f"  {m}: {r:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
