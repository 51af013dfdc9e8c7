"""The class table's optimizer fused into the loss's step: :func:`row_sgd`, :func:`row_adagrad`
and :func:`row_adam` with :func:`value_and_table_step`, the JAX form of PyTorch's
``table_optimizer=RowSGD / RowAdagrad / RowAdam``.

:func:`value_and_table_step` computes a sampled loss, the gradient of its inputs (to continue
the backward pass into the model) and the new table, bias and optimizer state in one call: the
table's gradient is never returned, only applied to the ``N*T + S`` rows the step touched
(repeats summed; an ignored label's placeholder row is not touched). Under ``jax.jit`` with the
table, bias and state donated (``donate_argnums``) the update is in place and the step does not
grow with ``V``; the rest of the model keeps its own optimizer::

    opt = row_adam(1e-3)
    state = opt.init(weights, biases)

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(weights, biases, state, params, opt_state, x, y, key):
        h, model_vjp = jax.vjp(lambda p: model.apply(p, x), params)
        value, s = value_and_table_step(opt, state, weights, biases, y, h, 64, V, key=key)
        (d_params,) = model_vjp(s.inputs_grad)
        updates, opt_state = model_optimizer.update(d_params, opt_state, params)
        return s.weights, s.biases, s.state, optax.apply_updates(params, updates), opt_state, value

The arithmetic, for a touched row ``r`` with summed gradient ``g_r`` at fused step ``t``, is
PyTorch's :mod:`sampled_softmax.torch.table_optim`'s:

* ``row_sgd``: ``w_r -= lr g_r``.
* ``row_adagrad`` (FBGEMM's exact row-wise Adagrad): ``G_r += mean(g_r ** 2)``,
  ``w_r -= lr g_r / (sqrt(G_r) + eps)``; one accumulator per row, one per bias entry.
* ``row_adam``: Adam applied lazily (``optax.adam``'s and ``torch.optim.Adam``'s formula on the
  touched rows, ``t`` shared by all rows as in ``LazyAdam``); ``rowwise=True`` keeps one second
  moment per row (``mean(g_r ** 2)``).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from .. import SampledSoftmaxError
from .. import _validation as V
from .sparse import RowGrads, unique_rows, value_and_row_grads

__all__ = ["TableState", "TableOptimizer", "TableStep", "row_sgd", "row_adagrad", "row_adam",
           "value_and_table_step"]


class TableState(NamedTuple):
    """A fused table optimizer's state: ``count`` (steps taken), and its per-row arrays for
    the table (``slots``) and the bias (``bias_slots``; empty without a bias)."""

    count: jax.Array
    slots: tuple
    bias_slots: tuple


class TableOptimizer(NamedTuple):
    """``init(weights, biases=None) -> TableState`` and
    ``apply(weights, biases, state, weight_grads, bias_grads) -> (weights, biases, state)``
    (the gradients :class:`~sampled_softmax.jax.sparse.RowGrads`, repeats summed here)."""

    init: Callable
    apply: Callable


class TableStep(NamedTuple):
    """What :func:`value_and_table_step` returns besides the loss."""

    weights: jax.Array
    biases: jax.Array | None
    state: TableState
    inputs_grad: jax.Array


def _rows(array, ids):
    return array.at[ids].get(mode="fill", fill_value=0)


def _optimizer(make_slots, update_rows, *, summed: bool = True) -> TableOptimizer:
    """A fused optimizer from ``make_slots(param) -> tuple`` and
    ``update_rows(param, slots, g: RowGrads, t) -> (param, slots)`` (``g`` with distinct ids
    when ``summed``; ids past the table's rows are padding)."""

    def init(weights, biases=None) -> TableState:
        weights = jnp.asarray(weights)
        if weights.ndim != 2:
            raise SampledSoftmaxError(f"`weights` must be one [num_classes, dim] table for a table optimizer; "
                                      f"received shape {list(weights.shape)}")
        bias_slots = () if biases is None else make_slots(jnp.asarray(biases))
        return TableState(jnp.zeros((), jnp.int32), make_slots(weights), bias_slots)

    def apply(weights, biases, state: TableState, weight_grads: RowGrads, bias_grads: RowGrads | None = None):
        count = state.count + 1
        t = count.astype(jnp.float32)
        num_rows = weights.shape[0]
        g = unique_rows(weights_grads_dtype(weight_grads, weights), num_rows) if summed else weight_grads
        weights, slots = update_rows(weights, state.slots, g, t)
        bias_slots = state.bias_slots
        if biases is not None and bias_grads is not None:
            gb = unique_rows(weights_grads_dtype(bias_grads, biases), num_rows) if summed else bias_grads
            biases, bias_slots = update_rows(biases, bias_slots, gb, t)
        return weights, biases, TableState(count, slots, bias_slots)

    return TableOptimizer(init, apply)


def weights_grads_dtype(grads: RowGrads, param) -> RowGrads:
    return RowGrads(grads.ids, grads.values.astype(param.dtype))


def _broadcast_rows(x, like):
    """A per-row value ``[M]`` against rows ``[M, ...]``."""
    return x.reshape(x.shape + (1,) * (like.ndim - 1))


def _mean_square(values):
    return jnp.mean(jnp.square(values).reshape(values.shape[0], -1), axis=1)


def row_sgd(learning_rate: float) -> TableOptimizer:
    """Plain SGD on the touched rows: ``w_r -= lr g_r`` (repeats add up; no state but the count)."""
    lr = V.check_number("learning_rate", learning_rate, positive=True)

    def update_rows(param, slots, g, t):
        return param.at[g.ids].add((-lr * g.values).astype(param.dtype), mode="drop"), slots

    return _optimizer(lambda p: (), update_rows, summed=False)


def row_adagrad(learning_rate: float = 0.01, eps: float = 1e-10) -> TableOptimizer:
    """FBGEMM's exact row-wise Adagrad: ``G_r += mean(g_r ** 2)``, ``w_r -= lr g_r / (sqrt(G_r) + eps)``;
    one accumulator per row (``[V]``) and per bias entry."""
    lr = V.check_number("learning_rate", learning_rate, positive=True)
    eps = V.check_number("eps", eps, positive=False)

    def make_slots(param):
        return (jnp.zeros(param.shape[:1], param.dtype),)

    def update_rows(param, slots, g, t):
        (acc,) = slots
        acc_rows = _rows(acc, g.ids) + _mean_square(g.values)
        step = -lr * g.values / _broadcast_rows(jnp.sqrt(acc_rows) + eps, g.values)
        return param.at[g.ids].add(step, mode="drop"), (acc.at[g.ids].set(acc_rows, mode="drop"),)

    return _optimizer(make_slots, update_rows)


def row_adam(learning_rate: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *,
             rowwise: bool = False) -> TableOptimizer:
    """Adam on the touched rows (``-lr m_hat / (sqrt(v_hat) + eps)``, as :func:`~sampled_softmax.jax.sparse.lazy_adam`);
    ``rowwise=True`` keeps one second moment per row, fed with the row's mean squared gradient
    (the bias keeps one per entry either way)."""
    lr = V.check_number("learning_rate", learning_rate, positive=True)
    eps = V.check_number("eps", eps, positive=False)
    b1, b2 = V.check_number("b1", b1, positive=False), V.check_number("b2", b2, positive=False)
    if not (b1 < 1 and b2 < 1):
        raise SampledSoftmaxError(f"`b1` and `b2` must be in [0, 1); received {b1}, {b2}")
    if type(rowwise) is not bool:
        raise TypeError(f"`rowwise` must be True or False; received {rowwise!r}")

    def make_slots(param):
        per_row = rowwise and param.ndim > 1
        return jnp.zeros_like(param), jnp.zeros(param.shape[:1] if per_row else param.shape, param.dtype)

    def update_rows(param, slots, g, t):
        mu, nu = slots
        mu_rows = b1 * _rows(mu, g.ids) + (1 - b1) * g.values
        square = _mean_square(g.values) if nu.ndim < mu.ndim else jnp.square(g.values)
        nu_rows = b2 * _rows(nu, g.ids) + (1 - b2) * square
        t = t.astype(g.values.dtype)
        denom = jnp.sqrt(nu_rows / (1 - b2 ** t)) + eps
        if nu.ndim < mu.ndim:
            denom = _broadcast_rows(denom, mu_rows)
        step = -lr * (mu_rows / (1 - b1 ** t)) / denom
        return (param.at[g.ids].add(step, mode="drop"),
                (mu.at[g.ids].set(mu_rows, mode="drop"), nu.at[g.ids].set(nu_rows, mode="drop")))

    return _optimizer(make_slots, update_rows)


def value_and_table_step(optimizer: TableOptimizer, state: TableState, weights, biases, labels, inputs,
                         num_sampled: int, num_classes: int, num_true: int = 1, sampled_values=None,
                         remove_accidental_hits: bool | None = None, **kwargs):
    """``(value, TableStep(weights, biases, state, inputs_grad))``: a sampled loss (the arguments
    of :func:`~sampled_softmax.jax.sparse.value_and_row_grads`: ``loss``, ``key``, ``sampler``,
    ``draw``, ``reduction``, ...) and the fused ``optimizer``'s step on the rows it touched.
    ``inputs_grad`` is the loss's gradient with respect to ``inputs``: pass it to the model's
    ``jax.vjp`` (the module's example) to train the rest of the model with its own optimizer.
    Donate ``weights``, ``biases`` and ``state`` to the jitted step so the rows are updated in
    place. The table is not differentiated here: wrapping this call in ``jax.grad`` with respect
    to ``weights`` is a mistake (the step is the optimizer's)."""
    if not isinstance(optimizer, TableOptimizer):
        raise TypeError(f"`optimizer` must be a row_sgd, row_adagrad or row_adam; received {type(optimizer).__name__}")
    if not isinstance(state, TableState):
        raise TypeError(f"`state` must be the TableState of optimizer.init(weights, biases); received "
                        f"{type(state).__name__}")
    if (biases is None) != (len(state.bias_slots) == 0) and len(state.slots) > 0:
        raise SampledSoftmaxError(
            f"`state` was made for a table {'with' if state.bias_slots else 'without'} a bias; received biases="
            f"{'None' if biases is None else 'an array'}: make it with optimizer.init(weights, biases)")
    weights = jax.lax.stop_gradient(jnp.asarray(weights))
    biases = None if biases is None else jax.lax.stop_gradient(jnp.asarray(biases))
    value, grads = value_and_row_grads(weights, biases, labels, inputs, num_sampled, num_classes, num_true,
                                       sampled_values, remove_accidental_hits, **kwargs)
    new_weights, new_biases, new_state = optimizer.apply(weights, biases, state, grads.weights, grads.biases)
    return value, TableStep(new_weights, new_biases, new_state, grads.inputs)
