"""Data parallelism with row-sparse gradients (which ``DistributedDataParallel`` rejects), and
the learned sampler whose counts every rank keeps equal."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ... import SampledSoftmaxError, SampledValues
from ... import _validation as V
from ..samplers import LearnedUnigramSampler, check_generator
from ._group import _agree, _checksum, _group


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
