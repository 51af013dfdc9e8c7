"""The one place that picks the code a call runs (``_dispatch``): routes and their reasons, the
``implementation`` check before any route, and the enums shared with the compiled core."""

import logging

import pytest
import torch

from sampled_softmax import SampledSoftmaxError
from sampled_softmax.samplers import DistributionKind, DrawKind
from sampled_softmax.torch import (
    LearnedUnigramSampler, LogUniformSampler, SampledSoftmax, SampledSoftmaxLoss, UnigramSampler, compiled_core, explain_route,
    sampled_softmax_loss,
)
from sampled_softmax.torch import _compiled
from sampled_softmax.torch._autograd import HeadKind

needs_compiled = pytest.mark.skipif(compiled_core() is None, reason="compiled core unavailable")


def problem(V=50, D=4, N=6, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(V, D, generator=g, dtype=dtype), torch.randn(N, D, generator=g, dtype=dtype), torch.randint(
        V, (N,), generator=g)


@needs_compiled
def test_routes_and_reasons():
    W, h, y = problem()
    assert explain_route(W, None, y, h, 10, 50).name == "compiled_draw"
    sv = (torch.arange(10), torch.ones(6, 1), torch.ones(10))
    route = explain_route(W, None, y, h, 10, 50, sampled_values=sv)
    assert route.name == "compiled" and "sampled_values" in route.reason
    # The table samplers draw on the compiled route too (issue 36); another sampler module draws itself.
    assert explain_route(W, None, y, h, 10, 50, sampler=UnigramSampler(50, torch.ones(50))).name == "compiled_draw"
    assert explain_route(W, None, y, h, 10, 50, sampler=LearnedUnigramSampler(50)).name == "compiled_draw"

    class Custom(UnigramSampler):
        pass

    route = explain_route(W, None, y, h, 10, 50, sampler=Custom(50, torch.ones(50)))
    assert route.name == "compiled" and "Custom" in route.reason
    route = explain_route(W, None, y, h, 10, 50, label_smoothing=0.1)
    assert route == ("python", "the compiled core cannot be used: it takes label_smoothing=0; received 0.1")
    route = explain_route([W[:25], W[25:]], None, y, h, 10, 50)
    assert route.name == "python" and "shards" in route.reason
    route = explain_route(W, None, y.unsqueeze(1).expand(6, 2), h, 10, 50, num_true=2)
    assert route.name == "python" and "num_true=1" in route.reason
    y_ignored = y.clone()
    y_ignored[0] = -100
    assert "ignore" in explain_route(W, None, y_ignored, h, 10, 50, ignore_index=-100).reason
    assert explain_route(W.half(), None, y, h.half(), 10, 50).name == "python"
    assert explain_route(W, None, y, h, 10, 50, implementation="python") == ("python", "implementation='python'")
    with pytest.raises(SampledSoftmaxError, match="`implementation='compiled'` cannot be used: it takes label_smoothing=0"):
        explain_route(W, None, y, h, 10, 50, label_smoothing=0.1, implementation="compiled")


@needs_compiled
@pytest.mark.parametrize("kwargs,route", [
    (dict(), "compiled_draw"),
    (dict(sampled_values=(torch.arange(10), torch.ones(6, 1), torch.ones(10))), "compiled"),
    (dict(label_smoothing=0.1), "python"),
    (dict(implementation="python"), "python"),
])
def test_each_call_logs_the_route_explain_route_names(caplog, kwargs, route):
    W, h, y = problem()
    assert explain_route(W, None, y, h, 10, 50, **kwargs).name == route
    with caplog.at_level(logging.DEBUG, logger="sampled_softmax"):
        sampled_softmax_loss(W, None, y, h, 10, 50, **kwargs)
    assert [r.getMessage() for r in caplog.records if "route" in r.getMessage()] == [f"sampled_softmax: route {route}"]


@pytest.mark.parametrize("value", ["pyhton", None, "Compiled", 1])
@pytest.mark.parametrize("sampled", [False, True])
def test_unknown_implementation_raises_on_every_path(value, sampled):
    W, h, y = problem()
    sv = (torch.arange(10), torch.ones(6, 1), torch.ones(10)) if sampled else None
    with pytest.raises(SampledSoftmaxError, match=r"`implementation` must be one of 'auto', 'compiled', 'python'"):
        sampled_softmax_loss(W, None, y, h, 10, 50, sampled_values=sv, implementation=value)
    with pytest.raises(SampledSoftmaxError, match=r"`implementation` must be one of"):
        explain_route(W, None, y, h, 10, 50, implementation=value)


@needs_compiled
def test_the_build_reads_the_enums_as_python_names_them():
    ext = compiled_core()
    assert dict(ext.DRAW) == {k.name: int(k) for k in DrawKind}
    assert dict(ext.DISTRIBUTION) == {k.name: int(k) for k in DistributionKind}
    assert dict(ext.HEAD) == {k.name: int(k) for k in HeadKind}


def test_a_build_with_other_enum_values_is_refused(monkeypatch):
    class Build:
        DRAW = {"with_replacement": 0, "unique_exact": 1, "unique": 2}  # reordered
        DISTRIBUTION = {"uniform": 0, "log_uniform": 1}
        HEAD = {"softmax": 0, "sigmoid": 1}

    monkeypatch.setattr(_compiled, "_state", {})
    assert _compiled._check_enums(Build()) is None
    assert "DrawKind values" in _compiled._state["why"]

    class HeadsSwapped(Build):
        DRAW = {"with_replacement": 0, "unique": 1, "unique_exact": 2}
        HEAD = {"softmax": 1, "sigmoid": 0}

    monkeypatch.setattr(_compiled, "_state", {})
    assert _compiled._check_enums(HeadsSwapped()) is None
    assert "HeadKind values" in _compiled._state["why"]


@needs_compiled
@pytest.mark.parametrize("draw", ["with_replacement", "unique", "unique_exact"])
def test_each_draw_kind_reaches_the_core_by_name(draw):
    W, h, y = problem(V=200)
    losses = [sampled_softmax_loss(W, None, y, h, 20, 200, sampler=LogUniformSampler(200, draw=draw),
                                   generator=torch.Generator().manual_seed(3), implementation=impl)
              for impl in ("auto", "python")]
    torch.testing.assert_close(losses[0], losses[1])


def test_the_layer_has_one_name_in_both_front_ends():
    assert SampledSoftmaxLoss is SampledSoftmax
    assert SampledSoftmax.__name__ == "SampledSoftmax"
