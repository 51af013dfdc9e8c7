"""``sampled_softmax_loss`` and ``full_softmax_loss`` for PyTorch.

The sampled loss is one ``autograd.Function`` with an explicit backward: one gather of the
``B*T + S`` touched rows of the class table, one matrix product forward and two backward, a
``log_softmax`` over the small ``[N, T + S]`` matrix of row logits, and a scatter of the row
gradients (dense, or sparse COO rows with ``sparse=True``). Nothing of size ``V`` or
``B x V`` is made, except the dense gradient itself when ``sparse=False``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from typing import NamedTuple

import numpy as np
import torch

from .. import SampledSoftmaxError
from .. import _validation as V
from . import _compiled, _ops
from ._compiled import IMPLEMENTATIONS
from ..samplers import DRAWS, unique_draw_error, unique_draw_limit
from .._validation import check_num_sampled
from .samplers import (
    CandidateSampler, LogUniformSampler, UniformSampler, check_generator, check_ignore_index, make_sampler,
    sampler_tables,
)

__all__ = ["sampled_softmax_loss", "full_softmax_loss", "full_logits"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 inputs are computed (and their losses returned) in float32."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


class _Spec(NamedTuple):
    """Static settings of one call, carried from forward to backward."""

    num_true: int
    offsets: tuple  # first class id of each shard ("div"), or () for one table
    strategy: str
    label_smoothing: float
    sparse: bool


# ---------------------------------------------------------------------------------------------
# Argument handling


def _shards(weights) -> list[torch.Tensor]:
    if isinstance(weights, torch.Tensor):
        return [weights]
    if isinstance(weights, (list, tuple)):
        for i, w in enumerate(weights):
            if not isinstance(w, torch.Tensor):
                raise TypeError(f"`weights[{i}]` must be a torch.Tensor; received {type(w).__name__}")
        return list(weights)
    raise TypeError(f"`weights` must be a torch.Tensor or a list of shards; received {type(weights).__name__}")


def _check_tensor(name, x, *, floating=None):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor; received {type(x).__name__}")
    if floating is True:
        V.check_floating_dtype(name, x.is_floating_point(), str(x.dtype))
    elif floating is False:
        V.check_integer_dtype(name, not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool, str(x.dtype))


def _prepare(weights, biases, labels, inputs, num_classes, num_true, ignore_index, label_smoothing,
             reduction, partition_strategy, check_values=True):
    """Validate; return ``(shards, biases, y [N, T], h [N, D], lead, V, offsets, valid [N, T] or
    None, label_smoothing)``. Without ``check_values`` (a traced call, which cannot read
    values) the labels are not read and ``valid`` is None."""
    shards = _shards(weights)
    for i, w in enumerate(shards):
        _check_tensor("weights" if len(shards) == 1 else f"weights[{i}]", w, floating=True)
    _check_tensor("inputs", inputs, floating=True)
    _check_tensor("labels", labels, floating=False)
    bias_shards = None
    if isinstance(biases, (list, tuple)):  # shards, in the weights' layout (tf.nn accepts them)
        bias_shards = list(biases)
        if not bias_shards:
            raise SampledSoftmaxError("`biases` must be a [num_classes] tensor or a non-empty list of shards; "
                                      "received an empty list")
        for i, b in enumerate(bias_shards):
            _check_tensor(f"biases[{i}]", b, floating=True)
            if b.dim() != 1:
                raise SampledSoftmaxError(f"`biases[{i}]` must be 1-D; received shape {list(b.shape)}")
    elif biases is not None:
        _check_tensor("biases", biases, floating=True)
    V.check_choice("reduction", reduction, V.REDUCTIONS)
    check_ignore_index(ignore_index)
    label_smoothing = V.check_label_smoothing(label_smoothing)
    num_classes, dim = V.check_weights_shapes([tuple(w.shape) for w in shards], num_classes, inputs.shape[-1] if inputs.dim() else -1)
    V.check_choice("partition_strategy", partition_strategy, V.PARTITION_STRATEGIES)
    if bias_shards is not None:
        V.shard_layout([b.shape[0] for b in bias_shards], num_classes, partition_strategy, name="biases")
        # One [V] bias made from the shards; autograd hands each shard its part of the gradient.
        biases = _full_table(bias_shards, partition_strategy)
    V.check_biases_shape(None if biases is None else tuple(biases.shape), num_classes)
    lead, num_true = V.resolve_label_shape(tuple(labels.shape), tuple(inputs.shape), num_true)
    offsets = ()
    if len(shards) > 1:
        offsets = tuple(V.shard_layout([w.shape[0] for w in shards], num_classes, partition_strategy))
    n = math.prod(lead)
    y = labels.reshape(n, num_true)
    h = inputs.reshape(n, dim)
    valid = _check_label_values(y, num_classes, ignore_index) if check_values else None
    return shards, biases, y, h, lead, num_classes, offsets, valid, label_smoothing


def _check_label_values(y: torch.Tensor, num_classes: int, ignore_index) -> torch.Tensor | None:
    """Check ``y`` against ``[0, num_classes)``; return the ``[N, T]`` mask of kept labels, or
    None when no label is ignored (the fast path)."""
    valid = None
    if y.numel():
        lo, hi = _min_max(y)
        if ignore_index is not None and lo <= ignore_index <= hi:
            valid = y != ignore_index
            # Zero stands in for ignored labels: it is always in range.
            lo, hi = _min_max(torch.where(valid, y, 0))
        V.check_label_values(lo, hi, num_classes, ignore_index)
    return valid


def _min_max(x: torch.Tensor):
    """Smallest and largest value as Python numbers (one read-back)."""
    if x.device.type == "cpu":
        xn = _as_numpy_float(x) if x.is_floating_point() else x.numpy()
        return xn.min().item(), xn.max().item()
    return torch.stack(list(torch.aminmax(x))).tolist()


def _check_sampled_values(sampled_values, num_sampled, num_classes, y, valid, device):
    sampled_values = V.check_sampled_values_triple(sampled_values)
    cand, true_count, samp_count = (torch.as_tensor(v, device=device) for v in sampled_values)
    _check_tensor("sampled_values[0]", cand, floating=False)
    for name, count in (("sampled_values[1]", true_count), ("sampled_values[2]", samp_count)):
        if count.is_complex() or count.dtype == torch.bool:
            raise TypeError(f"`{name}` must have a real dtype; received {count.dtype}")
    n, t = y.shape
    V.check_sampled_values_shapes(tuple(cand.shape), tuple(true_count.shape), tuple(samp_count.shape),
                                  num_sampled, n, t)
    true_count = _true_count_rows(true_count, n, t)
    padded = False
    if cand.numel():
        tc = true_count if valid is None else torch.where(valid, true_count, 1.0)
        cand_lo, cand_hi = _min_max(cand)
        tc_lo, tc_hi = _min_max(tc) if tc.numel() else (1.0, 1.0)
        sc_lo, sc_hi = _min_max(samp_count)
        V.check_sampled_values_values(cand_lo, cand_hi, num_classes, tc_lo, tc_hi, sc_lo)
        padded = sc_hi == math.inf
    return cand.long(), true_count, samp_count, padded


_AUTOCAST_AVAILABLE: dict = {}
_is_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def _autocast_on(device_type: str) -> bool:
    available = _AUTOCAST_AVAILABLE.get(device_type)
    if available is None:  # asked once per device type: the answer costs a microsecond a call
        available = _AUTOCAST_AVAILABLE[device_type] = torch.amp.is_autocast_available(device_type)
    return available and torch.is_autocast_enabled(device_type)


def _check_sparse_bias(biases, sparse) -> None:
    if sparse and isinstance(biases, (list, tuple)) and len(biases) > 1:
        raise SampledSoftmaxError(
            "`biases` as a list of shards takes sparse=False (its gradient reaches the shards through "
            "their concatenation); with sparse=True pass one [num_classes] tensor")


def _check_not_transformed(inputs, weights) -> None:
    """torch.func transforms wrap tensors in ways the explicit backward and the NumPy-side
    column code cannot see through: say so instead of failing somewhere inside."""
    is_wrapped = _is_functorch_wrapped
    first = weights[0] if isinstance(weights, (list, tuple)) and weights else weights
    if (isinstance(inputs, torch.Tensor) and is_wrapped(inputs)) or (isinstance(first, torch.Tensor)
                                                                     and is_wrapped(first)):
        raise NotImplementedError(
            "sampled_softmax_loss does not run under torch.func transforms (grad, vjp, vmap, jacrev): its "
            "backward is an explicit autograd.Function. Use loss.backward() or torch.autograd.grad, and a "
            "loop or a larger batch instead of vmap")


def _check_labels_can_be_drawn(y, valid, true_count, sampler) -> None:
    """A label the sampler never draws has expected count 0 and corrected logit +inf, so its
    row's loss would be nan: raise instead, naming the label and the sampler."""
    zero = true_count == 0
    if valid is not None:
        zero &= valid
    if bool(zero.any()):
        label = int(y[zero][0])
        raise SampledSoftmaxError(
            f"`labels` contains {label}, which the sampler {sampler!r} gives probability 0 (a reserved id or a "
            f"zero count): its -log E correction would be +inf and its loss nan. Give the class a positive "
            f"count, pass it as ignore_index, or use subtract_log_q=False")


