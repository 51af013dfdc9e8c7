"""``sampled_softmax.jax`` against the NumPy reference (1e-12 with x64, 1e-5 in float32), under
``jit``, ``grad`` and ``vmap``; its samplers against the NumPy formulas; bad input."""

import itertools

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from sampled_softmax import SampledSoftmaxError  # noqa: E402
from sampled_softmax import reference as R  # noqa: E402
from sampled_softmax import samplers as NS  # noqa: E402
from sampled_softmax.jax import (  # noqa: E402
    full_softmax_loss, nce_loss, negative_sampling_loss, sampled_softmax_loss, samplers,
)

from conftest import random_problem  # noqa: E402


def _grads(fn, W, b, h):
    """``d sum(weights * fn(W, b, h)) / d (h, W, b)`` in the reference's order."""
    g = jax.grad(fn, argnums=(0, 1, 2))(W, b, h)
    return g[2], g[0], g[1]


# Every combination eagerly; under jit where hits == subtract (half of them: compiling is the cost).
@pytest.mark.parametrize("T,hits,subtract,ignore,eps,jit", [
    c + (jit,) for c in itertools.product([1, 3], [False, True], [True, False], [False, True], [0.0, 0.2])
    for jit in (False, True) if not jit or c[1] == c[2]])
def test_sampled_softmax_equals_the_reference_in_float64(rng, T, hits, subtract, ignore, eps, jit):
    W, b, y, h, sv = random_problem(rng, T=T)
    if ignore:
        y[0, -1] = -100
        y[2, :] = -100
    kw = dict(remove_accidental_hits=hits, subtract_log_q=subtract, label_smoothing=eps,
              ignore_index=-100 if ignore else None)
    weights = rng.normal(size=y.shape[0])
    with jax.enable_x64(True):
        def loss(W_, b_, h_):
            return sampled_softmax_loss(W_, b_, y, h_, len(sv[0]), W.shape[0], num_true=T, sampled_values=sv, **kw)

        run = jax.jit(loss) if jit else loss
        np.testing.assert_allclose(run(W, b, h), R.sampled_softmax_loss(W, b, y, h, sv, **kw), rtol=1e-12)
        total = jax.jit(lambda *a: jnp.sum(loss(*a) * weights)) if jit else (lambda *a: jnp.sum(loss(*a) * weights))
        for ours, ref in zip(_grads(total, W, b, h), R.sampled_softmax_grads(W, b, y, h, sv, grad_loss=weights, **kw)):
            np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("T", [1, 3])
def test_float32_is_within_1e_5(rng, T):
    W, b, y, h, sv = random_problem(rng, T=T)
    f32 = [x.astype(np.float32) for x in (W, b, h)]
    loss = sampled_softmax_loss(f32[0], f32[1], y, f32[2], len(sv[0]), W.shape[0], num_true=T,
                                sampled_values=(sv[0], sv[1].astype(np.float32), sv[2].astype(np.float32)))
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, R.sampled_softmax_loss(W, b, y, h, sv), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fn,ref,kw", [
    (nce_loss, R.nce_loss, dict(remove_accidental_hits=True)),
    (nce_loss, R.nce_loss, dict(remove_accidental_hits=False)),
    (negative_sampling_loss, R.negative_sampling_loss, dict(remove_accidental_hits=True)),
])
@pytest.mark.parametrize("T", [1, 3])
def test_the_relatives_equal_the_reference(rng, fn, ref, kw, T):
    W, b, y, h, sv = random_problem(rng, T=T)
    with jax.enable_x64(True):
        np.testing.assert_allclose(fn(W, b, y, h, len(sv[0]), W.shape[0], num_true=T, sampled_values=sv, **kw),
                                   ref(W, b, y, h, sv, **kw), rtol=1e-12)


