"""Metrics of a ``SampledSoftmax`` layer: ``Perplexity`` and ``SampledSoftmaxMetric`` (any
Keras metric scored on the full softmax, in training too)."""

from __future__ import annotations

import weakref

from .. import SampledSoftmaxError
from .. import _validation as V
from ._backend import get_keras_mask, keras, ops, set_keras_mask
from ._binding import _bound_layer, bind_restored
from .layers import OUTPUTS, SampledSoftmax, _label_shape, _log_probs, _shape


@keras.saving.register_keras_serializable(package="sampled_softmax")
class Perplexity(keras.metrics.Metric):
    """``exp`` of the mean full-softmax cross-entropy of the targets (no label smoothing),
    over the positions a mask or ``sample_weight`` keeps; ``y_pred`` is a
    :class:`SampledSoftmax` output (``output`` names its kind)."""

    def __init__(self, output="probabilities", name="perplexity", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.output = V.check_choice("output", output, OUTPUTS)
        self.total = self.add_variable((), initializer="zeros", name="total", dtype="float32")
        self.count = self.add_variable((), initializer="zeros", name="count", dtype="float32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        mask = get_keras_mask(y_pred)
        logp = _log_probs(y_pred, self.output)
        y = ops.cast(ops.convert_to_tensor(y_true), "int32")
        if len(_shape(y)) == len(_shape(logp)):  # targets [..., 1]
            if _shape(y)[-1] != 1:
                raise SampledSoftmaxError(f"`y_true`: perplexity needs one target per position, [...] or [..., 1]; "
                                          f"received shape {list(_shape(y))}")
            y = ops.squeeze(y, -1)
        nll = -ops.squeeze(ops.take_along_axis(logp, ops.expand_dims(y, -1), axis=-1), -1)
        weight = ops.ones_like(nll)
        if sample_weight is not None:
            weight = weight * ops.cast(sample_weight, "float32")
        if mask is not None:
            weight = weight * ops.cast(ops.reshape(mask, ops.shape(nll)), "float32")
        self.add_nll(nll, weight)

    def add_nll(self, nll, weight):
        """Add per-position negative log-likelihoods with their weights."""
        self.total.assign_add(ops.sum(nll * weight))
        self.count.assign_add(ops.sum(weight))

    def result(self):
        return ops.exp(ops.divide_no_nan(self.total, self.count))

    def get_config(self):
        return {"output": self.output, "name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="sampled_softmax")
class SampledSoftmaxMetric(keras.metrics.Metric):
    """A Keras metric that sees a :class:`SampledSoftmax` layer's full-softmax output during
    ``fit``'s training steps too (``layer.metric(...)`` makes one).

    In training the layer passes its hidden states through (its loss needs them), so a plain
    ``compile(metrics=["accuracy"])`` would score hidden states there. Once a metric of this
    class is made, the layer's training output also carries its full output, computed from the
    same weights without a gradient (``[..., D + V]`` float32: hidden states, then the output;
    one ``[N, D] x [D, V]`` product per step, about a third of a ``Dense`` softmax step), and
    the metric scores that: the numbers ``fit`` prints are exactly those ``evaluate`` gives for
    the same batch and weights. Positions whose target is the layer's ``ignore_index`` are left
    out, in ``fit`` and ``evaluate`` alike.

    Args:
        metric: a ``keras.metrics.Metric`` or its name (``"accuracy"`` means
            ``"sparse_categorical_accuracy"``), or ``"perplexity"`` (:class:`Perplexity`).
        layer: the :class:`SampledSoftmax` layer (or, when restored, ``layer_name``).
    """

    def __init__(self, metric="sparse_categorical_accuracy", layer=None, *, layer_name=None, name=None, dtype=None):
        if layer is not None and not isinstance(layer, SampledSoftmax):
            raise TypeError(f"`layer` must be a SampledSoftmax layer; received {type(layer).__name__}")
        inner = self._resolve(metric, layer)
        super().__init__(name=name or inner.name, dtype=dtype)
        self.metric = inner
        self._layer_ref = weakref.ref(layer) if layer is not None else None
        self._layer_name = layer.name if layer is not None else layer_name
        if layer is None and layer_name is not None:  # restored by load_model: its layer already is
            bind_restored(self)
            layer = None if self._layer_ref is None else self._layer_ref()
        if layer is not None:
            layer._full_in_training = True

    @staticmethod
    def _resolve(metric, layer):
        if isinstance(metric, keras.metrics.Metric):
            return metric
        if isinstance(metric, dict):
            return keras.metrics.deserialize(metric)
        if metric in ("accuracy", "acc"):
            return keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        if metric == "perplexity":
            return Perplexity(output=layer.output_mode if layer is not None else "probabilities")
        if isinstance(metric, str):
            return keras.metrics.get(metric)
        raise TypeError(f"`metric` must be a keras.metrics.Metric or a metric name; received {type(metric).__name__}")

    def get_layer(self, y_pred=None) -> SampledSoftmax:
        """The :class:`SampledSoftmax` layer this metric belongs to (the one that produced
        ``y_pred``, when given)."""
        return _bound_layer(self, "this metric", "make it with layer.metric(...)", y_pred)

    def update_state(self, y_true, y_pred, sample_weight=None):
        layer = self.get_layer(y_pred)
        if layer._is_training_output(y_pred):
            mask = get_keras_mask(y_pred)
            _, y_pred = layer._split_training_output(y_pred)
            if y_pred is None:
                raise SampledSoftmaxError(
                    f"`y_pred`: {self.name} needs the layer's full output in training, but the training step "
                    f"was traced before the metric was made; make metrics with layer.metric(...) before compile")
            if mask is not None:
                set_keras_mask(y_pred, mask)
        y_true = ops.convert_to_tensor(y_true)
        # The targets' shape, checked here with the loss's message (before any framework's own).
        num_true = _label_shape(_shape(y_true), _shape(y_pred)[:-1], layer.num_true)
        if num_true > 1:
            return self._update_several_targets(layer, y_true, y_pred, sample_weight)
        if layer.ignore_index is not None:
            valid = ops.not_equal(y_true, layer.ignore_index)
            keep = ops.cast(valid, "float32")
            if len(_shape(y_true)) == len(_shape(y_pred)):
                keep = ops.squeeze(keep, -1)
            sample_weight = keep if sample_weight is None else ops.cast(sample_weight, "float32") * keep
            y_true = ops.where(valid, y_true, 0)
        self.metric.update_state(y_true, y_pred, sample_weight=sample_weight)

    def _update_several_targets(self, layer, y_true, y_pred, sample_weight):
        """``num_true > 1`` targets per position: accuracy counts a position when its top class
        is one of its targets; perplexity is ``exp`` of the mean of the exact loss, each
        target weighing ``1 / T`` (ignored targets left out)."""
        y = ops.cast(y_true, "int32")
        valid = ops.ones_like(y, "bool") if layer.ignore_index is None else ops.not_equal(y, layer.ignore_index)
        keep = ops.cast(ops.any(valid, axis=-1), "float32")
        mask = get_keras_mask(y_pred)
        if mask is not None:
            keep = keep * ops.cast(ops.reshape(mask, ops.shape(keep)), "float32")
        weight = keep if sample_weight is None else ops.cast(sample_weight, "float32") * keep
        if isinstance(self.metric, keras.metrics.SparseCategoricalAccuracy):
            top = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
            hit = ops.any(ops.logical_and(ops.equal(y, top[..., None]), valid), axis=-1)
            # The top class where it is a target, another class where it is not: the same count.
            target = ops.where(hit, top, ops.mod(top + 1, layer.num_classes))
            return self.metric.update_state(target, y_pred, sample_weight=weight)
        if isinstance(self.metric, Perplexity):
            logp = _log_probs(y_pred, self.metric.output)
            picked = ops.take_along_axis(logp, ops.where(valid, y, 0), axis=-1)
            n = ops.maximum(ops.sum(ops.cast(valid, "float32"), axis=-1), 1.0)
            nll = -ops.sum(ops.where(valid, picked, 0.0), axis=-1) / n
            return self.metric.add_nll(nll, weight)
        raise SampledSoftmaxError(
            f"`metric`: {self.metric.name} takes one target per position, and this layer has "
            f"num_true={layer.num_true}; with several targets head.metric supports 'accuracy' (the top class is "
            f"one of the targets) and 'perplexity'")

    def result(self):
        return self.metric.result()

    def reset_state(self):
        self.metric.reset_state()

    def get_config(self):
        return {"metric": keras.metrics.serialize(self.metric), "layer_name": self._layer_name,
                "name": self.name, "dtype": self.dtype}