def _true_count_rows(true_count: torch.Tensor, n: int, t: int) -> torch.Tensor:
    """``true_expected_count`` as ``[N, T]``; ``[N, 1]`` is broadcast over the labels, as in TensorFlow."""
    if t > 1 and true_count.numel() == n:
        return true_count.reshape(n, 1).expand(n, t)
    return true_count.reshape(n, t)


def _as_numpy_float(x: torch.Tensor) -> np.ndarray:
    # NumPy has no bfloat16; float16 counts are widened too (their log feeds float32 logits).
    x = x.detach()
    return (x.float() if x.dtype in _LOW_PRECISION else x).numpy()


def _columns_numpy(y_safe, valid, cand, true_count, samp_count, cdt, remove_hits, subtract_log_q, padded):
    """On the CPU: column ids ``[N*T + S]``, ``log E`` per column and the removed-candidate mask
    ``[N, S]`` (or None), built with NumPy, whose small-array operations cost a fraction of torch's."""
    n, t = y_safe.shape
    yn, cn = y_safe.numpy(), cand.numpy()
    ids = torch.from_numpy(np.concatenate([yn.reshape(-1), cn]))
    vn = None if valid is None else valid.numpy()
    removed = None
    if remove_hits:
        hits = yn[:, :, None] == cn
        if vn is not None:
            hits &= vn[:, :, None]
        removed = hits[:, 0] if t == 1 else hits.any(1)
    sc = _as_numpy_float(samp_count)
    if padded:  # padding slots (expected count inf) are removed from every row
        pad = ~np.isfinite(sc)
        removed = np.broadcast_to(pad, (n, cn.size)).copy() if removed is None else removed | pad
    if subtract_log_q:
        np_dtype = torch.empty(0, dtype=cdt).numpy().dtype
        counts = np.concatenate([_as_numpy_float(true_count).reshape(-1), sc]).astype(np_dtype)
        if vn is not None:
            counts[: n * t][~vn.reshape(-1)] = 1.0
        if padded:
            counts[n * t:][pad] = 1.0
        logq = torch.from_numpy(np.log(counts))
    else:
        logq = torch.zeros(ids.shape[0], dtype=cdt)
    return ids, logq, None if removed is None else torch.from_numpy(removed)


