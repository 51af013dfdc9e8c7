"""The process group and what its ranks agree on before a collective: one all-gather of a few
integers per call, so that an argument one rank rejects, or one the ranks give differently, is
the same error on every rank instead of a hang or gloo's abort in a later collective. Also the
``"div"`` layout of a sharded table (:func:`shard_range`)."""

from __future__ import annotations

import zlib
from typing import Sequence

import torch
import torch.distributed as dist

from ... import SampledSoftmaxError
from ... import _validation as V


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
    return V.div_shard(num_classes, rank, world_size)


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
