"""The NumPy float64 oracle against hand computation, finite differences and the full softmax."""

import math

import numpy as np
import pytest

from sampled_softmax import reference as R
from conftest import random_problem

W3 = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
H = np.array([[1.0, 2.0]])  # logits of classes 0, 1, 2: 1, 2, 3


def lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


def test_tiny_case_by_hand():
    sv = (np.array([1, 2]), np.ones((1, 1)), np.ones(2))
    loss = R.sampled_softmax_loss(W3, None, [0], H, sv)
    assert loss[0] == pytest.approx(lse(1, 2, 3) - 1, abs=1e-15)


def test_log_q_is_subtracted_from_every_logit():
    sv = (np.array([1, 2]), np.full((1, 1), 0.5), np.array([2.0, 0.25]))
    loss = R.sampled_softmax_loss(W3, None, [0], H, sv)
    t, s1, s2 = 1 - math.log(0.5), 2 - math.log(2.0), 3 - math.log(0.25)
    assert loss[0] == pytest.approx(lse(t, s1, s2) - t, abs=1e-14)
    # Negative sampling: no correction.
    loss = R.sampled_softmax_loss(W3, None, [0], H, sv, subtract_log_q=False)
    assert loss[0] == pytest.approx(lse(1, 2, 3) - 1, abs=1e-14)


def test_accidental_hit_is_removed_from_the_normalizer():
    sv = (np.array([0, 2]), np.ones((1, 1)), np.ones(2))
    assert R.sampled_softmax_loss(W3, None, [0], H, sv)[0] == pytest.approx(lse(1, 3) - 1, abs=1e-15)
    kept = R.sampled_softmax_loss(W3, None, [0], H, sv, remove_accidental_hits=False)[0]
    assert kept == pytest.approx(lse(1, 1, 3) - 1, abs=1e-15)


def test_padding_slot_is_removed_and_gets_no_gradient():
    sv = (np.array([1, 2, 2]), np.ones((1, 1)), np.array([1.0, 1.0, np.inf]))
    assert R.sampled_softmax_loss(W3, None, [0], H, sv)[0] == pytest.approx(lse(1, 2, 3) - 1, abs=1e-15)
    _, dW, _ = R.sampled_softmax_grads(W3, np.zeros(3), [0], H, sv)
    _, dW_unpadded, _ = R.sampled_softmax_grads(W3, np.zeros(3), [0], H, (sv[0][:2], sv[1], sv[2][:2]))
    np.testing.assert_array_equal(dW, dW_unpadded)


def test_num_true_targets_are_one_over_t():
    sv = (np.array([2]), np.ones((1, 2)), np.ones(1))
    loss = R.sampled_softmax_loss(W3, None, [[0, 1]], H, sv)[0]
    assert loss == pytest.approx(lse(1, 2, 3) - 0.5 * (1 + 2), abs=1e-15)


def test_label_smoothing_spreads_eps_over_kept_columns():
    eps = 0.3
    sv = (np.array([0, 1, 2]), np.ones((1, 1)), np.ones(3))  # candidate 0 is a hit: K = 3
    loss = R.sampled_softmax_loss(W3, None, [0], H, sv, label_smoothing=eps)[0]
    expected = lse(1, 2, 3) - ((1 - eps) * 1 + eps / 3 * (1 + 2 + 3))
    assert loss == pytest.approx(expected, abs=1e-14)


def test_ignored_rows_have_zero_loss_and_gradient(rng):
    W, b, y, h, sv = random_problem(rng, T=2)
    y[1] = -1
    y[2, 1] = -1  # a padded label: row 2 keeps one label
    loss = R.sampled_softmax_loss(W, b, y, h, sv, ignore_index=-1)
    assert loss[1] == 0.0
    dh, _, _ = R.sampled_softmax_grads(W, b, y, h, sv, ignore_index=-1)
    assert np.all(dh[1] == 0.0)
    # Row 2 equals the same row with num_true=1 and the padded label dropped.
    sv1 = (sv[0], sv[1][2:3, :1], sv[2])
    single = R.sampled_softmax_loss(W, b, y[2:3, :1], h[2:3], sv1)
    assert loss[2] == pytest.approx(single[0], abs=1e-13)


def test_every_class_sampled_with_count_one_is_the_full_softmax(rng):
    V = 30
    W, b, y, h, _ = random_problem(rng, V=V, B=7)
    sv = (np.arange(V), np.ones((7, 1)), np.ones(V))
    for eps in (0.0, 0.25):
        np.testing.assert_allclose(
            R.sampled_softmax_loss(W, b, y, h, sv, label_smoothing=eps),
            R.full_softmax_loss(W, b, y, h, label_smoothing=eps), rtol=0, atol=1e-13,
        )
        for g_s, g_f in zip(R.sampled_softmax_grads(W, b, y, h, sv, label_smoothing=eps),
                            R.full_softmax_grads(W, b, y, h, label_smoothing=eps)):
            np.testing.assert_allclose(g_s, g_f, rtol=0, atol=1e-13)


@pytest.mark.parametrize("T,eps,ignore,hits", [(1, 0.0, False, True), (3, 0.0, False, True),
                                                 (3, 0.2, True, True), (2, 0.1, False, False)])
def test_analytic_gradients_match_finite_differences(rng, T, eps, ignore, hits):
    W, b, y, h, sv = random_problem(rng, V=12, D=3, B=3, T=T, S=5, hits=hits, dup_candidates=True)
    if ignore:
        y[0, -1] = -100
    g = rng.normal(size=3)
    kw = dict(label_smoothing=eps, ignore_index=-100 if ignore else None, remove_accidental_hits=hits)

    def f(W_, b_, h_):
        return float(g @ R.sampled_softmax_loss(W_, b_, y, h_, sv, **kw))

    dh, dW, db = R.sampled_softmax_grads(W, b, y, h, sv, grad_loss=g, **kw)
    step = 1e-6
    for x, dx, which in ((h, dh, 2), (W, dW, 0), (b, db, 1)):
        num = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            args = [W.copy(), b.copy(), h.copy()]
            args[which][idx] += step
            up = f(*args)
            args[which][idx] -= 2 * step
            num[idx] = (up - f(*args)) / (2 * step)
        np.testing.assert_allclose(dx, num, atol=1e-7, rtol=1e-6)


def test_full_softmax_matches_log_softmax_and_its_gradient(rng):
    W, b, y, h, _ = random_problem(rng, V=9, B=4)
    logp = R.log_softmax(W, b, h)
    np.testing.assert_allclose(np.exp(logp).sum(1), 1.0)
    np.testing.assert_allclose(R.full_softmax_loss(W, b, y, h), -logp[np.arange(4), y[:, 0]], atol=1e-14)
    step = 1e-6
    dh, _, _ = R.full_softmax_grads(W, b, y, h, label_smoothing=0.1)
    num = np.zeros_like(h)
    for idx in np.ndindex(h.shape):
        hp, hm = h.copy(), h.copy()
        hp[idx] += step
        hm[idx] -= step
        num[idx] = (R.full_softmax_loss(W, b, y, hp, label_smoothing=0.1).sum()
                    - R.full_softmax_loss(W, b, y, hm, label_smoothing=0.1).sum()) / (2 * step)
    np.testing.assert_allclose(dh, num, atol=1e-7)