def _columns_torch(y_safe, valid, cand, true_count, samp_count, cdt, remove_hits, subtract_log_q, padded):
    """:func:`_columns_numpy` in torch ops, for accelerators."""
    n, t = y_safe.shape
    s = cand.shape[0]
    ids = torch.cat([y_safe.reshape(-1), cand])
    removed = None
    if remove_hits:
        hits = y_safe.unsqueeze(2) == cand.view(1, 1, s)
        if valid is not None:
            hits &= valid.unsqueeze(2)
        removed = hits.any(1)
    if padded:
        pad = ~torch.isfinite(samp_count)
        removed = pad.expand(n, s) if removed is None else removed | pad
    if subtract_log_q:
        counts = torch.cat([true_count.reshape(-1).to(cdt), samp_count.to(cdt)])
        if valid is not None:
            counts[: n * t].masked_fill_(~valid.reshape(-1), 1.0)
        if padded:
            counts[n * t:].masked_fill_(pad, 1.0)
        logq = counts.log()
    else:
        logq = torch.zeros(ids.shape[0], dtype=cdt, device=ids.device)
    return ids, logq, removed


@functools.lru_cache(maxsize=64)
def _named_sampler(name: str, num_classes: int) -> CandidateSampler:
    # Stateless samplers by name are built once: constructing a Module costs more than a draw.
    return make_sampler(name, num_classes)


def _sampler_for(sampler, num_classes):
    return _named_sampler(sampler, num_classes) if isinstance(sampler, str) else make_sampler(sampler, num_classes)


def _reduce(per_row: torch.Tensor, live: torch.Tensor | None, reduction: str, lead) -> torch.Tensor:
    if reduction == "none":
        return per_row.reshape(lead)
    if reduction == "sum":
        return per_row.sum()
    count = per_row.new_tensor(per_row.numel()) if live is None else live.sum().to(per_row.dtype)
    return per_row.sum() / count


# ---------------------------------------------------------------------------------------------
# Gather and scatter over one table or shards


def _locate(ids: torch.Tensor, spec: _Spec, num_shards: int):
    """Shard index and row within the shard of each class id."""
    if spec.strategy == "mod":
        return ids.remainder(num_shards), ids.div(num_shards, rounding_mode="floor")
    offsets = torch.tensor(spec.offsets, device=ids.device)
    shard = torch.bucketize(ids, offsets[1:], right=True)
    return shard, ids - offsets[shard]


def _gather_rows(shards, ids, spec: _Spec, dtype):
    if len(shards) == 1:
        rows = shards[0].index_select(0, ids)
        return rows if rows.dtype == dtype else rows.to(dtype)
    shard, local = _locate(ids, spec, len(shards))
    rows = None
    for p, w in enumerate(shards):
        part = w.index_select(0, local.clamp(max=w.shape[0] - 1)).to(dtype)
        rows = part if rows is None else torch.where((shard == p).unsqueeze(1), part, rows)
    return rows


def _scatter_rows(shape, ids, row_grads, sparse: bool, keep: torch.Tensor | None):
    """``zeros(shape).index_add_(0, ids, row_grads)``, or the same as a sparse COO tensor.

    The sparse gradient is left uncoalesced, as ``nn.Embedding(sparse=True)``'s: its value is
    the sum over duplicate rows. Autograd's accumulation drops the coalesced flag anyway and
    every sparse optimizer coalesces, so coalescing here would only do that work twice.
    ``keep`` drops rows (ignored labels) so optimizers do not treat their classes as touched.
    """
    if sparse:
        if keep is not None:
            ids, row_grads = ids[keep], row_grads[keep]
        return torch.sparse_coo_tensor(ids.unsqueeze(0), row_grads, shape, check_invariants=False)
    return torch.zeros(shape, dtype=row_grads.dtype, device=row_grads.device).index_add_(0, ids, row_grads)


def _scatter_to_shards(shards, ids, row_grads, spec: _Spec, keep, needs):
    if len(shards) == 1:
        w = shards[0]
        if w.dtype != row_grads.dtype:
            row_grads = row_grads.to(w.dtype)
        return [_scatter_rows(tuple(w.shape), ids, row_grads, spec.sparse, keep) if needs[0] else None]
    shard, local = _locate(ids, spec, len(shards))
    grads = []
    for p, w in enumerate(shards):
        if not needs[p]:
            grads.append(None)
            continue
        mine = shard == p
        if spec.sparse:
            sel = mine if keep is None else mine & keep
            grads.append(_scatter_rows(tuple(w.shape), local, row_grads.to(w.dtype), True, sel))
        else:
            g = row_grads.to(w.dtype) * mine.unsqueeze(1)
            grads.append(_scatter_rows(tuple(w.shape), local.clamp(max=w.shape[0] - 1), g, False, None))
    return grads


# ---------------------------------------------------------------------------------------------
# The fused loss


