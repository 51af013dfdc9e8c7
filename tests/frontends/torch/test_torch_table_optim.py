"""Fused table optimizers (``RowSGD``, ``RowAdagrad``, ``RowAdam``): ``k`` fused steps equal the
unfused path (the loss with sparse row gradients, then the same update applied to the summed row
gradient by an independent implementation: ``torch.optim.SGD``, ``SparseRowAdam``, and
FBGEMM's row-wise Adagrad written out in NumPy here), with repeated rows, ignored labels,
accidental hits and biases; state saved and restored mid-training; bad uses refused."""

import io
import math

import numpy as np
import pytest
import torch

from sampled_softmax import SampledSoftmaxError
from sampled_softmax.torch import (
    RowAdagrad, RowAdam, RowSGD, SampledSoftmax, SparseRowAdam, UnigramSampler, compiled_core, explain_route,
    nce_loss, negative_sampling_loss, sampled_softmax_loss,
)

V, D, B, S = 40, 5, 9, 12
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-6, atol=1e-6)}


def _batch(k, dtype, ignore):
    g = torch.Generator().manual_seed(100 + k)
    h = torch.randn(B, D, dtype=dtype, generator=g)
    y = torch.randint(V, (B,), generator=g)
    y[1] = y[0]  # a repeated label row
    if ignore:
        y[2] = -100
    return h, y


class _AdagradRowwise:
    """FBGEMM's exact row-wise Adagrad, written out: G_r += mean(g_r^2), w_r -= lr g_r / (sqrt(G_r) + eps)."""

    def __init__(self, lr, eps, params):
        self.lr, self.eps, self.params = lr, eps, params
        self.state = [np.zeros(p.shape[0]) for p in params]

    def step(self):
        for p, acc in zip(self.params, self.state):
            grad = p.grad.coalesce()
            rows, g = grad.indices()[0].numpy(), grad.values().double().numpy()
            g2 = g.reshape(len(rows), -1)
            acc[rows] += (g2 ** 2).mean(1)
            update = g / (np.sqrt(acc[rows]) + self.eps).reshape((-1,) + (1,) * (g.ndim - 1))
            with torch.no_grad():
                p.index_add_(0, torch.as_tensor(rows), torch.as_tensor(-self.lr * update, dtype=p.dtype))


def _unfused(name, params):
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.3)
    if name == "adagrad":
        return _AdagradRowwise(0.3, 1e-10, params)
    return SparseRowAdam(params, lr=0.05, betas=(0.8, 0.9), eps=1e-8, rowwise=name == "adam_rowwise")


def _fused(name):
    if name == "sgd":
        return RowSGD(lr=0.3)
    if name == "adagrad":
        return RowAdagrad(lr=0.3, eps=1e-10)
    return RowAdam(lr=0.05, betas=(0.8, 0.9), eps=1e-8, rowwise=name == "adam_rowwise")


