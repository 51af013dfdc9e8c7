"""``SampledSoftmaxLoss``: the loss of a ``SampledSoftmax`` layer, and Keras's loss reduction."""

from __future__ import annotations

import weakref

from .. import SampledSoftmaxError
from ._backend import (
    _in_replica_strategy, _in_stateless_scope, _in_symbolic_scope, _scale_for_replicas, get_keras_mask,
    get_tensor_attr, keras, ops,
)
from ._binding import _STATE_ATTR, _bound_layer, _calling_model, _warn_about_plain_metrics, bind_restored
from .layers import SampledSoftmax, _shape


def _weights(losses, sample_weight, mask, reduction):
    """Each position's weight in Keras's loss reduction (None: all 1): masked positions weigh 0,
    and the others make up for them in a mean."""
    weight = None
    if mask is not None:
        weight = ops.cast(mask, "float32")
        if reduction in ("sum_over_batch_size", "mean"):
            size = ops.cast(ops.size(weight), "float32")
            weight = weight * ops.divide_no_nan(size, ops.sum(weight))
    if sample_weight is not None:
        sw = ops.cast(sample_weight, "float32")
        while len(sw.shape) > len(losses.shape) and sw.shape[-1] == 1:
            sw = ops.squeeze(sw, -1)
        while len(sw.shape) < len(losses.shape):
            sw = ops.expand_dims(sw, -1)
        weight = sw if weight is None else weight * sw
    return weight


def _reduce(losses, sample_weight, mask, reduction):
    """Keras's loss reduction: masked positions weigh 0 and leave the mean's denominator."""
    losses = ops.cast(losses, "float32")
    weight = _weights(losses, sample_weight, mask, reduction)
    weighted = losses if weight is None else losses * weight
    if reduction in (None, "none"):
        return weighted
    total = ops.sum(weighted)
    if reduction == "sum":
        return total
    if reduction == "mean_with_sample_weight" and weight is not None:
        return _scale_for_replicas(ops.divide_no_nan(total, ops.sum(weight * ops.ones_like(losses))))
    return _scale_for_replicas(ops.divide_no_nan(total, ops.cast(ops.size(losses), "float32")))


def _position_weights(losses, sample_weight, mask, reduction):
    """The derivative of :func:`_reduce`'s total with respect to each position's loss."""
    losses = ops.cast(losses, "float32")
    weight = _weights(losses, sample_weight, mask, reduction)
    w = ops.ones_like(losses) if weight is None else weight * ops.ones_like(losses)
    if reduction == "sum":
        return w
    if reduction == "mean_with_sample_weight" and weight is not None:
        return ops.divide_no_nan(w, ops.sum(w))
    return w / ops.cast(ops.size(losses), "float32")


@keras.saving.register_keras_serializable(package="sampled_softmax")
class SampledSoftmaxLoss(keras.losses.Loss):
    """The loss of a :class:`SampledSoftmax` layer (``layer.loss``): the sampled softmax loss
    on the layer's training output, the exact cross-entropy on its full-softmax output.

    Reduced like every Keras loss (``"sum_over_batch_size"`` by default), honouring the mask of
    ``Embedding(mask_zero=True)`` and the layer's ``ignore_index``.
    """

    def __init__(self, layer=None, *, layer_name=None, reduction="sum_over_batch_size", name="sampled_softmax", **kwargs):
        super().__init__(reduction=reduction, name=name, **kwargs)
        if layer is not None and not isinstance(layer, SampledSoftmax):
            raise TypeError(f"`layer` must be a SampledSoftmax layer; received {type(layer).__name__}")
        # A weak reference, and a method rather than a property to reach it: Keras's saving walks
        # every attribute, and layer -> loss -> layer would be a cycle it does not stop.
        self._layer_ref = weakref.ref(layer) if layer is not None else None
        self._layer_name = layer.name if layer is not None else layer_name
        bind_restored(self)

    def get_layer(self, y_pred=None) -> SampledSoftmax:
        """The :class:`SampledSoftmax` layer this loss belongs to (the one that produced
        ``y_pred``, when given)."""
        return _bound_layer(self, "this loss", "compile with loss=layer.loss", y_pred)

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras's Loss.__call__ casts y_true to float; class ids must stay integers.
        in_mask = get_keras_mask(y_pred)
        pieces: dict = {}
        losses = self._losses(y_true, y_pred, pieces)
        out_mask = get_keras_mask(losses)
        if in_mask is not None and out_mask is not None:
            mask = ops.logical_and(ops.cast(in_mask, "bool"), ops.cast(out_mask, "bool"))
        else:
            mask = in_mask if in_mask is not None else out_mask
        total = _reduce(losses, sample_weight, mask, self.reduction)
        if pieces and not _in_symbolic_scope():  # the layer's fused step, with this loss's weight in the total
            weights = _position_weights(losses, sample_weight, mask, self.reduction) * self._compiled_weight()
            self.get_layer(y_pred).table_step(pieces, weights)
        return total

    def call(self, y_true, y_pred):
        return self._losses(y_true, y_pred, None)

    def _losses(self, y_true, y_pred, pieces):
        layer = self.get_layer(y_pred)
        y_true = ops.convert_to_tensor(y_true)
        if layer._is_training_output(y_pred):
            _warn_about_plain_metrics(layer)
            pieces = None if layer.table_optimizer is None else self._fused_step_pieces(layer, pieces)
            return layer.sampled_loss(y_true, layer._split_training_output(y_pred)[0],
                                      state=get_tensor_attr(y_pred, _STATE_ATTR), pieces=pieces)
        if _shape(y_pred)[-1] != layer.num_classes:
            raise SampledSoftmaxError(
                f"`y_pred` must be the SampledSoftmax layer's output [..., {layer.num_classes}]; "
                f"received shape {list(_shape(y_pred))}")
        return layer.full_loss(y_true, y_pred)

    def _fused_step_pieces(self, layer, pieces):
        """``pieces`` for a training loss of a layer with a table_optimizer, after checking that
        the step can update the table here."""
        where = None
        if pieces is None:
            where = "called as `loss.call(...)`, which returns unreduced losses"
        elif self.reduction in (None, "none"):
            where = "with reduction='none'"
        elif keras.backend.backend() == "jax" and not _in_stateless_scope() and not _in_symbolic_scope():
            where = "outside the model's stateless call (a custom JAX train_step)"
        elif _in_replica_strategy():
            where = "under a tf.distribute strategy of several replicas (each would update the table alone)"
        if where is not None:
            raise SampledSoftmaxError(
                f"SampledSoftmax {layer.name!r} has a table_optimizer, whose step needs this loss's weight in the "
                f"total and must update the table in place; it cannot run {where}: train with fit (or call the "
                f"loss object), or make the layer without a table_optimizer")
        return pieces

    def _compiled_weight(self) -> float:
        """This loss's weight in the compiled model's total (``compile(loss_weights=...)``), 1 if none."""
        model = _calling_model(compiled=True)
        compiled = getattr(model, "_compile_loss", None)
        for entry in getattr(compiled, "_flat_losses", None) or ():
            fn = entry[1]
            if fn is self or getattr(fn, "fn", None) is self:
                return 1.0 if entry[2] is None else float(entry[2])
        return 1.0

    def get_config(self):
        return {"layer_name": self._layer_name, "reduction": self.reduction, "name": self.name}