def loss_forward(h, ids, logq, keep_true, removed_cand, spec: _Spec, bias, shards):
    """The loss's forward: ``(loss [N], logp [N], hc, rows, logp_all [N, T + S], targets)``.

    ``hc`` and ``rows`` are the hidden states and the gathered rows in the compute dtype, and
    ``targets`` the target matrices (None for the plain case), all kept for :func:`loss_backward`.
    The row logits ``[N, T + S]`` (true columns first) are one small matrix; removed columns
    hold ``-inf``, so their probability is exactly 0 and so is their gradient.
    """
    # Tensor slicing through __getitem__ costs several microseconds a call in eager PyTorch;
    # split/narrow keep this hot path to the operations it needs.
    n, t = h.shape[0], spec.num_true
    nt, s = n * t, ids.shape[0] - n * t
    cdt = _compute_dtype(h.dtype)
    hc = h if h.dtype == cdt else h.to(cdt)
    rows = _gather_rows(shards, ids, spec, cdt)
    w_true, w_cand = rows.split([nt, s])
    # corr = b - log E for every touched column: true labels first, then candidates.
    corr = logq.neg() if bias is None else bias.index_select(0, ids).to(cdt).sub_(logq)
    corr_true, corr_cand = corr.split([nt, s])
    sl = torch.addmm(corr_cand.unsqueeze(0), hc, w_cand.t())
    if t == 1:
        tl = torch.linalg.vecdot(hc, w_true).add_(corr_true).unsqueeze_(1)
    else:
        tl = torch.bmm(w_true.view(n, t, -1), hc.unsqueeze(2)).squeeze(2).add_(corr_true.view(n, t))
    if removed_cand is not None:
        sl.masked_fill_(removed_cand, -math.inf)
    if keep_true is not None:
        tl.masked_fill_(~keep_true, -math.inf)
    # log_softmax is one fused, stable pass; backward needs only its exp.
    logp_all = torch.log_softmax(torch.cat([tl, sl], 1), 1)
    targets = None
    if keep_true is None and spec.label_smoothing == 0.0:
        # Plain targets 1/T on the true columns, all of them kept.
        logp = logp_all[:, 0] if t == 1 else logp_all.narrow(1, 0, t).mean(1)
        loss = logp.neg()
    else:
        if keep_true is not None:
            # A row with every column removed (only an ignored row) gives nan: make its
            # probabilities exactly 0 instead.
            logp_all.nan_to_num_(nan=-math.inf)
        keep_cand = None if removed_cand is None else ~removed_cand
        targets = _targets(keep_true, keep_cand, n, t, s, spec.label_smoothing, cdt, h.device)
        lp0 = logp_all.masked_fill(logp_all == -math.inf, 0.0)
        logp = (lp0 * targets[1]).sum(1)
        loss = logp.neg() if targets[0] is targets[1] else (lp0 * targets[0]).sum(1).neg_()
        if keep_true is not None:
            live = keep_true.any(1)
            loss, logp = torch.where(live, loss, 0.0), torch.where(live, logp, 0.0)
    # float16/bfloat16 inputs get float32 losses, as under autocast.
    return loss, logp, hc, rows, logp_all, targets


def loss_backward(g_loss, g_logp, hc, rows, logp_all, keep_true, targets, num_true, need_h, need_w, need_b):
    """The loss's backward from :func:`loss_forward`'s values: ``(d_h, d_rows [N*T + S, D],
    d_b_rows [N*T + S])`` in the compute dtype (None where not needed); ``d_rows`` is the
    gradient of each gathered row, to be scattered into the table."""
    n, t = logp_all.shape[0], num_true
    nt, d, s = n * t, hc.shape[1], logp_all.shape[1] - t
    # d loss / d logits = p - target_smoothed;  d logp / d logits = target_unsmoothed - p.
    a = None if g_loss is None else g_loss.to(logp_all.dtype).unsqueeze(1)
    c = None if g_logp is None else g_logp.to(logp_all.dtype).unsqueeze(1)
    coef = a if c is None else (c.neg() if a is None else a - c)
    g = logp_all.exp().mul_(coef)  # coef * softmax
    g_true, g_cand = g.split([t, s], 1)
    if targets is None:  # target 1/T on each true column for both outputs
        g_true.sub_(coef if t == 1 else coef / t)
    else:
        t_smooth, t_plain = targets
        if a is not None:
            g.sub_(a * t_smooth)
        if c is not None:
            g.add_(c * t_plain)
        if keep_true is not None:
            g.mul_(keep_true.any(1, keepdim=True))  # ignored rows: exactly no gradient
    w_true, w_cand = rows.split([nt, s])
    d_h = d_rows = d_b_rows = None
    if need_h:
        if t == 1:
            d_h = torch.addmm(w_true * g_true, g_cand, w_cand)
        else:
            d_h = torch.baddbmm((g_cand @ w_cand).unsqueeze(1), g_true.unsqueeze(1), w_true.view(n, t, d)).squeeze(1)
    if need_w:
        d_true = hc * g_true if t == 1 else (g_true.unsqueeze(2) * hc.unsqueeze(1)).view(nt, d)
        d_rows = torch.cat([d_true, g_cand.t().mm(hc)])
    if need_b:
        d_b_rows = torch.cat([g_true.reshape(-1), g_cand.sum(0)])
    return d_h, d_rows, d_b_rows


class _SampledSoftmax(torch.autograd.Function):
    """Per-row sampled softmax loss and the sampled log-probability of the targets.

    forward(h [N, D], ids [N*T + S], logq [N*T + S], keep_true [N, T] or None,
            removed_cand [N, S] or None, spec, bias [V] or None, *shards) -> (loss [N], logp [N])

    :func:`loss_forward` and :func:`loss_backward`, with the row gradients scattered into the
    table (dense, or sparse rows without those of ignored labels).
    """

    @staticmethod
    def forward(ctx, h, ids, logq, keep_true, removed_cand, spec: _Spec, bias, *shards):
        loss, logp, hc, rows, logp_all, targets = loss_forward(h, ids, logq, keep_true, removed_cand, spec,
                                                                bias, shards)
        ctx.spec, ctx.targets = spec, targets
        ctx.dtypes = (h.dtype, None if bias is None else bias.dtype)
        ctx.save_for_backward(hc, rows, ids, logp_all, keep_true, bias, *shards)
        return loss, logp

    @staticmethod
    def backward(ctx, g_loss, g_logp):
        _check_once_differentiable()
        hc, rows, ids, logp_all, keep_true, bias, *shards = ctx.saved_tensors
        spec: _Spec = ctx.spec
        needs_w = ctx.needs_input_grad[7:]
        needs_b = ctx.needs_input_grad[6]
        d_h, d_rows, d_b_rows = loss_backward(g_loss, g_logp, hc, rows, logp_all, keep_true, ctx.targets,
                                              spec.num_true, ctx.needs_input_grad[0], any(needs_w), needs_b)
        if d_h is not None and d_h.dtype != ctx.dtypes[0]:
            d_h = d_h.to(ctx.dtypes[0])
        d_bias, d_shards = None, [None] * len(shards)
        keep_rows = None
        if keep_true is not None and spec.sparse:
            num_cand = logp_all.shape[1] - spec.num_true
            keep_rows = torch.cat([keep_true.reshape(-1), keep_true.new_ones(num_cand)])
        if d_rows is not None:
            d_shards = _scatter_to_shards(shards, ids, d_rows, spec, keep_rows, needs_w)
        if d_b_rows is not None:
            if d_b_rows.dtype != ctx.dtypes[1]:
                d_b_rows = d_b_rows.to(ctx.dtypes[1])
            d_bias = _scatter_rows(tuple(bias.shape), ids, d_b_rows, spec.sparse, keep_rows)
        return (d_h, None, None, None, None, None, d_bias, *d_shards)


