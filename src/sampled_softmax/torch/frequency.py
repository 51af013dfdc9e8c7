"""Streaming frequency estimators as ``nn.Module``s: ``log_q`` for in-batch negatives.

The estimators of :mod:`sampled_softmax.frequency` (the formulas, the hashing and the NumPy
reference they are tested against), with their state in buffers: ``state_dict`` saves and
restores it, ``.to(device)`` moves it, and an update runs on the device of the ids without a
host synchronisation (duplicate ids in a batch write the same value, so no ``unique`` is
needed). Call the module on a batch's candidate ids: in training mode it updates first and then
returns ``log_q`` for those ids; in eval mode it only reads.

Example::

    frequency = StreamingFrequency(num_buckets=2**22)
    log_q = frequency(item_ids)            # [B], updates the estimate in training mode
    loss = in_batch_softmax_loss(user_emb, item_emb, candidate_ids=item_ids, log_q=log_q)
"""

from __future__ import annotations

import torch
from torch import nn

from .. import frequency as F
from . import _ops
from .samplers import keep_buffer_dtypes

__all__ = ["StreamingFrequency", "CountMinFrequency"]


def _check_ids(ids) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"`ids` must be a torch.Tensor; received {type(ids).__name__}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"`ids` must have an integer dtype; received {ids.dtype}")
    return ids.reshape(-1).to(torch.int64)


class _HashedEstimator(nn.Module):
    def __init__(self, num_buckets: int, num_hashes: int, seed: int):
        super().__init__()
        self.num_buckets, self.num_hashes = num_buckets, num_hashes
        self.seed = seed
        self.register_buffer("hash_tables", torch.from_numpy(F.hash_tables(num_hashes, seed)))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def buckets(self, ids: torch.Tensor) -> torch.Tensor:
        """``[H, N]`` buckets of ``ids`` (the hashing of :func:`sampled_softmax.frequency.bucket_ids`)."""
        ids = _check_ids(ids).to(self.hash_tables.device)
        if ids.device.type == "cpu":  # values are checked where reading them is free (traced: an operator)
            ids = _ops.checked_values(ids, "ids")
        h = torch.zeros((self.num_hashes, ids.numel()), dtype=torch.int64, device=ids.device)
        for i in range(8):
            h ^= self.hash_tables[:, i, (ids >> (8 * i)) & 255]
        return torch.remainder(h, self.num_buckets)

    def _apply(self, fn, recurse=True):
        # `.half()`, `.to(torch.bfloat16)` on a model move the estimate's state with it but must
        # not round it: a float16 step count stops at 2048 and its gaps reach inf at 65504.
        return keep_buffer_dtypes(self, super()._apply, fn, recurse)

    def log_q(self, ids: torch.Tensor) -> torch.Tensor:
        """``log`` of :meth:`probability` (float32), ``<= 0``."""
        return torch.log(self.probability(ids))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``log_q`` of ``ids``, after updating with them in training mode."""
        if self.training:
            self.update(ids)
        return self.log_q(ids).reshape(ids.shape)

    def extra_repr(self) -> str:
        return f"num_buckets={self.num_buckets}, num_hashes={self.num_hashes}, seed={self.seed}"


class StreamingFrequency(_HashedEstimator):
    """Yi et al. 2019's estimator (:class:`sampled_softmax.frequency.StreamingFrequency`): per hash
    bucket the step last seen and a moving average of the gap between sightings; an id's
    probability of being in a batch is ``1 / gap``.

    Args:
        num_buckets: buckets per hash function (memory: ``16 * num_hashes * num_buckets`` bytes, int64 and float64).
            Ids that share all their buckets share an estimate: make it several times the number
            of distinct ids.
        num_hashes: hash functions; the estimate takes the largest gap. Default 1.
        learning_rate: ``alpha`` of the moving average. Default 0.05.
        seed: seeds the hash functions.
    """

    def __init__(self, num_buckets: int = 2**20, *, num_hashes: int = 1, learning_rate: float = 0.05,
                 seed: int = 0):
        num_buckets, num_hashes, learning_rate = F.check_estimator_args(num_buckets, num_hashes, learning_rate)
        super().__init__(num_buckets, num_hashes, seed)
        self.learning_rate = learning_rate
        self.register_buffer("last_step", torch.zeros((num_hashes, num_buckets), dtype=torch.int64))
        # float64: a moving average over a long stream in float32 drifts from the reference.
        self.register_buffer("gap", torch.zeros((num_hashes, num_buckets), dtype=torch.float64))

    @torch.no_grad()
    def update(self, ids: torch.Tensor) -> None:
        """One step: every bucket of ``ids`` seen at step ``t`` (once, however often it occurs)."""
        buckets = self.buckets(ids)
        self.step += 1
        t = self.step.to(self.gap.dtype)
        old = self.gap.gather(1, buckets)
        since = (self.step - self.last_step.gather(1, buckets)).to(self.gap.dtype)
        # Every copy of a bucket computes the same value from the old state: the scatter is
        # deterministic whatever the order of the writes.
        new = torch.where(old > 0, (1 - self.learning_rate) * old + self.learning_rate * since, t)
        self.gap.scatter_(1, buckets, new)
        self.last_step.scatter_(1, buckets, self.step.expand_as(buckets).contiguous())

    def probability(self, ids: torch.Tensor) -> torch.Tensor:
        """Estimated probability ``[N]`` that each id is in a batch, in ``(0, 1]``."""
        gaps = self.gap.gather(1, self.buckets(ids)).amax(dim=0)
        unseen = (self.step + 1).to(self.gap.dtype)
        return (1.0 / torch.where(gaps > 0, gaps, unseen)).to(torch.float32)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", learning_rate={self.learning_rate}"


class CountMinFrequency(_HashedEstimator):
    """A count-min sketch (:class:`sampled_softmax.frequency.CountMinFrequency`): an id's frequency
    is its smallest bucket count over ``num_hashes`` hashes (at least 1) over the total, and its
    probability of being in a batch of the stream's mean size ``n`` is ``1 - (1 - f) ** n``.
    For a stationary stream (it does not forget).

    Args:
        num_buckets: buckets per hash function (``8 * num_hashes * num_buckets`` bytes).
        num_hashes: hash functions. Default 2.
        seed: seeds the hash functions.
    """

    def __init__(self, num_buckets: int = 2**20, *, num_hashes: int = 2, seed: int = 0):
        num_buckets, num_hashes, _ = F.check_estimator_args(num_buckets, num_hashes)
        super().__init__(num_buckets, num_hashes, seed)
        self.register_buffer("counts", torch.zeros((num_hashes, num_buckets), dtype=torch.int64))
        self.register_buffer("total", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def update(self, ids: torch.Tensor) -> None:
        buckets = self.buckets(ids)
        self.step += 1
        self.total += buckets.shape[1]
        self.counts.scatter_add_(1, buckets, torch.ones_like(buckets))

    def probability(self, ids: torch.Tensor) -> torch.Tensor:
        count = self.counts.gather(1, self.buckets(ids)).amin(dim=0).clamp_min(1).to(torch.float64)
        total = self.total.clamp_min(1).to(torch.float64)
        per_step = total / self.step.clamp_min(1).to(torch.float64)
        f = torch.minimum(count / total, torch.ones_like(count))
        return (-torch.expm1(per_step * torch.log1p(-f))).to(torch.float32)
