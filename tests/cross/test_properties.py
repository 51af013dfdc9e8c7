"""Property tests (hypothesis, derandomized and budgeted in conftest): every front end against
the reference and the loss's invariances, over random shapes and configurations.

PyTorch runs float64 (agreement to 1e-9); TensorFlow float64 with ``tf.nn``'s arguments and the
keyword-only extras of its drop-in (label smoothing, ignore index, the switch for log Q); the
Keras layer float32 (its compute dtype) on whichever backend this run uses.
"""

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sampled_softmax import reference as R
from sampled_softmax.torch import sampled_softmax_loss

configs = st.fixed_dictionaries({
    "V": st.integers(3, 40), "D": st.integers(1, 8), "B": st.integers(1, 6), "T": st.integers(1, 3),
    "S": st.integers(1, 12), "hits": st.booleans(), "eps": st.sampled_from([0.0, 0.1, 0.7]),
    "ignore": st.booleans(), "log_q": st.booleans(), "seed": st.integers(0, 2**31 - 1),
})


def build(c):
    rng = np.random.default_rng(c["seed"])
    W = rng.normal(size=(c["V"], c["D"]))
    b = rng.normal(size=c["V"])
    h = rng.normal(size=(c["B"], c["D"])) * 3
    y = rng.integers(0, c["V"], size=(c["B"], c["T"]))
    cand = rng.integers(0, c["V"], size=c["S"])  # duplicates and hits happen
    if c["ignore"]:
        y[rng.random(y.shape) < 0.3] = -1
    sv = (cand, rng.uniform(0.05, 3, (c["B"], c["T"])).astype(np.float32).astype(np.float64),
          rng.uniform(0.05, 3, c["S"]).astype(np.float32).astype(np.float64))
    kw = dict(remove_accidental_hits=c["hits"], label_smoothing=c["eps"],
              ignore_index=-1 if c["ignore"] else None, subtract_log_q=c["log_q"])
    return W, b, y, h, sv, kw


def torch_loss(W, b, y, h, sv, kw, reduction="none", sparse=False):
    tW, tb, th = (torch.tensor(x, requires_grad=True) for x in (W, b, h))
    loss = sampled_softmax_loss(tW, tb, torch.tensor(y), th, len(sv[0]), W.shape[0], y.shape[1],
                                sampled_values=tuple(torch.tensor(v) for v in sv), reduction=reduction,
                                sparse=sparse, **kw)
    loss.sum().backward()
    dense = [t.grad.to_dense() if t.grad.is_sparse else t.grad for t in (tW, tb, th)]
    return loss.detach(), dense


def tensorflow_loss(W, b, y, h, sv, kw):
    tf = pytest.importorskip("tensorflow")
    from sampled_softmax import tensorflow as sst

    tW, tb, th = (tf.Variable(x) for x in (W, b, h))
    with tf.GradientTape() as tape:
        loss = sst.sampled_softmax_loss(tW, tb, tf.constant(y), th, len(sv[0]), W.shape[0], y.shape[1],
                                        sampled_values=tuple(tf.constant(v) for v in sv), **kw)
    grads = tape.gradient(loss, [tW, tb, th])
    return loss.numpy(), [tf.convert_to_tensor(g).numpy() for g in grads]


def keras_loss(W, b, y, h, sv, kw):
    pytest.importorskip("keras")
    from keras_layer_helpers import built_layer, sampled_loss_and_grads

    layer = built_layer(W, b, num_sampled=1, num_true=y.shape[1], remove_accidental_hits=kw["remove_accidental_hits"],
                        subtract_log_q=kw["subtract_log_q"], label_smoothing=kw["label_smoothing"],
                        ignore_index=kw["ignore_index"])
    sv32 = (sv[0].astype(np.int32), sv[1].astype(np.float32), sv[2].astype(np.float32))
    loss, (gh, gW, gb) = sampled_loss_and_grads(layer, y.astype(np.int32), h.astype(np.float32), sv32)
    return loss, [gW, gb, gh]


@given(configs)
def test_agrees_with_reference(c):
    W, b, y, h, sv, kw = build(c)
    loss, (gW, gb, gh) = torch_loss(W, b, y, h, sv, kw)
    np.testing.assert_allclose(loss.numpy(), R.sampled_softmax_loss(W, b, y, h, sv, **kw), rtol=1e-9, atol=1e-10)
    rh, rW, rb = R.sampled_softmax_grads(W, b, y, h, sv, **kw)
    for got, want in ((gW, rW), (gb, rb), (gh, rh)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-10)


@given(configs)
def test_tensorflow_agrees_with_reference(c):
    W, b, y, h, sv, kw = build(c)
    loss, (gW, gb, gh) = tensorflow_loss(W, b, y, h, sv, kw)
    np.testing.assert_allclose(loss, R.sampled_softmax_loss(W, b, y, h, sv, **kw), rtol=1e-9, atol=1e-10)
    rh, rW, rb = R.sampled_softmax_grads(W, b, y, h, sv, **kw)
    for got, want in ((gW, rW), (gb, rb), (gh, rh)):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)


# Each example builds the layer anew (2-4 s on JAX and PyTorch, run eagerly): the full budget on
# the main run's backend (TensorFlow), a third of it on the two others, whose every configuration
# of the parity grid (tests/frontends/keras/test_keras.py) runs as well.
KERAS_EXAMPLES = 12 if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow" else 4


