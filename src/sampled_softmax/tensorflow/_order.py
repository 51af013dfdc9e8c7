"""The vocabulary-order check (:mod:`sampled_softmax.order_check`) on TensorFlow tensors: eager
labels are counted at once; in a graph, a ``tf.numpy_function`` counts them when the step runs
(added only while the check is pending when the function is traced, and skipped by the graph
once the verdict is in). XLA cannot call back to
Python: in an XLA-compiled function (``jit_compile=True``, Keras' default ``fit`` step on
TensorFlow) the check does not run."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.python.ops import resource_variable_ops

from .. import order_check as OC
from ._rows import in_xla

REMEDY = ("draw the candidates with tf.random.learned_unigram_candidate_sampler or "
          "tf.random.fixed_unigram_candidate_sampler (with the label counts) and pass them as sampled_values")


def observe(labels, keep, num_classes: int, front: str = "tensorflow", remedy: str = REMEDY) -> None:
    """Count the labels (where ``keep``, if given) for the check of ``(front, num_classes)``."""
    check = OC.order_check(front, num_classes, remedy)
    if not check.pending:
        return
    labels = tf.convert_to_tensor(labels)

    def label_counts():
        live = tf.logical_and(labels >= 0, labels < num_classes)
        if keep is not None:
            live = tf.logical_and(live, keep)
        upper = tf.logical_and(live, labels >= OC.upper_half(num_classes))
        return tf.stack([tf.reduce_sum(tf.cast(live, tf.int64)), tf.reduce_sum(tf.cast(upper, tf.int64))])

    if tf.executing_eagerly():
        check.observe(label_counts().numpy())
        return
    if in_xla():
        return

    def observe_now(values):
        check.observe(values)
        return np.bool_(check.pending)

    def count():
        return tf.numpy_function(observe_now, [label_counts()], tf.bool, stateful=True,
                                 name="vocabulary_order_check")

    pending = _pending_flag(check)
    if pending is None:
        count()
        return
    # The callback costs a host round trip (0.3-0.4 ms a step on this machine): once the verdict
    # is in, the flag it clears skips it.

    def count_while_pending():
        pending.assign(tf.reshape(count(), []))

    tf.cond(pending, count_while_pending, lambda: None)


def _pending_flag(check):
    """The check's boolean variable, True while it waits for its verdict (set again by
    ``order_check.reset``); made once, outside any function being traced, by the variable
    class itself (a ``tf.function`` accepts new variables on its first trace only). None
    under a ``tf.distribute`` strategy, whose variables are its own to make: there the
    callback runs every step."""
    if tf.distribute.has_strategy():
        return None
    with check._lock:
        flag = getattr(check, "tensorflow_pending", None)
        if flag is None:
            with tf.init_scope():
                flag = resource_variable_ops.ResourceVariable(True, trainable=False,
                                                              name="vocabulary_order_check_pending")
            check.tensorflow_pending = flag
            check.on_reset.append(lambda: flag.assign(True))
    return flag
