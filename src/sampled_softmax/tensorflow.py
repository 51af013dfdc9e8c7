"""TensorFlow front end: a drop-in for ``tf.nn.sampled_softmax_loss`` and the exact loss for
evaluation. Imports TensorFlow (and no other framework).

``sampled_softmax_loss`` keeps ``tf.nn.sampled_softmax_loss``'s signature, defaults and
output: change the import, nothing else. The touched rows of the class table are gathered with
TensorFlow's own ``gather`` (so the gradients of weights and biases are ``tf.IndexedSlices``
over those rows, as ``tf.nn``'s are), and the loss over them is one ``tf.custom_gradient``:
matrix products, a masked log-softmax, and an explicit backward.
"""

from __future__ import annotations

import tensorflow as tf

from . import SampledSoftmaxError, SampledValues
from . import _validation as V

__all__ = [
    "sampled_softmax_loss", "full_softmax_loss", "full_logits", "log_uniform_candidate_sampler",
    "uniform_candidate_sampler", "unigram_candidate_sampler", "all_candidate_sampler", "compute_accidental_hits",
    "fixed_unigram_candidate_sampler", "learned_unigram_candidate_sampler", "LearnedUnigramSampler", "SampledValues",
    "SampledSoftmaxError",
]

_LOW_PRECISION = (tf.float16, tf.bfloat16)


def _compute_dtype(dtype):
    """float16/bfloat16 inputs are computed (and their losses returned) in float32."""
    return tf.float32 if dtype in _LOW_PRECISION else dtype


def _shards(weights):
    if isinstance(weights, (list, tuple)):
        return list(weights)
    return [weights]


def _static_shape(x):
    return tuple(-1 if d is None else d for d in x.shape.as_list()) if x.shape.rank is not None else None


def _check(weights, biases, labels, inputs, num_sampled, num_classes, num_true, partition_strategy):
    """Static checks (shapes known at trace time); returns ``(shards, num_classes, dim)``."""
    shards = [tf.convert_to_tensor(w) if not isinstance(w, tf.Variable) else w for w in _shards(weights)]
    for i, w in enumerate(shards):
        name = "weights" if len(shards) == 1 else f"weights[{i}]"
        V.check_floating_dtype(name, w.dtype.is_floating, w.dtype.name)
    V.check_floating_dtype("inputs", inputs.dtype.is_floating, inputs.dtype.name)
    # Integer labels, or floating ones, which tf.nn casts to int64 (TensorFlow's own bfloat16 test).
    V.check_integer_dtype("labels", labels.dtype.is_integer or labels.dtype.is_floating, labels.dtype.name)
    num_sampled = V.check_positive_int("num_sampled", num_sampled)
    shapes = [_static_shape(w) for w in shards]
    in_shape = _static_shape(inputs)
    if in_shape is None or len(in_shape) != 2:
        raise SampledSoftmaxError(f"`inputs` must have shape [batch, dim]; received shape {inputs.shape}")
    if all(s is not None and -1 not in s for s in shapes):
        # An input_signature may leave the feature dimension unknown: checked when it runs.
        in_dim = in_shape[1] if in_shape[1] != -1 else shapes[0][1]
        num_classes, dim = V.check_weights_shapes(shapes, num_classes, in_dim)
        if len(shards) > 1:
            V.shard_layout([s[0] for s in shapes], num_classes, partition_strategy)
    else:
        num_classes = V.check_positive_int("num_classes", num_classes)
    bias_shards = None
    if biases is not None:
        bias_shards = [b if isinstance(b, (tf.Tensor, tf.Variable)) else tf.convert_to_tensor(b) for b in _shards(biases)]
        for i, b in enumerate(bias_shards):
            V.check_floating_dtype("biases" if len(bias_shards) == 1 else f"biases[{i}]", b.dtype.is_floating,
                                   b.dtype.name)
        b_shapes = [_static_shape(b) for b in bias_shards]
        if all(s is not None and -1 not in s for s in b_shapes):
            if len(bias_shards) == 1:
                V.check_biases_shape(b_shapes[0], num_classes)
            else:  # shards of the same layout as the weights' (tf.nn looks them up alike)
                if any(len(s) != 1 for s in b_shapes):
                    raise SampledSoftmaxError(f"`biases` shards must be 1-D; received shapes {[list(s) for s in b_shapes]}")
                V.shard_layout([s[0] for s in b_shapes], num_classes, partition_strategy, name="biases")
    l_shape = _static_shape(labels)
    if l_shape is not None and in_shape[0] != -1 and -1 not in l_shape:
        V.resolve_label_shape(l_shape, in_shape, num_true)
    return shards, bias_shards, num_classes, num_sampled


