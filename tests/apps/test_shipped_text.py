"""What ships reads on its own (issue 33): no text points at files a user does not have (this
project's ``shared/`` folder, its seed documents), and every front end is named wherever the
front ends are listed."""

import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
FRONT_ENDS = ("PyTorch", "TensorFlow", "Keras", "JAX")


def _shipped():
    paths = [os.path.join(ROOT, name) for name in ("README.md", "pyproject.toml", "mkdocs.yml")]
    for top in ("src/sampled_softmax", "docs", "examples"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            paths += [os.path.join(folder, f) for f in files if f.endswith((".py", ".md", ".cpp", ".h"))]
    return paths


@pytest.mark.parametrize("path", _shipped(), ids=lambda p: os.path.relpath(p, ROOT))
def test_no_shipped_text_points_at_the_projects_own_folders(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    found = re.findall(r"shared/(?:data|seeds)|seeds?/00\d|seed 00\d", text, flags=re.IGNORECASE)
    assert not found, f"{os.path.relpath(path, ROOT)} points at {found[0]!r}: cite the published source instead"


@pytest.mark.parametrize("where", ["src/sampled_softmax/__init__.py", "pyproject.toml", "docs/index.md",
                                   "mkdocs.yml"])
def test_every_front_end_is_named_where_the_front_ends_are_listed(where):
    with open(os.path.join(ROOT, where), encoding="utf-8") as f:
        text = f.read()
    missing = [name for name in FRONT_ENDS if name.lower() not in text.lower()]
    assert not missing, f"{where} does not name {missing}"


def test_info_reports_every_front_end(capsys):
    from sampled_softmax.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for module in ("sampled_softmax.torch", "sampled_softmax.tensorflow", "sampled_softmax.keras",
                   "sampled_softmax.jax"):
        assert module in out
