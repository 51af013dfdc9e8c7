"""SASRec on Amazon Beauty with the library's losses, against Klenitskiy & Vasilev's table (RecSys '23).

Each configuration is one ``sampled-softmax seqrec`` run (the paper's protocol: leave-one-out,
sequences cut to 50, 2 blocks, 1 head, 64 hidden, dropout 0.1, batch 128, Adam 1e-3, at most
100 epochs, patience 10 on validation NDCG@10 over 10,000 users, full-catalogue metrics with
seen items filtered). Runs go to ``OUT/<name>-seed<k>/results.json`` and are skipped when that
file exists, so an interrupted study resumes; ``--report`` only tabulates what is there:
``OUT/summary.json``, a Markdown table (mean and spread over seeds) and
``OUT/valid_ndcg.png`` (validation NDCG@10 against training seconds, every run).

    python -m benchmarks.seqrec_study [--data ../shared/data/beauty/beauty.txt] [--out DIR]
        [--configs full,paper_3000,...] [--seeds 0,1,2] [--threads 2] [--report]
    python -m benchmarks.seqrec_study --timing --configs full,uniform_batch_3000,... [--rounds 3] [--steps 20]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "study_results", "seqrec")

# The paper's Beauty table (HR@10, NDCG@10, training seconds on one GPU, best epoch).
PAPER = {"SASRec (BCE, 1 negative)": (0.0246, 0.0126, 521, 26), "SASRec+ (full CE)": (0.0533, 0.0327, 332, 6),
         "SASRec+ 3000 (3,000 uniform negatives a user)": (0.0490, 0.0295, 296, 8)}

CONFIGS = {
    # The anchors: the paper's three SASRec rows.
    "full": ["--loss", "full"],
    "paper_3000": ["--loss", "sampled_softmax", "--num-sampled", "3000", "--sampler", "uniform", "--negatives",
                   "sequence", "--exclude-history", "--no-log-q"],
    "bce_1": ["--loss", "negative_sampling", "--num-sampled", "1", "--sampler", "uniform", "--negatives", "position",
              "--exclude-history"],
    # The library's options at S <= 3000.
    "uniform_batch_3000": ["--loss", "sampled_softmax", "--num-sampled", "3000", "--sampler", "uniform",
                           "--negatives", "batch"],
    "popularity_logq_3000": ["--loss", "sampled_softmax", "--num-sampled", "3000", "--sampler", "popularity",
                             "--negatives", "batch"],
    "popularity_logq_3000_excl": ["--loss", "sampled_softmax", "--num-sampled", "3000", "--sampler", "popularity",
                                  "--negatives", "batch", "--exclude-history"],
    "popularity_nologq_3000": ["--loss", "sampled_softmax", "--num-sampled", "3000", "--sampler", "popularity",
                               "--negatives", "batch", "--no-log-q"],
    "popularity_sqrt_logq_3000": ["--loss", "sampled_softmax", "--num-sampled", "3000", "--sampler", "popularity",
                                  "--popularity-power", "0.5", "--negatives", "batch"],
    "popularity_skewed_logq_3000": ["--loss", "sampled_softmax", "--num-sampled", "3000", "--sampler", "popularity",
                                    "--popularity-power", "1.5", "--negatives", "batch"],
    "popularity_squared_logq_3000": ["--loss", "sampled_softmax", "--num-sampled", "3000", "--sampler",
                                     "popularity", "--popularity-power", "2", "--negatives", "batch"],
    "popularity_logq_sequence_3000": ["--loss", "sampled_softmax", "--num-sampled", "3000", "--sampler",
                                      "popularity", "--negatives", "sequence"],
    "popularity_exclude_true_3000": ["--loss", "sampled_softmax", "--num-sampled", "3000", "--sampler",
                                     "popularity", "--negatives", "batch", "--exclude-true"],
    "learned_logq_3000": ["--loss", "sampled_softmax", "--num-sampled", "3000", "--sampler", "learned",
                          "--negatives", "batch"],
    "uniform_batch_1000": ["--loss", "sampled_softmax", "--num-sampled", "1000", "--sampler", "uniform",
                           "--negatives", "batch"],
    "in_batch_logq": ["--loss", "in_batch"],
    "mixed_3000": ["--loss", "mixed", "--num-sampled", "3000", "--sampler", "uniform"],
    "mixed_popularity_3000": ["--loss", "mixed", "--num-sampled", "3000", "--sampler", "popularity"],
    "nce_3000": ["--loss", "nce", "--num-sampled", "3000", "--sampler", "uniform", "--negatives", "batch"],
    "gbce_256": ["--loss", "gbce", "--num-sampled", "256", "--sampler", "uniform", "--negatives", "position",
                 "--gbce-t", "0.75"],
}


def run(name: str, seed: int, args) -> dict | None:
    out = os.path.join(args.out, f"{name}-seed{seed}")
    path = os.path.join(out, "results.json")
    if not os.path.exists(path):
        command = [sys.executable, "-m", "sampled_softmax", "seqrec", "--data", args.data, "--out", out,
                   "--seed", str(seed), "--threads", str(args.threads), *CONFIGS[name], *args.extra]
        print("$ " + " ".join(command), flush=True)
        if subprocess.call(command, cwd=ROOT) != 0:
            return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def time_steps(config: list, data: str, steps: int, threads: int) -> dict:
    """Seconds per training step of one configuration (the median of ``steps`` steps after 3
    warm-up steps: the model, the loss, its backward and the Adam step) and this process's peak
    memory. Run in a fresh process per configuration, so that the peak is its own."""
    import time

    import torch

    from sampled_softmax.apps import seqrec
    from sampled_softmax.apps.seqrec_data import leave_one_out, read_interactions

    torch.set_num_threads(threads)
    ap = argparse.ArgumentParser()
    seqrec.add_arguments(ap)
    args = ap.parse_args(["--data", data, "--out", "unused", *config])
    seqrec.check_arguments(ap, args)
    interactions = read_interactions(data)
    split = leave_one_out(interactions)
    torch.manual_seed(0)
    model = seqrec.SASRec(interactions.num_items)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    loss_fn = seqrec.LossFunction(args, interactions, torch.Generator().manual_seed(0))
    times = []
    batches = seqrec.training_batches(split.train, 50, 128, np.random.default_rng(0))
    for step, (inputs, labels) in enumerate(batches):
        start = time.perf_counter()
        loss = loss_fn(model, inputs, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
        if step == steps + 2:
            break
    import resource

    return {"step_s": float(np.median(times[3:])), "steps_per_epoch": seqrec.num_training_steps(split.train, 128),
            "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def timing(names: list, args) -> str:
    """Seconds per epoch of each configuration against full cross-entropy: ``--rounds`` rounds,
    each running every configuration once in turn (paired on a noisy machine); the median per
    configuration, then the ratio of medians."""
    per = {n: [] for n in names}
    peak = {}
    for _ in range(args.rounds):
        for name in names:
            code = ("import json, benchmarks.seqrec_study as s; print(json.dumps(s.time_steps("
                    f"{CONFIGS[name]!r}, {args.data!r}, {args.steps}, {args.threads})))")
            out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            per[name].append(r["step_s"] * r["steps_per_epoch"])
            peak[name] = max(peak.get(name, 0.0), r["peak_memory_mb"])
    full = float(np.median(per["full"])) if "full" in per else None
    lines = [f"seconds per epoch ({args.threads} threads, median of {args.rounds} rounds of {args.steps} steps)",
             "| configuration | s/epoch | full CE ÷ this | peak MB |", "|---|---|---|---|"]
    for name in names:
        med = float(np.median(per[name]))
        lines.append(f"| {name} | {med:.1f} | {full / med:.1f}x | {peak[name]:.0f} |" if full else
                     f"| {name} | {med:.1f} | – | {peak[name]:.0f} |")
    return "\n".join(lines)


def report(out: str) -> str:
    """The table of every finished run under ``out`` (mean and min..max over seeds) and the plot."""
    runs = {}
    for path in sorted(glob.glob(os.path.join(out, "*-seed*", "results.json"))):
        name = os.path.basename(os.path.dirname(path)).rsplit("-seed", 1)[0]
        with open(path, encoding="utf-8") as f:
            runs.setdefault(name, []).append(json.load(f))
    if not runs:
        return "no finished runs under " + out
    full_epoch = np.mean([r["seconds_per_epoch"] for r in runs.get("full", [])]) if "full" in runs else None
    lines = ["| configuration | seeds | HR@10 | NDCG@10 | HR@100 | NDCG@100 | best epoch | s/epoch | "
             "full CE s/epoch ÷ | peak MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    summary = {}
    for name, rs in runs.items():
        col = {k: np.array([r[k] for r in rs]) for k in ("test_hr@10", "test_ndcg@10", "test_hr@100", "test_ndcg@100",
                                                         "best_epoch", "seconds_per_epoch", "peak_memory_mb")}
        summary[name] = {k: v.tolist() for k, v in col.items()} | {"seeds": [r["config"]["seed"] for r in rs]}

        def cell(k, digits=4):
            v = col[k]
            return f"{v.mean():.{digits}f}" + (f" ({v.min():.{digits}f}..{v.max():.{digits}f})" if len(v) > 1 else "")

        speed = f"{full_epoch / col['seconds_per_epoch'].mean():.1f}x" if full_epoch else "–"
        lines.append(f"| {name} | {len(rs)} | {cell('test_hr@10')} | {cell('test_ndcg@10')} | {cell('test_hr@100')} | "
                     f"{cell('test_ndcg@100')} | {cell('best_epoch', 1)} | {cell('seconds_per_epoch', 1)} | {speed} | "
                     f"{col['peak_memory_mb'].max():.0f} |")
    for name, (hr, ndcg, secs, epoch) in PAPER.items():
        lines.append(f"| paper: {name} | – | {hr} | {ndcg} | – | – | {epoch} | ({secs} s total, GPU) | – | – |")
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    from sampled_softmax.apps.seqrec import plot

    # One line per configuration (its lowest seed): every seed of every configuration is unreadable.
    labelled = [min(rs, key=lambda r: r["config"]["seed"]) for rs in runs.values()]
    labelled = [r | {"label": f"{name} seed {r['config']['seed']}"} for name, r in zip(runs, labelled)]
    plot(labelled, os.path.join(out, "valid_ndcg.png"))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "beauty", "beauty.txt"))
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--configs", default="full,paper_3000,bce_1", help="comma-separated: " + ", ".join(CONFIGS))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report", action="store_true", help="only tabulate the finished runs")
    ap.add_argument("--timing", action="store_true", help="only time the configurations' steps against full CE")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("extra", nargs="*", help="more seqrec options for every run (after --)")
    args = ap.parse_args(argv)
    if args.timing:
        names = [c for c in args.configs.split(",") if c]
        print(timing(names if "full" in names else ["full", *names], args))
        return 0
    if not args.report:
        names = [c for c in args.configs.split(",") if c]
        unknown = [c for c in names if c not in CONFIGS]
        if unknown:
            ap.error(f"--configs: unknown {unknown}; known: {', '.join(CONFIGS)}")
        for seed in (int(s) for s in args.seeds.split(",")):
            for name in names:
                run(name, seed, args)
    print(report(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
