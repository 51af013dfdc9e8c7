"""The Keras 3 layer, against the reference, through compile/fit/evaluate/predict/save.

The same file runs under each backend: ``make test`` runs it with ``KERAS_BACKEND`` set to
``tensorflow`` (in the main run), ``jax`` and ``torch``.
"""

import itertools
import math

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from sampled_softmax import SampledSoftmaxError  # noqa: E402
from sampled_softmax import reference as R  # noqa: E402
from sampled_softmax import samplers as npsamplers  # noqa: E402
from sampled_softmax.keras import LazyAdam, SampledSoftmax, SampledSoftmaxLoss, SampledSoftmaxMetric  # noqa: E402

from keras_layer_helpers import BACKEND, built_layer, ops, sampled_loss_and_grads, to_numpy  # noqa: E402,F401


def problem(seed, *, V=60, D=8, B=10, S=12, T=1):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(V, D)).astype(np.float32)
    b = rng.normal(size=V).astype(np.float32)
    h = rng.normal(size=(B, D)).astype(np.float32)
    y = rng.integers(0, V, size=(B, T)).astype(np.int32)
    cand = rng.choice(V, size=S, replace=False).astype(np.int32)
    cand[:3] = y[:3, 0]  # accidental hits
    cand[4] = cand[5]     # a repeat, marked as padding below
    samp = rng.uniform(0.05, 2, S).astype(np.float32)
    samp[5] = np.inf
    return W, b, y, h, (cand, rng.uniform(0.05, 2, (B, T)).astype(np.float32), samp)


@pytest.mark.parametrize("T,hits,bias,log_q,eps,ignore", list(itertools.product(
    [1, 3], [True, False], [True, False], [True, False], [0.0, 0.2], [None, 7]))[::3])
def test_sampled_loss_and_gradients_match_reference(T, hits, bias, log_q, eps, ignore):
    W, b, y, h, sv = problem(T * 100 + hits * 10 + bias, T=T)
    if ignore is not None:
        y[1, :] = ignore
        y[2, 0] = ignore
    b = b if bias else None
    layer = built_layer(W, b, num_true=T, remove_accidental_hits=hits, subtract_log_q=log_q,
                        label_smoothing=eps, ignore_index=ignore)
    loss, grads = sampled_loss_and_grads(layer, y if T > 1 else y[:, 0], h, sv)
    kw = dict(remove_accidental_hits=hits, subtract_log_q=log_q, label_smoothing=eps, ignore_index=ignore)
    np.testing.assert_allclose(loss, R.sampled_softmax_loss(W, b, y, h, sv, **kw), rtol=2e-5, atol=2e-5)
    expected = R.sampled_softmax_grads(W, b, y, h, sv, **kw)
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    if ignore is not None:  # rows whose every label is ignored get exactly zero gradient
        assert np.all(grads[0][1] == 0)


@pytest.mark.parametrize("objective,T,hits,ignore", [
    ("nce", 1, False, None), ("nce", 3, True, 7), ("negative_sampling", 1, False, None),
    ("negative_sampling", 2, True, 7)])
def test_nce_and_negative_sampling_match_reference(objective, T, hits, ignore):
    W, b, y, h, sv = problem(T * 10 + hits, T=T)
    if ignore is not None:
        y[1, :] = ignore
        y[2, 0] = ignore
    layer = built_layer(W, b, num_true=T, remove_accidental_hits=hits, ignore_index=ignore, loss=objective)
    loss, grads = sampled_loss_and_grads(layer, y if T > 1 else y[:, 0], h, sv)
    kw = dict(remove_accidental_hits=hits, ignore_index=ignore)
    ref_loss = R.nce_loss if objective == "nce" else R.negative_sampling_loss
    ref_grads = R.nce_grads if objective == "nce" else R.negative_sampling_grads
    np.testing.assert_allclose(loss, ref_loss(W, b, y, h, sv, **kw), rtol=2e-5, atol=2e-5)
    for got, want in zip(grads, ref_grads(W, b, y, h, sv, **kw)):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    assert SampledSoftmax.from_config(layer.get_config()).objective == objective
    with pytest.raises(SampledSoftmaxError, match=r"`label_smoothing` must be 0 with loss="):
        SampledSoftmax(60, 5, loss=objective, label_smoothing=0.1)


@pytest.mark.slow
def test_an_nce_head_fits_and_evaluates_exactly():
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 8)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(8, 30)), axis=1).astype(np.int64)
    head = SampledSoftmax(30, 10, seed=0, loss="nce")
    model = keras.Sequential([keras.Input((8,)), head])
    model.compile(optimizer="adam", loss=head.loss)
    history = model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    evaluated = model.evaluate(x, y, verbose=0)
    probs = to_numpy(model(x, training=False))
    np.testing.assert_allclose(evaluated, -np.mean(np.log(probs[np.arange(128), y])), rtol=1e-4)


def test_masked_candidates_get_exactly_zero_gradient():
    W, b, y, h, sv = problem(5)
    layer = built_layer(W, b)
    _, (_, dW, _) = sampled_loss_and_grads(layer, y[:, 0], h, sv)
    cand = sv[0]
    # Row 0's label equals candidate 0: its only gradient is the true column's. Class cand[5]
    # sits in a padding slot and in slot 4; that class's gradient comes from slot 4 only.
    rows_only_true = np.setdiff1d(np.arange(W.shape[0]), np.concatenate([cand, y[:, 0]]))
    assert np.all(dW[rows_only_true] == 0)
    _, (_, dW_pad_dropped, _) = sampled_loss_and_grads(
        layer, y[:, 0], h, (np.delete(cand, 5), sv[1], np.delete(sv[2], 5)))
    np.testing.assert_allclose(dW, dW_pad_dropped, rtol=1e-5, atol=1e-6)


