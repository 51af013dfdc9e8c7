"""In-batch softmax for two-tower retrieval in TensorFlow, and mixed negatives (the streaming
frequency estimators live in :mod:`.frequency`, re-exported here).

The semantics of :func:`sampled_softmax.torch.in_batch_softmax_loss` and of the NumPy reference's
stages; TensorFlow's autodiff gives the gradients (query, candidates, a ``tf.Variable``
temperature and ``log_q``). Values (``log_q``, ``temperature``, ``sample_weight``) raise when
eager, assert in a graph, and make the loss ``nan`` under XLA. Works in ``tf.function`` and
with ``jit_compile=True``.
"""

from __future__ import annotations

from typing import Literal

import tensorflow as tf

from .. import MixedNegatives, SampledSoftmaxError
from .. import _validation as V
from .frequency import CountMinFrequency, StreamingFrequency  # noqa: F401 - their first home

__all__ = ["in_batch_softmax_loss", "in_batch_columns", "mixed_negatives", "MixedNegatives", "StreamingFrequency", "CountMinFrequency"]


def _shape(x):
    return None if x is None else tuple(x.shape.as_list())


def in_batch_columns(batch_size: int, num_candidates: int, *, candidate_ids=None, query_ids=None, score_mask=None,
                  excluded_ids=None, remove_accidental_hits: bool = True) -> tf.Tensor:
    """Stage 1: the keep mask ``[B, C]`` of :func:`sampled_softmax.reference.in_batch_columns`."""
    b, c = batch_size, num_candidates
    keep = tf.ones((b, c), tf.bool)
    if candidate_ids is not None and remove_accidental_hits:
        keep &= tf.not_equal(candidate_ids[None, :], candidate_ids[:b, None])
    if excluded_ids is not None:
        if candidate_ids is None:
            raise SampledSoftmaxError(V.EXCLUDED_NEEDS_CANDIDATE_IDS)
        excluded_ids = tf.cast(excluded_ids, candidate_ids.dtype)
        hit = tf.equal(candidate_ids[None, :, None], excluded_ids[:, None, :]) & (excluded_ids[:, None, :] >= 0)
        keep &= ~tf.reduce_any(hit, axis=2)
    if query_ids is not None:
        same = tf.equal(query_ids[:, None], query_ids[None, :])
        keep &= tf.concat([~same, tf.ones((b, c - b), tf.bool)], axis=1)
    if score_mask is not None:
        keep &= score_mask
    return keep | tf.cast(tf.eye(b, c), tf.bool)


def _checked(name, x, ok, message_now, message_graph):
    """``x`` with ``ok`` (a scalar bool) checked: an error now when eager, an assertion in a graph."""
    if tf.executing_eagerly():
        if not bool(ok):
            message_now()
        return x
    with tf.control_dependencies([tf.debugging.Assert(ok, [message_graph])]):
        return tf.identity(x)