LOSSES = {
    "sampled_softmax": lambda W, b, y, h, g, **kw: sampled_softmax_loss(W, b, y, h, S, V, sampler="uniform",
                                                                         generator=g, ignore_index=-100, **kw),
    "nce": lambda W, b, y, h, g, **kw: nce_loss(W, b, y, h, S, V, sampler="uniform", generator=g,
                                                remove_accidental_hits=True, ignore_index=-100, **kw),
    "exclude_true": lambda W, b, y, h, g, **kw: sampled_softmax_loss(W, b, y, h, S, V, sampler="uniform", generator=g,
                                                                      ignore_index=-100, exclude_true=True, **kw),
    "per_example": lambda W, b, y, h, g, **kw: negative_sampling_loss(
        W, b, y, h, 4, V, sampler=UnigramSampler(V, np.arange(1, V + 1), draw="with_replacement"), generator=g,
        remove_accidental_hits=True, ignore_index=-100, noise="per_example", **kw),
}


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adam", "adam_rowwise"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_steps_equal_the_unfused_path(name, loss, dtype):
    ignore = loss != "nce" or name == "adam"
    torch.manual_seed(0)
    W0, b0 = torch.randn(V, D, dtype=dtype), torch.randn(V, dtype=dtype)
    W, b = W0.clone(), b0.clone()  # the fused optimizer's: no grad
    Wp, bp = torch.nn.Parameter(W0.clone()), torch.nn.Parameter(b0.clone())
    fused, unfused = _fused(name), _unfused(name, [Wp, bp])
    fn = LOSSES[loss]
    for k in range(4):
        h, y = _batch(k, dtype, ignore)
        h1, h2 = h.clone().requires_grad_(), h.clone().requires_grad_()
        out = fn(W, b, y, h1, torch.Generator().manual_seed(k), table_optimizer=fused)
        (out * torch.linspace(0.5, 1.5, B, dtype=dtype)).sum().backward()
        for p in (Wp, bp):
            p.grad = None
        ref = fn(Wp, bp, y, h2, torch.Generator().manual_seed(k), sparse=True, implementation="python")
        (ref * torch.linspace(0.5, 1.5, B, dtype=dtype)).sum().backward()
        unfused.step()
        torch.testing.assert_close(out.detach(), ref.detach(), **TOL[dtype])
        torch.testing.assert_close(h1.grad, h2.grad, **TOL[dtype])
        torch.testing.assert_close(W, Wp.detach(), **TOL[dtype])
        torch.testing.assert_close(b, bp.detach(), **TOL[dtype])
    assert not torch.equal(W, W0), "the table must have moved"
    assert int(fused.step) == 4


def test_a_row_no_step_touches_keeps_its_value_and_state():
    W, h, y = torch.randn(V, D, dtype=torch.float64), torch.randn(B, D, dtype=torch.float64), torch.arange(B)
    sv = (torch.arange(B, B + 4), torch.ones(B, 1), torch.ones(4))
    opt = RowAdam(lr=0.1)
    before = W.clone()
    sampled_softmax_loss(W, None, y, h.requires_grad_(), 4, V, sampled_values=sv, table_optimizer=opt).sum().backward()
    touched = torch.zeros(V, dtype=torch.bool)
    touched[: B + 4] = True
    assert torch.equal(W[~touched], before[~touched]) and not torch.equal(W[touched], before[touched])
    assert torch.all(opt.exp_avg[~touched] == 0) and torch.all(opt.exp_avg_sq[~touched] == 0)


def test_only_the_table_trains_when_nothing_else_requires_grad():
    W = torch.randn(V, D, dtype=torch.float64)
    before = W.clone()
    loss = sampled_softmax_loss(W, None, torch.arange(B), torch.randn(B, D, dtype=torch.float64), S, V,
                                table_optimizer=RowSGD(0.1), generator=torch.Generator().manual_seed(0))
    loss.sum().backward()
    assert not torch.equal(W, before)


def _layer(seed, **kw):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Embedding(V, D), torch.nn.Flatten(0, 0)), SampledSoftmax(
        D, V, S, sampler="uniform", **kw).double()


