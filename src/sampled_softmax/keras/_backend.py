"""Everything in the Keras front end that depends on the backend or on Keras's private modules:
choosing an installed backend and importing Keras, reading values when they are concrete,
checking label values where they run, sparse row reads and updates on TensorFlow, replica sums,
tensor attributes, and Keras's symbolic/stateless scopes and graph internals. The layer, loss,
metrics and optimizer files speak ``keras.ops`` and call these."""

from __future__ import annotations

def _choose_installed_backend() -> None:
    """Keras defaults to TensorFlow. Where nothing chose a backend (no KERAS_BACKEND, no
    keras.json) and TensorFlow is not installed, use one that is (JAX, which the `keras` extra
    installs, then PyTorch), so that `pip install sampled-softmax[keras]` works as it is."""
    import importlib.util
    import json
    import os
    import sys

    if "keras" in sys.modules or "KERAS_BACKEND" in os.environ:
        return
    config = os.path.join(os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras")), "keras.json")
    try:
        with open(config) as f:
            if "backend" in json.load(f):
                return
    except (OSError, ValueError):
        pass

    def installed(name):
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            return False

    if installed("tensorflow"):
        return
    for name in ("jax", "torch"):
        if installed(name):
            os.environ["KERAS_BACKEND"] = name
            return


_choose_installed_backend()
try:
    import keras
except ModuleNotFoundError as _missing:  # Keras is there but the backend it is set to is not
    _backend = (_missing.name or "").split(".")[0]
    if _backend in ("tensorflow", "jax", "torch"):
        raise ImportError(
            f"Keras is installed, but its backend {_backend!r} is not: install it (the extras "
            f"sampled-softmax[keras] bring JAX, [tensorflow], [tensorflow-cpu] and [torch] the others) and set "
            f"KERAS_BACKEND to an installed one (jax, tensorflow or torch)") from _missing
    raise
import numpy as np
from keras import ops

from .. import SampledSoftmaxError
from .. import _validation as V

try:  # Keras keeps masks beside tensors that cannot carry attributes (JAX arrays).
    from keras.src.backend.common.masking import get_keras_mask, set_keras_mask
    from keras.src.backend.common.tensor_attributes import get_tensor_attr, set_tensor_attr
except ImportError:  # pragma: no cover - older or newer layouts
    def get_tensor_attr(x, attr):
        return getattr(x, attr, None)

    def set_tensor_attr(x, attr, value):
        setattr(x, attr, value)

    def get_keras_mask(x):
        return get_tensor_attr(x, "_keras_mask")

    def set_keras_mask(x, mask):
        set_tensor_attr(x, "_keras_mask", mask)


def _concrete_numpy(x):
    """The values of ``x`` as NumPy when they are known now (eager), else None (traced)."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return x.numpy() if tf.executing_eagerly() and hasattr(x, "numpy") else None
        if backend == "jax":
            import jax

            return None if isinstance(x, jax.core.Tracer) else np.asarray(x)
        if backend == "torch":
            return x.detach().cpu().numpy()
        return np.asarray(x)
    except Exception:  # noqa: BLE001 - symbolic tensors of any kind: checked where they run
        return None


def _raise_if_out_of_range(values, num_classes: int, ignore_index) -> None:
    """NumPy label values: raise the shared message, worded for Keras targets."""
    v = np.asarray(values)
    if ignore_index is not None:
        v = v[v != ignore_index]
    if v.size:
        try:
            V.check_label_values(int(v.min()), int(v.max()), num_classes, ignore_index)
        except SampledSoftmaxError as err:
            raise SampledSoftmaxError(str(err).replace("`labels`", "`y_true` (targets)")) from None


def _raise_where_seen(values, num_classes, ignore_index):
    """Inside a compiled JAX step: JAX reports the error at the end of a long runtime
    traceback, so the message is also written to stderr, one line, where it is seen."""
    import sys

    try:
        _raise_if_out_of_range(values, num_classes, ignore_index)
    except SampledSoftmaxError as err:
        print(f"sampled_softmax.SampledSoftmaxError: {err}", file=sys.stderr, flush=True)
        raise


def _check_label_values(y, num_classes: int, ignore_index):
    """Out-of-range labels raise: now when eager, when the step runs when traced (graph TF,
    jitted JAX). Returns ``y`` (on TensorFlow, ordered after the check)."""
    values = _concrete_numpy(y)
    if values is not None:
        _raise_if_out_of_range(values, num_classes, ignore_index)
        return y
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        jax.debug.callback(lambda v: _raise_where_seen(v, num_classes, ignore_index), y)
        return y
    if backend == "tensorflow":
        import tensorflow as tf

        valid = tf.ones_like(y, tf.bool) if ignore_index is None else tf.not_equal(y, ignore_index)
        bad = tf.logical_and(valid, tf.logical_or(y < 0, y >= num_classes))
        check = tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(bad)),
            [f"`y_true` (targets) must be in [0, {num_classes - 1}]; received values out of range:",
             tf.boolean_mask(y, bad)],
            summarize=5,
        )
        with tf.control_dependencies([check]):  # before the gathers that would fail first
            return tf.identity(y)
    return y


KERAS_ORDER_REMEDY = ("use sampler='learned_unigram' (learns the label frequencies), sampler='unigram' with the "
                      "label counts, or sampler='uniform'")


def _observe_label_order(y, valid, num_classes: int) -> None:
    """The vocabulary-order check (:mod:`sampled_softmax.order_check`) on the labels: now when
    eager, through ``jax.debug.callback`` when jitted on JAX, ``tf.numpy_function`` in a
    TensorFlow graph. An XLA-compiled TensorFlow step cannot call back to Python: there the
    check does not run. Keras's ``jit_compile="auto"`` compiles ``fit``'s step with XLA only
    when TensorFlow sees an accelerator (never on a CPU-only machine, nor under a
    ``tf.distribute`` strategy); ``jit_compile=False`` or ``run_eagerly=True`` runs the check
    there too."""
    from .. import order_check as OC

    check = OC.order_check("keras", num_classes, KERAS_ORDER_REMEDY)
    if not check.pending or _in_symbolic_scope():
        return
    values, live = _concrete_numpy(y), _concrete_numpy(valid)
    if values is not None and live is not None:
        check.observe(OC.label_counts(np.where(live, values, -1), num_classes))
    elif keras.backend.backend() == "jax":
        from ..jax import _order

        _order.observe(y, valid, num_classes, front="keras", remedy=KERAS_ORDER_REMEDY)
    elif keras.backend.backend() == "tensorflow":
        from ..tensorflow import _order

        _order.observe(y, valid, num_classes, front="keras", remedy=KERAS_ORDER_REMEDY)


def _take_rows(tables, ids, dense_gradient=()):
    """``[table[ids] for table in tables]`` for weights (or their values); ``ids`` 1-D.

    On TensorFlow a sparse read of each variable (``ResourceGather``; ``ops.take`` reads the
    whole variable first, and while that dense read is alive the optimizer's in-place row
    update must copy all of it), whose gradient carries a repeated row's sum on its first read,
    as Keras 3's optimizers need on TensorFlow (see :mod:`sampled_softmax.tensorflow._rows`).

    ``dense_gradient``: positions of ``tables`` whose gradient must be a dense tensor: a table
    another layer reads too (``tied_to``). TensorFlow concatenates the row-sparse gradients of
    two reads of one variable, so a row both read would reach Keras's optimizers twice; a dense
    gradient makes TensorFlow add the other read's into it, each row once (``O(V D)`` a step).
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        from ..tensorflow import _rows

        values = [t.value if isinstance(t, keras.Variable) else t for t in tables]
        values = [_rows.dense_gradient(v) if i in dense_gradient else v for i, v in enumerate(values)]
        return _rows.sum_repeats([tf.gather(v, ids) for v in values], ids, num_classes=values[0].shape[0])
    return [ops.take(t, ids, axis=0) for t in tables]


def _gather_rows(variable, ids):
    """``variable[ids]``: on TensorFlow a sparse read of the variable (``ResourceGather``), since a
    dense read alive at the in-place update that follows makes TensorFlow copy all of it."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        value = variable.value if isinstance(variable, keras.Variable) else variable
        return tf.gather(value, ids)
    return ops.take(variable.value, ids, axis=0)


def _scatter_add_rows(variable, ids, deltas) -> None:
    """``variable[ids] += deltas`` in place (repeated ids add up): a sparse update of the
    variable's buffer on TensorFlow and PyTorch; on JAX a functional ``.at[].add`` assigned back,
    in place under the trainer's jit, which donates the state."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        value = variable.value if isinstance(variable, keras.Variable) else variable
        value.scatter_add(tf.IndexedSlices(tf.cast(deltas, value.dtype), tf.cast(ids, tf.int64)))
    elif backend == "torch":
        import torch

        with torch.no_grad():
            value = variable.value
            value.index_add_(0, ids.to(torch.int64), deltas.to(value.dtype))
    else:
        variable.assign(variable.value.at[ids].add(deltas.astype(variable.value.dtype)))


def _in_replica_strategy() -> bool:
    """Whether a tf.distribute strategy of more than one replica is in scope (TensorFlow only)."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.distribute.has_strategy() and tf.distribute.get_strategy().num_replicas_in_sync > 1


def _scale_for_replicas(loss):
    """A mean loss's share of each replica under a tf.distribute strategy: divided by the number
    of replicas, as Keras's own losses are (the replicas' gradients are then summed, and Keras
    multiplies the reported loss back); ``loss`` itself on one device and on JAX and PyTorch."""
    if keras.backend.backend() != "tensorflow":
        return loss
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss if replicas == 1 else loss * (1.0 / replicas)


def _sum_over_replicas(x):
    """``x`` summed over the replicas of a tf.distribute strategy (each replica sees its own
    part of the batch); ``x`` itself elsewhere (JAX and PyTorch see the whole batch)."""
    if keras.backend.backend() != "tensorflow":
        return x
    import tensorflow as tf

    replica = tf.distribute.get_replica_context()
    if replica is None or replica.num_replicas_in_sync == 1:
        return x
    return replica.all_reduce(tf.distribute.ReduceOp.SUM, x)


def _in_symbolic_scope() -> bool:
    try:
        from keras.src.backend.common.symbolic_scope import in_symbolic_scope
    except ImportError:  # pragma: no cover - other layouts
        return False
    return in_symbolic_scope()


def _in_stateless_scope() -> bool:
    try:
        from keras.src.backend.common.stateless_scope import in_stateless_scope
    except ImportError:  # pragma: no cover - other layouts
        return True
    return in_stateless_scope()


def _stores_state_on_outputs() -> bool:
    """Whether the layer stashes its training state on its outputs (JAX: see ``_binding._STATE_ATTR``)."""
    return keras.backend.backend() == "jax"


def _keras_history(tensor):
    """``(layer, node_index, tensor_index)`` of a symbolic tensor, or None."""
    return getattr(tensor, "_keras_history", None)


def _inbound_inputs(layer, node_index):
    """The input tensors of one of ``layer``'s nodes."""
    return layer._inbound_nodes[node_index].input_tensors


