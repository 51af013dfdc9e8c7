"""The NumPy float64 oracle's in-batch softmax (two-tower retrieval) and mixed negatives;
re-exported by :mod:`sampled_softmax.reference`, where they are documented and tested."""

from __future__ import annotations

import numpy as np

from . import SampledSoftmaxError
from . import _validation as V
from .reference import _softmax_xent  # reference.py imports this module after defining it

# ---------------------------------------------------------------------------------------------
# In-batch softmax (two-tower retrieval): the same stages over the batch's own candidates
#
# Query ``i`` of ``B`` has its positive at candidate ``i``; candidates ``B..C-1`` are extra
# negatives shared by every row. Stage 1 (:func:`in_batch_columns`) decides which columns each row
# keeps, stage 2 (:func:`in_batch_logits`) computes
#
#     o[i, j] = q_i . c_j / temperature - log_q[j]
#
# (the correction is *not* divided by the temperature: scale, then correct, as TFRS' Retrieval
# does; Yi et al. 2019 subtract ``log p_j`` from every column, the positive's too),
# :func:`hard_negatives` may keep only each row's highest-scoring negatives, and the head is the
# softmax cross-entropy with target 1 on column ``i``.


def in_batch_columns(batch_size, num_candidates, *, candidate_ids=None, query_ids=None, score_mask=None,
                     excluded_ids=None, remove_accidental_hits=True):
    """Stage 1: the keep mask ``[B, C]``. Row ``i`` always keeps its positive (column ``i``);
    a negative column ``j != i`` is removed when

    * ``remove_accidental_hits`` and ``candidate_ids[j] == candidate_ids[i]`` (the row's own
      positive item seen again, an accidental hit);
    * ``query_ids[i] == query_ids[j]`` for an in-batch column ``j < B`` (the same query twice in
      the batch: the other copy's positive is a positive of this row too);
    * ``score_mask[i, j]`` is False (the caller's mask: True keeps);
    * ``candidate_ids[j]`` is one of ``excluded_ids[i]`` (per-query ids to mask, e.g. items the
      user already interacted with; negative entries are padding).
    """
    b, c = int(batch_size), int(num_candidates)
    keep = np.ones((b, c), bool)
    if candidate_ids is not None:
        ids = np.asarray(candidate_ids)
        if remove_accidental_hits:
            keep &= ids[None, :] != ids[:b, None]
        if excluded_ids is not None:
            ex = np.asarray(excluded_ids)
            keep &= ~((ids[None, :, None] == ex[:, None, :]) & (ex[:, None, :] >= 0)).any(axis=2)
    elif excluded_ids is not None:
        raise SampledSoftmaxError(V.EXCLUDED_NEEDS_CANDIDATE_IDS)
    if query_ids is not None:
        qid = np.asarray(query_ids)
        keep[:, :b] &= qid[:, None] != qid[None, :]
    if score_mask is not None:
        keep &= np.asarray(score_mask, bool)
    keep[np.arange(b), np.arange(b)] = True
    return keep


def in_batch_logits(query, candidates, keep, *, log_q=None, temperature=1.0):
    """Stage 2: ``o [B, C] = query . candidates^T / temperature - log_q``, removed columns
    ``-inf``."""
    o = np.asarray(query, np.float64) @ np.asarray(candidates, np.float64).T / float(temperature)
    if log_q is not None:
        o = o - np.asarray(log_q, np.float64)[None, :]
    return np.where(keep, o, -np.inf)


def hard_negatives(logits, keep, num_hard_negatives):
    """The keep mask with only each row's ``num_hard_negatives`` highest-logit kept negatives
    (and its positive): TFRS' ``num_hard_negatives``. All of them when a row has no more."""
    if num_hard_negatives is None:
        return keep
    b = keep.shape[0]
    negatives = np.where(keep, logits, -np.inf)
    negatives[np.arange(b), np.arange(b)] = -np.inf
    order = np.argsort(-negatives, axis=1, kind="stable")[:, :num_hard_negatives]
    hard = np.zeros_like(keep)
    np.put_along_axis(hard, order, True, axis=1)
    hard &= keep
    hard[np.arange(b), np.arange(b)] = True
    return hard


def _in_batch(query, candidates, candidate_ids, query_ids, *, log_q, temperature, remove_accidental_hits,
              score_mask, excluded_ids, num_hard_negatives):
    query, candidates = np.asarray(query, np.float64), np.asarray(candidates, np.float64)
    b, c, _ = V.check_in_batch_shapes(
        query.shape, candidates.shape, candidate_ids=None if candidate_ids is None else np.shape(candidate_ids),
        query_ids=None if query_ids is None else np.shape(query_ids), log_q=None if log_q is None else np.shape(log_q),
        score_mask=None if score_mask is None else np.shape(score_mask),
        excluded_ids=None if excluded_ids is None else np.shape(excluded_ids))
    V.check_temperature(temperature)
    V.check_num_hard_negatives(num_hard_negatives)
    if log_q is not None:
        lq = np.asarray(log_q, np.float64)
        V.check_log_q_values(float(lq.min(initial=0.0)), float(lq.max(initial=-1.0)), bool(np.isfinite(lq).all()))
    keep = in_batch_columns(b, c, candidate_ids=candidate_ids, query_ids=query_ids, score_mask=score_mask,
                            excluded_ids=excluded_ids, remove_accidental_hits=remove_accidental_hits)
    logits = in_batch_logits(query, candidates, keep, log_q=log_q, temperature=temperature)
    keep = hard_negatives(logits, keep, num_hard_negatives)
    logits = np.where(keep, logits, -np.inf)
    target = np.zeros((b, c))
    target[np.arange(b), np.arange(b)] = 1.0
    loss, d_logits = _softmax_xent(logits, keep, target)
    return query, candidates, loss, np.where(keep, d_logits, 0.0)


