"""Row-sparse gradients of table reads that every Keras 3 optimizer applies correctly.

A ``tf.gather`` of a table at ids with repeats (a batch's labels, a label drawn again as a
candidate) has a ``tf.IndexedSlices`` gradient that lists a row once per read. Its value is
the dense gradient's, but Keras 3's optimizers on TensorFlow (3.15: Adam, AdamW, Adamax, Nadam,
RMSprop, Adagrad, Adadelta, Adafactor, Ftrl, Lamb) apply their elementwise steps (``square``,
``abs``) to the listed values before the repeats are summed: a row read twice gets
``g1**2 + g2**2`` where Adam needs ``(g1 + g2)**2``. tf.keras 2 summed repeats first
(``_deduplicate_indexed_slices``); Keras 3 does not.

Here each id's summed gradient goes on its first read and zeros on its repeats. The gradient is
the same tensor when made dense, keeps ``tf.gather``'s indices and static shape (the distinct
ids of ``tf.unique`` have a bounded dynamic shape, which XLA hands back padded with garbage), and
every optimizer's elementwise step, which maps 0 to 0, sees each row's whole gradient once.
The cost is a sort of the ``M`` ids and a segment sum of the ``[M, D]`` gradient.
"""

from __future__ import annotations

import tensorflow as tf


def first_reads(ids):
    """``[M]``: for each read of 1-D ``ids``, the position of its id's first read. A sort
    (``top_k``, static shapes under XLA) rather than ``tf.unique``, whose first output has a
    dynamic shape."""
    m = tf.shape(ids)[0]
    position = tf.range(m)
    descending, order = tf.math.top_k(-tf.cast(ids, tf.int64), k=m, sorted=True)
    before = tf.concat([descending[:1] + 1, descending[:-1]], 0)  # the first read differs from "before"
    group = tf.scatter_nd(order[:, tf.newaxis], tf.cumsum(tf.cast(tf.not_equal(descending, before), tf.int32)) - 1,
                          [m])
    return tf.gather(tf.math.unsorted_segment_min(position, group, m), group)


def summed_on_first(d, first):
    """``d [M, ...]``, a gradient at reads whose ``first_reads`` are ``first``, with each id's
    sum on its first read and zeros on the others: one segment sum."""
    return tf.math.unsorted_segment_sum(d, first, tf.shape(first)[0])


def sum_repeats(tables_rows, ids):
    """The tensors ``tables_rows`` (gathers at ``ids``) unchanged; backward, their gradients
    through :func:`summed_on_first`."""

    @tf.custom_gradient
    def identity(*xs):
        def backward(*ds):
            first = first_reads(ids)
            return [summed_on_first(d, first) for d in ds]

        return [tf.identity(x) for x in xs], backward

    return identity(*tables_rows)


def distinct_rows(gradient):
    """``(rows, values)`` of a ``tf.IndexedSlices`` with its repeated rows summed: each row once
    (a dynamic number of rows, for an optimizer's update inside its own step)."""
    rows, position = tf.unique(gradient.indices)
    return rows, tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])
