"""PyTorch retrieval: ``in_batch_softmax_loss`` against the NumPy reference (float64 1e-12, float32
1e-5, gradients of query, candidates, a learned temperature and log_q), against the loss users
write with ``F.cross_entropy``, masks by their effect; ``mixed_negatives``; the streaming
frequency estimators against their NumPy reference, their state, and their convergence."""

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as TF  # noqa: E402

from sampled_softmax import SampledSoftmaxError  # noqa: E402
from sampled_softmax import frequency as NF  # noqa: E402
from sampled_softmax import reference as R  # noqa: E402
from sampled_softmax.torch import (  # noqa: E402
    CountMinFrequency, LogUniformSampler, StreamingFrequency, UniformSampler, in_batch_softmax_loss,
    mixed_negatives,
)

from conftest import in_batch_problem  # noqa: E402

B, C, D = 6, 10, 4


def problem(seed=0):
    return in_batch_problem(seed, B, C, D)


def _t(x, dtype=torch.float64, grad=False):
    t = torch.tensor(x, dtype=dtype if np.asarray(x).dtype.kind == "f" else None)
    return t.requires_grad_(grad) if grad else t


GRID = list(itertools.product([1.0, 0.4], [False, True], [False, True], [None, 3], [False, True], [B, C]))


@pytest.mark.parametrize("temperature,correct,masks,hard,weighted,num_candidates", GRID)
def test_equals_the_reference_in_float64(temperature, correct, masks, hard, weighted, num_candidates):
    q, c, ids, log_q, mask_kw, w = problem()
    c, ids, log_q = c[:num_candidates], ids[:num_candidates], log_q[:num_candidates]
    if "score_mask" in mask_kw:
        mask_kw = dict(mask_kw, score_mask=mask_kw["score_mask"][:, :num_candidates])
    kw = dict(candidate_ids=ids, num_hard_negatives=hard, **(mask_kw if masks else {}))
    ref_kw = dict(kw, log_q=log_q if correct else None, temperature=temperature,
                  sample_weight=w if weighted else None)
    g = np.random.default_rng(1).normal(size=B)
    tq, tc = _t(q, grad=True), _t(c, grad=True)
    tt = _t(temperature, grad=True) if temperature != 1.0 else 1.0
    tlq = _t(log_q, grad=True) if correct else None
    loss = in_batch_softmax_loss(tq, tc, **{k: (_t(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()},
                                 log_q=tlq, temperature=tt, sample_weight=_t(w) if weighted else None,
                                 reduction="none")
    np.testing.assert_allclose(loss.detach().numpy(), R.in_batch_softmax_loss(q, c, **ref_kw), rtol=1e-12)
    (loss * _t(g)).sum().backward()
    dq, dc, dt, dlq = R.in_batch_softmax_grads(q, c, grad_loss=g, **ref_kw)
    np.testing.assert_allclose(tq.grad.numpy(), dq, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(tc.grad.numpy(), dc, rtol=1e-10, atol=1e-12)
    if temperature != 1.0:
        np.testing.assert_allclose(tt.grad.item(), dt, rtol=1e-10)
    if correct:
        np.testing.assert_allclose(tlq.grad.numpy(), dlq, rtol=1e-10, atol=1e-12)


def test_float32_is_within_1e_5_and_reductions():
    q, c, ids, log_q, _, w = problem()
    ref = R.in_batch_softmax_loss(q, c, candidate_ids=ids, log_q=log_q, temperature=0.5, sample_weight=w)
    kw = dict(candidate_ids=_t(ids), log_q=_t(log_q, torch.float32), temperature=0.5, sample_weight=_t(w, torch.float32))
    q32, c32 = _t(q, torch.float32), _t(c, torch.float32)
    none = in_batch_softmax_loss(q32, c32, reduction="none", **kw)
    assert none.dtype == torch.float32
    np.testing.assert_allclose(none.numpy(), ref, rtol=1e-5)
    np.testing.assert_allclose(in_batch_softmax_loss(q32, c32, reduction="sum", **kw).item(), ref.sum(), rtol=1e-5)
    np.testing.assert_allclose(in_batch_softmax_loss(q32, c32, **kw).item(), ref.sum() / B, rtol=1e-5)


def test_equals_what_users_write_with_cross_entropy_and_masking():
    q, c, ids, log_q, _, _ = problem()
    tq, tc, tids, tlq = _t(q), _t(c), _t(ids), _t(log_q)
    logits = tq @ tc.T / 0.2 - tlq
    hit = (tids[None, :] == tids[:B, None]) & ~torch.eye(B, C, dtype=torch.bool)
    theirs = TF.cross_entropy(logits.masked_fill(hit, float("-inf")), torch.arange(B), reduction="none")
    ours = in_batch_softmax_loss(tq, tc, candidate_ids=tids, log_q=tlq, temperature=0.2, reduction="none")
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_all_distinct_candidates_equal_the_full_softmax():
    torch.manual_seed(0)
    q, table = torch.randn(5, D, dtype=torch.float64), torch.randn(12, D, dtype=torch.float64)
    full = TF.cross_entropy(q @ table.T, torch.arange(5), reduction="none")
    ours = in_batch_softmax_loss(q, table, candidate_ids=torch.arange(12), reduction="none")
    torch.testing.assert_close(ours, full, rtol=1e-13, atol=1e-13)


def test_a_masked_column_has_probability_zero_and_gradient_exactly_zero():
    q, c, ids, log_q, _, _ = problem()
    mask = torch.ones(B, C, dtype=torch.bool)
    mask[:, 7] = False  # column 7 masked in every row
    before = mask.clone()
    tc = _t(c, grad=True)
    loss = in_batch_softmax_loss(_t(q), tc, score_mask=mask, log_q=_t(log_q), reduction="sum")
    loss.backward()
    assert torch.equal(tc.grad[7], torch.zeros(D, dtype=torch.float64))
    assert torch.equal(mask, before), "the caller's score_mask must not be written"
    moved = c.copy()
    moved[7] += 50.0
    again = in_batch_softmax_loss(_t(q), _t(moved), score_mask=mask, log_q=_t(log_q), reduction="sum")
    assert again.item() == loss.item()


def test_empty_batch_and_bfloat16():
    q, c = torch.zeros(0, D), torch.randn(3, D, requires_grad=True)
    loss = in_batch_softmax_loss(q, c, reduction="none")
    assert loss.shape == (0,)
    in_batch_softmax_loss(q, c, reduction="sum").backward()
    assert torch.equal(c.grad, torch.zeros_like(c))
    qb, cb = torch.randn(4, D, dtype=torch.bfloat16), torch.randn(6, D, dtype=torch.bfloat16)
    out = in_batch_softmax_loss(qb, cb, reduction="none")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, in_batch_softmax_loss(qb.float(), cb.float(), reduction="none"))


@pytest.mark.parametrize("kw,exc,message", [
    (dict(candidates=torch.ones(3, D)), SampledSoftmaxError, r"`candidates` must have at least as many rows"),
    (dict(candidate_ids=torch.arange(C - 1)), SampledSoftmaxError, r"`candidate_ids` must have shape \[10\]"),
    (dict(candidate_ids=torch.ones(C)), TypeError, r"`candidate_ids` must have an integer dtype; received torch.float32"),
    (dict(log_q=torch.full((C,), 0.1)), SampledSoftmaxError, r"`log_q` must be <= 0 .*received 0.1"),
    (dict(log_q=torch.tensor([float("nan")] * C)), SampledSoftmaxError, r"`log_q` must be finite"),
    (dict(temperature=-1.0), SampledSoftmaxError, r"`temperature` must be positive and finite; received -1.0"),
    (dict(temperature=torch.tensor([1.0, 2.0])), SampledSoftmaxError, r"`temperature` must be a number or a floating "
                                                                         r"scalar tensor; received shape \[2\]"),
    (dict(temperature="hot"), TypeError, r"`temperature` must be a number or a scalar tensor; received str"),
    (dict(score_mask=torch.ones(B, C)), TypeError, r"`score_mask` must be a bool tensor \(True keeps\)"),
    (dict(num_hard_negatives=0), SampledSoftmaxError, r"`num_hard_negatives` must be >= 1"),
    (dict(sample_weight=-torch.ones(B)), SampledSoftmaxError, r"`sample_weight` must be finite and >= 0; received -1.0"),
    (dict(reduction="avg"), SampledSoftmaxError, r"`reduction` must be one of 'none', 'mean', 'sum'; received 'avg'"),
    (dict(query=torch.ones(B, D, dtype=torch.int64)), TypeError, r"`query` must have a floating dtype"),
    (dict(excluded_ids=torch.ones(B, 2, dtype=torch.int64), candidate_ids=None), SampledSoftmaxError,
     r"`excluded_ids` needs `candidate_ids`"),
])
def test_bad_input_is_a_clear_error(kw, exc, message):
    args = dict(query=torch.randn(B, D), candidates=torch.randn(C, D), candidate_ids=torch.arange(C))
    args.update(kw)
    with pytest.raises(exc, match=message):
        in_batch_softmax_loss(args.pop("query"), args.pop("candidates"), **args)


# ---------------------------------------------------------------------------------------------
# Mixed negatives


def test_mixed_negatives_give_each_source_its_own_probability():
    draw = "unique_exact"
    V, M = 50, 12
    table = torch.nn.Embedding(V, D)
    ids = torch.tensor([3, 7, 7, 20])
    in_batch = torch.log(torch.tensor([0.5, 0.25, 0.25, 0.125]))
    sampler = LogUniformSampler(V, draw=draw)
    mixed = mixed_negatives(table(ids), ids, in_batch, M, sampler, table, generator=torch.Generator().manual_seed(3))
    assert mixed.candidates.shape == (4 + M, D) and mixed.candidate_ids.shape == (4 + M,)
    cand, _, count = sampler(ids[:, None], M, generator=torch.Generator().manual_seed(3))
    assert torch.equal(mixed.candidate_ids[4:], cand)
    torch.testing.assert_close(mixed.log_q[:4], in_batch)
    finite = torch.isfinite(count)
    torch.testing.assert_close(mixed.log_q[4:][finite], count[finite].log().to(mixed.log_q.dtype))
    assert (mixed.log_q <= 0).all()
    torch.testing.assert_close(mixed.candidates[4:], table(cand))
    assert not finite.all(), "the draw should have repeats (padding slots) for this test"
    assert torch.equal(mixed.score_mask[:, 4:], finite[None, :].expand(4, M))
    loss = in_batch_softmax_loss(torch.randn(4, D), **mixed._asdict())
    assert torch.isfinite(loss)


def test_mixed_negatives_take_a_given_draw_as_the_other_front_ends_do():
    """The ``sampled_values`` form (TensorFlow's, JAX's, the reference's) equals the drawing form
    on the same draw, and the reference; the keyword drawing form equals the positional one."""
    V, M = 50, 12
    table = torch.nn.Embedding(V, D)
    ids = torch.tensor([3, 7, 7, 20])
    in_batch = torch.log(torch.tensor([0.5, 0.25, 0.25, 0.125]))
    sampler = LogUniformSampler(V, draw="unique_exact")
    drawn = mixed_negatives(table(ids), ids, in_batch, M, sampler, table, generator=torch.Generator().manual_seed(3))
    by_keyword = mixed_negatives(table(ids), ids, in_batch, num_negatives=M, sampler=sampler, encode=table,
                                 generator=torch.Generator().manual_seed(3))
    sv = sampler(ids[:, None], M, generator=torch.Generator().manual_seed(3))
    given = mixed_negatives(table(ids), ids, in_batch, sv, table)
    for other in (by_keyword, given):
        for a, b in zip(drawn, other):
            assert torch.equal(a, b)
    ref = R.mixed_negatives(table(ids).detach().double().numpy(), ids.numpy(), in_batch.double().numpy(),
                            (sv[0].numpy(), None, sv[2].double().numpy()),
                            lambda i: table(torch.as_tensor(i)).detach().double().numpy())
    for a, b in zip(given, ref):
        np.testing.assert_allclose(a.detach().double().numpy(), b, rtol=1e-6)
    with pytest.raises(SampledSoftmaxError, match="at most 1"):
        mixed_negatives(table(ids), ids, in_batch, (sv[0], None, torch.full((M,), 2.0)), table)
    with pytest.raises(SampledSoftmaxError, match="`sampled_values` cannot be given with"):
        mixed_negatives(table(ids), ids, in_batch, sv, table, num_negatives=M, sampler=sampler)
    with pytest.raises(TypeError, match="`encode`"):
        mixed_negatives(table(ids), ids, in_batch, sv)


def test_mixed_negatives_refuse_draws_with_replacement_and_bad_towers():
    ids = torch.arange(3)
    for draw in ("with_replacement", "unique"):
        with pytest.raises(SampledSoftmaxError, match=rf"`sampler` must draw with draw='unique_exact' .*received "
                                                      rf"draw='{draw}'"):
            mixed_negatives(torch.randn(3, D), ids, torch.zeros(3), 4, UniformSampler(10, draw=draw),
                            lambda i: torch.randn(4, D))
    exact = UniformSampler(10, draw="unique_exact")
    with pytest.raises(SampledSoftmaxError, match=r"`encode` must return \[4, 4\] embeddings; received \[4, 5\]"):
        mixed_negatives(torch.randn(3, D), ids, torch.zeros(3), 4, exact, lambda i: torch.randn(4, 5))
    with pytest.raises(SampledSoftmaxError, match=r"`in_batch_log_q` must have shape \[3\]; received shape \[2\]"):
        mixed_negatives(torch.randn(3, D), ids, torch.zeros(2), 4, exact, lambda i: torch.randn(4, D))


# ---------------------------------------------------------------------------------------------
# Streaming frequency estimators


def _stream(steps, batch, V=300, seed=0, exponent=1.1):
    rng = np.random.default_rng(seed)
    p = np.arange(1, V + 1, dtype=np.float64) ** -exponent
    p /= p.sum()
    return [rng.choice(V, size=batch, p=p) for _ in range(steps)], p


@pytest.mark.parametrize("kind", ["last_seen", "count_min"])
@pytest.mark.parametrize("num_hashes", [1, 3])
def test_estimators_equal_their_numpy_reference_step_by_step(kind, num_hashes):
    stream, _ = _stream(40, 32)
    stream[3] = np.concatenate([stream[3], stream[3][:5], [2**40 + 7]])  # duplicates; an id past 32 bits
    if kind == "last_seen":
        ours, ref = StreamingFrequency(64, num_hashes=num_hashes, learning_rate=0.1, seed=5), \
            NF.StreamingFrequency(64, num_hashes=num_hashes, learning_rate=0.1, seed=5)
    else:
        ours, ref = CountMinFrequency(64, num_hashes=num_hashes, seed=5), NF.CountMinFrequency(64, num_hashes=num_hashes, seed=5)
    probe = np.arange(0, 320, 7)
    for ids in stream:
        np.testing.assert_array_equal(ours.buckets(torch.from_numpy(ids)).numpy(),
                                      NF.bucket_ids(ids, ref.tables, 64))
        log_q = ours(torch.from_numpy(ids))
        ref.update(ids)
        np.testing.assert_allclose(log_q.numpy(), ref.log_q(ids), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(ours.log_q(torch.from_numpy(probe)).numpy(), ref.log_q(probe), rtol=1e-6, atol=1e-7)
    assert (ours.log_q(torch.from_numpy(probe)) <= 0).all()


def test_an_id_counts_once_per_step_and_eval_mode_does_not_update():
    est = StreamingFrequency(1024)
    est(torch.tensor([5, 5, 5, 9]))
    est(torch.tensor([5, 1]))
    assert est.probability(torch.tensor([5])).item() == 1.0  # seen at steps 1 and 2: gap 1
    est.eval()
    state = {k: v.clone() for k, v in est.state_dict().items()}
    est(torch.tensor([5, 7]))
    for k, v in est.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("cls", [StreamingFrequency, CountMinFrequency])
def test_state_is_saved_and_restored(cls, tmp_path):
    stream, _ = _stream(20, 16)
    a = cls(256, num_hashes=2)
    for ids in stream[:10]:
        a(torch.from_numpy(ids))
    torch.save(a.state_dict(), tmp_path / "f.pt")
    b = cls(256, num_hashes=2)
    b.load_state_dict(torch.load(tmp_path / "f.pt"))
    for ids in stream[10:]:
        torch.testing.assert_close(a(torch.from_numpy(ids)), b(torch.from_numpy(ids)), rtol=0, atol=0)


@pytest.mark.parametrize("cls,tolerance", [(StreamingFrequency, 0.15), (CountMinFrequency, 0.05)])
def test_the_estimate_converges_to_the_true_batch_probability(cls, tolerance):
    """A stationary Zipf stream over 300 ids, batches of 64: after 600 steps the estimated
    probability that an id is in a batch, ``1 - (1 - p) ** 64``, is within ``tolerance``
    (relative, median over the 50 most frequent ids) of the truth: measured 7.6% for Yi et al.'s
    moving average (``alpha = 0.05`` keeps a noise per id, and ``1 / mean gap`` is biased up by
    ~5%), 2.8% for the count-min sketch."""
    stream, p = _stream(600, 64)
    est = cls(1 << 14, num_hashes=2)
    for ids in stream:
        est(torch.from_numpy(ids))
    top = np.argsort(-p)[:50]
    truth = 1.0 - (1.0 - p[top]) ** 64
    estimate = est.probability(torch.from_numpy(top)).double().numpy()
    assert np.median(np.abs(estimate / truth - 1.0)) < tolerance
