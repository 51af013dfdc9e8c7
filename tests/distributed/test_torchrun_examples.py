"""The distributed examples run as users run them, ``torchrun --standalone --nproc-per-node 2``
(a free port each), with a deadline, and learn: exact perplexity below the unigram's, recall up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _torchrun(script, *args: str) -> str:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(EXAMPLES / script), *args]
    # No compiled core: a first build in each rank would race the deadline (and is not what runs here).
    env = dict(os.environ, OMP_NUM_THREADS="1", SAMPLED_SOFTMAX_NO_COMPILE="1")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=Path(script).parent
                              if Path(script).is_absolute() else EXAMPLES)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{script} did not finish in 240 s:\n{e.stdout}\n{e.stderr}")
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_vocab_parallel_language_model_learns():
    out = _torchrun("vocab_parallel_lm.py", "--vocab", "3000", "--steps", "200", "--dim", "32", "--sampled", "256")
    found = re.search(r"2 ranks, 1500 of 3000 classes on rank 0: exact valid perplexity ([\d.]+) \(unigram ([\d.]+)",
                      out)
    assert found, out
    assert float(found[1]) < 0.5 * float(found[2]), out


def test_two_tower_with_negatives_across_ranks_learns():
    out = _torchrun("two_tower_distributed.py", "--items", "3000", "--steps", "60", "--batch", "256")
    found = re.search(r"recall@10 ([\d.]+) -> ([\d.]+)", out)
    assert found, out
    assert float(found[2]) > float(found[1]) + 0.1, out


def test_docs_blocks_for_torchrun_run_on_two_processes(tmp_path):
    """The documentation's blocks that start a process group (skipped by the in-process docs test)."""
    readme = (EXAMPLES.parent / "docs" / "distributed.md").read_text()
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```", readme, re.S | re.M) if "init_process_group" in b]
    assert blocks, "docs/distributed.md has a torch.distributed block"
    for i, code in enumerate(blocks):
        script = tmp_path / f"block{i}.py"
        script.write_text(code)
        _torchrun(script)
