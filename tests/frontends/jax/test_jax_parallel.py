"""Vocabulary-parallel JAX losses (``sampled_softmax.jax.parallel``) under ``shard_map`` over 2
and 4 host CPU devices (tests/conftest.py sets ``--xla_force_host_platform_device_count=4``):
loss and gradients equal the single-device loss on the whole table with the same candidates,
uneven shards included; the full softmax equals the exact one; bad shards are clear errors."""

import functools

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from sampled_softmax import SampledSoftmaxError  # noqa: E402
from sampled_softmax import reference as R  # noqa: E402
from sampled_softmax.jax import full_softmax_loss, nce_loss, negative_sampling_loss, sampled_softmax_loss  # noqa: E402
from sampled_softmax.jax.parallel import (  # noqa: E402
    div_layout, rows_per_shard, shard_table, unshard_table, vocab_parallel_full_softmax_loss, vocab_parallel_nce_loss,
    vocab_parallel_negative_sampling_loss, vocab_parallel_sampled_softmax_loss,
)

from conftest import random_problem  # noqa: E402

PARALLEL = {"softmax": (vocab_parallel_sampled_softmax_loss, sampled_softmax_loss),
            "nce": (vocab_parallel_nce_loss, nce_loss),
            "negative_sampling": (vocab_parallel_negative_sampling_loss, negative_sampling_loss)}


def _mesh(p):
    assert len(jax.devices()) >= 4, (
        "JAX sees fewer than 4 devices: it was imported before tests/conftest.py set "
        "XLA_FLAGS=--xla_force_host_platform_device_count=4")
    return jax.make_mesh((p,), ("vocab",), devices=jax.devices()[:p])


def _sharded(fn, mesh, with_bias, **kw):
    """``fn(W, b, y, h)`` under shard_map, the table and biases sharded by rows."""
    specs = (P("vocab"), P("vocab") if with_bias else None, P(), P())
    # Jitted: shard_map run eagerly dispatches op by op, ten times slower here.
    return jax.jit(jax.shard_map(functools.partial(fn, axis_name="vocab", **kw), mesh=mesh, in_specs=specs,
                                 out_specs=P()))


def _value_and_grads(fn, W, b, y, h, weights):
    """The loss and ``d sum(weights * loss) / d (W, b, h)``, as NumPy arrays."""
    total = lambda W_, b_, h_: jnp.sum(fn(W_, b_, y, h_) * weights)  # noqa: E731
    grads = jax.jit(jax.grad(total, argnums=(0, 1, 2)))(W, b, h)
    return np.asarray(jax.jit(fn)(W, b, y, h)), tuple(np.asarray(g) for g in grads)


# Every head and setting over 4 devices with uneven shards (42 rows: 11, 11, 11, 9 and 2 padding);
# over 2 even shards one setting per head (each case compiles a sharded gradient: ~5 s).
SETTINGS = [(1, True, False, 0.0), (3, True, True, 0.2), (3, False, False, 0.0)]


