"""The PyTorch front end against the NumPy float64 reference, over a grid of configurations."""

import itertools

import numpy as np
import pytest
import torch

from sampled_softmax import reference as R
from sampled_softmax.torch import full_softmax_loss, sampled_softmax_loss
from conftest import random_problem

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-6)}


def run(W, b, y, h, sv, dtype, *, lead=None, sparse=False, shards=None, strategy="div", **kw):
    tW = torch.tensor(W, dtype=dtype, requires_grad=True)
    tb = torch.tensor(b, dtype=dtype, requires_grad=True)
    th = torch.tensor(h, dtype=dtype, requires_grad=True)
    ty = torch.tensor(y)
    weights = tW
    if shards:
        weights = [x.detach().clone().requires_grad_(True) for x in _split(tW, shards, strategy)]
    h_in, y_in = th, ty
    if lead is not None:
        h_in = th.reshape(*lead, -1)
        y_in = ty.reshape(*lead, -1) if y.shape[1] > 1 else ty.reshape(*lead)
    tsv = (torch.tensor(sv[0]), torch.tensor(sv[1], dtype=torch.float32), torch.tensor(sv[2], dtype=torch.float32))
    loss = sampled_softmax_loss(weights, tb, y_in, h_in, len(sv[0]), W.shape[0], y.shape[1],
                                sampled_values=tsv, sparse=sparse, partition_strategy=strategy, **kw)
    weight = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape) if loss.dim() else 1.0
    (loss * weight).sum().backward()
    if shards:
        gW = _unsplit([w.grad.to_dense() if w.grad.is_sparse else w.grad for w in weights], strategy, W.shape[0])
    else:
        gW = tW.grad.to_dense() if tW.grad.is_sparse else tW.grad
    gb = tb.grad.to_dense() if tb.grad.is_sparse else tb.grad
    return loss.detach(), th.grad, gW, gb, weight


