"""The stages of the sampled loss in ``keras.ops`` (see :mod:`sampled_softmax.reference`, which
states each): the columns of each row, the corrected logits over the gathered rows, and the
softmax head. Keras differentiates them; a new loss is a new head."""

from __future__ import annotations

import numpy as np

from ._backend import ops

# Removed columns take the lowest finite float32: exp() of it underflows to exactly 0, so their
# probability and gradient are exactly 0, and 0 * logit stays finite.
LOWEST = float(np.finfo(np.float32).min)


def candidate_columns(y, valid, cand, true_count, samp_count, *, remove_accidental_hits, subtract_log_q,
                      exclude_true=False):
    """Stage 1: ``(ids [N*T + S], log_q [N, T + S], keep [N, T + S])`` for targets ``y [N, T]``
    (``valid``: not ignored; ignored ones' ids are 0) and candidates ``cand [S]``. ``keep`` is
    False for ignored targets, padding slots (expected count ``inf``) and, with
    ``remove_accidental_hits``, a candidate equal to one of the row's kept targets; ``log_q`` is
    ``log E`` of each column (0 where not kept, or without ``subtract_log_q``).

    ``exclude_true`` (the reference's module docstring): hits are always removed, ``log_q`` is 0
    on the targets and ``log(k_i q(c) / (1 - Q_i))`` on row ``i``'s candidates, ``q = E / S``."""
    y_safe = ops.where(valid, y, 0)
    ids = ops.concatenate([ops.reshape(y_safe, (-1,)), cand], axis=0)
    padding = ops.logical_not(ops.isfinite(samp_count))
    keep_s = ops.logical_and(ops.logical_not(padding)[None, :], ops.ones_like(y[:, :1], dtype="bool"))
    if remove_accidental_hits or exclude_true:
        hits = ops.logical_and(ops.equal(ops.reshape(cand, (1, 1, -1)), y[:, :, None]), valid[:, :, None])
        keep_s = ops.logical_and(keep_s, ops.logical_not(ops.any(hits, axis=1)))
    keep = ops.concatenate([valid, keep_s], axis=1)
    if subtract_log_q:
        log_q_true = ops.log(ops.where(valid, true_count, 1.0))
        log_q_cand = ops.log(ops.where(padding, 1.0, samp_count))
    else:
        log_q_true, log_q_cand = ops.zeros_like(true_count), ops.zeros_like(samp_count)
    log_q_cand = ops.zeros_like(keep_s, dtype="float32") + log_q_cand[None, :]
    if exclude_true and subtract_log_q:
        log_q_true = ops.zeros_like(true_count)
        log_q_cand = log_q_cand + exclusion_correction(y, valid, true_count, keep_s)[:, None]
    return ids, ops.concatenate([log_q_true, log_q_cand], axis=1), keep


def exclusion_correction(y, valid, true_count, keep_s):
    """``log(k_i / S) - log(1 - Q_i)`` per row (0 for a row without candidates): ``k_i`` the
    row's kept candidates, ``Q_i = sum E / S`` over its distinct kept targets. Expected counts
    of draws with replacement give ``Q_i <= 1``; rows with ``Q_i >= 1`` are nan."""
    t, s = ops.shape(y)[1], ops.shape(keep_s)[1]
    earlier = np.tril(np.ones((t, t), bool), -1)  # [j, j']: j' < j (T is static)
    same = ops.logical_and(ops.equal(y[:, :, None], y[:, None, :]), valid[:, None, :])
    repeated = ops.any(ops.logical_and(same, earlier[None]), axis=2)
    q = ops.where(ops.logical_and(valid, ops.logical_not(repeated)), true_count / s, 0.0)
    big_q = ops.sum(q, axis=1)
    k = ops.sum(ops.cast(keep_s, "float32"), axis=1)
    correction = ops.log(ops.maximum(k, 1.0) / s) - ops.log1p(-big_q)
    return ops.where(k > 0, ops.where(big_q < 1.0, correction, float("nan")), 0.0)


def corrected_logits(h, rows, bias_rows, log_q, keep, num_true):
    """Stage 2: ``o [N, T + S] = h . W[ids] + b[ids] - log_q``, removed columns at :data:`LOWEST`,
    from ``rows [N*T + S, D]`` (and ``bias_rows [N*T + S]`` or None) gathered at the ids."""
    n, d = ops.shape(h)[0], ops.shape(h)[1]
    true_rows = ops.reshape(rows[: n * num_true], (n, num_true, d))
    t = ops.sum(ops.expand_dims(h, 1) * true_rows, axis=-1)
    s = ops.matmul(h, ops.transpose(rows[n * num_true:]))
    if bias_rows is not None:
        t = t + ops.reshape(bias_rows[: n * num_true], (n, num_true))
        s = s + bias_rows[n * num_true:]
    return ops.where(keep, ops.concatenate([t, s], axis=1) - log_q, LOWEST)


def softmax_head(logits, keep, num_true, label_smoothing):
    """Stage 3: per-row softmax cross-entropy ``[N]`` and the rows with a kept target ``[N]``.
    The target is ``(1 - eps) / T_i + eps / K_i`` on each kept target column and ``eps / K_i`` on
    each kept candidate; a row without a kept target has loss 0."""
    n_true = ops.sum(ops.cast(keep[:, :num_true], "float32"), axis=1, keepdims=True)
    n_kept = ops.sum(ops.cast(keep, "float32"), axis=1, keepdims=True)
    on_true = ops.concatenate([ops.ones_like(logits[:, :num_true]), ops.zeros_like(logits[:, num_true:])], axis=1)
    eps = label_smoothing
    target = ops.where(keep, on_true * (1.0 - eps) / ops.maximum(n_true, 1.0) + eps / n_kept, 0.0)
    loss = ops.logsumexp(logits, axis=1) - ops.sum(target * ops.where(keep, logits, 0.0), axis=1)
    live = n_true[:, 0] > 0
    return ops.where(live, loss, 0.0), live


def sigmoid_head(logits, keep, num_true):
    """Stage 3 of NCE (and of negative sampling, over uncorrected logits): each kept column a
    logistic classification, target ``1 / T_i`` on the kept target columns and 0 on the
    candidates; per row the sum of the sigmoid cross-entropies ``[N]``, and the rows with a kept
    target ``[N]`` (the others have loss 0)."""
    kt = ops.cast(keep[:, :num_true], "float32")
    n_true = ops.sum(kt, axis=1, keepdims=True)
    target = ops.concatenate([kt / ops.maximum(n_true, 1.0), ops.zeros_like(logits[:, num_true:])], axis=1)
    z = ops.where(keep, logits, 0.0)
    per_column = ops.maximum(z, 0.0) - z * target + ops.log1p(ops.exp(-ops.abs(z)))
    live = n_true[:, 0] > 0
    return ops.where(live, ops.sum(ops.where(keep, per_column, 0.0), axis=1), 0.0), live
