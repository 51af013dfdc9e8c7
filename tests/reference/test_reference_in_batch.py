"""The in-batch (retrieval) softmax of the NumPy reference: its formulas checked directly (the
full softmax, the order of temperature and correction, each mask by its effect, hard negatives)
and its gradients by central differences."""

import itertools

import numpy as np
import pytest

from sampled_softmax import SampledSoftmaxError
from sampled_softmax import reference as R

from conftest import central_differences


def problem(rng, B=5, C=8, D=3):
    q, c = rng.normal(size=(B, D)), rng.normal(size=(C, D))
    ids = rng.permutation(20)[:C]
    ids[3] = ids[1]  # the positive of query 1 is also query 3's: an accidental hit in rows 1 and 3
    ids[6] = ids[0]  # an extra negative equal to query 0's positive
    log_q = np.log(rng.uniform(0.01, 0.9, size=C))
    return q, c, ids, log_q


def test_all_distinct_candidates_without_correction_is_the_full_softmax(rng):
    V, D = 7, 3
    q, c = rng.normal(size=(4, D)), rng.normal(size=(V, D))
    logits = q @ c.T
    full = np.log(np.exp(logits).sum(1)) - logits[np.arange(4), np.arange(4)]
    np.testing.assert_allclose(R.in_batch_softmax_loss(q, c, candidate_ids=np.arange(V)), full, rtol=1e-13)
    # and equals the reference's full softmax with the candidates as the class table
    np.testing.assert_allclose(R.in_batch_softmax_loss(q, c), R.full_softmax_loss(c, None, np.arange(4), q),
                               rtol=1e-13)


def test_temperature_scales_the_scores_and_not_the_correction(rng):
    q, c, _, log_q = problem(rng)
    t = 0.3
    o = q @ c.T / t - log_q
    want = np.log(np.exp(o).sum(1)) - o[np.arange(5), np.arange(5)]
    np.testing.assert_allclose(R.in_batch_softmax_loss(q, c, log_q=log_q, temperature=t), want, rtol=1e-13)
    wrong = (q @ c.T - log_q) / t  # torch-rechub's order
    assert not np.allclose(want, np.log(np.exp(wrong).sum(1)) - wrong[np.arange(5), np.arange(5)])


def test_each_mask_removes_its_columns_with_zero_probability_and_gradient(rng):
    q, c, ids, _ = problem(rng)
    qid = np.array([0, 1, 2, 0, 4])  # query 0 twice: rows 0 and 3 do not push away each other's positive
    mask = np.ones((5, 8), bool)
    mask[2, 7] = False
    excluded = np.full((5, 2), -1)
    excluded[4] = [ids[5], ids[2]]  # row 4 masks two items (one of them the positive of row 2)
    keep = R.in_batch_columns(5, 8, candidate_ids=ids, query_ids=qid, score_mask=mask, excluded_ids=excluded)
    assert not keep[1, 3] and not keep[3, 1] and not keep[0, 6]  # accidental hits
    assert not keep[0, 3] and not keep[3, 0]  # the same query
    assert not keep[2, 7] and not keep[4, 5] and not keep[4, 2]  # the caller's masks
    assert keep[np.arange(5), np.arange(5)].all()  # positives are never removed
    assert keep.sum() == 40 - 8
    # By effect: a removed column's logit does not matter, and gets no gradient.
    kw = dict(candidate_ids=ids, query_ids=qid, score_mask=mask, excluded_ids=excluded)
    base = R.in_batch_softmax_loss(q, c, **kw)
    _, dc, _, _ = R.in_batch_softmax_grads(q, c, grad_loss=np.eye(5)[4], **kw)  # row 4's loss only
    assert not dc[5].any() and not dc[2].any()
    c2 = c.copy()
    c2[5] += 100.0  # a removed column: row 4's loss does not move
    changed = R.in_batch_softmax_loss(q, c2, **kw)
    assert changed[4] == base[4]


def test_an_excluded_positive_stays_the_target(rng):
    q, c, ids, _ = problem(rng)
    excluded = np.array([[ids[0]], [-1], [-1], [-1], [-1]])
    keep = R.in_batch_columns(5, 8, candidate_ids=ids, excluded_ids=excluded)
    assert keep[0, 0] and not keep[0, 6]  # column 6 has the same id as the positive: removed


def test_hard_negatives_keep_the_highest_scoring_negatives(rng):
    q, c, ids, log_q = problem(rng)
    k = 2
    keep = R.in_batch_columns(5, 8, candidate_ids=ids)
    logits = R.in_batch_logits(q, c, keep, log_q=log_q)
    hard = R.hard_negatives(logits, keep, k)
    for i in range(5):
        negatives = [j for j in range(8) if keep[i, j] and j != i]
        top = sorted(negatives, key=lambda j: -logits[i, j])[:k]
        assert set(np.nonzero(hard[i])[0]) == set(top) | {i}
    full = R.hard_negatives(logits, keep, 100)
    np.testing.assert_array_equal(full, keep)
    o = logits[0, [0] + sorted(np.nonzero(hard[0])[0][np.nonzero(hard[0])[0] != 0])]
    np.testing.assert_allclose(R.in_batch_softmax_loss(q, c, candidate_ids=ids, log_q=log_q, num_hard_negatives=k)[0],
                               np.log(np.exp(o).sum()) - o[0], rtol=1e-13)


