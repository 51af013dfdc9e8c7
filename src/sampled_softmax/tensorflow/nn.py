"""The ``tf.nn`` drop-ins: ``sampled_softmax_loss`` (``tf.nn``'s signature, defaults and output:
change the import, nothing else), ``compute_accidental_hits``, and the exact
``full_softmax_loss`` / ``full_logits`` for evaluation.

The loss is the pipeline every front end shares: the columns of each row (labels, then the
candidates; ``log E`` and the removed-candidate mask), the touched rows of the class table
gathered with TensorFlow's own ``gather`` (so the gradients of weights and biases are
``tf.IndexedSlices`` over those rows, as ``tf.nn``'s are, with a repeated row's gradient
summed on its first read: see ``_rows``), then the corrected logits and a
head, in one ``tf.custom_gradient`` with an explicit backward.
"""

from __future__ import annotations

from typing import Literal

import tensorflow as tf

from .. import SampledSoftmaxError
from .. import _validation as V
from . import _order, _rows
from ._prepare import (
    _check, _check_label_values, _int64_labels, _check_sampled_values, _compute_dtype, _nan_rows, _shards,
)

__all__ = ["sampled_softmax_loss", "nce_loss", "full_softmax_loss", "full_logits", "compute_accidental_hits"]


def _gather(shards, ids, partition_strategy):
    if len(shards) == 1:
        return tf.gather(shards[0], ids)
    return tf.nn.embedding_lookup(shards, ids) if partition_strategy == "div" else _gather_mod(shards, ids)


def _gather_mod(shards, ids):
    n = len(shards)
    shard, local = ids % n, ids // n
    parts = tf.dynamic_partition(tf.range(tf.size(ids)), tf.cast(shard, tf.int32), n)
    local_parts = tf.dynamic_partition(local, tf.cast(shard, tf.int32), n)
    rows = [tf.gather(w, lp) for w, lp in zip(shards, local_parts)]
    return tf.dynamic_stitch(parts, rows)


# ---------------------------------------------------------------------------------------------
# Stage 1: each row's columns


def candidate_columns(labels, valid, cand, true_count, samp_count, *, remove_accidental_hits, subtract_log_q,
                      dtype):
    """Stage 1: ``(ids [N*T + S], log_q [N*T + S], removed [N, S])`` for ``labels [N, T]``
    (``valid`` their mask, None when none is ignored; ignored labels' ids are 0) and the
    candidates. ``log_q`` is 0 for ignored labels and padding slots (expected count ``inf``),
    which are removed from every row; accidental hits of kept labels are removed from theirs."""
    n = tf.shape(labels)[0]
    safe = labels if valid is None else tf.where(valid, labels, tf.zeros_like(labels))
    ids = tf.concat([tf.reshape(safe, [-1]), cand], 0)
    padding = tf.logical_not(tf.math.is_finite(samp_count))
    if remove_accidental_hits:
        # One [N, S] pass per step where it can be: one label a row compares directly, and the
        # padding slots join the hits by broadcasting, not as a materialised [N, S] mask.
        if labels.shape[1] == 1:
            hits = labels == cand[tf.newaxis, :]
            if valid is not None:
                hits = tf.logical_and(hits, valid)
        else:
            equal = labels[:, :, tf.newaxis] == cand[tf.newaxis, tf.newaxis, :]
            if valid is not None:
                equal = tf.logical_and(equal, valid[:, :, tf.newaxis])
            hits = tf.reduce_any(equal, axis=1)
        removed = tf.logical_or(hits, padding[tf.newaxis, :])
    else:
        removed = tf.broadcast_to(padding[tf.newaxis, :], [n, tf.shape(cand)[0]])
    if not subtract_log_q:
        return ids, tf.zeros(tf.shape(ids), dtype), removed
    if valid is not None:
        true_count = tf.where(valid, true_count, tf.ones_like(true_count))
    samp_count = tf.where(padding, tf.ones_like(samp_count), samp_count)
    log_q = tf.math.log(tf.cast(tf.concat([tf.reshape(true_count, [-1]), samp_count], 0), dtype))
    return ids, log_q, removed