@pytest.mark.parametrize("T", [1, 3])
def test_exclude_true_equals_the_reference(rng, T):
    V, S = 30, 7
    q = rng.dirichlet(np.ones(V))
    W, b, h = rng.normal(size=(V, 5)), rng.normal(size=V), rng.normal(size=(6, 5))
    y = rng.integers(0, V, size=(6, T))
    cand = rng.choice(V, size=S, p=q)
    cand[0] = y[0, 0]
    sv = (cand, S * q[y], S * q[cand])
    with jax.enable_x64(True):
        ours = sampled_softmax_loss(W, b, y, h, S, V, num_true=T, sampled_values=sv, exclude_true=True)
        np.testing.assert_allclose(ours, R.sampled_softmax_loss(W, b, y, h, sv, exclude_true=True), rtol=1e-12)


def test_full_softmax_equals_the_reference(rng):
    W, b, y, h, _ = random_problem(rng, T=2)
    with jax.enable_x64(True):
        np.testing.assert_allclose(full_softmax_loss(W, b, y, h, num_true=2), R.full_softmax_loss(W, b, y, h),
                                   rtol=1e-12)


def test_drawn_candidates_follow_the_key_and_compile(rng):
    W, b, y, h, _ = random_problem(rng, V=200, B=16)
    loss = jax.jit(lambda key: sampled_softmax_loss(W, b, y, h, 20, 200, key=key), static_argnums=())
    a, a2, c = loss(jax.random.key(1)), loss(jax.random.key(1)), loss(jax.random.key(2))
    np.testing.assert_array_equal(a, a2)
    assert not np.allclose(a, c)
    # The draw the loss used is samplers.sampled_values' from the same key: equal losses.
    sv = samplers.sampled_values(jax.random.key(1), samplers.log_uniform(200), jnp.asarray(y), 20)
    np.testing.assert_allclose(a, sampled_softmax_loss(W, b, y, h, 20, 200, sampled_values=sv), rtol=1e-6)


def test_vmap_over_problems_equals_a_loop(rng):
    W, b, y, h, sv = random_problem(rng)
    hs = np.stack([h, 2 * h, -h]).astype(np.float32)
    fn = jax.vmap(lambda h_: sampled_softmax_loss(W.astype(np.float32), b.astype(np.float32), y, h_, len(sv[0]),
                                                  W.shape[0], sampled_values=sv))
    out = fn(hs)
    for k in range(3):
        np.testing.assert_allclose(out[k], R.sampled_softmax_loss(W, b, y, hs[k].astype(np.float64), sv), rtol=1e-5)


@pytest.mark.parametrize("kind", ["uniform", "log_uniform", "unigram"])
@pytest.mark.parametrize("draw", ["with_replacement", "unique_exact"])
def test_samplers_follow_the_numpy_formulas(rng, kind, draw):
    V, S = 50, 10
    counts = rng.integers(1, 100, V).astype(np.float64)
    sampler = {"uniform": samplers.uniform(V), "log_uniform": samplers.log_uniform(V),
               "unigram": samplers.unigram(V, counts, distortion=0.75)}[kind]
    numpy = {"uniform": NS.Uniform(V), "log_uniform": NS.LogUniform(V),
             "unigram": NS.Unigram(NS.unigram_weights(counts, distortion=0.75))}[kind]
    ids = jnp.arange(V)
    np.testing.assert_allclose(samplers.probs(sampler, ids), numpy.probs(np.arange(V)), rtol=1e-5)
    np.testing.assert_allclose(samplers.expected_counts(sampler, ids, S, draw=draw),
                               NS.expected_count(numpy.probs(np.arange(V)), S, draw), rtol=1e-5)
    # Frequencies of 40k draws against Q: a chi-square bound far beyond its 99.99% quantile.
    draws = np.asarray(jax.vmap(lambda k: samplers.draw_candidates(k, sampler, S, draw=draw))(
        jax.random.split(jax.random.key(0), 4000))).reshape(-1)
    freq = np.bincount(draws, minlength=V)
    expected = numpy.probs(np.arange(V)) * draws.size
    chi2 = float(((freq - expected) ** 2 / expected).sum())
    assert chi2 < 120, chi2  # V - 1 = 49 degrees of freedom


