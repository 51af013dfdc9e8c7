"""The Keras retrieval layer and loss (``InBatchSoftmax``, ``InBatchSoftmaxLoss``) on whichever
backend this run uses: equal to the NumPy reference (float32, 1e-5), a two-tower model trains
with ``fit`` (a learned temperature too) and survives ``.keras`` saving, bad input."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from sampled_softmax import SampledSoftmaxError  # noqa: E402
from sampled_softmax import reference as R  # noqa: E402
from sampled_softmax.keras import InBatchSoftmax, InBatchSoftmaxLoss  # noqa: E402

from conftest import in_batch_problem  # noqa: E402

B, C, D = 6, 10, 4


@pytest.mark.parametrize("masks,hard,temperature", [(False, None, 1.0), (True, None, 0.5), (True, 3, 0.3),
                                                   (False, 2, 2.0)])
def test_keras_in_batch_loss_equals_the_reference(masks, hard, temperature):
    q, c, ids, log_q, mask_kw, _ = in_batch_problem(0, B, C, D)
    kw = dict(candidate_ids=ids, **(mask_kw if masks else {}))
    layer = InBatchSoftmax(temperature, num_hard_negatives=hard)
    logits = layer(q.astype("float32"), c.astype("float32"), log_q=log_q.astype("float32"), **kw)
    loss = InBatchSoftmaxLoss(reduction=None)(np.zeros(B), logits)
    ref = R.in_batch_softmax_loss(q, c, log_q=log_q, temperature=temperature, num_hard_negatives=hard, **kw)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss), ref, rtol=1e-5)
    mean = InBatchSoftmaxLoss()(np.zeros(B), logits)
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(mean)), ref.mean(), rtol=1e-5)


def _in_batch_weighted_sum_and_grads(layer, q, c, log_q, weights, **kw):
    """``sum_i w_i loss_i`` (Keras' ``sample_weight`` with ``reduction="sum"``) and its gradients
    w.r.t. (query, candidates, log_q, log_temperature), by this backend's autodiff."""
    loss_fn = InBatchSoftmaxLoss(reduction="sum")
    zeros = np.zeros(len(q))
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        xs = [tf.constant(a, tf.float32) for a in (q, c, log_q)]
        with tf.GradientTape() as tape:
            tape.watch(xs)
            total = loss_fn(zeros, layer(xs[0], xs[1], log_q=xs[2], **kw), sample_weight=weights)
        grads = tape.gradient(total, xs + [layer.log_temperature.value])
    elif backend == "jax":
        import jax

        def f(qv, cv, lv, tv):
            with keras.StatelessScope(state_mapping=[(layer.log_temperature, tv)]):
                return loss_fn(zeros, layer(qv, cv, log_q=lv, **kw), sample_weight=weights)

        args = [jax.numpy.asarray(a, "float32") for a in (q, c, log_q)] + [layer.log_temperature.value]
        total, grads = jax.value_and_grad(f, argnums=(0, 1, 2, 3))(*args)
    else:
        import torch

        xs = [torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in (q, c, log_q)]
        layer.log_temperature.value.grad = None
        total = loss_fn(zeros, layer(*xs[:2], log_q=xs[2], **kw), sample_weight=torch.as_tensor(weights))
        total.backward()
        grads = [x.grad for x in xs] + [layer.log_temperature.value.grad]
    return float(keras.ops.convert_to_numpy(total)), [keras.ops.convert_to_numpy(g) for g in grads]


@pytest.mark.parametrize("masks,hard", [(False, None), (True, None), (True, 3)])
def test_keras_in_batch_gradients_with_sample_weights_equal_the_reference(masks, hard):
    """Gradients of the query, the candidates, ``log_q`` and the learned temperature, under
    Keras' ``sample_weight``, against the reference's closed forms (float32, 1e-4)."""
    q, c, ids, log_q, mask_kw, weights = in_batch_problem(1, B, C, D)
    kw = dict(candidate_ids=ids, **(mask_kw if masks else {}))
    temperature = 0.4
    layer = InBatchSoftmax(temperature, learn_temperature=True, num_hard_negatives=hard)
    total, (dq, dc, dlog_q, dlog_t) = _in_batch_weighted_sum_and_grads(layer, q, c, log_q, weights.astype("float32"),
                                                                       **kw)
    ref_kw = dict(log_q=log_q, temperature=temperature, num_hard_negatives=hard, **kw)
    ref_loss = R.in_batch_softmax_loss(q, c, **ref_kw)
    ref_dq, ref_dc, ref_dt, ref_dlog_q = R.in_batch_softmax_grads(q, c, sample_weight=weights, **ref_kw)
    assert total == pytest.approx(float(np.sum(weights * ref_loss)), rel=1e-5)
    np.testing.assert_allclose(dq, ref_dq, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dc, ref_dc, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dlog_q, ref_dlog_q, rtol=1e-4, atol=1e-6)
    # d/d(log t) = t d/dt: the layer learns the temperature through its logarithm.
    assert float(dlog_t) == pytest.approx(temperature * ref_dt, rel=1e-4, abs=1e-6)


def _two_towers(learn_temperature):
    users, items = keras.Input((), dtype="int32"), keras.Input((), dtype="int32")
    query = keras.layers.Embedding(30, 8, name="user_tower")(users)
    candidate = keras.layers.Embedding(50, 8, name="item_tower")(items)
    logits = InBatchSoftmax(0.2, learn_temperature=learn_temperature, name="in_batch")(query, candidate,
                                                                                     candidate_ids=items)
    return keras.Model([users, items], logits)


@pytest.mark.slow
def test_keras_two_tower_model_trains_with_fit_and_survives_saving(tmp_path):
    keras.utils.set_random_seed(0)
    model = _two_towers(learn_temperature=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=InBatchSoftmaxLoss())
    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, 512).astype("int32")
    items = ((users * 7 + rng.integers(0, 2, 512)) % 50).astype("int32")
    history = model.fit([users, items], items, batch_size=64, epochs=4, verbose=0)
    assert history.history["loss"][-1] < 0.6 * history.history["loss"][0]
    t = float(keras.ops.convert_to_numpy(model.get_layer("in_batch").log_temperature))
    assert t != pytest.approx(np.log(0.2)), "the temperature must be learned"
    model.save(tmp_path / "two_towers.keras")
    restored = keras.models.load_model(tmp_path / "two_towers.keras")
    x = [users[:64], items[:64]]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(restored(x)), keras.ops.convert_to_numpy(model(x)),
                               rtol=1e-6)


