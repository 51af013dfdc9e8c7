"""Where the PyTorch loss spends its time above the kernel floor, by elimination (Table 1 shapes,
paired, one process):

* ``kernel floor``: the work any implementation must do (see :mod:`benchmarks.loss`);
* ``core``: the compiled core alone on fresh uniform candidate ids (no sampler, no hit mask,
  no argument checks, no log Q);
* ``core + sampler module``: the same with candidates drawn by ``LogUniformSampler`` (the
  sampler module, NumPy on the CPU): what the general path pays for a draw;
* ``ours, no hit removal`` and ``ours sparse``: the whole public call, without and with
  accidental-hit removal (the draw, hit mask and log Q compiled with the loss);
* ``tf.nn``, for scale.

    python -m benchmarks.overhead [--threads N]
"""

from __future__ import annotations

import argparse
import sys

from .harness import paired, paired_ratio, summarize
from .loss import TABLE1, tf_methods, torch_methods


def run(*, repeats=40, block=10, seed=0) -> dict:
    import torch

    from sampled_softmax.torch import LogUniformSampler, compiled_core, compiled_core_status, sampled_softmax_loss

    ext = compiled_core()
    if ext is None:
        raise SystemExit(f"the compiled core is unavailable: {compiled_core_status()}")
    core = ext.sampled_softmax_core
    V, S, B = TABLE1["V"], TABLE1["S"], TABLE1["B"]
    fast, _, _, (W, b, h, y) = torch_methods(**TABLE1, seed=seed, with_full=False)
    g = torch.Generator().manual_seed(seed + 2)
    sampler = LogUniformSampler(V)
    no_log_q, no_hits = torch.zeros(B + S), torch.empty(0, dtype=torch.bool)
    softmax = 0  # the compiled core's softmax head (csrc/common.h, HeadKind::kSoftmax)

    def reset():
        W.grad = b.grad = h.grad = None

    def core_only():
        ids = torch.cat([y, torch.randint(V, (S,), generator=g)])
        core(h, W, b, ids, no_log_q, no_hits, softmax, True).sum().backward()
        reset()

    def core_and_sampler():
        cand, _, _ = sampler(y[:, None], S, generator=g)
        core(h, W, b, torch.cat([y, cand]), no_log_q, no_hits, softmax, True).sum().backward()
        reset()

    def ours_without_hit_removal():
        sampled_softmax_loss(W, b, y, h, S, V, sparse=True, generator=g, remove_accidental_hits=False).sum().backward()
        reset()

    methods = {"kernel floor": fast["kernel floor"], "core": core_only, "core + sampler module": core_and_sampler,
               "ours, no hit removal": ours_without_hit_removal, "ours sparse": fast["ours sparse"]}
    tf_steps = tf_methods(W, b, h, y, S, V, seed)
    if tf_steps is not None:
        methods["tf.nn"] = tf_steps["tf.nn"]
    samples = paired(methods, repeats=repeats, block=block)
    return {"summary": summarize(samples),
            "over_floor": {m: paired_ratio(samples, m, "kernel floor") for m in samples},
            "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    res = run()
    print(f"{'method':<22} {'median ms':>10} {'x floor':>8}   (torch threads {res['threads']})")
    for m, s in res["summary"].items():
        print(f"{m:<22} {s['median_ms']:>10.3f} {res['over_floor'][m]:>7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
