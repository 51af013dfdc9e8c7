"""The PyTorch front end against ``tf.nn.sampled_softmax_loss`` itself, with identical
``sampled_values``: losses and the gradients of weights, biases and inputs."""

import itertools

import numpy as np
import pytest
import torch

tf = pytest.importorskip("tensorflow")

from sampled_softmax.torch import sampled_softmax_loss  # noqa: E402


def tf_loss_and_grads(W, b, y, h, sv, T, hits, shards):
    Wv = [tf.Variable(w) for w in (np.array_split(W, shards) if shards else [W])]
    bv, hv = tf.Variable(b), tf.Variable(h)
    with tf.GradientTape() as tape:
        loss = tf.nn.sampled_softmax_loss(
            Wv if shards else Wv[0], bv, tf.constant(y), hv, len(sv[0]), W.shape[0], num_true=T,
            sampled_values=tuple(tf.constant(v) for v in sv), remove_accidental_hits=hits)
    grads = tape.gradient(loss, Wv + [bv, hv])
    dense = [tf.convert_to_tensor(g).numpy() for g in grads]
    return loss.numpy(), np.concatenate(dense[:-2]), dense[-2], dense[-1]


@pytest.mark.parametrize("T,hits,shards,label_dtype", list(itertools.product(
    [1, 3], [True, False], [None, 3], [np.int32, np.int64])))
def test_matches_tf_nn_sampled_softmax_loss_float32(T, hits, shards, label_dtype):
    rng = np.random.default_rng(T * 10 + hits + (shards or 0))
    V, D, B, S = 101, 16, 12, 20
    W = rng.normal(size=(V, D)).astype(np.float32)
    b = rng.normal(size=V).astype(np.float32)
    h = rng.normal(size=(B, D)).astype(np.float32)
    y = rng.integers(0, V, size=(B, T)).astype(label_dtype)
    hit = np.unique(y[:, 0])[:6]  # many accidental hits, candidates distinct (TF's default draw)
    cand = np.concatenate([hit, rng.choice(np.setdiff1d(np.arange(V), hit), S - hit.size, replace=False)])
    sv = (cand, rng.uniform(0.01, 2, (B, T)).astype(np.float32), rng.uniform(0.01, 2, S).astype(np.float32))
    tf_loss, tf_dW, tf_db, tf_dh = tf_loss_and_grads(W, b, y, h, sv, T, hits, shards)

    tW = torch.tensor(W, requires_grad=True)
    shard_list = [torch.tensor(w, requires_grad=True) for w in np.array_split(W, shards)] if shards else None
    tb, th = torch.tensor(b, requires_grad=True), torch.tensor(h, requires_grad=True)
    loss = sampled_softmax_loss(shard_list or tW, tb, torch.tensor(y), th, S, V, T,
                                sampled_values=tuple(torch.tensor(v) for v in sv), remove_accidental_hits=hits)
    loss.sum().backward()
    dW = torch.cat([w.grad for w in shard_list]) if shards else tW.grad
    np.testing.assert_allclose(loss.detach().numpy(), tf_loss, rtol=1e-5, atol=1e-5)
    # float32 sums over up to B*T rows in different orders: differences of a few ulps of the
    # terms (~1), seen up to 1.3e-6 on one machine's BLAS, not of the result.
    for got, want in ((dW, tf_dW), (tb.grad, tf_db), (th.grad, tf_dh)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=5e-6)


def test_tf_masks_only_one_copy_of_a_duplicated_hit_and_we_mask_all():
    """With duplicate candidates (drawn with replacement) TensorFlow's compute_accidental_hits
    keeps one position per candidate value, so a second copy of a hit stays in the normalizer.
    We remove every copy, as the definition says; the reference agrees with us, and TF equals
    the reference with that one copy left in."""
    from sampled_softmax import reference as R

    rng = np.random.default_rng(0)
    V, D, B, S = 30, 8, 3, 6
    W, b, h = (rng.normal(size=s).astype(np.float32) for s in ((V, D), (V,), (B, D)))
    y = np.array([[4], [9], [11]])
    cand = np.array([4, 4, 20, 21, 22, 23])  # class 4 hits row 0, twice
    sv = (cand, np.ones((B, 1), np.float32), np.ones(S, np.float32))
    tf_loss = tf_loss_and_grads(W, b, y, h, sv, 1, True, None)[0]
    ours = sampled_softmax_loss(torch.tensor(W), torch.tensor(b), torch.tensor(y), torch.tensor(h), S, V,
                                sampled_values=tuple(torch.tensor(v) for v in sv)).numpy()
    ref = R.sampled_softmax_loss(W, b, y, h, sv)
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    np.testing.assert_allclose(tf_loss[1:], ref[1:], rtol=1e-5)
    # Row 0 in TF: one copy of class 4 removed, the other kept.
    logits, keep = R.sampled_logits(W, b, y[:1], h[:1], (cand, sv[1][:1], sv[2]), remove_accidental_hits=False)
    row = np.delete(logits[0], 1)  # drop the true column's first candidate copy (position 1 = cand[0])
    one_copy = np.log(np.exp(row).sum()) - logits[0, 0]
    assert tf_loss[0] == pytest.approx(one_copy, rel=1e-5)
    assert ours[0] < tf_loss[0]
