"""Stage 2a of the pipeline: the touched rows of the class table, gathered from one table or
shards (TensorFlow's ``"div"`` and ``"mod"`` layouts), and their gradients scattered back."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch


class _Spec(NamedTuple):
    """Static settings of one call, carried from forward to backward."""

    num_true: int
    offsets: tuple  # first class id of each shard ("div"), or () for one table
    strategy: str
    label_smoothing: float
    sparse: bool
    # A fused table optimizer's step for this call (``_routes._table_step``), or None: the
    # backward then applies the rows' gradient to the table instead of returning it.
    table_step: Any = None


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
