"""Stages 2 and 3 of the pipeline, and the autograd Function that joins them.

* :func:`corrected_logits_forward` / :func:`corrected_logits_backward`: the corrected logits
  ``o_ik = h_i . W_k + b_k - log E(k)`` of every row's true columns and candidates (removed
  columns at ``-inf``), from the gathered rows, and the gradients of ``h``, the rows and the
  biases from ``d loss / d o``. Shared by every head.
* A head turns the ``[N, T + S]`` logits into per-row losses and, backward, gives
  ``d loss / d o``. :data:`softmax_head` is the sampled softmax cross-entropy; a new loss (NCE's
  sigmoid, the in-batch softmax) is a new :class:`Head`, nothing more.
* :class:`SampledLoss`: the ``autograd.Function`` that runs rows → logits → head forward and
  head → logits → scatter backward (dense, or sparse rows without those of ignored labels).

Nothing here reads labels or draws candidates: that is stage 1 (:mod:`._columns`).
"""

from __future__ import annotations

import enum
import math
from typing import Callable, NamedTuple

import torch

from ._prepare import _compute_dtype
from ._rows import _gather_rows, _scatter_rows, _scatter_to_shards, _Spec

ONCE_DIFFERENTIABLE = (
    "sampled_softmax_loss is differentiable once: its backward is explicit, so create_graph=True "
    "(double backward, e.g. a gradient penalty through it) is not supported")


def _check_once_differentiable(loss: str = "sampled_softmax_loss") -> None:
    # Autograd runs a backward with grad mode on only for create_graph=True.
    if torch.is_grad_enabled():
        raise RuntimeError(ONCE_DIFFERENTIABLE.replace("sampled_softmax_loss", loss, 1))


# ---------------------------------------------------------------------------------------------
# Stage 2: corrected logits


