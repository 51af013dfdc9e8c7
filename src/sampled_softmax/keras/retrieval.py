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

import numpy as np

from .. import MixedNegatives, SampledSoftmaxError
from .. import _validation as V
from ..samplers import unigram_weights
from ._backend import keras, ops
from ._arrays import _dtype, _shape, _values_now
from .frequency import CountMinFrequency, StreamingFrequency  # noqa: F401 - their first home, still importable
from .index import CorpusIndex, RecallAtK  # noqa: F401
from .samplers import DRAWS, SAMPLERS, SavesSeedState, draw, expected_counts, uniforms

__all__ = ["InBatchSoftmax", "InBatchSoftmaxLoss", "CorpusSampler", "MixedNegatives", "mixed_negatives"]


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
                raise SampledSoftmaxError(V.EXCLUDED_NEEDS_CANDIDATE_IDS)
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
