"""gBCE (Petrov & Macdonald 2023) and ``excluded_ids`` (a row's own ids kept out of its
negatives) in the reference and the PyTorch front end (issue 34).

gBCE is checked against its formula written here from the paper, not from the code: with
``alpha = k / (V - 1)`` and ``beta = alpha (t (1 - 1/alpha) + 1/alpha)``,
``loss = -log(sigmoid(s+) ** beta) - sum log(1 - sigmoid(s-))``. ``excluded_ids`` is checked by
its effect: an excluded candidate is the same as a candidate never drawn, and its row of the
table gets a gradient of exactly 0."""

import math

import numpy as np
import pytest
import torch

from sampled_softmax import SampledSoftmaxError
from sampled_softmax import reference as R
from sampled_softmax.torch import (
    UniformSampler, UnigramSampler, gbce_loss, nce_loss, negative_sampling_loss, sampled_softmax_loss,
)

V_, D_, N_ = 40, 6, 9


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(V_, D_, generator=g, dtype=torch.float64)
    h = torch.randn(N_, D_, generator=g, dtype=torch.float64)
    y = torch.randint(0, V_, (N_,), generator=g)
    return W, h, y


def _sv(cand, n=N_):
    cand = torch.as_tensor(cand)
    return cand, torch.ones(n, 1), torch.ones(cand.shape[0])


def _gbce_by_hand(W, h, y, cand, t):
    k = len(cand)
    alpha = k / (W.shape[0] - 1)
    beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha)
    out = []
    for i in range(h.shape[0]):
        pos = 1 / (1 + math.exp(-float(h[i] @ W[y[i]])))
        loss = -math.log(pos ** beta)
        for c in cand:
            loss -= math.log(1 - 1 / (1 + math.exp(-float(h[i] @ W[c]))))
        out.append(loss)
    return np.array(out)