def test_sequence_inputs_and_labels_with_trailing_axis():
    W, b, y, h, sv = problem(3, B=12)
    layer = built_layer(W, b)
    flat = to_numpy(layer.sampled_loss(ops.convert_to_tensor(y[:, 0]), ops.convert_to_tensor(h),
                                       sampled_values=tuple(ops.convert_to_tensor(v) for v in sv)))
    seq = to_numpy(layer.sampled_loss(ops.convert_to_tensor(y.reshape(3, 4, 1)), ops.convert_to_tensor(h.reshape(3, 4, -1)),
                                      sampled_values=tuple(ops.convert_to_tensor(v) for v in sv)))
    assert seq.shape == (3, 4)
    np.testing.assert_allclose(seq.ravel(), flat, rtol=1e-6)


@pytest.mark.parametrize("sampler", ["log_uniform", "uniform", "unigram", "learned_unigram"])
@pytest.mark.parametrize("draw", ["unique_exact", "with_replacement"])
def test_sampler_expected_counts_follow_the_numpy_formulas(sampler, draw):
    V, S = 300, 40
    counts = np.arange(V, 0, -1.0) ** 1.1
    kw = dict(unigrams=counts) if sampler == "unigram" else {}
    layer = SampledSoftmax(V, S, sampler=sampler, draw=draw, seed=3, **kw)
    layer.build((None, 4))
    if sampler == "learned_unigram":
        layer.sampling_counts.assign(counts.astype(np.float32))
    dist = {"uniform": npsamplers.Uniform(V), "log_uniform": npsamplers.LogUniform(V),
            "unigram": npsamplers.Unigram(counts), "learned_unigram": npsamplers.Unigram(counts)}[sampler]
    if sampler == "unigram":
        # Drawn through a float32 CDF (its steps within 1.2e-7 of Q), corrected with Q in float32.
        steps = np.diff(to_numpy(layer.sampling_cdf).astype(np.float64), prepend=0.0)
        np.testing.assert_allclose(steps, dist.all_probs(), atol=1.2e-7)
        np.testing.assert_allclose(to_numpy(layer.sampling_probs), dist.all_probs(), rtol=1e-7)
    labels = np.array([[0], [5], [V - 1]], np.int32)
    cand, true_count, samp_count = (to_numpy(v) for v in layer.sample(ops.convert_to_tensor(labels)))
    assert cand.shape == (S,) and cand.min() >= 0 and cand.max() < V
    np.testing.assert_allclose(true_count, npsamplers.expected_count(dist.probs(labels), S, draw), rtol=2e-4)
    want = npsamplers.expected_count(dist.probs(cand), S, draw)
    if draw == "unique_exact":
        repeated = npsamplers.repeated_slots(cand)
        assert np.array_equal(np.isinf(samp_count), repeated)
        np.testing.assert_allclose(samp_count[~repeated], want[~repeated], rtol=2e-4)
    else:
        np.testing.assert_allclose(samp_count, want, rtol=2e-4)


@pytest.mark.parametrize("sampler", ["log_uniform", "unigram"])
def test_sampler_frequencies_chi_square(sampler):
    scipy_stats = pytest.importorskip("scipy.stats")
    V, S, draws = 30, 500, 40
    counts = np.arange(1, V + 1.0)
    kw = dict(unigrams=counts) if sampler == "unigram" else {}
    layer = SampledSoftmax(V, S, sampler=sampler, draw="with_replacement", seed=11, **kw)
    layer.build((None, 4))
    labels = ops.convert_to_tensor(np.zeros((1, 1), np.int32))
    drawn = np.concatenate([to_numpy(layer.sample(labels)[0]) for _ in range(draws)])
    dist = npsamplers.Unigram(counts) if sampler == "unigram" else npsamplers.LogUniform(V)
    observed = np.bincount(drawn, minlength=V)
    _, p = scipy_stats.chisquare(observed, dist.all_probs() * drawn.size)
    assert p > 1e-3


def test_same_seed_same_candidates_and_loss():
    W, b, y, h, _ = problem(9)
    losses = []
    for _ in range(2):
        layer = built_layer(W, b, num_sampled=20, seed=42)
        losses.append([to_numpy(layer.sampled_loss(ops.convert_to_tensor(y), ops.convert_to_tensor(h))) for _ in range(2)])
    np.testing.assert_array_equal(losses[0][0], losses[1][0])
    np.testing.assert_array_equal(losses[0][1], losses[1][1])
    assert not np.array_equal(losses[0][0], losses[0][1])  # the draw advances


# --- the user story: compile / fit / evaluate / predict / save ---------------------------------

V_LM, T_LM = 120, 10


