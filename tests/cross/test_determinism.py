"""Determinism and resumable state: the same seed gives the same candidates and losses, and a
run stopped, saved and resumed continues bit-identically to one that never stopped (PyTorch
and TensorFlow here; the Keras layer's .keras round trip is in test_keras.py)."""

import io

import numpy as np
import pytest
import torch

from sampled_softmax.torch import (LearnedUnigramSampler, LogUniformSampler, SampledSoftmaxLoss, SparseRowAdam,
                                   UniformSampler, UnigramSampler)

V, D, S = 200, 8, 16


def batches(n, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield torch.from_numpy(rng.normal(size=(6, 5, D)).astype(np.float32)), torch.from_numpy(
            (rng.zipf(1.3, size=(6, 5)) % V).astype(np.int64))


def new_run():
    torch.manual_seed(0)
    encoder = torch.nn.Linear(D, D)
    head = SampledSoftmaxLoss(D, V, S, sampler=LearnedUnigramSampler(V, draw="unique_exact"), sparse=True)
    opts = [SparseRowAdam(head.parameters(), lr=1e-2), torch.optim.Adam(encoder.parameters(), lr=1e-2)]
    return encoder, head, opts, torch.Generator().manual_seed(1)


def step(encoder, head, opts, generator, x, y):
    for o in opts:
        o.zero_grad(set_to_none=True)
    loss = head(encoder(x), y, generator=generator).loss
    loss.backward()
    for o in opts:
        o.step()
    return loss.item()


def test_torch_resumed_training_is_bit_identical_to_uninterrupted():
    data = list(batches(8))
    encoder, head, opts, g = new_run()
    straight = [step(encoder, head, opts, g, x, y) for x, y in data]

    encoder, head, opts, g = new_run()
    first = [step(encoder, head, opts, g, x, y) for x, y in data[:4]]
    buffer = io.BytesIO()
    torch.save({"encoder": encoder.state_dict(), "head": head.state_dict(),
                "opts": [o.state_dict() for o in opts], "generator": g.get_state()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)

    encoder, head, opts, g = new_run()  # a fresh process would start here
    encoder.load_state_dict(saved["encoder"])
    head.load_state_dict(saved["head"])  # includes the learned sampler's counts
    for o, s in zip(opts, saved["opts"]):
        o.load_state_dict(s)
    g.set_state(saved["generator"])
    rest = [step(encoder, head, opts, g, x, y) for x, y in data[4:]]

    assert first + rest == straight
    reference_run = new_run()
    for x, y in data:
        step(*reference_run, x, y)
    for a, b in zip(list(reference_run[0].parameters()) + list(reference_run[1].state_dict().values()),
                    list(encoder.parameters()) + list(head.state_dict().values())):
        assert torch.equal(a, b)
    # The learned counts grew with every target seen (and started at 1).
    seen = torch.bincount(torch.cat([y.flatten() for _, y in data]), minlength=V).double()
    assert torch.equal(head.sampler.counts, 1 + seen)


@pytest.mark.parametrize("make", [
    lambda: UniformSampler(V), lambda: LogUniformSampler(V, draw="unique_exact"),
    lambda: UnigramSampler(V, np.arange(V, 0, -1.0), draw="with_replacement"),
    lambda: LearnedUnigramSampler(V)], ids=["uniform", "log_uniform", "unigram", "learned_unigram"])
def test_torch_same_seed_same_candidates_and_loss_run_after_run(make):
    x, y = next(batches(1))
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        head = SampledSoftmaxLoss(D, V, S, sampler=make())
        out = head(x, y, generator=torch.Generator().manual_seed(5))
        cand = head.sampler(y.reshape(-1, 1), S, generator=torch.Generator().manual_seed(5))[0]
        results.append((out.loss.item(), cand))
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1])


def test_tensorflow_resumed_training_is_bit_identical_to_uninterrupted(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from sampled_softmax import tensorflow as sst

    data = [(x.numpy().reshape(-1, D), y.numpy().reshape(-1, 1)) for x, y in batches(6)]

    def new():
        rng = np.random.default_rng(0)
        W = tf.Variable(rng.normal(size=(V, D)).astype(np.float32) * 0.1)
        b = tf.Variable(np.zeros(V, np.float32))
        return W, b, tf.random.Generator.from_seed(7)

    @tf.function(jit_compile=True)
    def train(W, b, g, x, y):
        with tf.GradientTape() as tape:
            sv = sst.log_uniform_candidate_sampler(y, S, V, generator=g)
            loss = tf.reduce_mean(sst.sampled_softmax_loss(W, b, y, x, S, V, sampled_values=sv))
        dW, db = tape.gradient(loss, [W, b])
        W.scatter_sub(tf.IndexedSlices(0.5 * dW.values, dW.indices))
        b.scatter_sub(tf.IndexedSlices(0.5 * db.values, db.indices))
        return loss

    W, b, g = new()
    straight = [float(train(W, b, g, x, y)) for x, y in data]
    final = W.numpy()

    W, b, g = new()
    first = [float(train(W, b, g, x, y)) for x, y in data[:3]]
    path = tf.train.Checkpoint(W=W, b=b, generator=g).write(str(tmp_path / "ckpt"))
    W2, b2, g2 = new()
    tf.train.Checkpoint(W=W2, b=b2, generator=g2).read(path).assert_consumed()
    rest = [float(train(W2, b2, g2, x, y)) for x, y in data[3:]]
    assert first + rest == straight
    np.testing.assert_array_equal(W2.numpy(), final)


def test_tensorflow_learned_unigram_counts_grow_and_survive_a_checkpoint(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from sampled_softmax import samplers as NS
    from sampled_softmax import tensorflow as sst

    sampler = sst.LearnedUnigramSampler(V)
    labels = [np.random.default_rng(i).integers(0, 20, size=(8, 1)) for i in range(3)]
    step = tf.function(lambda y, g: sampler(y, S, generator=g), jit_compile=True)
    g = tf.random.Generator.from_seed(0)
    for y in labels:
        step(tf.constant(y), g)
    seen = np.bincount(np.concatenate(labels).ravel(), minlength=V)
    np.testing.assert_array_equal(sampler.counts.numpy(), 1 + seen)
    # The expected counts follow the learned distribution (unique_exact formula).
    _, true_count, _ = sampler(tf.constant([[0], [150]]), S, update=False)
    q = (1 + seen) / (1 + seen).sum()
    np.testing.assert_allclose(true_count.numpy().ravel(), NS.expected_count(q[[0, 150]], S, "unique_exact"), rtol=1e-6)
    path = tf.train.Checkpoint(sampler=sampler).write(str(tmp_path / "s"))
    restored = sst.LearnedUnigramSampler(V)
    tf.train.Checkpoint(sampler=restored).read(path).assert_consumed()
    np.testing.assert_array_equal(restored.counts.numpy(), sampler.counts.numpy())
