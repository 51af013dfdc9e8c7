"""The fused table optimizer of the Keras layer (``SampledSoftmax(table_optimizer=...)``), on the
backend ``KERAS_BACKEND`` names: ``fit`` with the fused step equals ``fit`` of the same layer
unfused with the Keras optimizer of the same arithmetic, on the same draws (the layer's seed);
the table is outside the trainable set; the state saves and restores mid-training."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from sampled_softmax import SampledSoftmaxError  # noqa: E402
from sampled_softmax.keras import LazyAdam, RowAdagrad, RowAdam, RowSGD, SampledSoftmax  # noqa: E402

from keras_layer_helpers import BACKEND, to_numpy  # noqa: E402

V, D, N = 40, 6, 48


def data(seed=0, ignore=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D)).astype("float32")
    y = rng.integers(0, V, size=N).astype("int32")
    y[:3] = y[3]  # a repeated label in a batch
    if ignore:
        y[5::7] = -100
    return x, y


def model(table_optimizer, optimizer, *, num_sampled=12, loss_weight=None, num_classes=V, **layer_kwargs):
    keras.utils.set_random_seed(4)
    head = SampledSoftmax(num_classes, num_sampled, sampler="uniform", seed=7, table_optimizer=table_optimizer, **layer_kwargs)
    m = keras.Sequential([keras.Input((D,)), keras.layers.Dense(D, name="hidden"), head])
    m.compile(optimizer=optimizer, loss=head.loss, loss_weights=loss_weight)
    return m, head


def weights(m, head):
    out = {"kernel": to_numpy(head.kernel), "hidden": to_numpy(m.get_layer("hidden").kernel)}
    if head.use_bias:
        out["bias"] = to_numpy(head.bias)
    return out


def assert_same(a, b, rtol=1e-5, atol=1e-6):
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=atol, err_msg=key)


@pytest.mark.parametrize("case", ["plain", "sample_weight", "ignore_index", "loss_weight", "no_bias", "nce", "smoothing"])
def test_row_sgd_in_fit_equals_sgd_on_the_unfused_layer(case):
    x, y = data(1, ignore=case == "ignore_index")
    kwargs = {"use_bias": case != "no_bias", "loss": "nce" if case == "nce" else "sampled_softmax",
              "label_smoothing": 0.1 if case == "smoothing" else 0.0, "loss_weight": 0.5 if case == "loss_weight" else None}
    sw = np.linspace(0.2, 2.0, N).astype("float32") if case == "sample_weight" else None
    fused, head = model(RowSGD(0.3), keras.optimizers.SGD(0.3), **kwargs)
    plain, plain_head = model(None, keras.optimizers.SGD(0.3), **kwargs)
    before = weights(fused, head)
    assert_same(before, weights(plain, plain_head), 0, 0)  # the same initial weights
    for m in (fused, plain):
        m.fit(x, y, sample_weight=sw, batch_size=16, epochs=2, verbose=0, shuffle=False)
    after = weights(fused, head)
    assert_same(after, weights(plain, plain_head))
    assert not np.allclose(after["kernel"], before["kernel"])  # the table did move
    assert [w.path.split("/")[-1] for w in head.trainable_weights] == []
    assert {"kernel", "table_step"} <= {w.path.split("/")[-1] for w in head.non_trainable_weights}
    assert float(to_numpy(head._table_state["step"])) == 6  # 3 steps an epoch


def test_row_adam_in_fit_equals_adam_where_every_row_is_touched():
    """With every class a label in every batch, lazy Adam is Adam: the fused RowAdam equals
    Keras's Adam on the unfused layer (epsilon far below the moments: Keras puts it outside the
    bias correction, PyTorch's form inside)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(N, D)).astype("float32")
    y = np.concatenate([np.r_[rng.permutation(12), rng.integers(0, 12, 4)] for _ in range(N // 16)]).astype("int32")
    fused, head = model(RowAdam(0.01, epsilon=1e-12), keras.optimizers.Adam(0.01, epsilon=1e-12), num_classes=12,
                        num_sampled=5)
    plain, plain_head = model(None, keras.optimizers.Adam(0.01, epsilon=1e-12), num_classes=12, num_sampled=5)
    for m in (fused, plain):
        m.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    assert_same(weights(fused, head), weights(plain, plain_head), rtol=2e-4, atol=2e-6)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="LazyAdam is lazy on TensorFlow's row-sparse gradients only")
def test_row_adam_equals_lazy_adam_on_tensorflow_with_untouched_rows():
    x, y = data(3)
    fused, head = model(RowAdam(0.01, epsilon=1e-12), LazyAdam(0.01, epsilon=1e-12))
    plain, plain_head = model(None, LazyAdam(0.01, epsilon=1e-12))
    for m in (fused, plain):
        m.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    assert_same(weights(fused, head), weights(plain, plain_head), rtol=2e-4, atol=2e-6)


def test_rows_a_step_never_touches_keep_their_values_and_state():
    """Labels from 10 classes, 3 candidates a step, 2 steps: at most 16 of 200 rows are touched;
    every other row and its moments stay as they were (RowAdam, rowwise)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(32, D)).astype("float32")
    y = rng.integers(0, 10, size=32).astype("int32")
    keras.utils.set_random_seed(4)
    head = SampledSoftmax(200, 3, sampler="uniform", seed=7, table_optimizer=RowAdam(0.05, rowwise=True))
    m = keras.Sequential([keras.Input((D,)), keras.layers.Dense(D), head])
    m.compile(optimizer="sgd", loss=head.loss)
    m.build((None, D))
    before = to_numpy(head.kernel).copy()
    m.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    moved = np.flatnonzero(np.any(to_numpy(head.kernel) != before, axis=1))
    assert set(np.unique(y)) <= set(moved) and len(moved) <= 10 + 2 * 3
    state = to_numpy(head._table_state["kernel_exp_avg_sq"])
    assert state.shape == (200,)  # one second moment a row
    untouched = np.setdiff1d(np.arange(200), moved)
    assert np.all(state[untouched] == 0) and np.all(state[moved] > 0)


def test_row_adagrad_first_step_is_the_row_wise_formula():
    """One step from zero accumulators: w_r -= lr g_r / (sqrt(mean(g_r^2)) + eps), with g_r the
    row's gradient, read off one SGD step of the unfused layer on the same draw."""
    x, y = data(6)
    fused, head = model(RowAdagrad(0.1), keras.optimizers.SGD(0.0))
    plain, plain_head = model(None, keras.optimizers.SGD(1.0))
    w0 = to_numpy(head.kernel).copy()
    for m in (fused, plain):
        m.fit(x[:16], y[:16], batch_size=16, epochs=1, verbose=0, shuffle=False)
    g = w0 - to_numpy(plain_head.kernel)  # SGD at rate 1: the gradient itself
    expected = w0 - 0.1 * g / (np.sqrt(np.mean(g ** 2, axis=1, keepdims=True)) + 1e-10)
    touched = np.any(g != 0, axis=1)
    np.testing.assert_allclose(to_numpy(head.kernel)[touched], expected[touched], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(to_numpy(head.kernel)[~touched], w0[~touched])


def test_state_saved_mid_training_continues_the_same_trajectory(tmp_path):
    x, y = data(7)
    m, head = model(RowAdam(0.02), keras.optimizers.Adam(0.02))
    m.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    path = str(tmp_path / "m.keras")
    m.save(path)
    restored = keras.models.load_model(path)
    restored_head = restored.layers[-1]
    assert restored_head.table_optimizer == RowAdam(0.02)
    np.testing.assert_array_equal(to_numpy(restored_head._table_state["kernel_exp_avg"]),
                                  to_numpy(head._table_state["kernel_exp_avg"]))
    for mm in (m, restored):
        mm.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_allclose(to_numpy(restored_head.kernel), to_numpy(head.kernel), rtol=1e-6, atol=1e-7)
    assert float(to_numpy(restored_head._table_state["step"])) == 6
    # evaluate and predict are the layer's exact softmax, as without a table optimizer
    probs = restored.predict(x, verbose=0)
    assert probs.shape == (N, V) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)
    restored.evaluate(x, y, verbose=0)


def test_bad_settings_are_clear_errors():
    emb = keras.layers.Embedding(V, D)
    with pytest.raises(SampledSoftmaxError, match=r"`table_optimizer` needs the layer's own table"):
        SampledSoftmax(V, 4, tied_to=emb, table_optimizer=RowSGD())
    with pytest.raises(SampledSoftmaxError, match=r"`kernel_regularizer` and `bias_regularizer` cannot be used"):
        SampledSoftmax(V, 4, kernel_regularizer="l2", table_optimizer=RowSGD())
    with pytest.raises(TypeError, match=r"`table_optimizer` must be a RowSGD, RowAdagrad or RowAdam .*received str"):
        SampledSoftmax(V, 4, table_optimizer="adam")
    with pytest.raises(SampledSoftmaxError, match=r"`beta_1` and `beta_2` must be in \[0, 1\); received 1.0"):
        RowAdam(beta_1=1.0)
    with pytest.raises(SampledSoftmaxError, match=r"`learning_rate` must be positive and finite; received 0.0"):
        RowSGD(0.0)
    m, head = model(RowSGD(0.1), "sgd")
    x, y = data(8)
    m.layers[-1].trainable = True  # the table made trainable again
    head.kernel.trainable = True
    with pytest.raises(SampledSoftmaxError, match=r"its table is trainable again"):
        m.fit(x, y, batch_size=16, epochs=1, verbose=0)


def test_the_unreduced_loss_call_is_refused():
    m, head = model(RowSGD(0.1), "sgd")
    x, y = data(9)
    h = m.get_layer("hidden")(x)
    y_pred = head(h, training=True)
    with pytest.raises(SampledSoftmaxError, match=r"has a table_optimizer, .* cannot run called as `loss.call"):
        head.loss.call(y, y_pred)
