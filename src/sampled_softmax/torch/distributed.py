r"""Past one process with ``torch.distributed`` (gloo on CPU, NCCL on GPU, started by ``torchrun``).

**Vocabulary-parallel sampled softmax** (:func:`vocab_parallel_sampled_softmax_loss`,
:class:`VocabParallelSampledSoftmax`). Rank ``r`` of the ``P`` ranks of ``group`` holds shard
``r`` of the class table in TensorFlow's ``"div"`` layout (:func:`shard_range`: the first
``V mod P`` shards one row longer), and only that shard's optimizer state. The hidden states
and labels are the same on every rank (as in Megatron's tensor parallelism; gather a
data-parallel batch first with ``all_gather_rows(h, sum_gradients=False)``). One call:

1. *Agreement* (one all-gather of 21 integers per rank): the loss (sampled or exact), the dtypes
   of inputs, shard and bias and the device type, ``num_sampled``, ``num_classes``, the shapes,
   checksums of the labels and of the inputs, ``reduction``, ``ignore_index``,
   ``label_smoothing``, ``remove_accidental_hits``, ``subtract_log_q``, whether and which
   ``sampled_values`` are given, and each rank's shard size; an argument a rank rejects, or one
   the ranks disagree on, is a :class:`~sampled_softmax.SampledSoftmaxError` raised on *every*
   rank (never a hang, nor gloo's abort, in a later collective). Only ``sparse``, ``generator``,
   ``sampler`` (rank 0's draw is used) and ``chunk_size`` may differ between ranks.
2. *Candidates*: every rank runs the sampler (so a learned sampler's counts stay equal on every
   rank: they all see the same labels) and rank 0's draw is broadcast, ``O(S + N T)`` numbers,
   so that all ranks use the same candidates whatever their generators. ``sampled_values`` given
   by the caller are used as they are and must agree (their checksum is compared).
3. *Corrected logits and the head*: each rank computes the corrected logits
   ``h . W_k + b_k - log E(k)`` of the columns whose class it owns (its candidates, ``S / P``
   on average, and the labels in its shard): ``O(N S D / P)`` work. As Megatron's exact
   vocabulary-parallel cross-entropy does over all classes, three all-reduces of ``O(N T)``
   numbers give every rank the labels' logits, the count and sum of the kept candidates'
   logits (for label smoothing), their max and their sum of exponentials, hence each row's
   log-sum-exp and loss: the loss of :func:`sampled_softmax_loss` (accidental hits and padding
   removed, ``ignore_index``, label smoothing).
4. *Backward*: ``d loss / d o`` of a rank's own columns follows from the log-sum-exp; each rank
   scatters them into its shard (row-sparse with ``sparse=True``) and the input gradient is one
   all-reduce (sum) of ``[N, D]``.

Bytes per rank and call (:func:`vocab_parallel_bytes`): 168 for the agreement,
``8 (1 + 2 S + N T)`` for rank 0's draw, ``4 N (T + 4)`` in the head's all-reduces and ``4 N D`` for
the input gradient (float32): never ``O(N V)``, never the table, and of Megatron's exact loss
(``4 N (3 + D)``, :func:`megatron_exact_bytes`) but for the draw.
:func:`vocab_parallel_full_softmax_loss` is the exact loss for evaluation (running
max and sum of exponentials over chunks of the local shard, then an all-reduce of ``O(N T)``).

**Data parallel with row-sparse tables**: ``DistributedDataParallel`` rejects the row-sparse
gradients of ``SampledSoftmax(sparse=True)`` ("Cannot access storage of SparseTensorImpl": it
expects sparse gradients only from ``nn.Embedding``). :func:`all_reduce_gradients` is its
replacement: after ``backward``, the average over ranks of every gradient, dense ones by
all-reduce, row-sparse ones by all-gathering their indices and values.
:func:`all_reduce_buffers` averages buffers that are sums (a learned sampler's counts).

**Negatives across ranks** for in-batch retrieval: :func:`gather_negatives` gathers every
rank's candidate embeddings (differentiably), ids and ``log_q``, the rank's own first, so that
``in_batch_softmax_loss(query, *gather_negatives(...))`` sees the global batch as negatives with
each query's positive still at its own column.
"""

from __future__ import annotations

import math
import zlib
from typing import NamedTuple, Sequence

import torch
import torch.distributed as dist

from .. import SampledSoftmaxError
from .. import _validation as V
from ._autograd import _check_once_differentiable, corrected_logits_backward, corrected_logits_forward
from ._columns import candidate_columns
from ._prepare import _autocast_on, _check_label_values, _check_sampled_values, _check_tensor, _compute_dtype, _true_count_rows
from ._rows import _scatter_rows, _Spec
from .functional import _finish, _sampler_for
from .samplers import CandidateSampler, LearnedUnigramSampler, check_generator, check_ignore_index
from .. import SampledValues

__all__ = [
    "shard_range", "vocab_parallel_sampled_softmax_loss", "vocab_parallel_full_softmax_loss",
    "VocabParallelSampledSoftmax", "all_gather_rows", "gather_negatives", "GatheredNegatives",
    "all_reduce_gradients", "all_reduce_buffers", "DistributedLearnedUnigramSampler", "CollectiveBytes",
    "vocab_parallel_bytes", "megatron_exact_bytes",
]