@pytest.mark.parametrize("p,V,T,hits,ignore,eps", [(4, 42) + c for c in SETTINGS] + [(2, 40) + SETTINGS[1]])
@pytest.mark.parametrize("head", sorted(PARALLEL))
def test_sharded_equals_one_device_in_float64(rng, p, V, head, T, hits, ignore, eps):
    W, b, y, h, sv = random_problem(rng, V=V, T=T)
    if ignore:
        y[0, -1] = -100
        y[2, :] = -100
    parallel, single = PARALLEL[head]
    kw = dict(num_sampled=len(sv[0]), num_classes=V, num_true=T, sampled_values=sv, remove_accidental_hits=hits,
              ignore_index=-100 if ignore else None)
    if head == "softmax":
        kw["label_smoothing"] = eps
    weights = rng.normal(size=y.shape[0])
    mesh = _mesh(p)
    with jax.enable_x64(True), jax.set_mesh(mesh):
        Ws, bs = shard_table(W, mesh, "vocab"), shard_table(b, mesh, "vocab")
        assert Ws.shape[0] == p * rows_per_shard(V, p)
        ours, (gW, gb, gh) = _value_and_grads(_sharded(parallel, mesh, True, **kw), Ws, bs, y, h, weights)
        ref, (rW, rb, rh) = _value_and_grads(functools.partial(single, **kw), W, b, y, h, weights)
        np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(gh, rh, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(unshard_table(np.asarray(gW), V, p), rW, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(unshard_table(np.asarray(gb), V, p), rb, rtol=1e-10, atol=1e-12)
        padding = np.ones(len(gW), bool)
        padding[[k * rows_per_shard(V, p) + r for k, (_, n) in enumerate(div_layout(V, p)) for r in range(n)]] = False
        assert not np.any(np.asarray(gW)[padding]), "the padding rows must get no gradient"
    if head == "softmax":  # and the reference itself agrees
        np.testing.assert_allclose(ours, R.sampled_softmax_loss(W, b, y, h, sv, remove_accidental_hits=hits,
                                                                label_smoothing=eps,
                                                                ignore_index=-100 if ignore else None),
                                   rtol=1e-12)


@pytest.mark.parametrize("p", [2, 4])
def test_drawn_candidates_and_float32_without_biases(rng, p):
    """The same key on every device draws the same candidates: equal to one device's draw."""
    V, T = 1001, 1
    W, _, y, h, _ = random_problem(rng, V=V, T=T)
    W, h = W.astype(np.float32), h.astype(np.float32)
    key = jax.random.key(7)
    mesh = _mesh(p)
    kw = dict(num_sampled=16, num_classes=V, key=key, reduction="mean")
    with jax.set_mesh(mesh):
        fn = _sharded(vocab_parallel_sampled_softmax_loss, mesh, False, **kw)
        ours, grads = jax.jit(jax.value_and_grad(lambda W_, h_: fn(W_, None, y, h_), (0, 1)))(
            shard_table(W, mesh, "vocab"), h)
        grads = [np.asarray(g) for g in grads]
    ref, rgrads = jax.jit(jax.value_and_grad(lambda W_, h_: sampled_softmax_loss(W_, None, y, h_, **kw), (0, 1)))(W, h)
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    np.testing.assert_allclose(unshard_table(grads[0], V, p), rgrads[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads[1], rgrads[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("p,V", [(4, 42), (2, 40)])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_full_softmax_equals_the_exact_loss(rng, p, V, eps):
    W, b, y, h, _ = random_problem(rng, V=V, T=2)
    y[1, 1] = -1
    mesh = _mesh(p)
    kw = dict(num_true=2, ignore_index=-1, label_smoothing=eps)
    with jax.enable_x64(True), jax.set_mesh(mesh):
        fn = _sharded(vocab_parallel_full_softmax_loss, mesh, True, num_classes=V, **kw)
        ours, (gW, gb, gh) = _value_and_grads(fn, shard_table(W, mesh, "vocab"), shard_table(b, mesh, "vocab"), y, h,
                                              np.ones(y.shape[0]))
        ref, (rW, rb, rh) = _value_and_grads(functools.partial(full_softmax_loss, **kw), W, b, y, h, np.ones(y.shape[0]))
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    np.testing.assert_allclose(unshard_table(np.asarray(gW), V, p), rW, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gh, rh, rtol=1e-10, atol=1e-12)


def test_a_shard_of_the_wrong_size_is_a_clear_error(rng):
    W, b, y, h, sv = random_problem(rng, V=40)
    mesh = _mesh(4)
    fn = _sharded(vocab_parallel_sampled_softmax_loss, mesh, False, num_sampled=len(sv[0]), num_classes=41,
                  sampled_values=sv)
    with jax.set_mesh(mesh), pytest.raises(SampledSoftmaxError,
                                           match=r"`weights` \(this device's shard\) must have ceil\(num_classes / 4\) "
                                                 r"= 11 rows for num_classes=41 over the 4 devices of axis 'vocab'; "
                                                 r"received 10"):
        fn(shard_table(W, mesh, "vocab"), None, y, h)


def test_outside_shard_map_is_a_clear_error(rng):
    W, b, y, h, sv = random_problem(rng, V=40)
    with pytest.raises(SampledSoftmaxError, match=r"`axis_name` 'vocab' is not a mesh axis here"):
        vocab_parallel_sampled_softmax_loss(W, b, y, h, len(sv[0]), 40, sampled_values=sv, axis_name="vocab")
    with pytest.raises(SampledSoftmaxError, match=r"`axis_name` must be an axis of the mesh"):
        shard_table(W, _mesh(2), "classes")


@pytest.mark.parametrize("V,p", [(10, 4), (42, 4), (40, 2), (7, 7), (5, 1)])
def test_the_layout_is_tensorflows_div_as_in_the_torch_front_end(V, p):
    """The rows of each shard are those of torch.distributed.shard_range (for V=10 over 4:
    3, 3, 2, 2, where ceil-and-pad would give 3, 3, 3, 1): a table sharded for one front end is
    the other's, and shard_table / unshard_table invert each other."""
    torch_distributed = pytest.importorskip("sampled_softmax.torch.distributed")
    assert div_layout(V, p) == [torch_distributed.shard_range(V, r, p) for r in range(p)]
    if V == 10:
        assert [rows for _, rows in div_layout(V, p)] == [3, 3, 2, 2]
    mesh = _mesh(p) if p <= 4 else None
    table = np.arange(V * 2, dtype=np.float32).reshape(V, 2)
    if mesh is not None:
        sharded = np.asarray(shard_table(table, mesh, "vocab"))
        per = rows_per_shard(V, p)
        for k, (start, rows) in enumerate(div_layout(V, p)):
            np.testing.assert_array_equal(sharded[k * per:k * per + rows], table[start:start + rows])
            assert not np.any(sharded[k * per + rows:(k + 1) * per])
        np.testing.assert_array_equal(unshard_table(sharded, V, p), table)
