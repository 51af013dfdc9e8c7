"""The NumPy float64 oracle: sampled softmax loss, its analytic gradients, the full softmax.

Every front end is tested against these functions. They favour clarity over speed.

Shapes: ``B`` batch, ``D`` dim, ``V`` classes, ``S`` candidates, ``T`` true labels per row.
Given ``SampledValues (c [S], E(y) [B, T], E(c) [S])``, row ``i`` has the logits

    t[i, j] = h_i . W[y_ij] + b[y_ij] - log E(y_ij)        (true columns)
    s[i, k] = h_i . W[c_k]  + b[c_k]  - log E(c_k)         (candidate columns)

(without the ``- log E`` terms when ``subtract_log_q=False``: negative sampling). Column ``k``
is removed from row ``i``'s normalizer when ``c_k`` equals one of row ``i``'s labels
(``remove_accidental_hits``) or when ``E(c_k) = inf`` (a padding slot); a true column is removed
when its label is ``ignore_index``. With ``K_i`` kept columns, ``T_i`` kept labels and label
smoothing ``eps``, the target puts ``(1 - eps) / T_i + eps / K_i`` on each kept true column and
``eps / K_i`` on each kept candidate, and

    loss_i = logsumexp_{kept}(row_i) - sum_{kept} target_ik row_ik.

A row with no kept label (all ``ignore_index``) has loss 0 and no gradient.

With ``exclude_true`` (the rejection estimator: the labels kept out of the sample): negatives are draws from ``q``
conditioned on not being one of the row's labels, so a candidate equal to one of row ``i``'s
labels is always removed (rejected), the true columns get no correction, and a kept candidate
column gets the importance weight of the remaining draws:

    t[i, j] = h_i . W[y_ij] + b[y_ij]
    s[i, k] = h_i . W[c_k]  + b[c_k]  - log(k_i q(c_k) / (1 - Q_i))

with ``q(c) = E(c) / S`` (the expected counts of ``S`` draws with replacement), ``k_i`` the
candidates left in row ``i`` after rejection and ``Q_i`` the total ``q`` of row ``i``'s distinct
kept labels (``num_true > 1``: all of them are excluded together). ``Sum_t e^t + Sum_k e^s`` is
then an unbiased estimate of the full softmax normalizer.

Every sampled loss is three stages, each a function here and the same stage in every front end
(TensorFlow's ``_compute_sampled_logits`` feeds ``nce_loss`` and ``sampled_softmax_loss`` alike):

1. :func:`candidate_columns`: each row's column ids, ``log E`` and keep mask;
2. :func:`corrected_logits` (and :func:`corrected_logits_grads`): ``h . W + b - log E``;
3. a head over the logits: :func:`softmax_head` (sampled softmax cross-entropy) or
   :func:`sigmoid_head` (NCE, and negative sampling, which is NCE's head over logits without
   the ``- log E`` correction).
"""

from __future__ import annotations

import numpy as np

from . import SampledSoftmaxError
from . import _validation as V

__all__ = [
    "candidate_columns", "corrected_logits", "corrected_logits_grads", "softmax_head", "sigmoid_head",
    "sampled_logits", "sampled_softmax_loss", "sampled_softmax_grads", "nce_loss", "nce_grads",
    "negative_sampling_loss", "negative_sampling_grads", "gbce_beta", "gbce_head", "gbce_loss", "gbce_grads",
    "full_softmax_loss", "full_softmax_grads", "log_softmax",
    "in_batch_columns", "in_batch_logits", "hard_negatives", "in_batch_softmax_loss", "in_batch_softmax_grads",
    "mixed_negatives",
]


