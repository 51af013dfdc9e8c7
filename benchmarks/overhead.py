"""Where the PyTorch loss spends its time above the kernel floor, by elimination (Table 1 shapes,
paired, one process):

* ``kernel floor``: the work any implementation must do (see :mod:`benchmarks.loss`);
* ``core``: the compiled core alone on fresh uniform candidate ids (no sampler, no hit mask,
  no argument checks, no log Q);
* ``core + sampler module``: the same with candidates drawn by ``LogUniformSampler`` (the
  sampler module, NumPy on the CPU): what the general path pays for a draw;
* ``ours, no hit removal`` and ``ours sparse``: the whole public call, without and with
  accidental-hit removal (the draw, hit mask and log Q compiled with the loss);
* ``compiled work, no autograd``: what ``ours sparse`` computes, by the same compiled calls
  (draw and hit mask, forward, backward with the gradient of ``sum``), without an autograd
  graph and without the public function's argument handling;
* ``autograd alone``: no arithmetic, only what any autograd loss of this signature costs per
  call: a ``torch.autograd.Function`` of ``(h, W, b)`` whose forward returns a ``[B]`` loss and
  whose backward returns uninitialised gradients of our shapes (``d_h`` dense, ``W``'s and
  ``b``'s as sparse rows), the sum's backward, and the three gradients accumulated and freed.
  The floor plus this is the least any autograd loss on these kernels can cost;
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

    from sampled_softmax.samplers import unique_draw_limit
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

    draw = (S, int(ext.DISTRIBUTION["log_uniform"]), int(ext.DRAW["unique"]), g, True, True)
    hd, Wd, bd = h.detach(), W.detach(), b.detach()
    ones = torch.ones(B)

    def compiled_work():
        ids, log_q, hits = ext.sampled_columns(hd, Wd, y, *draw, None, unique_draw_limit(S), [])
        _, act, rows = ext.core_forward(hd, Wd, bd, ids, log_q, hits, softmax)
        ext.core_backward(ones, hd, rows, ids, act, softmax, True, True, True)

    rows_ids = torch.arange(B + S).unsqueeze(0)

    class NoArithmetic(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h, W, b):
            return h.new_empty(B)

        @staticmethod
        def backward(ctx, grad):
            return (h.new_empty(B, h.shape[1]),
                    torch.sparse_coo_tensor(rows_ids, W.new_empty(B + S, W.shape[1]), W.shape, check_invariants=False),
                    torch.sparse_coo_tensor(rows_ids, b.new_empty(B + S), b.shape, check_invariants=False))

    def autograd_alone():
        NoArithmetic.apply(h, W, b).sum().backward()
        reset()

    methods = {"kernel floor": fast["kernel floor"], "core": core_only, "core + sampler module": core_and_sampler,
               "ours, no hit removal": ours_without_hit_removal, "ours sparse": fast["ours sparse"],
               "compiled work, no autograd": compiled_work, "autograd alone": autograd_alone}
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
    print(f"{'method':<28} {'median ms':>10} {'x floor':>8}   (torch threads {res['threads']})")
    for m, s in res["summary"].items():
        print(f"{m:<28} {s['median_ms']:>10.3f} {res['over_floor'][m]:>7.2f}x")
    print(f"least any autograd loss can cost: 1 + autograd alone = {1 + res['over_floor']['autograd alone']:.2f}x "
          "the floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