def test_the_layer_with_a_fused_adam_trains_as_sparse_rows_and_sparse_row_adam():
    enc1, head1 = _layer(0, table_optimizer=RowAdam(lr=0.05))
    enc2, head2 = _layer(0, sparse=True)
    enc1, enc2 = enc1.double(), enc2.double()
    assert not head1.weight.requires_grad and not head1.bias.requires_grad
    opt1 = torch.optim.SGD(list(enc1.parameters()) + list(head1.parameters()), lr=0.1)  # the table has no grad
    opt2 = torch.optim.SGD(enc2.parameters(), lr=0.1)
    table_opt2 = SparseRowAdam(head2.parameters(), lr=0.05)
    for k in range(3):
        x, y = torch.randint(V, (B,)), torch.randint(V, (B,))
        out1 = head1(enc1(x), y, generator=torch.Generator().manual_seed(k))
        out2 = head2(enc2(x), y, generator=torch.Generator().manual_seed(k))
        for o in (opt1, opt2, table_opt2):
            o.zero_grad()
        out1.loss.backward()
        out2.loss.backward()
        opt1.step(), opt2.step(), table_opt2.step()
        torch.testing.assert_close(out1.loss, out2.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(head1.weight, head2.weight, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(enc1[0].weight, enc2[0].weight, rtol=1e-12, atol=1e-12)


def test_state_saved_mid_training_resumes_the_same_trajectory():
    def run(steps, head, start=0):
        for k in range(start, start + steps):
            h = torch.randn(B, D, dtype=torch.float64, generator=torch.Generator().manual_seed(50 + k))
            y = torch.randint(V, (B,), generator=torch.Generator().manual_seed(80 + k))
            head(h.requires_grad_(), y, generator=torch.Generator().manual_seed(k)).loss.backward()

    _, straight = _layer(1, table_optimizer=RowAdam(lr=0.05, rowwise=True))
    run(5, straight)
    _, first = _layer(1, table_optimizer=RowAdam(lr=0.05, rowwise=True))
    run(2, first)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    assert {"table_optimizer.step", "table_optimizer.exp_avg", "table_optimizer.exp_avg_sq"} <= set(
        first.state_dict())
    _, resumed = _layer(7, table_optimizer=RowAdam(lr=0.05, rowwise=True))
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    run(3, resumed, start=2)
    torch.testing.assert_close(resumed.weight, straight.weight, rtol=0, atol=0)
    torch.testing.assert_close(resumed.table_optimizer.exp_avg_sq, straight.table_optimizer.exp_avg_sq, rtol=0, atol=0)
    assert int(resumed.table_optimizer.step) == 5


def test_bad_uses_are_clear_errors():
    W = torch.randn(V, D, dtype=torch.float64)
    h, y = torch.randn(B, D, dtype=torch.float64, requires_grad=True), torch.arange(B)
    with pytest.raises(SampledSoftmaxError, match=r"`weights` requires grad: with a table_optimizer"):
        sampled_softmax_loss(W.clone().requires_grad_(), None, y, h, S, V, table_optimizer=RowSGD(0.1))
    with pytest.raises(SampledSoftmaxError, match=r"`sparse=True` has no meaning with a table_optimizer"):
        sampled_softmax_loss(W, None, y, h, S, V, table_optimizer=RowSGD(0.1), sparse=True)
    with pytest.raises(SampledSoftmaxError, match=r"one \[num_classes, dim\] table with a table_optimizer; received 2"):
        sampled_softmax_loss([W[:20], W[20:]], None, y, h, S, V, table_optimizer=RowSGD(0.1))
    with pytest.raises(TypeError, match=r"`table_optimizer` must be a RowSGD, RowAdagrad or RowAdam; received SGD"):
        sampled_softmax_loss(W, None, y, h, S, V, table_optimizer=torch.optim.SGD([W.clone().requires_grad_()], 0.1))
    if compiled_core() is not None:
        with pytest.raises(SampledSoftmaxError, match=r"`implementation='compiled'` cannot be used: with per-example"):
            negative_sampling_loss(W, None, y, h, 3, V, table_optimizer=RowSGD(0.1), implementation="compiled",
                                   noise="per_example")
        assert explain_route(W, None, y, h, S, V, table_optimizer=RowSGD(0.1)).name == "compiled_draw"
        route = explain_route(W, None, y, h, 3, V, table_optimizer=RowSGD(0.1), loss="negative_sampling",
                              noise="per_example")
        assert route.name == "python" and "fused table_optimizer" in route.reason
    opt = RowAdam()
    sampled_softmax_loss(W, None, y, h, S, V, table_optimizer=opt)
    with pytest.raises(SampledSoftmaxError, match=r"holds the state of a table of shape \[40, 5\]"):
        sampled_softmax_loss(torch.randn(V, D + 1, dtype=torch.float64), None, y,
                             torch.randn(B, D + 1, dtype=torch.float64), S, V, table_optimizer=opt)
    # Gradient accumulation: the second loss's backward finds the table moved since its forward.
    opt = RowSGD(0.1)
    a = sampled_softmax_loss(W, None, y, h, S, V, table_optimizer=opt).sum()
    b = sampled_softmax_loss(W, None, y, h, S, V, table_optimizer=opt).sum()
    with pytest.raises(SampledSoftmaxError, match=r"the table changed between this loss's forward and its backward"):
        (a + b).backward()
    with pytest.raises(RuntimeError, match=r"differentiable once"):
        loss = sampled_softmax_loss(W, None, y, h, S, V, table_optimizer=RowSGD(0.1)).sum()
        torch.autograd.grad(loss, h, create_graph=True)
    with pytest.raises(NotImplementedError, match=r"torch.func"):
        torch.func.grad(lambda x: sampled_softmax_loss(W, None, y, x, S, V, table_optimizer=RowSGD(0.1)).sum())(h)
    with pytest.raises(SampledSoftmaxError, match=r"`table_optimizer` needs the layer's own table"):
        SampledSoftmax(D, V, S, weight=torch.nn.Parameter(torch.randn(V, D)), table_optimizer=RowSGD(0.1))
    with pytest.raises(SampledSoftmaxError, match=r"`lr` must be positive and finite; received -1.0"):
        RowAdam(lr=-1)
    with pytest.raises(SampledSoftmaxError, match=r"`betas` must be in \[0, 1\); received \(0.9, 1.0\)"):
        RowAdam(betas=(0.9, 1.0))
    with pytest.raises(TypeError, match=r"`lr` must be a number; received str"):
        RowSGD("0.1")


def test_the_adagrad_formula_on_one_row_by_hand():
    """One row touched twice in one step, by hand: G = mean(g^2) of the summed gradient."""
    W = torch.zeros(3, 2, dtype=torch.float64)
    opt = RowAdagrad(lr=0.5, eps=0.0)
    opt.step_rows(W, None, torch.tensor([1, 1]), torch.tensor([[1.0, 2.0], [2.0, 2.0]], dtype=torch.float64), None,
                  None)
    g = np.array([3.0, 4.0])  # the summed gradient
    G = (g ** 2).mean()
    np.testing.assert_allclose(W[1].numpy(), -0.5 * g / math.sqrt(G))
    assert torch.all(W[[0, 2]] == 0) and float(opt.sum_sq[1]) == G


@pytest.mark.skipif(compiled_core() is None, reason="the compiled core cannot be built here")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rowwise", [False, True])
@pytest.mark.parametrize("head", ["sampled_softmax", "nce"])
@pytest.mark.parametrize("sampler", ["uniform", "unigram"])
def test_the_compiled_fused_step_equals_the_python_one(dtype, rowwise, head, sampler):
    """The compiled routes (the draw compiled too with "uniform"; the core's loss and
    SparseRowAdam's compiled pass in both) and the Python route (the autograd Function, torch
    ops) make the same steps, bias and repeated rows included."""
    if sampler == "unigram":
        sampler = UnigramSampler(V, np.arange(1, V + 1))
    torch.manual_seed(3)
    W0, b0 = torch.randn(V, D, dtype=dtype), torch.randn(V, dtype=dtype)
    tables = {impl: (W0.clone(), b0.clone(), RowAdam(lr=0.05, rowwise=rowwise, implementation=impl))
              for impl in ("compiled", "python")}
    fn = sampled_softmax_loss if head == "sampled_softmax" else nce_loss
    for k in range(3):
        h, y = _batch(k, dtype, ignore=False)
        for impl, (W, b, opt) in tables.items():
            hk = h.clone().requires_grad_()
            loss = fn(W, b, y, hk, S, V, sampler=sampler, generator=torch.Generator().manual_seed(k),
                      table_optimizer=opt, implementation=impl)
            loss.sum().backward()
            if impl == "compiled":
                first = (loss.detach(), hk.grad)
            else:
                torch.testing.assert_close(loss.detach(), first[0], **TOL[dtype])
                torch.testing.assert_close(hk.grad, first[1], **TOL[dtype])
    (Wc, bc, oc), (Wp, bp, op) = tables["compiled"], tables["python"]
    torch.testing.assert_close(Wc, Wp, **TOL[dtype])
    torch.testing.assert_close(bc, bp, **TOL[dtype])
    torch.testing.assert_close(oc.exp_avg_sq, op.exp_avg_sq, **TOL[dtype])
    assert not torch.equal(Wc, W0)
