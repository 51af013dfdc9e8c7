"""Numerics at the edges, on every front end: logits around +-1e4, float16/bfloat16 inputs
accumulated in float32, label smoothing together with accidental hits, rows whose every
candidate is an accidental hit, and very skewed expected counts.

The reference always runs in float64 on exactly the values the front end computed with (low
precision inputs are rounded first), so each tolerance measures the front end's arithmetic,
not the rounding of its inputs.
"""

import numpy as np
import pytest

from sampled_softmax import reference as R
from test_properties import keras_loss, tensorflow_loss, torch_loss

FRONTS = ("reference", "torch", "tensorflow", "keras")


def run(front, W, b, y, h, sv, **options):
    """Per-row loss and (dW, db, dh) as NumPy, from ``front`` (the reference in float64)."""
    kw = dict(remove_accidental_hits=True, subtract_log_q=True, label_smoothing=0.0, ignore_index=None)
    kw.update(options)
    if front == "reference":
        dh, dW, db = R.sampled_softmax_grads(W, b, y, h, sv, **kw)
        return R.sampled_softmax_loss(W, b, y, h, sv, **kw), [dW, db, dh]
    if front == "torch":
        loss, grads = torch_loss(W, b, y, h, sv, kw)
        return loss.numpy(), [g.numpy() for g in grads]
    if front == "tensorflow":
        if kw["label_smoothing"] or kw["ignore_index"] is not None or not kw["subtract_log_q"]:
            pytest.skip("not an option of tf.nn.sampled_softmax_loss's signature")
        return tensorflow_loss(W, b, y, h, sv, kw)
    return keras_loss(W, b, y, h, sv, kw)


def tolerance(front, scale=1.0):
    """float64 fronts agree to 1e-9 relative; the Keras layer computes in float32."""
    return dict(rtol=1e-9, atol=1e-9 * scale) if front in ("torch", "tensorflow", "reference") else \
        dict(rtol=1e-5, atol=2e-6 * scale)


def problem(seed, *, V=30, D=4, B=4, T=1, S=8, logit_scale=None):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(V, D))
    b = rng.normal(size=V)
    h = rng.normal(size=(B, D))
    if logit_scale is not None:  # the largest |h . W_k| becomes logit_scale
        W *= logit_scale / np.abs(h @ W.T).max()
    W, b, h = (x.astype(np.float32).astype(np.float64) for x in (W, b, h))  # exact in float32 too
    y = rng.integers(0, V, size=(B, T))
    cand = rng.choice(V, size=S, replace=False)
    cand[:2] = y[:2, 0]  # accidental hits
    sv = (cand, np.full((B, T), 0.5), rng.uniform(0.1, 2.0, S).astype(np.float32).astype(np.float64))
    return W, b, y, h, sv


def assert_close_to_reference(front, got, want):
    loss, grads = got
    want_loss, want_grads = want
    assert np.all(np.isfinite(loss)) and all(np.all(np.isfinite(g)) for g in grads)
    scale = max(1.0, np.abs(want_loss).max())
    np.testing.assert_allclose(loss, want_loss, **tolerance(front, scale))
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(g, w, **tolerance(front, max(1.0, np.abs(w).max())))


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_logits_around_1e4_give_finite_correct_losses_and_gradients(front, sign):
    W, b, y, h, sv = problem(1, logit_scale=1e4)
    W = sign * W
    got = run(front, W, b, y, h, sv)
    assert np.abs(h @ W.T).max() == pytest.approx(1e4, rel=1e-6)
    assert np.abs(got[0]).max() > 100  # the logits really are large: so is the loss
    assert_close_to_reference(front, got, run("reference", W, b, y, h, sv))


@pytest.mark.parametrize("front", ("reference", "torch", "keras"))
@pytest.mark.parametrize("logit_scale", [None, 1e4])
def test_label_smoothing_with_accidental_hits_is_finite_and_correct(front, logit_scale):
    # TensorFlow's -FLT_MAX for removed hits times a smoothed target gave inf; a true mask cannot.
    W, b, y, h, sv = problem(2, T=2, logit_scale=logit_scale)
    cand = sv[0].copy()
    cand[2:4] = y[0]  # row 0: both of its labels drawn as candidates
    sv = (cand, sv[1], sv[2])
    got = run(front, W, b, y, h, sv, label_smoothing=0.3)
    assert_close_to_reference(front, got, run("reference", W, b, y, h, sv, label_smoothing=0.3))


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("T", [1, 2])
def test_a_row_whose_every_candidate_is_an_accidental_hit(front, T):
    W, b, y, h, sv = problem(3, B=3, T=T, S=4)
    y[0] = np.arange(T) + 5
    cand = np.resize(y[0], 4)  # row 0: every candidate is one of its labels
    sv = (cand, sv[1], sv[2][:4])
    loss, (dW, db, dh) = run(front, W, b, y, h, sv)
    assert_close_to_reference(front, (loss, [dW, db, dh]), run("reference", W, b, y, h, sv))
    if T == 1:
        # Only the true column is left in row 0's softmax: probability 1, loss and gradient 0.
        assert abs(loss[0]) <= tolerance(front)["atol"] * 10
        assert np.all(np.abs(dh[0]) <= tolerance(front)["atol"] * 10)
    else:
        # Two columns left, target 1/2 each: the loss is lse(t1, t2) - (t1 + t2) / 2.
        t = h[0] @ W[y[0]].T + b[y[0]] - np.log(0.5)
        want = np.logaddexp(*t) - t.mean()
        np.testing.assert_allclose(loss[0], want, rtol=1e-5)


