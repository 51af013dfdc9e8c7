"""Candidate samplers for JAX: pure functions of a PRNG key, jit-compilable with a static
``num_sampled``.

The distributions and expected counts of :mod:`sampled_softmax.samplers` (TensorFlow's):
``uniform``, ``log_uniform`` (Zipf over ids sorted by decreasing frequency) and ``unigram`` (a
weight table, e.g. counts ``** 0.75``; a learned unigram is the same with counts you update
yourself, see :func:`learned_unigram_update`). Two draws, both with static shapes:

* ``"unique_exact"`` (default): ``S`` independent draws, de-duplicated; a repeated slot is
  padding (expected count ``inf``, removed from every row) and ``E(k) = 1 - (1 - Q(k)) ** S``
  is the exact inclusion probability;
* ``"with_replacement"``: ``E(k) = S Q(k)``.

TensorFlow's ``"unique"`` draw (draw until ``S`` distinct classes are seen) has a data-dependent
number of tries: it is left out here, as in the Keras layer.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import SampledSoftmaxError
from .._validation import check_choice, check_num_sampled, check_positive_int
from ..samplers import STATIC_DRAWS, unigram_weights

DRAWS = STATIC_DRAWS
SAMPLERS = ("uniform", "log_uniform", "unigram")

__all__ = ["DRAWS", "SAMPLERS", "Sampler", "uniform", "log_uniform", "unigram", "learned_unigram_update",
           "probs", "draw_candidates", "expected_counts", "sampled_values", "repeated_slots"]


class Sampler(NamedTuple):
    """A sampler's static description and tables: ``kind`` (one of :data:`SAMPLERS`),
    ``num_classes`` and, for ``unigram``, the weight table ``weights [V]`` (float32, not
    normalised; its prefix sums are the inverse CDF)."""

    kind: str
    num_classes: int
    weights: jax.Array | None = None


def uniform(num_classes: int) -> Sampler:
    """``Q(k) = 1 / V``."""
    return Sampler("uniform", check_positive_int("num_classes", num_classes))


def log_uniform(num_classes: int) -> Sampler:
    """``Q(k) = log((k + 2) / (k + 1)) / log(V + 1)`` (ids sorted by decreasing frequency)."""
    return Sampler("log_uniform", check_positive_int("num_classes", num_classes))


def unigram(num_classes: int, unigrams, *, distortion: float = 1.0, num_reserved_ids: int = 0) -> Sampler:
    """``Q(k) ∝ unigrams[k] ** distortion`` (``tf.random.fixed_unigram_candidate_sampler``), with
    ``num_reserved_ids`` leading ids never drawn. ``unigrams`` may be a traced array (a learned
    unigram's counts): then it is used as given, without the checks of a concrete table."""
    num_classes = check_positive_int("num_classes", num_classes)
    if isinstance(unigrams, jax.core.Tracer):
        w = jnp.concatenate([jnp.zeros(num_reserved_ids, unigrams.dtype), unigrams ** distortion])
    else:
        w = jnp.asarray(unigram_weights(np.asarray(unigrams), num_classes=num_classes, distortion=distortion,
                                        num_reserved_ids=num_reserved_ids), jnp.float32)
    return Sampler("unigram", num_classes, w)


def learned_unigram_update(counts: jax.Array, labels: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """A learned unigram's state after a step: ``counts [V]`` (start at ones, as
    ``tf.random.learned_unigram_candidate_sampler``) plus the step's labels (``valid``: a mask
    of the labels to count). Draw from ``unigram(V, counts)`` before updating, as TensorFlow does."""
    ones = jnp.ones(labels.shape, counts.dtype) if valid is None else valid.astype(counts.dtype)
    return counts.at[labels.reshape(-1)].add(ones.reshape(-1), mode="drop")


def probs(sampler: Sampler, ids: jax.Array) -> jax.Array:
    """``Q(ids)`` (float32)."""
    if sampler.kind == "uniform":
        return jnp.full(ids.shape, 1.0 / sampler.num_classes, jnp.float32)
    if sampler.kind == "log_uniform":
        k = ids.astype(jnp.float32)
        return jnp.log1p(1.0 / (k + 1.0)) / np.float32(np.log1p(sampler.num_classes))
    return sampler.weights[ids] / jnp.sum(sampler.weights)


def _from_uniforms(sampler: Sampler, u: jax.Array) -> jax.Array:
    V = sampler.num_classes
    if sampler.kind == "uniform":
        return jnp.minimum((u * V).astype(jnp.int32), V - 1)
    if sampler.kind == "log_uniform":
        # `% V` guards the round-off at u -> 1, as TensorFlow does.
        return (jnp.floor(jnp.exp(u * np.float32(np.log1p(V)))).astype(jnp.int32) - 1) % V
    cdf = jnp.cumsum(sampler.weights)
    # side="right" skips zero-weight classes: cdf[k-1] <= x < cdf[k] needs weight(k) > 0.
    return jnp.minimum(jnp.searchsorted(cdf, u * cdf[-1], side="right").astype(jnp.int32), V - 1)


def repeated_slots(candidates: jax.Array) -> jax.Array:
    """``[S]`` bool: slot ``j`` holds a class already drawn in an earlier slot."""
    order = jnp.argsort(candidates, stable=True)
    ranked = candidates[order]
    later = jnp.concatenate([jnp.zeros(1, bool), ranked[1:] == ranked[:-1]])
    return jnp.zeros(candidates.shape, bool).at[order].set(later)


def draw_candidates(key: jax.Array, sampler: Sampler, num_sampled: int, *, draw: str = "unique_exact") -> jax.Array:
    """``num_sampled`` candidate ids ``[S]`` (int32) from ``key``; the same key, the same draw."""
    check_choice("draw", draw, DRAWS)
    u = jax.random.uniform(key, (num_sampled,), jnp.float32)
    return _from_uniforms(sampler, u)


def expected_counts(sampler: Sampler, ids: jax.Array, num_sampled: int, *, draw: str = "unique_exact",
                    candidates: jax.Array | None = None) -> jax.Array:
    """Expected counts ``E(ids)`` of ``num_sampled`` draws (float32): ``S Q`` with replacement,
    ``1 - (1 - Q) ** S`` for ``unique_exact``. Given the ``candidates`` themselves (``ids`` is
    then the candidates), repeated slots of ``unique_exact`` are ``inf`` (padding)."""
    check_choice("draw", draw, DRAWS)
    q = probs(sampler, ids)
    if draw == "with_replacement":
        return q * num_sampled
    e = -jnp.expm1(num_sampled * jnp.log1p(-q))
    if candidates is not None:
        e = jnp.where(repeated_slots(candidates), jnp.inf, e)
    return e


def sampled_values(key: jax.Array, sampler: Sampler, labels: jax.Array, num_sampled: int, *,
                   draw: str = "unique_exact") -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(candidates [S], true_expected_count [N, T], sampled_expected_count [S])``, as
    TensorFlow's samplers return them, for ``labels [N, T]`` (float32 counts)."""
    check_num_sampled(num_sampled, sampler.num_classes, unique=draw == "unique_exact")
    cand = draw_candidates(key, sampler, num_sampled, draw=draw)
    true_count = expected_counts(sampler, labels, num_sampled, draw=draw)
    samp_count = expected_counts(sampler, cand, num_sampled, draw=draw,
                                 candidates=cand if draw == "unique_exact" else None)
    return cand, true_count, samp_count


def make(sampler, num_classes: int) -> Sampler:
    """A :class:`Sampler` from a name (``"uniform"``, ``"log_uniform"``) or a sampler."""
    if isinstance(sampler, Sampler):
        if sampler.num_classes != num_classes:
            raise SampledSoftmaxError(
                f"`sampler` must cover num_classes={num_classes}; received a sampler over {sampler.num_classes}")
        return sampler
    if sampler == "unigram":
        raise SampledSoftmaxError("`sampler='unigram'` needs its table: pass sampled_softmax.jax.samplers."
                                  "unigram(num_classes, counts)")
    check_choice("sampler", sampler, ("uniform", "log_uniform"))
    return uniform(num_classes) if sampler == "uniform" else log_uniform(num_classes)
