"""The sampled loss as PyTorch custom operators (``torch.library``), for what traces a program
instead of running it: ``torch.compile`` (a whole training step in one graph), meta and fake
tensors, and ``torch.export``.

A traced program cannot read tensor values on the host, and the loss has to: to check the
labels, to draw candidates until ``S`` distinct ones are found, to build the accidental-hit
mask. Each such step is an operator whose kernel runs the eager code and whose fake kernel
gives only shapes, which are static:

* ``sampled_softmax::columns``: labels (``[N, T]``) and the sampler's tables, or given
  ``sampled_values`` -> column ids ``[N*T + S]``, ``log E`` ``[N*T + S]``, the removed-candidate
  mask ``[N, S]`` and the kept-label mask ``[N, T]``, after the same checks as the eager call.
  It updates a learned sampler's counts in place (declared as mutated).
* ``sampled_softmax::loss``: the forward (the compiled core where it applies, else the Python
  one), with ``sampled_softmax::loss_backward`` as its registered autograd formula; the row
  gradients are scattered into the table (dense, or sparse COO rows) by traceable code.
* ``sampled_softmax::checked_labels``: the labels after the range check (the exact loss).
* ``sampled_softmax::checked_values``: ``log_q``, ``sample_weight``, a temperature or ids after
  their value check (the in-batch loss, the frequency estimators).

The eager call does not go through them: it calls the same kernels directly, without the
dispatcher's per-call cost. Ignored labels read the first candidate's row here (the eager path
drops their rows from a sparse gradient, a data-dependent shape): that row is touched anyway,
so the table's gradient, dense or coalesced, and the set of touched rows are the same.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _validation as V
from .. import frequency
from . import _compiled
from ._autograd import HeadKind, _check_once_differentiable, _targets, loss_backward as _loss_backward, loss_forward
from ._columns import candidate_columns as _candidate_columns
from ._prepare import _compute_dtype, _check_label_values, _check_labels_can_be_drawn, _check_sampled_values
from ._rows import _scatter_rows, _scatter_to_shards, _Spec

_FakeTensor = torch._subclasses.FakeTensor


def traced(x) -> bool:
    """True when the call is being traced rather than run: under torch.compile / torch.export,
    or on meta or fake tensors."""
    if torch.compiler.is_compiling():
        return True
    return isinstance(x, torch.Tensor) and (x.is_meta or isinstance(x, _FakeTensor))


# ---------------------------------------------------------------------------------------------
# sampled_softmax::checked_labels


@torch.library.custom_op("sampled_softmax::checked_labels", mutates_args=())
def checked_labels(labels: Tensor, num_classes: int, ignore_index: Optional[int]) -> Tensor:
    """``labels`` (a copy) after checking them against ``[0, num_classes)`` or ``ignore_index``."""
    _check_label_values(labels, num_classes, ignore_index)
    return labels.clone()


@checked_labels.register_fake
def _(labels, num_classes, ignore_index):
    return torch.empty_like(labels)


# ---------------------------------------------------------------------------------------------
# sampled_softmax::checked_values: the value checks of the retrieval losses and the frequency
# estimators, as an operator (a traced call cannot read values; the operator reads them when
# the graph runs, and raises the eager call's error)


def _check_log_q(x):
    if x.numel():
        V.check_log_q_values(float(x.min()), float(x.max()), bool(torch.isfinite(x).all()))


def _check_sample_weight(x):
    if x.numel():
        V.check_sample_weight_values(float(x.min()), bool(torch.isfinite(x).all()))


def _check_temperature(x):
    V.check_temperature_value(float(x))


def _check_ids(x):
    if x.numel():
        frequency.check_ids_values(int(x.min()))


VALUE_CHECKS = {"log_q": _check_log_q, "sample_weight": _check_sample_weight, "temperature": _check_temperature,
                "ids": _check_ids}


@torch.library.custom_op("sampled_softmax::checked_values", mutates_args=())
def _checked_values_op(x: Tensor, kind: str) -> Tensor:
    VALUE_CHECKS[kind](x.detach())
    return x.clone()


@_checked_values_op.register_fake
def _(x, kind):
    return torch.empty_like(x)


_checked_values_op.register_autograd(lambda ctx, g: (g, None))


def checked_values(x: Tensor, kind: str) -> Tensor:
    """``x`` after the check ``kind`` of :data:`VALUE_CHECKS`: read now when the call runs, by an
    operator when it is traced (its error raised when the graph runs)."""
    if traced(x):
        return _checked_values_op(x, kind)
    VALUE_CHECKS[kind](x.detach())
    return x


# ---------------------------------------------------------------------------------------------
# sampled_softmax::columns


# Tagged as a seeded random op: never constant-folded nor merged with another call.
@torch.library.custom_op("sampled_softmax::columns", mutates_args=("counts",),
                         tags=(torch.Tag.nondeterministic_seeded,))
def columns(
    labels: Tensor, weights: Optional[Tensor], cdf: Optional[Tensor], counts: Optional[Tensor],
    candidates: Optional[Tensor], true_expected_count: Optional[Tensor], sampled_expected_count: Optional[Tensor],
    *, num_sampled: int, num_classes: int, kind: str, draw: str, support: int, update_counts: bool,
    remove_accidental_hits: bool, subtract_log_q: bool, ignore_index: Optional[int], dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from .samplers import sampler_from_tables

    y = labels
    n, t = y.shape
    valid = _check_label_values(y, num_classes, ignore_index)
    if candidates is None:
        sampler = sampler_from_tables(kind, num_classes, draw, support, weights, cdf, counts)
        sampler.train(update_counts)
        cand, true_count, samp_count = sampler._draw_values(y, num_sampled, None,
                                                            None if valid is None else ignore_index)
        padded = draw == "unique_exact"
        if subtract_log_q and support < num_classes:
            _check_labels_can_be_drawn(y, valid, true_count, sampler)
    else:
        cand, true_count, samp_count, padded = _check_sampled_values(
            (candidates, true_expected_count, sampled_expected_count), num_sampled, num_classes, y, valid, y.device)
    fill = cand[:1] if cand.numel() else y.new_zeros(1)
    y_safe = y if valid is None else torch.where(valid, y, fill)
    ids, log_q, removed = _candidate_columns(y_safe, valid, cand, true_count, samp_count, dtype,
                                            remove_accidental_hits=remove_accidental_hits,
                                            subtract_log_q=subtract_log_q, padded=padded)
    s = cand.shape[0]
    removed = torch.zeros(n, s, dtype=torch.bool) if removed is None else removed.contiguous()
    keep = torch.ones(n, t, dtype=torch.bool) if valid is None else valid.clone()
    return (ids.to(y.device), log_q.to(y.device), removed.to(y.device), keep.to(y.device))


@columns.register_fake
def _(labels, weights, cdf, counts, candidates, true_expected_count, sampled_expected_count, *, num_sampled,
      num_classes, kind, draw, support, update_counts, remove_accidental_hits, subtract_log_q, ignore_index, dtype):
    n, t = labels.shape
    s = num_sampled if candidates is None else candidates.shape[0]
    return (labels.new_empty(n * t + s, dtype=torch.int64), labels.new_empty(n * t + s, dtype=dtype),
            labels.new_empty((n, s), dtype=torch.bool), labels.new_empty((n, t), dtype=torch.bool))


# ---------------------------------------------------------------------------------------------
# sampled_softmax::loss and its backward


def _core(h, shards, bias, num_true, keep, label_smoothing, implementation):
    """The compiled core when it takes this call (as the eager path decides), else None."""
    from . import _dispatch

    why = _dispatch.loss_obstacle(h.device.type, len(shards), num_true, keep is not None, label_smoothing,
                                  (h.dtype, shards[0].dtype, None if bias is None else bias.dtype))
    return _dispatch.compiled(implementation, why)


@torch.library.custom_op("sampled_softmax::loss", mutates_args=())
def loss(
    h: Tensor, shards: list[Tensor], bias: Optional[Tensor], ids: Tensor, log_q: Tensor, valid: Tensor,
    removed: Tensor, *, num_true: int, offsets: list[int], strategy: str, label_smoothing: float, sparse: bool,
    implementation: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(loss [N], logp [N], logp_all [N, T + S], rows [N*T + S, D], route)``; ``route`` (0-d)
    says which kernel ran (1: the compiled core), for the backward to use the same."""
    keep = None if bool(valid.all()) else valid
    ext = _core(h, shards, bias, num_true, keep, label_smoothing, implementation)
    if ext is not None:
        loss_, logp_all, rows = ext.core_forward(h, shards[0], h.new_empty(0) if bias is None else bias, ids, log_q,
                                                 removed, int(HeadKind.softmax))
        return loss_, loss_.neg(), logp_all, rows, torch.ones((), dtype=torch.int64)  # on the CPU: no sync
    spec = _Spec(num_true, tuple(offsets), strategy, label_smoothing, sparse)
    removed_cand = removed if bool(removed.any()) else None
    loss_, logp, _, rows, logp_all, _ = loss_forward(h, ids, log_q, keep, removed_cand, spec, bias, shards)
    return loss_, logp.clone(), logp_all, rows, torch.zeros((), dtype=torch.int64)


