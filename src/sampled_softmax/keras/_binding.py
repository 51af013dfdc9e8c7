"""Which ``SampledSoftmax`` layer a loss or metric belongs to, so that it never scores, nor
trains, another model's layer, whatever the layers' names.

In order: the layer that produced ``y_pred`` (each output carries its layer, :data:`_OWNER_ATTR`);
else the ``SampledSoftmax`` layer of the model whose step is running; else the layer the object
was made with (a weak reference); else, for an object restored by ``load_model`` (whose config
can only name its layer), the layer of that name that existed when it was restored (the model's
own: ``load_model`` restores layers first), kept from then on.
"""

from __future__ import annotations

import weakref

from .. import SampledSoftmaxError
from ._backend import _compile_metrics, _flatten_layers, _inbound_inputs, _keras_history, get_tensor_attr, keras

# The attribute that ties a layer's output to the layer: its loss and metrics read it from
# `y_pred`, so they always belong to the layer of the model that produced it.
_OWNER_ATTR = "_sampled_softmax_layer"
# On JAX, the values the sampled loss needs, read inside the model's (stateless) call: a custom
# train_step that computes its loss outside that call, as Keras's JAX guide writes one, would
# otherwise read the variables' stored values (no gradient reaches them) and draw outside it.
_STATE_ATTR = "_sampled_softmax_state"

# Live layers by name, oldest first, for objects restored by `load_model` (see the module docstring).
_LAYERS_BY_NAME: "dict[str, list[weakref.ref]]" = {}


def register(layer) -> None:
    """Record a live layer under its name."""
    refs = [r for r in _LAYERS_BY_NAME.get(layer.name, ()) if r() is not None]
    refs.append(weakref.ref(layer))
    _LAYERS_BY_NAME[layer.name] = refs


def layer_named(name):
    """The most recent live ``SampledSoftmax`` layer called ``name``, or None. ``load_model``
    restores a model's layers before its compiled loss and metrics, so at their restoration this
    is their own layer: they bind to it then (:func:`bind_restored`) and keep it."""
    for ref in reversed(_LAYERS_BY_NAME.get(name, ())):
        layer = ref()
        if layer is not None:
            return layer
    return None


def bind_restored(owner) -> None:
    """Bind a loss or metric made from its config (a layer name only) to that layer now, by a
    weak reference: a layer of the same name made later, in another model, cannot take it."""
    if owner._layer_ref is None and owner._layer_name is not None:
        layer = layer_named(owner._layer_name)
        if layer is not None:
            owner._layer_ref = weakref.ref(layer)


def _find_upstream_layer(inputs, name):
    """The layer called ``name`` among those that produced the symbolic ``inputs``."""
    seen, stack = set(), [inputs]
    while stack:
        tensor = stack.pop()
        history = _keras_history(tensor)
        if history is None:
            continue
        layer = history[0]
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if layer.name == name:
            return layer
        stack.extend(_inbound_inputs(layer, history[1]))
    return None


_WARNED_MODELS: "weakref.WeakSet" = weakref.WeakSet()


_CHECKED_MODELS: "weakref.WeakSet" = weakref.WeakSet()


def _check_compiled_loss(layer) -> None:
    """In training the layer outputs hidden states for ``head.loss``: a model compiled with
    another loss for it (``"sparse_categorical_crossentropy"``, what a Dense softmax had) would
    train on those silently or fail with a shape error. Raise, once per model, saying so."""
    model = _calling_model(compiled=True)
    if model is None or model in _CHECKED_MODELS:
        return
    loss = getattr(model, "loss", None)
    if isinstance(loss, dict):
        loss = loss.get(layer.name)
    elif isinstance(loss, (list, tuple)):
        loss = loss[0] if len(loss) == 1 else None
    from .losses import SampledSoftmaxLoss

    if loss is None or isinstance(loss, SampledSoftmaxLoss):
        _CHECKED_MODELS.add(model)
        return
    name = loss if isinstance(loss, str) else getattr(loss, "name", None) or type(loss).__name__
    raise SampledSoftmaxError(
        f"`loss`: this model is compiled with loss={name!r} for its SampledSoftmax layer {layer.name!r}, which "
        f"in training outputs hidden states for its own loss: compile with loss=head.loss (head being that "
        f"layer), e.g. model.compile(optimizer=..., loss=head.loss)")


def _warn_about_plain_metrics(layer) -> None:
    """Warn, once per model, when ``compile(metrics=[...])`` has a plain metric for this
    layer's output: during ``fit``'s training steps it would score hidden states."""
    import warnings

    from .metrics import SampledSoftmaxMetric

    model = _calling_model()
    groups = None if model is None else _compile_metrics(model)
    if groups is None or model in _WARNED_MODELS:
        return
    _WARNED_MODELS.add(model)
    plain = []
    for group in groups:
        if isinstance(group, dict):
            group = group.get(layer.name, [])
        for metric in group if isinstance(group, (list, tuple)) else [group] if group else []:
            if isinstance(metric, (list, tuple, dict)) or isinstance(metric, SampledSoftmaxMetric):
                continue
            plain.append(metric if isinstance(metric, str) else getattr(metric, "name", type(metric).__name__))
    if plain:
        names = ", ".join(repr(p) for p in plain)
        warnings.warn(
            f"compile(metrics=[{names}]): during fit's training steps these score the hidden states that the "
            f"SampledSoftmax layer {layer.name!r} outputs for its loss, so their training numbers are "
            f"meaningless (evaluate and val_ numbers are right). Use metrics=[head.metric({plain[0]!r})], with "
            f"head that layer: it scores the full softmax in training too.", UserWarning, stacklevel=2)


def _calling_model(compiled: bool = False):
    """The Keras model whose call or training step is running (the model's call, its trainer's
    step or a custom ``train_step`` is a few frames up), or None; with ``compiled``, the first
    such model that is compiled (a model nested in another is not)."""
    import sys

    frame = sys._getframe(2)
    for _ in range(40):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, keras.Model) and (not compiled or getattr(candidate, "compiled", False)):
            return candidate
        frame = frame.f_back
    return None


def _layer_of_model(model, name):
    """The model's own SampledSoftmax layer: the only one, or the one called ``name``."""
    from .layers import SampledSoftmax

    try:
        layers = [x for x in _flatten_layers(model) if isinstance(x, SampledSoftmax)]
    except Exception:  # noqa: BLE001 - a model in construction
        return None
    if len(layers) == 1:
        return layers[0]
    return next((x for x in layers if x.name == name), None)


def _bound_layer(owner, what: str, fix: str, y_pred=None):
    """The layer a loss or metric belongs to, so that it can never score, nor train, another
    model's layer, whatever the names: the one that produced ``y_pred``; else the
    SampledSoftmax layer of the model whose step calls it; else the one it holds by weak
    reference; else, once restored, the one of its name."""
    produced = None if y_pred is None else get_tensor_attr(y_pred, _OWNER_ATTR)
    layer = produced[0]() if produced is not None else None
    if layer is None:
        model = _calling_model()
        if model is not None:
            layer = _layer_of_model(model, owner._layer_name)
    if layer is None and owner._layer_ref is not None:
        layer = owner._layer_ref()
    if layer is None and owner._layer_name is not None:
        bind_restored(owner)
        layer = None if owner._layer_ref is None else owner._layer_ref()
    if layer is None:
        raise SampledSoftmaxError(
            f"`layer`: {what} is not bound to a SampledSoftmax layer (name {owner._layer_name!r}); {fix}")
    return layer
