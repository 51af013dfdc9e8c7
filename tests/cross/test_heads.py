"""A new loss is a new head: a throwaway sigmoid head (NCE's, without its ``log k`` shift),
written once per front end over the shared stages (columns → corrected logits), agrees with
the same head over the NumPy reference's stages, loss and gradients. Nothing of the column,
mask, gather or scatter code is written again."""

import numpy as np
import pytest

from sampled_softmax import reference as R

from conftest import random_problem


# -- the head, NumPy: loss and d loss / d logits over the kept columns -------------------------
def sigmoid_head_numpy(logits, keep, num_true):
    target = np.zeros(logits.shape)
    target[:, :num_true] = 1.0
    z = np.where(keep, logits, 0.0)
    per_column = np.maximum(z, 0) - z * target + np.log1p(np.exp(-np.abs(z)))
    grad = np.where(keep, 1.0 / (1.0 + np.exp(-z)) - target, 0.0)
    return np.where(keep, per_column, 0.0).sum(1), grad


def reference_loss_and_grads(W, b, y, h, sv):
    ids, log_q, keep = R.candidate_columns(y, sv)
    loss, g = sigmoid_head_numpy(R.corrected_logits(W, b, h, ids, log_q, keep), keep, y.shape[1])
    return loss, R.corrected_logits_grads(W, b, h, ids, g)