def _check(weights, biases, labels, inputs, sampled_values=None, *, label_smoothing=0.0, ignore_index=None):
    """The shared argument checks (the same errors and messages as every front end)."""
    W, h, y = (np.asarray(x) for x in (weights, inputs, labels))
    V.check_floating_dtype("weights", np.issubdtype(W.dtype, np.floating), str(W.dtype))
    V.check_floating_dtype("inputs", np.issubdtype(h.dtype, np.floating), str(h.dtype))
    V.check_integer_dtype("labels", np.issubdtype(y.dtype, np.integer), str(y.dtype))
    if biases is not None:
        b = np.asarray(biases)
        V.check_floating_dtype("biases", np.issubdtype(b.dtype, np.floating), str(b.dtype))
    V.check_label_smoothing(label_smoothing)
    if h.ndim != 2:
        raise SampledSoftmaxError(f"`inputs` must have shape [batch, dim]; received shape {list(h.shape)}")
    num_classes, _ = V.check_weights_shapes([W.shape], None, h.shape[1])
    V.check_biases_shape(None if biases is None else np.shape(biases), num_classes)
    _, num_true = V.resolve_label_shape(y.shape, h.shape, y.shape[-1] if y.ndim == 2 else 1)
    kept = y if ignore_index is None else y[y != ignore_index]
    if kept.size:
        V.check_label_values(int(kept.min()), int(kept.max()), num_classes, ignore_index)
    if sampled_values is not None:
        cand, tc, sc = V.check_sampled_values_triple(sampled_values)
        valid = None if ignore_index is None else (y != ignore_index).reshape(h.shape[0], num_true)
        V.check_sampled_values_numpy(cand, tc, sc, num_sampled=None, num_classes=num_classes, lead_size=h.shape[0],
                                     num_true=num_true, valid=valid)


def _as_2d_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    return labels[:, None] if labels.ndim == 1 else labels


def _valid_labels(labels: np.ndarray, ignore_index) -> np.ndarray:
    return np.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index


# ---------------------------------------------------------------------------------------------
# Stage 1: each row's columns


def candidate_columns(labels, sampled_values, *, remove_accidental_hits=True, subtract_log_q=True,
                      ignore_index=None, exclude_true=False, excluded_ids=None):
    """Stage 1: the columns of each row, ``(ids [B, T + S], log_q [B, T + S], keep [B, T + S])``.

    Row ``i`` has its ``T`` labels then the ``S`` shared candidates ``c``:
    ``ids[i] = (y_i1 .. y_iT, c_1 .. c_S)`` and ``log_q[i, k] = log E(ids[i, k])`` (0 everywhere
    with ``subtract_log_q=False``). ``keep[i, k]`` is False for an ignored label
    (``ignore_index``), a padding slot (``E(c_k) = inf``) and, with ``remove_accidental_hits``,
    a candidate equal to one of row ``i``'s kept labels, and a candidate whose id is one of
    ``excluded_ids[i]`` (``[B, K]`` ids row ``i`` must not see as negatives, e.g. the items a user
    already interacted with; negative entries are padding). Ignored labels' ids are 0.

    ``exclude_true`` (see the module docstring): hits are always removed; ``log_q`` is 0 on the
    true columns and ``log(k_i q(c) / (1 - Q_i))`` on row ``i``'s kept candidates.
    """
    y = _as_2d_labels(labels)
    cand, true_count, samp_count = (np.asarray(v) for v in sampled_values)
    true_count = np.asarray(true_count, np.float64)
    if y.shape[0] and true_count.size == y.shape[0]:  # [B, 1] is broadcast over the labels, as in TensorFlow
        true_count = np.broadcast_to(true_count.reshape(-1, 1), y.shape)
    true_count = true_count.reshape(y.shape)
    samp_count = np.asarray(samp_count, np.float64)
    valid = _valid_labels(y, ignore_index)
    B, S = y.shape[0], cand.size
    ids = np.concatenate([np.where(valid, y, 0), np.broadcast_to(cand, (B, S))], axis=1)
    log_q = np.zeros(ids.shape)
    if subtract_log_q:
        with np.errstate(divide="ignore"):
            log_q = np.concatenate([np.log(np.where(valid, true_count, 1.0)),
                                    np.broadcast_to(np.log(samp_count), (B, S))], axis=1)
    keep_s = np.broadcast_to(np.isfinite(samp_count), (B, S)).copy()
    if remove_accidental_hits or exclude_true:
        hits = (cand[None, None, :] == y[:, :, None]) & valid[:, :, None]
        keep_s &= ~hits.any(axis=1)
    if excluded_ids is not None:
        ex = np.asarray(excluded_ids).reshape(B, -1)
        keep_s &= ~((cand[None, :, None] == ex[:, None, :]) & (ex[:, None, :] >= 0)).any(axis=2)
    if exclude_true and subtract_log_q:
        log_q = np.concatenate([np.zeros(y.shape), log_q[:, y.shape[1]:] + _exclusion_correction(
            y, valid, true_count, keep_s)[:, None]], axis=1)
    return ids, log_q, np.concatenate([valid, keep_s], axis=1)