@loss.register_fake
def _(h, shards, bias, ids, log_q, valid, removed, *, num_true, offsets, strategy, label_smoothing, sparse,
      implementation):
    n, m = h.shape[0], ids.shape[0]
    cdt = _compute_dtype(h.dtype)
    width = num_true + m - n * num_true
    return (h.new_empty(n, dtype=cdt), h.new_empty(n, dtype=cdt), h.new_empty((n, width), dtype=cdt),
            h.new_empty((m, h.shape[1]), dtype=cdt), torch.empty((), dtype=torch.int64, device="cpu"))


@torch.library.custom_op("sampled_softmax::loss_backward", mutates_args=())
def loss_backward(
    grads: Tensor, h: Tensor, rows: Tensor, ids: Tensor, logp_all: Tensor, valid: Tensor, removed: Tensor,
    route: Tensor, *, num_true: int, label_smoothing: float, need_h: bool, need_w: bool, need_b: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(d_h [N, D], d_rows [N*T + S, D], d_b_rows [N*T + S])``, empty where not needed;
    ``grads`` ``[2, N]``: the gradients of the loss and of ``logp``."""
    cdt = _compute_dtype(h.dtype)
    g_loss, g_logp = grads[0], grads[1]
    if int(route):
        d_h, d_rows, d_b_rows = _compiled.extension().core_backward(g_loss - g_logp, h, rows, ids, logp_all,
                                                                     int(HeadKind.softmax), need_h, need_w, need_b)
    else:
        keep = None if bool(valid.all()) else valid
        n, t = valid.shape
        s = logp_all.shape[1] - t
        targets = None
        if keep is not None or label_smoothing != 0.0:
            keep_cand = ~removed if bool(removed.any()) else None
            targets = _targets(keep, keep_cand, n, t, s, label_smoothing, cdt, h.device)
        hc = h if h.dtype == cdt else h.to(cdt)
        d_h, d_rows, d_b_rows = _loss_backward(g_loss, g_logp, hc, rows, logp_all, keep, targets, num_true,
                                                 need_h, need_w, need_b)
    d_h = h.new_empty(0) if d_h is None else d_h.to(h.dtype)
    d_rows = rows.new_empty(0) if d_rows is None else d_rows
    d_b_rows = rows.new_empty(0) if d_b_rows is None else d_b_rows
    return d_h, d_rows, d_b_rows


@loss_backward.register_fake
def _(grads, h, rows, ids, logp_all, valid, removed, route, *, num_true, label_smoothing, need_h,
      need_w, need_b):
    return (h.new_empty(h.shape if need_h else (0,)), rows.new_empty(rows.shape if need_w else (0,)),
            rows.new_empty(rows.shape[:1] if need_b else (0,)))


def _setup_context(ctx, inputs, keyword_only_inputs, output):
    h, shards, bias, ids, log_q, valid, removed = inputs
    _, _, logp_all, rows, route = output
    ctx.save_for_backward(h, rows, ids, logp_all, valid, removed, route, bias, *shards)
    settings = keyword_only_inputs
    ctx.settings = (settings["num_true"], tuple(settings["offsets"]), settings["strategy"],
                    settings["label_smoothing"], settings["sparse"])


def _backward(ctx, g_loss, g_logp, _g_logp_all, _g_rows, _g_route):
    _check_once_differentiable()
    h, rows, ids, logp_all, valid, removed, route, bias, *shards = ctx.saved_tensors
    num_true, offsets, strategy, eps, sparse = ctx.settings
    need_h, need_shards, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
    needs_w = list(need_shards) if isinstance(need_shards, (list, tuple)) else [bool(need_shards)] * len(shards)
    need_b = bool(need_b) and bias is not None
    g_loss = torch.zeros_like(logp_all[:, 0]) if g_loss is None else g_loss
    g_logp = torch.zeros_like(logp_all[:, 0]) if g_logp is None else g_logp
    d_h, d_rows, d_b_rows = loss_backward(
        torch.stack([g_loss, g_logp]), h, rows, ids, logp_all, valid, removed, route, num_true=num_true,
        label_smoothing=eps, need_h=bool(need_h), need_w=any(needs_w), need_b=need_b)
    spec = _Spec(num_true, offsets, strategy, eps, sparse)
    d_shards = _scatter_to_shards(shards, ids, d_rows, spec, None, needs_w) if any(needs_w) else [None] * len(shards)
    d_bias = None
    if need_b:
        d_bias = _scatter_rows(tuple(bias.shape), ids, d_b_rows.to(bias.dtype), sparse, None)
    # One entry per positional input, lists as lists (h, shards, bias, ids, log_q, keep, removed).
    return d_h if need_h else None, d_shards, d_bias, None, None, None, None


torch.library.register_autograd("sampled_softmax::loss", _backward, setup_context=_setup_context)
