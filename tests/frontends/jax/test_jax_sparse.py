"""Row-sparse gradients and the lazy Adam of ``sampled_softmax.jax.sparse``: the row gradients
scatter to the reference's dense gradients; the lazy Adam is dense Adam on the touched rows and
leaves the others alone."""

import functools

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from sampled_softmax import reference as R  # noqa: E402
from sampled_softmax.jax.sparse import (  # noqa: E402
    RowGrads, apply_row_updates, lazy_adam, unique_rows, value_and_row_grads,
)

from conftest import random_problem  # noqa: E402


def dense(rows: RowGrads, shape):
    out = np.zeros(shape)
    np.add.at(out, np.asarray(rows.ids), np.asarray(rows.values))
    return out


@pytest.mark.parametrize("loss,ref", [("sampled_softmax", R.sampled_softmax_grads), ("nce", R.nce_grads)])
@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_row_gradients_scatter_to_the_reference(rng, loss, ref, T, reduction):
    W, b, y, h, sv = random_problem(rng, T=T, dup_candidates=True)
    with jax.enable_x64(True):
        value, grads = value_and_row_grads(W, b, y, h, len(sv[0]), W.shape[0], num_true=T, sampled_values=sv,
                                           reduction=reduction, loss=loss,
                                           remove_accidental_hits=loss == "sampled_softmax")
        scale = 1.0 if reduction == "sum" else 1.0 / y.shape[0]
        d_h, d_W, d_b = ref(W, b, y, h, sv, remove_accidental_hits=loss == "sampled_softmax")
        np.testing.assert_allclose(dense(grads.weights, W.shape), d_W * scale, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dense(grads.biases, b.shape), d_b * scale, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(grads.inputs, d_h * scale, rtol=1e-10, atol=1e-12)
        assert grads.weights.ids.shape == (y.size + len(sv[0]),)  # the gathered rows, nothing of size V


def test_unique_rows_sums_repeats_and_pads():
    g = unique_rows(RowGrads(jnp.array([4, 1, 4, 2]), jnp.array([[1.0], [2.0], [3.0], [4.0]])), 10)
    np.testing.assert_array_equal(g.ids, [1, 2, 4, 10])
    np.testing.assert_array_equal(g.values[:, 0], [2.0, 4.0, 4.0, 0.0])


def adam_dense(p, g, m, v, t, lr=0.01, b1=0.9, b2=0.999, eps=1e-8):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    return p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps), m, v


def test_lazy_adam_is_dense_adam_on_the_touched_rows(rng):
    V, D = 30, 4
    table = rng.normal(size=(V, D))
    ids = np.array([3, 7, 3, 12, 29])  # a repeated row
    opt = lazy_adam(0.01)
    with jax.enable_x64(True):
        state = opt.init(jnp.asarray(table))
        p_lazy = jnp.asarray(table)
        p_dense, m, v = table.copy(), np.zeros_like(table), np.zeros_like(table)
        for t in range(1, 6):  # the same rows every step: lazy Adam is exactly Adam there
            values = rng.normal(size=(len(ids), D))
            updates, state = opt.update(RowGrads(jnp.asarray(ids), jnp.asarray(values)), state)
            p_lazy = apply_row_updates(p_lazy, updates)
            p_dense, m, v = adam_dense(p_dense, dense(RowGrads(ids, values), (V, D)), m, v, t)
        touched = np.unique(ids)
        np.testing.assert_allclose(np.asarray(p_lazy)[touched], p_dense[touched], rtol=1e-12, atol=1e-14)
        untouched = np.setdiff1d(np.arange(V), touched)
        np.testing.assert_array_equal(np.asarray(p_lazy)[untouched], table[untouched])  # not moved at all
        assert int(state.count) == 5


def test_a_jitted_step_with_a_donated_table_trains(rng):
    W, b, y, h, _ = random_problem(rng, V=200, B=16)
    W, b, h = (x.astype(np.float32) for x in (W, b, h))
    opt = lazy_adam(0.05)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(weights, state, key):
        loss, grads = value_and_row_grads(weights, b, y, h, 20, 200, key=key)
        updates, state = opt.update(grads.weights, state)
        return apply_row_updates(weights, updates), state, loss

    weights, state = jnp.asarray(W), opt.init(jnp.asarray(W))
    losses = []
    for i in range(30):
        weights, state, loss = step(weights, state, jax.random.key(i))
        losses.append(float(loss))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5


def test_an_ignored_label_touches_no_row_under_lazy_adam(rng):
    """An ignored label's slot is padding (id V): lazy Adam neither moves its placeholder row 0
    nor decays that row's moments."""
    W, b, _, h, _ = random_problem(rng, V=20, B=3)
    sv = (np.array([5, 6, 7]), np.ones((3, 1)), np.ones(3))
    opt = lazy_adam(0.1)
    with jax.enable_x64(True):
        _, grads = value_and_row_grads(W, b, np.array([0, 1, 2]), h, 3, 20, sampled_values=sv)
        state = opt.init(jnp.asarray(W))
        updates, state = opt.update(grads.weights, state)
        W1 = apply_row_updates(jnp.asarray(W), updates)
        _, grads = value_and_row_grads(W1, b, np.array([-100, 1, 2]), h, 3, 20, sampled_values=sv, ignore_index=-100)
        assert int(grads.weights.ids[0]) == 20  # the padding id
        updates, state2 = opt.update(grads.weights, state)
        W2 = apply_row_updates(W1, updates)
        np.testing.assert_array_equal(W2[0], W1[0])
        np.testing.assert_array_equal(state2.mu[0], state.mu[0])
        assert not np.array_equal(W2[1], W1[1])
