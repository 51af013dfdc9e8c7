"""The vocabulary-order check (:mod:`sampled_softmax.order_check`) on TensorFlow tensors: eager
labels are counted at once; in a graph, a ``tf.numpy_function`` counts them when the step runs
(added only while the check is pending when the function is traced). XLA cannot call back to
Python: in an XLA-compiled function (``jit_compile=True``, Keras' default ``fit`` step on
TensorFlow) the check does not run."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from .. import order_check as OC

REMEDY = ("draw the candidates with tf.random.learned_unigram_candidate_sampler or "
          "tf.random.fixed_unigram_candidate_sampler (with the label counts) and pass them as sampled_values")


def _in_xla() -> bool:
    from tensorflow.python.framework import ops
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph())


def observe(labels, keep, num_classes: int, front: str = "tensorflow", remedy: str = REMEDY) -> None:
    """Count the labels (where ``keep``, if given) for the check of ``(front, num_classes)``."""
    check = OC.order_check(front, num_classes, remedy)
    if not check.pending:
        return
    labels = tf.convert_to_tensor(labels)
    live = tf.logical_and(labels >= 0, labels < num_classes)
    if keep is not None:
        live = tf.logical_and(live, keep)
    upper = tf.logical_and(live, labels >= OC.upper_half(num_classes))
    counts = tf.stack([tf.reduce_sum(tf.cast(live, tf.int64)), tf.reduce_sum(tf.cast(upper, tf.int64))])
    if tf.executing_eagerly():
        check.observe(counts.numpy())
    elif not _in_xla():
        def observe_now(values):
            check.observe(values)
            return np.int64(0)

        tf.numpy_function(observe_now, [counts], tf.int64, stateful=True, name="vocabulary_order_check")
