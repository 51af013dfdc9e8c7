"""The reference's ``exclude_true`` estimator (seed 001's article) against its formula, a direct
implementation, finite differences and its promise: an unbiased estimate of the normalizer."""

import numpy as np
import pytest

from sampled_softmax import reference as R

from conftest import central_differences


def exclusion_problem(rng, *, V=30, D=5, B=6, T=1, S=7, uniform=False):
    """Counts consistent with ``S`` draws with replacement from ``q``: ``E = S q``. Row 0's
    label is among the candidates (a rejection); with ``T > 1`` row 1 repeats a label."""
    q = np.full(V, 1.0 / V) if uniform else rng.dirichlet(np.ones(V))
    W, b, h = rng.normal(size=(V, D)), rng.normal(size=V), rng.normal(size=(B, D))
    y = rng.integers(0, V, size=(B, T))
    cand = rng.choice(V, size=S, p=q)
    cand[0] = y[0, 0]
    if T > 1:
        y[1, 1] = y[1, 0]
    return W, b, y, h, q, (cand, S * q[y], S * q[cand])


def article_loss(W, h, y, cand, V):
    """The article's equation for uniform q and one label, written from the formula:
    L = -x_t + log(e^{x_t} + sum_{c != t} e^{x_c - log(k q_c / (1 - q_t))}), k the samples left."""
    out = []
    for i in range(h.shape[0]):
        x = W @ h[i]
        t = y[i, 0]
        left = [c for c in cand if c != t]
        k, q = len(left), 1.0 / V
        terms = [x[t]] + [x[c] - np.log(k * q / (1.0 - q)) for c in left]
        out.append(-x[t] + np.log(np.exp(terms).sum()))
    return np.array(out)


def direct_loss(W, b, y, h, q, cand, ignore_index=None):
    """The estimator row by row: the row's distinct kept labels uncorrected, each kept candidate
    with log(k_i q_c / (1 - Q_i)), target 1 / T_i on the kept labels."""
    out = []
    for i in range(h.shape[0]):
        labels = [c for c in y[i] if c != ignore_index]
        x = W @ h[i] + b
        left = [c for c in cand if c not in labels]
        Q = q[sorted(set(labels))].sum()
        terms = [x[c] for c in labels] + [x[c] - np.log(len(left) * q[c] / (1.0 - Q)) for c in left]
        lse = np.log(np.exp(terms).sum())
        out.append(lse - np.mean([x[c] for c in labels]) if labels else 0.0)
    return np.array(out)


def test_uniform_q_one_label_is_the_articles_equation(rng):
    W, _, y, h, q, sv = exclusion_problem(rng, uniform=True)
    ours = R.sampled_softmax_loss(W, None, y, h, sv, exclude_true=True)
    np.testing.assert_allclose(ours, article_loss(W, h, y, sv[0], len(q)), rtol=1e-12)


@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("ignore", [False, True])
def test_the_estimator_row_by_row(rng, T, ignore):
    W, b, y, h, q, sv = exclusion_problem(rng, T=T)
    if ignore:
        y[2, 0] = -100
        y[3, :] = -100
    ours = R.sampled_softmax_loss(W, b, y, h, sv, exclude_true=True, ignore_index=-100 if ignore else None)
    np.testing.assert_allclose(ours, direct_loss(W, b, y, h, q, sv[0], -100 if ignore else None), rtol=1e-12)
    # remove_accidental_hits=False changes nothing: rejection is the estimator's own.
    again = R.sampled_softmax_loss(W, b, y, h, sv, exclude_true=True, remove_accidental_hits=False,
                                   ignore_index=-100 if ignore else None)
    np.testing.assert_array_equal(ours, again)


def test_a_row_whose_candidates_are_all_rejected_is_its_labels_alone(rng):
    W, b, y, h, q, (cand, tc, sc) = exclusion_problem(rng, B=2)
    cand[:] = y[0, 0]
    sv = (cand, tc, len(cand) * q[cand])
    logits, keep = R.sampled_logits(W, b, y, h, sv, exclude_true=True)
    assert not keep[0, 1:].any() and np.all(logits[0, 1:] == -np.inf)
    np.testing.assert_allclose(R.sampled_softmax_loss(W, b, y, h, sv, exclude_true=True)[0], 0.0, atol=1e-15)


@pytest.mark.parametrize("T", [1, 3])
def test_gradients_are_the_losss(rng, T):
    W, b, y, h, q, sv = exclusion_problem(rng, T=T, V=12, B=3, D=3)
    weights = rng.normal(size=3)
    grads = R.sampled_softmax_grads(W, b, y, h, sv, grad_loss=weights, exclude_true=True)
    numeric = central_differences(
        lambda W_, b_, h_: float(weights @ R.sampled_softmax_loss(W_, b_, y, h_, sv, exclude_true=True)), [W, b, h])
    for ours, num in zip((grads[1], grads[2], grads[0]), numeric):
        np.testing.assert_allclose(ours, num, rtol=1e-6, atol=1e-8)


def test_the_normalizer_estimate_is_unbiased():
    """E[sum_t e^t + sum_k e^s] = sum_c e^{x_c} over draws (rows where every draw is rejected,
    probability Q^S, are negligible here)."""
    rng = np.random.default_rng(7)
    V, S, draws = 15, 4, 6000
    q = rng.dirichlet(np.ones(V) * 2)
    W, h = rng.normal(size=(V, 3)), rng.normal(size=(1, 3))
    y = np.array([[3]])
    estimates = []
    for _ in range(draws):
        cand = rng.choice(V, size=S, p=q)
        logits, keep = R.sampled_logits(W, None, y, h, (cand, S * q[y], S * q[cand]), exclude_true=True)
        estimates.append(np.exp(logits[keep]).sum())
    full = np.exp(W @ h[0]).sum()
    spread = np.std(estimates) / np.sqrt(draws)
    assert abs(np.mean(estimates) - full) < 4 * spread, (np.mean(estimates), full, spread)
    # TensorFlow's estimator (the label's own column corrected too, hits kept) is a different
    # quantity: its mean is not the normalizer, which is why the two are options, not one.
