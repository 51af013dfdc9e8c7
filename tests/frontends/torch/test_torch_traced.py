"""Traced calls: ``torch.compile(fullgraph=True)``, meta tensors and ``torch.export`` go through
the custom operators of ``sampled_softmax.torch._ops`` and give what the eager call gives."""

import copy

import pytest
import torch

from sampled_softmax import SampledSoftmaxError
from sampled_softmax.torch import (
    LearnedUnigramSampler, SampledSoftmaxLoss, UnigramSampler, full_softmax_loss, sampled_softmax_loss,
)

V, D, B = 50, 8, 5


@pytest.fixture(autouse=True)
def fresh_dynamo():
    # Each test compiles its own functions; dynamo's per-code recompile limit must not carry over.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()

CASES = {
    "default": dict(),
    "python": dict(implementation="python"),
    "sparse": dict(sparse=True),
    "ignored": dict(ignore=True),
    "ignored sparse": dict(ignore=True, sparse=True),
    "num_true=2": dict(T=2),
    "num_true=2 ignored": dict(T=2, ignore=True),
    "smoothing": dict(label_smoothing=0.1),
    "learned unigram": dict(sampler="learned"),
    "unigram unique_exact": dict(sampler="unigram"),
    "uniform": dict(sampler="uniform"),
    "float64": dict(dtype=torch.float64),
}


def _setup(sparse=False, T=1, ignore=False, sampler="log_uniform", dtype=torch.float32, **head_kwargs):
    torch.manual_seed(0)
    if sampler == "learned":
        sampler = LearnedUnigramSampler(V)
    elif sampler == "unigram":
        sampler = UnigramSampler(V, list(range(1, V + 1)), draw="unique_exact")
    body = torch.nn.Linear(6, D).to(dtype)
    head = SampledSoftmaxLoss(D, V, 10, sparse=sparse, sampler=sampler, dtype=dtype, **head_kwargs)
    x = torch.randn(B, 6, dtype=dtype)
    y = torch.randint(V, (B, T) if T > 1 else (B,))
    if ignore:
        y[1] = -100
        if T > 1:
            y[2, 0] = -100
    return body, head, x, y


def _step(body, head, x, y, compiled):
    def f(x, y):
        return head(body(x), y).loss

    f = torch.compile(f, fullgraph=True) if compiled else f
    torch.manual_seed(1)  # the draw reads the default generator in both
    loss = f(x, y)
    loss.backward()
    grads = [p.grad.to_dense() for p in (*body.parameters(), *head.parameters())]
    return [loss.detach(), *grads] + [b.clone() for b in head.sampler.buffers()]


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_compiled_fullgraph_training_step_equals_eager(case):
    body, head, x, y = _setup(**CASES[case])
    eager = _step(copy.deepcopy(body), copy.deepcopy(head), x, y, compiled=False)
    compiled = _step(body, head, x, y, compiled=True)
    assert len(eager) == len(compiled)
    for a, e in zip(compiled, eager):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


def test_compiled_sparse_gradient_is_sparse_and_touches_the_same_rows():
    body, head, x, y = _setup(sparse=True, ignore=True)
    eager_head = copy.deepcopy(head)
    _step(copy.deepcopy(body), eager_head, x, y, compiled=False)
    _step(body, head, x, y, compiled=True)
    assert head.weight.grad.is_sparse
    rows = lambda g: set(g.coalesce().indices()[0].tolist())  # noqa: E731
    assert rows(head.weight.grad) == rows(eager_head.weight.grad)


def test_compiled_eval_equals_eager_and_checks_labels():
    body, head, x, y = _setup()
    head.eval()
    f = torch.compile(lambda x, y: head(body(x), y), fullgraph=True)
    out = f(x, y)
    expected = head(body(x), y)
    torch.testing.assert_close(out.loss, expected.loss)
    torch.testing.assert_close(out.output, expected.output)
    with pytest.raises(SampledSoftmaxError, match=r"`labels` must be in \[0, 49\].*received values up to 50"):
        f(x, torch.tensor([1, 2, 3, 4, 50]))