def exclusion_correction(labels, valid, true_count, removed, log_q, num_sampled):
    """``exclude_true`` (the reference's module docstring), after :func:`candidate_columns`
    with the hits removed: ``(log_q, row_log_q [N])``, ``log_q`` 0 on the true columns and
    ``row_log_q_i = log(k_i / S) - log(1 - Q_i)`` subtracted from row ``i``'s candidates: ``k_i``
    its candidates left, ``Q_i = sum E / S`` over its distinct kept labels."""
    n, t = tf.shape(labels)[0], labels.shape[1]
    dtype = log_q.dtype
    kept = tf.ones_like(labels, tf.bool) if valid is None else valid
    earlier = tf.linalg.band_part(tf.ones([t, t], tf.bool), -1, 0) & ~tf.eye(t, dtype=tf.bool)  # [j, j']: j' < j
    repeated = tf.reduce_any((labels[:, :, tf.newaxis] == labels[:, tf.newaxis, :]) & kept[:, tf.newaxis, :]
                             & earlier[tf.newaxis], axis=2)
    q_true = tf.cast(true_count, dtype) / num_sampled
    Q = tf.reduce_sum(tf.where(kept & ~repeated, q_true, tf.zeros_like(q_true)), axis=1)
    k = tf.cast(num_sampled, dtype) - tf.reduce_sum(tf.cast(removed, dtype), axis=1)
    bad = (Q >= 1.0) & (k > 0)
    if tf.executing_eagerly():
        if bool(tf.reduce_any(bad)):
            i = int(tf.where(bad)[0, 0])
            raise SampledSoftmaxError(V.exclusion_error(num_sampled, i, float(Q[i])))
    else:
        check = tf.debugging.Assert(~tf.reduce_any(bad), [V.exclusion_error(num_sampled) + "; Q per row:", Q])
        with tf.control_dependencies([check]):
            Q = tf.identity(Q)
    safe_k = tf.maximum(k, 1.0)
    row_log_q = tf.where(k > 0, tf.math.log(safe_k / num_sampled) - tf.math.log1p(-tf.minimum(Q, 1.0)),
                        tf.zeros_like(k))
    log_q = tf.concat([tf.zeros([n * t], dtype), log_q[n * t:]], 0)
    return log_q, row_log_q


# ---------------------------------------------------------------------------------------------
# Stage 3: heads. A head maps the row logits [N, T + S] (removed columns at the dtype's lowest
# value) to (loss [N], d loss / d logits [N, T + S]).


def softmax_head(num_true, valid, label_smoothing):
    """The sampled softmax cross-entropy: target ``1 / T`` on each true column, or with
    ``valid``/``label_smoothing`` ``(1 - eps) / T_i + eps / K_i`` on each kept true column
    and ``eps / K_i`` on each kept candidate; a row without a kept label has loss 0 and no
    gradient."""

    def head(logits, removed):
        n, dtype = tf.shape(logits)[0], logits.dtype
        if valid is None and not label_smoothing:
            target = tf.concat([tf.fill([n, num_true], tf.constant(1.0 / num_true, dtype)),
                                tf.zeros_like(logits[:, num_true:])], 1)
            # One fused kernel gives the loss and d loss / d logits = softmax - target.
            return tf.raw_ops.SoftmaxCrossEntropyWithLogits(features=logits, labels=target)
        kt = tf.ones([n, num_true], dtype) if valid is None else tf.cast(valid, dtype)
        kc = tf.cast(tf.logical_not(removed), dtype)
        n_true = tf.reduce_sum(kt, 1, keepdims=True)
        target = tf.concat([kt / tf.maximum(n_true, 1.0), tf.zeros_like(kc)], 1)
        if label_smoothing:
            kept = tf.concat([kt, kc], 1)
            target = target * (1.0 - label_smoothing) + kept * (label_smoothing / (n_true + tf.reduce_sum(kc, 1, keepdims=True)))
        loss, backprop = tf.raw_ops.SoftmaxCrossEntropyWithLogits(features=logits, labels=target)
        live = n_true[:, 0] > 0
        return tf.where(live, loss, tf.zeros_like(loss)), backprop * tf.cast(live, dtype)[:, tf.newaxis]

    return head


