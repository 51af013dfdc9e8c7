"""The fused table step of ``sampled_softmax.jax.table_optim``: ``k`` steps equal the reference's
gradient (summed per row) followed by the optimizer's formula written here, on the touched rows
only; ignored labels touch nothing; jitted with donated buffers it is the same step."""

import functools

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from sampled_softmax import SampledSoftmaxError  # noqa: E402
from sampled_softmax import reference as R  # noqa: E402
from sampled_softmax.jax.table_optim import (  # noqa: E402
    TableState, row_adagrad, row_adam, row_sgd, value_and_table_step,
)

from conftest import random_problem  # noqa: E402


class NumpyRows:
    """The optimizers' formulas on a dense summed gradient, applied to the touched rows only."""

    def __init__(self, kind, shape, lr, rowwise=False, b1=0.9, b2=0.999, eps=1e-8):
        self.kind, self.lr, self.rowwise, self.b1, self.b2, self.t = kind, lr, rowwise, b1, b2, 0
        self.eps = 1e-10 if kind == "adagrad" else eps
        V = shape[0]
        self.acc = {"w": np.zeros(V), "b": np.zeros(V)}
        self.m = {"w": np.zeros(shape), "b": np.zeros(V)}
        self.v = {"w": np.zeros(V if rowwise else shape), "b": np.zeros(V)}

    def step(self, W, b, dW, db, touched):
        self.t += 1
        for key, p, g in (("w", W, dW), ("b", b, db)):
            for r in touched:
                gr = g[r]
                if self.kind == "sgd":
                    p[r] -= self.lr * gr
                elif self.kind == "adagrad":
                    self.acc[key][r] += np.mean(np.square(gr))
                    p[r] -= self.lr * gr / (np.sqrt(self.acc[key][r]) + self.eps)
                else:
                    self.m[key][r] = self.b1 * self.m[key][r] + (1 - self.b1) * gr
                    sq = np.mean(np.square(gr)) if (self.rowwise and key == "w") else np.square(gr)
                    self.v[key][r] = self.b2 * self.v[key][r] + (1 - self.b2) * sq
                    m_hat = self.m[key][r] / (1 - self.b1 ** self.t)
                    v_hat = self.v[key][r] / (1 - self.b2 ** self.t)
                    p[r] -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


OPTIMIZERS = {"sgd": lambda: row_sgd(0.1), "adagrad": lambda: row_adagrad(0.1),
              "adam": lambda: row_adam(0.05), "adam_rowwise": lambda: row_adam(0.05, rowwise=True)}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("loss", ["sampled_softmax", "negative_sampling"])
