"""``nce_loss`` and ``negative_sampling_loss`` for PyTorch against the reference."""

import itertools

import numpy as np
import pytest
import torch

from sampled_softmax import SampledSoftmaxError
from sampled_softmax import reference as R
from sampled_softmax.torch import (
    LogUniformSampler, UnigramSampler, compiled_core, explain_route, nce_loss, negative_sampling_loss,
)

from conftest import random_problem

needs_compiled = pytest.mark.skipif(compiled_core() is None, reason="compiled core unavailable")


def _cases(*axes, compiled_when):
    """Every combination on the Python path, and on the compiled core where it takes the call
    (``compiled_when(*case)``: one label per row, none ignored)."""
    for case in itertools.product(*axes):
        yield case + ("python",)
        if compiled_when(*case):
            yield pytest.param(*case, "compiled", marks=needs_compiled)


@pytest.mark.parametrize("T,hits,subtract,ignore,sparse,implementation", list(_cases(
    [1, 3], [False, True], [True, False], [False, True], [False, True],
    compiled_when=lambda T, hits, subtract, ignore, sparse: T == 1 and not ignore)))
def test_nce_matches_the_reference(rng, T, hits, subtract, ignore, sparse, implementation):
    W, b, y, h, sv = random_problem(rng, T=T)
    if ignore:
        y[0, -1] = -100
        y[2, :] = -100
    Wt, bt, ht = (torch.tensor(x, requires_grad=True) for x in (W, b, h))
    svt = tuple(torch.as_tensor(v) for v in sv)
    loss = nce_loss(Wt, bt, torch.as_tensor(y), ht, len(sv[0]), W.shape[0], num_true=T, sampled_values=svt,
                    remove_accidental_hits=hits, subtract_log_q=subtract, sparse=sparse,
                    ignore_index=-100 if ignore else None, implementation=implementation)
    kw = dict(remove_accidental_hits=hits, subtract_log_q=subtract, ignore_index=-100 if ignore else None)
    np.testing.assert_allclose(loss.detach().numpy(), R.nce_loss(W, b, y, h, sv, **kw), rtol=1e-12)
    weights = rng.normal(size=loss.shape[0])
    (loss * torch.as_tensor(weights)).sum().backward()
    for ours, ref in zip((ht.grad, Wt.grad, bt.grad), R.nce_grads(W, b, y, h, sv, grad_loss=weights, **kw)):
        ours = ours.to_dense() if ours.is_sparse else ours
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10, atol=1e-12)


def test_negative_sampling_is_nce_without_log_q(rng):
    W, b, y, h, sv = random_problem(rng)
    args = [torch.as_tensor(x) for x in (W, b, y, h)]
    svt = tuple(torch.as_tensor(v) for v in sv)
    ns = negative_sampling_loss(*args, len(sv[0]), W.shape[0], sampled_values=svt)
    torch.testing.assert_close(ns, nce_loss(*args, len(sv[0]), W.shape[0], sampled_values=svt, subtract_log_q=False))
    np.testing.assert_allclose(ns.numpy(), R.negative_sampling_loss(W, b, y, h, sv), rtol=1e-12)


