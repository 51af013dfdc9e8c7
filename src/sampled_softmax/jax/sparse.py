"""Row-sparse training in JAX: a step whose cost does not grow with the number of classes.

``jax.grad`` of a loss with respect to a ``[V, D]`` table is a dense ``[V, D]`` array, mostly
zeros, and an optimizer that reads it touches every row: a step then costs ``O(V D)``. Here the
gradient of the table is :class:`RowGrads` (``ids [M]``, ``values [M, ...]``: the gathered
rows' gradients, a row id possibly repeated), obtained by differentiating the loss with respect
to the gathered rows instead of the table (:func:`value_and_row_grads`), and :func:`lazy_adam`
updates only those rows, the way ``tf.keras``' ``LazyAdam`` and PyTorch's ``SparseAdam`` do.
The interface is optax's: ``init(params) -> state``, ``update(grads, state) -> (updates,
state)``, then :func:`apply_row_updates`.

Example::

    opt = lazy_adam(1e-3)
    state = opt.init(weights)

    @functools.partial(jax.jit, donate_argnums=(0, 1))   # update the table in place
    def step(weights, state, biases, inputs, labels, key):
        loss, grads = value_and_row_grads(weights, biases, labels, inputs, 64, V, key=key, reduction="mean")
        updates, state = opt.update(grads.weights, state)
        return apply_row_updates(weights, updates), state, loss
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from .. import SampledSoftmaxError
from .. import _validation as V
from .functional import _head_loss, _stage1

__all__ = ["RowGrads", "Grads", "value_and_row_grads", "unique_rows", "LazyAdamState", "RowOptimizer",
           "lazy_adam", "apply_row_updates"]


class RowGrads(NamedTuple):
    """A row-sparse gradient (or update) of a ``[V, ...]`` table: ``values[m]`` belongs to row
    ``ids[m]``; repeated ids add up. Rows with id ``>= V`` are padding (ignored)."""

    ids: jax.Array
    values: jax.Array


class Grads(NamedTuple):
    """The gradients of a sampled loss: ``weights`` and ``biases`` (None without biases) as
    :class:`RowGrads`, ``inputs`` dense (to continue the backward pass into the model)."""

    weights: RowGrads
    biases: RowGrads | None
    inputs: jax.Array


def value_and_row_grads(weights, biases, labels, inputs, num_sampled: int, num_classes: int, num_true: int = 1,
                        sampled_values=None, remove_accidental_hits: bool | None = None, *, key=None,
                        sampler="log_uniform",
                        draw=None, ignore_index=None, label_smoothing: float = 0.0, subtract_log_q: bool = True,
                        exclude_true: bool = False, reduction: str = "mean", loss: str = "sampled_softmax"):
    """``(value, Grads)`` of a sampled loss (``loss``: ``"sampled_softmax"``, ``"nce"`` or
    ``"negative_sampling"``) reduced by ``reduction`` (``"mean"`` or ``"sum"``), with the
    arguments of :func:`sampled_softmax.jax.sampled_softmax_loss`. The table's gradient is the
    ``N*T + S`` gathered rows' (:class:`RowGrads`); nothing of size ``V`` is made.
    ``remove_accidental_hits`` defaults to the loss's own default: True for sampled softmax,
    False for NCE and negative sampling (as ``nce_loss`` and ``tf.nn.nce_loss``). An ignored
    label's slot has the padding id ``V`` (its class is not touched)."""
    V.check_choice("loss", loss, ("sampled_softmax", "nce", "negative_sampling"))
    if remove_accidental_hits is None:
        remove_accidental_hits = loss == "sampled_softmax"
    V.check_choice("reduction", reduction, ("mean", "sum"))
    label_smoothing = V.check_label_smoothing(label_smoothing)
    if loss != "sampled_softmax" and label_smoothing:
        raise SampledSoftmaxError(f"`label_smoothing` must be 0 with loss={loss!r}; received {label_smoothing}")
    head = "softmax" if loss == "sampled_softmax" else "sigmoid"
    c = _stage1(weights, biases, labels, inputs, num_sampled=num_sampled, num_classes=num_classes, num_true=num_true,
                sampled_values=sampled_values, remove_accidental_hits=remove_accidental_hits, key=key,
                sampler=sampler, draw=draw, ignore_index=ignore_index,
                subtract_log_q=subtract_log_q and loss != "negative_sampling", exclude_true=exclude_true,
                reduction=reduction)
    rows = jnp.take(c.W, c.ids, axis=0)
    bias_rows = None if c.b is None else jnp.take(c.b, c.ids)

    def reduced(h, rows, bias_rows):
        return _head_loss(head, c, h, rows, bias_rows, label_smoothing, reduction)

    value, (d_h, d_rows, d_bias_rows) = jax.value_and_grad(reduced, argnums=(0, 1, 2))(c.h, rows, bias_rows)
    d_inputs = d_h.astype(jnp.asarray(inputs).dtype).reshape(jnp.shape(inputs))
    # An ignored label's placeholder row (id 0) is not touched by the step: padding, so that a
    # lazy optimizer neither decays its moments nor moves it.
    touched = jnp.concatenate([c.valid.reshape(-1), jnp.ones(c.ids.shape[0] - c.valid.size, bool)])
    ids = jnp.where(touched, c.ids, c.W.shape[0])
    d_bias = None if c.b is None else RowGrads(ids, d_bias_rows.astype(c.b.dtype))
    return value, Grads(RowGrads(ids, d_rows.astype(c.W.dtype)), d_bias, d_inputs)