def in_batch_softmax_loss(query, candidates, *, candidate_ids=None, query_ids=None, log_q=None, temperature=1.0,
                          remove_accidental_hits=True, score_mask=None, excluded_ids=None, num_hard_negatives=None,
                          sample_weight=None):
    """Per-query in-batch softmax loss ``[B]`` in float64 (weighted by ``sample_weight``):
    ``loss_i = logsumexp_kept(o_i) - o_ii`` over the columns of :func:`in_batch_columns`, the
    logits of :func:`in_batch_logits` and, with ``num_hard_negatives``, :func:`hard_negatives`.
    With ``C`` distinct candidates, no ``log_q`` and temperature 1 it is the full softmax
    cross-entropy over those ``C`` classes."""
    _, _, loss, _ = _in_batch(query, candidates, candidate_ids, query_ids, log_q=log_q, temperature=temperature,
                              remove_accidental_hits=remove_accidental_hits, score_mask=score_mask,
                              excluded_ids=excluded_ids, num_hard_negatives=num_hard_negatives)
    return loss if sample_weight is None else loss * np.asarray(sample_weight, np.float64)


def in_batch_softmax_grads(query, candidates, *, grad_loss=None, candidate_ids=None, query_ids=None, log_q=None,
                           temperature=1.0, remove_accidental_hits=True, score_mask=None, excluded_ids=None,
                           num_hard_negatives=None, sample_weight=None):
    """Gradients of ``sum_i grad_loss_i * loss_i`` (``grad_loss`` default ones):
    ``(d query [B, D], d candidates [C, D], d temperature, d log_q [C] or None)``. With
    ``G = grad_loss * sample_weight * (softmax(o) - target)`` (zero on removed columns):
    ``d query = G candidates / t``, ``d candidates = G^T query / t``,
    ``d t = -sum(G * (o + log_q)) / t`` and ``d log_q = -sum_i G_i``."""
    query, candidates, loss, d_logits = _in_batch(query, candidates, candidate_ids, query_ids, log_q=log_q,
                                                  temperature=temperature,
                                                  remove_accidental_hits=remove_accidental_hits,
                                                  score_mask=score_mask, excluded_ids=excluded_ids,
                                                  num_hard_negatives=num_hard_negatives)
    g = np.ones(loss.shape) if grad_loss is None else np.asarray(grad_loss, np.float64)
    if sample_weight is not None:
        g = g * np.asarray(sample_weight, np.float64)
    G = d_logits * g[:, None]
    t = float(temperature)
    scores = query @ candidates.T / t  # o + log_q
    return (G @ candidates / t, G.T @ query / t, float(-np.sum(G * scores) / t),
            None if log_q is None else -G.sum(axis=0))


def mixed_negatives(candidates, candidate_ids, in_batch_log_q, sampled_values, encode):
    """Mixed negative sampling (Yang et al. 2020): the columns of the in-batch loss when ``M``
    corpus candidates are drawn besides the batch's own ``B``.

    ``sampled_values = (cand [M], _, E [M])`` is a draw whose expected counts are inclusion
    probabilities (``draw="unique_exact"``: ``E(k) = 1 - (1 - Q(k))^M``, ``inf`` on a padding
    slot, the repeat of a class drawn already); ``encode(ids) -> [M, D]`` is the candidate tower.
    Each column keeps the log probability of the source that put it there::

        candidates = [candidates; encode(cand)]                 # [B + M, D]
        candidate_ids = [candidate_ids; cand]                   # [B + M]
        log_q = [in_batch_log_q; log E(cand)]                   # [B + M]
        score_mask[i, j] = j < B or E(cand[j - B]) is finite    # [B, B + M]

    Returns ``(candidates, candidate_ids, log_q, score_mask)`` (float64 arrays, ids int64) for
    :func:`in_batch_softmax_loss`."""
    candidates = np.asarray(candidates, np.float64)
    candidate_ids, in_batch_log_q = np.asarray(candidate_ids), np.asarray(in_batch_log_q, np.float64)
    cand, _, count = (np.asarray(v) for v in V.check_sampled_values_triple(sampled_values))
    b, d = V.check_mixed_negatives_shapes(candidates.shape, candidate_ids.shape, in_batch_log_q.shape, cand.shape,
                                          count.shape)
    count = count.astype(np.float64)
    padding = np.isinf(count)
    if np.any(count[~padding] > 1.0):
        raise SampledSoftmaxError(
            f"`sampled_values[2]` (sampled_expected_count) must be at most 1 for mixed negatives (an inclusion "
            f"probability); received {count[~padding].max()}")
    extra = np.asarray(encode(cand), np.float64)
    V.check_encoded_shape(list(extra.shape), cand.shape[0], d)
    log_e = np.log(np.where(padding, 1.0, count))
    score_mask = np.concatenate([np.ones((b, b), bool), np.broadcast_to(~padding[None, :], (b, cand.shape[0]))], 1)
    return (np.concatenate([candidates, extra]), np.concatenate([candidate_ids, cand]).astype(np.int64),
            np.concatenate([in_batch_log_q, log_e]), score_mask)