def _exclusion_correction(y, valid, true_count, keep_s):
    """``log(k_i / S) - log(1 - Q_i)`` per row: with ``log E(c) = log(S q(c))`` it makes a
    candidate's correction ``log(k_i q(c) / (1 - Q_i))`` (0 for a row without candidates)."""
    S = keep_s.shape[1]
    earlier = np.tril(np.ones((y.shape[1], y.shape[1]), bool), -1)  # [j, j']: j' < j
    repeated = ((y[:, :, None] == y[:, None, :]) & valid[:, None, :] & earlier).any(axis=2)
    Q = np.where(valid & ~repeated, true_count / S, 0.0).sum(axis=1)
    k = keep_s.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(k > 0, np.log(k / S) - np.log1p(-Q), 0.0)


# ---------------------------------------------------------------------------------------------
# Stage 2: corrected logits


def corrected_logits(weights, biases, inputs, ids, log_q, keep):
    """Stage 2: ``o[i, k] = h_i . W[ids_ik] + b[ids_ik] - log_q[i, k]``, ``-inf`` where not
    ``keep`` (``[B, K]`` for ``ids``, ``log_q`` and ``keep`` of shape ``[B, K]``)."""
    W = np.asarray(weights, np.float64)
    b = np.zeros(W.shape[0]) if biases is None else np.asarray(biases, np.float64)
    h = np.asarray(inputs, np.float64)
    o = np.einsum("bd,bkd->bk", h, W[ids]) + b[ids] - np.where(keep, log_q, 0.0)
    return np.where(keep, o, -np.inf)


def corrected_logits_grads(weights, biases, inputs, ids, d_logits):
    """Stage 2 backward: from ``g = d loss / d o [B, K]``, ``(d_inputs, d_weights, d_biases)``:
    ``d h_i = sum_k g_ik W[ids_ik]``, ``d W[ids_ik] += g_ik h_i``, ``d b[ids_ik] += g_ik`` (a
    scatter-add, duplicates included)."""
    W = np.asarray(weights, np.float64)
    h = np.asarray(inputs, np.float64)
    g = np.asarray(d_logits, np.float64)
    d_inputs = np.einsum("bk,bkd->bd", g, W[ids])
    d_weights = np.zeros_like(W)
    np.add.at(d_weights, ids.ravel(), (g[:, :, None] * h[:, None, :]).reshape(-1, W.shape[1]))
    d_biases = np.zeros(W.shape[0])
    np.add.at(d_biases, ids.ravel(), g.ravel())
    return d_inputs, d_weights, (None if biases is None else d_biases)


def sampled_logits(
    weights, biases, labels, inputs, sampled_values, *,
    remove_accidental_hits=True, subtract_log_q=True, ignore_index=None, exclude_true=False,
):
    """Stages 1 and 2: row logits ``[B, T + S]`` (true columns first) and the keep mask ``[B, T + S]``.

    Removed columns hold ``-inf`` in the returned logits.
    """
    _check(weights, biases, labels, inputs, sampled_values, ignore_index=ignore_index)
    logits, keep, _ = _sampled_logits(weights, biases, labels, inputs, sampled_values,
                                      remove_accidental_hits=remove_accidental_hits, subtract_log_q=subtract_log_q,
                                      ignore_index=ignore_index, exclude_true=exclude_true)
    return logits, keep


def _sampled_logits(weights, biases, labels, inputs, sampled_values, *, remove_accidental_hits, subtract_log_q,
                    ignore_index, exclude_true=False, excluded_ids=None):
    """:func:`sampled_logits` on checked arguments: ``(logits, keep, ids)``."""
    ids, log_q, keep = candidate_columns(labels, sampled_values, remove_accidental_hits=remove_accidental_hits,
                                         subtract_log_q=subtract_log_q, ignore_index=ignore_index,
                                         exclude_true=exclude_true, excluded_ids=excluded_ids)
    return corrected_logits(weights, biases, inputs, ids, log_q, keep), keep, ids


# ---------------------------------------------------------------------------------------------
# Stage 3: the softmax head