def test_compiled_training_checks_labels_and_sampled_values():
    body, head, x, y = _setup()
    f = torch.compile(lambda x, y: head(body(x), y).loss, fullgraph=True)
    f(x, y)
    with pytest.raises(SampledSoftmaxError, match=r"`labels` must be in \[0, 49\].*received values down to -3"):
        f(x, torch.tensor([1, -3, 3, 4, 5]))
    W, b = head.weight, head.bias
    g = torch.compile(lambda h, sv: sampled_softmax_loss(W, b, y, h, 3, V, sampled_values=sv), fullgraph=True)
    good = (torch.tensor([1, 2, 3]), torch.ones(B, 1), torch.ones(3))
    torch.testing.assert_close(g(body(x), good), sampled_softmax_loss(W, b, y, body(x), 3, V, sampled_values=good))
    with pytest.raises(SampledSoftmaxError, match=r"`sampled_values\[2\]` \(sampled_expected_count\) must be positive"):
        g(body(x), (good[0], good[1], torch.tensor([1.0, 0.0, 1.0])))


def test_compiled_call_with_a_generator_runs_eagerly():
    body, head, x, y = _setup()
    f = torch.compile(lambda h: sampled_softmax_loss(head.weight, head.bias, y, h, 10, V,
                                                     generator=torch.Generator().manual_seed(3)))
    expected = sampled_softmax_loss(head.weight, head.bias, y, body(x), 10, V,
                                    generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(f(body(x)), expected)


def test_the_unique_draw_bound_holds_under_compile():
    n = 20000
    W = torch.zeros(n, 2)
    labels = torch.tensor([0])
    f = torch.compile(lambda h: sampled_softmax_loss(W, None, labels, h, n, n), fullgraph=True)
    import sampled_softmax.samplers as NS

    old, NS.UNIQUE_DRAW_MIN_LIMIT = NS.UNIQUE_DRAW_MIN_LIMIT, 1000
    try:
        with pytest.raises(SampledSoftmaxError, match="distinct classes were not found"):
            f(torch.zeros(1, 2))
    finally:
        NS.UNIQUE_DRAW_MIN_LIMIT = old


def test_the_draw_is_not_constant_folded_under_compile():
    # Labels made inside the compiled function are constants; the draw must still be new
    # on every call.
    W = torch.randn(V, D)
    f = torch.compile(lambda h: sampled_softmax_loss(W, None, torch.tensor([0, 1]), h, 5, V), fullgraph=True)
    h = torch.randn(2, D)
    assert len({tuple(f(h).tolist()) for _ in range(6)}) > 1


@pytest.mark.parametrize("sampler", ["log_uniform", "learned"])
def test_meta_tensors_train_and_evaluate(sampler):
    with torch.device("meta"):
        head = SampledSoftmaxLoss(D, V, 10, sparse=True,
                                  sampler=LearnedUnigramSampler(V) if sampler == "learned" else sampler)
        h = torch.randn(4, 7, D, requires_grad=True)
        y = torch.zeros(4, 7, dtype=torch.long)
    out = head(h, y)
    assert out.loss.device.type == "meta" and out.loss.shape == () and out.output.shape == (4, 7)
    out.loss.backward()
    assert h.grad.shape == h.shape and head.weight.grad.shape == (V, D) and head.weight.grad.is_sparse
    head.eval()
    assert head(h, y).output.shape == (4, 7)
    assert full_softmax_loss(head.weight, head.bias, y, h).shape == (4, 7)


def test_torch_export_takes_the_eval_path():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(6, D)
            self.head = SampledSoftmaxLoss(D, V, 10)

        def forward(self, x, y):
            out = self.head(self.body(x), y)
            return out.loss, self.head.log_prob(self.body(x))

    torch.manual_seed(0)
    model = Model().eval()
    x, y = torch.randn(B, 6), torch.randint(V, (B,))
    exported = torch.export.export(model, (x, y))
    loss, log_prob = exported.module()(x, y)
    expected = model(x, y)
    torch.testing.assert_close(loss, expected[0])
    torch.testing.assert_close(log_prob, expected[1])
    with pytest.raises(SampledSoftmaxError, match=r"`labels` must be in \[0, 49\]"):
        exported.module()(x, torch.tensor([1, 2, 3, 4, 99]))


def test_double_backward_under_compile_is_refused():
    body, head, x, y = _setup()
    f = torch.compile(lambda h: head(h, y).loss, fullgraph=True)
    h = body(x)
    (g,) = torch.autograd.grad(f(h), h, create_graph=True)
    # The compiled backward is one opaque function: differentiating through it is refused.
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


def test_sharded_sparse_tables_cannot_be_traced_and_say_so():
    shards = [torch.randn(25, D, device="meta"), torch.randn(25, D, device="meta")]
    with pytest.raises(SampledSoftmaxError, match=r"`sparse=True` with sharded `weights` cannot be traced"):
        sampled_softmax_loss(shards, None, torch.zeros(B, dtype=torch.long, device="meta"),
                             torch.randn(B, D, device="meta"), 10, V, sparse=True)