# ---------------------------------------------------------------------------------------------
# The group, and agreement between its ranks


def _group(group):
    if not dist.is_available() or not dist.is_initialized():
        raise SampledSoftmaxError("sampled_softmax.torch.distributed needs an initialised process group: call "
                                  "torch.distributed.init_process_group (torchrun sets its environment) first")
    return group if group is not None else dist.group.WORLD


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(first class id, rows)`` of shard ``rank`` of ``world_size`` in TensorFlow's ``"div"``
    layout: the first ``num_classes % world_size`` shards hold one row more."""
    num_classes = V.check_positive_int("num_classes", num_classes)
    world_size = V.check_positive_int("world_size", world_size)
    if not 0 <= rank < world_size:
        raise SampledSoftmaxError(f"`rank` must be in [0, {world_size - 1}]; received {rank}")
    if num_classes < world_size:
        raise SampledSoftmaxError(f"`num_classes` ({num_classes}) must be at least the world size ({world_size}): "
                                  f"every rank holds at least one class")
    base, extra = divmod(num_classes, world_size)
    return rank * base + min(rank, extra), base + (1 if rank < extra else 0)


def _checksum(x: torch.Tensor) -> int:
    """An order-sensitive integer checksum (int64 arithmetic wraps, identically on every rank)."""
    if x.numel() == 0:
        return 0
    flat = x.detach().reshape(-1)
    if flat.is_floating_point():
        flat = flat.to(torch.float64).contiguous().view(torch.int64)
    weights = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.int64) * 2654435761
    return int((flat.to(torch.int64) * weights).sum())


def _code(value) -> int:
    """An agreed field as one int64: integers as they are, anything else (a dtype, a float, None,
    a string) by a CRC of its ``repr``, which is the same on every rank for equal values."""
    if isinstance(value, (bool, int)) and -2**63 <= int(value) < 2**63:
        return int(value)
    return zlib.crc32(repr(value).encode())


def _agree(group, device, fields: dict, error: BaseException | None, *, per_rank: Sequence[str] = ()):
    """All-gather ``fields`` (integers, or values compared by :func:`_code`) and an error flag
    from every rank, in one collective. Raises on every rank if one rejected its arguments (its
    message is shared) or if a field outside ``per_rank`` differs between ranks (the values are
    then gathered, so the message shows them as the ranks gave them). Returns the gathered
    ``[P, len(fields)]`` table of codes as Python lists."""
    names = list(fields)
    row = torch.tensor([0 if error is None else 1] + [_code(fields[k]) for k in names], dtype=torch.int64,
                       device=device)
    world = dist.get_world_size(group)
    rows = [torch.empty_like(row) for _ in range(world)]
    dist.all_gather(rows, row, group=group)
    table = [r.tolist() for r in rows]
    failed = [p for p in range(world) if table[p][0]]
    if failed:
        messages = [None] * world
        dist.all_gather_object(messages, None if error is None else f"{type(error).__name__}: {error}", group=group)
        if error is not None:
            raise error
        p = failed[0]
        raise SampledSoftmaxError(f"rank {p} of the group rejected its arguments, so no rank can go on: {messages[p]}")
    differ = [j for j, name in enumerate(names, start=1)
              if name not in per_rank and len({table[p][j] for p in range(world)}) > 1]
    if differ:
        # Every rank sees the same table, so every rank takes this branch: the gather is safe.
        shown = [None] * world
        dist.all_gather_object(shown, [_shown(fields[names[j - 1]]) for j in differ], group=group)
        j = differ[0]
        values = [shown[p][0] for p in range(world)]
        raise SampledSoftmaxError(f"`{names[j - 1]}` must be the same on every rank of the group; received "
                                  f"{', '.join(values)} on ranks 0..{world - 1}")
    return [r[1:] for r in table]


def _shown(value) -> str:
    return str(value) if isinstance(value, (torch.dtype, str)) else repr(value)


# ---------------------------------------------------------------------------------------------
# Vocabulary-parallel sampled softmax


class _VocabParallelSoftmax(torch.autograd.Function):
    """The sampled softmax head over columns spread across the ranks, as Megatron's exact
    vocabulary-parallel cross-entropy does over all classes.

    Each rank computes the corrected logits of the columns it owns (its candidates, ``S / P``
    on average, and the labels in its shard): ``O(N S D / P)`` work. Three all-reduces of
    ``O(N T)`` numbers give every rank the labels' logits, the number and sum of the kept
    candidates' logits (label smoothing), their max and their sum of exponentials, hence the
    log-sum-exp of every row; backward, ``d loss / d o`` of a rank's own columns follows from
    those, and the input gradient is one all-reduce of ``[N, D]``.

    forward(h [N, D], ids [N*T + S] global, logq [N*T + S], keep_true [N, T] or None,
            removed [N, S] or None, start, rows, spec, group, bias_shard, weight_shard) -> loss [N]
    """

    @staticmethod
    def forward(ctx, h, ids, logq, keep_true, removed, start, rows, spec: _Spec, group, bias_shard, weight_shard):
        n, t = h.shape[0], spec.num_true
        nt = n * t
        local = ids - start
        owned = (local >= 0) & (local < rows)
        owned_true = owned[:nt].view(n, t)
        mine = owned[nt:].nonzero().squeeze(1)  # this rank's candidate columns (one read-back)
        sub = torch.cat([torch.where(owned[:nt], local[:nt], 0), local[nt:].index_select(0, mine)])
        sub_logq = torch.cat([logq[:nt], logq[nt:].index_select(0, mine)])
        removed_sub = None if removed is None else removed.index_select(1, mine)
        own_spec = _Spec(t, (), "div", spec.label_smoothing, spec.sparse)
        logits, hc, gathered = corrected_logits_forward(h, sub, sub_logq, None, removed_sub, own_spec, bias_shard,
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
        kt = torch.ones_like(owned_true) if keep_true is None else keep_true
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
        ctx.group, ctx.spec = group, own_spec
        ctx.dtypes = (h.dtype, weight_shard.dtype, None if bias_shard is None else bias_shard.dtype)
        ctx.shapes = (tuple(weight_shard.shape), None if bias_shard is None else tuple(bias_shard.shape))
        ctx.save_for_backward(hc, gathered, sub, owned_true, kt, cand, zt, lse, n_true, n_kept, live)
        return loss

    @staticmethod
    def backward(ctx, g_loss):
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
        d_h, d_rows, d_b_rows = corrected_logits_backward(torch.cat([d_true, d_cand], 1), hc, gathered, t, need_h,
                                                        need_w, need_b)
        if d_h is not None:
            dist.all_reduce(d_h, group=ctx.group)  # each rank holds the part of its own columns
            d_h = d_h.to(ctx.dtypes[0])
        # The rows of ignored labels and of labels owned elsewhere are not this rank's to touch.
        keep = torch.cat([(owned_true & kt).reshape(-1), owned_true.new_ones(cand.shape[1])])
        d_w = d_b = None
        if d_rows is not None:
            d_w = _scatter_rows(ctx.shapes[0], sub, d_rows.to(ctx.dtypes[1]), spec.sparse, keep)
        if d_b_rows is not None:
            d_b = _scatter_rows(ctx.shapes[1], sub, d_b_rows.to(ctx.dtypes[2]), spec.sparse, keep)
        return d_h, None, None, None, None, None, None, None, None, d_b, d_w


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
    remove_accidental_hits: bool = True, sampler: str | CandidateSampler = "log_uniform", reduction: str = "mean",
    ignore_index: int | None = None, label_smoothing: float = 0.0, subtract_log_q: bool = True,
    generator: torch.Generator | None = None, sparse: bool = False,
) -> torch.Tensor:
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
        reduction: ``"mean"`` (default) over the rows with a kept label, ``"sum"`` or ``"none"``.
        generator: for the sampler.
    """
    if isinstance(inputs, torch.Tensor) and _autocast_on(inputs.device.type):
        # As sampled_softmax_loss under autocast: computed and returned in float32 or wider.
        with torch.autocast(inputs.device.type, enabled=False):
            return vocab_parallel_sampled_softmax_loss(**locals())
    group = _group(group)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    device = inputs.device if isinstance(inputs, torch.Tensor) else torch.device("cpu")
    error, fields, prepared, given, sampler_module = None, dict.fromkeys(_AGREED, 0), None, None, None
    try:
        # Every check that could fail on one rank only runs before the first collective.
        prepared = _prepare_shard(weight_shard, bias_shard, labels, inputs, num_sampled, num_classes, num_true,
                                  ignore_index, label_smoothing, reduction, rank, world, generator)
        y, valid = prepared.tensors[2], prepared.tensors[5]
        if sampled_values is None:
            if isinstance(sampler, DistributedLearnedUnigramSampler):
                raise SampledSoftmaxError(
                    "`sampler` must not be a DistributedLearnedUnigramSampler here: every rank sees the same "
                    "labels, so it would count them once per rank; use LearnedUnigramSampler (its counts stay "
                    "equal on every rank)")
            sampler_module = _sampler_for(sampler, num_classes)
        else:
            given = _check_sampled_values(sampled_values, num_sampled, num_classes, y, valid,
                                          prepared.tensors[3].device)
        # Given or drawn decides which collectives follow: the ranks must agree on it.
        fields = dict(prepared.fields, **{_LOSS_FIELD: "sampled",
                                          "remove_accidental_hits": bool(remove_accidental_hits),
                                          "subtract_log_q": bool(subtract_log_q),
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
    ids, logq, removed = candidate_columns(y_safe, valid, cand.to(h.device), true_count, samp_count, cdt,
                                           remove_accidental_hits, subtract_log_q, padded)
    ids, logq = ids.to(h.device), logq.to(h.device)
    removed = None if removed is None else removed.to(h.device)
    start, rows = shard_range(num_classes, rank, world)
    spec = _Spec(t, (), "div", label_smoothing, bool(sparse))
    loss = _VocabParallelSoftmax.apply(h, ids, logq, valid, removed, start, rows, spec, group, bias, shard)
    return _finish(loss, loss, valid, reduction, lead, False)


_LOSS_FIELD = "loss (sampled in training mode, exact in eval mode)"
# What the ranks compare before a loss's first collective, in this order (_prepare_shard's fields):
# whatever decides the collectives that follow (their number, shapes and dtypes) or the result.
_AGREED = (_LOSS_FIELD, "inputs dtype", "weight_shard dtype", "bias_shard dtype", "device type", "num_sampled",
           "num_classes", "num_true", "dim", "rows of the batch", "labels (a checksum)", "inputs (a checksum)",
           "reduction", "ignore_index", "label_smoothing", "remove_accidental_hits", "subtract_log_q",
           "sampled_values given", "sampled_values (a checksum)", "shard rows")


class _Prepared(NamedTuple):
    fields: dict
    num_classes: int
    tensors: tuple


def _prepare_shard(shard, bias, labels, inputs, num_sampled, num_classes, num_true, ignore_index, label_smoothing,
                   reduction, rank, world, generator) -> _Prepared:
    _check_tensor("weight_shard", shard, floating=True)
    _check_tensor("inputs", inputs, floating=True)
    _check_tensor("labels", labels, floating=False)
    if bias is not None:
        _check_tensor("bias_shard", bias, floating=True)
    check_generator(generator)
    check_ignore_index(ignore_index)
    V.check_choice("reduction", reduction, V.REDUCTIONS)
    label_smoothing = V.check_label_smoothing(label_smoothing)
    num_classes = V.check_positive_int("num_classes", num_classes)
    num_sampled = V.check_positive_int("num_sampled", num_sampled)
    if shard.dim() != 2:
        raise SampledSoftmaxError(f"`weight_shard` must have shape [rows, dim]; received shape {list(shard.shape)}")
    dim = shard.shape[1]
    if inputs.dim() == 0 or inputs.shape[-1] != dim:
        raise SampledSoftmaxError(f"`inputs` last dimension must equal the weight shard's dim {dim}; received shape "
                                  f"{list(inputs.shape)}")
    if bias is not None and tuple(bias.shape) != (shard.shape[0],):
        raise SampledSoftmaxError(f"`bias_shard` must have shape [{shard.shape[0]}] (the weight shard's rows); "
                                  f"received shape {list(bias.shape)}")
    lead, num_true = V.resolve_label_shape(tuple(labels.shape), tuple(inputs.shape), num_true)
    n = math.prod(lead)
    y = labels.reshape(n, num_true).long()
    h = inputs.reshape(n, dim)
    valid = _check_label_values(y, num_classes, ignore_index)
    fields = {"num_sampled": num_sampled, "num_classes": num_classes, "num_true": num_true, "dim": dim,
              "rows of the batch": n, "labels (a checksum)": _checksum(y), "inputs (a checksum)": _checksum(h),
              "inputs dtype": inputs.dtype, "weight_shard dtype": shard.dtype,
              "bias_shard dtype": None if bias is None else bias.dtype, "device type": inputs.device.type,
              "reduction": reduction, "ignore_index": ignore_index, "label_smoothing": label_smoothing,
              "sampled_values given": 0, "sampled_values (a checksum)": 0, "shard rows": shard.shape[0]}
    return _Prepared(fields, num_classes, (shard, bias, y, h, lead, valid, label_smoothing))


def _check_layout(rows: list, num_classes: int, world: int) -> None:
    """Every rank's shard size against the ``"div"`` layout (checked on every rank alike)."""
    if num_classes < world:
        raise SampledSoftmaxError(f"`num_classes` ({num_classes}) must be at least the world size ({world}): every "
                                  f"rank holds at least one class")
    expected = [shard_range(num_classes, p, world)[1] for p in range(world)]
    if list(rows) != expected:
        raise SampledSoftmaxError(
            f"`weight_shard` rows must be {expected} on ranks 0..{world - 1} for num_classes={num_classes} (the 'div' "
            f"layout of sampled_softmax.torch.distributed.shard_range); received {list(rows)}")


# ---------------------------------------------------------------------------------------------
# The exact loss, vocabulary-parallel, in chunks


class _FullLoss(torch.autograd.Function):
    """Exact softmax cross-entropy over the sharded table, ``O(N x chunk)`` memory.

    forward(h [N, D], y_safe [N, T], target [N, T] weights, eps, start, chunk, group, bias, shard)
    -> loss [N]; the logits of a chunk are recomputed in backward.
    """

    @staticmethod
    def forward(ctx, h, y_safe, target, eps, num_classes, start, chunk, group, bias, shard):
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
        ctx.save_for_backward(hc, shard, bias, lse, safe, owned, target)
        ctx.meta = (eps, num_classes, chunk, group, h.dtype, shard.dtype)
        return loss

    @staticmethod
    def backward(ctx, g_loss):
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
                None if d_b is None else d_b.to(bias.dtype), None if d_w is None else d_w.to(w_dtype))


def _chunk_logits(hc, shard, bias, lo, hi, cdt):
    z = hc @ shard[lo:hi].to(cdt).t()
    return z if bias is None else z + bias[lo:hi].to(cdt)


def vocab_parallel_full_softmax_loss(
    weight_shard: torch.Tensor, bias_shard: torch.Tensor | None, labels: torch.Tensor, inputs: torch.Tensor,
    num_classes: int, *, group=None, num_true: int = 1, reduction: str = "mean", ignore_index: int | None = None,
    label_smoothing: float = 0.0, chunk_size: int = 8192,
) -> torch.Tensor:
    """The exact :func:`sampled_softmax.torch.full_softmax_loss` over the sharded table, for
    evaluation (and differentiable): each rank runs over its shard in chunks of ``chunk_size``
    rows (``O(N chunk_size)`` memory, the chunk's logits recomputed in backward) keeping a
    running max and sum of exponentials; an all-reduce (max) and one (sum) of ``O(N T)`` numbers
    give the log-sum-exp and the labels' logits. Same arguments as
    :func:`vocab_parallel_sampled_softmax_loss`."""
    if isinstance(inputs, torch.Tensor) and _autocast_on(inputs.device.type):
        # As sampled_softmax_loss under autocast: computed and returned in float32 or wider.
        with torch.autocast(inputs.device.type, enabled=False):
            return vocab_parallel_full_softmax_loss(**locals())
    group = _group(group)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    device = inputs.device if isinstance(inputs, torch.Tensor) else torch.device("cpu")
    error, prepared = None, None
    try:
        chunk_size = V.check_positive_int("chunk_size", chunk_size)
        prepared = _prepare_shard(weight_shard, bias_shard, labels, inputs, 1, num_classes, num_true, ignore_index,
                                  label_smoothing, reduction, rank, world, None)
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
    target = kept.to(cdt) * (1.0 - eps) / n_true.to(cdt)
    y_safe = y if valid is None else torch.where(valid, y, 0)
    start, _ = shard_range(num_classes, rank, world)
    loss = _FullLoss.apply(h, y_safe, target, eps, num_classes, start, chunk_size, group, bias, shard)
    return _finish(loss, loss, valid, reduction, lead, False)


# ---------------------------------------------------------------------------------------------
# The module


class VocabParallelSampledSoftmax(torch.nn.Module):
    r"""A sampled softmax output layer whose class table is sharded over the ranks of ``group``.

    Each rank holds ``weight [V_r, D]`` (and ``bias [V_r]``), rows
    ``shard_range(num_classes, rank, world)`` of the table, and only their optimizer state. In
    training mode, ``forward(inputs, labels)`` is
    :func:`vocab_parallel_sampled_softmax_loss`; in eval mode the exact
    :func:`vocab_parallel_full_softmax_loss`. Inputs and labels are the same on every rank.

    Args:
        in_features: ``D``. num_classes: ``V``. num_sampled: ``S``.
        group: process group (default: the world). bias: learn a bias. Default True.
        sampler: ``"learned_unigram"`` (default, as :class:`~sampled_softmax.torch.SampledSoftmax`:
            a :class:`~sampled_softmax.torch.LearnedUnigramSampler`, whose counts stay equal on
            every rank since every rank sees the same labels), ``"log_uniform"``, ``"uniform"``
            or a sampler module.
        sparse: row-sparse gradients of the shard (for ``SparseRowAdam``).
        num_true, remove_accidental_hits, label_smoothing, reduction: as in
            :func:`vocab_parallel_sampled_softmax_loss`.
        ignore_index: target value that contributes nothing. Default -100 (as
            :class:`~sampled_softmax.torch.SampledSoftmax` and ``F.cross_entropy``).
        chunk_size: rows per chunk of the exact loss.

    Shape:
        ``inputs [..., D]``, ``labels [...]`` (or ``[..., T]``) → a scalar (or ``[...]`` with
        ``reduction="none"``).
    """

    def __init__(self, in_features: int, num_classes: int, num_sampled: int, *, group=None, bias: bool = True,
                 sampler: str | CandidateSampler = "learned_unigram", sparse: bool = False, num_true: int = 1,
                 remove_accidental_hits: bool = True, ignore_index: int | None = -100, label_smoothing: float = 0.0,
                 reduction: str = "mean", chunk_size: int = 8192, device=None, dtype=None):
        super().__init__()
        self.group = _group(group)
        self.rank, self.world_size = dist.get_rank(self.group), dist.get_world_size(self.group)
        self.num_classes = V.check_positive_int("num_classes", num_classes)
        self.start, rows = shard_range(self.num_classes, self.rank, self.world_size)
        self.num_sampled, self.num_true = num_sampled, num_true
        # A module sampler is a submodule: its state (learned counts) is in state_dict.
        self.sampler = LearnedUnigramSampler(self.num_classes) if sampler == "learned_unigram" else sampler
        self.sparse, self.remove_accidental_hits = bool(sparse), remove_accidental_hits
        self.ignore_index, self.label_smoothing, self.reduction = ignore_index, label_smoothing, reduction
        self.chunk_size = chunk_size
        self.weight = torch.nn.Parameter(torch.empty(rows, in_features, device=device, dtype=dtype))
        self.bias = torch.nn.Parameter(torch.zeros(rows, device=device, dtype=dtype)) if bias else None
        torch.nn.init.normal_(self.weight, std=in_features ** -0.5)

    @torch.no_grad()
    def load_full_table(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Copy this rank's rows of a full ``[V, D]`` table (and ``[V]`` bias)."""
        end = self.start + self.weight.shape[0]
        self.weight.copy_(weight[self.start:end])
        if self.bias is not None and bias is not None:
            self.bias.copy_(bias[self.start:end])

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor, *, generator=None,
                sampled_values=None) -> torch.Tensor:
        common = dict(group=self.group, num_true=self.num_true, reduction=self.reduction,
                      ignore_index=self.ignore_index, label_smoothing=self.label_smoothing)
        if self.training:
            return vocab_parallel_sampled_softmax_loss(
                self.weight, self.bias, labels, inputs, self.num_sampled, self.num_classes,
                sampled_values=sampled_values, remove_accidental_hits=self.remove_accidental_hits,
                sampler=self.sampler, generator=generator, sparse=self.sparse, **common)
        return vocab_parallel_full_softmax_loss(self.weight, self.bias, labels, inputs, self.num_classes,
                                                chunk_size=self.chunk_size, **common)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, rows={self.start}..{self.start + self.weight.shape[0] - 1} "
                f"(rank {self.rank} of {self.world_size}), dim={self.weight.shape[1]}, num_sampled={self.num_sampled}")


