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


def repeats(ids):
    """``(group [M], first [M])`` for 1-D ``ids``: which distinct id each read is (numbered in
    sorted order) and whether it is that id's first read. A sort (``top_k``, static shapes
    under XLA) rather than ``tf.unique``, whose first output has a dynamic shape."""
    m = tf.shape(ids)[0]
    position = tf.range(m)
    descending, order = tf.math.top_k(-tf.cast(ids, tf.int64), k=m, sorted=True)
    before = tf.concat([descending[:1] + 1, descending[:-1]], 0)  # the first read differs from "before"
    starts = tf.not_equal(descending, before)
    group = tf.scatter_nd(order[:, tf.newaxis], tf.cumsum(tf.cast(starts, tf.int32)) - 1, [m])
    first_read = tf.math.unsorted_segment_min(position, group, m)
    return group, tf.equal(tf.gather(first_read, group), position)


def summed_on_first(d, groups):
    """``d [M, ...]``, a gradient at reads grouped by ``repeats``, with each group's sum on its
    first read and zeros on the others."""
    group, first = groups
    sums = tf.math.unsorted_segment_sum(d, group, tf.shape(group)[0])
    mask = tf.reshape(first, [-1] + [1] * (d.shape.rank - 1))
    return tf.where(mask, tf.gather(sums, group), tf.zeros_like(d))


def sum_repeats(tables_rows, ids):
    """The tensors ``tables_rows`` (gathers at ``ids``) unchanged; backward, their gradients
    through :func:`summed_on_first`."""

    @tf.custom_gradient
    def identity(*xs):
        def backward(*ds):
            groups = repeats(ids)
            return [summed_on_first(d, groups) for d in ds]

        return [tf.identity(x) for x in xs], backward

    return identity(*tables_rows)
