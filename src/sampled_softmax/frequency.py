"""Streaming estimates of how often each id is in a batch, for the ``log_q`` of in-batch negatives.

The NumPy reference of the front ends' estimators (each front end's estimator is tested equal to
these, step by step). Two estimators, both over hashed arrays of fixed size, deterministic, with
no per-id storage:

* :class:`StreamingFrequency` (Yi et al. 2019, "Sampling-bias-corrected neural modeling for large
  corpus item recommendations", Algorithm 1): per bucket, the step ``A`` an id was last seen and
  an exponential moving average ``B`` of the number of steps between sightings; an id's
  probability of being in a batch is ``1 / B``. At step ``t`` (counted from 1), for every bucket
  ``b`` of the batch's ids: ``B[b] <- (1 - alpha) B[b] + alpha (t - A[b])`` (``t`` itself the
  first time a bucket is seen, so ``B >= 1``), then ``A[b] <- t``. An id counts once per step
  however often it is in the batch. With ``H`` hash functions the estimate takes the largest
  ``B`` (collisions only shorten gaps). An id never seen gets ``B = t + 1``.
* :class:`CountMinFrequency` (a count-min sketch, as Pinterest's OmniSearchSage): per bucket a
  count of occurrences; an id's frequency ``f`` is its smallest count over the ``H`` hashes (at
  least 1) divided by the total, and its probability of being in a batch of the stream's mean
  size ``n`` is ``1 - (1 - f) ** n``. For a stationary stream; it does not forget.

Both give probabilities in ``(0, 1]``, so ``log_q <= 0``.

Hashing (the same in every front end, and in 32-bit integer arithmetic wherever it runs):
tabulation hashing. Hash ``k`` XORs one entry per byte of the id from its own random tables,
``h_k(id) = T[k, 0, byte_0(id)] ^ ... ^ T[k, 7, byte_7(id)]`` (entries in ``[0, 2**31)``, from
:func:`hash_tables`, a seeded NumPy generator), and the bucket is ``h_k(id) mod num_buckets``.
Ids are non-negative int64; where ids are 32-bit (JAX without x64) their high bytes are 0.
"""

from __future__ import annotations

import numpy as np

from . import SampledSoftmaxError
from ._validation import check_positive_int

__all__ = ["hash_tables", "bucket_ids", "StreamingFrequency", "CountMinFrequency", "check_estimator_args",
           "check_ids_values"]



def check_estimator_args(num_buckets, num_hashes, learning_rate=None):
    num_buckets = check_positive_int("num_buckets", num_buckets)
    num_hashes = check_positive_int("num_hashes", num_hashes)
    if learning_rate is not None:
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) or not (
                0.0 < float(learning_rate) <= 1.0):
            raise SampledSoftmaxError(f"`learning_rate` must be in (0, 1]; received {learning_rate!r}")
        learning_rate = float(learning_rate)
    return num_buckets, num_hashes, learning_rate


def check_ids_values(lo) -> None:
    if lo is not None and lo < 0:
        raise SampledSoftmaxError(f"`ids` must be non-negative integers; received {lo}")


def hash_tables(num_hashes: int, seed: int = 0) -> np.ndarray:
    """``[H, 8, 256]`` int64 tabulation tables, entries in ``[0, 2**31)``."""
    return np.random.default_rng(seed).integers(0, 2**31, size=(num_hashes, 8, 256), dtype=np.int64)


def bucket_ids(ids, tables, num_buckets: int) -> np.ndarray:
    """``[H, N]`` int64 buckets of ``ids [N]``."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    h = np.zeros((tables.shape[0], ids.size), np.int64)
    for i in range(8):
        h ^= tables[:, i, (ids >> (8 * i)) & 255]
    return h % num_buckets


class StreamingFrequency:
    """Yi et al.'s estimator (see the module docstring), float64."""

    def __init__(self, num_buckets: int = 2**20, *, num_hashes: int = 1, learning_rate: float = 0.05,
                 seed: int = 0):
        self.num_buckets, self.num_hashes, self.learning_rate = check_estimator_args(num_buckets, num_hashes,
                                                                                     learning_rate)
        self.tables = hash_tables(self.num_hashes, seed)
        self.step = 0
        self.last_step = np.zeros((self.num_hashes, self.num_buckets), np.int64)
        self.gap = np.zeros((self.num_hashes, self.num_buckets), np.float64)  # 0: never seen

    def update(self, ids) -> None:
        ids = np.asarray(ids).reshape(-1)
        check_ids_values(int(ids.min()) if ids.size else None)
        self.step += 1
        t, alpha = self.step, self.learning_rate
        for k, buckets in enumerate(bucket_ids(ids, self.tables, self.num_buckets)):
            buckets = np.unique(buckets)
            old = self.gap[k, buckets]
            seen = old > 0
            self.gap[k, buckets] = np.where(seen, (1 - alpha) * old + alpha * (t - self.last_step[k, buckets]), t)
            self.last_step[k, buckets] = t

    def probability(self, ids) -> np.ndarray:
        buckets = bucket_ids(ids, self.tables, self.num_buckets)
        gaps = np.take_along_axis(self.gap, buckets, axis=1).max(axis=0)
        return 1.0 / np.where(gaps > 0, gaps, self.step + 1.0)

    def log_q(self, ids) -> np.ndarray:
        return np.log(self.probability(ids))


class CountMinFrequency:
    """A count-min sketch of the stream (see the module docstring), float64."""

    def __init__(self, num_buckets: int = 2**20, *, num_hashes: int = 2, seed: int = 0):
        self.num_buckets, self.num_hashes, _ = check_estimator_args(num_buckets, num_hashes)
        self.tables = hash_tables(self.num_hashes, seed)
        self.step = 0
        self.total = 0
        self.counts = np.zeros((self.num_hashes, self.num_buckets), np.int64)

    def update(self, ids) -> None:
        ids = np.asarray(ids).reshape(-1)
        check_ids_values(int(ids.min()) if ids.size else None)
        self.step += 1
        self.total += ids.size
        for k, buckets in enumerate(bucket_ids(ids, self.tables, self.num_buckets)):
            np.add.at(self.counts[k], buckets, 1)

    def probability(self, ids) -> np.ndarray:
        buckets = bucket_ids(ids, self.tables, self.num_buckets)
        count = np.maximum(np.take_along_axis(self.counts, buckets, axis=1).min(axis=0), 1)
        total = max(self.total, 1)
        per_step = total / max(self.step, 1)
        return -np.expm1(per_step * np.log1p(-np.minimum(count / total, 1.0)))

    def log_q(self, ids) -> np.ndarray:
        return np.log(self.probability(ids))


# The names of wave 2 (0.x), before the front ends' names were taken here too.
LastSeenEstimator = StreamingFrequency
CountMinEstimator = CountMinFrequency
