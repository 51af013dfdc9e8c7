"""The streaming frequency estimators of :mod:`sampled_softmax.frequency` as ``tf.Module``s (their
state in ``tf.Variable``s: ``tf.train.Checkpoint`` saves it), for ``log_q`` of in-batch negatives."""

from __future__ import annotations

import tensorflow as tf

from .. import frequency as F

__all__ = ["StreamingFrequency", "CountMinFrequency"]


def _buckets(ids, tables, num_buckets):
    ids = tf.cast(tf.reshape(ids, [-1]), tf.int64)
    h = tf.zeros([tables.shape[0], tf.size(ids)], tf.int64)
    for i in range(8):
        byte = tf.bitwise.bitwise_and(tf.bitwise.right_shift(ids, 8 * i), 255)
        h = tf.bitwise.bitwise_xor(h, tf.gather(tables[:, i], byte, axis=1))
    return tf.math.floormod(h, num_buckets)


class _HashedEstimator(tf.Module):
    def __init__(self, num_buckets, num_hashes, seed, name):
        super().__init__(name=name)
        self.num_buckets, self.num_hashes, self.seed = num_buckets, num_hashes, seed
        self.hash_tables = tf.constant(F.hash_tables(num_hashes, seed))
        self.step = tf.Variable(tf.zeros([], tf.int64), trainable=False, name="step")

    def buckets(self, ids) -> tf.Tensor:
        """``[H, N]`` buckets (the hashing of :func:`sampled_softmax.frequency.bucket_ids`)."""
        ids = tf.convert_to_tensor(ids)
        if not ids.dtype.is_integer:
            raise TypeError(f"`ids` must have an integer dtype; received {ids.dtype.name}")
        if tf.executing_eagerly() and tf.size(ids) > 0:
            F.check_ids_values(int(tf.reduce_min(ids)))
        return _buckets(ids, self.hash_tables, self.num_buckets)

    def _indices(self, buckets):
        rows = tf.broadcast_to(tf.range(self.num_hashes, dtype=tf.int64)[:, None], tf.shape(buckets))
        return tf.stack([rows, buckets], axis=-1)

    def log_q(self, ids) -> tf.Tensor:
        """``log`` of :meth:`probability` (float32), ``<= 0``."""
        return tf.math.log(self.probability(ids))

    def __call__(self, ids, training: bool = True) -> tf.Tensor:
        """``log_q`` of ``ids`` (their shape), after updating with them when ``training``."""
        if training:
            self.update(ids)
        return tf.reshape(self.log_q(ids), tf.shape(ids))


class StreamingFrequency(_HashedEstimator):
    """Yi et al. 2019's estimator (:class:`sampled_softmax.frequency.StreamingFrequency`), the
    same as :class:`sampled_softmax.torch.StreamingFrequency`."""

    def __init__(self, num_buckets: int = 2**20, *, num_hashes: int = 1, learning_rate: float = 0.05,
                 seed: int = 0, name: str | None = None):
        num_buckets, num_hashes, learning_rate = F.check_estimator_args(num_buckets, num_hashes, learning_rate)
        super().__init__(num_buckets, num_hashes, seed, name)
        self.learning_rate = learning_rate
        self.last_step = tf.Variable(tf.zeros([num_hashes, num_buckets], tf.int64), trainable=False,
                                     name="last_step")
        self.gap = tf.Variable(tf.zeros([num_hashes, num_buckets], tf.float64), trainable=False, name="gap")

    def update(self, ids) -> None:
        buckets = self.buckets(ids)
        step = self.step.assign_add(1)
        t = tf.cast(step, tf.float64)
        old = tf.gather(self.gap, buckets, batch_dims=1)
        since = tf.cast(step - tf.gather(self.last_step, buckets, batch_dims=1), tf.float64)
        # Every copy of a bucket computes the same value from the old state: the scatter is
        # deterministic whatever the order of the writes.
        new = tf.where(old > 0, (1 - self.learning_rate) * old + self.learning_rate * since, t)
        index = self._indices(buckets)
        self.gap.scatter_nd_update(index, new)
        self.last_step.scatter_nd_update(index, tf.broadcast_to(step, tf.shape(buckets)))

    def probability(self, ids) -> tf.Tensor:
        gaps = tf.reduce_max(tf.gather(self.gap, self.buckets(ids), batch_dims=1), axis=0)
        unseen = tf.cast(self.step + 1, tf.float64)
        return tf.cast(1.0 / tf.where(gaps > 0, gaps, unseen), tf.float32)


class CountMinFrequency(_HashedEstimator):
    """A count-min sketch (:class:`sampled_softmax.frequency.CountMinFrequency`), the same as
    :class:`sampled_softmax.torch.CountMinFrequency`."""

    def __init__(self, num_buckets: int = 2**20, *, num_hashes: int = 2, seed: int = 0, name: str | None = None):
        num_buckets, num_hashes, _ = F.check_estimator_args(num_buckets, num_hashes)
        super().__init__(num_buckets, num_hashes, seed, name)
        self.counts = tf.Variable(tf.zeros([num_hashes, num_buckets], tf.int64), trainable=False, name="counts")
        self.total = tf.Variable(tf.zeros([], tf.int64), trainable=False, name="total")

    def update(self, ids) -> None:
        buckets = self.buckets(ids)
        self.step.assign_add(1)
        self.total.assign_add(tf.cast(tf.shape(buckets)[1], tf.int64))
        self.counts.scatter_nd_add(self._indices(buckets), tf.ones_like(buckets))

    def probability(self, ids) -> tf.Tensor:
        count = tf.cast(tf.maximum(tf.reduce_min(tf.gather(self.counts, self.buckets(ids), batch_dims=1), axis=0), 1),
                        tf.float64)
        total = tf.cast(tf.maximum(self.total, 1), tf.float64)
        per_step = total / tf.cast(tf.maximum(self.step, 1), tf.float64)
        f = tf.minimum(count / total, 1.0)
        return tf.cast(-tf.math.expm1(per_step * tf.math.log1p(-f)), tf.float32)
