"""Traffic accounting: the bytes each rank hands to the collectives (measurement for the
benchmarks and tests, not training API)."""

from __future__ import annotations

import torch.distributed as dist

from .vocab_parallel import _AGREED


def vocab_parallel_bytes(batch: int, num_true: int, num_sampled: int, dim: int, *, element_size: int = 4,
                         backward: bool = True) -> dict:
    """Bytes each rank hands to the collectives in one call of
    :func:`vocab_parallel_sampled_softmax_loss` that draws its candidates (what
    ``_traffic.CollectiveBytes`` measures; a ring all-reduce of ``x`` bytes puts ``2 (P - 1) / P x``
    on the wire): the agreement (``1 + len(_AGREED)`` int64: 22), rank 0's draw (``1 + 2 S + N T`` float64), the head's
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
    context manager that wraps ``all_reduce``, ``all_gather`` and ``broadcast``; the
    ``all_gather_object`` of an error path is not counted): ``with CollectiveBytes() as sent: ...;
    sent.total``."""

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