def corpus(n=512, seed=0):
    """A deterministic next-token rule (each token has 2 equally likely successors): the best
    achievable loss is log 2, the unigram baseline about log V."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, T_LM + 1), np.int32)
    x[:, 0] = rng.integers(1, V_LM, n)
    for t in range(T_LM):
        x[:, t + 1] = 1 + (7 * x[:, t] + rng.integers(0, 2, n)) % (V_LM - 1)
    return x[:, :-1], x[:, 1:]


def lm(head, *, mask_zero=False, tie=False, metrics=("sparse_categorical_accuracy",)):
    inputs = keras.Input((None,), dtype="int32")
    emb = keras.layers.Embedding(V_LM, 32, mask_zero=mask_zero)
    z = emb(inputs)
    z = keras.layers.Dense(32, activation="tanh")(z)
    if tie:
        head = SampledSoftmax(V_LM, head.num_sampled, tied_to=emb, seed=0)
    model = keras.Model(inputs, head(z))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=head.loss, metrics=list(metrics))
    return model, head


def unigram_entropy(y):
    p = np.bincount(y.ravel(), minlength=V_LM) / y.size
    return -np.sum(p[p > 0] * np.log(p[p > 0]))


@pytest.mark.slow
def test_fit_trains_and_evaluate_reports_full_softmax_loss():
    keras.utils.set_random_seed(0)
    x, y = corpus()
    xv, yv = corpus(128, seed=1)
    model, head = lm(SampledSoftmax(V_LM, num_sampled=16, seed=0))
    before = model.evaluate(xv, yv, verbose=0, return_dict=True)
    model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    after = model.evaluate(xv, yv, verbose=0, return_dict=True)
    # evaluate's loss is the exact full-softmax cross-entropy of predict's probabilities.
    probs = model.predict(xv, verbose=0)
    assert probs.shape == (128, T_LM, V_LM)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    exact = -np.mean(np.log(np.take_along_axis(probs, yv[..., None], -1)))
    np.testing.assert_allclose(after["loss"], exact, rtol=1e-4)
    accuracy = np.mean(probs.argmax(-1) == yv)
    np.testing.assert_allclose(after["sparse_categorical_accuracy"], accuracy, atol=1e-6)
    assert before["loss"] > 0.9 * math.log(V_LM)
    assert after["loss"] < 0.5 * unigram_entropy(yv)  # well below the unigram baseline


def _exact_scores(probs, y, ignore_index=None):
    """Accuracy and perplexity of full-softmax ``probs`` over the kept targets (NumPy)."""
    keep = np.ones(y.shape, bool) if ignore_index is None else y != ignore_index
    y_safe = np.where(keep, y, 0)
    nll = -np.log(np.take_along_axis(probs, y_safe[..., None], -1)[..., 0])
    return np.mean((probs.argmax(-1) == y)[keep]), math.exp(np.mean(nll[keep]))


@pytest.mark.slow
def test_wrapped_metrics_score_the_full_softmax_in_fit_with_the_weights_the_loss_saw():
    keras.utils.set_random_seed(0)
    x, y = corpus(64)
    y = y.copy()
    y[:, -2:] = -1  # ignored targets: left out of the metrics too
    inputs = keras.Input((None,), dtype="int32")
    head = SampledSoftmax(V_LM, num_sampled=16, seed=0, ignore_index=-1)
    model = keras.Model(inputs, head(keras.layers.Embedding(V_LM, 32)(inputs)))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=head.loss,  # lr 0: weights stay put
                  metrics=[head.metric("accuracy"), head.metric("perplexity"),
                           head.metric(keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5"))])
    # One step over the whole set: fit's numbers must be evaluate's, i.e. exact, not of hidden states.
    hist = model.fit(x, y, batch_size=64, epochs=1, verbose=0).history
    ev = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    acc, ppl = _exact_scores(model.predict(x, verbose=0), y, ignore_index=-1)
    for name in ("accuracy", "perplexity", "top5"):
        np.testing.assert_allclose(hist[name][0], ev[name], rtol=1e-5)
    np.testing.assert_allclose(ev["accuracy"], acc, atol=1e-6)
    np.testing.assert_allclose(ev["perplexity"], ppl, rtol=1e-5)
    assert 1 < ppl < V_LM * 2


@pytest.mark.slow
def test_wrapped_metrics_after_training_match_predict_and_survive_saving(tmp_path):
    keras.utils.set_random_seed(0)
    x, y = corpus(128)
    model, head = lm(SampledSoftmax(V_LM, num_sampled=16, seed=0), metrics=())
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=head.loss,
                  metrics=[head.metric("accuracy"), head.metric("perplexity")])
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    ev = model.evaluate(x, y, verbose=0, return_dict=True)
    acc, ppl = _exact_scores(model.predict(x, verbose=0), y)
    np.testing.assert_allclose([ev["accuracy"], ev["perplexity"]], [acc, ppl], rtol=1e-5)
    np.testing.assert_allclose(ev["perplexity"], math.exp(ev["loss"]), rtol=1e-5)  # no smoothing: the same
    assert acc > 0.3
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    got = loaded.evaluate(x, y, verbose=0, return_dict=True)
    np.testing.assert_allclose([got["accuracy"], got["perplexity"]], [ev["accuracy"], ev["perplexity"]], rtol=1e-6)
    hist = loaded.fit(x, y, epochs=1, batch_size=32, verbose=0).history  # the restored metric binds to its layer
    assert 1 < hist["perplexity"][0] < V_LM and 0 <= hist["accuracy"][0] <= 1


def test_metric_misuse_is_a_clear_error():
    with pytest.raises(TypeError, match="`layer` must be a SampledSoftmax layer; received Dense"):
        SampledSoftmaxMetric("accuracy", keras.layers.Dense(3))
    with pytest.raises(TypeError, match="`metric` must be a keras.metrics.Metric or a metric name; received int"):
        SampledSoftmax(10, 4).metric(3)
    with pytest.raises(SampledSoftmaxError, match="`layer`: this metric is not bound"):
        SampledSoftmaxMetric("accuracy", layer_name="no_such_layer_anywhere").get_layer()


def test_save_and_load_round_trip(tmp_path):
    keras.utils.set_random_seed(1)
    x, y = corpus(128)
    model, head = lm(SampledSoftmax(V_LM, num_sampled=16, seed=0, sampler="unigram",
                                    unigrams=np.bincount(y.ravel(), minlength=V_LM)[1:] + 1.0,
                                    num_reserved_ids=1))
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x[:8], verbose=0), model.predict(x[:8], verbose=0))
    new_head = loaded.layers[-1]
    assert isinstance(new_head, SampledSoftmax) and new_head is not head
    np.testing.assert_array_equal(to_numpy(new_head.sampling_cdf), to_numpy(head.sampling_cdf))
    # The restored compile config trains the restored layer, with the same loss.
    np.testing.assert_allclose(loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-6)
    loaded.fit(x, y, epochs=1, batch_size=32, verbose=0)


def test_learned_unigram_counts_grow_with_the_targets_seen_and_survive_saving(tmp_path):
    keras.utils.set_random_seed(3)
    x, y = corpus(64)
    model, head = lm(SampledSoftmax(V_LM, num_sampled=16, seed=0, sampler="learned_unigram", ignore_index=7))
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
    seen = np.bincount(y[y != 7], minlength=V_LM)
    counts = to_numpy(head.sampling_counts)
    np.testing.assert_array_equal(counts, 1 + 2 * seen)  # starts at 1; ignored targets not counted
    path = tmp_path / "m.keras"
    model.save(path)
    restored = keras.models.load_model(path).layers[-1]
    np.testing.assert_array_equal(to_numpy(restored.sampling_counts), counts)
    # The draw follows the counts: expected counts are the unique_exact formula of counts / total.
    labels = np.array([[0], [5]], np.int32)
    cand, true_count, _ = (to_numpy(v) for v in restored.sample(ops.convert_to_tensor(labels)))
    q = counts / counts.sum()
    np.testing.assert_allclose(true_count, npsamplers.expected_count(q[labels], 16, "unique_exact"), rtol=1e-5)


@pytest.mark.slow
def test_a_resumed_fit_continues_bit_identically(tmp_path):
    """fit one epoch, save, load, fit one more == fit two epochs: the candidates' seed state, the
    learned counts and the optimizer state all travel in the .keras file."""
    x, y = corpus(96)

    def fresh():
        keras.utils.set_random_seed(4)
        return lm(SampledSoftmax(V_LM, num_sampled=16, seed=0, sampler="learned_unigram"), metrics=())[0]

    straight = fresh()
    straight.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
    first = fresh()
    first.fit(x, y, epochs=1, batch_size=32, verbose=0, shuffle=False)
    first.save(tmp_path / "half.keras")
    resumed = keras.models.load_model(tmp_path / "half.keras")
    resumed.fit(x, y, epochs=1, batch_size=32, verbose=0, shuffle=False)
    for a, b in zip(straight.weights, resumed.weights):
        np.testing.assert_array_equal(to_numpy(b), to_numpy(a), err_msg=a.path)


def test_config_round_trip():
    layer = SampledSoftmax(500, 20, sampler="uniform", draw="with_replacement", num_true=2, use_bias=False,
                           remove_accidental_hits=False, subtract_log_q=False, label_smoothing=0.1,
                           ignore_index=-1, output="logits", seed=5)
    clone = SampledSoftmax.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    loss = SampledSoftmaxLoss.from_config(layer.loss.get_config())
    assert loss.get_layer() is clone  # the most recent layer of that name


def test_a_restored_loss_keeps_its_own_layer_when_another_of_its_name_appears():
    first = SampledSoftmax(50, 5, name="head")
    loss = SampledSoftmaxLoss.from_config(first.loss.get_config())
    metric = SampledSoftmaxMetric.from_config(first.metric("accuracy").get_config())
    second = SampledSoftmax(50, 5, name="head")  # another model's layer of the same name
    assert loss.get_layer() is first and metric.get_layer() is first
    assert SampledSoftmaxLoss.from_config(second.loss.get_config()).get_layer() is second


def test_symbolic_model_builds_for_plain_and_sequence_outputs():
    head = SampledSoftmax(50, 5)
    assert tuple(head(keras.Input((16,))).shape) == (None, 50)
    head2 = SampledSoftmax(50, 5)
    assert tuple(head2(keras.Input((7, 16))).shape) == (None, 7, 50)


def test_plain_batch_fit_with_column_targets():
    keras.utils.set_random_seed(2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    y = (np.argmax(x @ rng.normal(size=(8, 40)), axis=1)[:, None]).astype(np.int64)  # [B, 1]
    head = SampledSoftmax(40, 10, seed=0)
    model = keras.Sequential([keras.Input((8,)), head])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=head.loss)
    first = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=10, batch_size=64, verbose=0)
    assert model.evaluate(x, y, verbose=0) < 0.5 * first


def test_mask_zero_padding_is_left_out_of_the_loss():
    keras.utils.set_random_seed(3)
    x, y = corpus(64)
    x_pad = x.copy()
    x_pad[:, -3:] = 0
    model, head = lm(SampledSoftmax(V_LM, num_sampled=16, seed=0), mask_zero=True)
    full = model.evaluate(x_pad, y, verbose=0, return_dict=True)["loss"]
    probs = model.predict(x_pad, verbose=0)
    picked = -np.log(np.take_along_axis(probs, y[..., None], -1))[..., 0]
    np.testing.assert_allclose(full, picked[:, :-3].mean(), rtol=1e-5)


def test_ignore_index_positions_are_left_out_of_the_mean():
    W, b, y, h, _ = problem(4)
    y = y[:, 0].copy()
    y[:4] = -1
    yt, ht = ops.convert_to_tensor(y), ops.convert_to_tensor(h)
    per_row = to_numpy(built_layer(W, b, num_sampled=8, ignore_index=-1, seed=9).sampled_loss(yt, ht))
    assert np.all(per_row[:4] == 0) and np.all(per_row[4:] > 0)
    layer = built_layer(W, b, num_sampled=8, ignore_index=-1, seed=9)  # the same draw
    layer._training_output = True  # as in a training step
    reduced = to_numpy(layer.loss(yt, ht))
    np.testing.assert_allclose(reduced, per_row[4:].mean(), rtol=1e-6)


@pytest.mark.slow
def test_tied_embedding_trains_the_shared_table_and_round_trips(tmp_path):
    keras.utils.set_random_seed(4)
    x, y = corpus(128)
    model, head = lm(SampledSoftmax(V_LM, num_sampled=16), tie=True)
    assert not hasattr(head, "kernel")
    emb = model.layers[1]
    table_before = to_numpy(emb.embeddings).copy()
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert not np.allclose(to_numpy(emb.embeddings), table_before)
    np.testing.assert_array_equal(to_numpy(head.table), to_numpy(emb.embeddings))
    path = tmp_path / "tied.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x[:4], verbose=0), model.predict(x[:4], verbose=0))
    assert len(loaded.weights) == len(model.weights)


def test_mixed_precision_loss_is_float32_and_close():
    W, b, y, h, sv = problem(6)
    svt = tuple(ops.convert_to_tensor(v) for v in sv)
    ref = R.sampled_softmax_loss(W, b, y, h, sv)
    layer = built_layer(W, b, dtype="mixed_bfloat16")
    assert layer.compute_dtype == "bfloat16"
    loss = layer.sampled_loss(ops.convert_to_tensor(y), ops.cast(ops.convert_to_tensor(h), "bfloat16"), sampled_values=svt)
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    np.testing.assert_allclose(to_numpy(loss), ref, rtol=0.05, atol=0.05)
    probs = to_numpy(layer(ops.cast(ops.convert_to_tensor(h), "bfloat16")))
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


# --- misuse gets a clear error ----------------------------------------------------------------

def test_wrong_target_shape_is_a_clear_error():
    x, y = corpus(64)
    model, _ = lm(SampledSoftmax(V_LM, num_sampled=8), metrics=())
    with pytest.raises(SampledSoftmaxError, match=r"`y_true` \(targets\) must have shape"):
        model.fit(x, y[:, :5], epochs=1, batch_size=32, verbose=0)


def test_float_targets_are_a_clear_error():
    x, y = corpus(64)
    model, _ = lm(SampledSoftmax(V_LM, num_sampled=8))
    with pytest.raises(TypeError, match=r"`y_true` \(targets\) must have an integer dtype; received float"):
        model.fit(x, y.astype(np.float32), epochs=1, batch_size=32, verbose=0)


def test_out_of_range_targets_raise_in_fit():
    x, y = corpus(64)
    y = y.copy()
    y[3, 2] = V_LM + 5
    model, _ = lm(SampledSoftmax(V_LM, num_sampled=8))
    with pytest.raises(Exception, match=r"must be in \[0, 119\]") as info:
        model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert "targets" in str(info.value)


@pytest.mark.parametrize("kwargs,error,fragment", [
    (dict(num_classes=10, num_sampled=11), SampledSoftmaxError, r"`num_sampled` must be <= 10"),
    (dict(num_classes=10, num_sampled=0), SampledSoftmaxError, r"`num_sampled` must be >= 1; received 0"),
    (dict(num_classes=10, num_sampled=2, sampler="zipf"), SampledSoftmaxError, r"`sampler` must be one of"),
    (dict(num_classes=10, num_sampled=2, draw="unique"), SampledSoftmaxError, r"`draw` must be one of"),
    (dict(num_classes=10, num_sampled=2, sampler="unigram"), SampledSoftmaxError, r"`unigrams` .* required"),
    (dict(num_classes=10, num_sampled=2, label_smoothing=1.5), SampledSoftmaxError, r"`label_smoothing` must be in \[0, 1\]"),
    (dict(num_classes=10, num_sampled=2, output="softmax"), SampledSoftmaxError, r"`output` must be one of"),
    (dict(num_classes=10, num_sampled=2, tied_to="emb"), TypeError, r"`tied_to` must be a keras.layers.Embedding"),
])
def test_bad_constructor_arguments(kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        SampledSoftmax(**kwargs)


def test_loss_on_the_wrong_output_is_a_clear_error():
    layer = SampledSoftmax(20, 4)
    layer.build((None, 5))
    with pytest.raises(SampledSoftmaxError, match=r"`y_pred` must be the SampledSoftmax layer's output \[\.\.\., 20\]"):
        layer.loss(ops.convert_to_tensor(np.zeros(3, np.int32)), ops.zeros((3, 5)))


def _apply(optimizer, W0, row_sets, sparse):
    """Apply one gradient per row set (rows may repeat) to a fresh variable; return it."""
    W = keras.Variable(W0)
    optimizer.build([W])
    for i, rows in enumerate(row_sets):
        values = np.random.default_rng(i).normal(size=(len(rows), W0.shape[1])).astype(np.float32)
        dense = np.zeros_like(W0)
        np.add.at(dense, rows, values)
        if sparse:
            import tensorflow as tf

            grad = tf.IndexedSlices(tf.constant(values), tf.constant(rows), tf.constant(W0.shape, tf.int64))
        else:
            grad = ops.convert_to_tensor(dense)
        optimizer.apply_gradients([(grad, W)])
    return to_numpy(W)


def test_lazy_adam_is_adam_when_every_row_is_touched():
    W0 = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    rows = [np.arange(40), np.r_[np.arange(40), [3, 3, 7]], np.arange(40)[::-1]]
    adam = _apply(keras.optimizers.Adam(0.05), W0, rows, sparse=False)
    lazy = _apply(LazyAdam(0.05), W0, rows, sparse=BACKEND == "tensorflow")
    np.testing.assert_allclose(lazy, adam, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="row-sparse gradients exist on the TensorFlow backend only")
def test_lazy_adam_leaves_untouched_rows_and_their_moments_alone():
    W0 = np.random.default_rng(1).normal(size=(40, 3)).astype(np.float32)
    opt = LazyAdam(0.05)
    W = _apply(opt, W0, [np.array([1, 5, 5]), np.array([5, 9])], sparse=True)
    touched = [1, 5, 9]
    untouched = np.setdiff1d(np.arange(40), touched)
    np.testing.assert_array_equal(W[untouched], W0[untouched])
    assert np.all(W[touched] != W0[touched])
    m, v = (to_numpy(x) for x in (opt._momentums[0], opt._velocities[0]))
    assert np.all(m[untouched] == 0) and np.all(v[untouched] == 0) and np.all(v[touched] > 0)
    # Row 1 was touched once, at step 1: exactly Adam's first step, lr * sign(g).
    g1 = np.random.default_rng(0).normal(size=(3, 3)).astype(np.float32)[0]
    np.testing.assert_allclose(W[1], W0[1] - 0.05 * np.sign(g1), rtol=1e-5)


def _moved_as_given_and_dense(name, grads, W, b):
    """The table and bias after 3 steps of the Keras optimizer ``name`` on ``grads`` as given and
    made dense; asserts they agree and returns both."""
    import tensorflow as tf

    moved = {}
    for form in ("as_given", "dense"):
        table, bias = keras.Variable(W), keras.Variable(b)
        optimizer = getattr(keras.optimizers, name)(0.1)
        for _ in range(3):
            given = grads if form == "as_given" else [tf.convert_to_tensor(g) for g in grads]
            optimizer.apply_gradients(zip(given, [table, bias]))
        moved[form] = [to_numpy(table), to_numpy(bias)]
    for got, want in zip(moved["as_given"], moved["dense"]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    return moved


@pytest.mark.skipif(BACKEND != "tensorflow", reason="row-sparse gradients exist on the TensorFlow backend only")
@pytest.mark.parametrize("name,xla", [("Adam", False), ("RMSprop", False), ("Adagrad", False), ("Nadam", False),
                                      ("Adam", True)])
def test_table_gradients_move_the_table_under_keras_optimizers_as_their_dense_form_does(name, xla):
    # Keras 3's optimizers on TensorFlow square a tf.IndexedSlices gradient's values before its
    # repeated rows are summed: the layer's row-sparse gradients must survive that. Here rows repeat
    # three ways: one label shared by several rows, a label drawn as a candidate, a padded repeat.
    import tensorflow as tf

    W, b, y, h, sv = problem(11)
    y[:4, 0] = y[0, 0]
    layer = built_layer(W, b)
    svt = tuple(ops.convert_to_tensor(v) for v in sv)

    def gradients():
        with tf.GradientTape() as tape:
            total = ops.sum(layer.sampled_loss(tf.constant(y[:, 0]), tf.constant(h), sampled_values=svt))
        return [(g.values, g.indices) for g in tape.gradient(total, [layer.kernel, layer.bias])]

    if xla:  # as fit's step is on an accelerator: the gradients' shapes must stay static
        gradients = tf.function(gradients, jit_compile=True)
    grads = [tf.IndexedSlices(v, i, tf.constant(x.shape, tf.int64)) for (v, i), x in zip(gradients(), (W, b))]
    moved = _moved_as_given_and_dense(name, grads, W, b)
    assert np.any(moved["dense"][0] != W)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="row-sparse gradients exist on the TensorFlow backend only")
@pytest.mark.parametrize("name", ["Adam", "RMSprop", "Adagrad"])
def test_a_tied_table_moves_under_keras_optimizers_as_its_dense_gradient_does(name):
    # The tied Embedding reads tokens once each (no repeat of its own), but some are also labels or
    # candidates of the output layer: TensorFlow concatenates the two reads' row gradients, and
    # Keras's Adam squared a row read by both twice (0.137 off the dense update before).
    import tensorflow as tf

    W, b, y, h, sv = problem(12)
    tokens = np.array([y[0, 0], sv[0][7], 50, 51, 52, 53, 54, 55, 56, 57], np.int32)  # all distinct
    assert len(set(tokens.tolist())) == len(tokens)
    embedding = keras.layers.Embedding(60, 8)
    head = SampledSoftmax(60, 12, tied_to=embedding, seed=0)
    keras.Model(inputs := keras.Input((), dtype="int32"), head(embedding(inputs)))
    embedding.embeddings.assign(W)
    head.bias.assign(b)
    svt = tuple(ops.convert_to_tensor(v) for v in sv)
    with tf.GradientTape() as tape:
        total = ops.sum(head.sampled_loss(tf.constant(y[:, 0]), embedding(tf.constant(tokens)), sampled_values=svt))
    grads = tape.gradient(total, [embedding.embeddings, head.bias])
    moved = _moved_as_given_and_dense(name, grads, W, b)
    assert np.any(moved["dense"][0][tokens] != W[tokens])


@pytest.mark.skipif(BACKEND != "tensorflow", reason="row-sparse gradients exist on the TensorFlow backend only")
def test_lazy_adam_under_xla_updates_as_it_does_eagerly():
    # fit's step is XLA-compiled on an accelerator; LazyAdam's distinct rows have a dynamic shape there.
    import tensorflow as tf

    W0 = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    moved = {}
    for xla in (False, True):
        W, opt = keras.Variable(W0), LazyAdam(0.05)
        opt.build([W])
        step = tf.function(lambda g, i: opt.apply_gradients([(tf.IndexedSlices(g, i, tf.constant([40, 3], tf.int64)),
                                                              W)]), jit_compile=xla)
        # One shape of input (one XLA compilation), 2, 3 and 1 distinct rows among them.
        for k, rows in enumerate([[1, 5, 5], [5, 9, 1], [9, 9, 9]]):
            step(tf.constant(np.random.default_rng(k).normal(size=(len(rows), 3)).astype(np.float32)),
                 tf.constant(rows))
        moved[xla] = to_numpy(W)
    np.testing.assert_allclose(moved[True], moved[False], rtol=1e-6, atol=1e-7)
    assert np.any(moved[True] != W0)


@pytest.mark.slow
def test_lazy_adam_trains_and_round_trips_in_a_saved_model(tmp_path):
    keras.utils.set_random_seed(5)
    x, y = corpus(128)
    model, head = lm(SampledSoftmax(V_LM, num_sampled=16, seed=0), metrics=())
    model.compile(optimizer=LazyAdam(0.01), loss=head.loss)
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert model.evaluate(x, y, verbose=0) < before - 0.5
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, LazyAdam)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()


# ---------------------------------------------------------------------------------------------
# A loss and metrics that belong to their own model's layer (issue 15)


@keras.saving.register_keras_serializable(package="sampled_softmax_tests")
class SubclassedLM(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.emb = keras.layers.Embedding(V_LM, 16)
        self.head = SampledSoftmax(V_LM, 8, seed=0)

    def call(self, x, training=None):
        return self.head(self.emb(x), training=training)


def _kernel(layer):
    return np.array(to_numpy(layer.kernel))


@pytest.mark.slow
def test_a_reloaded_subclassed_model_trains_its_own_output_layer(tmp_path):
    x, y = corpus(64)
    model = SubclassedLM()
    model(x[:2])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=model.head.loss)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.head is not model.head
    before, other = _kernel(loaded.head), _kernel(model.head)
    loaded.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert not np.allclose(_kernel(loaded.head), before)  # before the fix: never changed
    np.testing.assert_array_equal(_kernel(model.head), other)  # and the first model's stays put


@pytest.mark.slow
def test_two_checkpoints_of_one_model_each_train_their_own_layer(tmp_path):
    x, y = corpus(64)
    model, head = lm(SampledSoftmax(V_LM, num_sampled=8, seed=0), metrics=())
    model.save(tmp_path / "a.keras")
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    model.save(tmp_path / "b.keras")
    a, b = (keras.models.load_model(tmp_path / n) for n in ("a.keras", "b.keras"))
    heads = [next(x for x in m.layers if isinstance(x, SampledSoftmax)) for m in (a, b)]
    kernels = [_kernel(h) for h in heads]
    a.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert not np.allclose(_kernel(heads[0]), kernels[0])
    np.testing.assert_array_equal(_kernel(heads[1]), kernels[1])
    b.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert not np.allclose(_kernel(heads[1]), kernels[1])


def test_a_loss_follows_the_layer_that_produced_its_output():
    x, y = corpus(32)
    model, head = lm(SampledSoftmax(V_LM, num_sampled=8, seed=0), metrics=())
    clone = keras.models.clone_model(model)
    clone_head = next(x for x in clone.layers if isinstance(x, SampledSoftmax))
    clone.compile(optimizer=keras.optimizers.SGD(0.5), loss=head.loss)  # the original's loss object
    kernels = _kernel(head), _kernel(clone_head)
    clone.fit(x, y, epochs=1, batch_size=32, verbose=0)
    np.testing.assert_array_equal(_kernel(head), kernels[0])
    assert not np.allclose(_kernel(clone_head), kernels[1])


def test_plain_metrics_warn_at_the_first_fit_and_wrapped_ones_do_not():
    import warnings

    x, y = corpus(64)
    model, head = lm(SampledSoftmax(V_LM, num_sampled=8, seed=0), metrics=("accuracy",))
    with pytest.warns(UserWarning, match=r"compile\(metrics=\['accuracy'\]\).*head\.metric\('accuracy'\)"):
        model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    model, head = lm(SampledSoftmax(V_LM, num_sampled=8, seed=0), metrics=())
    model.compile(optimizer="adam", loss=head.loss, metrics=[head.metric("accuracy")])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.fit(x, y, epochs=1, batch_size=32, verbose=0)


def _multi_target_model(num_true=2, ignore_index=None):
    inputs = keras.Input((), dtype="int32")
    head = SampledSoftmax(V_LM, num_sampled=8, num_true=num_true, seed=0, ignore_index=ignore_index)
    model = keras.Model(inputs, head(keras.layers.Embedding(V_LM, 16)(inputs)))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=head.loss,
                  metrics=[head.metric("accuracy"), head.metric("perplexity")])
    return model, head


def test_metrics_with_several_targets_per_position():
    rng = np.random.default_rng(0)
    x = rng.integers(0, V_LM, 64).astype(np.int32)
    y = rng.integers(0, V_LM, (64, 2)).astype(np.int32)
    y[:5, 1] = -1
    model, head = _multi_target_model(ignore_index=-1)
    hist = model.fit(x, y, batch_size=64, epochs=1, verbose=0).history
    ev = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    probs = model.predict(x, verbose=0)
    keep = y != -1
    top = probs.argmax(-1)
    accuracy = np.mean([(top[i] == y[i][keep[i]]).any() for i in range(64)])
    logp = np.log(np.take_along_axis(probs, np.where(keep, y, 0), -1))
    nll = -(np.where(keep, logp, 0).sum(1) / keep.sum(1))
    np.testing.assert_allclose(ev["accuracy"], accuracy, atol=1e-6)
    np.testing.assert_allclose(ev["perplexity"], np.exp(nll.mean()), rtol=1e-5)
    np.testing.assert_allclose(ev["perplexity"], np.exp(ev["loss"]), rtol=1e-5)
    for name in ("accuracy", "perplexity"):
        np.testing.assert_allclose(hist[name][0], ev[name], rtol=1e-5)


def test_other_metrics_with_several_targets_are_a_clear_error():
    inputs = keras.Input((), dtype="int32")
    head = SampledSoftmax(V_LM, num_sampled=8, num_true=2, seed=0)
    model = keras.Model(inputs, head(keras.layers.Embedding(V_LM, 16)(inputs)))
    model.compile(optimizer="sgd", loss=head.loss, metrics=[head.metric("sparse_top_k_categorical_accuracy")])
    with pytest.raises(SampledSoftmaxError, match=r"takes one target per position, and this layer has num_true=2"):
        model.evaluate(np.zeros(8, np.int32), np.zeros((8, 2), np.int32), verbose=0)


@pytest.mark.parametrize("mode", ["fit", "evaluate"])
def test_wrong_target_shape_with_wrapped_metrics_is_the_clear_error(mode):
    x, y = corpus(64)
    model, head = lm(SampledSoftmax(V_LM, num_sampled=8), metrics=())
    model.compile(optimizer="adam", loss=head.loss, metrics=[head.metric("accuracy"), head.metric("perplexity")])
    with pytest.raises(SampledSoftmaxError, match=r"`y_true` \(targets\) must have shape"):
        getattr(model, mode)(x, y[:, :5], batch_size=32, verbose=0)


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "jax", reason="the pattern of Keras's JAX custom train_step guide")
def test_jax_guide_custom_train_step_trains_like_fit():
    import jax

    class GuideModel(keras.Model):
        # As in Keras's guide "Customizing what happens in fit() with JAX".
        def compute_loss_and_updates(self, trainable_variables, non_trainable_variables, x, y, training=False):
            y_pred, non_trainable_variables = self.stateless_call(trainable_variables, non_trainable_variables, x,
                                                                  training=training)
            loss = self.compute_loss(x, y, y_pred)
            return loss, (y_pred, non_trainable_variables)

        def train_step(self, state, data):
            trainable_variables, non_trainable_variables, optimizer_variables, metrics_variables = state
            x, y = data
            grad_fn = jax.value_and_grad(self.compute_loss_and_updates, has_aux=True)
            (loss, (_, non_trainable_variables)), grads = grad_fn(trainable_variables, non_trainable_variables, x, y,
                                                                  training=True)
            trainable_variables, optimizer_variables = self.optimizer.stateless_apply(
                optimizer_variables, grads, trainable_variables)
            return {"loss": loss}, (trainable_variables, non_trainable_variables, optimizer_variables,
                                    metrics_variables)

    x, y = corpus(64)
    kernels = []
    for cls in (GuideModel, keras.Model):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((None,), dtype="int32")
        head = SampledSoftmax(V_LM, 8, sampler="uniform", seed=0)
        model = cls(inputs, head(keras.layers.Embedding(V_LM, 16)(inputs)))
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss=head.loss)
        start = _kernel(head)
        model.fit(x, y, epochs=2, batch_size=16, verbose=0)
        kernels.append(_kernel(head))
        assert not np.allclose(kernels[-1], start)
    np.testing.assert_allclose(kernels[0], kernels[1], rtol=1e-5, atol=1e-6)

    # The default sampler (learned_unigram) cannot update its counts there: it trains on the
    # counts as they are and says so once; chosen explicitly, it is an error (below).
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None,), dtype="int32")
    head = SampledSoftmax(V_LM, 8, seed=0)
    model = GuideModel(inputs, head(keras.layers.Embedding(V_LM, 16)(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=head.loss)
    start = _kernel(head)
    with pytest.warns(UserWarning, match="the default sampler, 'learned_unigram', adds each step's targets"):
        model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert not np.allclose(_kernel(head), start)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(head.sampling_counts), np.ones(V_LM))
    head = SampledSoftmax(V_LM, 8, sampler="learned_unigram", seed=0)
    model = GuideModel(inputs, head(keras.layers.Embedding(V_LM, 16)(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=head.loss)
    with pytest.raises(Exception, match="loss runs outside the model's stateless call"):
        model.fit(x, y, epochs=1, batch_size=16, verbose=0)


@pytest.mark.skipif(BACKEND != "jax", reason="JAX reports a compiled step's error at the end of its traceback")
def test_out_of_range_targets_under_jax_are_said_on_stderr_too(capfd):
    x, y = corpus(64)
    y = y.copy()
    y[3, 2] = V_LM + 5
    model, _ = lm(SampledSoftmax(V_LM, num_sampled=8))
    with pytest.raises(Exception):
        model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    err = capfd.readouterr().err
    assert "sampled_softmax.SampledSoftmaxError: `y_true` (targets) must be in [0, 119]" in err


KERAS_MIRRORED = r"""
import os
os.environ["KERAS_BACKEND"] = "tensorflow"
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from sampled_softmax.keras import SampledSoftmax
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    inputs = keras.Input((), dtype="int32")
    head = SampledSoftmax(20, 4, sampler="learned_unigram", seed=0)
    model = keras.Model(inputs, head(keras.layers.Embedding(20, 4)(inputs)))
    model.compile(optimizer="sgd", loss=head.loss)