# ---------------------------------------------------------------------------------------------
# Gathering across ranks


class _AllGatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, sum_gradients=True):
        world = dist.get_world_size(group)
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        ctx.group, ctx.rank, ctx.rows, ctx.sum_gradients = group, dist.get_rank(group), x.shape[0], sum_gradients
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, g):
        if ctx.sum_gradients:
            # Every rank's loss may depend on this rank's rows: their gradient is the sum over ranks.
            g = g.contiguous().clone()
            dist.all_reduce(g, group=ctx.group)
        return g[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows], None, None


def all_gather_rows(x: torch.Tensor, *, group=None, sum_gradients: bool = True) -> torch.Tensor:
    """``[P * N, ...]``: every rank's ``x [N, ...]`` in rank order, differentiable. ``N`` must
    be the same on every rank.

    ``sum_gradients=True`` (default): each rank computes its own loss from the gathered rows
    (in-batch negatives), so the gradient of this rank's rows is the sum of every rank's.
    ``sum_gradients=False``: the loss downstream is one loss computed alike on every rank (a
    vocabulary-parallel loss over the global batch, as insightface's Partial FC: data-parallel
    hidden states, a sharded table), whose gradient each rank already holds in full: this
    rank's rows take their slice of it. The gradients of parameters upstream are then each
    rank's share of the global loss's: sum them over the ranks (or, under DDP, which averages,
    scale the loss by ``P``)."""
    group = _group(group)
    error = None
    try:
        _check_tensor("x", x)
    except Exception as e:  # noqa: BLE001 - every rank must hear of it
        error = e
    fields = {"x's shape": None, "x's dtype": None, "x's device type": None}
    if error is None:
        fields = {"x's shape": list(x.shape), "x's dtype": x.dtype, "x's device type": x.device.type}
    _agree(group, x.device if error is None else torch.device("cpu"), fields, error)
    return _gather_rows_agreed(x, group, sum_gradients)