def test_keras_in_batch_bad_input_is_a_clear_error():
    q, c, ids, _, _, _ = in_batch_problem(0, B, C, D)
    q, c = q.astype("float32"), c.astype("float32")
    with pytest.raises(SampledSoftmaxError, match=r"`candidates` must have at least as many rows as `query`"):
        InBatchSoftmax()(q, c[:3])
    with pytest.raises(SampledSoftmaxError, match=r"`log_q` must be <= 0 .*received 0.5"):
        InBatchSoftmax()(q, c, log_q=np.full(C, 0.5, "float32"))
    with pytest.raises(SampledSoftmaxError, match=r"`temperature` must be positive and finite; received 0.0"):
        InBatchSoftmax(0.0)
    with pytest.raises(SampledSoftmaxError, match=r"`num_hard_negatives` must be >= 1"):
        InBatchSoftmax(num_hard_negatives=0)
    with pytest.raises(SampledSoftmaxError, match=r"`y_pred` must be in-batch logits \[B, C\] with C >= B"):
        InBatchSoftmaxLoss()(np.zeros(4), np.zeros((4, 2), "float32"))


@pytest.mark.parametrize("kind", ["last_seen", "count_min"])
def test_keras_frequency_estimators_equal_the_reference_train_in_fit_and_are_saved(tmp_path, kind):
    from sampled_softmax import frequency as NF
    from sampled_softmax.keras import CountMinFrequency, StreamingFrequency

    rng = np.random.default_rng(0)
    p = np.arange(1, 301, dtype=np.float64) ** -1.1
    stream = [rng.choice(300, size=32, p=p / p.sum()).astype("int32") for _ in range(20)]
    if kind == "last_seen":
        cls, ours, ref = StreamingFrequency, StreamingFrequency(64, num_hashes=2, learning_rate=0.1, seed=4), \
            NF.StreamingFrequency(64, num_hashes=2, learning_rate=0.1, seed=4)
    else:
        cls, ours, ref = CountMinFrequency, CountMinFrequency(64, num_hashes=2, seed=4), \
            NF.CountMinFrequency(64, num_hashes=2, seed=4)
    for ids in stream:
        log_q = ours(ids, training=True)
        ref.update(ids)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(log_q), ref.log_q(ids), rtol=1e-5, atol=1e-6)
    before = keras.ops.convert_to_numpy(ours(stream[0], training=False))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours(stream[0])), before)  # inference: no update
    # Inside a two-tower model trained by fit, saved and restored with the model.
    keras.utils.set_random_seed(0)
    users, items = keras.Input((), dtype="int32"), keras.Input((), dtype="int32")
    frequency = cls(256, name="frequency")
    logits = InBatchSoftmax(0.2)(keras.layers.Embedding(30, 8)(users), keras.layers.Embedding(50, 8)(items),
                                 candidate_ids=items, log_q=frequency(items))
    model = keras.Model([users, items], logits)
    model.compile(optimizer="adam", loss=InBatchSoftmaxLoss())
    u = rng.integers(0, 30, 256).astype("int32")
    i = ((u * 7) % 50).astype("int32")
    model.fit([u, i], i, batch_size=32, epochs=1, verbose=0, shuffle=False)
    assert int(keras.ops.convert_to_numpy(model.get_layer("frequency").step)) == 8
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras")
    for weight, saved in zip(model.get_layer("frequency").weights, restored.get_layer("frequency").weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(saved), keras.ops.convert_to_numpy(weight))


