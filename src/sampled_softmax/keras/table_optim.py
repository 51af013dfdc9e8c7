"""The class table's optimizer fused into the layer's loss: ``SampledSoftmax(...,
table_optimizer=RowAdam(...))`` with :class:`RowSGD`, :class:`RowAdagrad` or :class:`RowAdam`.

The layer's own loss knows, inside the training step, its gradient with respect to the rows it
gathered (the head's ``softmax - target`` or ``sigmoid - target`` times the hidden states, each
position weighted as Keras reduces the loss: sample weights, masks, the mean's denominator and
the loss's weight in ``compile``). So the loss updates those rows itself, in place, and the
table and its bias are outside Keras's trainable set: ``fit``'s step never differentiates the
``[V, D]`` table (on JAX and PyTorch Keras would otherwise make its dense gradient, a step that
grows with ``V``), and repeated rows are summed once before the update, whatever the backend
(Keras 3's optimizers mis-apply a repeated row's gradient on TensorFlow). The gradient with
respect to the layer's inputs flows back to the rest of the model, which keeps the model's
optimizer. The state (step count, moments) is the layer's non-trainable weights: saved and
restored with the model.

The arithmetic, for a touched row ``r`` with summed gradient ``g_r`` at fused step ``t``, is the
same as PyTorch's (:mod:`sampled_softmax.torch.table_optim`) and JAX's
(:mod:`sampled_softmax.jax.table_optim`); the names are Keras's (``learning_rate``, ``beta_1``,
``beta_2``, ``epsilon``; PyTorch's ``lr``, ``betas``, ``eps``):

* ``RowSGD``: ``w_r -= lr g_r``.
* ``RowAdagrad`` (FBGEMM's exact row-wise Adagrad): ``G_r += mean(g_r ** 2)``,
  ``w_r -= lr g_r / (sqrt(G_r) + eps)``; one accumulator per row and per bias entry.
* ``RowAdam``: Adam on the touched rows, ``m_r = b1 m_r + (1 - b1) g_r``,
  ``v_r = b2 v_r + (1 - b2) g_r^2``, ``w_r -= lr / (1 - b1^t) * m_r / (sqrt(v_r / (1 - b2^t)) + eps)``
  (``torch.optim.Adam``'s form; Keras's ``Adam`` puts ``epsilon`` outside the bias correction);
  ``rowwise=True`` keeps one second moment per row.
"""

from __future__ import annotations

from .. import SampledSoftmaxError
from .. import _validation as V
from ._backend import _gather_rows, _scatter_add_rows, keras, ops

__all__ = ["TableOptimizer", "RowSGD", "RowAdagrad", "RowAdam"]


class TableOptimizer:
    """The base of the fused table optimizers: the state it keeps per row (:meth:`slots`) and
    the change a step makes to a row and to its state (:meth:`deltas`)."""

    def slots(self, width: int, per_row_ok: bool) -> list:
        """``(name, per_row)`` of each state array: ``per_row`` one value a row, else the
        parameter's shape."""
        return []

    def deltas(self, param_rows, slot_rows, g, t):
        """``(param delta, [slot deltas])`` for rows ``param_rows [M, ...]`` with state
        ``slot_rows`` and summed gradient ``g``, at step ``t`` (float32 scalar, from 1)."""
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    __hash__ = object.__hash__


def _row_mean_square(g):
    return ops.mean(ops.square(g), axis=-1) if len(g.shape) > 1 else ops.square(g)


def _per_row(x, like):
    return ops.expand_dims(x, -1) if len(like.shape) > 1 else x


@keras.saving.register_keras_serializable(package="sampled_softmax")
class RowSGD(TableOptimizer):
    """Plain SGD on the rows a step touched: ``w_r -= learning_rate g_r``."""

    def __init__(self, learning_rate: float = 0.01):
        self.learning_rate = V.check_number("learning_rate", learning_rate, positive=True)

    def deltas(self, param_rows, slot_rows, g, t):
        return -self.learning_rate * g, []

    def get_config(self):
        return {"learning_rate": self.learning_rate}


@keras.saving.register_keras_serializable(package="sampled_softmax")
class RowAdagrad(TableOptimizer):
    """FBGEMM's exact row-wise Adagrad: ``G_r += mean(g_r ** 2)``,
    ``w_r -= learning_rate g_r / (sqrt(G_r) + epsilon)``; one accumulator per table row and per
    bias entry."""

    def __init__(self, learning_rate: float = 0.01, epsilon: float = 1e-10):
        self.learning_rate = V.check_number("learning_rate", learning_rate, positive=True)
        self.epsilon = V.check_number("epsilon", epsilon, positive=False)

    def slots(self, width, per_row_ok):
        return [("sum_sq", True)]

    def deltas(self, param_rows, slot_rows, g, t):
        (acc,) = slot_rows
        d_acc = _row_mean_square(g)
        step = -self.learning_rate * g / _per_row(ops.sqrt(acc + d_acc) + self.epsilon, g)
        return step, [d_acc]

    def get_config(self):
        return {"learning_rate": self.learning_rate, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="sampled_softmax")
