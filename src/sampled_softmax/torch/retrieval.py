"""In-batch softmax for two-tower retrieval: the batch's own candidates as negatives, corrected
for their sampling probability (Yi et al. 2019), with extra (e.g. corpus) negatives mixed in
(Yang et al. 2020).

The stages of :mod:`sampled_softmax.reference` (``in_batch_columns`` → ``in_batch_logits`` →
``hard_negatives`` → the softmax head), computed by one autograd Function that keeps a single
``[B, C]`` buffer: the logits are formed in place, turned into ``softmax - target`` in the
forward pass, and the backward is two matrix products with it. Peak memory is one ``[B, C]``
array (plus the masks' booleans), where the same loss written with ``F.cross_entropy`` keeps
several.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Literal, Sequence

import torch

from .. import MixedNegatives, SampledSoftmaxError
from .. import _validation as V
from . import _ops
from ._autograd import _check_once_differentiable
from ._columns import excluded_hits as _excluded_hits
from ._prepare import _autocast_on
from .samplers import CandidateSampler

__all__ = ["in_batch_softmax_loss", "in_batch_columns", "MixedNegatives", "mixed_negatives"]


def _is_int(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _tensor(name, x, device=None):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor; received {type(x).__name__}")
    return x if device is None else x.to(device)


def in_batch_columns(batch_size: int, num_candidates: int, *, candidate_ids=None, query_ids=None, score_mask=None,
                  excluded_ids=None, remove_accidental_hits: bool = True, device=None) -> torch.Tensor | None:
    """Stage 1: the keep mask ``[B, C]`` of :func:`sampled_softmax.reference.in_batch_columns`
    (None when nothing is removed). The positive of row ``i`` (column ``i``) is always kept."""
    b, c = batch_size, num_candidates
    masks = []
    if candidate_ids is not None and remove_accidental_hits:
        masks.append(candidate_ids[None, :] != candidate_ids[:b, None])
    if excluded_ids is not None:
        if candidate_ids is None:
            raise SampledSoftmaxError(V.EXCLUDED_NEEDS_CANDIDATE_IDS)
        masks.append(~_excluded_hits(candidate_ids, excluded_ids.to(candidate_ids.device)))
    if query_ids is not None:
        mask = torch.ones((b, c), dtype=torch.bool, device=device)
        mask[:, :b] = query_ids[:, None] != query_ids[None, :]
        masks.append(mask)
    if score_mask is not None:
        masks.append(score_mask)
    if not masks:
        return None
    keep = masks[0].clone() if len(masks) == 1 else masks[0]  # never the caller's tensor: written below
    for mask in masks[1:]:
        keep = keep & mask
    diag = torch.arange(b, device=keep.device)
    keep[diag, diag] = True
    return keep


class _InBatchSoftmax(torch.autograd.Function):
    """Per-row loss ``[B]``; saves ``softmax(o) - target`` ``[B, C]`` (zero on removed columns)."""

    @staticmethod
    def forward(ctx, query, candidates, log_q, temperature, keep, num_hard_negatives):
        b = query.shape[0]
        t = temperature if isinstance(temperature, float) else temperature.detach()
        o = torch.mm(query, candidates.t())
        if not (isinstance(t, float) and t == 1.0):
            o.div_(t)
        if log_q is not None:
            o.sub_(log_q.detach().to(o.dtype)[None, :])
        if keep is not None:
            o.masked_fill_(~keep, float("-inf"))
        diag = torch.arange(b, device=o.device)
        if num_hard_negatives is not None and num_hard_negatives < o.shape[1] - 1:
            positive = o[diag, diag].clone()
            o[diag, diag] = float("-inf")
            top = torch.topk(o, num_hard_negatives, dim=1, sorted=False).indices
            hard = torch.zeros_like(o, dtype=torch.bool).scatter_(1, top, True)
            o.masked_fill_(~hard, float("-inf"))
            o[diag, diag] = positive
        positive = o[diag, diag].clone()
        m = o.amax(dim=1, keepdim=True)
        o.sub_(m).exp_()
        total = o.sum(dim=1, keepdim=True)
        o.div_(total)  # softmax
        loss = (m + total.log())[:, 0] - positive
        o[diag, diag] -= 1.0  # softmax - target
        ctx.save_for_backward(query, candidates, o, temperature if isinstance(temperature, torch.Tensor) else None)
        ctx.t = temperature if isinstance(temperature, float) else None
        ctx.log_q_grad = log_q is not None and log_q.requires_grad
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        _check_once_differentiable("in_batch_softmax_loss")
        query, candidates, delta, t_tensor = ctx.saved_tensors
        t = ctx.t if t_tensor is None else t_tensor.detach().to(delta.dtype)
        g = grad_loss.to(delta.dtype)
        d_query = d_candidates = d_log_q = d_t = None
        need_q, need_c, _, need_t = ctx.needs_input_grad[:4]
        delta_c = torch.mm(delta, candidates) if (need_q or need_t) else None  # [B, D]
        if need_q:
            d_query = delta_c * (g / t)[:, None]
        if need_c:
            d_candidates = torch.mm(delta.t(), query * (g / t)[:, None])
        if ctx.log_q_grad:
            d_log_q = -torch.mv(delta.t(), g)
        if need_t:
            d_t = -(query * delta_c * g[:, None]).sum() / (t * t)
            d_t = d_t.reshape(t_tensor.shape).to(t_tensor.dtype)
        return d_query, d_candidates, d_log_q, d_t, None, None


def in_batch_softmax_loss(
    query: torch.Tensor, candidates: torch.Tensor, *, candidate_ids: torch.Tensor | None = None,
    query_ids: torch.Tensor | None = None, log_q: torch.Tensor | None = None,
    temperature: float | torch.Tensor = 1.0, remove_accidental_hits: bool = True,
    score_mask: torch.Tensor | None = None, excluded_ids: torch.Tensor | None = None,
    num_hard_negatives: int | None = None, sample_weight: torch.Tensor | None = None,
    reduction: Literal["none", "mean", "sum"] = "mean",
) -> torch.Tensor:
    r"""In-batch softmax loss for two-tower retrieval (sampling-bias corrected).

    Query ``i`` of ``B`` has its positive at candidate ``i``; candidates ``B..C-1`` are extra
    negatives shared by every row (e.g. corpus negatives from :func:`mixed_negatives`). The logits

    .. math:: o_{ij} = q_i \cdot c_j / \tau - \log Q_j

    scale first and correct after: the ``log_q`` correction is **not** divided by the
    temperature (TFRS' order; Yi et al. 2019 subtract ``log p_j`` from every column, the
    positive's included). A negative column ``j != i`` is removed from row ``i`` (probability 0,
    gradient exactly 0) when it has the row's positive id (``remove_accidental_hits`` with
    ``candidate_ids``), when ``query_ids[j] == query_ids[i]`` (``j < B``: the same query twice),
    where ``score_mask`` is False, or when its id is one of ``excluded_ids[i]``. With
    ``num_hard_negatives=k`` each row keeps only its ``k`` highest-logit negatives (ties broken
    arbitrarily). ``loss_i = w_i (logsumexp_kept(o_i) - o_ii)``.

    Args:
        query: ``[B, D]`` query tower outputs.
        candidates: ``[C, D]``, ``C >= B``: the positives, then extra negatives.
        candidate_ids: integer ``[C]`` item ids (for accidental hits and ``excluded_ids``).
        query_ids: integer ``[B]`` query (e.g. user) ids.
        log_q: ``[C]`` log sampling probability of each column, finite and ``<= 0`` (from
            :class:`sampled_softmax.torch.frequency.StreamingFrequency`, or a sampler's), or None.
        temperature: ``tau > 0``, a float or a scalar tensor (learned: it gets a gradient).
        remove_accidental_hits: remove negatives with the row's positive id. Default True
            (nothing to remove without ``candidate_ids``).
        score_mask: bool ``[B, C]``, True keeps (the positives are kept whatever it says).
        excluded_ids: integer ``[B, K]`` ids each query must not see as negatives (e.g. items the
            user already interacted with); negative entries are padding.
        num_hard_negatives: keep only each row's ``k`` hardest negatives. Default None (all).
        sample_weight: ``[B]`` non-negative weights.
        reduction: ``"mean"`` (default: ``sum_i loss_i / B``, Keras' convention with weights),
            ``"sum"`` or ``"none"`` (``[B]``).

    Shape:
        query ``[B, D]``, candidates ``[C, D]``; output scalar or ``[B]``.

    Example:
        >>> import torch
        >>> from sampled_softmax.torch import in_batch_softmax_loss
        >>> q, c = torch.randn(4, 8), torch.randn(6, 8)
        >>> ids = torch.tensor([3, 7, 3, 9, 1, 2])  # rows 0 and 2 share their positive item
        >>> in_batch_softmax_loss(q, c, candidate_ids=ids, log_q=torch.full((6,), -2.0)).shape
        torch.Size([])
    """
    query, candidates = _tensor("query", query), _tensor("candidates", candidates)
    V.check_floating_dtype("query", query.is_floating_point(), str(query.dtype))
    V.check_floating_dtype("candidates", candidates.is_floating_point(), str(candidates.dtype))
    names = dict(candidate_ids=candidate_ids, query_ids=query_ids, log_q=log_q, score_mask=score_mask,
                 excluded_ids=excluded_ids, sample_weight=sample_weight)
    b, c, _ = V.check_in_batch_shapes(tuple(query.shape), tuple(candidates.shape),
                                      **{n: None if x is None else tuple(_tensor(n, x).shape)
                                         for n, x in names.items()})
    for n in ("candidate_ids", "query_ids", "excluded_ids"):
        x = names[n]
        if x is not None:
            V.check_integer_dtype(n, _is_int(x), str(x.dtype))
    if score_mask is not None and score_mask.dtype != torch.bool:
        raise TypeError(f"`score_mask` must be a bool tensor (True keeps); received {score_mask.dtype}")
    for n in ("log_q", "sample_weight"):
        x = names[n]
        if x is not None:
            V.check_floating_dtype(n, x.is_floating_point(), str(x.dtype))
    V.check_choice("reduction", reduction, V.REDUCTIONS)
    V.check_bool("remove_accidental_hits", remove_accidental_hits)
    num_hard_negatives = V.check_num_hard_negatives(num_hard_negatives)
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1 or not temperature.is_floating_point():
            raise V.temperature_shape_error("tensor", temperature.shape, temperature.dtype)
        temperature = _ops.checked_values(temperature, "temperature")
    else:
        temperature = V.check_temperature(temperature)
    # Read now, or by an operator when traced (torch.compile, meta tensors).
    if log_q is not None:
        log_q = _ops.checked_values(log_q, "log_q")
    if sample_weight is not None:
        sample_weight = _ops.checked_values(sample_weight, "sample_weight")
    # As the sampled losses under autocast: computed, returned and differentiated in float32 or wider.
    off = torch.autocast(query.device.type, enabled=False) if _autocast_on(query.device.type) else \
        contextlib.nullcontext()
    with off:
        return _in_batch_loss(query, candidates, b, c, candidate_ids=candidate_ids, query_ids=query_ids, log_q=log_q,
                              temperature=temperature, remove_accidental_hits=remove_accidental_hits,
                              score_mask=score_mask, excluded_ids=excluded_ids, num_hard_negatives=num_hard_negatives,
                              sample_weight=sample_weight, reduction=reduction)


def _in_batch_loss(query, candidates, b, c, *, candidate_ids, query_ids, log_q, temperature, remove_accidental_hits,
                   score_mask, excluded_ids, num_hard_negatives, sample_weight, reduction):
    compute = torch.float32 if query.dtype in (torch.float16, torch.bfloat16) else query.dtype
    device = query.device
    keep = in_batch_columns(b, c, candidate_ids=None if candidate_ids is None else candidate_ids.to(device),
                         query_ids=query_ids, score_mask=score_mask, excluded_ids=excluded_ids,
                         remove_accidental_hits=remove_accidental_hits, device=device)
    if b == 0:
        loss = query.new_zeros(0, dtype=compute) + 0.0 * candidates.sum()
    else:
        loss = _InBatchSoftmax.apply(query.to(compute), candidates.to(compute),
                                     None if log_q is None else log_q.to(device), temperature, keep,
                                     num_hard_negatives)
    if sample_weight is not None:
        loss = loss * sample_weight.to(loss.dtype)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / max(b, 1)




def mixed_negatives(candidates: torch.Tensor, candidate_ids: torch.Tensor, in_batch_log_q: torch.Tensor,
                    sampled_values: Sequence | None = None, encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    *args, num_negatives: int | None = None, sampler: CandidateSampler | None = None,
                    generator: torch.Generator | None = None) -> MixedNegatives:
    """Mixed negative sampling (Yang et al. 2020): the batch's ``candidates [B, D]`` plus ``M``
    corpus candidates embedded by ``encode(ids) -> [M, D]`` (the candidate tower). Each column
    keeps the probability of the source that put it there: ``in_batch_log_q [B]`` (e.g.
    ``StreamingFrequency.log_q(candidate_ids)``) for the batch's, ``log E(k)``, the probability
    that the draw includes ``k``, for the sampled ones.

    The corpus candidates are either given, as in the TensorFlow and JAX front ends and the
    reference: ``mixed_negatives(candidates, candidate_ids, in_batch_log_q, sampled_values,
    encode)`` with ``sampled_values = (ids [M], true_expected_count (unused), expected_count
    [M])`` from a sampler drawing ``"unique_exact"``; or drawn here:
    ``mixed_negatives(candidates, candidate_ids, in_batch_log_q, num_negatives=M,
    sampler=sampler, encode=encode, generator=...)`` (also accepted by position:
    ``(candidates, candidate_ids, in_batch_log_q, M, sampler, encode)``), with any of the
    library's samplers with ``draw="unique_exact"``, whose expected counts are exact inclusion
    probabilities. Returns ``MixedNegatives(candidates [B + M, D], candidate_ids [B + M], log_q
    [B + M], score_mask [B, B + M])`` for ``in_batch_softmax_loss(query, **mixed._asdict())``;
    padding slots (an expected count of ``inf``) are masked out."""
    if type(sampled_values) is int or isinstance(encode, CandidateSampler):  # (…, M, sampler, encode)
        if num_negatives is not None or sampler is not None or len(args) != 1:
            raise TypeError("mixed_negatives takes (candidates, candidate_ids, in_batch_log_q, num_negatives, "
                            "sampler, encode) by position, or num_negatives= and sampler= by keyword, not both")
        num_negatives, sampler, encode, sampled_values = sampled_values, encode, args[0], None
    elif args:
        raise TypeError(f"mixed_negatives takes at most 5 positional arguments (candidates, candidate_ids, "
                        f"in_batch_log_q, sampled_values, encode); received {5 + len(args)}")
    if encode is None:
        raise TypeError("mixed_negatives needs `encode`, the candidate tower (ids [M] -> [M, D])")
    if sampled_values is not None:
        if num_negatives is not None or sampler is not None:
            raise SampledSoftmaxError("`sampled_values` cannot be given with `num_negatives` or `sampler`: give the "
                                      "candidates drawn, or the sampler to draw them")
        return _mixed_given(candidates, candidate_ids, in_batch_log_q, sampled_values, encode)
    if num_negatives is None or sampler is None:
        raise SampledSoftmaxError("mixed_negatives needs `sampled_values`, or `num_negatives` and `sampler` to draw "
                                  "them; received neither")
    candidates, candidate_ids = _tensor("candidates", candidates), _tensor("candidate_ids", candidate_ids)
    in_batch_log_q = _tensor("in_batch_log_q", in_batch_log_q)
    if not isinstance(sampler, CandidateSampler):
        raise TypeError(f"`sampler` must be a sampled_softmax.torch sampler; received {type(sampler).__name__}")
    if sampler.draw != "unique_exact":
        raise SampledSoftmaxError(
            f"`sampler` must draw with draw='unique_exact' for mixed negatives: a column's log_q is the log of its "
            f"exact inclusion probability 1 - (1 - Q)^M (<= 1), where draw='unique' reports S Q when no draw repeats "
            f"and draw='with_replacement' S Q; received draw={sampler.draw!r}")
    V.check_mixed_negatives_shapes(tuple(candidates.shape), tuple(candidate_ids.shape), tuple(in_batch_log_q.shape))
    V.check_integer_dtype("candidate_ids", _is_int(candidate_ids), str(candidate_ids.dtype))
    num_negatives = V.check_positive_int("num_negatives", num_negatives)
    if candidate_ids.numel():  # the sampler would check them too, naming its own argument
        lo, hi = (int(v) for v in torch.aminmax(candidate_ids))
        if lo < 0 or hi >= sampler.num_classes:
            raise SampledSoftmaxError(f"`candidate_ids` must be in [0, {sampler.num_classes - 1}] (the sampler's "
                                      f"classes); received {lo if lo < 0 else hi}")
    cand, _, count = sampler(candidate_ids.reshape(-1, 1).to(torch.int64), num_negatives, generator=generator)
    return _mixed(candidates, candidate_ids, in_batch_log_q, cand, count, encode)


def _mixed_given(candidates, candidate_ids, in_batch_log_q, sampled_values, encode) -> MixedNegatives:
    """:func:`mixed_negatives` with the corpus candidates given (as TensorFlow's and JAX's)."""
    candidates, candidate_ids = _tensor("candidates", candidates), _tensor("candidate_ids", candidate_ids)
    in_batch_log_q = _tensor("in_batch_log_q", in_batch_log_q)
    cand, _, count = V.check_sampled_values_triple(sampled_values)
    cand, count = _tensor("sampled_values[0]", cand), _tensor("sampled_values[2]", count)
    V.check_mixed_negatives_shapes(tuple(candidates.shape), tuple(candidate_ids.shape), tuple(in_batch_log_q.shape),
                                   tuple(cand.shape), tuple(count.shape))
    V.check_integer_dtype("sampled_values[0]", _is_int(cand), str(cand.dtype))
    finite = count[~torch.isinf(count)]
    V.check_mixed_negatives_counts(float(finite.max()) if finite.numel() else None)
    return _mixed(candidates, candidate_ids, in_batch_log_q, cand, count, encode)


def _mixed(candidates, candidate_ids, in_batch_log_q, cand, count, encode) -> MixedNegatives:
    """The batch's columns, then the ``M`` corpus candidates ``cand`` embedded by ``encode``, each
    with its own source's log probability; the draw's repeats (an expected count of ``inf``) are
    padding slots, masked in every row (no host sync to find them)."""
    b, d = candidates.shape
    m = cand.shape[0]
    cand, count = cand.to(candidates.device), count.to(candidates.device, in_batch_log_q.dtype)
    padding = torch.isinf(count)
    extra = encode(cand)
    V.check_encoded_shape(list(extra.shape) if isinstance(extra, torch.Tensor) else type(extra).__name__, m, d)
    log_e = torch.where(padding, torch.ones_like(count), count).log()
    score_mask = torch.ones((b, b + m), dtype=torch.bool, device=candidates.device)
    score_mask[:, b:] = ~padding[None, :]
    return MixedNegatives(torch.cat([candidates, extra.to(candidates.dtype)]),
                          torch.cat([candidate_ids, cand.to(candidate_ids.dtype)]),
                          torch.cat([in_batch_log_q, log_e]), score_mask)


# The name of wave 2 (0.x): the same function.
in_batch_keep = in_batch_columns