def _gather_rows_agreed(x, group, sum_gradients=True):
    if x.requires_grad:
        return _AllGatherRows.apply(x, group, bool(sum_gradients))
    return _AllGatherRows.forward(_Ctx(), x, group)


class _Ctx:
    """A stand-in for autograd's context when no gradient is needed."""


class GatheredNegatives(NamedTuple):
    """Every rank's candidates, this rank's first: ``candidates [P B, D]``, ``candidate_ids
    [P B]`` and ``log_q [P B]`` (each None if not given)."""

    candidates: torch.Tensor
    candidate_ids: torch.Tensor | None
    log_q: torch.Tensor | None


def gather_negatives(candidates: torch.Tensor, candidate_ids: torch.Tensor | None = None,
                     log_q: torch.Tensor | None = None, *, group=None) -> GatheredNegatives:
    """Negatives across ranks for :func:`sampled_softmax.torch.in_batch_softmax_loss`: every
    rank's ``candidates [B, D]`` (differentiable), ``candidate_ids [B]`` and ``log_q [B]``,
    gathered, with **this rank's first** so that query ``i``'s positive stays at column ``i``
    and the other ranks' candidates are extra negatives (the global batch). Use it as
    ``in_batch_softmax_loss(query, **gather_negatives(c, ids, log_q)._asdict())``. Under data
    parallelism, averaging the ranks' gradients (DDP, or :func:`all_reduce_gradients`) then
    gives the gradient of the single-process loss over the concatenated batch."""
    group = _group(group)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    given = {"candidates": candidates, "candidate_ids": candidate_ids, "log_q": log_q}
    error, fields = None, {}
    for name, x in given.items():
        fields.update({f"{name} given": x is not None, f"{name}'s shape": None, f"{name}'s dtype": None})
    try:
        for name, x in given.items():
            if x is not None or name == "candidates":
                _check_tensor(name, x)
                fields.update({f"{name}'s shape": list(x.shape), f"{name}'s dtype": x.dtype})
    except Exception as e:  # noqa: BLE001 - every rank must hear of it
        error = e
    device = candidates.device if isinstance(candidates, torch.Tensor) else torch.device("cpu")
    _agree(group, device, fields, error)  # one agreement: every gather below then runs on every rank

    def own_first(x):
        if x is None:
            return None
        full = _gather_rows_agreed(x, group)
        b = x.shape[0]
        order = torch.cat([torch.arange(rank * b, (rank + 1) * b), torch.arange(0, rank * b),
                           torch.arange((rank + 1) * b, world * b)]).to(full.device)
        return full.index_select(0, order)

    return GatheredNegatives(own_first(candidates), own_first(candidate_ids), own_first(log_q))


