"""In-batch softmax for two-tower retrieval in JAX: the stages of
:mod:`sampled_softmax.reference` (``in_batch_columns`` → ``in_batch_logits`` → ``hard_negatives``
→ the softmax head) as a pure function; ``jax.grad`` differentiates the query, the candidates,
a learned temperature and ``log_q``. Values (``log_q``, ``temperature``, ``sample_weight``) are
checked where they are concrete; under ``jit`` a bad value gives ``nan``.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from .. import MixedNegatives, SampledSoftmaxError
from .. import _validation as V
from .functional import _concrete, _given_dtype

__all__ = ["in_batch_softmax_loss", "in_batch_columns", "mixed_negatives", "MixedNegatives"]


def in_batch_columns(batch_size: int, num_candidates: int, *, candidate_ids=None, query_ids=None, score_mask=None,
                  excluded_ids=None, remove_accidental_hits: bool = True) -> jax.Array:
    """Stage 1: the keep mask ``[B, C]`` of :func:`sampled_softmax.reference.in_batch_columns`."""
    b, c = batch_size, num_candidates
    keep = jnp.ones((b, c), bool)
    if candidate_ids is not None and remove_accidental_hits:
        keep &= candidate_ids[None, :] != candidate_ids[:b, None]
    if excluded_ids is not None:
        if candidate_ids is None:
            raise SampledSoftmaxError(V.EXCLUDED_NEEDS_CANDIDATE_IDS)
        hit = (candidate_ids[None, :, None] == excluded_ids[:, None, :]) & (excluded_ids[:, None, :] >= 0)
        keep &= ~jnp.any(hit, axis=2)
    if query_ids is not None:
        same = query_ids[:, None] == query_ids[None, :]
        keep &= jnp.concatenate([~same, jnp.ones((b, c - b), bool)], axis=1)
    if score_mask is not None:
        keep &= score_mask
    return keep | jnp.eye(b, c, dtype=bool)


def in_batch_softmax_loss(
    query, candidates, *, candidate_ids=None, query_ids=None, log_q=None, temperature=1.0,
    remove_accidental_hits: bool = True, score_mask=None, excluded_ids=None, num_hard_negatives: int | None = None,
    sample_weight=None, reduction: Literal["none", "mean", "sum"] = "mean",
) -> jax.Array:
    r"""In-batch softmax loss, the semantics of :func:`sampled_softmax.torch.in_batch_softmax_loss`:
    query ``i`` of ``B`` has its positive at candidate ``i`` of ``C >= B``;
    ``o_ij = q_i . c_j / temperature - log_q_j`` (scale, then correct); negatives with the row's
    positive id, the same query id, ``score_mask`` False or an id in ``excluded_ids[i]`` are
    removed (probability 0, gradient 0); ``num_hard_negatives`` keeps each row's hardest;
    ``loss_i = w_i (logsumexp_kept(o_i) - o_ii)``; ``"mean"`` is ``sum_i loss_i / B``.

    Example:
        >>> import jax.numpy as jnp
        >>> from sampled_softmax.jax import in_batch_softmax_loss
        >>> q, c = jnp.eye(2, 3), jnp.eye(4, 3)
        >>> round(float(in_batch_softmax_loss(q, c, candidate_ids=jnp.arange(4))), 4)
        0.7437
    """
    for name, x in (("query", query), ("candidates", candidates)):
        dtype = _given_dtype(name, x)
        V.check_floating_dtype(name, jnp.issubdtype(dtype, jnp.floating), str(dtype))
    optional = dict(candidate_ids=candidate_ids, query_ids=query_ids, log_q=log_q, score_mask=score_mask,
                    excluded_ids=excluded_ids, sample_weight=sample_weight)
    for name in ("candidate_ids", "query_ids", "excluded_ids"):
        if optional[name] is not None:
            dtype = _given_dtype(name, optional[name])
            V.check_integer_dtype(name, jnp.issubdtype(dtype, jnp.integer), str(dtype))
    for name in ("log_q", "sample_weight"):
        if optional[name] is not None:
            dtype = _given_dtype(name, optional[name])
            V.check_floating_dtype(name, jnp.issubdtype(dtype, jnp.floating), str(dtype))
    if score_mask is not None and _given_dtype("score_mask", score_mask) != np.bool_:
        raise TypeError(f"`score_mask` must be a bool array (True keeps); received {_given_dtype('score_mask', score_mask)}")
    query, candidates = jnp.asarray(query), jnp.asarray(candidates)
    optional = {k: None if v is None else jnp.asarray(v) for k, v in optional.items()}
    b, c, _ = V.check_in_batch_shapes(query.shape, candidates.shape,
                                      **{k: None if v is None else v.shape for k, v in optional.items()})
    V.check_choice("reduction", reduction, V.REDUCTIONS)
    V.check_bool("remove_accidental_hits", remove_accidental_hits)
    num_hard_negatives = V.check_num_hard_negatives(num_hard_negatives)
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        temperature = V.check_temperature(temperature)
    else:
        temperature = jnp.asarray(temperature)
        if temperature.size != 1 or not jnp.issubdtype(temperature.dtype, jnp.floating):
            raise V.temperature_shape_error("array", temperature.shape, temperature.dtype)
        if _concrete(temperature):
            V.check_temperature_value(float(temperature.reshape(())))
        temperature = jnp.where(temperature > 0, temperature, jnp.nan).reshape(())
    log_q, weight = optional["log_q"], optional["sample_weight"]
    if log_q is not None and _concrete(log_q) and log_q.size:
        lq = np.asarray(log_q)
        V.check_log_q_values(float(lq.min()), float(lq.max()), bool(np.isfinite(lq).all()))
    if weight is not None and _concrete(weight) and weight.size:
        w = np.asarray(weight)
        V.check_sample_weight_values(float(w.min()), bool(np.isfinite(w).all()))

    cdt = jnp.float32 if query.dtype in (jnp.float16, jnp.bfloat16) else query.dtype
    keep = in_batch_columns(b, c, candidate_ids=optional["candidate_ids"], query_ids=optional["query_ids"],
                         score_mask=optional["score_mask"], excluded_ids=optional["excluded_ids"],
                         remove_accidental_hits=remove_accidental_hits)
    o = query.astype(cdt) @ candidates.astype(cdt).T / temperature
    if log_q is not None:
        # A traced log_q that is not finite or positive makes its rows nan (never plausible).
        o = o - jnp.where(jnp.isfinite(log_q) & (log_q <= 0), log_q, jnp.nan).astype(cdt)[None, :]
    lowest = jnp.finfo(cdt).min
    eye = jnp.eye(b, c, dtype=bool)
    if num_hard_negatives is not None and num_hard_negatives < c - 1:
        negatives = jnp.where(keep & ~eye, o, -jnp.inf)
        _, top = jax.lax.top_k(jax.lax.stop_gradient(negatives), num_hard_negatives)
        hard = jnp.zeros((b, c), bool).at[jnp.arange(b)[:, None], top].set(True)
        keep = (keep & hard) | eye
    masked = jnp.where(keep, o, lowest)
    positive = jnp.diagonal(o[:, :b]) if b else jnp.zeros((0,), cdt)
    loss = jax.nn.logsumexp(masked, axis=1) - positive
    if weight is not None:
        loss = loss * jnp.where(jnp.isfinite(weight) & (weight >= 0), weight, jnp.nan).astype(cdt)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return jnp.sum(loss)
    return jnp.sum(loss) / max(b, 1)




def mixed_negatives(candidates, candidate_ids, in_batch_log_q, sampled_values, encode) -> MixedNegatives:
    """Mixed negative sampling (Yang et al. 2020), as :func:`sampled_softmax.torch.mixed_negatives`
    with JAX's explicit draw: the batch's ``candidates [B, D]`` plus the ``M`` candidates of
    ``sampled_values`` (``samplers.sampled_values(key, sampler, ids, M)``, whose ``"unique_exact"``
    expected counts are inclusion probabilities ``<= 1``) embedded by ``encode(ids) -> [M, D]``.
    Returns ``MixedNegatives(candidates [B + M, D], candidate_ids [B + M], log_q [B + M],
    score_mask [B, B + M])`` for ``in_batch_softmax_loss(query, **mixed._asdict())``: each column
    with its own source's log probability; padding slots (repeats, expected count ``inf``) masked."""
    candidates, candidate_ids = jnp.asarray(candidates), jnp.asarray(candidate_ids)
    in_batch_log_q = jnp.asarray(in_batch_log_q)
    cand, _, count = (jnp.asarray(v) for v in V.check_sampled_values_triple(sampled_values))
    b, d = V.check_mixed_negatives_shapes(candidates.shape, candidate_ids.shape, in_batch_log_q.shape, cand.shape,
                                          count.shape)
    m = cand.shape[0]
    extra = jnp.asarray(encode(cand))
    V.check_encoded_shape(list(extra.shape), m, d)
    padding = jnp.isinf(count)
    if not isinstance(count, jax.core.Tracer):  # known now: checked now, as in the other front ends
        finite = np.asarray(count)[np.isfinite(np.asarray(count))]
        V.check_mixed_negatives_counts(float(finite.max()) if finite.size else None)
    # Under jit a count above 1 (or not positive) is not a probability: its column's log_q is nan.
    log_e = jnp.where((count > 1.0) & ~padding | ~(count > 0), jnp.nan,
                      jnp.log(jnp.where(padding, 1.0, count))).astype(in_batch_log_q.dtype)
    score_mask = jnp.concatenate([jnp.ones((b, b), bool), jnp.broadcast_to(~padding[None, :], (b, m))], axis=1)
    return MixedNegatives(jnp.concatenate([candidates, extra.astype(candidates.dtype)]),
                          jnp.concatenate([candidate_ids, cand.astype(candidate_ids.dtype)]),
                          jnp.concatenate([in_batch_log_q, log_e]), score_mask)


# The name of wave 2 (0.x): the same function.
in_batch_keep = in_batch_columns