ONCE_DIFFERENTIABLE = (
    "sampled_softmax_loss is differentiable once: its backward is explicit, so create_graph=True "
    "(double backward, e.g. a gradient penalty through it) is not supported")


def _check_once_differentiable() -> None:
    # Autograd runs a backward with grad mode on only for create_graph=True.
    if torch.is_grad_enabled():
        raise RuntimeError(ONCE_DIFFERENTIABLE)


def _targets(keep_true, keep_cand, n, t, s, eps, dtype, device):
    """Target matrices ``(smoothed, unsmoothed)``, each ``[N, T + S]``.

    Unsmoothed: ``1 / T_i`` on each kept true column. Smoothed:
    ``(1 - eps) / T_i + eps / K_i`` on kept true columns and ``eps / K_i`` on kept candidates,
    with ``T_i`` kept labels and ``K_i`` kept columns in row ``i``.
    """
    kt = torch.ones(n, t, dtype=dtype, device=device) if keep_true is None else keep_true.to(dtype)
    kc = torch.ones(n, s, dtype=dtype, device=device) if keep_cand is None else keep_cand.to(dtype)
    n_true = kt.sum(1, keepdim=True).clamp_(min=1.0)
    plain = torch.cat([kt / n_true, torch.zeros_like(kc)], 1)
    if eps == 0.0:
        return plain, plain
    kept = torch.cat([kt, kc], 1)
    smooth = plain * (1.0 - eps) + kept * (eps / (kt.sum(1, keepdim=True) + kc.sum(1, keepdim=True)).clamp_(min=1.0))
    return smooth, plain


# ---------------------------------------------------------------------------------------------
# Public functions