def _flatten_layers(model):
    """Every layer under ``model`` (Keras's own walk)."""
    return model._flatten_layers(include_self=False)


def _compile_metrics(model):
    """``(metrics, weighted_metrics)`` as given to ``compile``, or None before compile."""
    compiled = getattr(model, "_compile_metrics", None)
    if compiled is None:
        return None
    return getattr(compiled, "_user_metrics", None), getattr(compiled, "_user_weighted_metrics", None)


def _lazy_adam_update(optimizer, gradient, variable, learning_rate) -> bool:
    """``LazyAdam``'s update of a TensorFlow row-sparse gradient (``tf.IndexedSlices``); False
    (nothing done) for any other gradient or backend."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    if not isinstance(gradient, tf.IndexedSlices):
        return False
    from ..tensorflow import _rows

    dtype = variable.dtype
    rows, g = _rows.distinct_rows(gradient)
    g = tf.cast(g, dtype)
    step = tf.cast(optimizer.iterations + 1, dtype)
    beta_1, beta_2 = tf.cast(optimizer.beta_1, dtype), tf.cast(optimizer.beta_2, dtype)
    alpha = tf.cast(learning_rate, dtype) * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))
    index = optimizer._get_variable_index(variable)
    m, v = optimizer._momentums[index], optimizer._velocities[index]
    m_rows = beta_1 * tf.gather(m.value, rows) + (1 - beta_1) * g
    v_rows = beta_2 * tf.gather(v.value, rows) + (1 - beta_2) * tf.square(g)
    optimizer.assign(m, tf.IndexedSlices(m_rows, rows))
    optimizer.assign(v, tf.IndexedSlices(v_rows, rows))
    optimizer.assign_sub(variable, tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + optimizer.epsilon), rows))
    return True
