"""``sampled-softmax diagnose``: estimates checked where the answer is known."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sampled_softmax.apps.diagnose import estimate, random_problem  # noqa: E402


def test_every_class_once_with_a_uniform_sampler_is_exact():
    # S = V unique draws from a uniform sampler include every class once with a constant
    # expected count, which cancels in the softmax: no bias, no variance, the full gradient.
    W, b, h, y, counts = random_problem(50, 8, 64, spread=2.0)
    rows, _ = estimate(W, b, h, y, counts, sizes=[50], draws=["unique"], samplers=["uniform"], repeats=3)
    (row,) = rows
    assert abs(row["bias"]) < 1e-12 and row["std"] < 1e-12
    assert row["grad_cosine_bias"] == pytest.approx(1.0, abs=1e-12)
    assert row["grad_cosine_hidden"] == pytest.approx(1.0, abs=1e-12)


def test_more_samples_mean_less_bias_and_better_gradients():
    # With exact inclusion probabilities E(k) -> 1 as S grows, so the estimate converges to
    # the full softmax. (With replacement it does not: the true logit keeps its -log(S Q(y)).)
    W, b, h, y, counts = random_problem(400, 16, 128, spread=3.0)
    rows, _ = estimate(W, b, h, y, counts, sizes=[8, 2000], draws=["unique_exact"], samplers=["log_uniform"],
                       repeats=10)
    small, large = rows
    assert abs(large["bias"]) < 0.5 * abs(small["bias"])
    assert large["grad_cosine_bias"] > small["grad_cosine_bias"]
    assert large["grad_cosine_bias"] > 0.9


def test_the_tf_unique_draw_with_a_skewed_sampler_is_biased_even_at_s_equal_v():
    # TensorFlow's expected count 1 - (1 - Q)^tries is not constant across classes: the
    # corrected logits differ from the full softmax's even when every class is drawn.
    W, b, h, y, counts = random_problem(50, 8, 64, spread=2.0)
    rows, _ = estimate(W, b, h, y, counts, sizes=[50], draws=["unique"], samplers=["log_uniform"], repeats=2)
    assert abs(rows[0]["bias"]) > 1e-6  # small (tries are many), but not the exact 0 above


def test_command_writes_table_plots_and_json(tmp_path, capsys):
    from sampled_softmax.cli import main

    assert main(["diagnose", "--vocab", "300", "--dim", "8", "--batch", "64", "--sizes", "8,64,300",
                 "--repeats", "3", "--samplers", "uniform,log_uniform", "--draws", "unique,with_replacement",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cos d/db" in out and "exact full-softmax loss" in out
    rows = json.loads((tmp_path / "diagnose.json").read_text())["rows"]
    assert len(rows) == 2 * 2 * 3
    assert all(np.isfinite(r["bias"]) for r in rows)
    for name in ("diagnose_bias_cosine.png", "diagnose_per_class_gradient.png"):
        assert (tmp_path / name).stat().st_size > 10_000
