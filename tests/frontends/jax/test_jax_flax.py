"""The Flax NNX layer ``sampled_softmax.jax.flax.SampledSoftmax``: training mode equals the
functional loss with the same key, eval mode the exact full softmax; its RNG stream, learned
counts (state, not parameters), ``nnx.jit`` training with optax, and bad arguments."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

from sampled_softmax import SampledSoftmaxError  # noqa: E402
from sampled_softmax.jax import full_softmax_loss, nce_loss, sampled_softmax_loss, samplers  # noqa: E402
from sampled_softmax.jax.flax import SampledSoftmax, SamplerCounts  # noqa: E402

V, D, S = 300, 8, 16


def _batch(seed=0, shape=(4, 5)):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=shape + (D,)), jnp.float32), jnp.asarray(rng.integers(0, V, size=shape))


@pytest.mark.parametrize("loss,exclude_true", [("sampled_softmax", False), ("nce", False), ("sampled_softmax", True)])
def test_training_mode_is_the_functional_loss_with_the_same_key(loss, exclude_true):
    layer = SampledSoftmax(D, V, S, rngs=nnx.Rngs(0), loss=loss, ignore_index=-1, sampler="log_uniform",
                           exclude_true=exclude_true)
    h, y = _batch()
    y = y.at[0, 0].set(-1)
    key = jax.random.key(3)
    fn = sampled_softmax_loss if loss == "sampled_softmax" else nce_loss
    extra = dict(exclude_true=True, draw="with_replacement") if exclude_true else {}
    ref = fn(layer.kernel[...], layer.bias[...], y, h, S, V, key=key, ignore_index=-1, reduction="mean",
             remove_accidental_hits=loss == "sampled_softmax", **extra)
    np.testing.assert_allclose(layer(h, y, key=key), ref, rtol=1e-6)


def test_eval_mode_is_the_exact_full_softmax_and_log_prob_predict_agree():
    layer = SampledSoftmax(D, V, S, rngs=nnx.Rngs(0), reduction="none")
    h, y = _batch()
    layer.eval()
    exact = full_softmax_loss(layer.kernel[...], layer.bias[...], y, h)
    np.testing.assert_allclose(layer(h, y), exact, rtol=1e-6)
    logp = layer.log_prob(h)
    np.testing.assert_allclose(-jnp.take_along_axis(logp, y[..., None], -1)[..., 0], exact, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jnp.exp(logp).sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(layer.predict(h), jnp.argmax(logp, -1))
    layer.train()
    assert not np.allclose(layer(h, y), exact), "training mode must be the sampled estimate"


def test_the_stream_draws_fresh_candidates_each_call_and_is_reproducible():
    h, y = _batch()
    a, b = SampledSoftmax(D, V, S, rngs=nnx.Rngs(0)), SampledSoftmax(D, V, S, rngs=nnx.Rngs(0))
    first, second = a(h, y), a(h, y)
    assert float(first) != float(second)
    np.testing.assert_array_equal([first, second], [b(h, y), b(h, y)])
    c = SampledSoftmax(D, V, S, rngs=nnx.Rngs(params=0, sampler=1))
    np.testing.assert_array_equal(c.kernel[...], a.kernel[...])  # params from "params", draws from "sampler"


def test_learned_counts_are_state_updated_after_each_draw_and_left_alone_by_the_optimizer():
    assert SampledSoftmax(D, V, S, rngs=nnx.Rngs(0)).sampler == "learned_unigram", "the default (issue 22)"
    layer = SampledSoftmax(D, V, S, rngs=nnx.Rngs(0), sampler="learned_unigram", ignore_index=-1)
    optimizer = nnx.Optimizer(layer, optax.adam(1e-2), wrt=nnx.Param)
    h, y = _batch()
    y = y.at[1, 2].set(-1)

    @nnx.jit
    def step(model, optimizer, h, y):
        loss, grads = nnx.value_and_grad(lambda m: m(h, y))(model)
        optimizer.update(model, grads)
        return loss

    kernel = np.asarray(layer.kernel[...])
    for _ in range(3):
        step(layer, optimizer, h, y)
    kept = np.asarray(y)[np.asarray(y) >= 0]
    np.testing.assert_array_equal(layer.counts[...], 1 + 3 * np.bincount(kept, minlength=V))
    assert not np.array_equal(layer.kernel[...], kernel)
    counts = nnx.state(layer, SamplerCounts)
    fresh = SampledSoftmax(D, V, S, rngs=nnx.Rngs(5), sampler="learned_unigram")
    nnx.update(fresh, counts)
    np.testing.assert_array_equal(fresh.counts[...], layer.counts[...])


def test_a_given_sampler_and_num_true():
    counts = np.arange(1, V + 1, dtype=np.float64)
    layer = SampledSoftmax(D, V, S, rngs=nnx.Rngs(0), sampler=samplers.unigram(V, counts), draw="with_replacement")
    h, y = _batch()
    y3 = jnp.stack([y, (y + 1) % V, (y + 2) % V], -1)
    key = jax.random.key(0)
    ref = sampled_softmax_loss(layer.kernel[...], layer.bias[...], y3, h, S, V, num_true=3, key=key,
                               sampler=samplers.unigram(V, counts), draw="with_replacement", reduction="mean")
    np.testing.assert_allclose(layer(h, y3, key=key), ref, rtol=1e-6)


@pytest.mark.slow
def test_training_with_optax_lowers_the_exact_loss():
    layer = SampledSoftmax(D, V, S, rngs=nnx.Rngs(0), use_bias=False)
    assert layer.bias is None
    optimizer = nnx.Optimizer(layer, optax.adam(5e-2), wrt=nnx.Param)
    h, y = _batch(shape=(64,))

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: m(h, y))(model)
        optimizer.update(model, grads)
        return loss

    before = float(layer(h, y, deterministic=True))
    for _ in range(30):
        step(layer, optimizer)
    assert float(layer(h, y, deterministic=True)) < before - 1.0


@pytest.mark.parametrize("kw,message", [
    (dict(loss="softmax"), r"`loss` must be one of .*; received 'softmax'"),
    (dict(sampler="zipf"), r"`sampler` must be one of .*; received 'zipf'"),
    (dict(loss="nce", label_smoothing=0.1), r"`label_smoothing` must be 0 with loss='nce' \(a sum of logistic losses has no softmax to smooth\); received 0.1"),
    (dict(num_sampled=V + 1), r"`num_sampled` must be <= 300 \(num_classes\) when drawing unique candidates"),
    (dict(reduction="avg"), r"`reduction` must be one of 'none', 'mean', 'sum'; received 'avg'"),
    (dict(sampler=samplers.uniform(V + 1)), r"`sampler` must cover num_classes=300; received a sampler over 301"),
])
def test_bad_arguments_are_clear_errors(kw, message):
    args = dict(in_features=D, num_classes=V, num_sampled=S)
    args.update(kw)
    with pytest.raises(SampledSoftmaxError, match=message):
        SampledSoftmax(**args, rngs=nnx.Rngs(0))