@pytest.mark.parametrize("chunk_size", [7, 1000])
def test_keras_corpus_index_is_exact_top_k_and_recall_counts_hits(chunk_size):
    from sampled_softmax.keras import CorpusIndex, RecallAtK

    rng = np.random.default_rng(0)
    items, query = rng.normal(size=(50, 4)).astype("float32"), rng.normal(size=(6, 4)).astype("float32")
    ids = rng.permutation(1000)[:50].astype("int32")
    index = CorpusIndex(chunk_size=chunk_size).index(items, ids)
    scores, top = index.search(query, k=5)
    exact = query @ items.T
    order = np.argsort(-exact, axis=1)[:, :5]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(top), ids[order])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(scores), np.take_along_axis(exact, order, 1), rtol=1e-5)
    recall = RecallAtK(index, k=5)
    truth = np.array([ids[order[0, 0]], ids[order[1, 4]], ids[order[2, 5 - 1]], ids[np.argsort(-exact[3])[10]],
                      ids[np.argsort(-exact[4])[20]], ids[np.argsort(-exact[5])[49]]])
    recall.update_state(truth, query)
    assert float(keras.ops.convert_to_numpy(recall.result())) == pytest.approx(3 / 6)
    with pytest.raises(SampledSoftmaxError, match=r"`k` must be <= 50 \(the indexed items\); received 51"):
        index.search(query, k=51)


def _numpy_distribution(sampler, num_classes, unigrams=None, counts=None):
    from sampled_softmax import samplers as S

    if sampler == "uniform":
        return S.Uniform(num_classes)
    if sampler == "log_uniform":
        return S.LogUniform(num_classes)
    return S.Unigram(unigrams if sampler == "unigram" else counts)