@pytest.mark.parametrize("masks,hard,weighted", list(itertools.product([False, True], [None, 3], [False, True])))
def test_gradients_match_central_differences(rng, masks, hard, weighted):
    q, c, ids, log_q = problem(rng)
    t = np.array([0.7])
    kw = dict(candidate_ids=ids, num_hard_negatives=hard)
    if masks:
        kw.update(query_ids=np.array([0, 1, 2, 0, 4]), score_mask=rng.uniform(size=(5, 8)) > 0.2,
                  excluded_ids=np.array([[ids[4]], [-1], [ids[7]], [-1], [-1]]))
    if weighted:
        kw["sample_weight"] = rng.uniform(0.0, 2.0, size=5)
    g = rng.normal(size=5)

    def f(q_, c_, t_, lq_):
        return float(np.sum(g * R.in_batch_softmax_loss(q_, c_, log_q=lq_, temperature=float(t_[0]), **kw)))

    dq, dc, dt, dlq = R.in_batch_softmax_grads(q, c, grad_loss=g, log_q=log_q, temperature=float(t[0]), **kw)
    nq, nc, nt, nlq = central_differences(f, [q, c, t, log_q])
    for ours, num in ((dq, nq), (dc, nc), (np.array([dt]), nt), (dlq, nlq)):
        np.testing.assert_allclose(ours, num, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kw,message", [
    (dict(candidates=np.ones((3, 3))), r"`candidates` must have at least as many rows as `query` \(5: .*received 3"),
    (dict(candidates=np.ones((8, 4))), r"`candidates` last dimension must equal the query's dim 3; received 4"),
    (dict(query=np.ones(3)), r"`query` must have shape \[batch, dim\]; received shape \[3\]"),
    (dict(candidate_ids=np.arange(7)), r"`candidate_ids` must have shape \[8\]; received shape \[7\]"),
    (dict(query_ids=np.arange(4)), r"`query_ids` must have shape \[5\]; received shape \[4\]"),
    (dict(log_q=np.zeros(5)), r"`log_q` must have shape \[8\]; received shape \[5\]"),
    (dict(log_q=np.full(8, 0.5)), r"`log_q` must be <= 0 \(the log of a sampling probability\); received 0.5"),
    (dict(log_q=np.array([0, -1, -np.inf, 0, 0, 0, 0, 0.0])), r"`log_q` must be finite"),
    (dict(temperature=0.0), r"`temperature` must be positive and finite; received 0.0"),
    (dict(temperature=float("nan")), r"`temperature` must be positive and finite; received nan"),
    (dict(score_mask=np.ones((5, 7), bool)), r"`score_mask` must have shape \[5, 8\]; received shape \[5, 7\]"),
    (dict(excluded_ids=np.ones((4, 2), int)), r"`excluded_ids` must have shape \[5, K\]"),
    (dict(num_hard_negatives=0), r"`num_hard_negatives` must be >= 1 \(or None: every negative\); received 0"),
])
def test_bad_input_is_a_clear_error(rng, kw, message):
    q, c, ids, _ = problem(rng)
    args = dict(query=q, candidates=c, candidate_ids=ids)
    args.update(kw)
    with pytest.raises(SampledSoftmaxError, match=message):
        R.in_batch_softmax_loss(args.pop("query"), args.pop("candidates"), **args)


def test_mixed_negatives_columns_keep_their_own_source_probability():
    """The reference's mixed negatives: batch columns with the in-batch estimate, sampled columns
    with the log of their inclusion probability, padding slots masked in every row; the loss on
    them equals the in-batch loss over the distinct columns only (padding has no effect)."""
    rng = np.random.default_rng(3)
    V_, D_ = 40, 3
    table = rng.normal(size=(V_, D_))
    ids = np.array([4, 9, 9, 30])
    in_batch = np.log([0.5, 0.2, 0.2, 0.05])
    cand = np.array([1, 17, 1, 33, 9])          # slot 2 repeats slot 0: padding
    count = np.array([0.3, 0.1, np.inf, 0.05, 0.2])
    cands, cids, log_q, mask = R.mixed_negatives(table[ids], ids, in_batch, (cand, None, count), lambda i: table[i])
    np.testing.assert_array_equal(cands, table[np.concatenate([ids, cand])])
    np.testing.assert_array_equal(cids, np.concatenate([ids, cand]))
    np.testing.assert_array_equal(log_q, np.concatenate([in_batch, np.log([0.3, 0.1, 1.0, 0.05, 0.2])]))
    np.testing.assert_array_equal(mask, np.broadcast_to([True] * 4 + [True, True, False, True, True], (4, 9)))
    q = rng.normal(size=(4, D_))
    loss = R.in_batch_softmax_loss(q, cands, candidate_ids=cids, log_q=log_q, score_mask=mask)
    keep = [0, 1, 2, 3, 4, 5, 7, 8]
    without_padding = R.in_batch_softmax_loss(q, cands[keep], candidate_ids=cids[keep], log_q=log_q[keep])
    np.testing.assert_allclose(loss, without_padding, rtol=1e-14)
    with pytest.raises(SampledSoftmaxError, match=r"`sampled_values\[2\]` .*must be at most 1 .*received 2.5"):
        R.mixed_negatives(table[ids], ids, in_batch, (cand, None, np.array([2.5, 0.1, 0.1, 0.1, 0.1])),
                          lambda i: table[i])
    with pytest.raises(SampledSoftmaxError, match=r"`encode` must return \[5, 3\] embeddings"):
        R.mixed_negatives(table[ids], ids, in_batch, (cand, None, count), lambda i: table[i][:, :2])