@pytest.mark.parametrize("front", FRONTS)
def test_very_skewed_expected_counts_stay_finite_and_correct(front):
    W, b, y, h, sv = problem(4, S=6)
    # Expected counts from nearly never (1e-30: log-Q adds +69 to the logit) to nearly every draw.
    sc = np.array([1e-30, 1e-12, 6.0 - 1e-6, 5.999, 1.0, 1e-3]).astype(np.float32).astype(np.float64)
    tc = np.array([[1e-30], [6.0 - 1e-6], [1e-9], [1.0]]).astype(np.float32).astype(np.float64)
    sv = (sv[0], tc, sc)
    got = run(front, W, b, y, h, sv)
    assert_close_to_reference(front, got, run("reference", W, b, y, h, sv))


def _round(x, dtype):
    import ml_dtypes

    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16
    return x.astype(np_dtype).astype(np.float64)


@pytest.mark.parametrize("front", ("torch", "tensorflow", "keras"))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs_accumulate_in_float32(front, dtype):
    """Stated tolerance: within 1e-5 relative (plus 1e-5 absolute) of float64 on the same rounded
    values, where computing in the low precision itself would be off by about 1e-3 (float16)
    and 1e-2 (bfloat16)."""
    W, b, y, h, sv = problem(5, V=50, D=64, B=8, S=16)
    W, b, h = (_round(x, dtype) for x in (W, b, h))
    want = R.sampled_softmax_loss(W, b, y, h, sv)
    sv32 = tuple(np.asarray(v, np.float32) if i else v for i, v in enumerate(sv))
    if front == "torch":
        import torch

        from sampled_softmax.torch import sampled_softmax_loss

        td = getattr(torch, dtype)
        loss = sampled_softmax_loss(*(torch.tensor(x, dtype=td) for x in (W, b)), torch.tensor(y),
                                    torch.tensor(h, dtype=td), 16, 50, sampled_values=tuple(map(torch.tensor, sv32)))
        assert loss.dtype == torch.float32
        loss = loss.numpy()
    elif front == "tensorflow":
        tf = pytest.importorskip("tensorflow")
        from sampled_softmax import tensorflow as sst

        td = getattr(tf, dtype)
        loss = sst.sampled_softmax_loss(*(tf.cast(tf.constant(x), td) for x in (W, b)), tf.constant(y),
                                        tf.cast(tf.constant(h), td), 16, 50, sampled_values=sv32)
        assert loss.dtype == tf.float32
        loss = loss.numpy()
    else:
        keras = pytest.importorskip("keras")
        from keras_layer_helpers import built_layer

        layer = built_layer(W, b, dtype=f"mixed_{dtype}")
        out = layer.sampled_loss(keras.ops.convert_to_tensor(y), keras.ops.cast(keras.ops.convert_to_tensor(h), dtype),
                                 sampled_values=tuple(keras.ops.convert_to_tensor(v) for v in sv32))
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
        loss = keras.ops.convert_to_numpy(out)
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("front", ("torch", "tensorflow", "keras"))
@pytest.mark.parametrize("draw", ["with_replacement", "unique_exact"])
def test_a_very_skewed_unigram_sampler_gives_finite_losses(front, draw):
    # One class holds all but 1e-10 of the mass: expected counts near S for it, near 0 for the rest.
    V, D, B, S = 200, 8, 16, 32
    counts = np.ones(V)
    counts[7] = 1e12
    rng = np.random.default_rng(6)
    W, h = rng.normal(size=(V, D)).astype(np.float32), rng.normal(size=(B, D)).astype(np.float32)
    y = rng.integers(0, V, size=B)
    if front == "torch":
        import torch

        from sampled_softmax.torch import UnigramSampler, sampled_softmax_loss

        sampler = UnigramSampler(V, counts, draw=draw)
        g = torch.Generator().manual_seed(0)
        sv = sampler(torch.tensor(y), S, generator=g)
        loss = sampled_softmax_loss(torch.tensor(W), None, torch.tensor(y), torch.tensor(h), S, V,
                                    sampled_values=sv).numpy()
    elif front == "tensorflow":
        tf = pytest.importorskip("tensorflow")
        from sampled_softmax import tensorflow as sst

        yt = tf.constant(y[:, None])
        sv = sst.unigram_candidate_sampler(yt, S, V, counts, draw=draw, generator=tf.random.Generator.from_seed(0))
        loss = sst.sampled_softmax_loss(tf.constant(W), None, yt, tf.constant(h), S, V, sampled_values=sv).numpy()
    else:
        keras = pytest.importorskip("keras")
        from sampled_softmax.keras import SampledSoftmax

        layer = SampledSoftmax(V, S, sampler="unigram", unigrams=counts, draw=draw, use_bias=False, seed=0)
        layer.build((None, D))
        sv = layer.sample(keras.ops.convert_to_tensor(y[:, None].astype(np.int32)))
        loss = keras.ops.convert_to_numpy(layer.sampled_loss(keras.ops.convert_to_tensor(y), keras.ops.convert_to_tensor(h)))
        sv = tuple(keras.ops.convert_to_numpy(v) for v in sv)
    tc, sc = np.asarray(sv[1], np.float64), np.asarray(sv[2], np.float64)
    assert tc.min() < 1e-6 and sc[np.isfinite(sc)].max() > 0.5  # the skew is really there
    assert np.all(np.isfinite(loss)) and np.all(loss >= 0)
