"""Vocabulary-parallel sampled losses: the class table sharded over a mesh axis, under ``shard_map``.

Device ``r`` of the ``P`` devices on ``axis_name`` holds shard ``r`` of TensorFlow's ``"div"``
layout, the same rows as ``sampled_softmax.torch.distributed.shard_range(V, r, P)``: the first
``V mod P`` shards hold ``ceil(V / P)`` rows, the others one fewer. ``shard_map`` needs shards of
one size, so each is stored in ``R = ceil(V / P)`` rows, the shorter ones padded at their end with
a zero row (:func:`shard_table`), which is never sampled, never a label and masked in the full
softmax. A table sharded by the PyTorch front end is the same rows, shard by shard. Every
device along the axis sees the same ``labels``, ``inputs`` and ``key``, so it draws the same
candidates; each computes the corrected logits of the columns whose rows it owns, and the head
combines them over the axis with a few collectives of ``O(N)`` values each, never the table
and never ``O(N V)``:

* softmax: ``m = pmax(max_owned o)`` (no gradient: the log-sum-exp does not depend on it),
  ``lse = m + log psum(sum_owned exp(o - m))``, and ``psum(sum_owned target * o)``;
* sigmoid (NCE, negative sampling): ``psum`` of the owned columns' logistic losses.

The gradient of each shard is that of its own rows; the gradient of ``inputs`` (the same on
every device) is summed over the axis by ``shard_map``'s autodiff. The result equals the
single-device loss on the whole table with the same candidates.

Example (the table split by rows over all devices, the batch replicated)::

    mesh = jax.make_mesh((jax.device_count(),), ("vocab",))
    W = shard_table(W, mesh, "vocab")                      # [P R, D], sharded by rows

    def loss_fn(W, labels, inputs, key):                   # runs on each device
        return vocab_parallel_sampled_softmax_loss(W, None, labels, inputs, 64, V, axis_name="vocab",
                                                   key=key, reduction="mean")

    sharded = jax.shard_map(loss_fn, mesh=mesh, in_specs=(P("vocab"), P(), P(), P()), out_specs=P())
    with jax.set_mesh(mesh):
        loss, (dW, dh) = jax.jit(jax.value_and_grad(sharded, (0, 2)))(W, labels, inputs, key)

With a second mesh axis for the batch, shard ``labels``/``inputs`` on it and give each data shard
its own key: rows are independent.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from .. import SampledSoftmaxError
from .. import _validation as V
from .functional import (
    _Call, _compute_dtype, _lowest, _prepare, _reduced, _stage1, corrected_logits, full_logits, sigmoid_columns,
    softmax_target,
)

__all__ = ["vocab_parallel_sampled_softmax_loss", "vocab_parallel_nce_loss",
           "vocab_parallel_negative_sampling_loss", "vocab_parallel_full_softmax_loss", "shard_table",
           "rows_per_shard", "div_layout", "unshard_table"]


def rows_per_shard(num_classes: int, num_shards: int) -> int:
    """``ceil(num_classes / num_shards)``: the rows each shard is stored in (the ``"div"``
    layout's longest shard; the shorter ones are padded to it)."""
    num_classes = V.check_positive_int("num_classes", num_classes)
    num_shards = V.check_positive_int("num_shards", num_shards)
    return -(-num_classes // num_shards)


def div_layout(num_classes: int, num_shards: int) -> list[tuple[int, int]]:
    """``[(first class id, rows)]`` of each shard of TensorFlow's ``"div"`` layout: the first
    ``num_classes % num_shards`` shards hold one row more (:func:`sampled_softmax._validation.div_shard`)."""
    num_classes = V.check_positive_int("num_classes", num_classes)
    num_shards = V.check_positive_int("num_shards", num_shards)
    return [V.div_shard(num_classes, p, num_shards) for p in range(num_shards)]


def _shard_start_rows(num_classes, axis_name):
    """This device's ``(first class id, rows)`` of the ``"div"`` layout, as traced integers."""
    p = lax.axis_index(axis_name)
    base, extra = divmod(num_classes, lax.axis_size(axis_name))
    return p * base + jnp.minimum(p, extra), base + (p < extra).astype(jnp.int32)


def shard_table(table, mesh, axis_name: str):
    """``table [V, ...]`` in the ``"div"`` layout over the ``P`` devices of ``axis_name``: shard
    ``r`` (the rows of :func:`div_layout`) stored in ``ceil(V / P)`` rows, zero-padded at its end,
    and placed on ``mesh`` sharded by rows: the ``[P ceil(V / P), ...]`` array the
    ``vocab_parallel_*`` functions expect. Biases ``[V]`` work the same way."""
    if axis_name not in mesh.shape:
        raise SampledSoftmaxError(f"`axis_name` must be an axis of the mesh {tuple(mesh.shape)}; received "
                                  f"{axis_name!r}")
    table = jnp.asarray(table)
    if table.ndim < 1 or table.shape[0] < 1:
        raise SampledSoftmaxError(f"`table` must have shape [num_classes, ...]; received shape {list(table.shape)}")
    size = mesh.shape[axis_name]
    if table.shape[0] < size:
        raise SampledSoftmaxError(f"`table` must have at least as many rows as the {size} devices of axis "
                                  f"{axis_name!r} (every device holds one class at least); received {table.shape[0]}")
    per = rows_per_shard(table.shape[0], size)
    widths = [(0, 0)] * (table.ndim - 1)
    table = jnp.concatenate([jnp.pad(table[start:start + rows], [(0, per - rows)] + widths)
                             for start, rows in div_layout(table.shape[0], size)])
    spec = PartitionSpec(axis_name, *([None] * (table.ndim - 1)))
    return jax.device_put(table, NamedSharding(mesh, spec))


def unshard_table(table, num_classes: int, num_shards: int):
    """The ``[V, ...]`` table (or its gradient, or a bias) of a ``[P ceil(V / P), ...]`` array in
    :func:`shard_table`'s layout: each shard's rows without its padding, in order."""
    xp = np if isinstance(table, np.ndarray) else jnp  # a NumPy array stays one (and keeps float64)
    table = xp.asarray(table)
    per = rows_per_shard(num_classes, num_shards)
    if table.ndim < 1 or table.shape[0] != per * num_shards:
        raise SampledSoftmaxError(f"`table` must have {num_shards} x ceil({num_classes} / {num_shards}) = "
                                  f"{per * num_shards} rows (shard_table's layout); received shape {list(table.shape)}")
    return xp.concatenate([table[p * per:p * per + rows] for p, (_, rows) in
                           enumerate(div_layout(num_classes, num_shards))])


def _shard_check(num_classes, axis_name):
    """The check of a shard's rows against ``num_classes`` and the axis' size."""
    try:
        size = lax.axis_size(axis_name)
    except NameError as err:
        raise SampledSoftmaxError(f"`axis_name` {axis_name!r} is not a mesh axis here: call the vocab_parallel_* "
                                  f"functions inside jax.shard_map over a mesh with that axis") from err

    def check(rows):
        want = rows_per_shard(num_classes, size)
        if rows != want:
            raise SampledSoftmaxError(
                f"`weights` (this device's shard) must have ceil(num_classes / {size}) = {want} rows for "
                f"num_classes={num_classes} over the {size} devices of axis {axis_name!r}; received {rows} "
                f"(use shard_table to pad and shard the table)")
    return check


def _owned_rows(table, ids, num_classes, axis_name):
    """``(rows [M, ...], owned [M])``: this device's rows of ``ids`` (zero where another owns it)."""
    start, rows_here = _shard_start_rows(num_classes, axis_name)
    local = ids - start
    owned = (local >= 0) & (local < rows_here)
    rows = jnp.take(table, jnp.where(owned, local, 0), axis=0)
    return jnp.where(owned.reshape(owned.shape + (1,) * (rows.ndim - 1)), rows, 0), owned


def _parallel_loss(head, weights, biases, labels, inputs, *, num_sampled, num_classes, num_true, sampled_values,
                   remove_accidental_hits, key, sampler, draw, ignore_index, label_smoothing, subtract_log_q,
                   reduction, axis_name):
    c: _Call = _stage1(weights, biases, labels, inputs, num_sampled=num_sampled, num_classes=num_classes,
                       num_true=num_true, sampled_values=sampled_values,
                       remove_accidental_hits=remove_accidental_hits, key=key, sampler=sampler, draw=draw,
                       ignore_index=ignore_index, subtract_log_q=subtract_log_q, exclude_true=False,
                       reduction=reduction, table_rows=_shard_check(num_classes, axis_name))
    n, t = c.y.shape
    rows, owned = _owned_rows(c.W, c.ids, num_classes, axis_name)
    bias_rows = None if c.b is None else _owned_rows(c.b, c.ids, num_classes, axis_name)[0]
    logits = corrected_logits(c.h, rows, bias_rows, c.log_q, c.keep, t)
    owned_columns = jnp.concatenate([owned[: n * t].reshape(n, t), jnp.broadcast_to(owned[n * t:], (n, owned.shape[0] - n * t))], axis=1)
    mine = c.keep & owned_columns
    live = jnp.any(c.keep[:, :t], axis=1)
    if head == "softmax":
        m = lax.pmax(lax.stop_gradient(jnp.max(jnp.where(mine, logits, _lowest(logits.dtype)), axis=1)), axis_name)
        total = lax.psum(jnp.sum(jnp.where(mine, jnp.exp(logits - m[:, None]), 0.0), axis=1), axis_name)
        target = softmax_target(c.keep, t, label_smoothing, logits.dtype)
        picked = lax.psum(jnp.sum(jnp.where(mine, target * logits, 0.0), axis=1), axis_name)
        # A row without a kept label has nothing to normalise: kept finite so its zero loss has a zero gradient.
        loss = m + jnp.log(jnp.where(live, total, 1.0)) - picked
    else:
        loss = lax.psum(jnp.sum(jnp.where(owned_columns, sigmoid_columns(logits, c.keep, t), 0.0), axis=1),
                        axis_name)
    return _reduced(jnp.where(live, loss, 0.0), live, c.y, c.valid, c.lead, num_classes, reduction, c.bad_draw)


def vocab_parallel_sampled_softmax_loss(
    weights, biases, labels, inputs, num_sampled: int, num_classes: int, num_true: int = 1, sampled_values=None,
    remove_accidental_hits: bool = True, *, axis_name: str, key: jax.Array | None = None, sampler="log_uniform",
    draw: Literal["unique_exact", "with_replacement"] | None = None, ignore_index: int | None = None,
    label_smoothing: float = 0.0, subtract_log_q: bool = True, reduction: Literal["none", "mean", "sum"] = "none",
) -> jax.Array:
    """:func:`sampled_softmax_loss` with the table sharded by rows over the mesh axis
    ``axis_name``, called inside ``jax.shard_map``: ``weights`` ``[R, D]`` and ``biases`` ``[R]``
    are this device's shard (``R = ceil(num_classes / P)``, see :func:`shard_table`); ``labels``,
    ``inputs``, ``key`` and ``sampled_values`` are the same on every device of the axis. Returns the
    same loss on every device of the axis, equal to the single-device loss on the whole table."""
    label_smoothing = V.check_label_smoothing(label_smoothing)
    return _parallel_loss("softmax", weights, biases, labels, inputs, num_sampled=num_sampled,
                          num_classes=num_classes, num_true=num_true, sampled_values=sampled_values,
                          remove_accidental_hits=remove_accidental_hits, key=key, sampler=sampler, draw=draw,
                          ignore_index=ignore_index, label_smoothing=label_smoothing, subtract_log_q=subtract_log_q,
                          reduction=reduction, axis_name=axis_name)


def vocab_parallel_nce_loss(
    weights, biases, labels, inputs, num_sampled: int, num_classes: int, num_true: int = 1, sampled_values=None,
    remove_accidental_hits: bool = False, *, axis_name: str, key: jax.Array | None = None, sampler="log_uniform",
    draw: Literal["unique_exact", "with_replacement"] | None = None, ignore_index: int | None = None,
    subtract_log_q: bool = True, reduction: Literal["none", "mean", "sum"] = "none",
) -> jax.Array:
    """:func:`nce_loss` with the table sharded over ``axis_name`` (as
    :func:`vocab_parallel_sampled_softmax_loss`)."""
    return _parallel_loss("sigmoid", weights, biases, labels, inputs, num_sampled=num_sampled,
                          num_classes=num_classes, num_true=num_true, sampled_values=sampled_values,
                          remove_accidental_hits=remove_accidental_hits, key=key, sampler=sampler, draw=draw,
                          ignore_index=ignore_index, label_smoothing=0.0, subtract_log_q=subtract_log_q,
                          reduction=reduction, axis_name=axis_name)


def vocab_parallel_negative_sampling_loss(
    weights, biases, labels, inputs, num_sampled: int, num_classes: int, num_true: int = 1, sampled_values=None,
    remove_accidental_hits: bool = False, *, axis_name: str, key: jax.Array | None = None, sampler="log_uniform",
    draw: Literal["unique_exact", "with_replacement"] | None = None, ignore_index: int | None = None,
    reduction: Literal["none", "mean", "sum"] = "none",
) -> jax.Array:
    """:func:`negative_sampling_loss` with the table sharded over ``axis_name``."""
    return _parallel_loss("sigmoid", weights, biases, labels, inputs, num_sampled=num_sampled,
                          num_classes=num_classes, num_true=num_true, sampled_values=sampled_values,
                          remove_accidental_hits=remove_accidental_hits, key=key, sampler=sampler, draw=draw,
                          ignore_index=ignore_index, label_smoothing=0.0, subtract_log_q=False, reduction=reduction,
                          axis_name=axis_name)


def vocab_parallel_full_softmax_loss(weights, biases, labels, inputs, num_classes: int, num_true: int = 1, *,
                                     axis_name: str, ignore_index: int | None = None, label_smoothing: float = 0.0,
                                     reduction: Literal["none", "mean", "sum"] = "none") -> jax.Array:
    """:func:`full_softmax_loss` (exact, for evaluation) with the table sharded over ``axis_name``:
    each device computes the ``[N, R]`` logits of its own rows (padding rows masked), and the
    log-sum-exp, the labels' logits and (with ``label_smoothing``) the sum of the logits are
    combined with ``pmax``/``psum`` of ``[N]`` values."""
    V.check_choice("reduction", reduction, V.REDUCTIONS)
    label_smoothing = V.check_label_smoothing(label_smoothing)
    num_classes = V.check_positive_int("num_classes", num_classes)
    W, b, y, h, lead, valid = _prepare(weights, biases, labels, inputs, num_classes, num_true, ignore_index,
                                       _shard_check(num_classes, axis_name))
    h = h.astype(_compute_dtype(h.dtype))
    per = W.shape[0]
    z = full_logits(W, b, h)  # [N, R]
    first, rows_here = _shard_start_rows(num_classes, axis_name)
    real = jnp.arange(per) < rows_here  # the padding row of a shorter shard is no class
    m = lax.pmax(lax.stop_gradient(jnp.max(jnp.where(real, z, _lowest(z.dtype)), axis=1)), axis_name)
    lse = m + jnp.log(lax.psum(jnp.sum(jnp.where(real, jnp.exp(z - m[:, None]), 0.0), axis=1), axis_name))
    local = jnp.where(valid, y, 0) - first
    own = valid & (local >= 0) & (local < rows_here)
    picked = jnp.take_along_axis(z, jnp.clip(local, 0, per - 1), axis=1)
    n_true = jnp.sum(valid, axis=1).astype(z.dtype)
    label_logit = lax.psum(jnp.sum(jnp.where(own, picked, 0.0), axis=1), axis_name) / jnp.maximum(n_true, 1.0)
    loss = lse - (1.0 - label_smoothing) * label_logit
    if label_smoothing:
        mean_logit = lax.psum(jnp.sum(jnp.where(real, z, 0.0), axis=1), axis_name) / num_classes
        loss = loss - label_smoothing * mean_logit
    live = n_true > 0
    return _reduced(jnp.where(live, loss, 0.0), live, y, valid, lead, num_classes, reduction)

