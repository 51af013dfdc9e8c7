"""Vocabulary-parallel sampled and exact softmax losses: the class table sharded over the ranks
(the algorithm and its traffic: :mod:`sampled_softmax.torch.distributed`; the output layer:
:mod:`.layer`)."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import torch
import torch.distributed as dist

from ... import SampledSoftmaxError
from ... import _validation as V
from .._autograd import _check_once_differentiable, corrected_logits_backward, corrected_logits_forward, softmax_head
from .._columns import candidate_columns
from .._prepare import (
    LossCall, _autocast_on, _check_label_values, _check_sampled_values, _check_tensor, _compute_dtype, _true_count_rows,
)
from .._rows import _scatter_rows, _Spec
from .._routes import _finish, _inputs, _sampler_for, route
from ..samplers import CandidateSampler, check_generator, check_ignore_index
from ..table_optim import TableOptimizer, check_table_step
from ._group import _agree, _check_layout, _checksum, _group, shard_range
from .data_parallel import DistributedLearnedUnigramSampler


class _VocabParallelSoftmax(torch.autograd.Function):
    """The sampled softmax head over columns spread across the ranks, as Megatron's exact
    vocabulary-parallel cross-entropy does over all classes.

    Each rank computes the corrected logits of the columns it owns (its candidates, ``S / P``
    on average, and the labels in its shard): ``O(N S D / P)`` work. Three all-reduces of
    ``O(N T)`` numbers give every rank the labels' logits, the number and sum of the kept
    candidates' logits (label smoothing), their max and their sum of exponentials, hence the
    log-sum-exp of every row; backward, ``d loss / d o`` of a rank's own columns follows from
    those, and the input gradient is one all-reduce of ``[N, D]``.

    forward(h [N, D], ids [N*T + S] global, log_q [N*T + S], valid [N, T] or None,
            removed [N, S] or None, start, rows, spec, group, bias_shard, weight_shard)
    -> (loss [N], log p of the labels [N], without gradient)
    """

    @staticmethod
    def forward(ctx, h, ids, log_q, valid, removed, start, rows, spec: _Spec, group, bias_shard, weight_shard):
        n, t = h.shape[0], spec.num_true
        nt = n * t
        local = ids - start
        owned = (local >= 0) & (local < rows)
        owned_true = owned[:nt].view(n, t)
        mine = owned[nt:].nonzero().squeeze(1)  # this rank's candidate columns (one read-back)
        sub = torch.cat([torch.where(owned[:nt], local[:nt], 0), local[nt:].index_select(0, mine)])
        sub_log_q = torch.cat([log_q[:nt], log_q[nt:].index_select(0, mine)])
        removed_sub = None if removed is None else removed.index_select(1, mine)
        own_spec = _Spec(t, (), "div", spec.label_smoothing, spec.sparse, spec.table_step)
        logits, hc, gathered = corrected_logits_forward(h, sub, sub_log_q, None, removed_sub, own_spec, bias_shard,
                                                        (weight_shard,))
        cdt = logits.dtype
        cand = logits[:, t:]  # removed columns at -inf
        kept_cand = torch.isfinite(cand)
        # 1. The labels' logits (from their owners), the kept candidates' count and logit sum.
        packed = torch.cat([torch.where(owned_true, logits[:, :t], 0.0), kept_cand.sum(1, keepdim=True).to(cdt),
                            torch.where(kept_cand, cand, 0.0).sum(1, keepdim=True)], 1)
        dist.all_reduce(packed, group=group)
        true_z, kept_count, kept_sum = packed[:, :t], packed[:, t], packed[:, t + 1]
        # 2. and 3. The candidates' max and sum of exponentials below it.
        cand_max = torch.cat([cand, cand.new_full((n, 1), -math.inf)], 1).amax(1)
        dist.all_reduce(cand_max, op=dist.ReduceOp.MAX, group=group)
        shift_c = torch.where(torch.isfinite(cand_max), cand_max, 0.0)
        cand_sum = torch.exp(cand - shift_c[:, None]).sum(1)
        dist.all_reduce(cand_sum, group=group)
        kt = torch.ones_like(owned_true) if valid is None else valid
        zt = true_z.masked_fill(~kt, -math.inf)
        top = torch.maximum(cand_max, zt.amax(1))
        shift = torch.where(torch.isfinite(top), top, 0.0)
        lse = shift + torch.log(cand_sum * torch.exp(shift_c - shift) + torch.exp(zt - shift[:, None]).sum(1))
        n_true = kt.sum(1).to(cdt)
        live = n_true > 0
        n_kept = (n_true + kept_count).clamp(min=1.0)
        eps = spec.label_smoothing
        true_sum = torch.where(kt, true_z, 0.0).sum(1)
        loss = lse - (1.0 - eps) * true_sum / n_true.clamp(min=1.0)
        if eps:
            loss = loss - eps * (true_sum + kept_sum) / n_kept
        loss = torch.where(live, loss, 0.0)
        # The mean log-probability of the row's kept labels (the output of the module; no gradient).
        logp = torch.where(live, true_sum / n_true.clamp(min=1.0) - lse, 0.0)
        ctx.mark_non_differentiable(logp)
        ctx.group, ctx.spec = group, own_spec
        ctx.dtypes = (h.dtype, weight_shard.dtype, None if bias_shard is None else bias_shard.dtype)
        ctx.shapes = (tuple(weight_shard.shape), None if bias_shard is None else tuple(bias_shard.shape))
        ctx.save_for_backward(hc, gathered, sub, owned_true, kt, cand, zt, lse, n_true, n_kept, live)
        return loss, logp

    @staticmethod
    def backward(ctx, g_loss, _g_logp):
        _check_once_differentiable()
        hc, gathered, sub, owned_true, kt, cand, zt, lse, n_true, n_kept, live = ctx.saved_tensors
        spec = ctx.spec
        t, eps = spec.num_true, spec.label_smoothing
        g = torch.where(live, g_loss.to(lse.dtype), 0.0)[:, None]
        # d loss / d o = g (softmax - target): target (1 - eps) / T_i + eps / K_i on a kept label,
        # eps / K_i on a kept candidate (removed columns: softmax 0, target 0).
        d_cand = torch.exp(cand - lse[:, None])
        if eps:
            d_cand = d_cand - torch.isfinite(cand) * (eps / n_kept)[:, None]
        d_cand = d_cand * g
        target_true = kt * ((1.0 - eps) / n_true.clamp(min=1.0) + (eps / n_kept if eps else 0.0))[:, None]
        d_true = ((torch.exp(zt - lse[:, None]) - target_true) * g).masked_fill(~owned_true, 0.0)
        need_h, need_b, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[9], ctx.needs_input_grad[10]
        step = spec.table_step  # a fused table optimizer: this rank's rows' gradient goes to it
        if step is not None:
            need_w, need_b = True, ctx.shapes[1] is not None
        d_h, d_rows, d_b_rows = corrected_logits_backward(torch.cat([d_true, d_cand], 1), hc, gathered, t, need_h,
                                                        need_w, need_b)
        if d_h is not None:
            dist.all_reduce(d_h, group=ctx.group)  # each rank holds the part of its own columns
            d_h = d_h.to(ctx.dtypes[0])
        # The rows of ignored labels and of labels owned elsewhere are not this rank's to touch.
        keep = torch.cat([(owned_true & kt).reshape(-1), owned_true.new_ones(cand.shape[1])])
        if step is not None:
            step(sub, d_rows, d_b_rows, keep)
            return d_h, None, None, None, None, None, None, None, None, None, None
        d_w = d_b = None
        if d_rows is not None:
            d_w = _scatter_rows(ctx.shapes[0], sub, d_rows.to(ctx.dtypes[1]), spec.sparse, keep)
        if d_b_rows is not None:
            d_b = _scatter_rows(ctx.shapes[1], sub, d_b_rows.to(ctx.dtypes[2]), spec.sparse, keep)
        return d_h, None, None, None, None, None, None, None, None, d_b, d_w


def _without_autocast(loss_fn):
    """``loss_fn`` with autocast off, as ``sampled_softmax_loss`` under autocast: computed and
    returned in float32 or wider, with one dtype in backward."""

    @functools.wraps(loss_fn)
    def wrapper(weight_shard, bias_shard, labels, inputs, *args, **kwargs):
        if isinstance(inputs, torch.Tensor) and _autocast_on(inputs.device.type):
            with torch.autocast(inputs.device.type, enabled=False):
                return loss_fn(weight_shard, bias_shard, labels, inputs, *args, **kwargs)
        return loss_fn(weight_shard, bias_shard, labels, inputs, *args, **kwargs)

    return wrapper


def _broadcast_draw(draw, group, s, n, t, device):
    """Rank 0's candidates and expected counts on every rank: one float64 broadcast of
    ``1 + 2 S + N T`` numbers, the first saying whether rank 0's draw succeeded (every rank
    draws, for its sampler's state, but only rank 0's draw is used or can fail the call)."""
    rank = dist.get_rank(group)
    failure = None
    try:
        cand, true_count, samp_count = draw()
        packed = torch.cat([torch.zeros(1, dtype=torch.float64, device=device), cand.to(device, torch.float64),
                            samp_count.to(device, torch.float64).reshape(-1),
                            true_count.to(device, torch.float64).reshape(-1)])
    except Exception as e:  # noqa: BLE001 - rank 0's is reported on every rank
        failure = e
        packed = torch.zeros(1 + 2 * s + n * t, dtype=torch.float64, device=device)
        packed[0] = 1.0
    dist.broadcast(packed, src=dist.get_global_rank(group, 0), group=group)
    if packed[0].item():
        if rank == 0:
            raise failure
        raise SampledSoftmaxError("rank 0 of the group could not draw the candidates (its error says why), so no "
                                  "rank can go on")
    return (packed[1:1 + s].to(torch.int64), packed[1 + 2 * s:].view(n, t).to(torch.float32),
            packed[1 + s:1 + 2 * s].to(torch.float32))


def vocab_parallel_sampled_softmax_loss(
    weight_shard: torch.Tensor, bias_shard: torch.Tensor | None, labels: torch.Tensor, inputs: torch.Tensor,
    num_sampled: int, num_classes: int, *, group=None, num_true: int = 1, sampled_values: Sequence | None = None,
    remove_accidental_hits: bool = True, sampler: str | CandidateSampler = "log_uniform", reduction: str = "none",
    ignore_index: int | None = None, label_smoothing: float = 0.0, subtract_log_q: bool = True,
    generator: torch.Generator | None = None, sparse: bool = False, return_log_prob: bool = False,
    table_optimizer: TableOptimizer | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r""":func:`sampled_softmax.torch.sampled_softmax_loss` with the class table sharded over the
    ranks of ``group`` (see the module's docstring for the algorithm and its traffic).

    Equal, loss and gradients, to ``sampled_softmax_loss`` on the concatenated table with the
    same candidates. Call it on every rank of ``group`` with the same ``labels`` and
    ``inputs``; rank ``r`` passes shard ``r`` (:func:`shard_range`).

    Args:
        weight_shard: ``[V_r, D]``, this rank's rows of the ``[V, D]`` table.
        bias_shard: ``[V_r]`` or None (on every rank).
        labels: integer ``[...]`` or ``[..., T]``, the same on every rank.
        inputs: ``[..., D]``, the same on every rank (the gradient each rank gets is the full one).
        num_sampled, num_classes, num_true, remove_accidental_hits, ignore_index,
        label_smoothing, subtract_log_q, sparse: as in ``sampled_softmax_loss``.
        group: the process group the table is sharded over (default: the world).
        sampled_values: ``(candidates [S], true_expected_count, sampled_expected_count)``,
            identical on every rank; else rank 0's draw by ``sampler`` is broadcast.
        sampler: a name or a sampler module, run on every rank (see the module's docstring).
        reduction: ``"none"`` (default, as ``sampled_softmax_loss``), ``"mean"`` over the rows
            with a kept label, or ``"sum"``.
        generator: for the sampler.
        return_log_prob: also return the sampled estimate of each row's mean ``log p`` of its
            kept labels ``[...]`` (without gradient), as ``sampled_softmax_loss`` does.
        table_optimizer: a fused :class:`~sampled_softmax.torch.RowSGD`, ``RowAdagrad`` or
            ``RowAdam`` for this rank's shard (each rank its own, holding its shard's state), as
            for ``sampled_softmax_loss``: the shard's touched rows are updated in backward.
    """
    return route(LossCall(
        softmax_head, weight_shard, bias_shard, labels, inputs, num_sampled, num_classes, num_true=num_true,
        sampled_values=sampled_values, remove_accidental_hits=remove_accidental_hits, sampler=sampler,
        reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing, generator=generator,
        subtract_log_q=subtract_log_q, sparse=sparse, return_log_prob=return_log_prob, group=_group(group),
        table_optimizer=table_optimizer))


def sampled_route(call: LossCall):
    """The vocabulary-parallel route of the router (:func:`.._routes.route`): ``call.weights`` is
    this rank's shard of the table sharded over ``call.group``."""
    group, num_sampled, num_classes, generator = call.group, call.num_sampled, call.num_classes, call.generator
    sampler, ignore_index = call.sampler, call.ignore_index
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    device = call.inputs.device if isinstance(call.inputs, torch.Tensor) else torch.device("cpu")
    error, fields, prepared, given, sampler_module = None, dict.fromkeys(_AGREED, 0), None, None, None
    try:
        # Every check that could fail on one rank only runs before the first collective.
        prepared = _prepare_shard(call)
        y, valid = prepared.tensors[2], prepared.tensors[5]
        if call.sampled_values is None:
            if isinstance(sampler, DistributedLearnedUnigramSampler):
                raise SampledSoftmaxError(
                    "`sampler` must not be a DistributedLearnedUnigramSampler here: every rank sees the same "
                    "labels, so it would count them once per rank; use LearnedUnigramSampler (its counts stay "
                    "equal on every rank)")
            sampler_module = _sampler_for(sampler, num_classes)
        else:
            given = _check_sampled_values(call.sampled_values, num_sampled, num_classes, y, valid,
                                          prepared.tensors[3].device)
        if call.table_optimizer is not None:
            check_table_step(call.table_optimizer, prepared.tensors[0], prepared.tensors[1], call.sparse)
        # Given or drawn decides which collectives follow: the ranks must agree on it.
        fields = dict(prepared.fields, **{_LOSS_FIELD: "sampled",
                                          "table_optimizer": None if call.table_optimizer is None else
                                          type(call.table_optimizer).__name__,
                                          "remove_accidental_hits": bool(call.remove_accidental_hits),
                                          "subtract_log_q": bool(call.subtract_log_q),
                                          "sampled_values given": int(given is not None),
                                          "sampled_values (a checksum)": 0 if given is None else
                                          _checksum(given[0]) ^ _checksum(given[2])})
    except Exception as e:  # noqa: BLE001 - every rank must hear of it, whatever it is
        error = e
    table = _agree(group, device, {k: fields[k] for k in _AGREED}, error, per_rank=("shard rows",))
    _check_layout([r[-1] for r in table], prepared.num_classes, world)
    shard, bias, y, h, lead, valid, label_smoothing = prepared.tensors
    n, t = y.shape
    if given is None:
        draw = sampler_module._draw_values if type(sampler_module).forward is CandidateSampler.forward else (
            lambda *a: sampler_module(a[0], a[1], generator=a[2], ignore_index=a[3]))
        cand, true_count, samp_count = _broadcast_draw(
            lambda: draw(y, num_sampled, generator, None if valid is None else ignore_index), group, num_sampled, n,
            t, h.device)
        padded = bool(torch.isinf(samp_count).any())
    else:
        cand, true_count, samp_count, padded = given
        true_count = _true_count_rows(true_count, n, t)
    y_safe = y if valid is None else torch.where(valid, y, 0)
    cdt = _compute_dtype(h.dtype)
    ids, log_q, removed = candidate_columns(y_safe, valid, cand.to(h.device), true_count, samp_count, cdt,
                                           remove_accidental_hits=call.remove_accidental_hits,
                                           subtract_log_q=call.subtract_log_q, padded=padded)
    ids, log_q = ids.to(h.device), log_q.to(h.device)
    removed = None if removed is None else removed.to(h.device)
    start, rows = shard_range(num_classes, rank, world)
    table_step = None if call.table_optimizer is None else call.table_optimizer.step_for(shard, bias)
    h = _inputs(h, table_step)
    spec = _Spec(t, (), "div", label_smoothing, bool(call.sparse), table_step)
    loss, logp = _VocabParallelSoftmax.apply(h, ids, log_q, valid, removed, start, rows, spec, group, bias, shard)
    return _finish(loss, logp, valid, call.reduction, lead, call.return_log_prob)


_LOSS_FIELD = "loss (sampled in training mode, exact in eval mode)"
# What the ranks compare before a loss's first collective, in this order (_prepare_shard's fields):
# whatever decides the collectives that follow (their number, shapes and dtypes) or the result.
_AGREED = (_LOSS_FIELD, "inputs dtype", "weight_shard dtype", "bias_shard dtype", "device type", "num_sampled",
           "num_classes", "num_true", "dim", "rows of the batch", "labels (a checksum)", "inputs (a checksum)",
           "reduction", "ignore_index", "label_smoothing", "remove_accidental_hits", "subtract_log_q",
           "sampled_values given", "sampled_values (a checksum)", "table_optimizer", "shard rows")


class _Prepared(NamedTuple):
    fields: dict
    num_classes: int
    tensors: tuple


def _prepare_shard(call: LossCall) -> _Prepared:
    shard, bias, labels, inputs = call.weights, call.biases, call.labels, call.inputs
    ignore_index, reduction = call.ignore_index, call.reduction
    _check_tensor("weight_shard", shard, floating=True)
    _check_tensor("inputs", inputs, floating=True)
    _check_tensor("labels", labels, floating=False)
    if bias is not None:
        _check_tensor("bias_shard", bias, floating=True)
    check_generator(call.generator)
    check_ignore_index(ignore_index)
    V.check_choice("reduction", reduction, V.REDUCTIONS)
    label_smoothing = V.check_label_smoothing(call.label_smoothing)
    num_classes = V.check_positive_int("num_classes", call.num_classes)
    num_sampled = V.check_positive_int("num_sampled", call.num_sampled)
    if shard.dim() != 2:
        raise SampledSoftmaxError(f"`weight_shard` must have shape [rows, dim]; received shape {list(shard.shape)}")
    dim = shard.shape[1]
    if inputs.dim() == 0 or inputs.shape[-1] != dim:
        raise SampledSoftmaxError(f"`inputs` last dimension must equal the weight shard's dim {dim}; received shape "
                                  f"{list(inputs.shape)}")
    if bias is not None and tuple(bias.shape) != (shard.shape[0],):
        raise SampledSoftmaxError(f"`bias_shard` must have shape [{shard.shape[0]}] (the weight shard's rows); "
                                  f"received shape {list(bias.shape)}")
    lead, num_true = V.resolve_label_shape(tuple(labels.shape), tuple(inputs.shape), call.num_true)
    n = math.prod(lead)
    y = labels.reshape(n, num_true).long()
    h = inputs.reshape(n, dim)
    valid = _check_label_values(y, num_classes, ignore_index)
    fields = {"num_sampled": num_sampled, "num_classes": num_classes, "num_true": num_true, "dim": dim,
              "rows of the batch": n, "labels (a checksum)": _checksum(y), "inputs (a checksum)": _checksum(h),
              "inputs dtype": inputs.dtype, "weight_shard dtype": shard.dtype,
              "bias_shard dtype": None if bias is None else bias.dtype, "device type": inputs.device.type,
              "reduction": reduction, "ignore_index": ignore_index, "label_smoothing": label_smoothing,
              "sampled_values given": 0, "sampled_values (a checksum)": 0, "table_optimizer": None,
              "shard rows": shard.shape[0]}
    return _Prepared(fields, num_classes, (shard, bias, y, h, lead, valid, label_smoothing))


# ---------------------------------------------------------------------------------------------
# The exact loss, vocabulary-parallel, in chunks


class _FullLoss(torch.autograd.Function):
    """Exact softmax cross-entropy over the sharded table, ``O(N x chunk)`` memory.

    forward(h [N, D], y_safe [N, T], target [N, T] weights, eps, start, chunk, group, bias, shard,
            label_weights [N, T]) -> (loss [N], mean log p of the kept labels [N], without gradient);
    the logits of a chunk are recomputed in backward.
    """

    @staticmethod
    def forward(ctx, h, y_safe, target, eps, num_classes, start, chunk, group, bias, shard, label_weights):
        cdt = _compute_dtype(h.dtype)
        hc = h.to(cdt)
        n, rows = h.shape[0], shard.shape[0]
        running_max = torch.full((n,), -math.inf, dtype=cdt, device=h.device)
        sum_exp = torch.zeros(n, dtype=cdt, device=h.device)
        sum_logits = torch.zeros(n, dtype=cdt, device=h.device)
        for lo in range(0, rows, chunk):
            z = _chunk_logits(hc, shard, bias, lo, min(lo + chunk, rows), cdt)
            new_max = torch.maximum(running_max, z.max(1).values)
            sum_exp = sum_exp * torch.exp(running_max - new_max) + torch.exp(z - new_max[:, None]).sum(1)
            running_max = new_max
            sum_logits += z.sum(1)
        global_max = running_max.clone()
        dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=group)
        local = y_safe - start
        owned = (local >= 0) & (local < rows)
        safe = torch.where(owned, local, 0)
        true_logits = torch.einsum("nd,ntd->nt", hc, shard.index_select(0, safe.reshape(-1))
                                   .view(*safe.shape, shard.shape[1]).to(cdt))
        if bias is not None:
            true_logits = true_logits + bias.index_select(0, safe.reshape(-1)).view(safe.shape).to(cdt)
        packed = torch.cat([(sum_exp * torch.exp(running_max - global_max))[:, None], sum_logits[:, None],
                            torch.where(owned, true_logits, 0.0)], 1)
        dist.all_reduce(packed, group=group)
        lse = global_max + torch.log(packed[:, 0])
        # target sums to 1 - eps over the kept labels; eps spreads over all V classes.
        live = (target.sum(1) > 0).to(cdt)
        loss = (lse * (target.sum(1) + eps * live) - (target * packed[:, 2:]).sum(1)
                - eps * live * packed[:, 1] / num_classes)
        # The mean log-probability of the kept labels (label_weights: 1 / T_i on each).
        logp = torch.where(label_weights.sum(1) > 0, (label_weights * packed[:, 2:]).sum(1) - lse, 0.0)
        ctx.mark_non_differentiable(logp)
        ctx.save_for_backward(hc, shard, bias, lse, safe, owned, target)
        ctx.meta = (eps, num_classes, chunk, group, h.dtype, shard.dtype)
        return loss, logp

    @staticmethod
    def backward(ctx, g_loss, _g_logp):
        _check_once_differentiable()
        hc, shard, bias, lse, safe, owned, target = ctx.saved_tensors
        eps, num_classes, chunk, group, h_dtype, w_dtype = ctx.meta
        cdt = hc.dtype
        g = g_loss.to(cdt)
        live = (target.sum(1) > 0).to(cdt)
        mass = (target.sum(1) + eps * live) * g  # d loss / d lse
        d_h = torch.zeros_like(hc)
        d_w = torch.zeros(shard.shape, dtype=cdt, device=hc.device) if ctx.needs_input_grad[9] else None
        d_b = torch.zeros(shard.shape[0], dtype=cdt, device=hc.device) if ctx.needs_input_grad[8] else None
        rows = shard.shape[0]
        for lo in range(0, rows, chunk):
            hi = min(lo + chunk, rows)
            z = _chunk_logits(hc, shard, bias, lo, hi, cdt)
            d_z = torch.exp(z - lse[:, None]) * mass[:, None] - (eps / num_classes) * (live * g)[:, None]
            w = shard[lo:hi].to(cdt)
            d_h += d_z @ w
            if d_w is not None:
                d_w[lo:hi] = d_z.t() @ hc
            if d_b is not None:
                d_b[lo:hi] = d_z.sum(0)
        # The targets' columns: -target on the owned ones.
        d_true = torch.where(owned, -target * g[:, None], 0.0)
        w_true = shard.index_select(0, safe.reshape(-1)).view(*safe.shape, shard.shape[1]).to(cdt)
        d_h += torch.einsum("nt,ntd->nd", d_true, w_true)
        if d_w is not None:
            d_w.index_add_(0, safe.reshape(-1), (d_true[:, :, None] * hc[:, None, :]).reshape(-1, hc.shape[1]))
        if d_b is not None:
            d_b.index_add_(0, safe.reshape(-1), d_true.reshape(-1))
        dist.all_reduce(d_h, group=group)
        return (d_h.to(h_dtype), None, None, None, None, None, None, None,
                None if d_b is None else d_b.to(bias.dtype), None if d_w is None else d_w.to(w_dtype), None)