def test_drawn_noise_reductions_and_routes(rng):
    W, b, y, h, _ = random_problem(rng, V=200, B=8)
    args = [torch.as_tensor(x, dtype=torch.float32) for x in (W, b)] + [torch.as_tensor(y[:, 0])] + [
        torch.as_tensor(h, dtype=torch.float32)]
    per_row = nce_loss(*args, 20, 200, sampler=LogUniformSampler(200, draw="with_replacement"),
                       generator=torch.Generator().manual_seed(1))
    mean = nce_loss(*args, 20, 200, sampler=LogUniformSampler(200, draw="with_replacement"), reduction="mean",
                    generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(mean, per_row.mean())
    with pytest.raises(SampledSoftmaxError, match="cannot be used: it takes num_true=1; received 2"):
        nce_loss(*args[:2], torch.as_tensor(y).repeat(1, 2), args[3], 20, 200, num_true=2, implementation="compiled")
    with pytest.raises(SampledSoftmaxError, match="`implementation` must be one of"):
        negative_sampling_loss(*args, 20, 200, implementation="pyhton")


@needs_compiled
@pytest.mark.parametrize("fn", [nce_loss, negative_sampling_loss])
@pytest.mark.parametrize("sampler", ["log_uniform", "uniform", LogUniformSampler(200, draw="with_replacement"),
                                     LogUniformSampler(200, draw="unique_exact")])
@pytest.mark.parametrize("bias,sparse,dtype", [(True, False, torch.float64), (False, True, torch.float32)])
def test_the_compiled_core_draws_and_computes_the_sigmoid_head_as_the_python_path(rng, fn, sampler, bias, sparse,
                                                                                  dtype):
    W, b, y, h, _ = random_problem(rng, V=200, B=16)
    y[3, 0] = y[5, 0] = 7  # a frequent class: accidental hits with the drawn candidates
    results = []
    for implementation in ("compiled", "python"):
        Wt, ht = (torch.tensor(x, dtype=dtype, requires_grad=True) for x in (W, h))
        bt = torch.tensor(b, dtype=dtype, requires_grad=True) if bias else None
        loss = fn(Wt, bt, torch.as_tensor(y[:, 0]), ht, 20, 200, remove_accidental_hits=True, sampler=sampler,
                  sparse=sparse, generator=torch.Generator().manual_seed(9), implementation=implementation)
        (loss * torch.arange(16, dtype=dtype)).sum().backward()
        grads = [g.to_dense() if g.is_sparse else g for g in (ht.grad, Wt.grad) + ((bt.grad,) if bias else ())]
        results.append((loss, grads))
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[0][0], results[1][0], **tol)
    for ours, theirs in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(ours, theirs, **tol)
    route = explain_route(torch.as_tensor(W), None, torch.as_tensor(y[:, 0]), torch.as_tensor(h), 20, 200,
                          sampler=sampler, loss="nce" if fn is nce_loss else "negative_sampling")
    assert route.name == "compiled_draw"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["nce", "negative_sampling"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_the_output_layer_trains_with_the_relatives_and_evaluates_exactly(rng, kind, reduction):
    from sampled_softmax.torch import SampledSoftmax, full_softmax_loss

    layer = SampledSoftmax(6, 40, 8, loss=kind, reduction=reduction, sampler=LogUniformSampler(40, draw="unique"))
    h = torch.randn(5, 3, 6, dtype=torch.float32)
    y = torch.randint(40, (5, 3))
    y[0, 0] = -100
    out = layer(h, y, generator=torch.Generator().manual_seed(4))
    fn = nce_loss if kind == "nce" else negative_sampling_loss
    # The layer's default is the loss's own: hits kept, as nce_loss and tf.nn.nce_loss.
    assert not layer.remove_accidental_hits
    per = fn(layer.weight, layer.bias, y, h, 8, 40, sampler=layer.sampler, ignore_index=-100,
             generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(out.output, -per)
    expected = {"none": per, "sum": per.sum(), "mean": per.sum() / (y != -100).sum()}[reduction]
    torch.testing.assert_close(out.loss, expected)
    out.loss.sum().backward()
    assert layer.weight.grad is not None
    layer.eval()
    torch.testing.assert_close(layer(h, y).loss, full_softmax_loss(layer.weight, layer.bias, y, h, reduction=reduction,
                                                                   ignore_index=-100))
    with pytest.raises(SampledSoftmaxError, match=r"`label_smoothing` must be 0 with loss="):
        SampledSoftmax(6, 40, 8, loss=kind, label_smoothing=0.1)
    with pytest.raises(SampledSoftmaxError, match=r"`loss` must be one of 'sampled_softmax', 'nce', 'negative_sampling'"):
        SampledSoftmax(6, 40, 8, loss="nsc")


@pytest.mark.parametrize("hits,ignore,sparse,bias,implementation", list(_cases(
    [False, True], [False, True], [False, True], [False, True],
    compiled_when=lambda hits, ignore, sparse, bias: not ignore)))
def test_per_example_noise_is_negative_sampling_row_by_row(rng, hits, ignore, sparse, bias, implementation):
    V = 30
    W, b, y, h, _ = random_problem(rng, V=V, B=6)
    if ignore:
        y[2, 0] = -100
    b = b if bias else None
    sampler = UnigramSampler(V, rng.integers(1, 50, V), distortion=0.75, draw="with_replacement")
    Wt = torch.tensor(W, requires_grad=True)
    bt = None if b is None else torch.tensor(b, requires_grad=True)
    ht = torch.tensor(h, requires_grad=True)
    kw = dict(sampler=sampler, noise="per_example", remove_accidental_hits=hits, sparse=sparse,
              ignore_index=-100 if ignore else None, implementation=implementation)
    loss = negative_sampling_loss(Wt, bt, torch.as_tensor(y[:, 0]), ht, 5, V, generator=torch.Generator().manual_seed(2),
                                  **kw)
    noise = sampler(torch.as_tensor(y), 6 * 5, generator=torch.Generator().manual_seed(2),
                    ignore_index=-100 if ignore else None)[0].view(6, 5).numpy()
    for i in range(6):
        sv = (noise[i], np.ones((1, 1)), np.ones(5))
        ref = R.negative_sampling_loss(W, b, y[i:i + 1], h[i:i + 1], sv, remove_accidental_hits=hits,
                                       ignore_index=-100 if ignore else None)
        np.testing.assert_allclose(loss[i].item(), ref[0], rtol=1e-12)
    weights = rng.normal(size=6)
    (loss * torch.as_tensor(weights)).sum().backward()
    d_h = np.zeros_like(h)
    d_W = np.zeros_like(W)
    for i in range(6):
        sv = (noise[i], np.ones((1, 1)), np.ones(5))
        gh, gW, _ = R.negative_sampling_grads(W, b, y[i:i + 1], h[i:i + 1], sv, grad_loss=weights[i:i + 1],
                                              remove_accidental_hits=hits, ignore_index=-100 if ignore else None)
        d_h[i] = gh[0]
        d_W += gW
    np.testing.assert_allclose(ht.grad.numpy(), d_h, rtol=1e-10, atol=1e-12)
    grad_W = Wt.grad.to_dense() if Wt.grad.is_sparse else Wt.grad
    assert Wt.grad.is_sparse == sparse
    np.testing.assert_allclose(grad_W.numpy(), d_W, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("hits,ignore", [(False, False), (True, True)])
def test_nce_with_per_example_noise_is_nce_row_by_row_with_expected_counts_k_q(rng, hits, ignore):
    """``nce_loss(noise="per_example")``: each row its own k draws with replacement, corrected by
    ``log(k q(c))`` (the expected count of k draws), as the reference computes it row by row."""
    V, k = 30, 5
    W, b, y, h, _ = random_problem(rng, V=V, B=6)
    if ignore:
        y[2, 0] = -100
    counts = rng.integers(1, 50, V).astype(float)
    sampler = UnigramSampler(V, counts, distortion=0.75, draw="with_replacement")
    q = counts ** 0.75 / np.sum(counts ** 0.75)
    ignore_index = -100 if ignore else None
    loss = nce_loss(torch.tensor(W), torch.tensor(b), torch.as_tensor(y[:, 0]), torch.tensor(h), k, V,
                    sampler=sampler, noise="per_example", remove_accidental_hits=hits, ignore_index=ignore_index,
                    generator=torch.Generator().manual_seed(2))
    noise = sampler(torch.as_tensor(y), 6 * k, generator=torch.Generator().manual_seed(2),
                    ignore_index=ignore_index)[0].view(6, k).numpy()
    for i in range(6):
        true_count = np.array([[k * q[max(y[i, 0], 0)]]])
        sv = (noise[i], true_count, k * q[noise[i]])
        ref = R.nce_loss(W, b, y[i:i + 1], h[i:i + 1], sv, remove_accidental_hits=hits, ignore_index=ignore_index)
        np.testing.assert_allclose(loss[i].item(), ref[0], rtol=1e-6)


@needs_compiled
def test_per_example_noise_routes():
    W, h, y = torch.randn(30, 4), torch.randn(3, 4), torch.tensor([1, 2, 3])
    kw = dict(sampler=UnigramSampler(30, np.arange(30, 0, -1.0), draw="with_replacement"), loss="negative_sampling",
              noise="per_example")
    assert explain_route(W, None, y, h, 5, 30, **kw) == ("compiled", "the compiled core computes the loss but does "
                                                                     "not draw: the noise of each example is drawn by "
                                                                     "its sampler (noise='per_example')")
    assert explain_route(W, None, y.view(3, 1).expand(3, 2), h, 5, 30, num_true=2, **kw).name == "python"
    with pytest.raises(SampledSoftmaxError, match="cannot be used: it takes num_true=1; received 2"):
        negative_sampling_loss(W, None, y.view(3, 1).expand(3, 2), h, 5, 30, num_true=2, noise="per_example",
                               sampler=kw["sampler"], implementation="compiled")


def test_per_example_noise_needs_independent_draws():
    W, h, y = torch.randn(30, 4), torch.randn(3, 4), torch.tensor([1, 2, 3])
    with pytest.raises(SampledSoftmaxError, match=r"`sampler` must draw 'with_replacement' with noise='per_example'"):
        negative_sampling_loss(W, None, y, h, 5, 30, noise="per_example", sampler=LogUniformSampler(30))
    with pytest.raises(SampledSoftmaxError, match=r"`noise` must be one of 'shared', 'per_example'"):
        negative_sampling_loss(W, None, y, h, 5, 30, noise="each")
    with pytest.raises(SampledSoftmaxError, match=r"`sampled_values` cannot be given with noise='per_example'"):
        negative_sampling_loss(W, None, y, h, 5, 30, sampled_values=(torch.arange(5), torch.ones(3, 1),
                                                                     torch.ones(5)), noise="per_example")