def test_k_fused_steps_equal_the_reference_gradient_and_the_formula(rng, name, loss):
    kind = name.split("_")[0]
    W, b, y, h, _ = random_problem(rng, V=30, T=2, dup_candidates=True)
    ref_grads = R.sampled_softmax_grads if loss == "sampled_softmax" else R.nce_grads
    hits = loss == "sampled_softmax"
    numpy_opt = NumpyRows(kind, W.shape, 0.1 if kind in ("sgd", "adagrad") else 0.05, rowwise=name.endswith("rowwise"))
    opt = OPTIMIZERS[name]()
    with jax.enable_x64(True):
        Wj, bj = jnp.asarray(W), jnp.asarray(b)
        state = opt.init(Wj, bj)
        Wn, bn = W.copy(), b.copy()
        for k in range(3):
            _, _, y, h, sv = random_problem(np.random.default_rng(k), V=30, T=2, dup_candidates=True)
            value, s = value_and_table_step(opt, state, Wj, bj, y, h, len(sv[0]), 30, num_true=2, sampled_values=sv,
                                            remove_accidental_hits=hits, reduction="sum", loss=loss)
            if loss == "negative_sampling":
                d_h, dW, db = R.nce_grads(Wn, bn, y, h, (sv[0], np.ones_like(sv[1]), np.ones_like(sv[2])),
                                          remove_accidental_hits=False)
            else:
                d_h, dW, db = ref_grads(Wn, bn, y, h, sv, remove_accidental_hits=True)
            np.testing.assert_allclose(s.inputs_grad, d_h, rtol=1e-10, atol=1e-12)
            numpy_opt.step(Wn, bn, dW, db, np.unique(np.concatenate([y.reshape(-1), sv[0]])))
            Wj, bj, state = s.weights, s.biases, s.state
            np.testing.assert_allclose(Wj, Wn, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(bj, bn, rtol=1e-10, atol=1e-12)
        assert int(state.count) == 3


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_an_ignored_labels_placeholder_row_is_not_touched(rng, name):
    """Row 0 is trained at step 1 (a label), then appears only as the placeholder of an ignored
    label: no optimizer may move it, nor change its state (Adam's momentum would)."""
    W, b, _, h, _ = random_problem(rng, V=20, B=3)
    opt = OPTIMIZERS[name]()
    with jax.enable_x64(True):
        sv = (np.array([5, 6, 7]), np.ones((3, 1)), np.ones(3))
        state = opt.init(jnp.asarray(W), jnp.asarray(b))
        _, s = value_and_table_step(opt, state, W, b, np.array([0, 1, 2]), h, 3, 20, sampled_values=sv)
        _, s2 = value_and_table_step(opt, s.state, s.weights, s.biases, np.array([-100, 1, 2]), h, 3, 20,
                                     sampled_values=sv, ignore_index=-100)
        np.testing.assert_array_equal(s2.weights[0], s.weights[0])
        np.testing.assert_array_equal(s2.biases[0], s.biases[0])
        for before, after in zip(s.state.slots + s.state.bias_slots, s2.state.slots + s2.state.bias_slots):
            np.testing.assert_array_equal(after[0], before[0])
        assert not np.array_equal(s2.weights[1], s.weights[1])  # a trained row moves


def test_jitted_with_donated_buffers_it_is_the_same_step_and_trains(rng):
    W, b, y, h, _ = random_problem(rng, V=200, B=16)
    W, b, h = (x.astype(np.float32) for x in (W, b, h))
    opt = row_adam(0.05)

    def step(weights, biases, state, key):
        return value_and_table_step(opt, state, weights, biases, y, h, 20, 200, key=key)

    jitted = jax.jit(step, donate_argnums=(0, 1, 2))
    eager_value, eager = step(jnp.asarray(W), jnp.asarray(b), opt.init(jnp.asarray(W), jnp.asarray(b)),
                              jax.random.key(0))
    value, s = jitted(jnp.asarray(W), jnp.asarray(b), opt.init(jnp.asarray(W), jnp.asarray(b)), jax.random.key(0))
    np.testing.assert_allclose(value, eager_value, rtol=1e-6)
    np.testing.assert_allclose(s.weights, eager.weights, rtol=1e-6, atol=1e-7)
    losses = [float(value)]
    weights, biases, state = s.weights, s.biases, s.state
    for i in range(1, 30):
        value, s = jitted(weights, biases, state, jax.random.key(i))
        weights, biases, state = s.weights, s.biases, s.state
        losses.append(float(value))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5


def test_bad_input_is_a_clear_error(rng):
    W, b, y, h, sv = random_problem(rng)
    with pytest.raises(SampledSoftmaxError, match=r"`learning_rate` must be positive and finite; received -1.0"):
        row_sgd(-1)
    with pytest.raises(SampledSoftmaxError, match=r"`b1` and `b2` must be in \[0, 1\)"):
        row_adam(1e-3, b1=1.0)
    with pytest.raises(TypeError, match=r"`optimizer` must be a row_sgd, row_adagrad or row_adam; received function"):
        value_and_table_step(lambda: None, None, W, b, y, h, 8, 40, sampled_values=sv)
    opt = row_adagrad()
    with pytest.raises(TypeError, match=r"`state` must be the TableState"):
        value_and_table_step(opt, {}, W, b, y, h, 8, 40, sampled_values=sv)
    with pytest.raises(SampledSoftmaxError, match=r"`state` was made for a table without a bias; received biases=an"):
        value_and_table_step(opt, opt.init(W), W, b, y, h, 8, 40, sampled_values=sv)
    with pytest.raises(SampledSoftmaxError, match=r"`weights` must be one \[num_classes, dim\] table"):
        opt.init(np.zeros(4))
    assert isinstance(opt.init(W, b), TableState)
