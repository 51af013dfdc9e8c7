"""Vocabulary-parallel sampled softmax on 1, 2 and 4 processes (``gloo`` on this machine's CPU
cores): step time, per-rank memory of the class table and its optimizer state, and the bytes
each rank hands to the collectives per step, against the formula and against Megatron-style
exact vocabulary-parallel cross-entropy; then the formula projected to GPU clusters.

    python -m benchmarks.distributed [--vocab 1000000 10000000] [--ranks 1 2 4] [--dim 64]
        [--batch 1024] [--sampled 1024] [--steps 8] [--out benchmarks/study_results/distributed.json]

Each rank holds ``VocabParallelSampledSoftmax(dim, V, S, sparse=True)`` (log-uniform draws: a
learned sampler adds ``8 V`` bytes of counts on every rank) trained by ``SparseRowAdam``; the
``N = batch`` hidden states and labels are the same on every rank. Step: forward, backward and
the optimizer step, median over ``--steps`` after two warm-up steps, timed on rank 0 between
barriers. Memory: the bytes of the shard, its bias and the optimizer's state tensors (exact),
and the process's resident high-water mark (``VmHWM``, which includes PyTorch itself). The
processes share this machine's cores (``torch.set_num_threads(max(1, cores // P))``): with more
ranks than cores the step time measures contention, not scaling.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import tempfile
import time

from .harness import environment


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rank(rank, world, directory, vocab, dim, batch, sampled, steps):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(directory, 'rendezvous')}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=600))
    from sampled_softmax.torch import SparseRowAdam
    from sampled_softmax.torch.distributed import CollectiveBytes, VocabParallelSampledSoftmax

    torch.manual_seed(0)
    head = VocabParallelSampledSoftmax(dim, vocab, sampled, sampler="log_uniform", sparse=True)
    optimizer = SparseRowAdam(head.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(batch, dim, generator=g).requires_grad_()
    labels = torch.randint(vocab, (batch,), generator=g)
    draws = torch.Generator().manual_seed(2)

    def step():
        loss = head(h, labels, generator=draws).loss
        optimizer.zero_grad(set_to_none=True)
        h.grad = None
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        dist.barrier()
        start = time.perf_counter()
        step()
        dist.barrier()
        times.append(time.perf_counter() - start)
    with CollectiveBytes() as sent:
        step()
    state = sum(t.numel() * t.element_size() for p in head.parameters()
                for t in [p] + [v for v in optimizer.state[p].values() if torch.is_tensor(v)])
    row = {"rank": rank, "step_ms": statistics.median(times) * 1e3, "table_and_state_mb": state / 2**20,
           "peak_rss_mb": _peak_rss_mb(), "bytes_per_step": dict(sent.by_op)}
    with open(os.path.join(directory, f"rank{rank}.json"), "w") as f:
        json.dump(row, f)
    dist.destroy_process_group()


def run_one(vocab, world, dim, batch, sampled, steps) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as directory:
        mp.start_processes(_rank, args=(world, directory, vocab, dim, batch, sampled, steps), nprocs=world,
                           join=True, start_method="spawn")
        rows = [json.load(open(os.path.join(directory, f"rank{r}.json"))) for r in range(world)]
    return {"vocab": vocab, "ranks": world, "step_ms": rows[0]["step_ms"],
            "table_and_state_mb_per_rank": max(r["table_and_state_mb"] for r in rows),
            "peak_rss_mb_per_rank": max(r["peak_rss_mb"] for r in rows),
            "bytes_per_step_per_rank": rows[0]["bytes_per_step"]}


def projection(vocab=100_000_000, dim=256, batch=8192, sampled=8192, gbps=(25.0, 100.0)) -> list[dict]:
    """Bytes and transfer time per step per rank from the formulas, ring all-reduce on the wire
    (``2 (P - 1) / P`` of each all-reduced buffer; the draw's broadcast and the agreement count
    once), float32, at ``gbps`` GB/s per rank."""
    from sampled_softmax.torch.distributed import megatron_exact_bytes, vocab_parallel_bytes

    rows = []
    for p in (8, 64):
        ring = 2 * (p - 1) / p
        ours = vocab_parallel_bytes(batch, 1, sampled, dim)
        exact = megatron_exact_bytes(batch, dim)
        wire_ours = ring * ours["all_reduce"] + ours["broadcast"] + ours["all_gather"]
        wire_exact = ring * exact["all_reduce"]
        rows.append({"ranks": p, "vocab": vocab, "dim": dim, "batch_per_rank": batch, "sampled": sampled,
                     "ours_wire_mb": wire_ours / 1e6, "megatron_exact_wire_mb": wire_exact / 1e6,
                     "ours_ms": {g: wire_ours / (g * 1e9) * 1e3 for g in gbps},
                     "megatron_exact_ms": {g: wire_exact / (g * 1e9) * 1e3 for g in gbps},
                     "table_and_adam_gb_per_rank": vocab * (dim + 1) * 4 * 3 / p / 1e9,
                     "ours_flops_per_rank": 2 * 3 * batch * sampled * dim / p,
                     "megatron_exact_flops_per_rank": 2 * 3 * batch * vocab * dim / p})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--sampled", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from sampled_softmax.torch.distributed import megatron_exact_bytes, vocab_parallel_bytes

    rows = []
    for vocab in args.vocab:
        for world in args.ranks:
            row = run_one(vocab, world, args.dim, args.batch, args.sampled, args.steps)
            row["formula_bytes"] = vocab_parallel_bytes(args.batch, 1, args.sampled, args.dim)
            row["megatron_exact_bytes"] = megatron_exact_bytes(args.batch, args.dim)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| V | ranks | step (ms) | table + Adam state per rank (MB) | peak RSS per rank (MB) | bytes/step/rank "
          "(measured) | formula | Megatron exact |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        measured = sum(r["bytes_per_step_per_rank"].values())
        print(f"| {r['vocab']:,} | {r['ranks']} | {r['step_ms']:.1f} | {r['table_and_state_mb_per_rank']:.0f} | "
              f"{r['peak_rss_mb_per_rank']:.0f} | {measured:,} | {sum(r['formula_bytes'].values()):,} | "
              f"{sum(r['megatron_exact_bytes'].values()):,} |")
    proj = projection()
    print("\nProjection (V = 100M, D = 256, B = 8192 per rank, S = 8192, float32, ring all-reduce):")
    print("| GPUs | ours on the wire (MB/step) | Megatron exact (MB/step) | ours at 25 / 100 GB/s (ms) | "
          "exact at 25 / 100 GB/s (ms) | table + Adam per rank (GB) | ours / exact matmul FLOPs per rank |")
    print("|---|---|---|---|---|---|---|")
    for p in proj:
        print(f"| {p['ranks']} | {p['ours_wire_mb']:.1f} | {p['megatron_exact_wire_mb']:.1f} | "
              f"{p['ours_ms'][25.0]:.2f} / {p['ours_ms'][100.0]:.2f} | {p['megatron_exact_ms'][25.0]:.2f} / "
              f"{p['megatron_exact_ms'][100.0]:.2f} | {p['table_and_adam_gb_per_rank']:.1f} | "
              f"{p['ours_flops_per_rank']:.2e} / {p['megatron_exact_flops_per_rank']:.2e} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": environment(0), "args": vars(args), "rows": rows, "projection": proj}, f,
                      indent=1)


if __name__ == "__main__":
    main()
