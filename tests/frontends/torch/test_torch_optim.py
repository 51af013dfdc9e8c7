"""``SparseRowAdam`` against ``torch.optim.Adam`` / ``SparseAdam`` and its row-wise state, in
both implementations (``"auto"`` takes the compiled step where it can be built)."""

import itertools

import pytest
import torch

from sampled_softmax import SampledSoftmaxError
from sampled_softmax.torch import SparseRowAdam, _compiled

IMPLS = pytest.mark.parametrize("impl", ["auto", "python"])
needs_compiled = pytest.mark.skipif(_compiled.extension() is None,
                                    reason=f"compiled core unavailable: {_compiled.unavailable_reason()}")


def sparse(rows, values, shape):
    return torch.sparse_coo_tensor(rows.unsqueeze(0), values, shape, check_invariants=True)


@IMPLS
def test_equals_adam_when_every_row_is_touched(impl):
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(20, 4))
    b = torch.nn.Parameter(a.detach().clone())
    opt_a, opt_b = torch.optim.Adam([a], lr=0.01), SparseRowAdam([b], lr=0.01, implementation=impl)
    for _ in range(6):
        g = torch.randn(20, 4)
        a.grad, b.grad = g.clone(), sparse(torch.arange(20), g, (20, 4))
        opt_a.step()
        opt_b.step()
    assert torch.allclose(a, b, rtol=0, atol=1e-6)


@IMPLS
def test_lazy_like_sparse_adam_and_untouched_rows_keep_parameters_and_state(impl):
    torch.manual_seed(1)
    a = torch.nn.Parameter(torch.randn(30, 3))
    b = torch.nn.Parameter(a.detach().clone())
    start = a.detach().clone()
    # Tiny eps: SparseAdam puts eps outside the bias correction, Adam inside; they agree as eps -> 0.
    opt_a, opt_b = torch.optim.SparseAdam([a], lr=0.02, eps=1e-12), SparseRowAdam([b], lr=0.02, eps=1e-12, implementation=impl)
    for step in range(5):
        rows = torch.tensor([1, 5, 5, 7 + step])  # duplicates are summed
        g = torch.randn(4, 3)
        a.grad, b.grad = sparse(rows, g, (30, 3)), sparse(rows, g, (30, 3))
        opt_a.step()
        opt_b.step()
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    touched = {1, 5, 7, 8, 9, 10, 11}
    untouched = [r for r in range(30) if r not in touched]
    assert torch.equal(b.detach()[untouched], start[untouched])
    assert torch.count_nonzero(opt_b.state[b]["moments"][untouched]) == 0


@IMPLS
def test_rowwise_second_moment_is_one_value_per_row(impl):
    p = torch.nn.Parameter(torch.zeros(10, 4))
    opt = SparseRowAdam([p], lr=0.1, betas=(0.0, 0.5), eps=0.0, rowwise=True, implementation=impl)
    g = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    p.grad = sparse(torch.tensor([3]), g, (10, 4))
    opt.step()
    assert "exp_avg" not in opt.state[p]
    v = opt.state[p]["exp_avg_sq"]
    assert v.shape == (10,) and v[3] == pytest.approx(0.5 * (1 + 4 + 9 + 16) / 4)
    # One step: v_hat = mean(g^2), update = -lr * g / sqrt(mean(g^2)).
    assert torch.allclose(p[3], -0.1 * g[0] / (7.5 ** 0.5))
    assert opt.state_bytes() == 10 * 4 + 8 * 0  # float32 [10], no first moment


def test_state_sizes():
    p = torch.nn.Parameter(torch.zeros(1000, 16))
    full, row = SparseRowAdam([p]), SparseRowAdam([torch.nn.Parameter(torch.zeros(1000, 16))], rowwise=True)
    p.grad = sparse(torch.tensor([0]), torch.ones(1, 16), (1000, 16))
    full.step()
    q = row.param_groups[0]["params"][0]
    q.grad = sparse(torch.tensor([0]), torch.ones(1, 16), (1000, 16))
    row.step()
    assert full.state_bytes() == 2 * 1000 * 16 * 4
    assert row.state_bytes() == 1000 * 16 * 4 + 1000 * 4


@needs_compiled
@pytest.mark.parametrize("dtype,rowwise,beta1", list(itertools.product(
    (torch.float32, torch.float64), (False, True), (0.9, 0.0))))
