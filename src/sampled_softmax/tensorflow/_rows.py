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


def summed_once(ds, ids):
    """``ds`` (gradients at the reads ``ids``), each id's sum on one read and zeros on the others,
    as Keras 3's optimizers need. Under a ``tf.distribute`` strategy with several replicas the
    gradients reaching the optimizer are every replica's reads concatenated (MirroredStrategy
    concatenates ``tf.IndexedSlices``): a row a batch shares (its candidates) would be listed
    once per replica. So there the sum is over every replica's reads (all-gathered, ``O(P M D)``)
    and lands on the id's first read among them all, in replica order: after the cross-replica
    concatenation each row is listed with its whole gradient once, as on one device."""
    replica = tf.distribute.get_replica_context()
    if replica is None or replica.num_replicas_in_sync == 1:
        first = first_reads(ids)
        return [summed_on_first(d, first) for d in ds]
    m = tf.shape(ids)[0]
    sizes = replica.all_gather(tf.reshape(m, [1]), axis=0)
    offset = tf.reduce_sum(sizes[:replica.replica_id_in_sync_group])
    first = first_reads(replica.all_gather(ids, axis=0))
    return [summed_on_first(replica.all_gather(d, axis=0), first)[offset:offset + m] for d in ds]


def sum_repeats(tables_rows, ids):
    """The tensors ``tables_rows`` (gathers at ``ids``) unchanged; backward, their gradients
    through :func:`summed_once`."""

    @tf.custom_gradient
    def identity(*xs):
        def backward(*ds):
            return summed_once(list(ds), ids)

        return [tf.identity(x) for x in xs], backward

    return identity(*tables_rows)


@tf.custom_gradient
def dense_gradient(table):
    """``table`` unchanged; backward, its gradient as a dense tensor (not ``tf.IndexedSlices``)."""
    return tf.identity(table), lambda d: tf.convert_to_tensor(d)


def distinct_rows(gradient):
    """``(rows, values)`` of a ``tf.IndexedSlices`` with its repeated rows summed: each row once
    (a dynamic number of rows, for an optimizer's update inside its own step)."""
    rows, position = tf.unique(gradient.indices)
    return rows, tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])