def in_batch_softmax_loss(
    query, candidates, *, candidate_ids=None, query_ids=None, log_q=None, temperature=1.0,
    remove_accidental_hits: bool = True, score_mask=None, excluded_ids=None, num_hard_negatives: int | None = None,
    sample_weight=None, reduction: Literal["none", "mean", "sum"] = "mean",
) -> tf.Tensor:
    r"""In-batch softmax loss for two-tower retrieval (sampling-bias corrected), the semantics of
    :func:`sampled_softmax.torch.in_batch_softmax_loss`: query ``i`` of ``B`` has its positive at
    candidate ``i`` of ``C >= B``; ``o_ij = q_i . c_j / temperature - log_q_j`` (scale, then
    correct: TFRS' order, with the sign Yi et al. 2019 derive); negatives with the row's positive
    id, the same query id, ``score_mask`` False or an id in ``excluded_ids[i]`` are removed
    (probability 0, gradient 0); ``num_hard_negatives`` keeps each row's hardest;
    ``loss_i = w_i (logsumexp_kept(o_i) - o_ii)``; ``"mean"`` is ``sum_i loss_i / B``.

    Example:
        >>> import tensorflow as tf
        >>> from sampled_softmax.tensorflow import in_batch_softmax_loss
        >>> q, c = tf.eye(2, 3), tf.eye(4, 3)
        >>> round(float(in_batch_softmax_loss(q, c, candidate_ids=tf.range(4))), 4)
        0.7437
    """
    query, candidates = tf.convert_to_tensor(query), tf.convert_to_tensor(candidates)
    V.check_floating_dtype("query", query.dtype.is_floating, query.dtype.name)
    V.check_floating_dtype("candidates", candidates.dtype.is_floating, candidates.dtype.name)
    optional = {k: None if v is None else tf.convert_to_tensor(v)
                for k, v in dict(candidate_ids=candidate_ids, query_ids=query_ids, log_q=log_q,
                                 score_mask=score_mask, excluded_ids=excluded_ids,
                                 sample_weight=sample_weight).items()}
    for name in ("candidate_ids", "query_ids", "excluded_ids"):
        x = optional[name]
        if x is not None:
            V.check_integer_dtype(name, x.dtype.is_integer, x.dtype.name)
    for name in ("log_q", "sample_weight"):
        x = optional[name]
        if x is not None:
            V.check_floating_dtype(name, x.dtype.is_floating, x.dtype.name)
    if optional["score_mask"] is not None and optional["score_mask"].dtype != tf.bool:
        raise TypeError(f"`score_mask` must be a bool tensor (True keeps); received {optional['score_mask'].dtype.name}")
    if len(_shape(query)) != 2 or len(_shape(candidates)) != 2:  # their rank must be known
        V.check_in_batch_shapes(_shape(query), _shape(candidates))
    b, c, _ = V.check_in_batch_shapes(_shape(query), _shape(candidates),
                                      **{k: _shape(v) for k, v in optional.items()})
    # Unknown batch sizes (a tf.function's input_signature [None, D]) are read when it runs.
    b = tf.shape(query)[0] if b is None else b
    c = tf.shape(candidates)[0] if c is None else c
    V.check_choice("reduction", reduction, V.REDUCTIONS)
    V.check_bool("remove_accidental_hits", remove_accidental_hits)
    num_hard_negatives = V.check_num_hard_negatives(num_hard_negatives)
    cdt = tf.float32 if query.dtype in (tf.float16, tf.bfloat16) else query.dtype

    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        temperature = tf.constant(V.check_temperature(temperature), cdt)
    else:
        if not isinstance(temperature, tf.Variable):
            temperature = tf.convert_to_tensor(temperature)
        if temperature.shape.num_elements() != 1 or not temperature.dtype.is_floating:
            raise V.temperature_shape_error("tensor", temperature.shape.as_list(), temperature.dtype.name)
        t = tf.reshape(tf.cast(temperature, cdt), [])
        temperature = _checked("temperature", t, tf.math.is_finite(t) & (t > 0),
                               lambda: V.check_temperature_value(float(t)),
                               "`temperature` must be positive and finite")
        temperature = tf.where(tf.math.is_finite(temperature) & (temperature > 0), temperature,
                               tf.constant(float("nan"), cdt))
    log_q, weight = optional["log_q"], optional["sample_weight"]
    if log_q is not None:
        log_q = tf.cast(log_q, cdt)
        fine = tf.reduce_all(tf.math.is_finite(log_q)) & tf.reduce_all(log_q <= 0)
        log_q = _checked("log_q", log_q, fine,
                         lambda: V.check_log_q_values(float(tf.reduce_min(log_q)), float(tf.reduce_max(log_q)),
                                                      bool(tf.reduce_all(tf.math.is_finite(log_q)))),
                         "`log_q` must be finite and <= 0 (the log of a sampling probability)")
        log_q = tf.where(tf.math.is_finite(log_q) & (log_q <= 0), log_q, tf.constant(float("nan"), cdt))
    if weight is not None:
        weight = tf.cast(weight, cdt)
        fine = tf.reduce_all(tf.math.is_finite(weight)) & tf.reduce_all(weight >= 0)
        weight = _checked("sample_weight", weight, fine,
                          lambda: V.check_sample_weight_values(float(tf.reduce_min(weight)),
                                                               bool(tf.reduce_all(tf.math.is_finite(weight)))),
                          "`sample_weight` must be finite and >= 0")
    if isinstance(b, int) and b == 0:
        zero = tf.reduce_sum(candidates[:0]) + tf.zeros([0], cdt)
        return zero if reduction == "none" else tf.reduce_sum(zero)

    keep = in_batch_columns(b, c, candidate_ids=optional["candidate_ids"], query_ids=optional["query_ids"],
                         score_mask=optional["score_mask"], excluded_ids=optional["excluded_ids"],
                         remove_accidental_hits=remove_accidental_hits)
    loss = _in_batch_rows(tf.cast(query, cdt), tf.cast(candidates, cdt), temperature,
                          tf.zeros([c], cdt) if log_q is None else log_q, keep, num_hard_negatives)
    if weight is not None:
        loss = loss * tf.where(tf.math.is_finite(weight) & (weight >= 0), weight, tf.constant(float("nan"), cdt))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return tf.reduce_sum(loss)
    return tf.reduce_sum(loss) / tf.maximum(tf.cast(b, loss.dtype), 1.0)


