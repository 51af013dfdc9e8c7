"""Two-tower retrieval in Keras 3: ``InBatchSoftmax`` (a layer: the corrected, masked in-batch
logits) and ``InBatchSoftmaxLoss`` (the softmax cross-entropy against each row's own candidate),
in ``keras.ops``: the TensorFlow, JAX and PyTorch backends.

The semantics of :func:`sampled_softmax.torch.in_batch_softmax_loss` and of the NumPy
reference's stages: query ``i`` of ``B`` has its positive at candidate ``i`` of ``C >= B``;
``o_ij = q_i . c_j / temperature - log_q_j`` (scale, then correct); a negative with the row's
positive id (``candidate_ids``), the same query id, ``score_mask`` False or an id in the row's
``excluded_ids`` is removed (the dtype's lowest value: probability 0, gradient 0); with
``num_hard_negatives`` each row keeps only its hardest negatives. The temperature may be learned
(a weight, saved with the model). Example::

    logits = InBatchSoftmax(temperature=0.05)(query_emb, item_emb, candidate_ids=item_ids, log_q=log_q)
    model = keras.Model(inputs, logits)
    model.compile(optimizer="adam", loss=InBatchSoftmaxLoss())
    model.fit(inputs, item_ids)                   # y is not used by the loss: any [B] array
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import SampledSoftmaxError
from .. import _validation as V
from .. import frequency as F
from ..samplers import unigram_weights
from ._backend import keras, ops
from .samplers import DRAWS, SAMPLERS, SavesSeedState, draw, expected_counts, uniforms

__all__ = ["InBatchSoftmax", "InBatchSoftmaxLoss", "StreamingFrequency", "CountMinFrequency", "CorpusSampler",
           "MixedNegatives", "mixed_negatives", "CorpusIndex", "RecallAtK"]


def _shape(x):
    return tuple(x.shape)


def _dtype(x) -> str:
    return keras.backend.standardize_dtype(x.dtype)


def _values_now(x):
    """``x`` as a NumPy array when its values are known (eager), else None (traced)."""
    try:
        return ops.convert_to_numpy(x)
    except Exception:  # a tracer or a symbolic tensor: checked by the nan rule instead
        return None


@keras.saving.register_keras_serializable(package="sampled_softmax")
class InBatchSoftmax(keras.layers.Layer):
    """The in-batch logits ``[B, C]`` of a two-tower model, corrected and masked.

    Args:
        temperature: ``tau > 0``. Default 1.0.
        learn_temperature: learn ``tau`` (a weight ``log_temperature``, starting at
            ``log(temperature)``). Default False.
        remove_accidental_hits: remove negatives with the row's positive id (needs
            ``candidate_ids`` in the call). Default True.
        num_hard_negatives: keep only each row's ``k`` highest-logit negatives. Default None.

    Call arguments:
        query: ``[B, D]``; candidates: ``[C, D]``, ``C >= B`` (the positives, then extra negatives).
        candidate_ids: integer ``[C]``; query_ids: integer ``[B]``; log_q: ``[C]`` (finite,
        ``<= 0``); score_mask: bool ``[B, C]`` (True keeps); excluded_ids: integer ``[B, K]``
        (negative entries are padding).
    """

    def __init__(self, temperature: float = 1.0, *, learn_temperature: bool = False,
                 remove_accidental_hits: bool = True, num_hard_negatives: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.temperature = V.check_temperature(temperature)
        self.learn_temperature = V.check_bool("learn_temperature", learn_temperature)
        self.remove_accidental_hits = V.check_bool("remove_accidental_hits", remove_accidental_hits)
        self.num_hard_negatives = V.check_num_hard_negatives(num_hard_negatives)
        self.log_temperature = None
        if self.learn_temperature:
            self.log_temperature = self.add_weight(shape=(), initializer=keras.initializers.Constant(
                math.log(self.temperature)), trainable=True, name="log_temperature")

    def call(self, query, candidates, candidate_ids=None, log_q=None, query_ids=None, score_mask=None,
             excluded_ids=None):
        query, candidates = ops.convert_to_tensor(query), ops.convert_to_tensor(candidates)
        for name, x in (("query", query), ("candidates", candidates)):
            V.check_floating_dtype(name, "float" in _dtype(x), _dtype(x))
        optional = {k: None if v is None else ops.convert_to_tensor(v)
                    for k, v in dict(candidate_ids=candidate_ids, query_ids=query_ids, log_q=log_q,
                                     score_mask=score_mask, excluded_ids=excluded_ids).items()}
        for name in ("candidate_ids", "query_ids", "excluded_ids"):
            x = optional[name]
            if x is not None:
                V.check_integer_dtype(name, "int" in _dtype(x), _dtype(x))
        if optional["score_mask"] is not None and _dtype(optional["score_mask"]) != "bool":
            raise TypeError(f"`score_mask` must be a bool tensor (True keeps); received {_dtype(optional['score_mask'])}")
        if None not in _shape(query) + _shape(candidates):  # static (else checked by the ops themselves)
            V.check_in_batch_shapes(_shape(query), _shape(candidates),
                                    **{k: None if v is None else _shape(v) for k, v in optional.items()})
        b, c = ops.shape(query)[0], ops.shape(candidates)[0]
        dtype = "float32" if _dtype(query) in ("float16", "bfloat16") else _dtype(query)
        o = ops.matmul(ops.cast(query, dtype), ops.transpose(ops.cast(candidates, dtype)))
        if self.log_temperature is not None:
            o = o / ops.exp(ops.cast(self.log_temperature, dtype))
        elif self.temperature != 1.0:
            o = o / self.temperature
        if optional["log_q"] is not None:
            now = _values_now(optional["log_q"])
            if now is not None and now.size:
                V.check_log_q_values(float(now.min()), float(now.max()), bool(np.isfinite(now).all()))
            lq = ops.cast(optional["log_q"], dtype)
            # A log_q that is not finite or positive (a value that cannot be checked when traced)
            # makes the logits nan, never a plausible number.
            o = o - ops.where(ops.isfinite(lq) & (lq <= 0), lq, float("nan"))[None, :]
        eye = ops.eye(b, c, dtype="bool")
        keep = self._keep(b, c, optional) | eye
        lowest = _lowest(dtype)
        if self.num_hard_negatives is not None and self.num_hard_negatives < c - 1:
            negatives = ops.where(keep & ~eye, ops.stop_gradient(o), float("-inf"))
            _, top = ops.top_k(negatives, self.num_hard_negatives)
            hard = ops.any(ops.one_hot(top, c, dtype="int32") > 0, axis=1)
            keep = (keep & hard) | eye
        return ops.where(keep, o, lowest)

    def _keep(self, b, c, optional):
        keep = ops.ones((b, c), "bool")
        ids = optional["candidate_ids"]
        if ids is not None and self.remove_accidental_hits:
            keep = keep & (ids[None, :] != ids[:b, None])
        if optional["excluded_ids"] is not None:
            if ids is None:
                raise SampledSoftmaxError("`excluded_ids` needs `candidate_ids` (the ids to compare them with)")
            ex = ops.cast(optional["excluded_ids"], ids.dtype)
            hit = (ids[None, :, None] == ex[:, None, :]) & (ex[:, None, :] >= 0)
            keep = keep & ~ops.any(hit, axis=2)
        if optional["query_ids"] is not None:
            qid = optional["query_ids"]
            keep = keep & ops.concatenate([qid[:, None] != qid[None, :], ops.ones((b, c - b), "bool")], axis=1)
        if optional["score_mask"] is not None:
            keep = keep & optional["score_mask"]
        return keep

    def compute_output_spec(self, query, candidates, *args, **kwargs):
        return keras.KerasTensor((query.shape[0], candidates.shape[0]), dtype="float32" if _dtype(query) in (
            "float16", "bfloat16") else _dtype(query))

    def get_config(self):
        return dict(super().get_config(), temperature=self.temperature, learn_temperature=self.learn_temperature,
                    remove_accidental_hits=self.remove_accidental_hits, num_hard_negatives=self.num_hard_negatives)


def _lowest(dtype: str) -> float:
    return float(np.finfo(dtype).min)


@keras.saving.register_keras_serializable(package="sampled_softmax")
class InBatchSoftmaxLoss(keras.losses.Loss):
    """Softmax cross-entropy of in-batch logits ``[B, C]`` (from :class:`InBatchSoftmax`) against
    each row's own candidate: ``loss_i = logsumexp(o_i) - o_ii``. ``y_true`` is not used (the
    target is the row's position); pass the batch's item ids or any ``[B]`` array to ``fit``.
    Keras' reductions and ``sample_weight`` apply."""

    def __init__(self, reduction="sum_over_batch_size", name="in_batch_softmax", **kwargs):
        super().__init__(reduction=reduction, name=name, **kwargs)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        b = _shape(y_pred)[0]
        if len(_shape(y_pred)) != 2 or (b is not None and _shape(y_pred)[1] is not None and _shape(y_pred)[1] < b):
            raise SampledSoftmaxError(f"`y_pred` must be in-batch logits [B, C] with C >= B; received shape "
                                      f"{list(_shape(y_pred))}")
        logits = ops.cast(y_pred, "float32") if _dtype(y_pred) in ("float16", "bfloat16") else y_pred
        positive = ops.diagonal(logits[:, : ops.shape(logits)[0]])
        return ops.logsumexp(logits, axis=1) - positive


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
    LastSeenEstimator`, the same hashing as the PyTorch and TensorFlow ones) as a Keras layer: its
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
    """A count-min sketch of the id stream (:class:`sampled_softmax.frequency.CountMinEstimator`)
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


@keras.saving.register_keras_serializable(package="sampled_softmax")
class CorpusSampler(SavesSeedState, keras.layers.Layer):
    """Draws ``num_sampled`` corpus candidates per call, shared by the batch, with the layer's seed
    generator: the ``sampled_values`` of :func:`mixed_negatives` (or of any ``sampled_values=``
    argument), in ``keras.ops`` on every backend, inside ``fit``.

    Called on the batch's true ids ``[B]`` or ``[B, T]``, returns TensorFlow's triple
    ``(sampled_candidates [M] int32, true_expected_count [B, T] float32, sampled_expected_count
    [M] float32)``. With ``draw="unique_exact"`` (the default) the expected counts are the exact
    inclusion probabilities ``1 - (1 - Q)^M``, and a slot repeating a class drawn already (a
    padding slot) has an expected count of ``inf``: what :func:`mixed_negatives` needs.

    Args:
        num_classes: the corpus size ``V`` (ids in ``[0, V)``).
        num_sampled: ``M``, candidates per call.
        sampler: ``"uniform"`` (default: Yang et al.'s corpus negatives, whatever the id order),
            ``"log_uniform"`` (ids sorted by decreasing popularity), ``"unigram"`` (from
            ``unigrams``) or ``"learned_unigram"`` (counts of the true ids seen in training,
            starting at 1, saved with the model).
        draw: ``"unique_exact"`` or ``"with_replacement"``.
        unigrams: counts or probabilities ``[V]`` for ``sampler="unigram"``.
        distortion: power applied to ``unigrams``. Default 1.
        seed: seeds the draw (its state is saved with the model).
        unigrams_in_weights: ``sampler="unigram"`` without ``unigrams``: the tables come from
            the saved weights (how a reloaded model rebuilds the layer).
    """

    def __init__(self, num_classes: int, num_sampled: int, *, sampler: str = "uniform", draw: str = "unique_exact",
                 unigrams=None, distortion: float = 1.0, seed: int | None = None, unigrams_in_weights: bool = False,
                 **kwargs):
        # Its tables and counts are state: read and drawn from in float32 under any dtype policy.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_classes = V.check_positive_int("num_classes", num_classes)
        self.sampler = V.check_choice("sampler", sampler, SAMPLERS)
        self.draw = V.check_choice("draw", draw, DRAWS)
        self.distortion = float(distortion)
        self.seed = seed
        support = self.num_classes
        probs = None
        if self.sampler == "unigram":
            if unigrams is not None:
                weights = unigram_weights(unigrams, num_classes=self.num_classes, distortion=self.distortion)
                support = int(np.count_nonzero(weights))
                probs = np.asarray(weights, np.float64) / np.sum(weights)
            elif not unigrams_in_weights:
                raise SampledSoftmaxError("`unigrams` (counts or probabilities) is required for sampler='unigram'; "
                                          "received None")
        self.num_sampled = V.check_num_sampled(num_sampled, self.num_classes, unique=self.draw == "unique_exact",
                                               support=support)
        self.seed_generator = keras.random.SeedGenerator(seed)
        if self.sampler == "unigram":
            # The tables are weights (saved with the model, not in its config): the CDF to draw
            # from, and the probabilities (normalised in float64) to correct with.
            cdf = np.zeros(self.num_classes) if probs is None else np.cumsum(probs)
            if probs is not None:
                cdf[-1] = 1.0
            self.sampling_cdf = self.add_weight(name="sampling_cdf", shape=(self.num_classes,), trainable=False,
                                                initializer=keras.initializers.Constant(cdf.astype(np.float32)))
            self.sampling_probs = self.add_weight(
                name="sampling_probs", shape=(self.num_classes,), trainable=False,
                initializer=keras.initializers.Constant(
                    np.zeros(self.num_classes, np.float32) if probs is None else probs.astype(np.float32)))
        if self.sampler == "learned_unigram":
            self.sampling_counts = self.add_weight(name="sampling_counts", shape=(self.num_classes,),
                                                   initializer="ones", trainable=False)

    def call(self, true_ids, training=None):
        true_ids = ops.convert_to_tensor(true_ids)
        if "int" not in _dtype(true_ids):
            raise TypeError(f"`true_ids` must have an integer dtype; received {_dtype(true_ids)}")
        now = _values_now(true_ids)
        if now is not None and now.size and (now.min() < 0 or now.max() >= self.num_classes):
            raise SampledSoftmaxError(f"`true_ids` must be in [0, {self.num_classes - 1}]; received "
                                      f"{now.min() if now.min() < 0 else now.max()}")
        true2 = ops.cast(ops.reshape(true_ids, (ops.shape(true_ids)[0], -1)), "int32")
        tables = {}
        if self.sampler == "unigram":
            tables = dict(cdf=ops.convert_to_tensor(self.sampling_cdf),
                          probs=ops.convert_to_tensor(self.sampling_probs))
        elif self.sampler == "learned_unigram":
            tables = dict(counts=ops.convert_to_tensor(self.sampling_counts))
        u = uniforms(self.num_sampled, self.seed_generator)
        cand, probs = draw(self.sampler, u, self.num_classes, **tables)
        # Out-of-range true ids of a traced call get a nan expected count, never a wrapped one.
        in_range = (true2 >= 0) & (true2 < self.num_classes)
        p_true = ops.where(in_range, probs(ops.where(in_range, true2, 0)), float("nan"))
        true_count, samp_count = expected_counts(self.draw, self.num_sampled, cand, p_true, probs(cand))
        if training and self.sampler == "learned_unigram":  # after drawing, as TensorFlow's learned sampler
            seen = ops.segment_sum(ops.ones((ops.size(true2),), "float32"),
                                   ops.reshape(ops.where(in_range, true2, 0), (-1,)), num_segments=self.num_classes)
            self.sampling_counts.assign_add(seen)
        return cand, true_count, samp_count

    def compute_output_spec(self, true_ids, training=None):
        t = 1 if len(true_ids.shape) == 1 else true_ids.shape[1]
        return (keras.KerasTensor((self.num_sampled,), dtype="int32"),
                keras.KerasTensor((true_ids.shape[0], t), dtype="float32"),
                keras.KerasTensor((self.num_sampled,), dtype="float32"))

    def get_config(self):
        return dict(super().get_config(), num_classes=self.num_classes, num_sampled=self.num_sampled,
                    sampler=self.sampler, draw=self.draw, distortion=self.distortion, seed=self.seed,
                    unigrams_in_weights=self.sampler == "unigram")


class MixedNegatives(NamedTuple):
    """In-batch candidates followed by sampled ones (see :func:`mixed_negatives`)."""

    candidates: object
    candidate_ids: object
    log_q: object
    score_mask: object


def mixed_negatives(candidates, candidate_ids, in_batch_log_q, sampled_values, encode) -> MixedNegatives:
    """Mixed negative sampling (Yang et al. 2020) in ``keras.ops``, as
    :func:`sampled_softmax.reference.mixed_negatives`: the batch's ``candidates [B, D]`` plus the
    ``M`` candidates of ``sampled_values`` (a :class:`CorpusSampler`'s output, whose
    ``"unique_exact"`` expected counts are inclusion probabilities ``<= 1``) embedded by
    ``encode(ids) -> [M, D]`` (the candidate tower: a layer shared with the one that embedded the
    batch's candidates, so that both are one set of weights). Works on eager tensors and on a
    functional model's symbolic ones. Returns ``MixedNegatives(candidates [B + M, D],
    candidate_ids [B + M], log_q [B + M], score_mask [B, B + M])``, to pass on to
    :class:`InBatchSoftmax`: each column with its own source's log probability, padding slots
    (expected count ``inf``) masked out. Example::

        item_emb = item_tower(item_ids)
        mixed = mixed_negatives(item_emb, item_ids, frequency(item_ids), corpus_sampler(item_ids), item_tower)
        logits = InBatchSoftmax(0.05)(query_emb, mixed.candidates, candidate_ids=mixed.candidate_ids,
                                      log_q=mixed.log_q, score_mask=mixed.score_mask)
    """
    candidates, candidate_ids = ops.convert_to_tensor(candidates), ops.convert_to_tensor(candidate_ids)
    in_batch_log_q = ops.convert_to_tensor(in_batch_log_q)
    cand, _, count = (ops.convert_to_tensor(v) for v in V.check_sampled_values_triple(sampled_values))
    b, d = V.check_mixed_negatives_shapes(_shape(candidates), _shape(candidate_ids), _shape(in_batch_log_q),
                                          _shape(cand), _shape(count))
    m = _shape(cand)[0]
    for name, x in (("candidate_ids", candidate_ids), ("sampled_values[0]", cand)):
        V.check_integer_dtype(name, "int" in _dtype(x), _dtype(x))
    now = _values_now(count)
    if now is not None:
        finite = now[np.isfinite(now)]
        V.check_mixed_negatives_counts(float(finite.max()) if finite.size else None)
    extra = encode(cand)
    V.check_encoded_shape(list(_shape(extra)) if hasattr(extra, "shape") else type(extra).__name__, m, d)
    lq_dtype = _dtype(in_batch_log_q)
    count = ops.cast(count, lq_dtype)
    padding = ops.isinf(count)
    # A count above 1 that cannot be checked now (traced) makes log_q positive: InBatchSoftmax's
    # nan rule then shows it, never a plausible loss.
    log_e = ops.log(ops.where(padding, ops.ones_like(count), count))
    # Built by broadcasting, not from ops.shape: a functional model's batch size is unknown.
    in_batch = ops.ones_like(candidate_ids, dtype="bool")
    columns = ops.concatenate([in_batch, ops.logical_not(padding)], axis=0)
    score_mask = ops.logical_and(in_batch[:, None], columns[None, :])
    return MixedNegatives(ops.concatenate([candidates, ops.cast(extra, _dtype(candidates))], axis=0),
                          ops.concatenate([candidate_ids, ops.cast(cand, _dtype(candidate_ids))], axis=0),
                          ops.concatenate([in_batch_log_q, log_e], axis=0), score_mask)


class CorpusIndex:
    """Exact top-``k`` retrieval over a whole corpus, for evaluation: ``index(embeddings [N, D],
    ids [N])`` once (e.g. the candidate tower over every item), then ``search(query [B, D], k)``
    returns ``(scores [B, k], ids [B, k])``, best first. Scores are dot products, computed over
    the corpus in chunks of ``chunk_size`` rows (memory ``B * chunk_size``), merging each chunk's
    top ``k``."""

    def __init__(self, chunk_size: int = 65_536):
        from .._validation import check_positive_int

        self.chunk_size = check_positive_int("chunk_size", chunk_size)
        self.embeddings = self.ids = None

    def index(self, embeddings, ids=None) -> "CorpusIndex":
        embeddings = ops.convert_to_tensor(embeddings)
        if len(_shape(embeddings)) != 2:
            raise SampledSoftmaxError(f"`embeddings` must have shape [num_items, dim]; received shape "
                                      f"{list(_shape(embeddings))}")
        n = _shape(embeddings)[0]
        ids = ops.arange(n, dtype="int32") if ids is None else ops.convert_to_tensor(ids)
        if _shape(ids) != (n,):
            raise SampledSoftmaxError(f"`ids` must have shape [{n}]; received shape {list(_shape(ids))}")
        self.embeddings, self.ids = embeddings, ids
        return self

    def search(self, query, k: int = 10):
        from .._validation import check_positive_int

        if self.embeddings is None:
            raise SampledSoftmaxError("the index is empty: call index(embeddings, ids) first")
        k = check_positive_int("k", k)
        n = _shape(self.embeddings)[0]
        if k > n:
            raise SampledSoftmaxError(f"`k` must be <= {n} (the indexed items); received {k}")
        query = ops.convert_to_tensor(query)
        best_scores = best_ids = None
        for start in range(0, n, self.chunk_size):
            chunk = self.embeddings[start:start + self.chunk_size]
            scores = ops.matmul(query, ops.transpose(ops.cast(chunk, _dtype(query))))
            top_scores, top = ops.top_k(scores, min(k, _shape(chunk)[0]))
            top_ids = ops.take(self.ids[start:start + self.chunk_size], top)
            if best_scores is not None:
                top_scores = ops.concatenate([best_scores, top_scores], axis=1)
                top_ids = ops.concatenate([best_ids, top_ids], axis=1)
                top_scores, order = ops.top_k(top_scores, k)
                top_ids = ops.take_along_axis(top_ids, order, axis=1)
            best_scores, best_ids = top_scores, top_ids
        return best_scores, best_ids


@keras.saving.register_keras_serializable(package="sampled_softmax")
class RecallAtK(keras.metrics.Metric):
    """Recall@k over a :class:`CorpusIndex`: the share of queries whose true item id is among the
    ``k`` best of the whole corpus. ``update_state(y_true ids [B], y_pred query embeddings
    [B, D])``; use it in a loop over held-out pairs (``model.evaluate`` passes a model's output,
    so give it the query tower's)."""

    def __init__(self, index: CorpusIndex, k: int = 10, name: str | None = None, **kwargs):
        super().__init__(name=name or f"recall_at_{k}", **kwargs)
        self.corpus, self.k = index, k
        self.hits = self.add_variable(shape=(), initializer="zeros", name="hits")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        _, top = self.corpus.search(y_pred, self.k)
        y_true = ops.reshape(ops.cast(ops.convert_to_tensor(y_true), _dtype(top)), (-1, 1))
        hit = ops.cast(ops.any(top == y_true, axis=1), "float32")
        weight = ops.ones_like(hit) if sample_weight is None else ops.cast(ops.reshape(sample_weight, (-1,)),
                                                                            "float32")
        self.hits.assign(self.hits + ops.sum(hit * weight))
        self.count.assign(self.count + ops.sum(weight))

    def result(self):
        return ops.divide_no_nan(self.hits, self.count)

    def reset_state(self):
        self.hits.assign(0.0)
        self.count.assign(0.0)
