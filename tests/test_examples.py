"""The runnable examples keep working (small settings; they must also learn)."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_torch_recipe_learns_on_synthetic_data():
    before, after = load("torch_recipe").main(["--vocab", "2000", "--steps", "150", "--dim", "32",
                                               "--num-sampled", "64", "--rowwise"])
    assert after < before - 1.0
