"""Streaming frequency estimators as Keras layers (the estimators of
:mod:`sampled_softmax.frequency`, the same hashing as the PyTorch and TensorFlow ones): their state
is non-trainable weights, saved with the model; called on a batch's candidate ids they update in
training and return ``log_q``. Float32 under any dtype policy."""

from __future__ import annotations

import numpy as np

from .. import SampledSoftmaxError
from .. import frequency as F
from ._arrays import _dtype, _values_now
from ._backend import keras, ops

__all__ = ["StreamingFrequency", "CountMinFrequency"]


class _HashedFrequency(keras.layers.Layer):
    """The hashing shared by the Keras estimators (:func:`sampled_softmax.frequency.bucket_ids`)
    and their call: update in training, then ``log_q`` of the ids."""

    def __init__(self, num_buckets, num_hashes, seed, **kwargs):
        # An estimate is state, not a model's arithmetic: float32 under any dtype policy (a
        # mixed_bfloat16 policy would read its gaps and steps in bfloat16).
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_buckets, self.num_hashes, self.seed = num_buckets, num_hashes, seed
        tables = F.hash_tables(self.num_hashes, seed).astype("int32")
        self._tables = tables  # [H, 8, 256]; bytes 4..7 of a 32-bit id are 0:
        self._high_bytes = np.bitwise_xor.reduce(tables[:, 4:, 0], axis=1).astype("int32")
        self.step = self.add_weight(shape=(), dtype="int32", initializer="zeros", trainable=False, name="step")

    def buckets(self, ids):
        """``[H, N]`` buckets of ``ids`` (:func:`sampled_softmax.frequency.bucket_ids`)."""
        ids = ops.reshape(ops.convert_to_tensor(ids), (-1,))
        if "int" not in _dtype(ids):
            raise TypeError(f"`ids` must have an integer dtype; received {_dtype(ids)}")
        now = _values_now(ids)
        if now is not None and now.size and now.min() < 0:
            raise SampledSoftmaxError(f"`ids` must be non-negative integers; received {now.min()}")
        wide = _dtype(ids) in ("int64", "uint64")
        tables = ops.convert_to_tensor(self._tables)
        h = None
        for i in range(8 if wide else 4):
            byte = ops.cast(ops.bitwise_and(ops.right_shift(ids, 8 * i), 255), "int32")
            part = ops.take(tables[:, i], byte, axis=1)
            h = part if h is None else ops.bitwise_xor(h, part)
        if not wide:
            h = ops.bitwise_xor(h, ops.convert_to_tensor(self._high_bytes)[:, None])
        return ops.mod(h, self.num_buckets)

    def _indices(self, buckets):
        rows = ops.broadcast_to(ops.arange(self.num_hashes, dtype="int32")[:, None], ops.shape(buckets))
        return ops.reshape(ops.stack([rows, ops.cast(buckets, "int32")], axis=-1), (-1, 2))

    def call(self, ids, training=None):
        if training:
            self.update(ids)
        return ops.reshape(self.log_q(ids), ops.shape(ids))

    def compute_output_spec(self, ids, training=None):
        return keras.KerasTensor(ids.shape, dtype="float32")