@pytest.mark.parametrize("T", [1, 2])
def test_a_sigmoid_head_in_pytorch(rng, T):
    torch = pytest.importorskip("torch")
    from sampled_softmax.torch._autograd import Head, SampledLoss
    from sampled_softmax.torch._columns import candidate_columns
    from sampled_softmax.torch._rows import _Spec

    # -- the head, PyTorch: forward over the row logits (removed columns are -inf), backward
    def forward(logits, valid, removed_cand, spec):
        keep = torch.isfinite(logits)
        target = torch.zeros_like(logits)
        target[:, :spec.num_true] = 1.0
        z = torch.where(keep, logits, 0.0)
        per_column = torch.nn.functional.binary_cross_entropy_with_logits(z, target, reduction="none")
        loss = torch.where(keep, per_column, 0.0).sum(1)
        return loss, -loss, (z, target, keep)

    def backward(g_loss, g_logp, saved, valid, spec):
        z, target, keep = saved
        return torch.where(keep, torch.sigmoid(z) - target, 0.0) * g_loss.unsqueeze(1)

    sigmoid = Head("sigmoid", forward, backward)
    # -- end of the head

    W, b, y, h, sv = random_problem(rng, T=T)
    Wt, bt, ht = (torch.tensor(x, requires_grad=True) for x in (W, b, h))
    cand, tc, sc = (torch.as_tensor(v) for v in sv)
    ids, log_q, removed = candidate_columns(torch.as_tensor(y), None, cand, tc, sc, torch.float64,
                                           remove_accidental_hits=True, subtract_log_q=True)
    loss, _ = SampledLoss.apply(sigmoid, ht, ids, log_q, None, removed, None, _Spec(T, (), "div", 0.0, False), bt, Wt)
    loss.sum().backward()
    ref_loss, (gh, gW, gb) = reference_loss_and_grads(W, b, y, h, sv)
    np.testing.assert_allclose(loss.detach().numpy(), ref_loss, rtol=1e-12)
    for ours, ref in ((ht.grad, gh), (Wt.grad, gW), (bt.grad, gb)):
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("T", [1, 2])
def test_a_sigmoid_head_in_tensorflow(rng, T):
    tf = pytest.importorskip("tensorflow")
    from sampled_softmax.tensorflow.nn import candidate_columns, sampled_loss

    # -- the head, TensorFlow: (loss, d loss / d logits); removed columns at the dtype's lowest value
    def sigmoid(logits, removed):
        keep = tf.concat([tf.ones([tf.shape(logits)[0], T], tf.bool), tf.logical_not(removed)], 1)
        target = tf.concat([tf.ones_like(logits[:, :T]), tf.zeros_like(logits[:, T:])], 1)
        z = tf.where(keep, logits, tf.zeros_like(logits))
        per_column = tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=z)
        zero = tf.zeros_like(z)
        return tf.reduce_sum(tf.where(keep, per_column, zero), 1), tf.where(keep, tf.sigmoid(z) - target, zero)
    # -- end of the head

    W, b, y, h, sv = random_problem(rng, T=T)
    Wv, bv, hv = tf.Variable(W), tf.Variable(b), tf.Variable(h)
    with tf.GradientTape() as tape:
        ids, log_q, removed = candidate_columns(tf.constant(y), None, tf.constant(sv[0]), tf.constant(sv[1]),
                                               tf.constant(sv[2]), remove_accidental_hits=True, subtract_log_q=True,
                                               dtype=tf.float64)
        loss = sampled_loss(hv, tf.gather(Wv, ids), tf.gather(bv, ids), log_q, removed, None, T, sigmoid)
        total = tf.reduce_sum(loss)
    grads = tape.gradient(total, [hv, Wv, bv])
    ref_loss, ref_grads = reference_loss_and_grads(W, b, y, h, sv)
    np.testing.assert_allclose(loss.numpy(), ref_loss, rtol=1e-12)
    for ours, ref in zip(grads, ref_grads):
        np.testing.assert_allclose(tf.convert_to_tensor(ours).numpy(), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("T", [1, 2])
def test_a_sigmoid_head_in_keras(rng, T):
    pytest.importorskip("keras")
    from keras import ops

    from keras_layer_helpers import BACKEND
    from sampled_softmax.keras._stages import candidate_columns, corrected_logits

    # -- the head, Keras: the loss over the kept columns (Keras differentiates it)
    def sigmoid(logits, keep):
        target = ops.concatenate([ops.ones_like(logits[:, :T]), ops.zeros_like(logits[:, T:])], axis=1)
        z = ops.where(keep, logits, 0.0)
        per_column = ops.maximum(z, 0.0) - z * target + ops.log1p(ops.exp(-ops.abs(z)))
        return ops.sum(ops.where(keep, per_column, 0.0), axis=1)
    # -- end of the head

    W, b, y, h, sv = random_problem(rng, T=T)
    cand, tc, sc = (ops.convert_to_tensor(v) for v in (sv[0].astype("int32"), sv[1].astype("float32"),
                                                     sv[2].astype("float32")))
    y32 = ops.convert_to_tensor(y.astype("int32"))

    def loss_of(h_, W_, b_):
        ids, log_q, keep = candidate_columns(y32, ops.ones_like(y32, dtype="bool"), cand, tc, sc,
                                             remove_accidental_hits=True, subtract_log_q=True)
        logits = corrected_logits(h_, ops.take(W_, ids, axis=0), ops.take(b_, ids, axis=0), log_q, keep, T)
        return sigmoid(logits, keep)

    args = [np.asarray(x, np.float32) for x in (h, W, b)]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        variables = [tf.Variable(a) for a in args]
        with tf.GradientTape() as tape:
            loss = loss_of(*variables)
            total = tf.reduce_sum(loss)
        grads = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(total, variables)]
    elif BACKEND == "jax":
        import jax

        loss = loss_of(*args)
        grads = jax.grad(lambda *a: ops.sum(loss_of(*a)), argnums=(0, 1, 2))(*args)
    else:
        import torch

        variables = [torch.tensor(a, requires_grad=True) for a in args]
        loss = loss_of(*variables)
        loss.sum().backward()
        grads = [v.grad for v in variables]
    ref_loss, ref_grads = reference_loss_and_grads(W, b, y, h, sv)
    np.testing.assert_allclose(ops.convert_to_numpy(loss), ref_loss, rtol=1e-4, atol=1e-4)
    for ours, ref in zip(grads, ref_grads):
        np.testing.assert_allclose(ops.convert_to_numpy(ours), ref, rtol=1e-4, atol=1e-4)
