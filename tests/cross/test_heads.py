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
    from sampled_softmax.torch._columns import columns
    from sampled_softmax.torch._rows import _Spec

    # -- the head, PyTorch: forward over the row logits (removed columns are -inf), backward
    def forward(logits, keep_true, removed_cand, spec):
        keep = torch.isfinite(logits)
        target = torch.zeros_like(logits)
        target[:, :spec.num_true] = 1.0
        z = torch.where(keep, logits, 0.0)
        per_column = torch.nn.functional.binary_cross_entropy_with_logits(z, target, reduction="none")
        loss = torch.where(keep, per_column, 0.0).sum(1)
        return loss, -loss, (z, target, keep)

    def backward(g_loss, g_logp, saved, keep_true, spec):
        z, target, keep = saved
        return torch.where(keep, torch.sigmoid(z) - target, 0.0) * g_loss.unsqueeze(1)

    sigmoid = Head("sigmoid", forward, backward)
    # -- end of the head

    W, b, y, h, sv = random_problem(rng, T=T)
    Wt, bt, ht = (torch.tensor(x, requires_grad=True) for x in (W, b, h))
    cand, tc, sc = (torch.as_tensor(v) for v in sv)
    ids, logq, removed = columns(torch.as_tensor(y), None, cand, tc, sc, torch.float64, True, True, False)
    loss, _ = SampledLoss.apply(sigmoid, ht, ids, logq, None, removed, _Spec(T, (), "div", 0.0, False), bt, Wt)
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
        ids, logq, removed = candidate_columns(tf.constant(y), None, tf.constant(sv[0]), tf.constant(sv[1]),
                                               tf.constant(sv[2]), remove_accidental_hits=True, subtract_log_q=True,
                                               dtype=tf.float64)
        loss = sampled_loss(hv, tf.gather(Wv, ids), tf.gather(bv, ids), logq, removed, None, T, sigmoid)
        total = tf.reduce_sum(loss)
    grads = tape.gradient(total, [hv, Wv, bv])
    ref_loss, ref_grads = reference_loss_and_grads(W, b, y, h, sv)
    np.testing.assert_allclose(loss.numpy(), ref_loss, rtol=1e-12)
    for ours, ref in zip(grads, ref_grads):
        np.testing.assert_allclose(tf.convert_to_tensor(ours).numpy(), ref, rtol=1e-10, atol=1e-12)