@keras.saving.register_keras_serializable(package="sampled_softmax")
class StreamingFrequency(_HashedFrequency):
    """Yi et al. 2019's streaming estimate of ``log_q`` (:class:`sampled_softmax.frequency.
    StreamingFrequency`, the same hashing as the PyTorch and TensorFlow ones) as a Keras layer: its
    state is non-trainable weights (saved with the model); called on a batch's candidate ids it
    updates in training and returns their ``log_q`` ``[B]`` (float32, ``<= 0``). The moving
    average is float32 here (the JAX backend has no float64 by default).

    Args:
        num_buckets: buckets per hash function. Default ``2**20``.
        num_hashes: hash functions (the estimate takes the largest gap). Default 1.
        learning_rate: ``alpha`` of the moving average. Default 0.05.
        seed: seeds the hash functions.
    """

    def __init__(self, num_buckets: int = 2**20, *, num_hashes: int = 1, learning_rate: float = 0.05, seed: int = 0,
                 **kwargs):
        num_buckets, num_hashes, learning_rate = F.check_estimator_args(num_buckets, num_hashes, learning_rate)
        super().__init__(num_buckets, num_hashes, seed, **kwargs)
        self.learning_rate = learning_rate
        self.last_step = self.add_weight(shape=(self.num_hashes, self.num_buckets), dtype="int32",
                                         initializer="zeros", trainable=False, name="last_step")
        self.gap = self.add_weight(shape=(self.num_hashes, self.num_buckets), dtype="float32", initializer="zeros",
                                   trainable=False, name="gap")

    def update(self, ids):
        buckets = self.buckets(ids)
        step = self.step + 1
        self.step.assign(step)
        old = ops.take_along_axis(self.gap, buckets, axis=1)
        since = ops.cast(step - ops.take_along_axis(self.last_step, buckets, axis=1), "float32")
        new = ops.where(old > 0, (1 - self.learning_rate) * old + self.learning_rate * since,
                        ops.cast(step, "float32"))
        index = self._indices(buckets)
        self.gap.assign(ops.scatter_update(self.gap, index, ops.reshape(new, (-1,))))
        self.last_step.assign(ops.scatter_update(self.last_step, index,
                                                 ops.reshape(ops.broadcast_to(step, ops.shape(buckets)), (-1,))))

    def log_q(self, ids):
        gaps = ops.max(ops.take_along_axis(self.gap, self.buckets(ids), axis=1), axis=0)
        unseen = ops.cast(self.step + 1, "float32")
        return -ops.log(ops.where(gaps > 0, gaps, unseen))

    def get_config(self):
        return dict(super().get_config(), num_buckets=self.num_buckets, num_hashes=self.num_hashes,
                    learning_rate=self.learning_rate, seed=self.seed)


@keras.saving.register_keras_serializable(package="sampled_softmax")
class CountMinFrequency(_HashedFrequency):
    """A count-min sketch of the id stream (:class:`sampled_softmax.frequency.CountMinFrequency`)
    as a Keras layer, like :class:`StreamingFrequency`: an id's frequency ``f`` is its smallest
    bucket count (at least 1) over the total, its ``log_q`` the log of ``1 - (1 - f) ** n`` for
    the stream's mean batch size ``n``. Counts are int32 (at most ``2**31 - 1`` ids in all).

    Args:
        num_buckets: buckets per hash function. Default ``2**20``.
        num_hashes: hash functions. Default 2.
        seed: seeds the hash functions.
    """

    def __init__(self, num_buckets: int = 2**20, *, num_hashes: int = 2, seed: int = 0, **kwargs):
        num_buckets, num_hashes, _ = F.check_estimator_args(num_buckets, num_hashes)
        super().__init__(num_buckets, num_hashes, seed, **kwargs)
        self.counts = self.add_weight(shape=(self.num_hashes, self.num_buckets), dtype="int32", initializer="zeros",
                                      trainable=False, name="counts")
        self.total = self.add_weight(shape=(), dtype="int32", initializer="zeros", trainable=False, name="total")

    def update(self, ids):
        buckets = self.buckets(ids)
        self.step.assign(self.step + 1)
        self.total.assign(self.total + ops.cast(ops.shape(buckets)[1], "int32"))
        index = self._indices(buckets)
        added = ops.scatter(index, ops.ones((ops.shape(index)[0],), "int32"), ops.shape(self.counts))
        self.counts.assign(self.counts + added)

    def log_q(self, ids):
        count = ops.maximum(ops.min(ops.take_along_axis(self.counts, self.buckets(ids), axis=1), axis=0), 1)
        total = ops.cast(ops.maximum(self.total, 1), "float32")
        per_step = total / ops.cast(ops.maximum(self.step, 1), "float32")
        f = ops.minimum(ops.cast(count, "float32") / total, 1.0)
        return ops.log(-ops.expm1(per_step * ops.log1p(-f)))

    def get_config(self):
        return dict(super().get_config(), num_buckets=self.num_buckets, num_hashes=self.num_hashes, seed=self.seed)
