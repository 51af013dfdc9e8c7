"""JAX ``in_batch_softmax_loss`` against the NumPy reference (1e-12 with x64, gradients of query,
candidates, temperature and log_q included), under ``jit``; masks by effect; bad input."""

import itertools

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from sampled_softmax import SampledSoftmaxError  # noqa: E402
from sampled_softmax import reference as R  # noqa: E402
from sampled_softmax.jax import in_batch_softmax_loss  # noqa: E402

from conftest import in_batch_problem  # noqa: E402

B, C, D = 6, 10, 4


def problem(seed=0):
    return in_batch_problem(seed, B, C, D)


@pytest.mark.parametrize("masks,hard,weighted,jit", [c for c in itertools.product([False, True], [None, 3],
                                                                                   [False, True], [False, True])
                                                      if not c[3] or c[:3] == (True, 3, True)])
def test_equals_the_reference_in_float64(masks, hard, weighted, jit):
    q, c, ids, log_q, mask_kw, w = problem()
    kw = dict(candidate_ids=ids, num_hard_negatives=hard, **(mask_kw if masks else {}))
    g = np.random.default_rng(1).normal(size=B)
    with jax.enable_x64(True):
        def total(q_, c_, t_, lq_):
            loss = in_batch_softmax_loss(q_, c_, log_q=lq_, temperature=t_, sample_weight=w if weighted else None,
                                         reduction="none", **kw)
            return jnp.sum(loss * g), loss

        fn = jax.value_and_grad(total, argnums=(0, 1, 2, 3), has_aux=True)
        fn = jax.jit(fn) if jit else fn
        (_, loss), grads = fn(q, c, jnp.asarray(0.4), log_q)
        ref_kw = dict(kw, log_q=log_q, temperature=0.4, sample_weight=w if weighted else None)
        np.testing.assert_allclose(loss, R.in_batch_softmax_loss(q, c, **ref_kw), rtol=1e-12)
        for ours, ref in zip(grads, R.in_batch_softmax_grads(q, c, grad_loss=g, **ref_kw)):
            np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_float32_reductions_and_a_masked_column_gets_no_gradient():
    q, c, ids, log_q, _, _ = problem()
    q32, c32, lq32 = (x.astype(np.float32) for x in (q, c, log_q))
    ref = R.in_batch_softmax_loss(q, c, candidate_ids=ids, log_q=log_q, temperature=0.5)
    np.testing.assert_allclose(in_batch_softmax_loss(q32, c32, candidate_ids=ids, log_q=lq32, temperature=0.5,
                                                     reduction="none"), ref, rtol=1e-5)
    np.testing.assert_allclose(in_batch_softmax_loss(q32, c32, candidate_ids=ids, log_q=lq32, temperature=0.5),
                               ref.mean(), rtol=1e-5)
    mask = np.ones((B, C), bool)
    mask[:, 7] = False
    dc = jax.grad(lambda c_: in_batch_softmax_loss(q32, c_, score_mask=mask))(c32)
    assert not np.any(np.asarray(dc[7]))


def test_under_jit_a_bad_log_q_is_nan():
    q, c, ids, log_q, _, _ = problem()
    f = jax.jit(lambda lq: in_batch_softmax_loss(q.astype(np.float32), c.astype(np.float32), log_q=lq,
                                                 reduction="none"))
    assert np.all(np.isfinite(f(log_q.astype(np.float32))))
    assert np.all(np.isnan(f(np.full(C, 0.5, np.float32))))


@pytest.mark.parametrize("kw,exc,message", [
    (dict(candidates=np.ones((3, D), np.float32)), SampledSoftmaxError, r"`candidates` must have at least as many"),
    (dict(log_q=np.full(C, 0.1, np.float32)), SampledSoftmaxError, r"`log_q` must be <= 0 .*received 0.1"),
    (dict(temperature=0.0), SampledSoftmaxError, r"`temperature` must be positive and finite; received 0.0"),
    (dict(candidate_ids=np.ones(C, np.float32)), TypeError, r"`candidate_ids` must have an integer dtype"),
    (dict(score_mask=np.ones((B, C), np.float32)), TypeError, r"`score_mask` must be a bool array"),
    (dict(num_hard_negatives=0), SampledSoftmaxError, r"`num_hard_negatives` must be >= 1"),
    (dict(query=np.ones((B, D), np.int64)), TypeError, r"`query` must have a floating dtype; received int64"),
])
def test_bad_input_is_a_clear_error(kw, exc, message):
    args = dict(query=np.ones((B, D), np.float32), candidates=np.ones((C, D), np.float32), candidate_ids=np.arange(C))
    args.update(kw)
    with pytest.raises(exc, match=message):
        in_batch_softmax_loss(args.pop("query"), args.pop("candidates"), **args)


def test_mixed_negatives_give_each_source_its_own_probability():
    from sampled_softmax.jax import mixed_negatives, samplers

    V, M = 50, 12
    table = jax.random.normal(jax.random.key(0), (V, D))
    ids = jnp.array([3, 7, 7, 20])
    in_batch = jnp.log(jnp.array([0.5, 0.25, 0.25, 0.125]))
    sv = samplers.sampled_values(jax.random.key(1), samplers.log_uniform(V), ids[:, None], M)
    mixed = mixed_negatives(table[ids], ids, in_batch, sv, lambda i: table[i])
    count = np.asarray(sv[2])
    finite = np.isfinite(count)
    np.testing.assert_array_equal(mixed.candidate_ids[4:], sv[0])
    np.testing.assert_allclose(mixed.log_q[4:][finite], np.log(count[finite]), rtol=1e-6)
    np.testing.assert_array_equal(mixed.score_mask[:, 4:], np.broadcast_to(finite, (4, M)))
    assert np.all(np.asarray(mixed.log_q) <= 0)
    loss = in_batch_softmax_loss(jax.random.normal(jax.random.key(2), (4, D)), **mixed._asdict())
    assert np.isfinite(float(loss))