@pytest.mark.parametrize("sampler", ["uniform", "log_uniform", "unigram", "learned_unigram"])
def test_keras_corpus_sampler_draws_with_exact_inclusion_probabilities(sampler):
    """Each slot's expected count is the exact inclusion probability ``1 - (1 - Q)^M`` of the
    NumPy distribution (``inf`` on repeats); over many draws, each class is drawn as often as
    that probability says (seeded, a 5-sigma bound); learned counts grow only in training."""
    from sampled_softmax import samplers as S
    from sampled_softmax.keras import CorpusSampler

    V_, M = 20, 6
    unigrams = np.arange(1, V_ + 1, dtype=np.float64)[::-1] ** 1.5
    layer = CorpusSampler(V_, M, sampler=sampler, unigrams=unigrams if sampler == "unigram" else None, seed=3)
    true = np.array([[2, 5], [7, 7], [0, 19]], "int32")
    draws, n = np.zeros(V_), 400
    for step in range(n):
        counts = np.ones(V_) if sampler != "learned_unigram" else keras.ops.convert_to_numpy(layer.sampling_counts)
        cand, true_count, samp_count = (keras.ops.convert_to_numpy(v) for v in layer(true, training=step < 3))
        dist = _numpy_distribution(sampler, V_, unigrams, counts.astype(np.float64))
        repeat = S.repeated_slots(cand)
        assert cand.min() >= 0 and cand.max() < V_
        np.testing.assert_array_equal(np.isinf(samp_count), repeat)
        np.testing.assert_allclose(samp_count[~repeat], S.expected_count(dist.probs(cand[~repeat]), M, "unique_exact"),
                                   rtol=2e-5)
        np.testing.assert_allclose(true_count, S.expected_count(dist.probs(true), M, "unique_exact"), rtol=2e-5)
        draws[np.unique(cand)] += 1
    if sampler == "learned_unigram":
        learned = np.ones(V_)
        np.add.at(learned, true.reshape(-1), 3)  # three training calls, none after
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.sampling_counts), learned)
        dist = _numpy_distribution(sampler, V_, counts=learned)
    p = S.expected_count(dist.all_probs(), M, "unique_exact")
    assert np.all(np.abs(draws - n * p) <= 5 * np.sqrt(n * p * (1 - p)) + 1), (draws, n * p)
    again = CorpusSampler(V_, M, sampler=sampler, unigrams=unigrams if sampler == "unigram" else None, seed=3)
    first = CorpusSampler(V_, M, sampler=sampler, unigrams=unigrams if sampler == "unigram" else None, seed=3)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(again(true)[0]), keras.ops.convert_to_numpy(first(true)[0]))


