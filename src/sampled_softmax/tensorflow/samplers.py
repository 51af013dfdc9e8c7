"""Candidate samplers in plain TensorFlow ops: they run on any device and compile with XLA, so
sampling and loss fit in one ``tf.function(jit_compile=True)`` step. Formulas as in
:mod:`sampled_softmax.samplers`. ``draw="unique"`` (TensorFlow's own procedure, a
data-dependent loop) uses TensorFlow's sampler ops, which run on the CPU only and do not
compile. Also ``tf.random``'s sampler names, for code written against ``tf.nn``.
"""

from __future__ import annotations

import tensorflow as tf

from .. import SampledSoftmaxError, SampledValues
from .. import _validation as V
from ..samplers import STATIC_DRAWS
from . import _rows

# The draws these samplers make (``"unique"`` is TensorFlow's own op).
DRAWS = STATIC_DRAWS

__all__ = [
    "log_uniform_candidate_sampler", "uniform_candidate_sampler", "unigram_candidate_sampler",
    "all_candidate_sampler", "fixed_unigram_candidate_sampler", "learned_unigram_candidate_sampler",
    "LearnedUnigramSampler", "DRAWS",
]


def _draw_uniforms(n, generator):
    generator = tf.random.get_global_generator() if generator is None else generator
    return generator.uniform([n], dtype=tf.float64)


def _repeated_slots(values, num_classes):
    """True where a value in ``[0, num_classes)`` already appeared at an earlier position."""
    return tf.not_equal(_rows.first_reads(values, num_classes), tf.range(tf.shape(values)[0]))


def _checked_true_classes(true_classes, num_classes):
    """``true_classes`` as int64 and a mask of those outside ``[0, num_classes)``: an error now
    when eager, an assertion in a graph; under XLA (which drops assertions) their expected
    counts come out nan, and so does a loss that uses them."""
    true_classes = tf.convert_to_tensor(true_classes)
    V.check_integer_dtype("true_classes", true_classes.dtype.is_integer, true_classes.dtype.name)
    true_classes = tf.cast(true_classes, tf.int64)
    bad = (true_classes < 0) | (true_classes >= num_classes)
    message = f"`true_classes` must be in [0, {num_classes - 1}]"
    if tf.executing_eagerly():
        if bool(tf.reduce_any(bad)):
            values = tf.boolean_mask(true_classes, bad).numpy()
            raise SampledSoftmaxError(f"{message}; received {int(values[0])}")
        return true_classes, bad
    check = tf.debugging.Assert(~tf.reduce_any(bad), [message + "; received", tf.boolean_mask(true_classes, bad)],
                                summarize=3)
    with tf.control_dependencies([check]):
        return tf.identity(true_classes), bad


def _candidate_sampler(true_classes, num_sampled, num_classes, draw, generator, inverse_cdf, probs):
    V.check_choice("draw", draw, DRAWS)
    num_sampled = V.check_positive_int("num_sampled", num_sampled)
    true_classes, bad = _checked_true_classes(true_classes, num_classes)
    candidates = inverse_cdf(_draw_uniforms(num_sampled, generator))
    p_true = tf.where(bad, tf.constant(float("nan"), tf.float64), probs(tf.where(bad, tf.zeros_like(true_classes),
                                                                                 true_classes)))
    p_cand = probs(candidates)
    if draw == "with_replacement":
        true_count, samp_count = p_true * num_sampled, p_cand * num_sampled
    else:
        true_count = -tf.math.expm1(num_sampled * tf.math.log1p(-p_true))
        samp_count = -tf.math.expm1(num_sampled * tf.math.log1p(-p_cand))
        samp_count = tf.where(_repeated_slots(candidates, num_classes), tf.constant(float("inf"), tf.float64),
                              samp_count)
    return SampledValues(candidates, tf.cast(true_count, tf.float32), tf.cast(samp_count, tf.float32))