def unique_rows(grads: RowGrads, num_rows: int) -> RowGrads:
    """``grads`` with repeated ids summed: ``M`` slots (static), the distinct ids first in
    increasing order, then padding slots with id ``num_rows`` and value 0."""
    m = grads.ids.shape[0]
    ids, inverse = jnp.unique(grads.ids, size=m, fill_value=num_rows, return_inverse=True)
    values = jnp.zeros((m,) + grads.values.shape[1:], grads.values.dtype).at[inverse.reshape(-1)].add(grads.values)
    return RowGrads(ids, values)


class LazyAdamState(NamedTuple):
    """``count``: steps taken (for the bias correction, as Adam's); ``mu``, ``nu``: the first and
    second moments, the table's shape, updated only at the rows a step touches."""

    count: jax.Array
    mu: jax.Array
    nu: jax.Array


class RowOptimizer(NamedTuple):
    """optax's pair for row-sparse gradients: ``init(table) -> state``,
    ``update(row_grads, state) -> (row_updates, state)``."""

    init: Callable
    update: Callable


def lazy_adam(learning_rate: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> RowOptimizer:
    """Adam on the rows a gradient touches (``optax.adam``'s formula,
    ``-lr * m_hat / (sqrt(v_hat) + eps)``, with the step count shared by all rows as in
    ``LazyAdam``/``SparseAdam``); untouched rows and their moments are left as they are. On rows
    touched at every step it is exactly dense Adam."""

    def init(table):
        return LazyAdamState(jnp.zeros((), jnp.int32), jnp.zeros_like(table), jnp.zeros_like(table))

    def update(grads: RowGrads, state: LazyAdamState):
        num_rows = state.mu.shape[0]
        g = unique_rows(grads, num_rows)
        count = state.count + 1
        mu_rows = b1 * state.mu.at[g.ids].get(mode="fill", fill_value=0) + (1 - b1) * g.values
        nu_rows = b2 * state.nu.at[g.ids].get(mode="fill", fill_value=0) + (1 - b2) * jnp.square(g.values)
        t = count.astype(g.values.dtype)
        m_hat, v_hat = mu_rows / (1 - b1 ** t), nu_rows / (1 - b2 ** t)
        step = -learning_rate * m_hat / (jnp.sqrt(v_hat) + eps)
        mu = state.mu.at[g.ids].set(mu_rows, mode="drop")
        nu = state.nu.at[g.ids].set(nu_rows, mode="drop")
        return RowGrads(g.ids, step), LazyAdamState(count, mu, nu)

    return RowOptimizer(init, update)


def apply_row_updates(table: jax.Array, updates: RowGrads) -> jax.Array:
    """``table`` with ``updates`` added to its rows (padding ids dropped). Under ``jax.jit``
    with the table donated (``donate_argnums``) this is an in-place update of ``M`` rows."""
    return table.at[updates.ids].add(updates.values.astype(table.dtype), mode="drop")