def test_unique_exact_repeats_are_padding():
    cand = jnp.array([3, 5, 3, 7, 5, 5])
    np.testing.assert_array_equal(samplers.repeated_slots(cand), [False, False, True, False, True, True])
    counts = samplers.expected_counts(samplers.uniform(10), cand, 6, candidates=cand)
    assert np.isinf(np.asarray(counts)[[2, 4, 5]]).all() and np.isfinite(np.asarray(counts)[[0, 1, 3]]).all()


def test_bad_input_gets_the_library_errors(rng):
    W, b, y, h, sv = random_problem(rng)
    with pytest.raises(SampledSoftmaxError, match=r"`key` \(a jax.random key\) is required"):
        sampled_softmax_loss(W, b, y, h, 5, W.shape[0])
    bad = y.copy()
    bad[1, 0] = W.shape[0]
    with pytest.raises(SampledSoftmaxError, match=r"`labels` must be in \[0, 39\]"):
        sampled_softmax_loss(W, b, bad, h, len(sv[0]), W.shape[0], sampled_values=sv)
    with pytest.raises(SampledSoftmaxError, match=r"`num_classes` must equal the number of rows of `weights`"):
        sampled_softmax_loss(W, b, y, h, len(sv[0]), 41, sampled_values=sv)
    with pytest.raises(SampledSoftmaxError, match=r"`draw` must be one of 'unique_exact', 'with_replacement'"):
        sampled_softmax_loss(W, b, y, h, 5, W.shape[0], key=jax.random.key(0), draw="unique")
    with pytest.raises(SampledSoftmaxError, match=r"`draw` must be 'with_replacement' with exclude_true=True"):
        sampled_softmax_loss(W, b, y, h, 5, W.shape[0], key=jax.random.key(0), draw="unique_exact", exclude_true=True)
    with pytest.raises(TypeError, match=r"`labels` must have an integer dtype"):
        sampled_softmax_loss(W, b, y.astype(np.float32), h, len(sv[0]), W.shape[0], sampled_values=sv)
    # Under jit a label cannot be checked: its row is nan, never a plausible number.
    out = jax.jit(lambda yy: sampled_softmax_loss(W, b, yy, h, len(sv[0]), W.shape[0], sampled_values=sv))(bad)
    assert np.isnan(np.asarray(out)[1]) and np.isfinite(np.asarray(out)[[0, 2, 3, 4]]).all()


def test_importing_the_front_end_loads_jax_only():
    import subprocess
    import sys

    code = ("import sys, sampled_softmax.jax; "
            "print(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("t,T,hits", [(0.0, 1, False), (0.75, 1, True), (1.0, 3, False), (0.3, 3, True)])
def test_gbce_equals_the_reference_in_float64_with_its_gradients(rng, t, T, hits):
    from sampled_softmax.jax import gbce_loss

    W, b, y, h, sv = random_problem(rng, T=T)
    with jax.enable_x64(True):
        def loss(W_, b_, h_):
            return gbce_loss(W_, b_, y, h_, len(sv[0]), W.shape[0], num_true=T, sampled_values=sv, t=t,
                             remove_accidental_hits=hits)

        np.testing.assert_allclose(jax.jit(loss)(W, b, h), R.gbce_loss(W, b, y, h, sv, t=t,
                                                                       remove_accidental_hits=hits), rtol=1e-12)
        got = _grads(lambda *a: jnp.sum(loss(*a)), W, b, h)
        for g, e in zip(got, R.gbce_grads(W, b, y, h, sv, t=t, remove_accidental_hits=hits)):
            np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12)
    if t == 0.0:  # plain negative sampling
        np.testing.assert_allclose(loss(W, b, h), negative_sampling_loss(
            W, b, y, h, len(sv[0]), W.shape[0], num_true=T, sampled_values=sv, remove_accidental_hits=hits), rtol=1e-6)


def test_gbce_bad_t_is_an_error_naming_it(rng):
    from sampled_softmax.jax import gbce_loss

    W, b, y, h, sv = random_problem(rng)
    with pytest.raises(SampledSoftmaxError, match="`t` must be in"):
        gbce_loss(W, b, y, h, len(sv[0]), W.shape[0], sampled_values=sv, t=1.5)