def sampled_softmax_loss(
    weights, biases, labels, inputs, num_sampled, num_classes, num_true=1, sampled_values=None,
    remove_accidental_hits=True, *, sampler="log_uniform", reduction="none", ignore_index=None,
    label_smoothing=0.0, generator=None, partition_strategy="div", subtract_log_q=True,
    sparse=False, return_log_prob=False, implementation="auto",
):
    r"""Sampled softmax loss (Jean et al. 2014), the semantics of ``tf.nn.sampled_softmax_loss``.

    Draws one set of ``S`` candidate classes ``c`` for the whole batch and computes, per row,
    the softmax cross-entropy over the true and candidate columns with corrected logits

    .. math::
        o_{ik} = h_i \cdot W_{k} + b_{k} - \log E(k),\qquad
        \ell_i = \log\sum_{k \in \text{kept}} e^{o_{ik}} - \frac{1}{T}\sum_{j} o_{i y_{ij}}

    where ``E(k)`` is the sampler's expected count of class ``k``. Candidates equal to one of
    row ``i``'s labels are removed from its normalizer (``remove_accidental_hits``: a true mask,
    probability 0 and gradient exactly 0). With ``label_smoothing = eps`` the target is
    ``(1 - eps) / T`` on each label plus ``eps / K_i`` on each of the row's ``K_i`` kept columns.
    For training only; evaluate with :func:`full_softmax_loss`.

    Args:
        weights: ``[V, D]`` tensor, or a list of shards (TensorFlow's ``"div"`` layout by
            default, ``partition_strategy="mod"`` for ``id % n``).
        biases: ``[V]`` tensor or None.
        labels: integer ``[...]`` (``num_true = 1``) or ``[..., T]``.
        inputs: ``[..., D]`` hidden states.
        num_sampled: ``S``, candidates drawn per call (shared by the batch).
        num_classes: ``V``; must equal the rows of ``weights``.
        num_true: ``T``, labels per example.
        sampled_values: optional ``(candidates [S], true_expected_count [N, T],
            sampled_expected_count [S])``, e.g. from a sampler; fixes the randomness.
        remove_accidental_hits: mask candidates equal to a row's label. Default True.
        sampler: ``"log_uniform"`` (default), ``"uniform"``, or a :class:`CandidateSampler`.
        reduction: ``"none"`` (default, per-example like ``tf.nn``), ``"mean"`` over the
            examples with a kept label (``nan`` when none has one, as ``F.cross_entropy``),
            or ``"sum"``.
        ignore_index: label value to ignore. A row whose labels are all ignored gets loss 0 and
            no gradient; with ``T > 1`` an ignored label is dropped from its row (padding).
        label_smoothing: ``eps`` in ``[0, 1]``.
        generator: ``torch.Generator`` for the sampler.
        partition_strategy: ``"div"`` or ``"mod"`` for sharded ``weights``.
        subtract_log_q: subtract ``log E``; False gives negative sampling's uncorrected logits.
        sparse: return sparse COO row gradients for ``weights`` and ``biases``.
        return_log_prob: also return the sampled estimate of ``log p(target)`` per example.
        implementation: ``"auto"`` (default): the compiled core where it applies (one weight
            table, ``num_true=1``, no ignored label, no label smoothing, float32/float64 with
            ``inputs``, ``weights`` and ``biases`` of one dtype) and can be built (a C++
            compiler and ``ninja``; built once per machine, about a minute), else the Python
            path. With the ``"uniform"`` or ``"log_uniform"`` sampler on the CPU it also draws
            the candidates (the same ones the sampler module draws from the same generator).
            ``"compiled"`` requires the compiled core (an error says why it cannot be used);
            ``"python"`` never uses it. Both compute the same loss and gradients.

    Returns:
        The loss: shape ``[...]`` for ``reduction="none"``, else a scalar. With
        ``return_log_prob``, a pair ``(loss, log_prob [...])``.

    Raises:
        SampledSoftmaxError: on a bad shape or value (the message names the argument).
        TypeError: on a wrong type or dtype.

    Example:
        >>> import torch
        >>> from sampled_softmax.torch import sampled_softmax_loss
        >>> W, b = torch.eye(3, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
        >>> h = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
        >>> sv = (torch.tensor([1, 2]), torch.ones(1, 1), torch.ones(2))
        >>> sampled_softmax_loss(W, b, torch.tensor([0]), h, 2, 3, sampled_values=sv)
        tensor([1.4076], dtype=torch.float64)
    """
    V.check_choice("implementation", implementation, IMPLEMENTATIONS)
    if isinstance(inputs, torch.Tensor) and _autocast_on(inputs.device.type):
        # As F.cross_entropy under autocast: the loss is computed (and returned) in float32
        # whatever the autocast dtype, on every path, so forward and backward agree on dtypes.
        arguments = dict(locals())
        with torch.autocast(inputs.device.type, enabled=False):
            return sampled_softmax_loss(**arguments)
    if _ops.traced(inputs):
        return _traced_sampled_softmax_loss(**locals())
    _check_not_transformed(inputs, weights)
    if sampled_values is None and implementation != "python":
        result = _compiled_draw(weights, biases, labels, inputs, num_sampled, num_classes, num_true,
                                remove_accidental_hits, sampler, reduction, ignore_index, label_smoothing,
                                generator, partition_strategy, subtract_log_q, sparse, return_log_prob,
                                implementation)
        if result is not None:
            return result
    check_generator(generator)
    _check_sparse_bias(biases, sparse)
    shards, biases, y, h, lead, num_classes, offsets, valid, label_smoothing = _prepare(
        weights, biases, labels, inputs, num_classes, num_true, ignore_index, label_smoothing,
        reduction, partition_strategy,
    )
    y = y.long()
    n, t = y.shape
    ext = _choose_compiled(implementation, shards, biases, h, t, valid, label_smoothing)
    bias_arg = None if ext is None else (h.new_empty(0) if biases is None else biases)
    if sampled_values is None:
        sampler = _sampler_for(sampler, num_classes)
        # The raw labels: a learned sampler must not count ignored labels (as class 0).
        draw = sampler._draw_values if type(sampler).forward is CandidateSampler.forward else (
            lambda *a: sampler(a[0], a[1], generator=a[2], ignore_index=a[3]))
        cand, true_count, samp_count = draw(y, num_sampled, generator, None if valid is None else ignore_index)
        padded = sampler.draw == "unique_exact"
        if subtract_log_q and sampler.support < sampler.num_classes:
            _check_labels_can_be_drawn(y, valid, true_count, sampler)
    else:
        cand, true_count, samp_count, padded = _check_sampled_values(sampled_values, num_sampled, num_classes, y, valid, h.device)

    y_safe = y if valid is None else torch.where(valid, y, 0)
    cdt = _compute_dtype(h.dtype)
    if h.device.type == "cpu" and cand.device.type == "cpu":
        ids, logq, removed = _columns_numpy(y_safe, valid, cand, true_count, samp_count, cdt,
                                            remove_accidental_hits, subtract_log_q, padded)
    else:
        ids, logq, removed = _columns_torch(y_safe, valid, cand, true_count, samp_count, cdt,
                                            remove_accidental_hits, subtract_log_q, padded)
    if ext is not None:
        loss = ext.sampled_softmax_core(h, shards[0], bias_arg, ids, logq,
                                        h.new_empty(0, dtype=torch.bool) if removed is None else removed, bool(sparse))
        logp = -loss  # one label, no smoothing: the loss is -log p(target)
    else:
        spec = _Spec(t, offsets, partition_strategy, label_smoothing, bool(sparse))
        loss, logp = _SampledSoftmax.apply(h, ids, logq, valid, removed, spec, biases, *shards)
    return _finish(loss, logp, valid, reduction, lead, return_log_prob)