def sigmoid_head(num_true, valid, beta=1.0):
    """NCE's head (negative sampling's over uncorrected logits): each kept column a logistic
    classification, target ``1 / T_i`` on the kept true columns and 0 on the candidates; the
    row's loss is the sum of the sigmoid cross-entropies, its gradient ``sigmoid(o) - target``.
    Removed columns add nothing; a row without a kept label has loss 0 and no gradient. gBCE's
    ``beta`` multiplies the labels' ``-target log sigmoid(o)`` term (gradient
    ``sigmoid(o) (1 + (beta - 1) target) - beta target``)."""

    def head(logits, removed):
        n, dtype = tf.shape(logits)[0], logits.dtype
        kt = tf.ones([n, num_true], tf.bool) if valid is None else valid
        keep = tf.concat([kt, tf.logical_not(removed)], 1)
        n_true = tf.reduce_sum(tf.cast(kt, dtype), 1, keepdims=True)
        target = tf.concat([tf.cast(kt, dtype) / tf.maximum(n_true, 1.0), tf.zeros_like(logits[:, num_true:])], 1)
        zero = tf.zeros_like(logits)
        z = tf.where(keep, logits, zero)
        live = tf.cast(n_true > 0, dtype)
        if beta == 1.0:
            per_column = tf.where(keep, tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=z), zero)
            return tf.reduce_sum(per_column, 1) * live[:, 0], tf.where(keep, tf.sigmoid(z) - target, zero) * live
        per_column = tf.where(keep, tf.nn.weighted_cross_entropy_with_logits(labels=target, logits=z,
                                                                              pos_weight=beta), zero)
        grad = tf.sigmoid(z) * (1.0 + (beta - 1.0) * target) - beta * target
        return tf.reduce_sum(per_column, 1) * live[:, 0], tf.where(keep, grad, zero) * live

    return head


# ---------------------------------------------------------------------------------------------
# Stage 2 and the head in one custom gradient


def sampled_loss(h, rows, b, log_q, removed, valid, num_true, head, row_log_q=None, ids=None, num_classes=None):
    """Per-row loss for ``h [N, D]`` over the gathered columns: ``rows [M, D]``, ``b [M]`` and
    ``log_q [M]`` hold the ``N * T`` true columns then the ``S`` candidates. Stage 2 (corrected
    logits ``h . W + b - log E``, minus ``row_log_q [N]`` on each row's candidates if given,
    removed columns masked) and ``head``, with an explicit backward. Gradients flow to ``h``,
    ``rows`` and ``b`` whole, so no slice of them needs a gradient of its own. Given the
    columns' class ``ids [M]``, a repeated class's row and bias gradients are summed on its
    first column, zeros on the others (see ``_rows``; ``num_classes``, the ids' range, lets XLA
    find repeats without a sort)."""

    @tf.custom_gradient
    def fused(h, rows, b):
        n = tf.shape(h)[0]
        nt = n * num_true
        corr = b - log_q
        w_true, w_cand = rows[:nt], rows[nt:]
        if num_true == 1:
            tl = tf.reduce_sum(h * w_true, axis=1, keepdims=True) + corr[:nt, tf.newaxis]
        else:
            w_true = tf.reshape(w_true, [n, num_true, -1])
            tl = tf.einsum("nd,ntd->nt", h, w_true) + tf.reshape(corr[:nt], [n, num_true])
        sl = tf.matmul(h, w_cand, transpose_b=True) + corr[tf.newaxis, nt:]
        if row_log_q is not None:
            sl = sl - row_log_q[:, tf.newaxis]
        # Removed columns take the lowest finite value: exp() of it underflows to exactly 0,
        # so their probability and gradient are exactly 0 (and, unlike -inf, it keeps a fused
        # kernel's 0 * logit terms finite: their targets are 0).
        lowest = tf.constant(sl.dtype.min, sl.dtype)
        sl = tf.where(removed, lowest, sl)
        if valid is not None:
            tl = tf.where(valid, tl, lowest)
        loss, backprop = head(tf.concat([tl, sl], 1), removed)

        def grad(d_loss):
            g = backprop * d_loss[:, tf.newaxis]
            g_true, g_cand = g[:, :num_true], g[:, num_true:]
            if num_true == 1:
                d_h = g_true * w_true + tf.matmul(g_cand, w_cand)
                d_true = g_true * h
            else:
                d_h = tf.einsum("nt,ntd->nd", g_true, w_true) + tf.matmul(g_cand, w_cand)
                d_true = tf.reshape(g_true[:, :, tf.newaxis] * h[:, tf.newaxis, :], [nt, -1])
            d_rows = tf.concat([d_true, tf.matmul(g_cand, h, transpose_a=True)], 0)
            d_b = tf.concat([tf.reshape(g_true, [-1]), tf.reduce_sum(g_cand, 0)], 0)
            if ids is not None:
                d_rows, d_b = _rows.summed_once([d_rows, d_b], ids, in_place=True, num_classes=num_classes)
            return d_h, d_rows, d_b

        return loss, grad

    return fused(h, rows, b)