# ---------------------------------------------------------------------------------------------
# Data parallel with row-sparse gradients


def all_reduce_gradients(parameters, *, group=None) -> None:
    """Replace each parameter's gradient by its average over the ranks of ``group``, in place:
    the data-parallel step of ``DistributedDataParallel``, for models whose gradients are
    row-sparse (``SampledSoftmax(sparse=True)``, ``nn.Embedding(sparse=True)``), which DDP
    rejects. Dense gradients are all-reduced; a sparse one is all-gathered (indices and values,
    ``O(rows touched)``, never ``O(V)``) and coalesced. Call after ``backward``, before the
    optimizer step, on every rank with the same parameters in the same order. A parameter
    without a gradient on a rank counts as zero there."""
    group = _group(group)
    world = dist.get_world_size(group)
    params = [p for p in parameters]
    device = params[0].device if params else torch.device("cpu")
    # Dtypes and devices too: gloo aborts the process on a collective of mismatched dtypes.
    _agree(group, device, {"parameters (count)": len(params), "parameters (a shape checksum)":
                           _checksum(torch.tensor([d for p in params for d in p.shape] or [0])),
                           "parameters' dtypes": ", ".join(str(p.dtype) for p in params),
                           "parameters' device types": ", ".join(sorted({p.device.type for p in params}))}, None)
    if not params:
        return
    # 0: no gradient, 1: dense, 2: sparse; the ranks must agree on dense or sparse.
    kinds = torch.tensor([0 if p.grad is None else (2 if p.grad.is_sparse else 1) for p in params], device=device)
    every = [torch.empty_like(kinds) for _ in range(world)]
    dist.all_gather(every, kinds, group=group)
    every = torch.stack(every).cpu()
    for i, p in enumerate(params):
        column = every[:, i].tolist()
        if 1 in column and 2 in column:
            raise SampledSoftmaxError(f"parameter {i} (shape {list(p.shape)}) has a dense gradient on some ranks and a "
                                      f"sparse one on others: {column} on ranks 0..{world - 1} (0 none, 1 dense, "
                                      f"2 sparse)")
    for i, p in enumerate(params):
        kind = max(every[:, i].tolist())
        if kind == 1:
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            dist.all_reduce(grad, group=group)
            p.grad = grad.div_(world)
        elif kind == 2:
            p.grad = _all_reduce_sparse(p.grad, tuple(p.shape), p, group, world)