class RowAdam(TableOptimizer):
    """Adam on the rows a step touched (``torch.optim.Adam``'s formula, applied lazily; ``t``
    counts the fused steps). ``rowwise=True`` keeps one second moment per table row."""

    def __init__(self, learning_rate: float = 1e-3, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-8, rowwise: bool = False):
        self.learning_rate = V.check_number("learning_rate", learning_rate, positive=True)
        self.epsilon = V.check_number("epsilon", epsilon, positive=False)
        self.beta_1, self.beta_2 = V.check_number("beta_1", beta_1, positive=False), V.check_number("beta_2", beta_2, positive=False)
        if not (self.beta_1 < 1 and self.beta_2 < 1):
            raise SampledSoftmaxError(f"`beta_1` and `beta_2` must be in [0, 1); received {self.beta_1}, {self.beta_2}")
        if type(rowwise) is not bool:
            raise TypeError(f"`rowwise` must be True or False; received {rowwise!r}")
        self.rowwise = rowwise

    def slots(self, width, per_row_ok):
        return [("exp_avg", False), ("exp_avg_sq", self.rowwise and per_row_ok)]

    def deltas(self, param_rows, slot_rows, g, t):
        m, v = slot_rows
        b1, b2 = self.beta_1, self.beta_2
        d_m = (1.0 - b1) * (g - m)  # m + (1 - b1)(g - m) = b1 m + (1 - b1) g
        square = _row_mean_square(g) if len(v.shape) < len(g.shape) else ops.square(g)
        d_v = (1.0 - b2) * (square - v)
        m_new, v_new = m + d_m, v + d_v
        denom = ops.sqrt(v_new / (1.0 - ops.power(b2, t))) + self.epsilon
        if len(v.shape) < len(g.shape):
            denom = ops.expand_dims(denom, -1)
        return -self.learning_rate / (1.0 - ops.power(b1, t)) * m_new / denom, [d_m, d_v]

    def get_config(self):
        return {"learning_rate": self.learning_rate, "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "rowwise": self.rowwise}


def get(optimizer) -> TableOptimizer | None:
    """A table optimizer from an instance, its serialized config, or None."""
    if optimizer is None or isinstance(optimizer, TableOptimizer):
        return optimizer
    if isinstance(optimizer, dict):
        restored = keras.saving.deserialize_keras_object(optimizer)
        if isinstance(restored, TableOptimizer):
            return restored
    raise TypeError(f"`table_optimizer` must be a RowSGD, RowAdagrad or RowAdam (from sampled_softmax.keras); "
                    f"received {type(optimizer).__name__}")


# ---------------------------------------------------------------------------------------------
# The step, in keras.ops


def make_state(layer, optimizer: TableOptimizer) -> dict:
    """The layer's state weights for ``optimizer``: a step count and, per parameter (``kernel``,
    ``bias``), each slot; non-trainable float32, saved with the model."""
    state = {"step": layer.add_weight(name="table_step", shape=(), dtype="float32", initializer="zeros",
                                      trainable=False, autocast=False)}
    params = {"kernel": (layer.num_classes, layer.input_dim)}
    if layer.use_bias:
        params["bias"] = (layer.num_classes,)
    for param, shape in params.items():
        for slot, per_row in optimizer.slots(shape[-1], len(shape) > 1):
            state[f"{param}_{slot}"] = layer.add_weight(
                name=f"table_{param}_{slot}", shape=shape[:1] if per_row else shape, dtype="float32",
                initializer="zeros", trainable=False, autocast=False)
    return state


def summed_rows(ids, values, num_rows: int):
    """``(distinct ids [M], summed values [M, ...])`` of ``ids [M]`` (``num_rows`` and above:
    padding); the slots past the distinct ids have id ``num_rows`` and value 0. Static shapes:
    a sort, a segment sum and a scatter, nothing of size ``num_rows``."""
    m = ids.shape[0]
    order = ops.argsort(ids)
    sorted_ids = ops.take(ids, order)
    first = ops.concatenate([ops.ones((1,), "bool"), ops.not_equal(sorted_ids[1:], sorted_ids[:-1])])
    segment = ops.cumsum(ops.cast(first, "int32")) - 1
    summed = [ops.segment_sum(ops.take(v, order, axis=0), segment, num_segments=m) for v in values]
    distinct = ops.scatter_update(ops.full((m,), num_rows, "int32"), ops.expand_dims(segment, -1),
                                  ops.cast(sorted_ids, "int32"))
    return distinct, summed


def apply_step(layer, optimizer: TableOptimizer, state: dict, ids, d_rows, d_bias_rows) -> None:
    """One fused step: the gradient ``d_rows [M, D]`` (and ``d_bias_rows [M]``) of rows ``ids``
    (``V``: not touched) summed per row and applied in place to the layer's table and state."""
    V = layer.num_classes
    values = [d_rows] + ([d_bias_rows] if d_bias_rows is not None else [])
    distinct, summed = summed_rows(ops.cast(ids, "int32"), values, V)
    real = distinct < V
    safe = ops.where(real, distinct, 0)  # padding slots add 0 to row 0
    step = state["step"]
    t = ops.convert_to_tensor(step) + 1.0
    params = [("kernel", layer.kernel, summed[0])]
    if d_bias_rows is not None:
        params.append(("bias", layer.bias, summed[1]))
    for name, param, g in params:
        names = [f"{name}_{slot}" for slot, _ in optimizer.slots(0, len(param.shape) > 1)]
        slot_rows = [_gather_rows(state[n], safe) for n in names]
        param_rows = _gather_rows(param, safe)
        d_param, d_slots = optimizer.deltas(param_rows, slot_rows, g, t)
        for variable, delta in [(param, d_param)] + [(state[n], d) for n, d in zip(names, d_slots)]:
            mask = real if len(delta.shape) == 1 else ops.expand_dims(real, -1)
            _scatter_add_rows(variable, safe, ops.where(mask, delta, 0.0))
    step.assign_add(1.0)


def table_step(layer, pieces: dict, position_weights) -> None:
    """The fused step of ``layer``'s table optimizer for one loss call: the gradient of
    ``sum(position_weights * loss)`` with respect to the rows the loss gathered (``pieces`` from
    ``SampledSoftmax.sampled_loss``: the hidden states, the gathered ids, the logits, the kept
    columns and live rows), applied to those rows in place. The head's gradient with respect to
    the logits is its ``softmax - target`` (or ``sigmoid - target`` per column), the targets
    those of ``_stages.softmax_head`` / ``sigmoid_head``."""
    if any(w.trainable for w in [layer.kernel] + ([layer.bias] if layer.use_bias else [])):
        raise SampledSoftmaxError(
            f"SampledSoftmax {layer.name!r}: its table is trainable again (`trainable` was set on the layer or "
            f"the model after it was built), so the model's optimizer would update it a second time beside its "
            f"table_optimizer: set layer.kernel.trainable = False (and layer.bias.trainable)")
    T = pieces["num_true"]
    h = ops.stop_gradient(pieces["h"])
    logits, keep, live = (ops.stop_gradient(pieces[k]) for k in ("logits", "keep", "live"))
    kt = ops.cast(keep[:, :T], "float32")
    n_true = ops.maximum(ops.sum(kt, axis=1, keepdims=True), 1.0)
    if layer.objective == "sampled_softmax":
        n_kept = ops.sum(ops.cast(keep, "float32"), axis=1, keepdims=True)
        on_true = ops.concatenate([ops.ones_like(logits[:, :T]), ops.zeros_like(logits[:, T:])], axis=1)
        eps = layer.label_smoothing
        target = ops.where(keep, on_true * (1.0 - eps) / n_true + eps / n_kept, 0.0)
        d_logits = ops.softmax(logits, axis=1) - target  # removed columns: probability 0, target 0
    else:
        target = ops.concatenate([kt / n_true, ops.zeros_like(logits[:, T:])], axis=1)
        d_logits = ops.where(keep, ops.sigmoid(ops.where(keep, logits, 0.0)) - target, 0.0)
    weights = ops.reshape(ops.cast(ops.stop_gradient(position_weights), "float32"), (-1, 1))
    g = ops.where(live[:, None], d_logits, 0.0) * weights
    n, d = ops.shape(h)[0], ops.shape(h)[1]
    d_true = ops.reshape(g[:, :T, None] * h[:, None, :], (-1, d))
    d_rows = ops.concatenate([d_true, ops.matmul(ops.transpose(g[:, T:]), h)], axis=0)
    d_bias = ops.concatenate([ops.reshape(g[:, :T], (-1,)), ops.sum(g[:, T:], axis=0)]) if layer.use_bias else None
    # An ignored target's placeholder row is not touched by the step: its id becomes padding.
    ids = pieces["ids"]
    label_ids = ops.where(ops.reshape(pieces["valid"], (-1,)), ids[:n * T], layer.num_classes)
    ids = ops.concatenate([ops.cast(label_ids, "int32"), ops.cast(ids[n * T:], "int32")], axis=0)
    apply_step(layer, layer.table_optimizer, layer._table_state, ids, d_rows, d_bias)
