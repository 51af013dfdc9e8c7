"""Candidate draws and expected counts in ``keras.ops``: the distributions of
:mod:`sampled_softmax.samplers`, on every Keras backend."""

from __future__ import annotations

import math

from ._backend import keras, ops
from ..samplers import STATIC_DRAWS, DistributionKind

# The samplers and draws of the Keras layer (``"unique"``, TensorFlow's data-dependent loop, is
# not one: it cannot be traced by every backend).
SAMPLERS = tuple(kind.name for kind in DistributionKind)
DRAWS = STATIC_DRAWS


def _log_uniform_draw(u, num_classes):
    x = ops.floor(ops.exp(u * math.log1p(num_classes)))
    return ops.mod(ops.cast(x, "int32") - 1, num_classes)


def _log_uniform_probs(ids, num_classes):
    k = ops.cast(ids, "float32")
    return ops.log1p(1.0 / (k + 1.0)) / math.log1p(num_classes)


def _repeated_slots(values):
    """True where a value also sits at another slot that counts as its first (sort-based)."""
    order = ops.argsort(values)
    sorted_values = ops.take(values, order)
    repeat_sorted = ops.concatenate(
        [ops.zeros((1,), "bool"), ops.equal(sorted_values[1:], sorted_values[:-1])], axis=0)
    return ops.take(repeat_sorted, ops.argsort(order))


def draw(sampler, u, num_classes, *, cdf=None, probs=None, counts=None):
    """Candidates (int32) from uniforms ``u`` by inverse CDF, and a function giving each id's
    probability ``Q``. ``unigram`` takes its normalised ``cdf`` and ``probs`` tables;
    ``learned_unigram`` its ``counts``."""
    if sampler == "uniform":
        cand = ops.minimum(ops.cast(ops.floor(u * num_classes), "int32"), num_classes - 1)
        return cand, lambda ids: ops.full(ops.shape(ids), 1.0 / num_classes, "float32")
    if sampler == "log_uniform":
        return _log_uniform_draw(u, num_classes), lambda ids: _log_uniform_probs(ids, num_classes)
    if sampler == "unigram":
        cand = ops.minimum(ops.cast(ops.searchsorted(cdf, u, side="right"), "int32"), num_classes - 1)
        return cand, lambda ids: ops.take(probs, ids)
    # One O(V) pass over the counts per draw: the CDF, its total, and the probabilities from both.
    cumulative = ops.cumsum(counts)
    total = cumulative[-1]
    cand = ops.minimum(ops.cast(ops.searchsorted(cumulative, u * total, side="right"), "int32"), num_classes - 1)
    return cand, lambda ids: ops.take(counts, ids) / total


def expected_counts(draw_kind, num_sampled, cand, p_true, p_cand):
    """``(true_expected_count, sampled_expected_count)`` for the draw (padding slots of
    ``"unique_exact"`` at ``inf``), as :func:`sampled_softmax.samplers.expected_count`."""
    if draw_kind == "with_replacement":
        return p_true * num_sampled, p_cand * num_sampled

    def inclusion(p):
        return -ops.expm1(num_sampled * ops.log1p(-p))

    return inclusion(p_true), ops.where(_repeated_slots(cand), float("inf"), inclusion(p_cand))


def uniforms(num_sampled, seed_generator):
    """The draw's ``num_sampled`` uniforms from the layer's seed generator."""
    return keras.random.uniform((num_sampled,), dtype="float32", seed=seed_generator)


class SavesSeedState:
    """A mixin for a layer that draws with ``self.seed_generator``: Keras saves a layer's own
    variables but not its SeedGenerator's state, so without this a resumed ``fit`` would draw
    the first epoch's candidates again."""

    _SEED_KEY = "seed_generator_state"

    def save_own_variables(self, store):
        super().save_own_variables(store)
        store[self._SEED_KEY] = self.seed_generator.state

    def load_own_variables(self, store):
        keys = list(store.keys())
        if self._SEED_KEY in keys:
            self.seed_generator.state.assign(store[self._SEED_KEY])
            store = {k: store[k] for k in keys if k != self._SEED_KEY}
        super().load_own_variables(store)