def _all_reduce_sparse(grad, shape, p, group, world):
    if grad is None:
        grad = torch.sparse_coo_tensor(torch.zeros(len(shape), 0, dtype=torch.int64, device=p.device),
                                       torch.zeros((0,) + shape[1:], dtype=p.dtype, device=p.device), shape)
    grad = grad.coalesce()
    indices, values = grad.indices(), grad.values()
    sizes = [torch.empty(1, dtype=torch.int64, device=indices.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([indices.shape[1]], device=indices.device), group=group)
    sizes = [int(s) for s in sizes]
    largest = max(sizes)
    pad = largest - indices.shape[1]
    padded_idx = torch.cat([indices, indices.new_zeros(indices.shape[0], pad)], 1)
    padded_val = torch.cat([values, values.new_zeros((pad,) + tuple(values.shape[1:]))])
    all_idx = [torch.empty_like(padded_idx) for _ in range(world)]
    all_val = [torch.empty_like(padded_val) for _ in range(world)]
    dist.all_gather(all_idx, padded_idx, group=group)
    dist.all_gather(all_val, padded_val, group=group)
    idx = torch.cat([i[:, :s] for i, s in zip(all_idx, sizes)], 1)
    val = torch.cat([v[:s] for v, s in zip(all_val, sizes)]) / world
    return torch.sparse_coo_tensor(idx, val, shape, check_invariants=False).coalesce()


def all_reduce_buffers(buffers, *, group=None, op: str = "mean") -> None:
    """Make buffers equal on every rank, in place: their ``"mean"`` (running statistics) or
    ``"sum"`` over the ranks. (A learned sampler's counts need neither: see
    :class:`DistributedLearnedUnigramSampler`.)"""
    group = _group(group)
    world = dist.get_world_size(group)
    V.check_choice("op", op, ("mean", "sum"))
    for b in buffers:
        dist.all_reduce(b, group=group)
        if op == "mean":
            b.div_(world)


class DistributedLearnedUnigramSampler(LearnedUnigramSampler):
    """:class:`~sampled_softmax.torch.LearnedUnigramSampler` for data parallelism: each update
    counts the labels of **every** rank of ``group`` (all-gathered, ``O(N T P)`` integers, never
    the ``O(V)`` counts), so every rank's counts equal one process's over the concatenated
    batch and every rank draws from the same distribution. (Under DDP a plain learned sampler
    learns from its own rank's labels only, and DDP's buffer broadcast then keeps rank 0's.)

    Call it on every rank at every step. Each draw starts with one agreement between the ranks
    (training or eval mode, and whether the call failed on a rank), so a rank whose loss rejects
    its arguments, or one left in ``eval()``, is an error on every rank, never a hang. The
    batch's labels are counted in the draw that reads them (on every rank alike, even where
    that rank's loss fails afterwards), after the candidates are drawn."""

    # The losses take part in this sampler's agreement when a call fails before its draw.
    _collective = True

    def __init__(self, num_classes: int, *, group=None, draw: str = "unique"):
        super().__init__(num_classes, draw=draw)
        self.group = _group(group)
        self._agreements = 0  # how many agreements this process took part in
        self._counted = None  # the labels counted by the last draw, which `update` then skips

    def _agree_call(self, error):
        """The agreement every call begins with: training or eval, and whether a rank failed."""
        self._agreements += 1
        device = self.counts.device
        _agree(self.group, device, {"training (the sampler's mode)": bool(self.training)}, error)

    def _collect(self, true_classes, ignore_index, error=None):
        """Agree, then (training) count every rank's labels; a rank that failed passes its error."""
        self._agree_call(error)
        if self.training:
            valid = None if ignore_index is None else true_classes != ignore_index
            self._gather_and_add(true_classes, valid)

    def _draw_values(self, true_classes, num_sampled, generator, ignore_index, *, update=True) -> SampledValues:
        error = None
        try:  # what the draw checks: it must fail on every rank or on none
            check_generator(generator)
            V.check_num_sampled(num_sampled, self.num_classes, unique=self.draw == "unique", support=self.support)
        except Exception as e:  # noqa: BLE001 - every rank must hear of it
            error = e
        self._agree_call(error)
        drawn = super()._draw_values(true_classes, num_sampled, generator, ignore_index, update=False)
        if self.training:
            valid = None if ignore_index is None else true_classes != ignore_index
            self._gather_and_add(true_classes, valid)
            self._counted = true_classes
        return drawn

    @torch.no_grad()
    def update(self, true_classes, valid=None):
        if self._counted is not None:  # the draw that read these labels counted them already
            self._counted = None
            return
        self._agree_call(None)
        self._gather_and_add(true_classes, valid)

    @torch.no_grad()
    def _gather_and_add(self, true_classes, valid):
        world = dist.get_world_size(self.group)
        ids = true_classes.reshape(-1).to(self.counts.device, torch.int64)
        keep = torch.ones_like(ids, dtype=torch.bool) if valid is None else valid.reshape(-1).to(ids.device)
        sizes = [torch.empty(1, dtype=torch.int64, device=ids.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([ids.numel()], device=ids.device), group=self.group)
        largest = max(int(x) for x in sizes)
        # Padding is -1 and never counted: ranks may hold batches of different sizes.
        padded = torch.cat([torch.where(keep, ids, -1), ids.new_full((largest - ids.numel(),), -1)])
        every = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(every, padded, group=self.group)
        every = torch.cat(every)
        every = every[every >= 0]
        self._add(every, torch.ones(every.numel(), dtype=self.counts.dtype, device=every.device))


def vocab_parallel_bytes(batch: int, num_true: int, num_sampled: int, dim: int, *, element_size: int = 4,
                         backward: bool = True) -> dict:
    """Bytes each rank hands to the collectives in one call of
    :func:`vocab_parallel_sampled_softmax_loss` that draws its candidates (what
    :class:`CollectiveBytes` measures; a ring all-reduce of ``x`` bytes puts ``2 (P - 1) / P x``
    on the wire): the agreement (21 int64), rank 0's draw (``1 + 2 S + N T`` float64), the head's
    all-reduces (``N (T + 2)``, ``N``, ``N``) and, backward, the input gradient (``N D``), in
    the compute dtype."""
    n, t, s, d = batch, num_true, num_sampled, dim
    out = {"all_gather": 8 * (1 + len(_AGREED)), "broadcast": 8 * (1 + 2 * s + n * t), "all_reduce": element_size * n * (t + 4)}
    if backward:
        out["all_reduce"] += element_size * n * d
    return out


def megatron_exact_bytes(batch: int, dim: int, *, element_size: int = 4, backward: bool = True) -> dict:
    """The same count for Megatron-style vocabulary-parallel *exact* cross-entropy
    (``vocab_parallel_cross_entropy``): all-reduces of the row max, the target logit and the
    sum of exponentials (``3 N``) and, backward, the input gradient (``N D``), for
    ``O(N V D / P)`` work per rank where ours is ``O(N S D / P)``."""
    return {"all_reduce": element_size * (3 * batch + (batch * dim if backward else 0))}


class CollectiveBytes:
    """Counts the bytes each rank hands to ``torch.distributed``'s collectives while active (a
    context manager that wraps ``all_reduce``, ``all_gather``, ``broadcast`` and
    ``all_gather_object``): ``with CollectiveBytes() as sent: ...; sent.total``."""

    _NAMES = ("all_reduce", "all_gather", "broadcast")

    def __init__(self):
        self.by_op: dict[str, int] = {}
        self._saved = {}

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __enter__(self):
        for name in self._NAMES:
            original = getattr(dist, name)
            self._saved[name] = original

            def wrapped(*args, _name=name, _original=original, **kwargs):
                tensor = args[1] if _name == "all_gather" else args[0]
                self.by_op[_name] = self.by_op.get(_name, 0) + tensor.numel() * tensor.element_size()
                return _original(*args, **kwargs)

            setattr(dist, name, wrapped)
        return self

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(dist, name, original)
        return False