def corrected_logits_forward(h, ids, log_q, valid, removed_cand, spec: _Spec, bias, shards, row_log_q=None):
    """``(logits [N, T + S], hc, rows)``: true columns first, removed columns ``-inf``;
    ``row_log_q [N]`` (``exclude_true``'s per-row term), if given, is subtracted from each row's
    candidate columns.

    ``hc`` and ``rows`` are the hidden states and the gathered rows ``[N*T + S, D]`` in the
    compute dtype (float32 for float16/bfloat16), kept for :func:`corrected_logits_backward`.
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
    corr = log_q.neg() if bias is None else bias.index_select(0, ids).to(cdt).sub_(log_q)
    corr_true, corr_cand = corr.split([nt, s])
    sl = torch.addmm(corr_cand.unsqueeze(0), hc, w_cand.t())
    if row_log_q is not None:
        sl.sub_(row_log_q.unsqueeze(1))
    if t == 1:
        tl = torch.linalg.vecdot(hc, w_true).add_(corr_true).unsqueeze_(1)
    else:
        tl = torch.bmm(w_true.view(n, t, -1), hc.unsqueeze(2)).squeeze(2).add_(corr_true.view(n, t))
    if removed_cand is not None:
        sl.masked_fill_(removed_cand, -math.inf)
    if valid is not None:
        tl.masked_fill_(~valid, -math.inf)
    return torch.cat([tl, sl], 1), hc, rows


def corrected_logits_backward(g, hc, rows, num_true, need_h, need_w, need_b):
    """From ``g = d loss / d logits [N, T + S]``: ``(d_h, d_rows [N*T + S, D], d_b_rows
    [N*T + S])`` in the compute dtype (None where not needed); ``d_rows`` is the gradient of
    each gathered row, to be scattered into the table."""
    n, t = g.shape[0], num_true
    nt, d, s = n * t, hc.shape[1], g.shape[1] - t
    g_true, g_cand = g.split([t, s], 1)
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


# ---------------------------------------------------------------------------------------------
# Stage 3: heads


class HeadKind(enum.IntEnum):
    """The heads the compiled core computes, by :attr:`Head.name`; it takes them by these
    values (``csrc/common.h``)."""

    softmax = 0
    sigmoid = 1


class Head(NamedTuple):
    """A loss over the row logits.

    ``forward(logits, valid, removed_cand, spec) -> (loss [N], logp [N], saved)`` and
    ``backward(g_loss, g_logp, saved, valid, spec) -> d loss / d logits [N, T + S]``
    (``g_loss``/``g_logp`` may be None). ``logp`` is the head's estimate of the targets'
    log-probability (``return_log_prob``).
    """

    name: str
    forward: Callable
    backward: Callable


def _softmax_forward(logits, valid, removed_cand, spec: _Spec):
    n, t = logits.shape[0], spec.num_true
    s = logits.shape[1] - t
    # log_softmax is one fused, stable pass; backward needs only its exp.
    logp_all = torch.log_softmax(logits, 1)
    targets = None
    if valid is None and spec.label_smoothing == 0.0:
        # Plain targets 1/T on the true columns, all of them kept.
        logp = logp_all[:, 0] if t == 1 else logp_all.narrow(1, 0, t).mean(1)
        loss = logp.neg()
    else:
        if valid is not None:
            # A row with every column removed (only an ignored row) gives nan: make its
            # probabilities exactly 0 instead.
            logp_all.nan_to_num_(nan=-math.inf)
        keep_cand = None if removed_cand is None else ~removed_cand
        targets = _targets(valid, keep_cand, n, t, s, spec.label_smoothing, logits.dtype, logits.device)
        lp0 = logp_all.masked_fill(logp_all == -math.inf, 0.0)
        logp = (lp0 * targets[1]).sum(1)
        loss = logp.neg() if targets[0] is targets[1] else (lp0 * targets[0]).sum(1).neg_()
        if valid is not None:
            live = valid.any(1)
            loss, logp = torch.where(live, loss, 0.0), torch.where(live, logp, 0.0)
    return loss, logp, (logp_all, targets)


def _softmax_backward(g_loss, g_logp, saved, valid, spec: _Spec):
    logp_all, targets = saved
    t = spec.num_true
    # d loss / d logits = p - target_smoothed;  d logp / d logits = target_unsmoothed - p.
    a = None if g_loss is None else g_loss.to(logp_all.dtype).unsqueeze(1)
    c = None if g_logp is None else g_logp.to(logp_all.dtype).unsqueeze(1)
    coef = a if c is None else (c.neg() if a is None else a - c)
    g = logp_all.exp().mul_(coef)  # coef * softmax
    if targets is None:  # target 1/T on each true column for both outputs
        g.narrow(1, 0, t).sub_(coef if t == 1 else coef / t)
    else:
        t_smooth, t_plain = targets
        if a is not None:
            g.sub_(a * t_smooth)
        if c is not None:
            g.add_(c * t_plain)
        if valid is not None:
            g.mul_(valid.any(1, keepdim=True))  # ignored rows: exactly no gradient
    return g


softmax_head = Head("softmax", _softmax_forward, _softmax_backward)


def _sigmoid_columns(logits, valid, removed_cand, spec: _Spec):
    """``(z, target, keep, live)``: the kept logits (0 where removed), the targets ``1 / T_i`` on
    kept true columns, the keep mask and whether each row has a kept label."""
    n, t = logits.shape[0], spec.num_true
    s = logits.shape[1] - t
    kt = logits.new_ones(n, t, dtype=torch.bool) if valid is None else valid
    kc = logits.new_ones(n, s, dtype=torch.bool) if removed_cand is None else ~removed_cand
    keep = torch.cat([kt, kc], 1)
    n_true = kt.sum(1, keepdim=True)
    target = torch.cat([kt.to(logits.dtype) / n_true.clamp(min=1), logits.new_zeros(n, s)], 1)
    return torch.where(keep, logits, 0.0), target, keep, (n_true > 0).to(logits.dtype)


def _sigmoid_forward(logits, valid, removed_cand, spec: _Spec):
    z, target, keep, live = _sigmoid_columns(logits, valid, removed_cand, spec)
    # max(z, 0) - z t + log(1 + exp(-|z|)) per kept column: the stable sigmoid cross-entropy.
    per_column = torch.nn.functional.binary_cross_entropy_with_logits(z, target, reduction="none")
    loss = torch.where(keep, per_column, 0.0).sum(1) * live[:, 0]
    # NCE has no estimate of log p(target): the second output is zeros.
    return loss, torch.zeros_like(loss), (z, target, keep, live)


def _sigmoid_backward(g_loss, g_logp, saved, valid, spec: _Spec):
    z, target, keep, live = saved
    g = torch.where(keep, torch.sigmoid(z) - target, 0.0).mul_(live)
    return g if g_loss is None else g.mul_(g_loss.to(g.dtype).unsqueeze(1))


# NCE's head (Gutmann & Hyvarinen 2010; tf.nn.nce_loss), and negative sampling's over logits
# without the -log E correction: each kept column a logistic classification, target 1 / T_i on
# the kept true columns, 0 on the candidates; the row's loss is their sum.
sigmoid_head = Head("sigmoid", _sigmoid_forward, _sigmoid_backward)


def gbce_head(beta: float) -> Head:
    """gBCE's head (Petrov & Macdonald 2023): the sigmoid head with each true column's term
    ``-target log s(o)`` multiplied by ``beta`` (binary cross-entropy against ``s(o)^beta``);
    ``d loss / d o = s(o) (1 + (beta - 1) target) - beta target`` on kept columns. Python
    route only (the compiled core computes the softmax and sigmoid heads)."""

    def forward(logits, valid, removed_cand, spec: _Spec):
        z, target, keep, live = _sigmoid_columns(logits, valid, removed_cand, spec)
        pos_weight = torch.tensor(beta, dtype=logits.dtype, device=logits.device)
        per_column = torch.nn.functional.binary_cross_entropy_with_logits(z, target, reduction="none",
                                                                          pos_weight=pos_weight)
        loss = torch.where(keep, per_column, 0.0).sum(1) * live[:, 0]
        return loss, torch.zeros_like(loss), (z, target, keep, live)

    def backward(g_loss, g_logp, saved, valid, spec: _Spec):
        z, target, keep, live = saved
        g = torch.sigmoid(z).mul_(target * (beta - 1.0) + 1.0).sub_(target * beta)
        g = torch.where(keep, g, 0.0).mul_(live)
        return g if g_loss is None else g.mul_(g_loss.to(g.dtype).unsqueeze(1))

    return Head("gbce", forward, backward)


def _targets(valid, keep_cand, n, t, s, eps, dtype, device):
    """Target matrices ``(smoothed, unsmoothed)``, each ``[N, T + S]``.

    Unsmoothed: ``1 / T_i`` on each kept true column. Smoothed:
    ``(1 - eps) / T_i + eps / K_i`` on kept true columns and ``eps / K_i`` on kept candidates,
    with ``T_i`` kept labels and ``K_i`` kept columns in row ``i``.
    """
    kt = torch.ones(n, t, dtype=dtype, device=device) if valid is None else valid.to(dtype)
    kc = torch.ones(n, s, dtype=dtype, device=device) if keep_cand is None else keep_cand.to(dtype)
    n_true = kt.sum(1, keepdim=True).clamp_(min=1.0)
    plain = torch.cat([kt / n_true, torch.zeros_like(kc)], 1)
    if eps == 0.0:
        return plain, plain
    kept = torch.cat([kt, kc], 1)
    smooth = plain * (1.0 - eps) + kept * (eps / (kt.sum(1, keepdim=True) + kc.sum(1, keepdim=True)).clamp_(min=1.0))
    return smooth, plain


# ---------------------------------------------------------------------------------------------
# The softmax head through both stages (the traced operators of _ops.py call these)


def loss_forward(h, ids, log_q, valid, removed_cand, spec: _Spec, bias, shards):
    """``(loss [N], logp [N], hc, rows, logp_all [N, T + S], targets)`` of the softmax head."""
    logits, hc, rows = corrected_logits_forward(h, ids, log_q, valid, removed_cand, spec, bias, shards)
    loss, logp, (logp_all, targets) = _softmax_forward(logits, valid, removed_cand, spec)
    # float16/bfloat16 inputs get float32 losses, as under autocast.
    return loss, logp, hc, rows, logp_all, targets


def loss_backward(g_loss, g_logp, hc, rows, logp_all, valid, targets, num_true, need_h, need_w, need_b):
    """The softmax head's backward from :func:`loss_forward`'s values: ``(d_h, d_rows, d_b_rows)``."""
    spec = _Spec(num_true, (), "div", 0.0, False)
    g = _softmax_backward(g_loss, g_logp, (logp_all, targets), valid, spec)
    return corrected_logits_backward(g, hc, rows, num_true, need_h, need_w, need_b)


class SampledLoss(torch.autograd.Function):
    """Per-row loss of a head over the sampled logits, and its ``logp``.

    forward(head, h [N, D], ids [N*T + S], log_q [N*T + S], valid [N, T] or None,
            removed_cand [N, S] or None, row_log_q [N] or None, spec, bias [V] or None, *shards)
            -> (loss [N], logp [N])
    """

    @staticmethod
    def forward(ctx, head: Head, h, ids, log_q, valid, removed_cand, row_log_q, spec: _Spec, bias, *shards):
        logits, hc, rows = corrected_logits_forward(h, ids, log_q, valid, removed_cand, spec, bias, shards,
                                                    row_log_q)
        loss, logp, saved = head.forward(logits, valid, removed_cand, spec)
        ctx.head, ctx.spec, ctx.saved = head, spec, saved
        ctx.dtypes = (h.dtype, None if bias is None else bias.dtype)
        ctx.num_columns = logits.shape[1]
        ctx.num_shards, ctx.has_bias = len(shards), bias is not None
        # A fused table step updates the table in place in backward, which needs only its rows:
        # the table is not saved (autograd would see it modified).
        ctx.save_for_backward(hc, rows, ids, valid, *(() if spec.table_step is not None else (bias, *shards)))
        return loss, logp

    @staticmethod
    def backward(ctx, g_loss, g_logp):
        _check_once_differentiable()
        hc, rows, ids, valid, *table = ctx.saved_tensors
        spec: _Spec = ctx.spec
        step = spec.table_step  # a fused table optimizer: the rows' gradient goes to it
        bias, shards = (None, [None] * ctx.num_shards) if step is not None else (table[0], table[1:])
        needs_w = ctx.needs_input_grad[9:]
        needs_b = ctx.needs_input_grad[8]
        g = ctx.head.backward(g_loss, g_logp, ctx.saved, valid, spec)
        d_h, d_rows, d_b_rows = corrected_logits_backward(
            g, hc, rows, spec.num_true, ctx.needs_input_grad[1], any(needs_w) or step is not None,
            needs_b or (step is not None and ctx.has_bias))
        if d_h is not None and d_h.dtype != ctx.dtypes[0]:
            d_h = d_h.to(ctx.dtypes[0])
        d_bias, d_shards = None, [None] * len(shards)
        keep_rows = None
        if valid is not None and (spec.sparse or step is not None):
            # An ignored label's placeholder row is not touched by this step.
            keep_rows = torch.cat([valid.reshape(-1), valid.new_ones(ctx.num_columns - spec.num_true)])
        if step is not None:
            step(ids, d_rows, d_b_rows, keep_rows)
            return (None, d_h, None, None, None, None, None, None, None, *d_shards)
        if d_rows is not None:
            d_shards = _scatter_to_shards(shards, ids, d_rows, spec, keep_rows, needs_w)
        if d_b_rows is not None:
            if d_b_rows.dtype != ctx.dtypes[1]:
                d_b_rows = d_b_rows.to(ctx.dtypes[1])
            d_bias = _scatter_rows(tuple(bias.shape), ids, d_b_rows, spec.sparse, keep_rows)
        return (None, d_h, None, None, None, None, None, None, d_bias, *d_shards)


class FusedCoreLoss(torch.autograd.Function):
    """The compiled core's loss (one table, one label per row, nothing ignored) whose backward
    hands the rows' gradient to a fused table optimizer instead of returning the table's.

    forward(ext, head_kind, table_step, h [N, D], table [V, D], bias [V] or empty, ids [N + S],
            log_q [N + S], removed) -> loss [N]
    """

    @staticmethod
    def forward(ctx, ext, head_kind: int, table_step, h, table, bias, ids, log_q, removed):
        loss, act, rows = ext.core_forward(h, table, bias, ids, log_q, removed, head_kind)
        ctx.ext, ctx.head_kind, ctx.table_step, ctx.has_bias = ext, head_kind, table_step, bias.numel() > 0
        ctx.save_for_backward(h, rows, ids, act)  # not the table: the step updates it in place
        return loss

    @staticmethod
    def backward(ctx, g_loss):
        _check_once_differentiable()
        h, rows, ids, act = ctx.saved_tensors
        need_h = ctx.needs_input_grad[3]
        d_h, d_rows, d_b_rows = ctx.ext.core_backward(g_loss.contiguous(), h, rows, ids, act, ctx.head_kind, need_h,
                                                      True, ctx.has_bias)
        ctx.table_step(ids, d_rows, d_b_rows if ctx.has_bias else None, None)
        return None, None, None, d_h if need_h else None, None, None, None, None, None


class PerExampleLoss(torch.autograd.Function):
    """A head over columns of each example's own: ``ids [N, T + k]`` (its labels, then its
    noise), instead of the candidates a batch shares.

    forward(head, h [N, D], ids, valid [N, T] or None, removed [N, k] or None,
            log_q [N, T + k] or None, spec, bias [V] or None, table [V, D]) -> loss [N]

    Word2vec's negative sampling draws its noise for each example: the logits are one dot
    product per (example, column), then the head; backward, the head's ``d loss / d logits``
    and the row gradients scattered into the table (dense, or sparse rows).
    """

    @staticmethod
    def forward(ctx, head: Head, h, ids, valid, removed, log_q, spec: _Spec, bias, table):
        n, k = ids.shape
        cdt = _compute_dtype(h.dtype)
        hc = h if h.dtype == cdt else h.to(cdt)
        flat = ids.reshape(-1)
        rows = table.index_select(0, flat).view(n, k, table.shape[1])
        rows = rows if rows.dtype == cdt else rows.to(cdt)
        logits = torch.bmm(rows, hc.unsqueeze(2)).squeeze(2)
        if bias is not None:
            logits += bias.index_select(0, flat).view(n, k).to(cdt)
        if log_q is not None:
            logits -= log_q
        t = spec.num_true
        if removed is not None:
            logits[:, t:].masked_fill_(removed, -math.inf)
        if valid is not None:
            logits[:, :t].masked_fill_(~valid, -math.inf)
        loss, _, saved = head.forward(logits, valid, removed, spec)
        ctx.head, ctx.spec, ctx.saved = head, spec, saved
        ctx.shapes = (tuple(table.shape), None if bias is None else tuple(bias.shape))
        ctx.dtypes = (h.dtype, table.dtype, None if bias is None else bias.dtype)
        ctx.save_for_backward(hc, rows, flat, valid)
        return loss

    @staticmethod
    def backward(ctx, g_loss):
        _check_once_differentiable()
        hc, rows, flat, valid = ctx.saved_tensors
        g = ctx.head.backward(g_loss, None, ctx.saved, valid, ctx.spec)
        d_h = torch.bmm(g.unsqueeze(1), rows).squeeze(1).to(ctx.dtypes[0]) if ctx.needs_input_grad[1] else None
        d_bias = d_table = None
        keep = None
        step = ctx.spec.table_step  # a fused table optimizer: the rows' gradient goes to it
        if (ctx.spec.sparse or step is not None) and valid is not None:
            # An ignored label's placeholder row, and the noise of a row with no kept label, are
            # not touched by this step: a sparse optimizer must not see them.
            n, t = valid.shape
            live = valid.any(1, keepdim=True).expand(n, rows.shape[1] - t)
            keep = torch.cat([valid, live], 1).reshape(-1)
        if step is not None:
            d_rows = (g.unsqueeze(2) * hc.unsqueeze(1)).view(flat.shape[0], hc.shape[1])
            step(flat, d_rows, None if ctx.shapes[1] is None else g.reshape(-1), keep)
            return None, d_h, None, None, None, None, None, None, None
        if ctx.needs_input_grad[8]:
            d_rows = (g.unsqueeze(2) * hc.unsqueeze(1)).view(flat.shape[0], hc.shape[1]).to(ctx.dtypes[1])
            d_table = _scatter_rows(ctx.shapes[0], flat, d_rows, ctx.spec.sparse, keep)
        if ctx.needs_input_grad[7]:
            d_bias = _scatter_rows(ctx.shapes[1], flat, g.reshape(-1).to(ctx.dtypes[2]), ctx.spec.sparse, keep)
        return None, d_h, None, None, None, None, None, d_bias, d_table