def _in_batch_rows(query, candidates, temperature, log_q, keep, num_hard_negatives):
    """Per-row loss ``logsumexp_kept(o_i) - o_ii`` with ``o = q c^T / t - log_q``, and a custom
    gradient that keeps one ``[B, C]`` buffer, ``G = softmax_kept(o) - target``, for the
    backward pass (TensorFlow's autodiff would keep the logits, their masked copy and the mask):
    ``d q = G c / t``, ``d c = G^T q / t``, ``d t = -sum((G c) * q) / t^2``,
    ``d log_q = -sum_i G_i``."""
    b, c = keep.shape  # static, or unknown (None) until run
    b = tf.shape(query)[0] if b is None else b
    c = tf.shape(candidates)[0] if c is None else c

    @tf.custom_gradient
    def rows(q, cand, t, lq):
        # Few [B, C] buffers alive at once: the temperature scales q, the positives come from the
        # rows' dot products, and the target is subtracted on the diagonal in place.
        scaled = q / t
        o = tf.linalg.matmul(scaled, cand, transpose_b=True) - lq[None, :]
        positive = tf.reduce_sum(scaled * cand[:b], axis=1) - lq[:b]
        kept = keep
        if num_hard_negatives is not None and not (isinstance(c, int) and num_hard_negatives >= c - 1):
            eye = tf.cast(tf.eye(b, c), tf.bool)
            negatives = tf.where(kept & ~eye, o, tf.constant(float("-inf"), o.dtype))
            # At most c - 1: with c unknown, k >= c - 1 keeps every negative, as no limit does.
            k = num_hard_negatives if isinstance(c, int) else tf.minimum(num_hard_negatives, c - 1)
            top = tf.math.top_k(negatives, k).indices
            hard = tf.reduce_any(tf.one_hot(top, c, on_value=True, off_value=False, dtype=tf.bool), axis=1)
            kept = (kept & hard) | eye
        masked = tf.where(kept, o, tf.constant(float("-inf"), o.dtype))
        lse = tf.reduce_logsumexp(masked, axis=1)
        loss = lse - positive
        p = tf.exp(masked - lse[:, None])  # zero on removed columns
        d_logits = tf.linalg.set_diag(p, tf.linalg.diag_part(p) - 1)

        def grad(upstream):
            g = d_logits * upstream[:, None]
            gc = tf.linalg.matmul(g, cand) / t
            return (gc, tf.linalg.matmul(g, q, transpose_a=True) / t, -tf.reduce_sum(gc * q) / t,
                    -tf.reduce_sum(g, axis=0))

        return loss, grad

    return rows(query, candidates, temperature, log_q)




def mixed_negatives(candidates, candidate_ids, in_batch_log_q, sampled_values, encode) -> MixedNegatives:
    """Mixed negative sampling (Yang et al. 2020), as :func:`sampled_softmax.torch.mixed_negatives`
    with TensorFlow's explicit draw: the batch's ``candidates [B, D]`` plus the ``M`` candidates of
    ``sampled_values`` embedded by ``encode(ids) -> [M, D]``. The expected counts must be
    inclusion probabilities (``<= 1``): draw with this library's samplers
    (``sampled_softmax.tensorflow.log_uniform_candidate_sampler`` etc., ``draw="unique_exact"``).
    TensorFlow's ``tf.random.*_candidate_sampler(unique=True)`` report ``S p`` when no draw
    repeats, above 1 for frequent classes: an error here when eager, an assertion of the loss in a
    graph. Returns a
    ``MixedNegatives(candidates [B + M, D], candidate_ids [B + M], log_q [B + M], score_mask
    [B, B + M])`` for ``in_batch_softmax_loss(query, **mixed._asdict())``: each column with its own
    source's log probability; padding slots (an expected count of ``inf``) masked out."""
    candidates = tf.convert_to_tensor(candidates)
    candidate_ids, in_batch_log_q = tf.convert_to_tensor(candidate_ids), tf.convert_to_tensor(in_batch_log_q)
    sampled_values = V.check_sampled_values_triple(sampled_values)
    cand, _, count = (tf.convert_to_tensor(v) for v in sampled_values)
    b, d = V.check_mixed_negatives_shapes(_shape(candidates), _shape(candidate_ids), _shape(in_batch_log_q),
                                          _shape(cand), _shape(count))
    m = _shape(cand)[0]
    extra = tf.convert_to_tensor(encode(cand))
    V.check_encoded_shape(list(_shape(extra)), m, d)
    count = tf.cast(count, in_batch_log_q.dtype)
    if tf.executing_eagerly():
        finite = tf.boolean_mask(count, ~tf.math.is_inf(count))
        V.check_mixed_negatives_counts(float(tf.reduce_max(finite)) if tf.size(finite) else None)
    padding = tf.math.is_inf(count)
    log_e = tf.math.log(tf.where(padding, tf.ones_like(count), count))
    score_mask = tf.concat([tf.ones((b, b), tf.bool), tf.broadcast_to(~padding[None, :], (b, m))], axis=1)
    return MixedNegatives(tf.concat([candidates, tf.cast(extra, candidates.dtype)], 0),
                          tf.concat([candidate_ids, tf.cast(cand, candidate_ids.dtype)], 0),
                          tf.concat([in_batch_log_q, log_e], 0), score_mask)


# The name of wave 2 (0.x): the same function.
in_batch_keep = in_batch_columns