def _reduce(loss, live, reduction):
    """``reduction`` of per-example losses; ``"mean"`` over the examples with a kept label
    (``live``; nan when none has one, as PyTorch's)."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return tf.reduce_sum(loss)
    count = tf.cast(tf.size(loss), loss.dtype) if live is None else tf.reduce_sum(tf.cast(live, loss.dtype))
    return tf.reduce_sum(loss) / count


def sampled_softmax_loss(weights, biases, labels, inputs, num_sampled: int, num_classes: int, num_true: int = 1,
                         sampled_values=None, remove_accidental_hits: bool = True, seed: int | None = None,
                         name: str = "sampled_softmax_loss", *, ignore_index: int | None = None,
                         label_smoothing: float = 0.0, subtract_log_q: bool = True,
                         reduction: Literal["none", "mean", "sum"] = "none", exclude_true: bool = False) -> tf.Tensor:
    r"""Sampled softmax training loss: ``tf.nn.sampled_softmax_loss``'s signature and output.

    Per row ``i``, with candidates ``c`` shared by the batch and expected counts ``E``:

    .. math::
        o_{ik} = h_i \cdot W_{k} + b_{k} - \log E(k),\qquad
        \ell_i = \log\sum_{k \in \text{kept}} e^{o_{ik}} - \frac{1}{T}\sum_{j} o_{i y_{ij}}

    over the true columns and the candidates not removed as accidental hits. The keyword-only
    extras after ``tf.nn``'s arguments are those of the PyTorch and Keras front ends; their
    defaults give ``tf.nn``'s loss.

    Args:
        weights: ``[num_classes, dim]`` tensor or variable, or a list of shards (``"div"``
            layout, as ``tf.nn``'s).
        biases: ``[num_classes]``.
        labels: ``[batch, num_true]`` int32 or int64.
        inputs: ``[batch, dim]``; float16/bfloat16 inputs are computed in float32.
        num_sampled, num_classes, num_true: as ``tf.nn.sampled_softmax_loss``.
        sampled_values: ``(sampled_candidates, true_expected_count, sampled_expected_count)``;
            default: ``tf.random.log_uniform_candidate_sampler(..., unique=True, seed=seed)``,
            the same draw as ``tf.nn`` with the same seed. It assumes class ids sorted by
            decreasing frequency: with another order (alphabetical, random) it nearly doubled
            PTB's held-out perplexity (BENCHMARKS.md, "Which sampler"), and a
            :class:`~sampled_softmax.VocabularyOrderWarning` says so when the first labels
            contradict it (eager or in a graph; not inside XLA). Then pass the draw of
            ``tf.random.learned_unigram_candidate_sampler`` or
            ``fixed_unigram_candidate_sampler`` with the counts.
        remove_accidental_hits: remove candidates equal to a row's label from its normalizer
            (a true mask, where ``tf.nn`` adds ``-FLT_MAX``; where one candidate is drawn twice,
            every copy is removed, where ``tf.nn`` removes one).
        seed: seed of the default sampler.
        name: name scope.
        ignore_index: label value to ignore: its column is removed, a row whose labels are all
            ignored has loss 0 and no gradient. Default None.
        label_smoothing: ``eps`` in ``[0, 1]``: target ``(1 - eps) / T_i + eps / K_i`` on each kept
            label and ``eps / K_i`` on each of the row's ``K_i`` kept columns. Default 0.
        subtract_log_q: subtract ``log E``; False gives negative sampling's uncorrected logits.
        reduction: ``"none"`` (default, ``[batch]`` as ``tf.nn``), ``"mean"`` over the examples
            with a kept label, or ``"sum"``.
        exclude_true: the rejection estimator (the labels kept out of the sample) instead of
            TensorFlow's: candidates equal to a row's label are always rejected, the true
            columns get no correction, a kept candidate gets ``-log(k_i q(c) / (1 - Q_i))``
            (``k_i`` the row's candidates left, ``Q_i`` the total ``q = E / S`` of its distinct
            kept labels). The expected counts must be those of draws with replacement; the
            default sampler then draws with ``unique=False``. Default False.

    Returns:
        ``[batch]`` per-example losses (float32 for float16/bfloat16 inputs), or a scalar.

    Raises:
        SampledSoftmaxError: a bad shape or value, naming the argument.
        TypeError: a wrong dtype.

    Example:
        >>> import tensorflow as tf
        >>> from sampled_softmax.tensorflow import sampled_softmax_loss
        >>> W, b = tf.eye(3, 2, dtype=tf.float64), tf.zeros(3, tf.float64)
        >>> sv = (tf.constant([1, 2], tf.int64), tf.ones([1, 1]), tf.ones([2]))
        >>> loss = sampled_softmax_loss(W, b, [[0]], tf.constant([[1.0, 2.0]], tf.float64), 2, 3, sampled_values=sv)
        >>> round(float(loss[0]), 4)
        1.4076
    """
    with tf.name_scope(name):
        label_smoothing = V.check_label_smoothing(label_smoothing)
        exclude_true = V.check_bool("exclude_true", exclude_true)
        return _sampled_head_loss(weights, biases, labels, inputs, num_sampled, num_classes=num_classes,
                                  num_true=num_true, sampled_values=sampled_values,
                                  remove_accidental_hits=remove_accidental_hits or exclude_true, seed=seed,
                                  ignore_index=ignore_index, subtract_log_q=subtract_log_q, reduction=reduction,
                                  make_head=lambda valid: softmax_head(num_true, valid, label_smoothing),
                                  exclude_true=exclude_true)


def nce_loss(weights, biases, labels, inputs, num_sampled: int, num_classes: int, num_true: int = 1,
             sampled_values=None, remove_accidental_hits: bool = False, name: str = "nce_loss", *,
             ignore_index: int | None = None, subtract_log_q: bool = True,
             reduction: Literal["none", "mean", "sum"] = "none") -> tf.Tensor:
    r"""Noise-contrastive estimation loss (Gutmann & Hyvarinen 2010): ``tf.nn.nce_loss``'s
    signature, defaults and output.

    The corrected logits ``o_ik = h_i . W_k + b_k - log E(k)`` of the true columns and the
    candidates, each a logistic classification with target ``1 / T`` on the true columns and 0
    on the candidates; per row, the sum of the sigmoid cross-entropies:

    .. math::
        \ell_i = -\sum_{k} \big[t_{ik} \log \sigma(o_{ik}) + (1 - t_{ik}) \log \sigma(-o_{ik})\big]

    A removed column (an accidental hit with ``remove_accidental_hits=True``, "sampled
    logistic"; a padding slot) adds nothing, as ``tf.nn``'s ``-FLT_MAX`` logit does. The same
    stages as :func:`sampled_softmax_loss`, with the sigmoid head.

    Args:
        weights, biases, labels, inputs, num_sampled, num_classes, num_true, sampled_values:
            as :func:`sampled_softmax_loss` (and ``tf.nn.nce_loss``).
        remove_accidental_hits: remove candidates equal to a row's label. Default False, as
            ``tf.nn.nce_loss``.
        name: name scope.
        ignore_index: label value to ignore (its column adds nothing; a row whose labels are all
            ignored has loss 0 and no gradient).
        subtract_log_q: subtract ``log E``. False gives negative sampling (Mikolov et al. 2013).
        reduction: ``"none"`` (default, ``[batch]``), ``"mean"`` over the rows with a kept label,
            or ``"sum"``.

    Returns:
        ``[batch]`` per-example losses, or a scalar.

    Example:
        >>> import tensorflow as tf
        >>> from sampled_softmax.tensorflow import nce_loss
        >>> W = tf.eye(3, 2, dtype=tf.float64)
        >>> sv = (tf.constant([1, 2], tf.int64), tf.ones([1, 1]), tf.ones([2]))
        >>> loss = nce_loss(W, tf.zeros(3, tf.float64), [[0]], tf.constant([[1.0, 2.0]], tf.float64), 2, 3, sampled_values=sv)
        >>> round(float(loss[0]), 4)
        3.1333
    """
    with tf.name_scope(name):
        return _sampled_head_loss(weights, biases, labels, inputs, num_sampled, num_classes=num_classes,
                                  num_true=num_true, sampled_values=sampled_values,
                                  remove_accidental_hits=remove_accidental_hits, seed=None, ignore_index=ignore_index,
                                  subtract_log_q=subtract_log_q, reduction=reduction,
                                  make_head=lambda valid: sigmoid_head(num_true, valid))


def _sampled_head_loss(weights, biases, labels, inputs, num_sampled, *, num_classes, num_true, sampled_values,
                       remove_accidental_hits, seed, ignore_index, subtract_log_q, reduction, make_head,
                       exclude_true=False, uniform=False):
    """The three stages for a head (``make_head(valid)``), after the shared checks."""
    partition_strategy = "div"
    V.check_choice("reduction", reduction, V.REDUCTIONS)
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise TypeError(f"`ignore_index` must be an int or None; received {type(ignore_index).__name__}")
    inputs = tf.convert_to_tensor(inputs)
    labels = tf.convert_to_tensor(labels)
    shards, bias_shards, num_classes, num_sampled = _check(weights, biases, labels, inputs, num_sampled,
                                                           num_classes, num_true, partition_strategy)
    labels = tf.reshape(_int64_labels(labels), [-1, num_true])
    valid = None if ignore_index is None else labels != ignore_index
    labels = _check_label_values(labels, num_classes, valid, ignore_index)
    if sampled_values is None:
        V.check_num_sampled(num_sampled, num_classes, unique=not exclude_true)
        true_classes = labels if valid is None else tf.where(valid, labels, tf.zeros_like(labels))
        if not uniform:
            _order.observe(labels, valid, num_classes)
        draw = tf.random.uniform_candidate_sampler if uniform else tf.random.log_uniform_candidate_sampler
        sampled_values = draw(
            true_classes=true_classes, num_true=num_true, num_sampled=num_sampled, unique=not exclude_true,
            range_max=num_classes, seed=seed)
    else:
        sampled_values = _check_sampled_values(sampled_values, num_sampled, num_classes, labels, num_true,
                                               valid)
    cand, true_count, samp_count = (tf.stop_gradient(tf.convert_to_tensor(v)) for v in sampled_values)
    cand = tf.cast(cand, tf.int64)
    cdt = _compute_dtype(inputs.dtype)
    n = tf.shape(labels)[0]
    true_count = tf.broadcast_to(tf.reshape(true_count, [n, -1]), [n, num_true])
    ids, log_q, removed = candidate_columns(labels, valid, cand, true_count, samp_count,
                                           remove_accidental_hits=remove_accidental_hits,
                                           subtract_log_q=subtract_log_q, dtype=cdt)
    row_log_q = None
    if exclude_true and subtract_log_q:
        log_q, row_log_q = exclusion_correction(labels if valid is None else tf.where(
            valid, labels, tf.zeros_like(labels)), valid, true_count, removed, log_q, num_sampled)
    rows = tf.cast(_gather(shards, ids, partition_strategy), cdt)
    b = tf.zeros(tf.shape(ids), cdt) if biases is None else tf.cast(_gather(bias_shards, ids, partition_strategy), cdt)
    loss = sampled_loss(tf.cast(inputs, cdt), rows, b, log_q, removed, valid, num_true, make_head(valid),
                        row_log_q, ids=ids, num_classes=num_classes)
    loss = _nan_rows(loss, labels, cand, true_count, samp_count, num_classes, valid)
    return _reduce(loss, None if valid is None else tf.reduce_any(valid, axis=1), reduction)


def gbce_loss(weights, biases, labels, inputs, num_sampled: int, num_classes: int, num_true: int = 1,
              sampled_values=None, remove_accidental_hits: bool = False, name: str = "gbce_loss", *, t: float = 0.75,
              ignore_index: int | None = None, reduction: Literal["none", "mean", "sum"] = "none") -> tf.Tensor:
    """gBCE (Petrov & Macdonald 2023): negative sampling (:func:`nce_loss` without ``log E``)
    with the labels' probability raised to ``beta = alpha (t (1 - 1/alpha) + 1/alpha)``,
    ``alpha = num_sampled / (num_classes - 1)`` (:func:`sampled_softmax.torch.gbce_loss`).
    Without ``sampled_values`` the candidates are ``tf.random.uniform_candidate_sampler``'s,
    the noise gBCE's calibration assumes."""
    num_sampled, num_classes = V.check_positive_int("num_sampled", num_sampled), V.check_positive_int(
        "num_classes", num_classes)
    t = V.check_gbce(num_sampled, num_classes, t)
    alpha = num_sampled / (num_classes - 1)
    beta = alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)
    with tf.name_scope(name):
        return _sampled_head_loss(weights, biases, labels, inputs, num_sampled, num_classes=num_classes,
                                  num_true=num_true, sampled_values=sampled_values,
                                  remove_accidental_hits=remove_accidental_hits, seed=None, ignore_index=ignore_index,
                                  subtract_log_q=False, reduction=reduction, uniform=True,
                                  make_head=lambda valid: sigmoid_head(num_true, valid, beta))


def full_logits(weights, biases, inputs, name: str = "full_logits") -> tf.Tensor:
    """Exact logits ``inputs @ W^T + b``, ``[batch, num_classes]``, from one table or ``"div"`` shards."""
    with tf.name_scope(name):
        shards = _shards(weights)
        W = shards[0] if len(shards) == 1 else tf.concat(shards, 0)
        inputs = tf.convert_to_tensor(inputs)
        cdt = _compute_dtype(inputs.dtype)
        logits = tf.matmul(tf.cast(inputs, cdt), tf.cast(W, cdt), transpose_b=True)
        if biases is None:
            return logits
        b_shards = _shards(biases)
        return logits + tf.cast(b_shards[0] if len(b_shards) == 1 else tf.concat(b_shards, 0), cdt)


def full_softmax_loss(weights, biases, labels, inputs, num_classes: int | None = None, num_true: int = 1,
                      name: str = "full_softmax_loss", *, ignore_index: int | None = None,
                      label_smoothing: float = 0.0, reduction: Literal["none", "mean", "sum"] = "none") -> tf.Tensor:
    r"""Exact softmax cross-entropy over all classes, for evaluation: ``[batch]``.

    Same weights, biases and labels as :func:`sampled_softmax_loss`; with ``num_true > 1`` the
    target is ``1 / num_true`` on each label. The extras of :func:`sampled_softmax_loss` (and of
    the other front ends' exact losses): ``ignore_index`` drops a label from its row (a row with
    none kept has loss 0), ``label_smoothing = eps`` spreads ``eps`` over all ``V`` classes,
    ``reduction`` as there.
    """
    with tf.name_scope(name):
        V.check_choice("reduction", reduction, V.REDUCTIONS)
        eps = V.check_label_smoothing(label_smoothing)
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise TypeError(f"`ignore_index` must be an int or None; received {type(ignore_index).__name__}")
        inputs = tf.convert_to_tensor(inputs)
        labels = tf.convert_to_tensor(labels)
        shards, bias_shards, num_classes, _ = _check(weights, biases, labels, inputs, 1, num_classes or
                                                     sum(int(w.shape[0]) for w in _shards(weights)), num_true, "div")
        labels = tf.reshape(_int64_labels(labels), [-1, num_true])
        keep = None if ignore_index is None else labels != ignore_index
        labels = _check_label_values(labels, num_classes, keep, ignore_index)
        safe = labels if keep is None else tf.where(keep, labels, tf.zeros_like(labels))
        logp = tf.nn.log_softmax(full_logits(shards, bias_shards, inputs))
        picked = tf.gather(logp, safe, batch_dims=1)
        kept = tf.ones_like(picked) if keep is None else tf.cast(keep, picked.dtype)
        n_true = tf.reduce_sum(kept, axis=1)
        live = n_true > 0
        loss = -(1.0 - eps) * tf.reduce_sum(kept * picked, axis=1) / tf.maximum(n_true, 1.0)
        if eps:
            loss = loss - eps * tf.reduce_mean(logp, axis=1)
        loss = tf.where(live, loss, tf.zeros_like(loss))
        out_of_range = (labels < 0) | (labels >= num_classes)
        bad = tf.reduce_any(out_of_range if keep is None else keep & out_of_range, axis=1)  # see _nan_rows
        loss = tf.where(bad, tf.constant(float("nan"), loss.dtype), loss)
        return _reduce(loss, None if keep is None else live, reduction)


def compute_accidental_hits(true_classes, sampled_candidates, num_true, seed=None, name=None):
    """``tf.nn.compute_accidental_hits``: where a sampled candidate equals one of a row's true
    classes. Returns ``(indices [K] int32, ids [K] int64, weights [K] float32)``: the row, the
    candidate's position in ``sampled_candidates`` and ``-FLT_MAX`` (to add to that logit) for
    each hit, in TensorFlow's order (rows, then each row's labels; a candidate drawn twice is
    found at its last position). ``K`` depends on the values: not for XLA.
    """
    del seed
    with tf.name_scope(name or "compute_accidental_hits"):
        num_true = V.check_positive_int("num_true", num_true)
        true_classes = tf.reshape(tf.cast(tf.convert_to_tensor(true_classes), tf.int64), [-1, num_true])
        cand = tf.cast(tf.reshape(tf.convert_to_tensor(sampled_candidates), [-1]), tf.int64)
        equal = true_classes[:, :, tf.newaxis] == cand[tf.newaxis, tf.newaxis, :]  # [B, T, S]
        found = tf.reduce_any(equal, axis=2)
        num_sampled = tf.shape(cand, out_type=tf.int64)[0]
        last = num_sampled - 1 - tf.argmax(tf.cast(tf.reverse(equal, [2]), tf.int32), axis=2, output_type=tf.int64)
        rows = tf.broadcast_to(tf.range(tf.shape(true_classes)[0], dtype=tf.int32)[:, tf.newaxis],
                               tf.shape(found))
        indices = tf.boolean_mask(rows, found)
        ids = tf.boolean_mask(last, found)
        return indices, ids, tf.fill(tf.shape(indices), tf.constant(-3.4028234663852886e38, tf.float32))