def _chunk_logits(hc, shard, bias, lo, hi, cdt):
    z = hc @ shard[lo:hi].to(cdt).t()
    return z if bias is None else z + bias[lo:hi].to(cdt)


@_without_autocast
def vocab_parallel_full_softmax_loss(
    weight_shard: torch.Tensor, bias_shard: torch.Tensor | None, labels: torch.Tensor, inputs: torch.Tensor,
    num_classes: int, *, group=None, num_true: int = 1, reduction: str = "none", ignore_index: int | None = None,
    label_smoothing: float = 0.0, chunk_size: int = 8192, return_log_prob: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The exact :func:`sampled_softmax.torch.full_softmax_loss` over the sharded table, for
    evaluation (and differentiable): each rank runs over its shard in chunks of ``chunk_size``
    rows (``O(N chunk_size)`` memory, the chunk's logits recomputed in backward) keeping a
    running max and sum of exponentials; an all-reduce (max) and one (sum) of ``O(N T)`` numbers
    give the log-sum-exp and the labels' logits. Same arguments as
    :func:`vocab_parallel_sampled_softmax_loss`."""
    group = _group(group)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    device = inputs.device if isinstance(inputs, torch.Tensor) else torch.device("cpu")
    error, prepared = None, None
    try:
        chunk_size = V.check_positive_int("chunk_size", chunk_size)
        prepared = _prepare_shard(LossCall(None, weight_shard, bias_shard, labels, inputs, 1, num_classes,
                                           num_true=num_true, reduction=reduction, ignore_index=ignore_index,
                                           label_smoothing=label_smoothing))
        fields = dict(prepared.fields, **{_LOSS_FIELD: "exact", "remove_accidental_hits": False,
                                          "subtract_log_q": False})
    except Exception as e:  # noqa: BLE001 - every rank must hear of it, whatever it is
        error, fields = e, dict.fromkeys(_AGREED, 0)
    table = _agree(group, device, {k: fields[k] for k in _AGREED}, error, per_rank=("shard rows",))
    _check_layout([r[-1] for r in table], prepared.num_classes, world)
    shard, bias, y, h, lead, valid, eps = prepared.tensors
    n, t = y.shape
    cdt = _compute_dtype(h.dtype)
    kept = torch.ones_like(y, dtype=torch.bool) if valid is None else valid
    n_true = kept.sum(1, keepdim=True).clamp(min=1)
    label_weights = kept.to(cdt) / n_true.to(cdt)
    target = label_weights * (1.0 - eps)
    y_safe = y if valid is None else torch.where(valid, y, 0)
    start, _ = shard_range(num_classes, rank, world)
    loss, logp = _FullLoss.apply(h, y_safe, target, eps, num_classes, start, chunk_size, group, bias, shard,
                                 label_weights)
    return _finish(loss, logp, valid, reduction, lead, return_log_prob)


# ---------------------------------------------------------------------------------------------
# The module
