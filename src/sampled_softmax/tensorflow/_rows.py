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

The cost is finding each read's first read (a hash table of the ``M`` ids, ``tf.unique``; under
XLA, where ``tf.unique``'s bounded dynamic shape is unwelcome, a table of first positions or a
sort) and moving only the repeated reads' rows. Where the gradient is the caller's own fresh
tensor (the losses' backward), the rows move in place (``InplaceAdd``, ``InplaceUpdate``): no
pass over the ``[M, D]`` gradient, whose segment sum cost more than the rest of the loss's extra
work at ``S = 8192`` (BENCHMARKS.md).
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.python.eager import record


def in_xla() -> bool:
    """Whether ops are being traced into an XLA computation (``jit_compile=True``)."""
    from tensorflow.python.framework import ops
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph())


# Under XLA a sort of the M reads costs far more than one pass over a [V] table once M is
# large (M = 8448 reads of V = 100k classes: 2.2 ms against 0.05 ms, BENCHMARKS.md); the table
# is used while V is at most this many times M.
TABLE_READS_RATIO = 256


def first_reads(ids, num_classes=None):
    """``[M]``: for each read of 1-D ``ids``, the position of its id's first read: from
    ``tf.unique``'s index (a hash table); under XLA, where ``tf.unique``'s bounded dynamic shape
    is unwelcome, from a ``[num_classes]`` table of first positions (a scatter-min and a gather)
    when the ids' range is given and not much larger than ``M``, else from a sort (``top_k``)."""
    m = tf.shape(ids)[0]
    position = tf.range(m)
    if not in_xla():
        _, group = tf.unique(ids, out_idx=tf.int32)
        return tf.gather(tf.math.unsorted_segment_min(position, group, m), group)
    static_m = ids.shape[0]
    if num_classes is not None and static_m is not None and num_classes <= TABLE_READS_RATIO * static_m:
        # Ids outside [0, V) (a label XLA could not check) are clipped so that every access
        # stays in bounds; their loss is nan in any case (the samplers' expected counts).
        safe = tf.clip_by_value(tf.cast(ids, tf.int64), 0, num_classes - 1)
        first = tf.tensor_scatter_nd_min(tf.fill([num_classes], m), safe[:, tf.newaxis], position)
        return tf.gather(first, safe)
    descending, order = tf.math.top_k(-tf.cast(ids, tf.int64), k=m, sorted=True)
    before = tf.concat([descending[:1] + 1, descending[:-1]], 0)  # the first read differs from "before"
    group = tf.scatter_nd(order[:, tf.newaxis], tf.cumsum(tf.cast(tf.not_equal(descending, before), tf.int32)) - 1,
                          [m])
    return tf.gather(tf.math.unsorted_segment_min(position, group, m), group)


def summed_on_first(d, first, *, in_place=False):
    """``d [M, ...]``, a gradient at reads whose ``first_reads`` are ``first``, with each id's
    sum on its first read and zeros on the others. ``in_place``: ``d`` is the caller's own
    fresh tensor, read by nothing else; its repeated reads' rows are then moved within its
    buffer (``InplaceAdd`` aliases its input; a scatter under XLA), unless a tape records the
    backward (``InplaceAdd`` has no gradient); else one segment sum of ``d``."""
    # A tape recording this backward (a gradient of the gradient) needs ops it can differentiate.
    if not in_place or record.could_possibly_record():
        return tf.math.unsorted_segment_sum(d, first, tf.shape(first)[0])
    repeats = tf.reshape(tf.where(tf.not_equal(first, tf.range(tf.shape(first)[0]))), [-1])
    repeats = tf.cast(repeats, tf.int32)
    moved = tf.gather(d, repeats)
    if in_xla():  # XLA updates its own buffers in place
        summed = tf.tensor_scatter_nd_add(d, tf.gather(first, repeats)[:, tf.newaxis], moved)
        return tf.tensor_scatter_nd_update(summed, repeats[:, tf.newaxis], tf.zeros_like(moved))
    # `moved` is an input of the add, so it is read before the buffer changes; the add applies
    # repeated targets one after another (several repeats of one id all land on its first read).
    summed = tf.raw_ops.InplaceAdd(x=d, i=tf.gather(first, repeats), v=moved)
    return tf.raw_ops.InplaceUpdate(x=summed, i=repeats, v=tf.zeros_like(moved))


def summed_once(ds, ids, *, in_place=False, num_classes=None):
    """``ds`` (gradients at the reads ``ids``), each id's sum on one read and zeros on the others,
    as Keras 3's optimizers need. Under a ``tf.distribute`` strategy with several replicas the
    gradients reaching the optimizer are every replica's reads concatenated (MirroredStrategy
    concatenates ``tf.IndexedSlices``): a row a batch shares (its candidates) would be listed
    once per replica. So there the sum is over every replica's reads (all-gathered, ``O(P M D)``)
    and lands on the id's first read among them all, in replica order: after the cross-replica
    concatenation each row is listed with its whole gradient once, as on one device.
    ``in_place``: the ``ds`` are the caller's own fresh tensors (see :func:`summed_on_first`);
    ``num_classes``: the ids' range ``[0, num_classes)``, when known (see :func:`first_reads`)."""
    replica = tf.distribute.get_replica_context()
    if replica is None or replica.num_replicas_in_sync == 1:
        first = first_reads(ids, num_classes)
        return [summed_on_first(d, first, in_place=in_place) for d in ds]
    m = tf.shape(ids)[0]
    sizes = replica.all_gather(tf.reshape(m, [1]), axis=0)
    offset = tf.reduce_sum(sizes[:replica.replica_id_in_sync_group])
    first = first_reads(replica.all_gather(ids, axis=0), num_classes)
    return [summed_on_first(replica.all_gather(d, axis=0), first)[offset:offset + m] for d in ds]


def sum_repeats(tables_rows, ids, num_classes=None):
    """The tensors ``tables_rows`` (gathers at ``ids``) unchanged; backward, their gradients
    through :func:`summed_once` (``num_classes``: the tables' rows, when known)."""

    @tf.custom_gradient
    def identity(*xs):
        def backward(*ds):
            return summed_once(list(ds), ids, num_classes=num_classes)

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
