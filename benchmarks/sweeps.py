"""Loss forward+backward against the vocabulary size and in the sequence case, with the peak
memory of each method in a fresh subprocess, and the suite's plots.

* ``vocab_sweep``: Table 1's ``S, D, B`` at ``V`` in {10k, 100k, 1M, 10M}; every method of
  :mod:`benchmarks.loss` plus ``torch.nn.AdaptiveLogSoftmaxWithLoss``, paired per ``V``. A
  method whose tables would not fit in memory at some ``V`` is reported as skipped there, with
  the estimate (at ``V=10M, D=300`` one float32 table is 12 GB).
* ``sequence_case``: ``B=32, T=128`` (4096 positions), ``D=512``, ``V=50k``, ``S=1024``.
* ``plot_*``: time and peak memory against ``V`` (log-log) and time against ``S``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from . import loss as loss_bench
from .harness import paired, summarize

VOCABS = (10_000, 100_000, 1_000_000, 10_000_000)
QUICK_VOCABS = (10_000, 100_000)
SEQUENCE = dict(V=50_000, S=1024, D=512, B=32 * 128)
# Slow methods get fewer repeats; dense-gradient ones run in their own group (cache eviction).
SLOW = ("full softmax", "tf full softmax", "adaptive")
DENSE = ("ours dense", "hand dense")


def _total_ram() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 16 * 2**30


def needed_bytes(method: str, V: int, S: int, D: int, B: int) -> int:
    """A rough peak for ``method``: the table, plus what it copies or densifies."""
    table = 4 * V * D
    if method in ("ours sparse", "hand sparse"):
        return table
    if method in DENSE or method.startswith("ours tf") or method == "tf.nn":
        return 2 * table  # a dense gradient, or TensorFlow's own copy of the table
    if method in ("full softmax", "tf full softmax"):
        return 2 * table + 3 * 4 * B * V  # gradient of the table; logits, softmax and their gradient
    if method == "adaptive":
        return 2 * table + 3 * 4 * B * V // 5
    return table


def fits(method, V, S, D, B) -> bool:
    return needed_bytes(method, V, S, D, B) < 0.7 * _total_ram()


def adaptive_method(W, b, h, y):
    """``torch.nn.AdaptiveLogSoftmaxWithLoss`` over the same ``V`` (cutoffs V/25 and V/5,
    ``div_value=4``: the demo's), forward and backward of its summed loss."""
    import torch

    V, D = W.shape
    cutoffs = sorted({c for c in (V // 25, V // 5) if 0 < c < V})
    layer = torch.nn.AdaptiveLogSoftmaxWithLoss(D, V, cutoffs, div_value=4.0)

    def run():
        (layer(h, y).loss * h.shape[0]).backward()
        layer.zero_grad(set_to_none=True)
        h.grad = None
    return run


def _methods(shape, seed, wanted):
    """Step functions of the ``wanted`` methods that fit at this shape; skipped ones with why."""
    V, S, D, B = shape["V"], shape["S"], shape["D"], shape["B"]
    skipped = {m: f"needs about {needed_bytes(m, V, S, D, B) / 2**30:.0f} GB" for m in wanted if not fits(m, V, S, D, B)}
    keep = [m for m in wanted if m not in skipped]
    if not keep:
        return {}, skipped
    fast, dense, full, tensors = loss_bench.torch_methods(V, S, D, B, seed, with_full="full softmax" in keep)
    steps = {**fast, **{k: v for k, v in dense.items() if k in DENSE}}
    if full is not None:
        steps["full softmax"] = full
    if "adaptive" in keep:
        steps["adaptive"] = adaptive_method(*tensors)
    tf_names = ("tf.nn", "ours tf", "ours tf xla", "tf full softmax")
    if any(m in keep for m in tf_names):
        tf_steps = loss_bench.tf_methods(*tensors, S, V, seed)
        if tf_steps is None:
            skipped.update({m: "tensorflow not installed" for m in tf_names if m in keep})
        else:
            steps.update(tf_steps)
    return {m: steps[m] for m in keep if m in steps}, skipped


ALL_METHODS = ("ours sparse", "hand sparse", "tf.nn", "ours tf", "ours tf xla", "ours dense", "hand dense",
               "full softmax", "tf full softmax", "adaptive")
FAST_METHODS = ALL_METHODS[:5]
FLOORS = ("kernel floor", "tf kernel floor")  # not methods: lower bounds (benchmarks/loss.py)


def time_case(shape, *, seed=0, repeats=10, block=3, methods=ALL_METHODS, progress=None) -> dict:
    """Paired fwd+bwd timings of every method that fits at ``shape``."""
    steps, skipped = _methods(shape, seed, methods)
    groups = [{m: f for m, f in steps.items() if m not in SLOW and m not in DENSE},
              {m: f for m, f in steps.items() if m in DENSE}]
    samples = {}
    for group in groups:
        if group:
            # The dense group is paired with the sparse baseline too, so its ratios are paired.
            if "ours sparse" in steps and "ours sparse" not in group:
                group = {"ours sparse": steps["ours sparse"], **group}
            got = paired(group, repeats=repeats if group is groups[0] else max(3, repeats // 3), block=block,
                         warmup=2)
            samples.update({m: v for m, v in got.items() if m not in samples})
    for m in SLOW:
        if m in steps:
            samples.update(paired({m: steps[m]}, repeats=max(2, repeats // 5), warmup=1))
    if progress:
        progress(f"V={shape['V']}")
    summary = summarize(samples)
    return {"case": shape, "summary": summary, "skipped": skipped}


def vocab_sweep(vocabs=VOCABS, *, S=100, D=300, B=256, seed=0, repeats=10, methods=ALL_METHODS,
                progress=None) -> list[dict]:
    return [time_case(dict(V=V, S=S, D=D, B=B), seed=seed, repeats=repeats, methods=methods, progress=progress)
            for V in vocabs]


# -- peak memory, one fresh process per (method, V) ------------------------------------------


def measure_loss_memory(method: str, shape: dict, seed=0) -> dict:
    """Peak resident memory of fwd+bwd calls beyond the tables (as train_step.measure_memory)."""
    from .harness import peak_extra_mb

    steps, skipped = _methods(shape, seed, (method,))
    if method in skipped:
        return {"method": method, **shape, "skipped": skipped[method]}
    return {"method": method, **shape, "peak_extra_mb": peak_extra_mb(steps[method])}


def memory_in_subprocess(method: str, shape: dict) -> dict:
    """Median of fresh-process runs (see :func:`harness.median_memory_run`)."""
    from .harness import median_memory_run

    row = median_memory_run(["-m", "benchmarks.sweeps", method, json.dumps(shape)])
    return row if "method" in row else {"method": method, **shape, **row}


def memory_sweep(vocabs=VOCABS, *, S=100, D=300, B=256, methods=("ours sparse", "tf.nn", "hand dense",
                                                                  "full softmax", "adaptive"), progress=None):
    rows = []
    for V in vocabs:
        for m in methods:
            rows.append(memory_in_subprocess(m, dict(V=V, S=S, D=D, B=B)))
            if progress:
                progress(f"{m} V={V}")
    return rows


# -- output -----------------------------------------------------------------------------------


def format_sweep(rows: list[dict]) -> list[str]:
    methods = [m for m in ALL_METHODS if any(m in r["summary"] or m in r["skipped"] for r in rows)]
    head = f"{'method':<16}" + "".join(f"{'V=' + _short(r['case']['V']):>12}" for r in rows)
    lines = [head]
    for m in methods:
        cells = []
        for r in rows:
            if m in r["summary"]:
                cells.append(f"{r['summary'][m]['median_ms']:>10.2f}ms")
            else:
                cells.append(f"{'skipped':>12}")
        lines.append(f"{m:<16}" + "".join(cells))
    notes = sorted({f"  skipped at V={_short(r['case']['V'])}: {m} ({why})" for r in rows for m, why in r["skipped"].items()})
    return lines + notes


def format_memory(rows: list[dict]) -> list[str]:
    lines = ["| method | V | peak MB beyond the tables |", "|---|---|---|"]
    for r in rows:
        value = f"{r['peak_extra_mb']:.1f}" if "peak_extra_mb" in r else f"skipped ({r['skipped']})"
        lines.append(f"| {r['method']} | {_short(r['V'])} | {value} |")
    return lines


def _short(V: int) -> str:
    return f"{V // 1_000_000}M" if V >= 1_000_000 and V % 1_000_000 == 0 else (f"{V // 1000}k" if V % 1000 == 0 else str(V))


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def _loglog(ax, series: dict, xlabel: str, ylabel: str, title: str) -> None:
    """One line per name of ``series`` (name -> [(x, y), ...]) on log-log axes."""
    for name, pts in series.items():
        if pts:
            # One colour per method in every panel and plot; the kernel floors dashed.
            if name in FLOORS:
                style = dict(color="black" if name == "kernel floor" else "dimgray", linestyle="--")
            else:
                style = dict(color=f"C{ALL_METHODS.index(name) % 10}" if name in ALL_METHODS else None)
            ax.plot(*zip(*pts), marker="o", label=name, **style)
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def _save(plt, fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_against_vocab(sweep: list[dict], memory: list[dict] | None, path: str) -> str | None:
    """Time (and peak memory, if measured) against V, log-log, one line per method."""
    plt = _pyplot()
    if plt is None or not sweep:
        return None
    panels = 2 if memory else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.5), squeeze=False)
    c = sweep[0]["case"]
    times = {m: [(r["case"]["V"], r["summary"][m]["median_ms"]) for r in sweep if m in r["summary"]] for m in ALL_METHODS}
    _loglog(axes[0][0], times, "V (classes)", "fwd+bwd median ms", f"loss fwd+bwd, S={c['S']}, D={c['D']}, B={c['B']}")
    if memory:
        # Floored at 0.1 MB: a log axis has no zero.
        peaks = {m: [(r["V"], max(r["peak_extra_mb"], 0.1)) for r in memory if r["method"] == m and "peak_extra_mb" in r]
                 for m in dict.fromkeys(r["method"] for r in memory)}
        _loglog(axes[0][1], peaks, "V (classes)", "peak MB beyond the tables", "peak memory of fwd+bwd")
    return _save(plt, fig, path)


def plot_against_num_sampled(by_s: list[dict], path: str) -> str | None:
    plt = _pyplot()
    if plt is None or not by_s:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    c = by_s[0]["case"]
    times = {m: [(r["case"]["S"], r["summary"][m]["median_ms"]) for r in by_s if m in r["summary"]]
             for m in dict.fromkeys(k for r in by_s for k in r["summary"])}
    _loglog(ax, times, "S (num_sampled)", "fwd+bwd median ms", f"loss fwd+bwd, V={c['V']}, D={c['D']}, B={c['B']}")
    return _save(plt, fig, path)


if __name__ == "__main__":  # pragma: no cover - the memory subprocess
    print(json.dumps(measure_loss_memory(sys.argv[1], json.loads(sys.argv[2]))))
