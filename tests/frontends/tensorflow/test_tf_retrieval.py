"""TensorFlow retrieval: ``in_batch_softmax_loss`` against the NumPy reference (float64 1e-12,
gradients of query, candidates, a temperature variable and log_q), eagerly, in ``tf.function``
and under XLA; bad values raise, assert, or give nan under XLA; the estimators equal their NumPy
reference and the PyTorch ones, and ``tf.train.Checkpoint`` saves their state."""

import itertools

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from sampled_softmax import SampledSoftmaxError  # noqa: E402
from sampled_softmax import frequency as NF  # noqa: E402
from sampled_softmax import reference as R  # noqa: E402
from sampled_softmax.tensorflow import CountMinFrequency, StreamingFrequency, in_batch_softmax_loss  # noqa: E402

from conftest import in_batch_problem  # noqa: E402

B, C, D = 6, 10, 4


def problem(seed=0):
    return in_batch_problem(seed, B, C, D)


MODES = ("eager", "function", "xla")


# Every combination eagerly; in a graph and under XLA the one with everything (compiling is the cost).
@pytest.mark.parametrize("masks,hard,weighted,mode", [c for c in itertools.product([False, True], [None, 3],
                                                                                    [False, True], MODES)
                                                       if c[3] == "eager" or c[:3] == (True, 3, True)])
def test_equals_the_reference_in_float64(masks, hard, weighted, mode):
    q, c, ids, log_q, mask_kw, w = problem()
    kw = dict(candidate_ids=ids, num_hard_negatives=hard, **(mask_kw if masks else {}))
    g = np.random.default_rng(1).normal(size=B)
    tq, tc, tlq = tf.constant(q), tf.constant(c), tf.constant(log_q)
    temperature = tf.Variable(0.4, dtype=tf.float64)

    def step(tq, tc, tlq):
        with tf.GradientTape() as tape:
            tape.watch([tq, tc, tlq])
            loss = in_batch_softmax_loss(tq, tc, log_q=tlq, temperature=temperature, reduction="none",
                                         sample_weight=w if weighted else None, **kw)
            total = tf.reduce_sum(loss * g)
        return loss, tape.gradient(total, [tq, tc, temperature, tlq])

    if mode != "eager":
        step = tf.function(step, jit_compile=mode == "xla")
    loss, grads = step(tq, tc, tlq)
    ref_kw = dict(kw, log_q=log_q, temperature=0.4, sample_weight=w if weighted else None)
    np.testing.assert_allclose(loss.numpy(), R.in_batch_softmax_loss(q, c, **ref_kw), rtol=1e-12)
    for ours, ref in zip(grads, R.in_batch_softmax_grads(q, c, grad_loss=g, **ref_kw)):
        np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-10, atol=1e-12)


def test_float32_and_reductions():
    q, c, ids, log_q, _, _ = problem()
    ref = R.in_batch_softmax_loss(q, c, candidate_ids=ids, log_q=log_q, temperature=0.5)
    kw = dict(candidate_ids=ids, log_q=log_q.astype(np.float32), temperature=0.5)
    q32, c32 = q.astype(np.float32), c.astype(np.float32)
    np.testing.assert_allclose(in_batch_softmax_loss(q32, c32, reduction="none", **kw), ref, rtol=1e-5)
    np.testing.assert_allclose(in_batch_softmax_loss(q32, c32, reduction="sum", **kw), ref.sum(), rtol=1e-5)
    np.testing.assert_allclose(in_batch_softmax_loss(q32, c32, **kw), ref.mean(), rtol=1e-5)


def test_bad_values_raise_eagerly_assert_in_a_graph_and_are_nan_under_xla():
    q, c, _, _, _, _ = problem()
    bad = np.full(C, 0.5)
    with pytest.raises(SampledSoftmaxError, match=r"`log_q` must be <= 0 .*received 0.5"):
        in_batch_softmax_loss(q, c, log_q=bad)
    graph = tf.function(lambda lq: in_batch_softmax_loss(q, c, log_q=lq, reduction="none"))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`log_q` must be finite and <= 0"):
        graph(tf.constant(bad))
    xla = tf.function(lambda lq: in_batch_softmax_loss(q, c, log_q=lq, reduction="none"), jit_compile=True)
    assert np.all(np.isnan(xla(tf.constant(bad)).numpy()))
    assert np.all(np.isfinite(xla(tf.constant(-np.ones(C))).numpy()))
    with pytest.raises(SampledSoftmaxError, match=r"`temperature` must be positive and finite; received -1.0"):
        in_batch_softmax_loss(q, c, temperature=tf.constant(-1.0, tf.float64))
    with pytest.raises(SampledSoftmaxError, match=r"`candidates` must have at least as many rows"):
        in_batch_softmax_loss(q, c[:3])
    with pytest.raises(TypeError, match=r"`score_mask` must be a bool tensor"):
        in_batch_softmax_loss(q, c, score_mask=np.ones((B, C)))


