"""Run a function on ``world`` spawned processes joined by a ``gloo`` process group, with a
deadline: a bug fails the test with each rank's traceback instead of hanging CI."""

from __future__ import annotations

import datetime
import os
import pickle
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

DEADLINE_S = 240.0          # a whole spawned run (imports, process group, every case)
COLLECTIVE_TIMEOUT_S = 60   # one collective waiting for a rank that never comes


def _entry(rank, world, directory, fn, args):
    torch.set_num_threads(1)  # 2-4 ranks on this machine's cores
    # The ranks never build the compiled core (a first build would race the deadline): what is
    # compared here is the distribution, on the Python path.
    os.environ["SAMPLED_SOFTMAX_NO_COMPILE"] = "1"
    out = os.path.join(directory, f"rank{rank}.pkl")
    try:
        dist.init_process_group("gloo", init_method=f"file://{os.path.join(directory, 'rendezvous')}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        result = fn(rank, world, *args)
        payload = ("ok", result)
    except BaseException:  # noqa: BLE001 - reported to the parent with its traceback
        payload = ("error", traceback.format_exc())
    with open(out, "wb") as f:
        pickle.dump(payload, f)
    if dist.is_initialized():
        dist.destroy_process_group()


def run(fn, world: int, tmp_path, *args, deadline_s: float = DEADLINE_S) -> list:
    """``[fn(rank, world, *args) for each rank]``, run in ``world`` processes. ``fn`` must be a
    module-level function; its results are pickled back. Raises with every failing rank's
    traceback, or after ``deadline_s`` with the ranks that had not finished."""
    directory = str(tmp_path)
    context = mp.start_processes(_entry, args=(world, directory, fn, args), nprocs=world, join=False,
                                 start_method="spawn")
    end = time.monotonic() + deadline_s
    try:
        while not context.join(timeout=5):
            if time.monotonic() > end:
                alive = [i for i, p in enumerate(context.processes) if p.is_alive()]
                raise TimeoutError(f"ranks {alive} of {world} still running after {deadline_s} s")
    finally:
        for p in context.processes:
            if p.is_alive():
                p.terminate()
    results = []
    for rank in range(world):
        with open(os.path.join(directory, f"rank{rank}.pkl"), "rb") as f:
            status, value = pickle.load(f)
        if status != "ok":
            raise AssertionError(f"rank {rank} failed:\n{value}")
        results.append(value)
    return results