def _check_label_values(labels, num_classes):
    """Labels in ``[0, num_classes)``: an error now when eager; in a graph an assertion with
    the same words (a GPU gather would return zeros for them); under XLA, which drops
    assertions, their rows are nan (see ``_nan_rows``). Returns ``labels``."""
    if tf.executing_eagerly():
        if tf.size(labels) > 0:
            V.check_label_values(int(tf.reduce_min(labels)), int(tf.reduce_max(labels)), num_classes, None)
        return labels
    low, high = tf.reduce_min(labels), tf.reduce_max(labels)
    checks = [tf.debugging.Assert(tf.logical_or(tf.size(labels) == 0, low >= 0),
                                  [f"`labels` must be in [0, {num_classes - 1}]; received values down to", low]),
              tf.debugging.Assert(tf.logical_or(tf.size(labels) == 0, high < num_classes),
                                  [f"`labels` must be in [0, {num_classes - 1}]; received values up to", high])]
    with tf.control_dependencies(checks):
        return tf.identity(labels)


def _check_sampled_values(sampled_values, num_sampled, num_classes, labels, num_true):
    """Dtypes and static shapes always; values when eager (as for the labels), and in a graph
    by assertions (XLA drops those: its rows become nan instead, see `_nan_rows`).
    ``true_expected_count`` of shape ``[batch, 1]`` is broadcast over ``num_true``, as tf.nn does."""
    cand, true_count, samp_count = (tf.convert_to_tensor(v) for v in V.check_sampled_values_triple(sampled_values))
    V.check_integer_dtype("sampled_values[0]", cand.dtype.is_integer, cand.dtype.name)
    shapes = [_static_shape(v) for v in (cand, true_count, samp_count)]
    n = _static_shape(labels)[0]
    if n != -1 and all(s is not None and -1 not in s for s in shapes):
        V.check_sampled_values_shapes(*shapes, num_sampled, n, num_true)
        if tf.executing_eagerly():
            V.check_sampled_values_numpy(cand.numpy(), true_count.numpy(), samp_count.numpy(), num_sampled=num_sampled,
                                         num_classes=num_classes, lead_size=n, num_true=num_true)
            return cand, true_count, samp_count
    if not tf.executing_eagerly():
        checks = [
            tf.debugging.assert_equal(tf.size(cand), tf.constant(num_sampled, tf.int32), message=(
                f"`sampled_values[0]` (sampled_candidates) must have shape [{num_sampled}]")),
            tf.debugging.assert_equal(tf.size(samp_count), tf.size(cand), message=(
                "`sampled_values[2]` (sampled_expected_count) must have the shape of sampled_candidates")),
            tf.debugging.assert_non_negative(cand, message=f"`sampled_values[0]` (sampled_candidates) must be in "
                                                           f"[0, {num_classes - 1}]"),
            tf.debugging.assert_less(tf.cast(cand, tf.int64), tf.constant(num_classes, tf.int64), message=(
                f"`sampled_values[0]` (sampled_candidates) must be in [0, {num_classes - 1}]")),
            tf.debugging.assert_positive(true_count, message=(
                "`sampled_values[1]` (true_expected_count) must be positive and finite")),
            tf.debugging.assert_all_finite(tf.cast(true_count, tf.float32),
                                           "`sampled_values[1]` (true_expected_count) must be positive and finite"),
            tf.debugging.assert_positive(samp_count, message=(
                "`sampled_values[2]` (sampled_expected_count) must be positive (inf marks a padding slot)")),
        ]
        with tf.control_dependencies(checks):
            cand = tf.identity(cand)
    return cand, true_count, samp_count


def _gather(shards, ids, partition_strategy):
    if len(shards) == 1:
        return tf.gather(shards[0], ids)
    return tf.nn.embedding_lookup(shards, ids) if partition_strategy == "div" else _gather_mod(shards, ids)


def _gather_mod(shards, ids):
    n = len(shards)
    shard, local = ids % n, ids // n
    parts = tf.dynamic_partition(tf.range(tf.size(ids)), tf.cast(shard, tf.int32), n)
    local_parts = tf.dynamic_partition(local, tf.cast(shard, tf.int32), n)
    rows = [tf.gather(w, lp) for w, lp in zip(shards, local_parts)]
    return tf.dynamic_stitch(parts, rows)


