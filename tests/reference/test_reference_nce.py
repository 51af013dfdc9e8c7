"""The reference's NCE and negative sampling against direct float64 implementations of their
objectives, and finite differences."""

import numpy as np
import pytest

from sampled_softmax import reference as R

from conftest import central_differences, random_problem


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def word2vec_objective(W, b, y, h, cand):
    """-log s(h.W_y + b_y) - sum_k log s(-(h.W_c + b_c)), one row at a time."""
    out = []
    for i in range(h.shape[0]):
        pos = h[i] @ W[y[i, 0]] + b[y[i, 0]]
        neg = W[cand] @ h[i] + b[cand]
        out.append(-log_sigmoid(pos) - log_sigmoid(-neg).sum())
    return np.array(out)


def test_negative_sampling_is_word2vecs_objective(rng):
    W, b, y, h, sv = random_problem(rng, hits=False)
    np.testing.assert_allclose(R.negative_sampling_loss(W, b, y, h, sv), word2vec_objective(W, b, y, h, sv[0]),
                               rtol=1e-12)


def test_nce_is_the_objective_over_corrected_logits(rng):
    W, b, y, h, (cand, tc, sc) = random_problem(rng, T=2)
    expected = []
    for i in range(h.shape[0]):
        true = np.array([h[i] @ W[y[i, j]] + b[y[i, j]] - np.log(tc[i, j]) for j in range(2)])
        noise = W[cand] @ h[i] + b[cand] - np.log(sc)
        expected.append(-(0.5 * log_sigmoid(true) + 0.5 * log_sigmoid(-true)).sum() - log_sigmoid(-noise).sum())
    np.testing.assert_allclose(R.nce_loss(W, b, y, h, (cand, tc, sc)), expected, rtol=1e-12)


def test_negative_sampling_equals_nce_without_log_q(rng):
    W, b, y, h, sv = random_problem(rng, T=3)
    np.testing.assert_allclose(R.negative_sampling_loss(W, b, y, h, sv, remove_accidental_hits=True),
                               R.nce_loss(W, b, y, h, sv, remove_accidental_hits=True, subtract_log_q=False))


@pytest.mark.parametrize("hits,ignore", [(False, False), (True, True)])
def test_nce_gradients_match_finite_differences(rng, hits, ignore):
    W, b, y, h, sv = random_problem(rng, T=2, V=15, D=3, B=4, S=5)
    if ignore:
        y[0, 1] = -1
        y[2, :] = -1
    kw = dict(remove_accidental_hits=hits, ignore_index=-1 if ignore else None)
    weights = rng.normal(size=h.shape[0])
    d_h, d_W, d_b = R.nce_grads(W, b, y, h, sv, grad_loss=weights, **kw)

    def total(W_, b_, h_):
        return float(weights @ R.nce_loss(W_, b_, y, h_, sv, **kw))

    for grad, numeric in zip((d_W, d_b, d_h), central_differences(total, [W, b, h])):
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-7)
    if ignore:
        assert R.nce_loss(W, b, y, h, sv, **kw)[2] == 0.0 and np.all(d_h[2] == 0.0)
