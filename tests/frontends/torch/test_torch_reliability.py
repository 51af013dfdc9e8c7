"""PyTorch reliability: no crash, no hang, no silent wrong update (issue 14's findings, each a
test that failed before its fix), on the compiled and the Python implementations alike."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sampled_softmax import SampledSoftmaxError
from sampled_softmax import samplers as NS
from sampled_softmax.torch import (
    LearnedUnigramSampler, LogUniformSampler, SampledSoftmaxLoss, SparseRowAdam, UniformSampler, UnigramSampler,
    full_softmax_loss, sampled_softmax_loss,
)

IMPLS = pytest.mark.parametrize("impl", ["auto", "python"])
V, D, B = 20, 4, 3


def problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(V, D, generator=g), torch.randn(V, generator=g), torch.randn(B, D, generator=g), \
        torch.tensor([1, 2, 3])


# ---------------------------------------------------------------------------------------------
# SparseRowAdam: memory safety and the update it makes


@IMPLS
@pytest.mark.parametrize("bad_row,side", [(10, "up to 10"), (-1, "down to -1"), (1 << 40, "up to")])
def test_sparse_row_adam_rejects_rows_outside_the_parameter(impl, bad_row, side):
    p = torch.nn.Parameter(torch.zeros(10, 4))
    opt = SparseRowAdam([p], implementation=impl)
    p.grad = torch.sparse_coo_tensor(torch.tensor([[1, bad_row]]), torch.ones(2, 4), (10, 4), check_invariants=False)
    with pytest.raises(IndexError, match=rf"row indices must be in \[0, 9\] .*received {side}"):
        opt.step()
    assert torch.equal(p.detach(), torch.zeros(10, 4))  # nothing written, in or outside the parameter
    assert all(torch.count_nonzero(v) == 0 for s in opt.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))
    assert all(s["step"] == 0 for s in opt.state.values())  # the failed step did not count


@IMPLS
def test_sparse_row_adam_takes_an_element_sparse_gradient_as_its_rows(impl):
    """``dense.to_sparse()`` (sparse_dim=2) updates the rows holding its elements, as the same
    gradient written as rows does; before, its values were read as [nnz, D] rows."""
    dense = torch.zeros(10, 4)
    dense[2, 1], dense[7, 0], dense[7, 3] = 1.5, -2.0, 0.5
    results = []
    for grad in (dense.to_sparse(), dense.to_sparse(1)):
        assert grad.sparse_dim() in (1, 2)
        p = torch.nn.Parameter(torch.arange(40.0).view(10, 4))
        opt = SparseRowAdam([p], lr=0.1, implementation=impl)
        for _ in range(2):
            p.grad = grad.clone()
            opt.step()
        results.append(p.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
    untouched = [r for r in range(10) if r not in (2, 7)]
    assert torch.equal(results[0][untouched], torch.arange(40.0).view(10, 4)[untouched])
    assert results[0][2, 1] < 9.0 and results[0][7, 0] > 28.0  # moved against the gradient


@IMPLS
@pytest.mark.parametrize("eps", [1e-8, 1e-3])
def test_sparse_adam_eps_placement_equals_sparse_adam_at_its_default_eps(impl, eps):
    torch.manual_seed(3)
    a = torch.nn.Parameter(torch.randn(30, 3))
    b = torch.nn.Parameter(a.detach().clone())
    opt_a = torch.optim.SparseAdam([a], lr=0.02, eps=eps)
    opt_b = SparseRowAdam([b], lr=0.02, eps=eps, eps_placement="sparse_adam", implementation=impl)
    for step in range(5):
        rows = torch.tensor([1, 5, 5, 7 + step])
        g = torch.randn(4, 3) * 1e-4  # small gradients: where eps's placement matters most
        a.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), g, (30, 3))
        b.grad = a.grad.clone()
        opt_a.step()
        opt_b.step()
    torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def test_adam_eps_placement_differs_from_sparse_adam_at_the_default_eps():
    # The claim this option makes true: the default ("adam") is not SparseAdam's update.
    a, b = (torch.nn.Parameter(torch.zeros(4, 2)) for _ in range(2))
    g = torch.sparse_coo_tensor(torch.tensor([[1]]), torch.full((1, 2), 1e-7), (4, 2))
    for p, opt in ((a, torch.optim.SparseAdam([a], lr=1.0)), (b, SparseRowAdam([b], lr=1.0))):
        for _ in range(3):
            p.grad = g.clone()
            opt.step()
    assert not torch.allclose(a, b, rtol=1e-3, atol=0)


@pytest.mark.parametrize("kwargs,exc,message", [
    (dict(betas=(0.9,)), SampledSoftmaxError, r"`betas` must be a pair \(beta1, beta2\); received \(0.9,\)"),
    (dict(betas=0.9), SampledSoftmaxError, r"`betas` must be a pair"),
    (dict(lr="0.1"), TypeError, r"`lr` must be a real number; received str"),
    (dict(eps_placement="inside"), SampledSoftmaxError, r"`eps_placement` must be one of 'adam', 'sparse_adam'"),
])
def test_sparse_row_adam_hyperparameter_errors_name_the_argument(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        SparseRowAdam([torch.nn.Parameter(torch.zeros(3, 2))], **kwargs)


def test_sparse_row_adam_rejects_a_0d_parameter():
    with pytest.raises(SampledSoftmaxError, match=r"`params` must each have at least one dimension .*0-d"):
        SparseRowAdam([torch.nn.Parameter(torch.tensor(1.0))])


def test_sparse_row_adam_state_dict_from_before_eps_placement_loads():
    p = torch.nn.Parameter(torch.zeros(5, 2))
    opt = SparseRowAdam([p])
    state = opt.state_dict()
    del state["param_groups"][0]["eps_placement"]
    opt.load_state_dict(state)
    p.grad = torch.sparse_coo_tensor(torch.tensor([[1]]), torch.ones(1, 2), (5, 2))
    opt.step()
    assert p[1].ne(0).all()


# ---------------------------------------------------------------------------------------------
# Draws that cannot finish end with an error that says why


def test_unigram_sampler_state_dict_restores_its_table_settings_and_support():
    source = UnigramSampler(V, [1.0] * (V - 5), num_reserved_ids=5, distortion=0.75)
    target = UnigramSampler(V, [1.0] * V)
    target.load_state_dict(source.state_dict())
    assert (target.support, target.distortion, target.num_reserved_ids) == (15, 0.75, 5)
    with pytest.raises(SampledSoftmaxError, match=r"`num_sampled` must be <= 15 \(classes with non-zero"):
        target(torch.tensor([[7]]), 18)
    assert target(torch.tensor([[7]]), 15).sampled_candidates.min() >= 5


def test_unigram_counts_whose_sum_overflows_are_rejected():
    with pytest.raises(SampledSoftmaxError, match=r"`unigrams` \*\* distortion must have a finite sum"):
        UnigramSampler(10, [1e308] * 10)
    with pytest.raises(SampledSoftmaxError, match="finite sum"):
        NS.unigram_weights([1e200] * 4, distortion=2.0)


def test_a_unique_draw_that_cannot_finish_raises_the_same_error_on_both_paths(monkeypatch):
    # Every class of a log-uniform V = 5000 wanted: the last has probability 2.3e-5, so the draw
    # takes ~10^6 tries; with the bound lowered to 64 S = 320000 it must stop (as it does at the real
    # bound, 2^24 or 64 S, for the ~10^8 tries of V = 10^6: 3.6 s compiled, 50 s in NumPy).
    monkeypatch.setattr(NS, "UNIQUE_DRAW_MIN_LIMIT", 50_000)
    n = 5000
    W, h = torch.zeros(n, 2), torch.zeros(1, 2)
    errors = []
    for impl in ("auto", "python"):
        with pytest.raises(SampledSoftmaxError, match=r"`num_sampled`=5000 distinct classes were not found in "
                                                      r"\d+ draws .*stops after 320000") as info:
            sampled_softmax_loss(W, None, torch.tensor([0]), h, n, n, implementation=impl,
                                 generator=torch.Generator().manual_seed(0))
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    # The bound keeps a draw that can finish: the same call with the real bound.
    monkeypatch.undo()
    assert sampled_softmax_loss(W, None, torch.tensor([0]), h, n, n).shape == (1,)


def test_a_skewed_unigram_table_with_num_sampled_at_its_support_stops():
    sampler = UnigramSampler(12, [1.0] + [1e-13] * 11)
    with pytest.raises(SampledSoftmaxError, match="distinct classes were not found"):
        sampler(torch.tensor([[0]]), 12, generator=torch.Generator().manual_seed(0))


def test_the_torch_ops_draw_stops_at_the_same_bound():
    # The accelerator path of the samplers (torch ops), run on the CPU tensors it accepts.
    sampler = UnigramSampler(12, [1.0] + [1e-13] * 11)
    with pytest.raises(SampledSoftmaxError, match="distinct classes were not found"):
        sampler._draw_torch(torch.tensor([[0]]), 12, torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------
# Precision: samplers under .half()/.to(bfloat16), autocast, zero-probability labels


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("make", [
    lambda: UnigramSampler(V, np.arange(1.0, V + 1) * 1e4),
    lambda: LearnedUnigramSampler(V),
], ids=["unigram", "learned"])
def test_sampler_tables_keep_float64_when_the_module_is_cast(dtype, make):
    layer = SampledSoftmaxLoss(D, V, 5, sampler=make()).to(dtype)
    assert layer.weight.dtype == dtype
    assert all(buf.dtype == torch.float64 for buf in layer.sampler.buffers())
    if isinstance(layer.sampler, LearnedUnigramSampler):
        layer.sampler.counts.fill_(3000.0)  # past bfloat16's last exact integer (2048)
    loss = layer(torch.randn(B, D, dtype=dtype), torch.tensor([1, 2, 3])).loss
    assert torch.isfinite(loss)
    if isinstance(layer.sampler, LearnedUnigramSampler):
        assert layer.sampler.counts[1].item() == 3001.0
    layer.half().double()
    assert all(buf.dtype == torch.float64 for buf in layer.sampler.buffers())


@IMPLS
def test_autocast_training_step_runs_and_equals_the_float32_loss(impl):
    torch.manual_seed(0)
    head = SampledSoftmaxLoss(16, 200, 30, sampler="log_uniform", implementation=impl)  # no state between calls
    body = torch.nn.Linear(8, 16)
    x, y = torch.randn(12, 8), torch.randint(200, (12,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = body(x)
        loss = head(h, y, generator=torch.Generator().manual_seed(1)).loss
    assert h.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert head.weight.grad.dtype == torch.float32 and body.weight.grad is not None
    expected = head(h.detach().float(), y, generator=torch.Generator().manual_seed(1)).loss
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)


@IMPLS
def test_autocast_with_float32_hidden_states_gives_one_dtype_on_both_paths(impl):
    W, b, h, y = problem()
    W.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sampled_softmax_loss(W, b, y, h, 5, V, implementation=impl,
                                    generator=torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32
    loss.sum().backward()
    plain = sampled_softmax_loss(W.detach(), b, y, h, 5, V, implementation=impl,
                                 generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss.detach(), plain, rtol=0, atol=0)


def test_autocast_eval_loss_equals_cross_entropy_under_autocast():
    torch.manual_seed(0)
    head = SampledSoftmaxLoss(16, 500, 30).eval()
    h, y = torch.randn(64, 16), torch.randint(500, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head(h, y).loss
        expected = F.cross_entropy(F.linear(h, head.weight, head.bias), y)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)


@IMPLS
def test_a_label_the_sampler_never_draws_is_a_clear_error_not_nan(impl):
    W, b, h, _ = problem()
    sampler = UnigramSampler(V, [1.0] * (V - 1), num_reserved_ids=1)  # id 0 is reserved (<unk>)
    y = torch.tensor([0, 2, 3])
    with pytest.raises(SampledSoftmaxError, match=r"`labels` contains 0, which the sampler UnigramSampler.* "
                                                  r"gives probability 0"):
        sampled_softmax_loss(W, b, y, h, 5, V, sampler=sampler, implementation=impl)
    # Ignored, or without the correction, it is an ordinary label.
    ignored = sampled_softmax_loss(W, b, y, h, 5, V, sampler=sampler, ignore_index=0, implementation=impl)
    assert ignored[0] == 0 and torch.isfinite(ignored).all()
    uncorrected = sampled_softmax_loss(W, b, y, h, 5, V, sampler=sampler, subtract_log_q=False, implementation=impl)
    assert torch.isfinite(uncorrected).all()


# ---------------------------------------------------------------------------------------------
# Autograd: once differentiable, torch.func said clearly


@IMPLS
def test_double_backward_says_the_loss_is_once_differentiable(impl):
    W, b, h, y = problem()
    h.requires_grad_()
    loss = sampled_softmax_loss(W, b, y, h, 5, V, implementation=impl).sum()
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(loss, h, create_graph=True)
    (g,) = torch.autograd.grad(sampled_softmax_loss(W, b, y, h, 5, V, implementation=impl).sum(), h)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("transform", ["grad", "vmap"])
def test_torch_func_transforms_get_a_clear_error(transform):
    W, b, h, y = problem()
    f = lambda hh: sampled_softmax_loss(W, b, y, hh, 5, V).sum()  # noqa: E731
    with pytest.raises(NotImplementedError, match="does not run under torch.func transforms"):
        torch.func.grad(f)(h) if transform == "grad" else torch.vmap(f)(h[None])
    with pytest.raises(NotImplementedError, match="torch.func"):
        torch.func.grad(lambda hh: full_softmax_loss(W, b, y, hh).sum())(h)


# ---------------------------------------------------------------------------------------------
# Clear errors, the same on both implementations


@pytest.mark.parametrize("make", [
    lambda: UniformSampler(V), lambda: LogUniformSampler(V), lambda: UnigramSampler(V, [1.0] * V),
    lambda: LearnedUnigramSampler(V),
], ids=["uniform", "log_uniform", "unigram", "learned"])
@pytest.mark.parametrize("true_classes,exc,message", [
    (torch.tensor([[-1]]), SampledSoftmaxError, r"`true_classes` must be in \[0, 19\]; received -1"),
    (torch.tensor([[20]]), SampledSoftmaxError, r"`true_classes` must be in \[0, 19\]; received 20"),
    (torch.tensor([[1.0]]), TypeError, r"`true_classes` must have an integer dtype; received torch.float32"),
    ([[1]], TypeError, r"`true_classes` must be a torch.Tensor; received list"),
])
def test_samplers_called_directly_check_true_classes(make, true_classes, exc, message):
    sampler = make()
    with pytest.raises(exc, match=message):
        sampler(true_classes, 5)
    if isinstance(sampler, LearnedUnigramSampler):
        assert torch.equal(sampler.counts, torch.ones(V, dtype=torch.float64))  # nothing learned


def test_samplers_called_directly_skip_ignored_true_classes():
    values = LogUniformSampler(V)(torch.tensor([[1, -100]]), 5, ignore_index=-100)
    assert values.true_expected_count[0, 1] == 1.0


@IMPLS
@pytest.mark.parametrize("overrides,exc,message", [
    (dict(num_sampled=True), TypeError, r"`num_sampled` must be an int; received bool"),
    (dict(ignore_index="pad"), TypeError, r"`ignore_index` must be an int or None; received str"),
    (dict(generator=0), TypeError, r"`generator` must be a torch.Generator or None; received int"),
    (dict(sampled_values=(torch.arange(5), torch.ones(3, 1, dtype=torch.complex64), torch.ones(5))), TypeError,
     r"`sampled_values\[1\]` must have a real dtype; received torch.complex64"),
    (dict(sampled_values=(torch.arange(5), torch.ones(3, 1), torch.ones(5, dtype=torch.complex64))), TypeError,
     r"`sampled_values\[2\]` must have a real dtype; received torch.complex64"),
    (dict(implementation="pyhton"), SampledSoftmaxError,
     r"`implementation` must be one of 'auto', 'compiled', 'python'; received 'pyhton'"),
    (dict(implementation=None), SampledSoftmaxError, r"`implementation` must be one of .*; received None"),
])
def test_argument_errors_name_the_argument_on_both_paths(impl, overrides, exc, message):
    W, b, h, y = problem()
    kw = dict(implementation=impl)
    kw.update(overrides)
    with pytest.raises(exc, match=message):
        sampled_softmax_loss(W, b, y, h, kw.pop("num_sampled", 5), V, **kw)


@IMPLS
def test_a_huge_ignore_index_works_on_both_paths(impl):
    W, b, h, y = problem()
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    huge = sampled_softmax_loss(W, b, y, h, 5, V, ignore_index=2**70, implementation=impl, generator=gen())
    plain = sampled_softmax_loss(W, b, y, h, 5, V, implementation=impl, generator=gen())
    torch.testing.assert_close(huge, plain, rtol=0, atol=0)


def test_full_softmax_loss_names_list_labels():
    W, b, h, _ = problem()
    with pytest.raises(TypeError, match=r"`labels` must be a torch.Tensor; received list"):
        full_softmax_loss(W, b, [1, 2, 3], h)


def test_module_rejects_a_bool_num_sampled():
    with pytest.raises(TypeError, match=r"`num_sampled` must be an int; received bool"):
        SampledSoftmaxLoss(D, V, True)