def _sampled_loss(h, rows, b, logq, removed, num_true):
    """Per-row loss for ``h [N, D]`` over the gathered columns: ``rows [M, D]``, ``b [M]`` and
    ``logq [M]`` hold the ``N * T`` true columns then the ``S`` candidates. Gradients flow to
    ``h``, ``rows`` and ``b`` whole, so no slice of them needs a gradient of its own."""

    @tf.custom_gradient
    def fused(h, rows, b):
        n = tf.shape(h)[0]
        nt = n * num_true
        corr = b - logq
        w_true, w_cand = rows[:nt], rows[nt:]
        if num_true == 1:
            tl = tf.reduce_sum(h * w_true, axis=1, keepdims=True) + corr[:nt, tf.newaxis]
        else:
            w_true = tf.reshape(w_true, [n, num_true, -1])
            tl = tf.einsum("nd,ntd->nt", h, w_true) + tf.reshape(corr[:nt], [n, num_true])
        sl = tf.matmul(h, w_cand, transpose_b=True) + corr[tf.newaxis, nt:]
        # Removed candidates take the lowest finite value: exp() of it underflows to exactly 0,
        # so their probability and gradient are exactly 0 (and, unlike -inf, it keeps the fused
        # kernel's 0 * logit terms finite; this loss has no label smoothing).
        sl = tf.where(removed, tf.constant(sl.dtype.min, sl.dtype), sl)
        logits = tf.concat([tl, sl], 1)
        target = tf.concat([tf.fill([n, num_true], tf.constant(1.0 / num_true, h.dtype)), tf.zeros_like(sl)], 1)
        # One fused kernel gives the loss and d loss / d logits = softmax - target.
        loss, backprop = tf.raw_ops.SoftmaxCrossEntropyWithLogits(features=logits, labels=target)

        def grad(d_loss):
            g = backprop * d_loss[:, tf.newaxis]
            g_true, g_cand = g[:, :num_true], g[:, num_true:]
            if num_true == 1:
                d_h = g_true * w_true + tf.matmul(g_cand, w_cand)
                d_true = g_true * h
            else:
                d_h = tf.einsum("nt,ntd->nd", g_true, w_true) + tf.matmul(g_cand, w_cand)
                d_true = tf.reshape(g_true[:, :, tf.newaxis] * h[:, tf.newaxis, :], [nt, -1])
            d_rows = tf.concat([d_true, tf.matmul(g_cand, h, transpose_a=True)], 0)
            d_b = tf.concat([tf.reshape(g_true, [-1]), tf.reduce_sum(g_cand, 0)], 0)
            return d_h, d_rows, d_b

        return loss, grad

    return fused(h, rows, b)


