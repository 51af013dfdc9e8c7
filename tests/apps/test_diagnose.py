"""``sampled-softmax diagnose``: estimates checked where the answer is known."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sampled_softmax.apps.diagnose import example_gradients, estimate, random_problem  # noqa: E402
from sampled_softmax.torch import UniformSampler  # noqa: E402


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
                 "--out", str(tmp_path), "--picture", "--picture-draws", "5"]) == 0
    out = capsys.readouterr().out
    assert "cos d/db" in out and "exact full-softmax loss" in out and "exclude_true" in out
    rows = json.loads((tmp_path / "diagnose.json").read_text())["rows"]
    # Both estimators with replacement, TensorFlow's alone for the unique draw.
    assert len(rows) == 2 * 3 * (1 + 2)
    assert {r["estimator"] for r in rows if r["draw"] == "unique"} == {"tensorflow"}
    assert all(np.isfinite(r["bias"]) for r in rows)
    for name in ("diagnose_bias_cosine.png", "diagnose_per_class_gradient.png", "diagnose_estimators.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_the_pictures_gradients_spike_where_the_article_says():
    # One example: the full gradient is p - onehot (negative on the target, positive elsewhere,
    # summing to 0); one sampled draw is nonzero only on the target and the drawn classes; with
    # exclude_true the target is never a negative, so its gradient is negative in every draw.
    W, b, h, y, _ = random_problem(60, 6, 8, spread=2.0)
    grads = example_gradients(W, b, h, y, UniformSampler(60, draw="with_replacement"), 5, draws=50)
    full, target = grads["full"], int(y[0])
    assert full[target] < 0 and bool((torch.cat([full[:target], full[target + 1:]]) > 0).all())
    assert abs(float(full.sum())) < 1e-12
    for estimator in ("tensorflow", "exclude_true"):
        one, mean = grads[estimator]
        assert int((one != 0).sum()) <= 1 + 5
        assert abs(float(one.sum())) < 1e-12 and abs(float(mean.sum())) < 1e-12
    assert grads["exclude_true"][0][target] < 0
    # Averaged over draws the sampled gradient spreads over many classes (the forest).
    assert int((grads["exclude_true"][1] != 0).sum()) > 20


def test_the_article_estimator_is_closer_to_the_full_loss_on_a_peaked_problem():
    # Uniform q over many classes: TensorFlow's estimator lifts the target by -log(S/V) and
    # underestimates the loss much more than the article's, which leaves the target uncorrected.
    W, b, h, y, counts = random_problem(400, 8, 64, spread=3.0)
    rows, _ = estimate(W, b, h, y, counts, sizes=[20], draws=["with_replacement"], samplers=["uniform"],
                       repeats=20, estimators=("tensorflow", "exclude_true"))
    tf_row, article_row = rows
    assert (tf_row["estimator"], article_row["estimator"]) == ("tensorflow", "exclude_true")
    assert abs(article_row["bias"]) < abs(tf_row["bias"])