def _traced_sampled_softmax_loss(weights, biases, labels, inputs, num_sampled, num_classes, num_true,
                                 sampled_values, remove_accidental_hits, sampler, reduction, ignore_index,
                                 label_smoothing, generator, partition_strategy, subtract_log_q, sparse,
                                 return_log_prob, implementation):
    """:func:`sampled_softmax_loss` for a traced call (torch.compile, torch.export, meta or fake
    tensors): the same checks of types, shapes and settings; every step that reads values
    (label and ``sampled_values`` checks, the draw, the masks, the loss) is one of the custom
    operators of :mod:`._ops`. A ``generator`` or a sampler of your own is not an operator's
    argument: under torch.compile such a call runs eagerly (a graph break)."""
    arguments = dict(locals())
    table = None if sampled_values is not None or isinstance(sampler, str) else sampler_tables(sampler)
    custom_sampler = sampled_values is None and not isinstance(sampler, str) and table is None
    if (generator is not None or custom_sampler) and torch.compiler.is_compiling():
        return _eager_sampled_softmax_loss(**arguments)
    check_generator(generator)
    _check_sparse_bias(biases, sparse)
    shards, biases, y, h, lead, num_classes, offsets, _, label_smoothing = _prepare(
        weights, biases, labels, inputs, num_classes, num_true, ignore_index, label_smoothing,
        reduction, partition_strategy, check_values=False,
    )
    if sparse and len(shards) > 1:
        raise SampledSoftmaxError(
            "`sparse=True` with sharded `weights` cannot be traced (torch.compile, torch.export, meta tensors): "
            "each shard's rows are a data-dependent selection. Use one table, or sparse=False")
    n, t = y.shape
    kind, draw, support, weights_t, cdf, counts = "log_uniform", "unique", num_classes, None, None, None
    cand = true_count = samp_count = None
    if sampled_values is None:
        if isinstance(sampler, str):
            V.check_choice("sampler", sampler, ("uniform", "log_uniform"))
            kind = sampler
        else:
            make_sampler(sampler, num_classes)  # the eager call's check of the sampler's classes
            kind, draw, support, weights_t, cdf, counts = table
        check_num_sampled(num_sampled, num_classes, unique=draw == "unique", support=support)
    else:
        # No comprehension here: it would make `h` a closure cell, which `locals()` above reads
        # before it is set (torch.compile refuses that).
        cand, true_count, samp_count = V.check_sampled_values_triple(sampled_values)
        cand, true_count, samp_count = (torch.as_tensor(cand, device=h.device), torch.as_tensor(
            true_count, device=h.device), torch.as_tensor(samp_count, device=h.device))
        _check_tensor("sampled_values[0]", cand, floating=False)
        V.check_sampled_values_shapes(tuple(cand.shape), tuple(true_count.shape), tuple(samp_count.shape),
                                      num_sampled, n, t)
        cand, true_count = cand.long(), _true_count_rows(true_count, n, t)
    update_counts = kind == "learned_unigram" and sampler.training
    ids, logq, removed, keep = _ops.columns(
        y.long(), num_sampled, num_classes, kind, draw, support, weights_t, cdf, counts, update_counts, cand,
        true_count, samp_count, bool(remove_accidental_hits), bool(subtract_log_q), ignore_index,
        _compute_dtype(h.dtype))
    loss, logp, _, _, _ = _ops.loss(h, shards, biases, ids, logq, keep, removed, t, list(offsets),
                                    partition_strategy, label_smoothing, bool(sparse), implementation)
    return _finish(loss, logp, keep, reduction, lead, return_log_prob)


@torch.compiler.disable
def _eager_sampled_softmax_loss(**arguments):
    return sampled_softmax_loss(**arguments)


def _finish(loss, logp, valid, reduction, lead, return_log_prob):
    live = None if valid is None else valid.any(1)
    loss = _reduce(loss, live, reduction, lead)
    if return_log_prob:
        return loss, logp.reshape(lead)
    return loss


# The samplers the compiled code draws from itself (stateless, with a closed-form inverse CDF),
# by name and by class, and the label dtypes it reads.
_COMPILED_DISTRIBUTIONS = {"uniform": 0, "log_uniform": 1, UniformSampler: 0, LogUniformSampler: 1}
_COMPILED_LABEL_DTYPES = (torch.int64, torch.int32)


def _compiled_draw(weights, biases, labels, inputs, num_sampled, num_classes, num_true, remove_accidental_hits,
                   sampler, reduction, ignore_index, label_smoothing, generator, partition_strategy,
                   subtract_log_q, sparse, return_log_prob, implementation):
    """The common case in one compiled call (draw, hit mask, log Q, loss), skipping the general
    argument handling, whose per-call cost is a tenth of the whole loss.

    It takes only calls that are valid and that the compiled code computes exactly as the
    general path would (one CPU table, float32/float64 of one dtype, ``num_true=1``, no
    smoothing, a uniform or log-uniform sampler, no label equal to ``ignore_index``); for
    anything else it returns None having drawn nothing, and the general path handles the call
    or raises its error.
    """
    kind = _COMPILED_DISTRIBUTIONS.get(sampler if isinstance(sampler, str) else type(sampler))
    if kind is None or not (isinstance(weights, torch.Tensor) and isinstance(inputs, torch.Tensor)
                            and isinstance(labels, torch.Tensor)):
        return None
    draw = "unique" if isinstance(sampler, str) else sampler.draw
    dtype = inputs.dtype
    if (dtype not in (torch.float32, torch.float64) or weights.dtype != dtype or weights.dim() != 2
            or inputs.dim() < 2 or inputs.shape[-1] != weights.shape[1] or weights.shape[0] != num_classes
            or inputs.device.type != "cpu" or weights.device.type != "cpu" or labels.device.type != "cpu"):
        return None
    if biases is not None and not (isinstance(biases, torch.Tensor) and biases.dtype == dtype
                                   and biases.shape == (num_classes,) and biases.device.type == "cpu"):
        return None
    lead = inputs.shape[:-1]
    if (labels.dtype not in _COMPILED_LABEL_DTYPES or type(num_true) is not int or num_true != 1
            or not (labels.shape == lead or labels.shape == lead + (1,))):
        return None
    if (type(num_sampled) is not int or num_sampled < 1 or (draw == "unique" and num_sampled > num_classes)
            or type(label_smoothing) not in (int, float) or label_smoothing != 0
            or reduction not in V.REDUCTIONS or partition_strategy not in V.PARTITION_STRATEGIES
            or not (ignore_index is None or (type(ignore_index) is int and -2**63 <= ignore_index < 2**63))
            or not (generator is None or (isinstance(generator, torch.Generator) and generator.device.type == "cpu"))
            or (not isinstance(sampler, str) and sampler.num_classes != num_classes)):
        return None
    n = math.prod(lead)
    ext = None if n == 0 else _compiled.extension()
    if ext is None:
        return None
    h = inputs if inputs.dim() == 2 else inputs.reshape(n, inputs.shape[-1])
    try:
        loss = ext.sampled_softmax_sampled(h, weights, inputs.new_empty(0) if biases is None else biases,
                                           labels.reshape(n), num_sampled, kind, DRAWS.index(draw), generator,
                                           bool(remove_accidental_hits), bool(subtract_log_q), bool(sparse),
                                           ignore_index, unique_draw_limit(num_sampled))
    except ValueError as e:  # the unique draw's bound: the Python path's error, word for word
        found = re.search(r"unique draw stopped: num_sampled=(\d+) num_tries=(\d+) found=(\d+)", str(e))
        if found is None:
            raise
        raise unique_draw_error(*(int(v) for v in found.groups())) from None
    if loss is None:  # a label out of range or ignored: nothing was drawn
        return None
    return _finish(loss, -loss if return_log_prob else None, None, reduction, lead, return_log_prob)