@pytest.mark.parametrize("kind", ["last_seen", "count_min"])
def test_estimators_equal_the_numpy_reference_and_survive_a_checkpoint(kind, tmp_path):
    rng = np.random.default_rng(0)
    p = np.arange(1, 301, dtype=np.float64) ** -1.1
    stream = [rng.choice(300, size=32, p=p / p.sum()) for _ in range(30)]
    stream[2] = np.concatenate([stream[2], stream[2][:4], [2**40 + 3]])
    make = (lambda: StreamingFrequency(64, num_hashes=2, learning_rate=0.1, seed=4)) if kind == "last_seen" else \
        (lambda: CountMinFrequency(64, num_hashes=2, seed=4))
    ref = NF.StreamingFrequency(64, num_hashes=2, learning_rate=0.1, seed=4) if kind == "last_seen" else \
        NF.CountMinFrequency(64, num_hashes=2, seed=4)
    est = make()
    update = tf.function(lambda ids: est(ids))
    for i, ids in enumerate(stream):
        log_q = update(tf.constant(ids))
        ref.update(ids)
        np.testing.assert_allclose(log_q.numpy(), ref.log_q(ids), rtol=1e-6, atol=1e-7)
        if i == 14:
            path = tf.train.Checkpoint(frequency=est).write(str(tmp_path / "ckpt"))
    restored = make()
    tf.train.Checkpoint(frequency=restored).read(path).assert_consumed()
    for ids in stream[15:]:
        restored(tf.constant(ids))
    probe = tf.range(300)
    np.testing.assert_array_equal(restored.log_q(probe).numpy(), est.log_q(probe).numpy())


def test_estimators_equal_the_torch_ones():
    torch = pytest.importorskip("torch")
    from sampled_softmax import torch as sst

    rng = np.random.default_rng(1)
    ours, theirs = StreamingFrequency(128, num_hashes=3), sst.StreamingFrequency(128, num_hashes=3)
    for _ in range(10):
        ids = rng.integers(0, 500, size=40)
        np.testing.assert_allclose(ours(tf.constant(ids)).numpy(), theirs(torch.from_numpy(ids)).numpy(), rtol=1e-6)


def test_mixed_negatives_give_each_source_its_own_probability():
    from sampled_softmax.tensorflow import log_uniform_candidate_sampler, mixed_negatives

    V, M = 50, 8
    table = tf.random.stateless_normal((V, D), seed=(1, 2))
    ids = tf.constant([3, 7, 7, 20], tf.int64)
    in_batch = tf.math.log(tf.constant([0.5, 0.25, 0.25, 0.125]))
    sv = log_uniform_candidate_sampler(ids[:, None], M, V, generator=tf.random.Generator.from_seed(3))
    mixed = mixed_negatives(tf.gather(table, ids), ids, in_batch, sv, lambda i: tf.gather(table, i))
    count = sv.sampled_expected_count.numpy()
    finite = np.isfinite(count)
    np.testing.assert_array_equal(mixed.candidate_ids[4:].numpy(), sv.sampled_candidates.numpy())
    np.testing.assert_allclose(mixed.log_q.numpy()[:4], in_batch.numpy())
    np.testing.assert_allclose(mixed.log_q.numpy()[4:][finite], np.log(count[finite]), rtol=1e-6)
    np.testing.assert_array_equal(mixed.score_mask.numpy()[:, 4:], np.broadcast_to(finite, (4, M)))
    assert (mixed.log_q.numpy() <= 0).all()
    loss = in_batch_softmax_loss(tf.random.stateless_normal((4, D), seed=(3, 4)), **mixed._asdict())
    assert np.isfinite(loss.numpy())
    with pytest.raises(SampledSoftmaxError, match=r"`encode` must return \[8, 4\] embeddings; received \[8, 3\]"):
        mixed_negatives(tf.gather(table, ids), ids, in_batch, sv, lambda i: tf.zeros((M, 3)))
    # TensorFlow's unique samplers report S p (above 1 for frequent classes) when no draw repeats.
    above = (sv.sampled_candidates, sv.true_expected_count, tf.constant([1.4] + [0.5] * (M - 1)))
    with pytest.raises(SampledSoftmaxError, match=r"`sampled_values\[2\]` \(sampled_expected_count\) must be at most 1"):
        mixed_negatives(tf.gather(table, ids), ids, in_batch, above, lambda i: tf.gather(table, i))


@pytest.mark.parametrize("hard", [None, 2, 50])
def test_unknown_batch_sizes_in_a_tf_function_give_the_eager_loss_and_gradients(hard):
    """A tf.function with input_signature [None, D] (how TF serves and trains): the same loss
    and query gradient as the eager call on the same values."""
    rng = np.random.default_rng(4)
    q, c = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(7, 3)).astype(np.float32)
    ids, log_q = np.array([1, 2, 1, 3, 4, 5, 6]), -rng.uniform(0.1, 2, 7).astype(np.float32)
    excluded = np.array([[2], [5], [-1], [6], [1]])
    weight = rng.uniform(0, 1, 5).astype(np.float32)

    def loss_and_grad(q, c, ids, log_q, excluded, weight):
        with tf.GradientTape() as tape:
            tape.watch(q)
            loss = in_batch_softmax_loss(q, c, candidate_ids=ids, log_q=log_q, excluded_ids=excluded,
                                             num_hard_negatives=hard, query_ids=ids[:tf.shape(q)[0]],
                                             sample_weight=weight, reduction="mean")
        return loss, tape.gradient(loss, q)

    spec = [tf.TensorSpec([None, 3]), tf.TensorSpec([None, 3]), tf.TensorSpec([None], tf.int64),
            tf.TensorSpec([None]), tf.TensorSpec([None, None], tf.int64), tf.TensorSpec([None])]
    traced = tf.function(loss_and_grad, input_signature=spec)
    args = [tf.constant(x) for x in (q, c, ids, log_q, excluded, weight)]
    for got, want in zip(traced(*args), loss_and_grad(*args)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-7)
