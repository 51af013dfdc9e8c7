"""Paired timing: methods run in turn (A B C, B C A, C A B, ...) so drift on a shared machine
hits all of them alike; medians per method and medians of per-round ratios between methods."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys

import time
from typing import Callable


def progress(total: int, label: str):
    """The suite's progress bar (``tqdm``, on stderr): ``step(note)`` advances it by one."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=label, file=sys.stderr, dynamic_ncols=True)

    def step(note: str = "") -> None:
        if note:
            bar.set_postfix_str(note, refresh=False)
        bar.update()
        if bar.n >= bar.total:
            bar.close()

    step.bar = bar
    return step


def environment(seed: int) -> dict:
    """What a result row must record to be reproducible."""
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "seed": seed,
        "commit": _commit(),
        "MALLOC_MMAP_MAX_": os.environ.get("MALLOC_MMAP_MAX_", "unset"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    import numpy

    info["numpy"] = numpy.__version__
    for name in ("torch", "tensorflow"):
        if name in sys.modules:
            mod = sys.modules[name]
            info[name] = mod.__version__
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def paired(methods: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 3, block: int = 1,
           progress: Callable[[str], None] | None = None) -> dict:
    """Time each method ``repeats`` rounds, interleaved, and return per-round seconds per call.

    Each round runs every method for ``block`` consecutive calls (the order rotates from round
    to round) and records the median call of the block, leaving out the block's first call
    when ``block > 1``: switching frameworks costs the first call (TensorFlow's and OpenMP's
    thread pools keep spinning after a call and slow whatever runs next), a cost no training
    loop that uses one of them pays.
    """
    for _ in range(warmup):
        for fn in methods.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn = methods[name]
            times = []
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            samples[name].append(statistics.median(times[1:] if block > 1 else times))
        if progress:
            progress(f"round {r + 1}/{repeats}")
    return samples


def summarize(samples: dict[str, list[float]]) -> dict[str, dict]:
    out = {}
    for name, ts in samples.items():
        q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [ts[0]] * 3
        out[name] = {"median_ms": statistics.median(ts) * 1e3, "q1_ms": q[0] * 1e3, "q3_ms": q[2] * 1e3, "n": len(ts)}
    return out


def paired_ratio(samples: dict[str, list[float]], slower: str, faster: str) -> float:
    """Median over rounds of ``t[slower] / t[faster]`` (how many times faster ``faster`` is)."""
    return statistics.median(a / b for a, b in zip(samples[slower], samples[faster]))


def dump(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)


# Memory subprocesses fix glibc's mmap threshold at its initial 128 KiB: left dynamic, it grows
# after the first large free and later blocks stay in the heap, so a step's peak would depend
# on allocation history by a megabyte or two. Fixed, every large tensor is mapped while it lives
# and unmapped when freed: the resident peak is what was live at once.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
MEMORY_RUNS = 3


def peak_extra_mb(step, calls: int = 2) -> float:
    """MB of resident memory that ``calls`` calls of ``step`` reach beyond what is resident after
    a first call (Linux: the high-water mark ``VmHWM``, reset through ``/proc/self/clear_refs``).
    Run it in a fresh process (see :func:`median_memory_run`)."""
    import ctypes
    import gc

    from .train_step import _status_kb

    step()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # pragma: no cover - not glibc
        pass
    base_kb = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    for _ in range(calls):
        step()
    return (_status_kb("VmHWM") - base_kb) / 1024


def median_memory_run(argv: list[str], *, runs: int = MEMORY_RUNS) -> dict:
    """Run ``python argv`` ``runs`` times in fresh processes, each printing a JSON row with
    ``peak_extra_mb`` as its last line; the row with the median peak, with every run's peak
    under ``peak_extra_mb_runs``. A failed run gives ``{"skipped": why}``."""
    env = dict(os.environ, **MEMORY_ENV)
    rows = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return {"skipped": f"failed: {tail[0]}"}
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        if "peak_extra_mb" not in row:  # skipped inside (does not fit)
            return row
        rows.append(row)
    rows.sort(key=lambda r: r["peak_extra_mb"])
    return dict(rows[len(rows) // 2], peak_extra_mb_runs=[r["peak_extra_mb"] for r in rows],
                allocator="MALLOC_MMAP_THRESHOLD_=131072")



def per_backend(module: str, payload: dict, backends, extra_args=(), progress=None) -> list[dict]:
    """Run ``python -m module --child JSON(payload) *extra_args`` once per Keras backend (Keras
    fixes its backend at import), each from the checkout's root; each child prints its result as
    JSON on its last line. A failed child gives ``{"backend", "skipped": why}``."""
    import json
    import os
    import subprocess
    import sys

    results = []
    for backend in backends:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        proc = subprocess.run([sys.executable, "-m", module, "--child", json.dumps(payload), *extra_args],
                              capture_output=True, text=True, env=env,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            results.append({"backend": backend, "skipped": f"failed or not installed: {tail[0]}"})
        else:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        if progress:
            progress(backend)
    return results