@settings(max_examples=KERAS_EXAMPLES)
@given(configs)
def test_keras_agrees_with_reference(c):
    W, b, y, h, sv, kw = build(c)
    # The reference sees exactly the float32 values the layer computes with.
    W, b, h = (x.astype(np.float32).astype(np.float64) for x in (W, b, h))
    loss, grads = keras_loss(W, b, y, h, sv, kw)
    want_loss = R.sampled_softmax_loss(W, b, y, h, sv, **kw)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want_loss).max()))
    rh, rW, rb = R.sampled_softmax_grads(W, b, y, h, sv, **kw)
    for got, want in zip(grads, (rW, rb, rh)):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(want).max()))


@given(configs, st.floats(-50, 50))
def test_adding_a_constant_to_every_logit_changes_nothing(c, shift):
    W, b, y, h, sv, kw = build(c)
    # A constant added to every bias shifts every logit of every row by the same amount.
    base, _ = torch_loss(W, b, y, h, sv, kw)
    shifted, _ = torch_loss(W, b + shift, y, h, sv, kw)
    np.testing.assert_allclose(shifted.numpy(), base.numpy(), rtol=1e-9, atol=1e-8)


@given(configs)
def test_permuting_candidates_changes_nothing(c):
    W, b, y, h, sv, kw = build(c)
    perm = np.random.default_rng(c["seed"] + 1).permutation(len(sv[0]))
    base, g0 = torch_loss(W, b, y, h, sv, kw)
    permuted, g1 = torch_loss(W, b, y, h, (sv[0][perm], sv[1], sv[2][perm]), kw)
    np.testing.assert_allclose(permuted.numpy(), base.numpy(), rtol=1e-10, atol=1e-12)
    for a, p in zip(g0, g1):
        np.testing.assert_allclose(a.numpy(), p.numpy(), rtol=1e-9, atol=1e-12)


@given(configs)
def test_loss_is_non_negative_with_one_label(c):
    c = dict(c, T=1, eps=0.0)
    W, b, y, h, sv, kw = build(c)
    loss, _ = torch_loss(W, b, y, h, sv, kw)
    assert torch.all(loss >= -1e-12)


@given(configs)
def test_mean_is_none_averaged_over_kept_rows_and_ignored_rows_get_no_gradient(c):
    c = dict(c, ignore=True)
    W, b, y, h, sv, kw = build(c)
    none, (_, _, gh) = torch_loss(W, b, y, h, sv, kw)
    kept = (y != -1).any(1)
    mean, _ = torch_loss(W, b, y, h, sv, kw, reduction="mean")
    if kept.any():
        np.testing.assert_allclose(mean.numpy(), none.numpy()[kept].mean(), rtol=1e-12)
    else:
        assert torch.isnan(mean)
    assert torch.all(none[~torch.tensor(kept)] == 0)
    assert torch.all(gh[~torch.tensor(kept)] == 0)


@given(configs)
def test_sparse_and_dense_gradients_agree(c):
    W, b, y, h, sv, kw = build(c)
    _, dense = torch_loss(W, b, y, h, sv, kw)
    _, sparse = torch_loss(W, b, y, h, sv, kw, sparse=True)
    for d, s in zip(dense, sparse):
        np.testing.assert_allclose(s.numpy(), d.numpy(), rtol=1e-12, atol=1e-14)


def _invariances(loss_fn, c, rtol, atol):
    """Shift of every logit, permutation of the candidates, non-negativity with one label."""
    W, b, y, h, sv, kw = build(c)
    base, g0 = loss_fn(W, b, y, h, sv, kw)
    shifted, _ = loss_fn(W, b + 7.0, y, h, sv, kw)
    np.testing.assert_allclose(shifted, base, rtol=rtol, atol=atol)
    perm = np.random.default_rng(c["seed"] + 1).permutation(len(sv[0]))
    permuted, g1 = loss_fn(W, b, y, h, (sv[0][perm], sv[1], sv[2][perm]), kw)
    np.testing.assert_allclose(permuted, base, rtol=rtol, atol=atol)
    for a, p in zip(g0, g1):
        np.testing.assert_allclose(p, a, rtol=rtol, atol=atol)
    if c["T"] == 1 and c["eps"] == 0:
        assert np.all(base >= -atol)


@given(configs)
def test_tensorflow_invariances(c):
    _invariances(tensorflow_loss, c, rtol=1e-9, atol=1e-9)


@settings(max_examples=5 if KERAS_EXAMPLES == 12 else 2)
@given(configs)
def test_keras_invariances(c):
    _invariances(keras_loss, c, rtol=1e-4, atol=2e-4)


@given(configs)
def test_masked_candidates_get_exactly_zero_gradient(c):
    """A class whose only appearances are masked columns (padding slots, or accidental hits of
    the rows it labels, with those rows ignored) receives exactly zero gradient, everywhere."""
    c = dict(c, V=max(c["V"], 6), S=max(c["S"], 3), hits=True)
    W, b, y, h, sv, kw = build(c)
    y = np.where(np.isin(y, [0, 1]), 2, y)  # classes 0 and 1 are nobody's label ...
    cand, tc, sc = (np.array(v) for v in sv)
    cand[:2], sc[:2] = [0, 1], np.inf  # ... and appear only in padding slots
    cand = np.where(np.isin(cand[2:], [0, 1]), 2, cand[2:])
    cand = np.concatenate([[0, 1], cand])
    fronts = [("torch", lambda *a: [g.numpy() for g in torch_loss(*a)[1]]),
              ("tensorflow", lambda *a: tensorflow_loss(*a)[1])]
    for name, grads_of in fronts:
        gW, gb, _ = grads_of(W, b, y, h, (cand, tc, sc), kw)
        assert np.all(gW[:2] == 0) and np.all(gb[:2] == 0), name