y = np.array([1, 1, 2, 3, 7, 7, 7, 9], np.int32)  # one batch of 8: 4 targets per replica
dataset = tf.data.Dataset.from_tensor_slices((np.zeros(8, np.int32), y)).batch(8)
model.fit(dataset, epochs=1, verbose=0)
expected = np.ones(20) + np.bincount(y, minlength=20)
copies = [v.numpy() for v in strategy.experimental_local_results(head.sampling_counts.value)]
for c in copies:
    np.testing.assert_array_equal(c, expected)
print("counts agree")
"""


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="MirroredStrategy")
def test_learned_counts_aggregate_across_mirrored_replicas():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", KERAS_MIRRORED], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "counts agree" in out.stdout


@pytest.mark.parametrize("loss", ["sparse_categorical_crossentropy",
                                  lambda: keras.losses.SparseCategoricalCrossentropy()], ids=["name", "object"])
def test_a_dense_softmax_loss_on_the_layer_is_a_clear_error(loss):
    x, y = corpus(64)
    model, head = lm(SampledSoftmax(V_LM, num_sampled=8), metrics=())
    model.compile(optimizer="adam", loss=loss if isinstance(loss, str) else loss())
    before = _kernel(head)
    with pytest.raises(SampledSoftmaxError, match=r"compiled with loss=.*sparse_categorical_crossentropy.*loss=head\.loss"):
        model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    if BACKEND != "jax":  # Keras's JAX fit leaves its variables detached after any error in a step
        np.testing.assert_array_equal(_kernel(head), before)
