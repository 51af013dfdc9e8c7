"""PyTorch reliability of what wave 2 added (issue 31): per-example noise, the learned sampler's
counts, the in-batch loss, the frequency estimators and the routes, each case a test that
failed before its fix, checked against a statement written apart from the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sampled_softmax import SampledSoftmaxError
from sampled_softmax.torch import (
    LearnedUnigramSampler, LogUniformSampler, SparseRowAdam, StreamingFrequency, UniformSampler, UnigramSampler,
    explain_route, in_batch_softmax_loss, mixed_negatives, negative_sampling_loss, nce_loss, sampled_softmax_loss,
)
from sampled_softmax.torch.retrieval import in_batch_columns

V, D = 12, 4


def _problem(n=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(V, D, generator=g, dtype=dtype), torch.randn(n, D, generator=g, dtype=dtype),
            torch.randint(V, (n,), generator=g))


# ---------------------------------------------------------------------------------------------
# Per-example noise


@pytest.mark.parametrize("loss", ["sampled_softmax", "exclude_true"])
def test_per_example_noise_of_a_fresh_learned_sampler_is_corrected_by_the_uniform_it_drew_from(loss):
    """Fresh counts are all 1: the noise comes from the uniform distribution (the same draws as
    a uniform sampler's: inverse CDF of 1..V), so its correction is log(k / V), whatever this
    batch's labels add to the counts afterwards."""
    W, h, y = _problem()
    extra = dict(exclude_true=True) if loss == "exclude_true" else {}
    learned = LearnedUnigramSampler(V, draw="with_replacement")
    got = sampled_softmax_loss(W, None, y, h, 5, V, sampler=learned, noise="per_example",
                               generator=torch.Generator().manual_seed(1), **extra)
    uniform = UniformSampler(V, draw="with_replacement")
    want = sampled_softmax_loss(W, None, y, h, 5, V, sampler=uniform, noise="per_example",
                                generator=torch.Generator().manual_seed(1), **extra)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # ... and then the sampler has learned the batch.
    assert float(learned.counts.sum()) == V + len(y)


def test_learned_probabilities_read_the_tree_and_equal_counts_over_their_total():
    sampler = LearnedUnigramSampler(V)
    sampler.update(torch.tensor([1, 1, 5, 11, 11, 11]))
    ids = torch.arange(V)
    expected = sampler.counts / sampler.counts.sum()
    torch.testing.assert_close(sampler.probs(ids), expected, rtol=1e-15, atol=0)


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_per_example_sparse_gradient_leaves_out_ignored_labels_and_the_noise_of_ignored_rows(head):
    W, h, _ = _problem(n=3)
    y = torch.tensor([[3, -1], [-1, -1], [7, 3]])  # row 1: every label ignored
    w = W.clone().requires_grad_()
    sampler = UnigramSampler(V, np.r_[0.0, np.ones(V - 1)], draw="with_replacement")  # never draws class 0
    fn = sampled_softmax_loss if head == "softmax" else negative_sampling_loss
    loss = fn(w, None, y, h, 4, V, num_true=2, sampler=sampler, noise="per_example", ignore_index=-1,
              sparse=True, generator=torch.Generator().manual_seed(0), reduction="sum")
    loss.backward()
    rows = set(w.grad.coalesce().indices()[0].tolist())
    assert 0 not in rows  # no example involves class 0 (it was the ignored labels' placeholder)
    # The optimizer moves only those rows.
    p = torch.nn.Parameter(W.clone())
    p.grad = w.grad
    SparseRowAdam([p], lr=0.1).step()
    moved = set(torch.nonzero((p.detach() != W).any(1)).squeeze(1).tolist())
    assert moved == rows and 0 not in moved


@pytest.mark.parametrize("fn", [sampled_softmax_loss, negative_sampling_loss])
def test_an_empty_batch_with_per_example_noise_is_an_empty_loss(fn):
    W, h, y = _problem(n=0)
    w = W.clone().requires_grad_()
    loss = fn(w, None, y, h, 5, V, noise="per_example", sampler=LogUniformSampler(V, draw="with_replacement"))
    assert loss.shape == (0,)
    loss.sum().backward()
    assert torch.count_nonzero(w.grad) == 0


def test_negative_sampling_takes_its_default_sampler_by_name_with_per_example_noise():
    W, h, y = _problem()
    by_name = negative_sampling_loss(W, None, y, h, 5, V, noise="per_example",
                                     generator=torch.Generator().manual_seed(3))
    by_module = negative_sampling_loss(W, None, y, h, 5, V, noise="per_example",
                                       sampler=LogUniformSampler(V, draw="with_replacement"),
                                       generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(by_name, by_module, rtol=0, atol=0)
    for name in ("uniform", "log_uniform"):
        assert torch.isfinite(sampled_softmax_loss(W, None, y, h, 5, V, noise="per_example", sampler=name)).all()
    with pytest.raises(SampledSoftmaxError, match="with noise='per_example'"):
        negative_sampling_loss(W, None, y, h, 5, V, noise="per_example", sampler=LogUniformSampler(V))


# ---------------------------------------------------------------------------------------------
# Zero probabilities and learned counts


def _zero_count_sampler(draw="with_replacement"):
    sampler = LearnedUnigramSampler(V, draw=draw)
    with torch.no_grad():
        sampler.counts[3] = 0.0
    return sampler


@pytest.mark.parametrize("case", ["per_example", "per_example_reserved", "shared", "shared_unique", "nce"])
def test_a_label_the_sampler_never_draws_is_an_error_naming_it(case):
    W, h, _ = _problem()
    y = torch.tensor([1, 3, 5, 3, 2, 0])
    if case == "per_example_reserved":
        sampler = UnigramSampler(V, np.ones(V - 4), num_reserved_ids=4, draw="with_replacement")
        call = lambda: sampled_softmax_loss(W, None, y, h, 5, V, sampler=sampler, noise="per_example")  # noqa: E731
    else:
        sampler = _zero_count_sampler("unique" if case == "shared_unique" else "with_replacement")
        fn = nce_loss if case == "nce" else sampled_softmax_loss
        noise = {"noise": "per_example"} if case == "per_example" else {}
        call = lambda: fn(W, None, y, h, 5, V, sampler=sampler, **noise)  # noqa: E731
    before = None if case == "per_example_reserved" else sampler.counts.clone()
    with pytest.raises(SampledSoftmaxError, match=r"`labels` contains (3|0|1|2), which the sampler .* probability 0"):
        call()
    if before is not None:  # a failed call leaves the counts as they were
        assert torch.equal(sampler.counts, before)


@pytest.mark.parametrize("counts,words", [
    (torch.full((V,), -1.0, dtype=torch.float64), "finite and >= 0; received -1.0 for class 0"),
    (torch.tensor([1.0] * (V - 1) + [math.nan], dtype=torch.float64), f"received nan for class {V - 1}"),
    (torch.tensor([1.0] * (V - 1) + [math.inf], dtype=torch.float64), f"received inf for class {V - 1}"),
    (torch.full((V,), 1e300, dtype=torch.float64), "total in \\(0, 2\\*\\*53\\]"),
    (torch.zeros(V, dtype=torch.float64), "total in \\(0, 2\\*\\*53\\]"),
])
def test_learned_counts_that_are_not_counts_are_refused_on_load(counts, words):
    sampler = LearnedUnigramSampler(V)
    with pytest.raises(SampledSoftmaxError, match=words):
        sampler.load_state_dict({"counts": counts})
    assert torch.equal(sampler.counts, torch.ones(V, dtype=torch.float64))  # nothing loaded


# ---------------------------------------------------------------------------------------------
# The in-batch loss


def test_excluded_ids_mask_equals_the_elementwise_statement():
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        b, c, k = (int(v) for v in torch.randint(1, 9, (3,), generator=g))
        c = max(c, b)
        ids = torch.randint(0, 7, (c,), generator=g)
        excluded = torch.randint(-2, 9, (b, k), generator=g)
        # Kept: the row's own positive, or a column whose id is none of the row's excluded ids.
        expected = torch.tensor([[i == j or not any(int(ids[j]) == int(e) and int(e) >= 0 for e in excluded[i])
                                  for j in range(c)] for i in range(b)], dtype=torch.bool)
        got = in_batch_columns(b, c, candidate_ids=ids, excluded_ids=excluded, remove_accidental_hits=False)
        assert torch.equal(got, expected)


def test_excluded_ids_never_allocate_a_batch_by_candidates_by_excluded_array():
    b = c = 256
    k = 64
    g = torch.Generator().manual_seed(0)
    q, cand = torch.randn(b, 8, generator=g), torch.randn(c, 8, generator=g)
    ids, excluded = torch.randint(10_000, (c,), generator=g), torch.randint(10_000, (b, k), generator=g)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        in_batch_softmax_loss(q, cand, candidate_ids=ids, excluded_ids=excluded)
    largest = max(e.cpu_memory_usage for e in prof.events())
    assert 0 < largest < b * c * k // 4  # the [B, C, K] boolean alone would be b * c * k bytes


def test_in_batch_loss_under_autocast_is_float32_and_trains():
    torch.manual_seed(0)
    query_tower, item_tower = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    x, items = torch.randn(6, 8), torch.randn(6, 8)
    ids = torch.tensor([1, 2, 3, 1, 4, 5])
    with torch.autocast("cpu", torch.bfloat16):
        loss = in_batch_softmax_loss(query_tower(x), item_tower(items), candidate_ids=ids,
                                     log_q=torch.full((6,), -1.0), excluded_ids=torch.tensor([[2]] * 6))
    assert loss.dtype == torch.float32
    loss.backward()
    assert query_tower.weight.grad.dtype == torch.float32 and torch.isfinite(item_tower.weight.grad).all()


def test_in_batch_loss_refuses_a_second_derivative_instead_of_returning_none():
    q = torch.randn(4, 3, requires_grad=True)
    loss = in_batch_softmax_loss(q, torch.randn(4, 3))
    with pytest.raises(RuntimeError, match="in_batch_softmax_loss is differentiable once"):
        torch.autograd.grad(loss, q, create_graph=True)


def test_a_two_tower_step_with_streaming_frequency_compiles_as_one_graph():
    def step(frequency, q, c, ids):
        return in_batch_softmax_loss(q, c, candidate_ids=ids, log_q=frequency(ids))

    g = torch.Generator().manual_seed(0)
    q, c, ids = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g), torch.tensor([4, 9, 4, 2, 7])
    eager_freq, compiled_freq = StreamingFrequency(64), StreamingFrequency(64)
    compiled = torch.compile(step, fullgraph=True)
    for _ in range(3):
        torch.testing.assert_close(compiled(compiled_freq, q, c, ids), step(eager_freq, q, c, ids))
    assert torch.equal(compiled_freq.gap, eager_freq.gap)
    # The value checks still run: as an operator, with the eager call's error.
    bad = torch.compile(lambda a, b, lq: in_batch_softmax_loss(a, b, log_q=lq), fullgraph=True)
    with pytest.raises(SampledSoftmaxError, match="`log_q` must be <= 0"):
        bad(q, c, torch.tensor([0.0, -1.0, 0.5, -2.0, 0.0]))
    with pytest.raises(SampledSoftmaxError, match="`ids` must be non-negative"):
        torch.compile(lambda f, i: f(i), fullgraph=True)(StreamingFrequency(64), torch.tensor([3, -1]))


def test_in_batch_loss_and_frequency_take_meta_tensors():
    meta = torch.device("meta")
    loss = in_batch_softmax_loss(torch.empty(4, 3, device=meta), torch.empty(6, 3, device=meta),
                                 log_q=torch.empty(6, device=meta), sample_weight=torch.empty(4, device=meta),
                                 temperature=torch.tensor(0.5, device=meta), reduction="none")
    assert loss.shape == (4,) and loss.is_meta


def test_mixed_negatives_names_the_candidate_ids_it_was_given():
    sampler = UniformSampler(V, draw="unique_exact")
    with pytest.raises(SampledSoftmaxError, match=rf"`candidate_ids` must be in \[0, {V - 1}\] .*received {V}"):
        mixed_negatives(torch.randn(2, D), torch.tensor([1, V]), torch.zeros(2), 3, sampler,
                        lambda ids: torch.randn(len(ids), D))


# ---------------------------------------------------------------------------------------------
# The frequency estimators under a model's casts


@pytest.mark.parametrize("cast", [torch.nn.Module.half, lambda m: m.to(torch.bfloat16), torch.nn.Module.double])
def test_frequency_state_keeps_its_dtypes_through_a_models_cast(cast):
    model = torch.nn.Module()
    model.frequency = StreamingFrequency(256)
    cast(model)
    assert model.frequency.gap.dtype == torch.float64 and model.frequency.step.dtype == torch.int64
    reference = StreamingFrequency(256)
    ids = torch.tensor([3, 8, 3])
    for _ in range(70_000 // 1000):  # the step count float16 cannot hold, exactly
        model.frequency.step += 1000
        reference.step += 1000
    for _ in range(3):
        torch.testing.assert_close(model.frequency(ids), reference(ids), rtol=0, atol=0)
    assert torch.isfinite(model.frequency.log_q(ids)).all()


# ---------------------------------------------------------------------------------------------
# Routes


def test_explain_route_says_what_per_example_calls_take():
    W, h, y = _problem(dtype=torch.float32)
    route = explain_route(W, None, y, h, 5, V, noise="per_example")
    assert route.name == "python" and "negative sampling only" in route.reason
    # nce_loss takes per-example noise too (issue 33), corrected by log(k q): the Python route.
    route = explain_route(W, None, y, h, 5, V, loss="nce", noise="per_example")
    assert route.name == "python" and "negative sampling only" in route.reason