def log_uniform_candidate_sampler(true_classes, num_sampled, num_classes, *, draw="unique_exact", generator=None):
    """Log-uniform (Zipf) candidates, ``Q(k) = log((k+2)/(k+1)) / log(V+1)``, in TensorFlow ops.

    Args:
        true_classes: ``[batch, num_true]`` integer labels (their expected counts are returned).
        num_sampled: ``S``.
        num_classes: ``V``.
        draw: ``"unique_exact"`` (default: ``S`` draws, repeats become padding slots with
            expected count ``inf``; ``1 - (1 - Q)^S`` is exact) or ``"with_replacement"``
            (``S Q``). For TensorFlow's ``unique=True`` use ``tf.random.log_uniform_candidate_sampler``.
        generator: a ``tf.random.Generator`` (default: the global one).

    Returns:
        ``SampledValues`` to pass as ``sampled_values``.
    """
    num_classes = V.check_positive_int("num_classes", num_classes)
    log_range = tf.math.log1p(tf.constant(float(num_classes), tf.float64))

    def inverse_cdf(u):
        return tf.math.floormod(tf.cast(tf.exp(u * log_range), tf.int64) - 1, num_classes)

    def probs(ids):
        return tf.math.log1p(1.0 / (tf.cast(ids, tf.float64) + 1.0)) / log_range

    return _candidate_sampler(true_classes, num_sampled, num_classes, draw, generator, inverse_cdf, probs)


def uniform_candidate_sampler(true_classes, num_sampled, num_classes, *, draw="unique_exact", generator=None):
    """Uniform candidates, ``Q(k) = 1 / V``, in TensorFlow ops (see :func:`log_uniform_candidate_sampler`)."""
    num_classes = V.check_positive_int("num_classes", num_classes)

    def inverse_cdf(u):
        return tf.minimum(tf.cast(u * num_classes, tf.int64), num_classes - 1)

    def probs(ids):
        return tf.fill(tf.shape(ids), tf.constant(1.0 / num_classes, tf.float64))

    return _candidate_sampler(true_classes, num_sampled, num_classes, draw, generator, inverse_cdf, probs)


def unigram_candidate_sampler(true_classes, num_sampled, num_classes, unigrams, *, distortion=1.0,
                              num_reserved_ids=0, draw="unique_exact", generator=None):
    """Fixed unigram candidates, ``Q(k) ∝ unigrams[k] ** distortion`` with ``num_reserved_ids``
    leading ids never drawn (``tf.random.fixed_unigram_candidate_sampler``'s convention), in
    TensorFlow ops (see :func:`log_uniform_candidate_sampler`)."""
    from ..samplers import unigram_weights

    num_classes = V.check_positive_int("num_classes", num_classes)
    weights = unigram_weights(unigrams, num_classes=num_classes, distortion=distortion,
                              num_reserved_ids=num_reserved_ids)
    cdf = tf.constant(weights.cumsum(), tf.float64)
    w = tf.constant(weights / weights.sum(), tf.float64)

    def inverse_cdf(u):
        ids = tf.searchsorted(cdf, u * cdf[-1], side="right", out_type=tf.int64)
        return tf.minimum(ids, num_classes - 1)

    def probs(ids):
        return tf.gather(w, ids)

    return _candidate_sampler(true_classes, num_sampled, num_classes, draw, generator, inverse_cdf, probs)


def all_candidate_sampler(true_classes, num_true, num_sampled, unique, seed=None, name=None):
    """``tf.random.all_candidate_sampler``: every class ``0 .. num_sampled - 1`` as a candidate,
    each with expected count 1 (useful to test a loss against the full softmax). In TensorFlow
    ops with static shapes (it compiles with XLA); ``unique`` and ``seed`` change nothing, as in
    TensorFlow.

    Returns:
        ``SampledValues(candidates [num_sampled] int64, true_expected_count [batch, num_true],
        sampled_expected_count [num_sampled])`` (float32 counts).
    """
    del unique, seed
    with tf.name_scope(name or "all_candidate_sampler"):
        num_true = V.check_positive_int("num_true", num_true)
        num_sampled = V.check_positive_int("num_sampled", num_sampled)
        true_classes = tf.convert_to_tensor(true_classes)
        V.check_integer_dtype("true_classes", true_classes.dtype.is_integer, true_classes.dtype.name)
        batch = tf.shape(true_classes)[0]
        return SampledValues(tf.range(num_sampled, dtype=tf.int64), tf.ones([batch, num_true], tf.float32),
                             tf.ones([num_sampled], tf.float32))


