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
    "negative_sampling_loss", "negative_sampling_grads",
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
                      ignore_index=None, exclude_true=False):
    """Stage 1: the columns of each row, ``(ids [B, T + S], log_q [B, T + S], keep [B, T + S])``.

    Row ``i`` has its ``T`` labels then the ``S`` shared candidates ``c``:
    ``ids[i] = (y_i1 .. y_iT, c_1 .. c_S)`` and ``log_q[i, k] = log E(ids[i, k])`` (0 everywhere
    with ``subtract_log_q=False``). ``keep[i, k]`` is False for an ignored label
    (``ignore_index``), a padding slot (``E(c_k) = inf``) and, with ``remove_accidental_hits``,
    a candidate equal to one of row ``i``'s kept labels. Ignored labels' ids are 0.

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
                    ignore_index, exclude_true=False):
    """:func:`sampled_logits` on checked arguments: ``(logits, keep, ids)``."""
    ids, log_q, keep = candidate_columns(labels, sampled_values, remove_accidental_hits=remove_accidental_hits,
                                         subtract_log_q=subtract_log_q, ignore_index=ignore_index,
                                         exclude_true=exclude_true)
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
            ignore_index, exclude_true=False, **head_options):
    """The checked arguments through the three stages: ``(loss [B], d loss / d logits, ids)``."""
    _check(weights, biases, labels, inputs, sampled_values, ignore_index=ignore_index, **head_options)
    y = _as_2d_labels(labels)
    logits, keep, ids = _sampled_logits(
        weights, biases, y, inputs, sampled_values, remove_accidental_hits=remove_accidental_hits,
        subtract_log_q=subtract_log_q, ignore_index=ignore_index, exclude_true=exclude_true,
    )
    loss, g = head(logits, keep, y.shape[1], **head_options)
    return loss, g, ids


def sampled_softmax_loss(
    weights, biases, labels, inputs, sampled_values, *,
    remove_accidental_hits=True, subtract_log_q=True, label_smoothing=0.0, ignore_index=None, exclude_true=False,
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
                         ignore_index=ignore_index, exclude_true=exclude_true, label_smoothing=label_smoothing)
    return loss


def sampled_softmax_grads(
    weights, biases, labels, inputs, sampled_values, *, grad_loss=None,
    remove_accidental_hits=True, subtract_log_q=True, label_smoothing=0.0, ignore_index=None, exclude_true=False,
):
    """Analytic gradients of ``sum_i grad_loss_i * loss_i``: ``(d_inputs, d_weights, d_biases)``
    (:func:`softmax_head`'s gradient through :func:`corrected_logits_grads`)."""
    _, g, ids = _stages(softmax_head, weights, biases, labels, inputs, sampled_values,
                        remove_accidental_hits=remove_accidental_hits, subtract_log_q=subtract_log_q,
                        ignore_index=ignore_index, exclude_true=exclude_true, label_smoothing=label_smoothing)
    if grad_loss is not None:
        g = g * np.asarray(grad_loss, np.float64)[:, None]
    return corrected_logits_grads(weights, biases, inputs, ids, g)


# ---------------------------------------------------------------------------------------------
# NCE and negative sampling: the sigmoid head


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
    keep = np.asarray(keep, bool)
    n_true = keep[:, :num_true].sum(axis=1, keepdims=True)
    target = np.zeros(keep.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        target[:, :num_true] = np.where(keep[:, :num_true], 1.0 / n_true, 0.0)
    z = np.where(keep, logits, 0.0)
    per_column = np.maximum(z, 0.0) - z * target + np.log1p(np.exp(-np.abs(z)))
    live = n_true[:, 0] > 0
    loss = np.where(live, np.where(keep, per_column, 0.0).sum(axis=1), 0.0)
    grad = np.where(keep & live[:, None], 1.0 / (1.0 + np.exp(-z)) - target, 0.0)
    return loss, grad


def nce_loss(weights, biases, labels, inputs, sampled_values, *, remove_accidental_hits=False, subtract_log_q=True,
             ignore_index=None):
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
                         ignore_index=ignore_index)
    return loss


def nce_grads(weights, biases, labels, inputs, sampled_values, *, grad_loss=None, remove_accidental_hits=False,
              subtract_log_q=True, ignore_index=None):
    """Gradients of ``sum_i grad_loss_i * nce_loss_i``: ``(d_inputs, d_weights, d_biases)``."""
    _, g, ids = _stages(sigmoid_head, weights, biases, labels, inputs, sampled_values,
                        remove_accidental_hits=remove_accidental_hits, subtract_log_q=subtract_log_q,
                        ignore_index=ignore_index)
    if grad_loss is not None:
        g = g * np.asarray(grad_loss, np.float64)[:, None]
    return corrected_logits_grads(weights, biases, inputs, ids, g)


def negative_sampling_loss(weights, biases, labels, inputs, sampled_values, *, remove_accidental_hits=False,
                           ignore_index=None):
    """Per-example negative sampling loss ``[B]`` (Mikolov et al. 2013), float64: NCE's sigmoid
    head over uncorrected logits ``o = h . W + b``. With one label and noise ``c``,

        loss_i = - log s(o_iy) - sum_k log s(-o_ik)

    (the expected counts in ``sampled_values`` are read only for padding slots).
    """
    return nce_loss(weights, biases, labels, inputs, sampled_values, remove_accidental_hits=remove_accidental_hits,
                    subtract_log_q=False, ignore_index=ignore_index)


def negative_sampling_grads(weights, biases, labels, inputs, sampled_values, *, grad_loss=None,
                            remove_accidental_hits=False, ignore_index=None):
    """Gradients of ``sum_i grad_loss_i * negative_sampling_loss_i``."""
    return nce_grads(weights, biases, labels, inputs, sampled_values, grad_loss=grad_loss,
                     remove_accidental_hits=remove_accidental_hits, subtract_log_q=False, ignore_index=ignore_index)


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