def sampled_softmax_loss(weights, biases, labels, inputs, num_sampled, num_classes, num_true=1,
                         sampled_values=None, remove_accidental_hits=True, seed=None,
                         name="sampled_softmax_loss"):
    """Sampled softmax training loss: ``tf.nn.sampled_softmax_loss``'s signature and output.

    Per row ``i``, with candidates ``c`` shared by the batch and expected counts ``E``:
    ``o_ik = h_i . W_k + b_k - log E(k)``, and ``loss_i = logsumexp_k o_ik - (1/T) sum_j o_iy_ij``
    over the true columns and the candidates not removed as accidental hits.

    Args:
        weights: ``[num_classes, dim]`` tensor or variable, or a list of shards (``"div"``
            layout, as ``tf.nn``'s).
        biases: ``[num_classes]``.
        labels: ``[batch, num_true]`` int32 or int64.
        inputs: ``[batch, dim]``; float16/bfloat16 inputs are computed in float32.
        num_sampled, num_classes, num_true: as ``tf.nn.sampled_softmax_loss``.
        sampled_values: ``(sampled_candidates, true_expected_count, sampled_expected_count)``;
            default: ``tf.random.log_uniform_candidate_sampler(..., unique=True, seed=seed)``,
            the same draw as ``tf.nn`` with the same seed.
        remove_accidental_hits: remove candidates equal to a row's label from its normalizer
            (a true mask, where ``tf.nn`` adds ``-FLT_MAX``; where one candidate is drawn twice,
            every copy is removed, where ``tf.nn`` removes one).
        seed: seed of the default sampler.
        name: name scope.

    Returns:
        ``[batch]`` per-example losses (float32 for float16/bfloat16 inputs).

    Raises:
        SampledSoftmaxError: a bad shape or value, naming the argument.
        TypeError: a wrong dtype.
    """
    with tf.name_scope(name):
        partition_strategy = "div"
        inputs = tf.convert_to_tensor(inputs)
        labels = tf.convert_to_tensor(labels)
        shards, bias_shards, num_classes, num_sampled = _check(weights, biases, labels, inputs, num_sampled,
                                                               num_classes, num_true, partition_strategy)
        labels = _check_label_values(tf.reshape(tf.cast(labels, tf.int64), [-1, num_true]), num_classes)
        if sampled_values is None:
            V.check_num_sampled(num_sampled, num_classes, unique=True)
            sampled_values = tf.random.log_uniform_candidate_sampler(
                true_classes=labels, num_true=num_true, num_sampled=num_sampled, unique=True,
                range_max=num_classes, seed=seed)
        else:
            sampled_values = _check_sampled_values(sampled_values, num_sampled, num_classes, labels, num_true)
        cand, true_count, samp_count = (tf.stop_gradient(tf.convert_to_tensor(v)) for v in sampled_values)
        cand = tf.cast(cand, tf.int64)
        cdt = _compute_dtype(inputs.dtype)
        n = tf.shape(labels)[0]
        true_count = tf.broadcast_to(tf.reshape(true_count, [n, -1]), [n, num_true])
        ids = tf.concat([tf.reshape(labels, [-1]), cand], 0)
        rows = tf.cast(_gather(shards, ids, partition_strategy), cdt)
        b = tf.zeros(tf.shape(ids), cdt) if biases is None else tf.cast(_gather(bias_shards, ids, partition_strategy), cdt)
        # Padding slots (expected count inf, from draw="unique_exact") are removed from every row.
        padding = tf.logical_not(tf.math.is_finite(samp_count))
        samp_count = tf.where(padding, tf.ones_like(samp_count), samp_count)
        logq = tf.math.log(tf.cast(tf.concat([tf.reshape(true_count, [-1]), samp_count], 0), cdt))
        removed = tf.broadcast_to(padding[tf.newaxis, :], [n, tf.shape(cand)[0]])
        if remove_accidental_hits:
            hits = tf.reduce_any(labels[:, :, tf.newaxis] == cand[tf.newaxis, tf.newaxis, :], axis=1)
            removed = tf.logical_or(removed, hits)
        loss = _sampled_loss(tf.cast(inputs, cdt), rows, b, logq, removed, num_true)
        return _nan_rows(loss, labels, cand, true_count, samp_count, num_classes)


def _nan_rows(loss, labels, cand, true_count, samp_count, num_classes):
    """Rows whose label is outside ``[0, V)``, and every row when a candidate is or when an
    expected count is not positive, are nan: where nothing raises (XLA drops assertions, and its
    gathers clamp an index into range, as GPU gathers return zeros) the result is never a
    plausible number. Eager calls and graphs on the CPU raise before this."""
    bad_label = tf.reduce_any((labels < 0) | (labels >= num_classes), axis=1)
    true_count = tf.cast(true_count, tf.float32)
    bad_count = tf.reduce_any(~(true_count > 0) | ~tf.math.is_finite(true_count), axis=1)
    bad_all = tf.reduce_any((cand < 0) | (cand >= num_classes)) | tf.reduce_any(~(tf.cast(samp_count, tf.float32) > 0))
    bad = bad_label | bad_count | bad_all
    return tf.where(bad, tf.constant(float("nan"), loss.dtype), loss)


def full_logits(weights, biases, inputs, name="full_logits"):
    """Exact logits ``inputs @ W^T + b``, ``[batch, num_classes]``, from one table or ``"div"`` shards."""
    with tf.name_scope(name):
        shards = _shards(weights)
        W = shards[0] if len(shards) == 1 else tf.concat(shards, 0)
        inputs = tf.convert_to_tensor(inputs)
        cdt = _compute_dtype(inputs.dtype)
        logits = tf.matmul(tf.cast(inputs, cdt), tf.cast(W, cdt), transpose_b=True)
        if biases is None:
            return logits
        b_shards = _shards(biases)
        return logits + tf.cast(b_shards[0] if len(b_shards) == 1 else tf.concat(b_shards, 0), cdt)