def test_keras_mixed_negatives_equal_the_reference_and_mask_padding_by_effect():
    from sampled_softmax.keras import CorpusSampler, mixed_negatives

    rng = np.random.default_rng(5)
    V_, M = 12, 8
    table = rng.normal(size=(V_, D)).astype("float32")
    ids = np.array([3, 7, 7, 1, 10], "int32")
    in_batch = np.log([0.3, 0.2, 0.2, 0.1, 0.05]).astype("float32")
    sv = [keras.ops.convert_to_numpy(v) for v in CorpusSampler(V_, M, sampler="log_uniform", seed=1)(ids)]
    assert np.isinf(sv[2]).any(), "the draw must hold a padding slot for this test"
    encode = lambda i: keras.ops.take(keras.ops.convert_to_tensor(table), i, axis=0)  # noqa: E731
    mixed = mixed_negatives(table[ids], ids, in_batch, sv, encode)
    ref = R.mixed_negatives(table[ids], ids, in_batch, sv, lambda i: table[i])
    for ours, theirs in zip(mixed, ref):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(ours), theirs, rtol=1e-6)
    q = rng.normal(size=(5, D)).astype("float32")
    logits = InBatchSoftmax(0.5)(q, mixed.candidates, candidate_ids=mixed.candidate_ids, log_q=mixed.log_q,
                                 score_mask=mixed.score_mask)
    loss = InBatchSoftmaxLoss(reduction=None)(np.zeros(5), logits)
    ref_loss = R.in_batch_softmax_loss(q, ref[0], candidate_ids=ref[1], log_q=ref[2], score_mask=ref[3],
                                       temperature=0.5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss), ref_loss, rtol=1e-5)
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=1))
    assert np.all(probs[:, 5:][:, np.isinf(sv[2])] == 0), "a padding slot must have probability 0"
    with pytest.raises(SampledSoftmaxError, match=r"`sampled_values\[2\]` .*must be at most 1 .*received 2.0"):
        mixed_negatives(table[ids], ids, in_batch, (sv[0], sv[1], np.full(M, 2.0, "float32")), encode)
    with pytest.raises(SampledSoftmaxError, match=r"`encode` must return \[8, 4\] embeddings"):
        mixed_negatives(table[ids], ids, in_batch, sv, lambda i: encode(i)[:, :2])
    with pytest.raises(SampledSoftmaxError, match=r"`true_ids` must be in \[0, 11\]; received 12"):
        CorpusSampler(V_, M)(np.array([12], "int32"))
    with pytest.raises(SampledSoftmaxError, match=r"`unigrams` .* is required for sampler='unigram'"):
        CorpusSampler(V_, M, sampler="unigram")


@pytest.mark.slow
def test_keras_two_tower_with_mixed_negatives_trains_with_fit_and_survives_saving(tmp_path):
    """A functional two-tower model with mixed negatives (one shared item tower, the sampler's
    draw and the streaming estimate inside ``fit``): the loss falls, the reloaded model holds one
    item tower (not a copy) and, with the saved seed state, gives the same logits."""
    from sampled_softmax.keras import CorpusSampler, StreamingFrequency, mixed_negatives

    keras.utils.set_random_seed(0)
    V_, M = 50, 16
    users, items = keras.Input((), dtype="int32"), keras.Input((), dtype="int32")
    item_tower = keras.layers.Embedding(V_, 8, name="item_tower")
    query = keras.layers.Embedding(30, 8, name="user_tower")(users)
    sampled = CorpusSampler(V_, M, seed=2, name="corpus_sampler")(items)
    mixed = mixed_negatives(item_tower(items), items, StreamingFrequency(256, name="frequency")(items), sampled,
                            item_tower)
    logits = InBatchSoftmax(0.2, name="in_batch")(query, mixed.candidates, candidate_ids=mixed.candidate_ids,
                                                  log_q=mixed.log_q, score_mask=mixed.score_mask)
    model = keras.Model([users, items], logits)
    assert len(model.trainable_weights) == 2
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=InBatchSoftmaxLoss())
    rng = np.random.default_rng(0)
    u = rng.integers(0, 30, 512).astype("int32")
    i = ((u * 7 + rng.integers(0, 2, 512)) % V_).astype("int32")
    history = model.fit([u, i], i, batch_size=64, epochs=8, verbose=0)
    assert history.history["loss"][-1] < 0.6 * history.history["loss"][0]
    model.save(tmp_path / "mixed.keras")
    restored = keras.models.load_model(tmp_path / "mixed.keras")
    assert len(restored.trainable_weights) == 2, "the reloaded model must share one item tower"
    x = [u[:64], i[:64]]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(restored(x)), keras.ops.convert_to_numpy(model(x)),
                               rtol=1e-6)
    # Training the reloaded model moves the item tower that the batch's own candidates use.
    before = keras.ops.convert_to_numpy(restored.get_layer("item_tower").embeddings).copy()
    restored.fit([u, i], i, batch_size=64, epochs=1, verbose=0)
    assert not np.allclose(keras.ops.convert_to_numpy(restored.get_layer("item_tower").embeddings), before)
