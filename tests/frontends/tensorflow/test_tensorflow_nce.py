"""``sampled_softmax.tensorflow.nce_loss`` against ``tf.nn.nce_loss`` itself (identical
``sampled_values``) and the NumPy reference."""

import itertools

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from sampled_softmax import reference as R  # noqa: E402
from sampled_softmax import tensorflow as sst  # noqa: E402

from test_tensorflow import loss_and_grads, problem  # noqa: E402  (same folder: one problem, one runner)


@pytest.mark.parametrize("T,hits,shards,dtype", list(itertools.product(
    [1, 3], [False, True], [None, 3], [np.float32, np.float64])))
def test_matches_tf_nn_nce_loss(T, hits, shards, dtype):
    W, b, y, h, sv = problem(T * 5 + hits, T=T, dtype=dtype)
    results = [loss_and_grads(fn, W, b, y, h, sv, T, hits, shards) for fn in (sst.nce_loss, tf.nn.nce_loss)]
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    (ours, g_ours), (ref, g_ref) = results
    np.testing.assert_allclose(ours, ref, **tol)
    assert [isinstance(a, tf.IndexedSlices) for a in g_ours] == [isinstance(r, tf.IndexedSlices) for r in g_ref]
    for a, r in zip(g_ours, g_ref):
        np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(r).numpy(), **tol)


def _matches_the_reference(mode, loss_name, seed, T, kw):
    """The TensorFlow loss ``loss_name`` and its gradients, eagerly, in a graph or under XLA,
    against the reference's, with an ignored label."""
    W, b, y, h, sv = problem(seed, T=T, dtype=np.float64)
    y[1, 0] = -1  # an ignored label
    Wv, bv, hv = tf.Variable(W), tf.Variable(b), tf.Variable(h)

    def step():
        with tf.GradientTape() as tape:
            loss = getattr(sst, loss_name)(Wv, bv, tf.constant(y), hv, len(sv[0]), W.shape[0], num_true=T,
                                           sampled_values=tuple(tf.constant(v) for v in sv), ignore_index=-1, **kw)
            total = tf.reduce_sum(loss)
        return loss, tape.gradient(total, [hv, Wv, bv])

    if mode != "eager":
        step = tf.function(step, jit_compile=mode == "xla")
    loss, grads = step()
    np.testing.assert_allclose(loss.numpy(), getattr(R, loss_name)(W, b, y, h, sv, ignore_index=-1, **kw), rtol=1e-10)
    reference_grads = getattr(R, loss_name.replace("_loss", "_grads"))(W, b, y, h, sv, ignore_index=-1, **kw)
    for ours, ref in zip(grads, reference_grads):
        np.testing.assert_allclose(tf.convert_to_tensor(ours).numpy(), ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("T,hits,subtract", [(1, False, True), (3, True, True), (2, False, False)])
def test_matches_the_reference(mode, T, hits, subtract):
    _matches_the_reference(mode, "nce_loss", 7, T, dict(remove_accidental_hits=hits, subtract_log_q=subtract))


def test_library_samplers_compile_with_nce_under_xla():
    W, b, y, h, _ = problem(3)
    gen = tf.random.Generator.from_seed(0)

    @tf.function(jit_compile=True)
    def step(labels):
        sv = sst.log_uniform_candidate_sampler(labels, 20, W.shape[0], generator=gen)
        return sst.nce_loss(W, b, labels, h, 20, W.shape[0], sampled_values=sv)

    assert np.all(np.isfinite(step(tf.constant(y)).numpy()))


def test_default_sampler_with_a_global_seed_draws_what_tf_nn_draws():
    W, b, y, h, _ = problem(5, V=1000)
    losses = []
    for fn in (tf.nn.nce_loss, sst.nce_loss):
        tf.random.set_seed(1234)
        losses.append(fn(tf.constant(W), tf.constant(b), tf.constant(y), tf.constant(h), 50, 1000).numpy())
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_negative_sampling_is_nce_without_log_q():
    W, b, y, h, sv = problem(9, dtype=np.float64)
    ours = sst.nce_loss(W, b, y, h, len(sv[0]), W.shape[0], sampled_values=sv, subtract_log_q=False).numpy()
    np.testing.assert_allclose(ours, R.negative_sampling_loss(W, b, y, h, sv), rtol=1e-12)


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("T,hits,t", [(1, False, 0.75), (3, True, 1.0), (2, False, 0.0)])
def test_gbce_matches_the_reference(mode, T, hits, t):
    _matches_the_reference(mode, "gbce_loss", 11, T, dict(remove_accidental_hits=hits, t=t))


def test_gbce_draws_uniform_candidates_and_refuses_a_bad_t():
    from sampled_softmax import SampledSoftmaxError

    W, b, y, h, _ = problem(3)
    loss = sst.gbce_loss(W, b, y[:, :1], h, 5, W.shape[0])
    assert loss.shape == (h.shape[0],) and np.isfinite(loss.numpy()).all()
    with pytest.raises(SampledSoftmaxError, match="`t` must be in"):
        sst.gbce_loss(W, b, y[:, :1], h, 5, W.shape[0], t=-1.0)