def full_softmax_loss(weights, biases, labels, inputs, num_classes=None, num_true=1, name="full_softmax_loss"):
    """Exact softmax cross-entropy over all classes, for evaluation: ``[batch]``.

    Same weights, biases and labels as :func:`sampled_softmax_loss`; with ``num_true > 1`` the
    target is ``1 / num_true`` on each label.
    """
    with tf.name_scope(name):
        inputs = tf.convert_to_tensor(inputs)
        labels = tf.convert_to_tensor(labels)
        shards, bias_shards, num_classes, _ = _check(weights, biases, labels, inputs, 1, num_classes or
                                                     sum(int(w.shape[0]) for w in _shards(weights)), num_true, "div")
        labels = _check_label_values(tf.reshape(tf.cast(labels, tf.int64), [-1, num_true]), num_classes)
        logp = tf.nn.log_softmax(full_logits(shards, bias_shards, inputs))
        loss = -tf.reduce_mean(tf.gather(logp, labels, batch_dims=1), axis=1)
        bad = tf.reduce_any((labels < 0) | (labels >= num_classes), axis=1)  # see _nan_rows
        return tf.where(bad, tf.constant(float("nan"), loss.dtype), loss)


# ---------------------------------------------------------------------------------------------
# Candidate samplers in plain TensorFlow ops: they run on any device and compile with XLA, so
# sampling and loss fit in one `tf.function(jit_compile=True)` step. Formulas as in
# `sampled_softmax.samplers`. `draw="unique"` (TensorFlow's own procedure, a data-dependent
# loop) uses TensorFlow's sampler ops, which run on the CPU only and do not compile.

def _draw_uniforms(n, generator):
    generator = tf.random.get_global_generator() if generator is None else generator
    return generator.uniform([n], dtype=tf.float64)


def _repeated_slots(values):
    """True where a value already appeared at an earlier position (sort-based, static shapes)."""
    order = tf.argsort(values, stable=True)
    sorted_values = tf.gather(values, order)
    repeat_sorted = tf.concat([[False], sorted_values[1:] == sorted_values[:-1]], 0)
    return tf.scatter_nd(order[:, tf.newaxis], repeat_sorted, tf.shape(values))


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
    V.check_choice("draw", draw, ("with_replacement", "unique_exact"))
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
        samp_count = tf.where(_repeated_slots(candidates), tf.constant(float("inf"), tf.float64), samp_count)
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
    from .samplers import unigram_weights

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


def compute_accidental_hits(true_classes, sampled_candidates, num_true, seed=None, name=None):
    """``tf.nn.compute_accidental_hits``: where a sampled candidate equals one of a row's true
    classes. Returns ``(indices [K] int32, ids [K] int64, weights [K] float32)``: the row, the
    candidate's position in ``sampled_candidates`` and ``-FLT_MAX`` (to add to that logit) for
    each hit, in TensorFlow's order (rows, then each row's labels; a candidate drawn twice is
    found at its last position). ``K`` depends on the values: not for XLA.
    """
    del seed
    with tf.name_scope(name or "compute_accidental_hits"):
        num_true = V.check_positive_int("num_true", num_true)
        true_classes = tf.reshape(tf.cast(tf.convert_to_tensor(true_classes), tf.int64), [-1, num_true])
        cand = tf.cast(tf.reshape(tf.convert_to_tensor(sampled_candidates), [-1]), tf.int64)
        equal = true_classes[:, :, tf.newaxis] == cand[tf.newaxis, tf.newaxis, :]  # [B, T, S]
        found = tf.reduce_any(equal, axis=2)
        num_sampled = tf.shape(cand, out_type=tf.int64)[0]
        last = num_sampled - 1 - tf.argmax(tf.cast(tf.reverse(equal, [2]), tf.int32), axis=2, output_type=tf.int64)
        rows = tf.broadcast_to(tf.range(tf.shape(true_classes)[0], dtype=tf.int32)[:, tf.newaxis],
                               tf.shape(found))
        indices = tf.boolean_mask(rows, found)
        ids = tf.boolean_mask(last, found)
        return indices, ids, tf.fill(tf.shape(indices), tf.constant(-3.4028234663852886e38, tf.float32))


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
        self.draw = V.check_choice("draw", draw, ("with_replacement", "unique_exact"))
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
