"""Gathering across ranks: every rank's rows (differentiably), and the negatives of in-batch
retrieval over the global batch."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist

from .._prepare import _check_tensor
from ._group import _agree, _group


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
