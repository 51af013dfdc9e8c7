"""JAX reliability (issue 32): under ``jit`` bad sampled values give ``nan`` (never a plausible
loss), the row-gradient helper trains the loss it names with that loss's defaults, eager
``shard_map`` works as jitted ``shard_map`` does, and ``mixed_negatives`` checks its counts at
once with the other front ends' words."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from sampled_softmax import SampledSoftmaxError  # noqa: E402
from sampled_softmax.jax import nce_loss, negative_sampling_loss, sampled_softmax_loss  # noqa: E402
from sampled_softmax.jax.parallel import shard_table, vocab_parallel_sampled_softmax_loss  # noqa: E402
from sampled_softmax.jax.retrieval import mixed_negatives  # noqa: E402
from sampled_softmax.jax.sparse import value_and_row_grads  # noqa: E402

V, D, N = 10, 3, 4


def _problem():
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.normal(size=(V, D))), jnp.asarray(rng.normal(size=V)),
            jnp.asarray([1, 2, 3, 9]), jnp.asarray(rng.normal(size=(N, D))))


GOOD = (np.array([0, 4, 7]), np.full((N, 1), 0.3), np.full(3, 0.3))


@pytest.mark.parametrize("bad", [
    (np.array([0, 4, -1]), GOOD[1], GOOD[2]),  # read row V-1 before
    (np.array([0, 4, V]), GOOD[1], GOOD[2]),
    (GOOD[0], np.full((N, 1), 0.0), GOOD[2]),
    (GOOD[0], GOOD[1], np.array([0.3, -0.1, 0.3])),
])
@pytest.mark.parametrize("fn", [sampled_softmax_loss, nce_loss, negative_sampling_loss])
def test_sampled_values_the_eager_call_refuses_make_every_row_nan_under_jit(fn, bad):
    W, b, y, h = _problem()
    with pytest.raises(SampledSoftmaxError, match="sampled_values"):
        fn(W, b, y, h, 3, V, sampled_values=bad)
    jitted = jax.jit(lambda sv: fn(W, b, y, h, 3, V, sampled_values=sv))
    assert np.isfinite(np.asarray(jitted(GOOD))).all()
    assert np.isnan(np.asarray(jitted(bad))).all()


def _mesh(p):
    return jax.make_mesh((p,), ("vocab",), devices=jax.devices()[:p])


@pytest.mark.parametrize("candidate", [-1, V, V + 1])  # V, V + 1: the shards' padding rows (12 rows)
def test_vocab_parallel_candidates_outside_the_classes_are_nan_under_jit(candidate):
    W, b, y, h = _problem()
    mesh = _mesh(4)
    Ws, bs = shard_table(W, mesh, "vocab"), shard_table(b, mesh, "vocab")
    sv = (np.array([0, 4, candidate]), GOOD[1], GOOD[2])
    sharded = jax.jit(jax.shard_map(
        lambda w, bb, yy, hh, c: vocab_parallel_sampled_softmax_loss(w, bb, yy, hh, 3, V, sampled_values=(
            c, GOOD[1], GOOD[2]), axis_name="vocab"), mesh=mesh,
        in_specs=(P("vocab"), P("vocab"), P(), P(), P()), out_specs=P()))
    assert np.isfinite(np.asarray(sharded(Ws, bs, y, h, jnp.asarray(GOOD[0])))).all()
    assert np.isnan(np.asarray(sharded(Ws, bs, y, h, jnp.asarray(sv[0])))).all()


@pytest.mark.parametrize("loss,fn", [("nce", nce_loss), ("negative_sampling", negative_sampling_loss),
                                     ("sampled_softmax", sampled_softmax_loss)])
def test_row_grads_default_to_the_losss_own_accidental_hits_setting(loss, fn):
    W, b, y, h = _problem()
    sv = (np.array([1, 2, 5]), GOOD[1], GOOD[2])  # labels 1 and 2 drawn: accidental hits
    value, _ = value_and_row_grads(W, b, y, h, 3, V, sampled_values=sv, loss=loss, reduction="sum")
    expected = jnp.sum(fn(W, b, y, h, 3, V, sampled_values=sv))
    np.testing.assert_allclose(float(value), float(expected), rtol=1e-12)


def test_eager_shard_map_with_the_default_sampler_equals_jitted():
    W, b, y, h = _problem()
    mesh = _mesh(2)
    Ws = shard_table(W, mesh, "vocab")
    body = jax.shard_map(lambda w, yy, hh, k: vocab_parallel_sampled_softmax_loss(w, None, yy, hh, 3, V, key=k,
                                                                                 axis_name="vocab"),
                         mesh=mesh, in_specs=(P("vocab"), P(), P(), P()), out_specs=P())
    key = jax.random.key(3)
    np.testing.assert_allclose(np.asarray(body(Ws, y, h, key)), np.asarray(jax.jit(body)(Ws, y, h, key)),
                               rtol=1e-12)


def test_eager_observation_without_host_callbacks_goes_on(monkeypatch):
    """A trace that refuses host callbacks (eager shard_map in some JAX versions) skips the
    order check's observation; the loss is computed."""
    from sampled_softmax import order_check as OC
    from sampled_softmax.jax import _order

    def refuse(*args, **kwargs):
        raise NotImplementedError("no host callbacks in this trace")

    monkeypatch.setattr(jax.debug, "callback", refuse)
    OC.order_check("jax-test-refuse", 1000, "").pending = True
    out = jax.jit(lambda yy: (_order.observe(yy, yy >= 0, 1000, front="jax-test-refuse"), yy.sum())[1])(
        jnp.arange(8))
    assert int(out) == 28


def test_mixed_negatives_refuses_counts_above_one_with_the_other_front_ends_words():
    sv = (np.array([3, 4]), np.ones((2, 1)), np.array([0.5, 1.5]))
    with pytest.raises(SampledSoftmaxError, match=r"`sampled_values\[2\]` \(sampled_expected_count\) must be at "
                                                  r"most 1 for mixed negatives .* received 1.5"):
        mixed_negatives(jnp.ones((2, D)), jnp.asarray([1, 2]), jnp.zeros(2), sv, lambda ids: jnp.ones((2, D)))
    jitted = jax.jit(lambda count: mixed_negatives(jnp.ones((2, D)), jnp.asarray([1, 2]), jnp.zeros(2),
                                                   (sv[0], sv[1], count), lambda ids: jnp.ones((2, D))).log_q)
    log_q = np.asarray(jitted(jnp.asarray(sv[2])))
    assert np.isnan(log_q[3]) and np.isfinite(log_q[:3]).all()
