"""Every Python block of the README and of the documentation site runs as written (each in a
fresh namespace and working folder), and the site builds without a warning."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(path):
    with open(path) as f:
        text = f.read()
    return [m.group(1) for m in FENCE.finditer(text)]


def _pages():
    pages = [os.path.join(ROOT, "README.md")]
    docs = os.path.join(ROOT, "docs")
    for folder, _, files in os.walk(docs):
        pages += [os.path.join(folder, f) for f in sorted(files) if f.endswith(".md")]
    return pages


BLOCKS = [pytest.param(code, id=f"{os.path.relpath(page, ROOT)}#{i}")
          for page in _pages() for i, code in enumerate(python_blocks(page))]


def test_the_readme_is_a_front_door():
    """A quickstart of at most 15 lines per front end, the whole under 300 lines; the manual is
    the site, whose pages own their text (no section spliced in from the README)."""
    path = os.path.join(ROOT, "README.md")
    with open(path) as f:
        text = f.read()
    assert text.count("\n") < 300
    blocks = python_blocks(path)
    for framework in ("torch", "tensorflow", "keras", "jax"):
        quickstart = [b for b in blocks if re.search(rf"^from sampled_softmax\.{framework}\b", b, re.M)]
        assert quickstart, f"the README has no {framework} quickstart"
        assert min(b.count("\n") for b in quickstart) <= 15, framework
    for page in _pages()[1:]:
        with open(page) as f:
            assert "--8<--" not in f.read(), page


@pytest.mark.parametrize("code", BLOCKS)
def test_block_runs_as_written(code, tmp_path, monkeypatch):
    if "init_process_group" in code:
        pytest.skip("a block for torchrun: tests/distributed/test_torchrun_examples.py runs it on 2 processes")
    for framework in ("torch", "tensorflow", "keras"):
        if re.search(rf"^\s*(import|from) {framework}\b", code, re.M):
            pytest.importorskip(framework)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<block>", "exec"), {"__name__": "__docs__"})


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, "mkdocs.yml")), reason="no documentation site")
def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert out.returncode == 0, out.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").exists()