def _choose_compiled(implementation, shards, biases, h, t, valid, label_smoothing):
    """The compiled extension, or None for the Python path (see ``implementation``)."""
    if implementation == "python":
        return None
    dtype = h.dtype
    why = None
    if h.device.type != "cpu" or shards[0].device.type != "cpu":
        why = f"it runs on the CPU; received inputs on {h.device}"
    elif len(shards) > 1:
        why = "it takes one weight table, not shards"
    elif t != 1:
        why = f"it takes num_true=1; received {t}"
    elif valid is not None:
        why = "it takes no ignored labels (ignore_index present in labels)"
    elif label_smoothing:
        why = f"it takes label_smoothing=0; received {label_smoothing}"
    elif dtype not in (torch.float32, torch.float64) or shards[0].dtype != dtype or (
            biases is not None and biases.dtype != dtype):
        why = (f"it takes float32 or float64 inputs, weights and biases of one dtype; received "
               f"{dtype}, {shards[0].dtype}, {None if biases is None else biases.dtype}")
    return _compiled.choose(implementation, why)


def _full_table(shards, strategy):
    if len(shards) == 1:
        return shards[0]
    if strategy == "div":
        return torch.cat(shards)
    n = len(shards)
    num_classes = sum(w.shape[0] for w in shards)
    ids = torch.arange(num_classes, device=shards[0].device)
    order = torch.cat([ids[p::n] for p in range(n)])  # class id of each row of cat(shards)
    return torch.cat(shards)[torch.argsort(order)]


def full_logits(weights, biases, inputs, *, partition_strategy="div") -> torch.Tensor:
    """Exact logits ``inputs @ W^T + b``, ``[..., V]``, from one table or shards."""
    shards = _shards(weights)
    if len(shards) > 1:
        V.shard_layout([w.shape[0] for w in shards], sum(w.shape[0] for w in shards), partition_strategy)
    W = _full_table(shards, partition_strategy)
    cdt = _compute_dtype(inputs.dtype)
    return torch.nn.functional.linear(inputs.to(cdt), W.to(cdt), None if biases is None else biases.to(cdt))


def full_softmax_loss(
    weights, biases, labels, inputs, *, reduction="none", ignore_index=None, label_smoothing=0.0,
    partition_strategy="div", return_log_prob=False,
):
    r"""Exact softmax cross-entropy over all ``V`` classes, for evaluation.

    .. math:: \ell_i = -\frac{1 - \epsilon}{T}\sum_j \log p(y_{ij} \mid h_i) - \frac{\epsilon}{V}\sum_k \log p(k \mid h_i),
        \qquad p(\cdot \mid h_i) = \mathrm{softmax}(W h_i + b)

    Same arguments and conventions as :func:`sampled_softmax_loss` (``T = 1`` and ``eps``
    match ``F.cross_entropy``). ``return_log_prob`` also returns the mean
    ``log p(y_ij | h_i)`` over the row's kept labels.

    Example:
        >>> import torch
        >>> from sampled_softmax.torch import full_softmax_loss
        >>> W = torch.eye(3, 2, dtype=torch.float64)
        >>> full_softmax_loss(W, None, torch.tensor([0]), torch.tensor([[1.0, 2.0]], dtype=torch.float64))
        tensor([1.4076], dtype=torch.float64)
    """
    _check_tensor("labels", labels, floating=False)
    _check_tensor("inputs", inputs, floating=True)
    traced = _ops.traced(inputs)
    if not traced:
        _check_not_transformed(inputs, weights)
    shards, biases, y, h, lead, num_classes, _, valid, label_smoothing = _prepare(
        weights, biases, labels, inputs, None, labels.shape[-1] if labels.dim() == inputs.dim() else 1,
        ignore_index, label_smoothing, reduction, partition_strategy, check_values=not traced,
    )
    y = y.long()
    if traced:  # the range check as an operator; every label's mask, as values are unknown
        y = _ops.checked_labels(y, num_classes, ignore_index)
        valid = None if ignore_index is None else y != ignore_index
    # The [N, V] logits follow autocast when it is on (the matmul is the cost); the softmax and
    # the loss are float32 or wider, as in F.cross_entropy under autocast.
    logits = full_logits(shards, biases, h, partition_strategy=partition_strategy)
    device_type = h.device.type
    with torch.autocast(device_type, enabled=False) if _autocast_on(device_type) else contextlib.nullcontext():
        return _full_softmax_from_logits(logits, y, valid, label_smoothing, reduction, lead, return_log_prob)


def _full_softmax_from_logits(logits, y, valid, label_smoothing, reduction, lead, return_log_prob):
    if logits.dtype in _LOW_PRECISION:
        logits = logits.float()
    logp_all = torch.log_softmax(logits, dim=-1)
    n, t = y.shape
    y_safe = y if valid is None else torch.where(valid, y, 0)
    picked = logp_all.gather(1, y_safe)
    if valid is None:
        logp = picked.mean(1)
        live = None
    else:
        n_true = valid.sum(1)
        live = n_true > 0
        logp = torch.where(live, (picked * valid).sum(1) / n_true.clamp(min=1), 0.0)
    loss = -logp
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * logp_all.mean(1)
        if live is not None:
            loss = torch.where(live, loss, 0.0)
    loss = _reduce(loss, live, reduction, lead)
    if return_log_prob:
        return loss, logp.reshape(lead)
    return loss