def fixed_unigram_candidate_sampler(*args, **kwargs):
    """``tf.random.fixed_unigram_candidate_sampler`` itself (TensorFlow's op, same arguments and
    draws), so that code written against ``tf.nn`` runs unchanged with this module in its place.
    For a draw that compiles with XLA, see :func:`unigram_candidate_sampler`."""
    return tf.random.fixed_unigram_candidate_sampler(*args, **kwargs)


def learned_unigram_candidate_sampler(*args, **kwargs):
    """``tf.random.learned_unigram_candidate_sampler`` itself (TensorFlow's op), as
    :func:`fixed_unigram_candidate_sampler`. For a draw that compiles with XLA and whose
    counts are a checkpointed variable, see :class:`LearnedUnigramSampler`."""
    return tf.random.learned_unigram_candidate_sampler(*args, **kwargs)


class LearnedUnigramSampler(tf.Module):
    """Unigram candidates learned from the labels seen (``tf.random.learned_unigram_candidate_sampler``),
    in TensorFlow ops: counts start at 1 per class and each call adds its ``true_classes``
    after drawing. The counts are a ``tf.Variable`` (float64, exact to 2**53), so
    ``tf.train.Checkpoint(sampler=...)`` saves and restores them, and a call runs eagerly, in
    ``tf.function`` and under ``jit_compile=True``.

    Example::

        sampler = LearnedUnigramSampler(V)
        sv = sampler(labels, num_sampled=1024, generator=g)     # [batch, num_true] labels
        loss = sampled_softmax_loss(W, b, labels, h, 1024, V, sampled_values=sv)
    """

    def __init__(self, num_classes: int, *, draw: str = "unique_exact", name=None):
        super().__init__(name=name)
        self.num_classes = V.check_positive_int("num_classes", num_classes)
        self.draw = V.check_choice("draw", draw, DRAWS)
        self.counts = tf.Variable(tf.ones([self.num_classes], tf.float64), trainable=False, name="counts")

    def __call__(self, true_classes, num_sampled, *, generator=None, update=True):
        """``SampledValues`` for ``true_classes [batch, num_true]``; then, with ``update``, the
        labels are added to the counts."""
        true_classes, _ = _checked_true_classes(true_classes, self.num_classes)
        counts = tf.convert_to_tensor(self.counts)
        cdf = tf.cumsum(counts)

        def inverse_cdf(u):
            return tf.minimum(tf.searchsorted(cdf, u * cdf[-1], side="right", out_type=tf.int64), self.num_classes - 1)

        def probs(ids):
            return tf.gather(counts, ids) / cdf[-1]

        values = _candidate_sampler(true_classes, num_sampled, self.num_classes, self.draw, generator, inverse_cdf, probs)
        if update:
            flat = tf.reshape(true_classes, [-1])
            flat = tf.boolean_mask(flat, (flat >= 0) & (flat < self.num_classes)) if not tf.executing_eagerly() else flat
            replica = tf.distribute.get_replica_context()
            if replica is not None and replica.num_replicas_in_sync > 1:
                # Every replica adds every replica's labels to its copy of the counts: the copies
                # stay equal, and a checkpoint (replica 0's copy) holds all the labels seen.
                flat = replica.all_gather(flat, axis=0)
            self.counts.scatter_add(tf.IndexedSlices(tf.ones(tf.shape(flat), tf.float64), flat))
        return values