def _split(w, n, strategy):
    V = w.shape[0]
    if strategy == "div":
        sizes = [V // n + (1 if p < V % n else 0) for p in range(n)]
        return torch.split(w, sizes)
    return [w[p::n] for p in range(n)]


def _unsplit(grads, strategy, V):
    n = len(grads)
    if strategy == "div":
        return torch.cat(grads)
    out = torch.zeros(V, grads[0].shape[1], dtype=grads[0].dtype)
    for p, g in enumerate(grads):
        out[p::n] = g
    return out


def sv32(sv):
    """Expected counts as the float32 the front end receives, so float64 comparisons are exact."""
    return (sv[0], sv[1].astype(np.float32).astype(np.float64), sv[2].astype(np.float32).astype(np.float64))


GRID = list(itertools.product(
    [torch.float64, torch.float32], [1, 3], [True, False], ["none", "mean", "sum"], [None, -1], [0.0, 0.2],
))


@pytest.mark.parametrize("dtype,T,hits,reduction,ignore,eps", GRID)
def test_loss_and_gradients_match_reference(dtype, T, hits, reduction, ignore, eps):
    rng = np.random.default_rng(hash((T, hits, reduction, ignore, eps)) % 2**32)
    W, b, y, h, sv = random_problem(rng, V=30, D=5, B=6, T=T, S=9, dup_candidates=True)
    if T > 1:
        y[2, 1] = y[2, 0]  # a duplicate label in a row
    if ignore is not None:
        y[3] = ignore
        y[4, -1] = ignore
    sv = sv32(sv)
    kw = dict(remove_accidental_hits=hits, ignore_index=ignore, label_smoothing=eps)
    loss, dh, dW, db, weight = run(W, b, y, h, sv, dtype, reduction=reduction, **kw)
    ref = R.sampled_softmax_loss(W, b, y, h, sv, **kw)
    live = np.ones(6, bool) if ignore is None else (y != ignore).any(1)
    ref_reduced = {"none": ref, "sum": ref.sum(), "mean": ref.sum() / live.sum()}[reduction]
    np.testing.assert_allclose(loss.numpy(), ref_reduced, **TOL[dtype])
    g = weight.numpy() if reduction == "none" else np.full(6, 1.0 / live.sum() if reduction == "mean" else 1.0)
    gh, gW, gb = R.sampled_softmax_grads(W, b, y, h, sv, grad_loss=g, **kw)
    for got, want in ((dh, gh), (dW, gW), (db, gb)):
        np.testing.assert_allclose(got.numpy(), want, **TOL[dtype])


@pytest.mark.parametrize("shards,strategy", [(2, "div"), (3, "div"), (3, "mod"), (4, "mod")])
@pytest.mark.parametrize("sparse", [False, True])
def test_sharded_weights_match_one_table(shards, strategy, sparse, rng):
    W, b, y, h, sv = random_problem(rng, V=31, T=2)
    sv = sv32(sv)
    loss, dh, dW, db, _ = run(W, b, y, h, sv, torch.float64, shards=shards, strategy=strategy, sparse=sparse)
    np.testing.assert_allclose(loss.numpy(), R.sampled_softmax_loss(W, b, y, h, sv), rtol=1e-12)
    gh, gW, gb = R.sampled_softmax_grads(W, b, y, h, sv, grad_loss=np.linspace(0.5, 1.5, 5))
    np.testing.assert_allclose(dW.numpy(), gW, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dh.numpy(), gh, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("lead", [(2, 3), (1, 6, 1)])
def test_leading_dims(lead, rng):
    W, b, y, h, sv = random_problem(rng, B=6, T=1)
    sv = sv32(sv)
    loss, dh, *_ = run(W, b, y, h, sv, torch.float64, lead=lead)
    assert loss.shape == lead
    np.testing.assert_allclose(loss.reshape(-1).numpy(), R.sampled_softmax_loss(W, b, y, h, sv), rtol=1e-12)


@pytest.mark.parametrize("ignore", [None, 7])
def test_sparse_and_dense_gradients_are_equal(ignore, rng):
    W, b, y, h, sv = random_problem(rng, T=2, dup_candidates=True)
    if ignore is not None:
        y[1, 0] = ignore
    sv = sv32(sv)
    dense = run(W, b, y, h, sv, torch.float64, ignore_index=ignore)
    sparse = run(W, b, y, h, sv, torch.float64, sparse=True, ignore_index=ignore)
    for a, s in zip(dense[:4], sparse[:4]):
        assert torch.equal(a, s) or torch.allclose(a, s, rtol=0, atol=1e-15)


def test_sparse_gradient_touches_only_sampled_rows(rng):
    W, b, y, h, sv = random_problem(rng, V=40, B=3, S=6, dup_candidates=True)
    y[2, 0] = -100
    tW = torch.tensor(W, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    sampled_softmax_loss(tW, tb, torch.tensor(y[:, 0]), torch.tensor(h), 6, 40, sampled_values=sv,
                         sparse=True, ignore_index=-100).sum().backward()
    assert tW.grad.is_sparse and tb.grad.is_sparse
    touched = set(y[:2, 0].tolist()) | set(sv[0].tolist())
    assert set(tW.grad.coalesce().indices()[0].tolist()) == touched  # ignored label 2 left out
    assert set(tb.grad.coalesce().indices()[0].tolist()) == touched


def test_gradcheck_float64(rng):
    W, b, y, h, sv = random_problem(rng, V=10, D=3, B=3, T=2, S=4)
    tW, tb, th = (torch.tensor(x, requires_grad=True) for x in (W, b, h))

    def f(W_, b_, h_):
        return sampled_softmax_loss(W_, b_, torch.tensor(y), h_, 4, 10, 2, sampled_values=sv, label_smoothing=0.1)

    assert torch.autograd.gradcheck(f, (tW, tb, th))


def test_gradcheck_through_log_prob_output(rng):
    W, b, y, h, sv = random_problem(rng, V=10, D=3, B=3, T=1, S=4)
    tW, th = torch.tensor(W, requires_grad=True), torch.tensor(h, requires_grad=True)

    def f(W_, h_):
        loss, logp = sampled_softmax_loss(W_, None, torch.tensor(y), h_, 4, 10, sampled_values=sv,
                                          label_smoothing=0.3, return_log_prob=True)
        return loss * 0.7 + logp * 1.3

    assert torch.autograd.gradcheck(f, (tW, th))
    # Without smoothing the sampled log-probability is exactly minus the loss.
    loss, logp = sampled_softmax_loss(tW, None, torch.tensor(y), th, 4, 10, sampled_values=sv, return_log_prob=True)
    assert torch.equal(loss, -logp)


def test_masked_candidates_get_exactly_zero_probability_and_gradient(rng):
    """Test the mask by its effect: the hit candidate's row gets no gradient from that example."""
    V, D = 20, 4
    W = torch.tensor(rng.normal(size=(V, D)), requires_grad=True)
    h = torch.tensor(rng.normal(size=(1, D)) * 50)  # large logits
    y = torch.tensor([5])
    sv = (torch.tensor([5, 6, 7]), torch.ones(1, 1), torch.ones(3))
    for eps in (0.0, 0.5):
        W.grad = None
        loss = sampled_softmax_loss(W, None, y, h, 3, V, sampled_values=sv, label_smoothing=eps)
        loss.backward()
        assert torch.isfinite(loss).all()
        # Dropping the hit candidate altogether gives the same loss and the same gradient.
        loss_without = sampled_softmax_loss(W.detach(), None, y, h, 2, V, sampled_values=(sv[0][1:], sv[1], sv[2][1:]), label_smoothing=eps)
        assert torch.allclose(loss.detach(), loss_without, rtol=1e-12)
        W2 = W.detach().clone().requires_grad_(True)
        sampled_softmax_loss(W2, None, y, h, 2, V, sampled_values=(sv[0][1:], sv[1], sv[2][1:]),
                             label_smoothing=eps).backward()
        assert torch.allclose(W.grad, W2.grad, rtol=1e-12, atol=0)
        # The masked column's probability is exactly zero: rows it would touch get nothing.
        assert torch.count_nonzero(W.grad[8:]) == 0 and torch.count_nonzero(W.grad[:5]) == 0


def test_every_class_sampled_equals_full_softmax_loss(rng):
    V = 25
    W, b, y, h, _ = random_problem(rng, V=V, B=8)
    sv = (np.arange(V), np.ones((8, 1)), np.ones(V))
    got = sampled_softmax_loss(torch.tensor(W), torch.tensor(b), torch.tensor(y[:, 0]), torch.tensor(h), V, V,
                               sampled_values=sv, label_smoothing=0.1)
    full = full_softmax_loss(torch.tensor(W), torch.tensor(b), torch.tensor(y[:, 0]), torch.tensor(h), label_smoothing=0.1)
    np.testing.assert_allclose(got.numpy(), full.numpy(), rtol=1e-12)


@pytest.mark.parametrize("T,ignore,eps", [(1, None, 0.0), (1, -100, 0.1), (3, -1, 0.2)])
def test_full_softmax_loss_matches_reference_and_cross_entropy(T, ignore, eps, rng):
    W, b, y, h, _ = random_problem(rng, V=17, B=6, T=T)
    if ignore is not None:
        y[1] = ignore
        y[2, -1] = ignore
    got = full_softmax_loss(torch.tensor(W), torch.tensor(b), torch.tensor(y if T > 1 else y[:, 0]), torch.tensor(h),
                            ignore_index=ignore, label_smoothing=eps)
    ref = R.full_softmax_loss(W, b, y, h, ignore_index=ignore, label_smoothing=eps)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-14)
    if T == 1:
        ce = torch.nn.functional.cross_entropy(torch.tensor(h @ W.T + b), torch.tensor(y[:, 0]), reduction="none",
                                               ignore_index=-100 if ignore is None else ignore, label_smoothing=eps)
        np.testing.assert_allclose(got.numpy(), ce.numpy(), rtol=1e-12)


def test_full_softmax_mean_reduction_skips_ignored_rows_like_cross_entropy(rng):
    W, b, y, h, _ = random_problem(rng, V=17, B=6)
    y[[1, 4], 0] = -100
    got = full_softmax_loss(torch.tensor(W), None, torch.tensor(y[:, 0]), torch.tensor(h), reduction="mean", ignore_index=-100)
    ce = torch.nn.functional.cross_entropy(torch.tensor(h @ W.T), torch.tensor(y[:, 0]))
    assert torch.allclose(got, ce, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_accumulate_in_float32(dtype, rng):
    W, b, y, h, sv = random_problem(rng, V=50, D=16, B=8, T=1)
    sv = sv32(sv)
    tW = torch.tensor(W, dtype=dtype, requires_grad=True)
    th = torch.tensor(h, dtype=dtype, requires_grad=True)
    loss = sampled_softmax_loss(tW, None, torch.tensor(y[:, 0]), th, 8, 50, sampled_values=sv)
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert tW.grad.dtype == dtype and th.grad.dtype == dtype
    # Against the reference evaluated on the same rounded inputs.
    ref = R.sampled_softmax_loss(tW.detach().double().numpy(), None, y, th.detach().double().numpy(), sv)
    np.testing.assert_allclose(loss.detach().numpy(), ref, rtol=1e-5, atol=1e-5)


def test_inputs_are_not_modified(rng):
    W, b, y, h, sv = random_problem(rng)
    tensors = [torch.tensor(W), torch.tensor(b), torch.tensor(y[:, 0]), torch.tensor(h)]
    tsv = tuple(torch.tensor(v) for v in sv)
    copies = [t.clone() for t in tensors] + [t.clone() for t in tsv]
    sampled_softmax_loss(*tensors, 8, 40, sampled_values=tsv, ignore_index=3, label_smoothing=0.1)
    for a, c in zip(list(tensors) + list(tsv), copies):
        assert torch.equal(a, c)


def test_empty_batch_gives_empty_loss():
    W = torch.randn(10, 4, requires_grad=True)
    loss = sampled_softmax_loss(W, None, torch.zeros(0, dtype=torch.long), torch.zeros(0, 4), 3, 10)
    assert loss.shape == (0,)
    loss.sum().backward()
    assert torch.count_nonzero(W.grad) == 0


def test_sampler_draws_on_the_default_path_are_reproducible():
    W, h, y = torch.randn(1000, 8), torch.randn(4, 8), torch.tensor([1, 2, 3, 4])
    a = sampled_softmax_loss(W, None, y, h, 20, 1000, generator=torch.Generator().manual_seed(0))
    b = sampled_softmax_loss(W, None, y, h, 20, 1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_expected_counts_in_any_float_dtype(rng):
    W, b, y, h, sv = random_problem(rng)
    ref = sampled_softmax_loss(torch.tensor(W), None, torch.tensor(y[:, 0]), torch.tensor(h), 8, 40,
                               sampled_values=tuple(torch.tensor(v) for v in sv))
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        tsv = (torch.tensor(sv[0]), torch.tensor(sv[1]).to(dtype), torch.tensor(sv[2]).to(dtype))
        got = sampled_softmax_loss(torch.tensor(W), None, torch.tensor(y[:, 0]), torch.tensor(h), 8, 40, sampled_values=tsv)
        assert torch.allclose(got, ref, rtol=1e-2), dtype


def test_numpy_and_torch_column_builders_agree(rng):
    """The CPU (NumPy) and accelerator (torch) bookkeeping give the same ids, log E and mask."""
    from sampled_softmax.torch import _columns as F

    _, _, y, _, sv = random_problem(rng, T=3, dup_candidates=True)
    y[1, 2] = -1
    yt = torch.tensor(y)
    valid = yt != -1
    y_safe = torch.where(valid, yt, 0)
    cand = torch.tensor(sv[0])
    sc = torch.tensor(sv[2], dtype=torch.float32)
    sc[3] = float("inf")
    tc = torch.tensor(sv[1], dtype=torch.float32)
    for hits in (True, False):
        flags = dict(remove_hits=hits, subtract_log_q=True, padded=True)
        a = F._columns_numpy(y_safe, valid, cand, tc, sc, torch.float32, **flags)
        b = F._columns_torch(y_safe, valid, cand, tc, sc, torch.float32, **flags)
        assert torch.equal(a[0], b[0]) and torch.allclose(a[1], b[1]) and torch.equal(a[2], b[2])