def test_compiled_step_equals_python_step(dtype, rowwise, beta1):
    # Duplicate rows in every gradient, a table and its bias, several steps.
    results = []
    for impl in ("compiled", "python"):
        gen = torch.Generator().manual_seed(0)
        W = torch.nn.Parameter(torch.randn(40, 6, generator=gen, dtype=dtype))
        b = torch.nn.Parameter(torch.randn(40, generator=gen, dtype=dtype))
        opt = SparseRowAdam([W, b], lr=0.05, betas=(beta1, 0.99), rowwise=rowwise, implementation=impl)
        for _ in range(4):
            rows = torch.randint(40, (25,), generator=gen)
            values = torch.randn(25, 6, generator=gen, dtype=dtype)
            W.grad, b.grad = sparse(rows, values, (40, 6)), sparse(rows, values[:, 0].clone(), (40,))
            opt.step()
        results.append([W.detach(), b.detach()] + [v for s in opt.state.values() for v in s.values()
                                                    if isinstance(v, torch.Tensor)])
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    assert len(results[0]) == len(results[1])
    for a, e in zip(*results):
        torch.testing.assert_close(a, e, **tol)


@needs_compiled
def test_compiled_step_where_it_does_not_apply():
    p = torch.nn.Parameter(torch.zeros(10, 4, dtype=torch.bfloat16))
    p.grad = sparse(torch.tensor([3]), torch.ones(1, 4, dtype=torch.bfloat16), (10, 4))
    with pytest.raises(SampledSoftmaxError, match="`implementation='compiled'` cannot be used: .*float32 or float64"):
        SparseRowAdam([p], implementation="compiled").step()
    opt = SparseRowAdam([p], implementation="auto")  # the Python step takes it
    opt.step()
    assert p[3].ne(0).all() and p[:3].eq(0).all()
    with pytest.raises(SampledSoftmaxError, match="`implementation` must be one of"):
        SparseRowAdam([p], implementation="cuda")


def test_bad_hyperparameters():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(SampledSoftmaxError, match=r"`lr` must be > 0; received 0"):
        SparseRowAdam(p, lr=0)
    with pytest.raises(SampledSoftmaxError, match=r"`betas` must be in \[0, 1\); received \(0.9, 1.0\)"):
        SparseRowAdam(p, betas=(0.9, 1.0))


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.SGD(ps, lr=0.1),
    lambda ps: torch.optim.Adagrad(ps, lr=0.1),
], ids=["SGD", "Adagrad"])
def test_loss_sparse_gradients_drive_stock_optimizers_like_dense_ones(make):
    """The loss's uncoalesced sparse row gradients (duplicates included) give SGD and Adagrad
    the same update as its dense gradient (untouched rows get zero gradient either way)."""
    from sampled_softmax.torch import sampled_softmax_loss

    torch.manual_seed(0)
    W0, b0, h = torch.randn(50, 6), torch.randn(50), torch.randn(8, 6)
    y = torch.tensor([1, 1, 2, 3, 3, 3, 4, 5])  # repeated labels: duplicate rows
    results = []
    for sparse in (False, True):
        W, b = torch.nn.Parameter(W0.clone()), torch.nn.Parameter(b0.clone())
        opt = make([W, b])
        for step in range(3):
            opt.zero_grad(set_to_none=True)
            sampled_softmax_loss(W, b, y, h, 10, 50, sparse=sparse, reduction="mean",
                                 generator=torch.Generator().manual_seed(step)).backward()
            assert W.grad.is_sparse == sparse
            opt.step()
        results.append((W.detach(), b.detach()))
    for dense_p, sparse_p in zip(*results):
        assert torch.allclose(dense_p, sparse_p, rtol=1e-5, atol=1e-6)


def test_loss_sparse_gradients_drive_sparse_adam_like_sparse_row_adam():
    from sampled_softmax.torch import sampled_softmax_loss

    torch.manual_seed(0)
    W0, h = torch.randn(50, 6), torch.randn(8, 6)
    y = torch.tensor([1, 1, 2, 3, 3, 3, 4, 5])
    results = []
    for make in (lambda ps: torch.optim.SparseAdam(ps, lr=0.05, eps=1e-12),
                 lambda ps: SparseRowAdam(ps, lr=0.05, eps=1e-12)):
        W = torch.nn.Parameter(W0.clone())
        opt = make([W])
        for step in range(4):
            opt.zero_grad(set_to_none=True)
            sampled_softmax_loss(W, None, y, h, 10, 50, sparse=True, reduction="mean",
                                 generator=torch.Generator().manual_seed(step)).backward()
            opt.step()
        results.append(W.detach())
    assert torch.allclose(results[0], results[1], rtol=1e-5, atol=1e-6)