@pytest.mark.parametrize("t", [0.0, 0.4, 0.75, 1.0])
def test_gbce_matches_its_formula_in_reference_and_torch(t):
    W, h, y = _problem()
    cand = [3, 17, 25, 31]
    expected = _gbce_by_hand(W.numpy(), h.numpy(), y.numpy(), cand, t)
    ref = R.gbce_loss(W.numpy(), None, y.numpy(), h.numpy(), tuple(v.numpy() for v in _sv(cand)), t=t)
    got = gbce_loss(W, None, y, h, len(cand), V_, sampled_values=_sv(cand), t=t)
    np.testing.assert_allclose(ref, expected, rtol=1e-12)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_gbce_gradients_match_autograd_of_the_formula_and_the_reference():
    W, h, y = _problem(1)
    cand = torch.tensor([2, 9, 30])
    t = 0.6
    Wg, hg = W.clone().requires_grad_(), h.clone().requires_grad_()
    gbce_loss(Wg, None, y, hg, 3, V_, sampled_values=_sv(cand), t=t).sum().backward()
    # The formula in torch ops, differentiated by autograd.
    Wa, ha = W.clone().requires_grad_(), h.clone().requires_grad_()
    alpha = 3 / (V_ - 1)
    beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha)
    pos = (ha * Wa[y]).sum(1)
    neg = ha @ Wa[cand].T
    (-beta * torch.nn.functional.logsigmoid(pos) - torch.nn.functional.logsigmoid(-neg).sum(1)).sum().backward()
    torch.testing.assert_close(hg.grad, ha.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(Wg.grad, Wa.grad, rtol=1e-12, atol=1e-12)
    d_h, d_w, _ = R.gbce_grads(W.numpy(), None, y.numpy(), h.numpy(), tuple(v.numpy() for v in _sv(cand)), t=t)
    np.testing.assert_allclose(hg.grad.numpy(), d_h, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(Wg.grad.numpy(), d_w, rtol=1e-11, atol=1e-12)


def test_gbce_with_t_zero_is_negative_sampling_on_every_noise_mode():
    W, h, y = _problem(2)
    for noise in ("shared", "per_example"):
        a = gbce_loss(W, None, y, h, 5, V_, t=0.0, noise=noise, sampler=UniformSampler(V_, draw="with_replacement"),
                      generator=torch.Generator().manual_seed(3))
        b = negative_sampling_loss(W, None, y, h, 5, V_, noise=noise,
                                   sampler=UniformSampler(V_, draw="with_replacement"),
                                   generator=torch.Generator().manual_seed(3), implementation="python")
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("bad", [dict(t=1.5), dict(t=-0.1), dict(num_sampled=V_), dict(t="a")])
def test_gbce_bad_settings_are_errors_naming_them(bad):
    W, h, y = _problem()
    kw = dict(num_sampled=4, t=0.5) | bad
    with pytest.raises((SampledSoftmaxError, TypeError), match="`t`|num_sampled"):
        gbce_loss(W, None, y, h, kw["num_sampled"], V_, t=kw["t"])


def test_gbce_refuses_the_compiled_implementation_with_the_reason():
    W, h, y = _problem()
    with pytest.raises(SampledSoftmaxError, match="gBCE"):
        gbce_loss(W, None, y, h, 4, V_, implementation="compiled", sampled_values=_sv([1, 2, 3, 4]))


@pytest.mark.parametrize("loss", [sampled_softmax_loss, nce_loss, negative_sampling_loss])
@pytest.mark.parametrize("implementation", ["auto", "python"])
def test_an_excluded_candidate_is_a_candidate_never_drawn(loss, implementation):
    W, h, y = _problem(4)
    y = torch.where(y == 11, 12, y)  # 11 is never a label: its exclusion is the only thing removing it
    y = torch.where(y == 5, 6, y)
    excluded = torch.full((N_, 3), -1)
    excluded[:, 0] = 11  # every row excludes 11; row 0 also excludes 5
    excluded[0, 1] = 5
    with_11 = [11, 5, 20, 33]
    kw = dict(implementation=implementation)
    Wg = W.clone().requires_grad_()
    got = loss(Wg, None, y, h, 4, V_, sampled_values=_sv(with_11), excluded_ids=excluded, **kw)
    got.sum().backward()
    rest = loss(W, None, y, h, 3, V_, sampled_values=_sv([5, 20, 33]), **kw)
    torch.testing.assert_close(got[1:], rest[1:], rtol=1e-12, atol=1e-12)
    assert torch.equal(Wg.grad[11], torch.zeros(D_, dtype=torch.float64))  # exactly no gradient
    only = loss(W[:, :], None, y[:1], h[:1], 2, V_, sampled_values=_sv([20, 33], 1), **kw)
    torch.testing.assert_close(got[:1], only, rtol=1e-12, atol=1e-12)
    ref = getattr(R, loss.__name__)(W.numpy(), None, y.numpy(), h.numpy(), tuple(v.numpy() for v in _sv(with_11)),
                                    excluded_ids=excluded.numpy())
    np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-12)


def test_excluded_ids_with_gbce_and_per_example_noise():
    W, h, y = _problem(5)
    everything_else = torch.stack([torch.tensor([c for c in range(V_) if c != int(t)]) for t in y])
    # Every negative excluded: only the positive's term is left.
    for noise in ("shared", "per_example"):
        got = gbce_loss(W, None, y, h, 6, V_, t=1.0, noise=noise, excluded_ids=everything_else, remove_accidental_hits=True,
                        sampler=UniformSampler(V_, draw="with_replacement"))
        alpha = 6 / (V_ - 1)
        pos = (h * W[y]).sum(1)
        torch.testing.assert_close(got, -alpha * torch.nn.functional.logsigmoid(pos), rtol=1e-12, atol=1e-12)
        soft = sampled_softmax_loss(W, None, y, h, 6, V_, noise=noise, excluded_ids=everything_else,
                                    sampler=UniformSampler(V_, draw="with_replacement"))
        torch.testing.assert_close(soft, torch.zeros(N_, dtype=torch.float64), rtol=0, atol=1e-12)


def test_excluded_ids_follow_the_batch_shape_and_pad_with_negatives():
    W, h, y = _problem(6)
    sv = _sv([1, 2, 3, 4, 5])
    flat = torch.tensor([[1, -1], [2, 3]] * 4 + [[-1, -1]])
    a = sampled_softmax_loss(W, None, y, h, 5, V_, sampled_values=sv, excluded_ids=flat)
    b = sampled_softmax_loss(W, None, y[:8].view(4, 2), h[:8].view(4, 2, D_), 5, V_,
                             sampled_values=(sv[0], torch.ones(8, 1), sv[2]), excluded_ids=flat[:8].view(4, 2, 2))
    torch.testing.assert_close(a[:8].view(4, 2), b)


@pytest.mark.parametrize("bad,match", [
    (torch.zeros(N_ + 1, 2, dtype=torch.int64), "`excluded_ids` must have shape"),
    (torch.zeros(N_, 2), "`excluded_ids`"),
    (torch.full((N_, 2), V_), "`excluded_ids` must be < num_classes"),
    ([[1]] * N_, "`excluded_ids` must be an integer torch.Tensor"),
])
def test_bad_excluded_ids_are_errors_naming_them(bad, match):
    W, h, y = _problem()
    with pytest.raises((SampledSoftmaxError, TypeError), match=match):
        sampled_softmax_loss(W, None, y, h, 4, V_, sampler="uniform", excluded_ids=bad)


def test_excluded_ids_refuse_exclude_true():
    W, h, y = _problem()
    with pytest.raises(SampledSoftmaxError, match="exclude_true"):
        sampled_softmax_loss(W, None, y, h, 4, V_, sampler=UnigramSampler(V_, np.ones(V_), draw="with_replacement"),
                             exclude_true=True, excluded_ids=torch.zeros(N_, 1, dtype=torch.int64))


def test_explain_route_names_the_routes_of_gbce_and_excluded_ids():
    from sampled_softmax.torch import compiled_core_is_built, explain_route

    W, h, y = _problem()
    gbce = explain_route(W, None, y, h, 4, V_, sampler="uniform", loss="gbce")
    assert gbce.name == "python" and "gBCE" in gbce.reason
    if compiled_core_is_built():
        ex = explain_route(W.float(), None, y, h.float(), 4, V_, sampler="uniform", excluded_ids=torch.zeros(N_, 1))
        assert ex.name == "compiled" and "excluded_ids" in ex.reason
