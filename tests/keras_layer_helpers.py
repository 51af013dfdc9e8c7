"""Helpers for the tests of the Keras layer, shared by ``frontends/keras`` and ``cross``: a built
layer with given weights, and its sampled loss with gradients on the current backend."""

import keras
import numpy as np

from sampled_softmax.keras import SampledSoftmax

BACKEND = keras.backend.backend()
ops = keras.ops


def to_numpy(x):
    return ops.convert_to_numpy(x)


def built_layer(W, b, **kwargs):
    layer = SampledSoftmax(W.shape[0], kwargs.pop("num_sampled", 4), use_bias=b is not None, **kwargs)
    layer.build((None, W.shape[1]))
    layer.kernel.assign(W.astype(np.float32))
    if b is not None:
        layer.bias.assign(b.astype(np.float32))
    return layer


def sampled_loss_and_grads(layer, y, h, sv):
    """Per-row loss and the gradients of its sum w.r.t. (inputs, kernel, bias), per backend."""
    svt = tuple(ops.convert_to_tensor(v) for v in sv)
    variables = [layer.kernel] + ([layer.bias] if layer.use_bias else [])
    if BACKEND == "tensorflow":
        import tensorflow as tf

        ht = tf.constant(h, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(ht)
            loss = layer.sampled_loss(tf.constant(y), ht, sampled_values=svt)
            total = ops.sum(loss)
        grads = tape.gradient(total, [ht] + variables)
        return to_numpy(loss), [to_numpy(tf.convert_to_tensor(g)) for g in grads]
    if BACKEND == "jax":
        import jax

        def total(hv, *values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                loss = layer.sampled_loss(ops.convert_to_tensor(y), hv, sampled_values=svt)
            return ops.sum(loss), loss

        (_, loss), grads = jax.value_and_grad(total, argnums=tuple(range(1 + len(variables))), has_aux=True)(
            jax.numpy.asarray(h, "float32"), *[v.value for v in variables])
        return to_numpy(loss), [to_numpy(g) for g in grads]
    import torch

    ht = torch.tensor(h, dtype=torch.float32, requires_grad=True)
    for v in variables:
        v.value.grad = None
    loss = layer.sampled_loss(torch.as_tensor(y), ht, sampled_values=svt)
    loss.sum().backward()
    return to_numpy(loss), [ht.grad.numpy()] + [v.value.grad.cpu().numpy() for v in variables]
