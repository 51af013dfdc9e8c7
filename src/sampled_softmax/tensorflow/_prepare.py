"""Argument checks of the TensorFlow front end: static shapes at trace time, values when eager,
assertions in a graph, and nan rows under XLA (which drops assertions). The messages are the
shared ones of :mod:`sampled_softmax._validation`."""

from __future__ import annotations

import tensorflow as tf

from .. import SampledSoftmaxError
from .. import _validation as V

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


WHOLE_LABELS = "`labels` must be whole numbers (floating labels are cast to int64, as tf.nn does); received"


def _int64_labels(labels):
    """``labels`` as int64. Floating labels must be whole numbers (tf.nn casts them, so 3.0 is
    class 3): eager, another value is an error now; in a graph an assertion with the same
    words; under XLA, which drops assertions, it becomes -1 (out of range: its row is nan)."""
    if labels.dtype.is_integer:
        return tf.cast(labels, tf.int64)
    whole = tf.logical_and(tf.math.is_finite(labels), tf.equal(labels, tf.floor(labels)))
    if tf.executing_eagerly():
        if not bool(tf.reduce_all(whole)):
            bad = float(tf.boolean_mask(labels, tf.logical_not(whole))[0])
            raise SampledSoftmaxError(f"{WHOLE_LABELS} {bad}")
        return tf.cast(labels, tf.int64)
    flat_whole = tf.reshape(whole, [-1])
    first_bad = tf.gather(tf.reshape(labels, [-1]), tf.argmin(tf.cast(flat_whole, tf.int32)))
    check = tf.debugging.Assert(tf.reduce_all(whole), [WHOLE_LABELS, first_bad])
    with tf.control_dependencies([check]):
        return tf.where(whole, tf.cast(tf.where(whole, labels, tf.zeros_like(labels)), tf.int64),
                        tf.constant(-1, tf.int64))


def _check_label_values(labels, num_classes, keep=None, ignore_index=None):
    """Labels in ``[0, num_classes)`` (where ``keep``: those not equal to ``ignore_index``): an
    error now when eager; in a graph an assertion with the same words (a GPU gather would
    return zeros for them); under XLA, which drops assertions, their rows are nan (see
    ``_nan_rows``). Returns ``labels``."""
    # Zero stands in for ignored labels: it is always in range (and keeps shapes static for XLA).
    kept = labels if keep is None else tf.where(keep, labels, tf.zeros_like(labels))
    if tf.executing_eagerly():
        if tf.size(kept) > 0:
            V.check_label_values(int(tf.reduce_min(kept)), int(tf.reduce_max(kept)), num_classes, ignore_index)
        return labels
    low, high = tf.reduce_min(kept), tf.reduce_max(kept)
    checks = [tf.debugging.Assert(tf.logical_or(tf.size(kept) == 0, low >= 0),
                                  [f"`labels` must be in [0, {num_classes - 1}]; received values down to", low]),
              tf.debugging.Assert(tf.logical_or(tf.size(kept) == 0, high < num_classes),
                                  [f"`labels` must be in [0, {num_classes - 1}]; received values up to", high])]
    with tf.control_dependencies(checks):
        return tf.identity(labels)


def _check_sampled_values(sampled_values, num_sampled, num_classes, labels, num_true, keep=None):
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
                                         num_classes=num_classes, lead_size=n, num_true=num_true,
                                         valid=None if keep is None else keep.numpy())
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
            tf.debugging.assert_positive(_kept_counts(true_count, keep), message=(
                "`sampled_values[1]` (true_expected_count) must be positive and finite")),
            tf.debugging.assert_all_finite(tf.cast(_kept_counts(true_count, keep), tf.float32),
                                           "`sampled_values[1]` (true_expected_count) must be positive and finite"),
            tf.debugging.assert_positive(samp_count, message=(
                "`sampled_values[2]` (sampled_expected_count) must be positive (inf marks a padding slot)")),
        ]
        with tf.control_dependencies(checks):
            cand = tf.identity(cand)
    return cand, true_count, samp_count


def _kept_counts(true_count, keep):
    """The expected counts of kept labels (ignored ones read 1: they are unused)."""
    if keep is None:
        return true_count
    true_count = tf.broadcast_to(tf.reshape(true_count, [tf.shape(keep)[0], -1]), tf.shape(keep))
    return tf.where(keep, true_count, tf.ones_like(true_count))


def _nan_rows(loss, labels, cand, true_count, samp_count, num_classes, keep=None):
    """Rows whose label is outside ``[0, V)``, and every row when a candidate is or when an
    expected count is not positive, are nan: where nothing raises (XLA drops assertions, and its
    gathers clamp an index into range, as GPU gathers return zeros) the result is never a
    plausible number. Eager calls and graphs on the CPU raise before this."""
    out_of_range = (labels < 0) | (labels >= num_classes)
    if keep is not None:
        out_of_range &= keep
        true_count = tf.where(keep, true_count, tf.ones_like(true_count))
    bad_label = tf.reduce_any(out_of_range, axis=1)
    true_count = tf.cast(true_count, tf.float32)
    bad_count = tf.reduce_any(~(true_count > 0) | ~tf.math.is_finite(true_count), axis=1)
    bad_all = tf.reduce_any((cand < 0) | (cand >= num_classes)) | tf.reduce_any(~(tf.cast(samp_count, tf.float32) > 0))
    bad = bad_label | bad_count | bad_all
    return tf.where(bad, tf.constant(float("nan"), loss.dtype), loss)