def softmax_head(logits, keep, num_true, label_smoothing=0.0):
    """Stage 3, the sampled softmax head: per-row loss ``[B]`` and ``d loss / d logits [B, K]``.

    With ``T_i`` kept labels among the first ``num_true`` columns and ``K_i`` kept columns, the
    target is ``(1 - eps) / T_i + eps / K_i`` on each kept true column and ``eps / K_i`` on each
    kept candidate; ``loss_i = logsumexp_kept(o_i) - sum_k target_ik o_ik`` and the gradient is
    ``softmax(o_i) - target_i``. A row with no kept label has loss 0 and gradient 0.
    """
    return _softmax_xent(logits, keep, _targets(keep, num_true, label_smoothing))


def _targets(keep: np.ndarray, num_true: int, label_smoothing: float) -> np.ndarray:
    n_true = keep[:, :num_true].sum(axis=1, keepdims=True)
    n_kept = keep.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        target = np.zeros(keep.shape)
        target[:, :num_true] = (1.0 - label_smoothing) / n_true
        target = np.where(keep, target + label_smoothing / n_kept, 0.0)
    return np.where(n_true > 0, target, 0.0)


def _softmax_xent(logits, keep, target):
    """Per-row loss and d loss / d logits for rows with at least one kept label."""
    row_live = target.sum(axis=1) > 0
    m = np.max(np.where(keep, logits, -np.inf), axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.where(keep, np.exp(logits - m), 0.0)
    z = e.sum(axis=1, keepdims=True)
    lse = (m + np.log(np.where(z > 0, z, 1.0)))[:, 0]
    loss = lse - np.where(keep, target * np.where(keep, logits, 0.0), 0.0).sum(axis=1)
    prob = e / np.where(z > 0, z, 1.0)
    grad = prob - target
    return np.where(row_live, loss, 0.0), np.where(row_live[:, None], grad, 0.0)


# ---------------------------------------------------------------------------------------------
# The sampled softmax loss: the three stages


def _stages(head, weights, biases, labels, inputs, sampled_values, *, remove_accidental_hits, subtract_log_q,
            ignore_index, exclude_true=False, excluded_ids=None, **head_options):
    """The checked arguments through the three stages: ``(loss [B], d loss / d logits, ids)``."""
    _check(weights, biases, labels, inputs, sampled_values, ignore_index=ignore_index, **head_options)
    if excluded_ids is not None:
        V.check_excluded_ids_shape(np.shape(excluded_ids), np.shape(inputs)[:-1])
    y = _as_2d_labels(labels)
    logits, keep, ids = _sampled_logits(
        weights, biases, y, inputs, sampled_values, remove_accidental_hits=remove_accidental_hits,
        subtract_log_q=subtract_log_q, ignore_index=ignore_index, exclude_true=exclude_true,
        excluded_ids=excluded_ids,
    )
    loss, g = head(logits, keep, y.shape[1], **head_options)
    return loss, g, ids


def sampled_softmax_loss(
    weights, biases, labels, inputs, sampled_values, *,
    remove_accidental_hits=True, subtract_log_q=True, label_smoothing=0.0, ignore_index=None, exclude_true=False,
    excluded_ids=None,
):
    """Per-example sampled softmax loss ``[B]`` in float64 (see the module docstring):
    :func:`candidate_columns`, :func:`corrected_logits`, :func:`softmax_head`.

    Args:
        weights: ``[V, D]`` class table.
        biases: ``[V]`` or None.
        labels: ``[B]`` or ``[B, T]`` integer labels.
        inputs: ``[B, D]`` hidden states.
        sampled_values: ``(candidates [S], true_expected_count [B, T], sampled_expected_count [S])``.
        exclude_true: the rejection estimator (module docstring): negatives conditioned on not
            being a label; the expected counts must be those of draws with replacement.
        excluded_ids: ``[B, K]`` ids each row must not see as negatives (removed from its
            normalizer, as an accidental hit); negative entries are padding.

    Example:
        >>> import numpy as np
        >>> from sampled_softmax import reference
        >>> W, h = np.eye(3, 2), np.array([[1.0, 2.0]])
        >>> sv = (np.array([1, 2]), np.ones((1, 1)), np.ones(2))
        >>> round(float(reference.sampled_softmax_loss(W, None, np.array([0]), h, sv)[0]), 4)
        1.4076
    """
    loss, _, _ = _stages(softmax_head, weights, biases, labels, inputs, sampled_values,
                         remove_accidental_hits=remove_accidental_hits, subtract_log_q=subtract_log_q,
                         ignore_index=ignore_index, exclude_true=exclude_true, excluded_ids=excluded_ids,
                         label_smoothing=label_smoothing)
    return loss


def sampled_softmax_grads(
    weights, biases, labels, inputs, sampled_values, *, grad_loss=None,
    remove_accidental_hits=True, subtract_log_q=True, label_smoothing=0.0, ignore_index=None, exclude_true=False,
    excluded_ids=None,
):
    """Analytic gradients of ``sum_i grad_loss_i * loss_i``: ``(d_inputs, d_weights, d_biases)``
    (:func:`softmax_head`'s gradient through :func:`corrected_logits_grads`)."""
    _, g, ids = _stages(softmax_head, weights, biases, labels, inputs, sampled_values,
                        remove_accidental_hits=remove_accidental_hits, subtract_log_q=subtract_log_q,
                        ignore_index=ignore_index, exclude_true=exclude_true, excluded_ids=excluded_ids,
                        label_smoothing=label_smoothing)
    if grad_loss is not None:
        g = g * np.asarray(grad_loss, np.float64)[:, None]
    return corrected_logits_grads(weights, biases, inputs, ids, g)


# ---------------------------------------------------------------------------------------------
# NCE and negative sampling: the sigmoid head


def _sigmoid_columns(logits, keep, num_true):
    """``(keep, target, z, live)``: the keep mask, the targets ``1 / T_i`` on kept true columns,
    the kept logits (0 where removed) and whether each row has a kept label."""
    keep = np.asarray(keep, bool)
    n_true = keep[:, :num_true].sum(axis=1, keepdims=True)
    target = np.zeros(keep.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        target[:, :num_true] = np.where(keep[:, :num_true], 1.0 / n_true, 0.0)
    return keep, target, np.where(keep, logits, 0.0), n_true[:, 0] > 0


def sigmoid_head(logits, keep, num_true):
    """Stage 3, the sigmoid head of NCE (Gutmann & Hyvarinen 2010; ``tf.nn.nce_loss``) and of
    negative sampling: per-row loss ``[B]`` and ``d loss / d logits [B, K]``.

    Each kept column is a binary classification, target ``1 / T_i`` on the row's ``T_i`` kept
    true columns and 0 on the candidates:

        loss_i = sum_{k kept} [ max(o_ik, 0) - o_ik target_ik + log(1 + exp(-|o_ik|)) ]
               = - sum_{k kept} [ target_ik log s(o_ik) + (1 - target_ik) log s(-o_ik) ]

    with ``s`` the logistic sigmoid; the gradient is ``s(o_ik) - target_ik`` on kept columns. A
    removed column (accidental hit, padding, ignored label) adds nothing, as ``tf.nn``'s
    ``-FLT_MAX`` logit does; a row with no kept label has loss 0 and gradient 0.
    """
    keep, target, z, live = _sigmoid_columns(logits, keep, num_true)
    per_column = np.maximum(z, 0.0) - z * target + np.log1p(np.exp(-np.abs(z)))
    loss = np.where(live, np.where(keep, per_column, 0.0).sum(axis=1), 0.0)
    grad = np.where(keep & live[:, None], 1.0 / (1.0 + np.exp(-z)) - target, 0.0)
    return loss, grad


def nce_loss(weights, biases, labels, inputs, sampled_values, *, remove_accidental_hits=False, subtract_log_q=True,
             ignore_index=None, excluded_ids=None):
    """Per-example NCE loss ``[B]`` (float64), ``tf.nn.nce_loss``'s: :func:`candidate_columns`,
    :func:`corrected_logits` (``o = h . W + b - log E``), :func:`sigmoid_head`. Accidental hits
    are kept by default, as in ``tf.nn.nce_loss`` (removing them gives "sampled logistic").

    Example:
        One row, label 0, candidates 1 and 2, every expected count 1:

        >>> import numpy as np
        >>> from sampled_softmax.reference import nce_loss
        >>> loss = nce_loss(np.eye(3, 2), None, np.array([0]), np.array([[1.0, 2.0]]),
        ...                 (np.array([1, 2]), np.ones((1, 1)), np.ones(2)))
        >>> print(f"{loss[0]:.4f}")
        3.1333
    """
    loss, _, _ = _stages(sigmoid_head, weights, biases, labels, inputs, sampled_values,
                         remove_accidental_hits=remove_accidental_hits, subtract_log_q=subtract_log_q,
                         ignore_index=ignore_index, excluded_ids=excluded_ids)
    return loss


def nce_grads(weights, biases, labels, inputs, sampled_values, *, grad_loss=None, remove_accidental_hits=False,
              subtract_log_q=True, ignore_index=None, excluded_ids=None):
    """Gradients of ``sum_i grad_loss_i * nce_loss_i``: ``(d_inputs, d_weights, d_biases)``."""
    _, g, ids = _stages(sigmoid_head, weights, biases, labels, inputs, sampled_values,
                        remove_accidental_hits=remove_accidental_hits, subtract_log_q=subtract_log_q,
                        ignore_index=ignore_index, excluded_ids=excluded_ids)
    if grad_loss is not None:
        g = g * np.asarray(grad_loss, np.float64)[:, None]
    return corrected_logits_grads(weights, biases, inputs, ids, g)


def negative_sampling_loss(weights, biases, labels, inputs, sampled_values, *, remove_accidental_hits=False,
                           ignore_index=None, excluded_ids=None):
    """Per-example negative sampling loss ``[B]`` (Mikolov et al. 2013), float64: NCE's sigmoid
    head over uncorrected logits ``o = h . W + b``. With one label and noise ``c``,

        loss_i = - log s(o_iy) - sum_k log s(-o_ik)

    (the expected counts in ``sampled_values`` are read only for padding slots).
    """
    return nce_loss(weights, biases, labels, inputs, sampled_values, remove_accidental_hits=remove_accidental_hits,
                    subtract_log_q=False, ignore_index=ignore_index, excluded_ids=excluded_ids)


def negative_sampling_grads(weights, biases, labels, inputs, sampled_values, *, grad_loss=None,
                            remove_accidental_hits=False, ignore_index=None, excluded_ids=None):
    """Gradients of ``sum_i grad_loss_i * negative_sampling_loss_i``."""
    return nce_grads(weights, biases, labels, inputs, sampled_values, grad_loss=grad_loss,
                     remove_accidental_hits=remove_accidental_hits, subtract_log_q=False, ignore_index=ignore_index,
                     excluded_ids=excluded_ids)


# ---------------------------------------------------------------------------------------------
# gBCE (Petrov & Macdonald 2023, gSASRec): the sigmoid head with the positives' term raised


def gbce_beta(num_sampled, num_classes, t):
    """gBCE's exponent ``beta = alpha (t (1 - 1/alpha) + 1/alpha)``, ``alpha = k / (V - 1)`` the
    share of the ``V - 1`` negatives a row sees (``k`` of them): ``t = 0`` is plain BCE
    (``beta = 1``), ``t = 1`` the fully calibrated ``beta = alpha``."""
    V.check_gbce(num_sampled, num_classes, t)
    alpha = num_sampled / (num_classes - 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def gbce_head(logits, keep, num_true, beta):
    """Stage 3, gBCE's head: :func:`sigmoid_head` with each true column's term ``-target log s(o)``
    multiplied by ``beta``, i.e. binary cross-entropy against the positive probability
    ``s(o)^beta``; gradient ``s(o) (1 + (beta - 1) target) - beta target`` on kept columns."""
    keep, target, z, live = _sigmoid_columns(logits, keep, num_true)
    log_s_pos, log_s_neg = -np.logaddexp(0.0, -z), -np.logaddexp(0.0, z)
    per_column = -(beta * target * log_s_pos + (1.0 - target) * log_s_neg)
    loss = np.where(live, np.where(keep, per_column, 0.0).sum(axis=1), 0.0)
    s = 1.0 / (1.0 + np.exp(-z))
    grad = np.where(keep & live[:, None], s * (1.0 + (beta - 1.0) * target) - beta * target, 0.0)
    return loss, grad


def gbce_loss(weights, biases, labels, inputs, sampled_values, *, t=0.75, remove_accidental_hits=False,
              ignore_index=None, excluded_ids=None):
    """Per-example gBCE loss ``[B]`` (float64): :func:`negative_sampling_loss` with the positive's
    probability raised to ``beta`` (:func:`gbce_beta` of the ``S`` candidates, ``V`` rows of
    ``weights`` and ``t``). With one label and noise ``c``,

        loss_i = - beta log s(o_iy) - sum_k log s(-o_ik)
    """
    loss, _ = _gbce(weights, biases, labels, inputs, sampled_values, t=t, remove_accidental_hits=remove_accidental_hits,
                    ignore_index=ignore_index, excluded_ids=excluded_ids)
    return loss


def gbce_grads(weights, biases, labels, inputs, sampled_values, *, grad_loss=None, t=0.75,
               remove_accidental_hits=False, ignore_index=None, excluded_ids=None):
    """Gradients of ``sum_i grad_loss_i * gbce_loss_i``: ``(d_inputs, d_weights, d_biases)``."""
    _, (g, ids) = _gbce(weights, biases, labels, inputs, sampled_values, t=t,
                        remove_accidental_hits=remove_accidental_hits, ignore_index=ignore_index,
                        excluded_ids=excluded_ids)
    if grad_loss is not None:
        g = g * np.asarray(grad_loss, np.float64)[:, None]
    return corrected_logits_grads(weights, biases, inputs, ids, g)


def _gbce(weights, biases, labels, inputs, sampled_values, *, t, remove_accidental_hits, ignore_index, excluded_ids):
    beta = gbce_beta(np.asarray(sampled_values[0]).size, np.shape(weights)[0], t)
    loss, g, ids = _stages(lambda o, keep, num_true: gbce_head(o, keep, num_true, beta), weights, biases, labels,
                           inputs, sampled_values, remove_accidental_hits=remove_accidental_hits, subtract_log_q=False,
                           ignore_index=ignore_index, excluded_ids=excluded_ids)
    return loss, (g, ids)


def log_softmax(weights, biases, inputs) -> np.ndarray:
    """Exact ``log softmax(h W^T + b)`` over all classes, ``[B, V]``."""
    W = np.asarray(weights, np.float64)
    z = np.asarray(inputs, np.float64) @ W.T
    if biases is not None:
        z = z + np.asarray(biases, np.float64)
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def _full_target(labels, num_classes, label_smoothing, ignore_index):
    y = _as_2d_labels(labels)
    valid = _valid_labels(y, ignore_index)
    n_true = valid.sum(axis=1)
    target = np.zeros((y.shape[0], num_classes))
    rows = np.repeat(np.arange(y.shape[0]), y.shape[1])
    w = np.where(valid, (1.0 - label_smoothing) / np.maximum(n_true, 1)[:, None], 0.0)
    np.add.at(target, (rows, np.where(valid, y, 0).ravel()), w.ravel())
    target += np.where(n_true > 0, label_smoothing / num_classes, 0.0)[:, None]
    return target, n_true > 0


def full_softmax_loss(weights, biases, labels, inputs, *, label_smoothing=0.0, ignore_index=None):
    """Exact per-example softmax cross-entropy ``[B]`` over all ``V`` classes (float64).

    With ``T`` labels per row the target is ``1 / T`` on each (smoothed by ``eps / V``).
    """
    _check(weights, biases, labels, inputs, label_smoothing=label_smoothing, ignore_index=ignore_index)
    logp = log_softmax(weights, biases, inputs)
    target, live = _full_target(labels, logp.shape[1], label_smoothing, ignore_index)
    return np.where(live, -(target * logp).sum(axis=1), 0.0)


def full_softmax_grads(weights, biases, labels, inputs, *, grad_loss=None, label_smoothing=0.0, ignore_index=None):
    """Gradients of ``sum_i grad_loss_i * full_loss_i``: ``(d_inputs, d_weights, d_biases)``."""
    _check(weights, biases, labels, inputs, label_smoothing=label_smoothing, ignore_index=ignore_index)
    W = np.asarray(weights, np.float64)
    h = np.asarray(inputs, np.float64)
    logp = log_softmax(W, biases, h)
    target, live = _full_target(labels, W.shape[0], label_smoothing, ignore_index)
    g = np.where(live[:, None], np.exp(logp) - target, 0.0)
    if grad_loss is not None:
        g = g * np.asarray(grad_loss, np.float64)[:, None]
    return g @ W, g.T @ h, (None if biases is None else g.sum(axis=0))


# The in-batch softmax (two-tower retrieval) and mixed negatives: the same stages over the
# batch's own candidates, in their own file.
from ._reference_in_batch import (  # noqa: E402
    hard_negatives, in_batch_columns, in_batch_logits, in_batch_softmax_grads, in_batch_softmax_loss, mixed_negatives,
)
