"""The WikiText-2 study: does sampled softmax train a language model as well as full softmax,
in less time?

Every configuration trains the same model (``Embedding(V, 256) -> LSTM(256) -> output``,
dropout 0.2, Adam 3e-3, batches of 32 windows of 32 tokens) for the same wall-clock budget
of optimisation (10 minutes by default; evaluation not counted); full softmax trains for three
budgets and is also evaluated after the first. Each result is the exact full-softmax perplexity
on the whole validation set.

Configurations: full softmax; sampled softmax with the log-uniform, uniform and unigram
(training counts ** 0.75) samplers at S in {256, 1024, 4096} drawn "unique_exact"; the unigram
sampler at S=1024 drawn TensorFlow's "unique" way; ``torch.nn.AdaptiveLogSoftmaxWithLoss``.

The study is resumable: each configuration writes ``OUT/<name>.json`` when it finishes and is
skipped when that file exists, so a long study can be run in pieces. ``--report`` only
rebuilds ``OUT/study.md`` and ``OUT/study.png`` from the files present.

    taskset -c 0 python -m benchmarks.wikitext_study ../shared/data/wikitext-2 --out results/wikitext_study

Torch runs one thread by default (``--threads``); pin it to a core with ``taskset`` so every
configuration sees the same machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch

from sampled_softmax.apps.corpus import read_corpus, zipf_markov
from sampled_softmax.apps.demo import LanguageModel, add_training_arguments, train, windows

SAMPLERS = ("unigram", "log_uniform", "uniform")


def configurations() -> dict[str, dict]:
    """Name -> LanguageModel keyword arguments, in the order they run (most informative first)."""
    configs = {"sampled-unigram-1024-unique_exact": {}, "full": {}, "sampled-log_uniform-1024-unique_exact": {},
               "adaptive": {}}
    for s in (4096, 256):
        for sampler in SAMPLERS[:2]:
            configs[f"sampled-{sampler}-{s}-unique_exact"] = {}
    for s in (1024, 256, 4096):
        configs[f"sampled-uniform-{s}-unique_exact"] = {}
    configs["sampled-unigram-1024-unique"] = {}
    for name in configs:
        if name.startswith("sampled"):
            _, sampler, s, draw = name.split("-")
            configs[name] = {"head": "sampled", "sampler": sampler, "num_sampled": int(s), "draw": draw}
        else:
            configs[name] = {"head": name}
    return configs


def label(name: str) -> str:
    if not name.startswith("sampled"):
        return {"full": "full softmax", "adaptive": "adaptive softmax (torch.nn)"}[name]
    _, sampler, s, draw = name.split("-")
    return f"sampled, {sampler.replace('_', '-')}, S={s}, {draw}"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_one(name: str, spec: dict, corpus, args) -> dict:
    torch.manual_seed(args.seed)
    spec = dict(spec)
    head = spec.pop("head")
    model = LanguageModel(corpus.vocab_size, args.dim, head, unigram_counts=corpus.unigram_counts(),
                          dropout=args.dropout, **spec)
    budget = args.budget * (args.full_multiple if head == "full" else 1)
    milestones = [args.budget, budget] if head == "full" else [budget]
    points = args.curve_points * (args.full_multiple if head == "full" else 1)
    curve_valid = windows(corpus.valid, args.seq_len, args.curve_tokens)
    final_valid = windows(corpus.valid, args.seq_len, args.valid_tokens)
    run = train(model, corpus, budget=budget, batch=args.batch, seq_len=args.seq_len, lr=args.lr, seed=args.seed,
                curve_valid=curve_valid, curve_times=[budget * (i + 1) / points for i in range(points)],
                milestone_valid=final_valid, milestones=sorted(set(milestones)), label=label(name))
    return {"name": name, "label": label(name), "config": {"head": head, **spec}, **run,
            "valid_tokens": int(final_valid[1].numel())}


def report(out: str, names: list[str]) -> str:
    """Markdown table and PNG from the result files present; returns the markdown."""
    results = {}
    for name in names:
        path = os.path.join(out, f"{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                results[name] = json.load(f)
    if not results:
        return "no results yet"
    any_result = next(iter(results.values()))
    meta = any_result["meta"]
    budget = meta["args"]["budget"]
    lines = [f"Corpus {meta['corpus']} (V={meta['vocab_size']}, {meta['train_tokens']} training tokens); "
             f"exact full-softmax perplexity on the validation set ({any_result['valid_tokens']} tokens in whole "
             f"{meta['args']['seq_len']}-token windows); {budget / 60:g} min of training per configuration, one "
             f"thread.", "",
             "| configuration | steps | steps/s | tokens/s | valid perplexity |", "|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        for m in r["milestones"]:
            tag = "" if len(r["milestones"]) == 1 else f" ({m['wall_s'] / budget:.0f}x budget)"
            lines.append(f"| {r['label']}{tag} | {m['steps']} | {r['steps_per_s']:.2f} | {r['tokens_per_s']:.0f} "
                         f"| {m['valid_perplexity']:.1f} |")
    lines.append(f"| unigram baseline | | | | {meta['unigram_perplexity']:.1f} |")
    lines.append("")
    sampled = {n: r["milestones"][-1]["valid_perplexity"] for n, r in results.items() if n.startswith("sampled")}
    full = results.get("full")
    if sampled and full:
        best = min(sampled, key=sampled.get)
        full_1 = full["milestones"][0]["valid_perplexity"]
        full_n = full["milestones"][-1]["valid_perplexity"]
        multiple = full["milestones"][-1]["wall_s"] / full["milestones"][0]["wall_s"]
        g1 = sampled[best] < full_1
        g2 = sampled[best] <= 1.05 * full_n
        lines.append(f"- Goal, sampled beats full softmax at equal budget: {'MET' if g1 else 'NOT MET'} "
                     f"(best sampled, {label(best)}: {sampled[best]:.1f}; full softmax: {full_1:.1f})")
        lines.append(f"- Goal, best sampled within 5% of full softmax given {multiple:.0f}x the budget: "
                     f"{'MET' if g2 else 'NOT MET'} ({sampled[best]:.1f} vs {full_n:.1f}, "
                     f"{100 * (sampled[best] / full_n - 1):+.1f}%)")
    missing = [n for n in names if n not in results]
    if missing:
        lines.append(f"- Not yet run: {', '.join(missing)}")
    md = "\n".join(lines)
    with open(os.path.join(out, "study.md"), "w") as f:
        f.write(md + "\n")
    _plot(results, meta, os.path.join(out, "study.png"))
    return md


def _plot(results, meta, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, r in results.items():
        t, p = zip(*r["curve"])
        style = "-" if name.startswith("sampled") else "--"
        ax.plot(np.array(t) / 60, p, style, marker="o", ms=2, lw=1.2, label=r["label"])
    ax.axhline(meta["unigram_perplexity"], color="k", ls=":", lw=1, label="unigram baseline")
    ax.set_yscale("log")
    ax.set_xlabel("training wall-clock time (min, one thread)")
    ax.set_ylabel(f"full-softmax perplexity (first {meta['args']['curve_tokens']} valid tokens)")
    ax.set_title(f"{meta['corpus']}: V={meta['vocab_size']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus", nargs="?", help="directory with train.txt and valid.txt (e.g. ../shared/data/wikitext-2)")
    ap.add_argument("--out", default="results/wikitext_study")
    ap.add_argument("--budget", type=float, default=600.0, help="training seconds per configuration (default 600)")
    ap.add_argument("--full-multiple", type=int, default=3, help="full softmax trains this many budgets (default 3)")
    ap.add_argument("--only", help="comma-separated configuration names (default: all)")
    ap.add_argument("--report", action="store_true", help="only rebuild study.md and study.png")
    ap.add_argument("--quick", action="store_true", help="generated corpus, tiny model, seconds per configuration")
    add_training_arguments(ap, dim=256, curve_points=5)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--curve-tokens", type=int, default=8192)
    ap.add_argument("--valid-tokens", type=int, default=None, help="validation tokens (default: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    configs = configurations()
    names = list(configs)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in configs]
        if unknown:
            ap.error(f"--only takes names from {', '.join(configs)}; received {', '.join(unknown)}")
    os.makedirs(args.out, exist_ok=True)
    if args.report:
        print(report(args.out, names))
        return 0
    if args.quick:
        args.budget, args.dim, args.curve_points, args.curve_tokens = min(args.budget, 1.0), 16, 2, 256
        args.valid_tokens = args.valid_tokens or 1024
        corpus = zipf_markov(2000, 20_000, 4_000, seed=args.seed)
        names = [n for n in names if "4096" not in n]
    elif args.corpus:
        corpus = read_corpus(args.corpus)
    else:
        ap.error("give a corpus directory (e.g. ../shared/data/wikitext-2) or --quick")
    torch.set_num_threads(args.threads)
    meta = {"corpus": corpus.name, "vocab_size": corpus.vocab_size, "train_tokens": int(corpus.train.size),
            "unigram_perplexity": corpus.unigram_perplexity(), "args": vars(args), "commit": _commit(),
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "platform": platform.platform()}
    print(f"corpus {corpus.name}: V={corpus.vocab_size}, {corpus.train.size} training tokens; "
          f"{args.budget:g} s per configuration; results in {args.out}", flush=True)
    for name in names:
        path = os.path.join(args.out, f"{name}.json")
        if os.path.exists(path):
            print(f"{label(name):<31} done earlier ({path})")
            continue
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        result = run_one(name, configs[name], corpus, args)
        result["meta"] = {**meta, "started": started, "loadavg_after": os.getloadavg()}
        with open(path + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(path + ".tmp", path)
        last = result["milestones"][-1]
        print(f"{label(name):<31} {result['steps']} steps, {result['steps_per_s']:.2f} steps/s, "
              f"valid ppl {last['valid_perplexity']:.1f}", flush=True)
    print()
    print(report(args.out, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
