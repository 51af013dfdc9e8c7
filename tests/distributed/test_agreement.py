"""What the ranks of a group must agree on, on 2 spawned ``gloo`` ranks with deadlines: every
argument a rank gives differently (dtypes, settings, inputs, a sampler's mode, which optional
tensors are given) is the same :class:`SampledSoftmaxError` on every rank, never a process
abort (gloo's ``EnforceNotMet`` on mismatched dtypes) nor a hang; after each error the group
still works (the next case runs on it). Also autocast and empty batches across ranks."""

from __future__ import annotations

import pytest
import torch

import spawn
from sampled_softmax import SampledSoftmaxError

pytestmark = pytest.mark.slow

V, D, N, S = 11, 4, 5, 3


def _problem(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    f64 = torch.float64
    return (torch.randn(V, D, generator=g, dtype=f64).to(dtype), torch.randn(V, generator=g, dtype=f64).to(dtype),
            torch.randint(V, (N,), generator=g), torch.randn(N, D, generator=g, dtype=f64).to(dtype))


def _shard(rank, world, x):
    from sampled_softmax.torch.distributed import shard_range

    start, rows = shard_range(V, rank, world)
    return x[start:start + rows]


def _vocab_parallel_case(rank, world, **per_rank):
    """The vocabulary-parallel loss with rank 1's arguments changed by ``per_rank``."""
    from sampled_softmax.torch.distributed import vocab_parallel_sampled_softmax_loss

    dtype = per_rank.pop("dtype", torch.float64) if rank == 1 else torch.float64
    weight, bias, labels, inputs = _problem(dtype)
    kwargs = dict(sampled_values=(torch.tensor([0, 4, 9]), torch.full((N, 1), 0.3, dtype=torch.float64),
                                  torch.full((S,), 0.3, dtype=torch.float64)))
    if rank == 1:
        if per_rank.pop("other_inputs", False):
            inputs = inputs + 1e-9
        kwargs.update(per_rank)
    return vocab_parallel_sampled_softmax_loss(_shard(rank, world, weight), _shard(rank, world, bias), labels,
                                               inputs, S, V, reduction="none", **kwargs)


CASES = {
    "inputs dtype": dict(dtype=torch.float32),
    "label_smoothing": dict(label_smoothing=0.1),
    "ignore_index": dict(ignore_index=-100),
    "subtract_log_q": dict(subtract_log_q=False),
    "remove_accidental_hits": dict(remove_accidental_hits=False),
    "inputs (a checksum)": dict(other_inputs=True),
}


def _outcome(fn):
    try:
        fn()
        return "ok"
    except SampledSoftmaxError as e:
        return f"SampledSoftmaxError: {e}"
    except Exception as e:  # noqa: BLE001 - reported, so the test can say what came instead
        return f"{type(e).__name__}: {e}"


def _disagreement_worker(rank, world):
    from sampled_softmax.torch import LearnedUnigramSampler, SampledSoftmax, in_batch_softmax_loss
    from sampled_softmax.torch.distributed import (
        DistributedLearnedUnigramSampler, VocabParallelSampledSoftmax, all_reduce_gradients, gather_negatives,
        vocab_parallel_full_softmax_loss,
    )

    out = {name: _outcome(lambda: _vocab_parallel_case(rank, world, **dict(case))) for name, case in CASES.items()}

    def grads_of_other_dtypes():
        p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float32 if rank == 0 else torch.float64))
        p.grad = torch.ones_like(p)
        all_reduce_gradients([p])

    out["all_reduce_gradients dtype"] = _outcome(grads_of_other_dtypes)

    def ids_on_one_rank():
        c = torch.randn(2, D)
        gather_negatives(c, torch.tensor([1, 2]) if rank == 0 else None, torch.zeros(2))

    out["gather_negatives ids"] = _outcome(ids_on_one_rank)

    # The learned sampler of data parallelism: a rank whose loss rejects its labels, a rank in eval.
    torch.manual_seed(0)  # the same layer on every rank
    layer = SampledSoftmax(D, V, S, sampler=DistributedLearnedUnigramSampler(V), implementation="python")
    h = torch.randn(N, D)

    def bad_labels_on_one_rank():
        layer(h, torch.tensor([1, 2, 3, 4, V if rank == 1 else 5]))

    out["sampler, bad labels"] = _outcome(bad_labels_on_one_rank)
    counts_after_failure = layer.sampler.counts.clone()

    def one_rank_in_eval():
        layer.sampler.train(rank == 0)
        try:
            layer(h, torch.tensor([1, 2, 3, 4, 5]))
        finally:
            layer.sampler.train()

    out["sampler, eval on one rank"] = _outcome(one_rank_in_eval)
    # Then a good step works, and counts every rank's labels.
    layer(h, torch.tensor([1, 2, 3, 4, 5]))
    out["counts"] = (counts_after_failure, layer.sampler.counts.clone())

    # One rank in eval mode: the vocabulary-parallel module's two losses.
    torch.manual_seed(0)
    module = VocabParallelSampledSoftmax(D, V, S, dtype=torch.float64)
    module.train(rank == 0)
    _, _, labels, inputs = _problem()
    out["module, eval on one rank"] = _outcome(lambda: module(inputs, labels))

    # Empty batches: an empty loss on every rank, with a gradient of the right shape.
    weight, bias, _, _ = _problem()
    w = _shard(rank, world, weight).clone().requires_grad_()
    empty = vocab_parallel_full_softmax_loss(w, None, torch.zeros(0, dtype=torch.int64),
                                             torch.zeros(0, D, dtype=torch.float64), V, reduction="none")
    empty.sum().backward()
    out["empty"] = (tuple(empty.shape), tuple(w.grad.shape), float(w.grad.abs().sum()))
    from sampled_softmax.torch.distributed import vocab_parallel_sampled_softmax_loss

    w.grad = None
    empty = vocab_parallel_sampled_softmax_loss(w, None, torch.zeros(0, dtype=torch.int64),
                                                torch.zeros(0, D, dtype=torch.float64), S, V, reduction="none",
                                                generator=torch.Generator().manual_seed(0))
    empty.sum().backward()
    out["empty sampled"] = (tuple(empty.shape), tuple(w.grad.shape), float(w.grad.abs().sum()))
    _ = (LearnedUnigramSampler, in_batch_softmax_loss)
    return out


@pytest.fixture(scope="module")
def disagreements(tmp_path_factory):
    return spawn.run(_disagreement_worker, 2, tmp_path_factory.mktemp("agree"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_vocab_parallel_argument_given_differently_is_an_error_on_every_rank(disagreements, name):
    for rank, out in enumerate(disagreements):
        assert out[name].startswith("SampledSoftmaxError"), (rank, out[name])
        assert f"`{name}` must be the same on every rank" in out[name], out[name]


def test_the_dtype_error_shows_the_dtypes_of_both_ranks(disagreements):
    for out in disagreements:
        assert "torch.float64, torch.float32 on ranks 0..1" in out["inputs dtype"], out["inputs dtype"]


@pytest.mark.parametrize("name,words", [
    ("all_reduce_gradients dtype", "`parameters' dtypes` must be the same on every rank of the group; received "
                                   "torch.float32, torch.float64"),
    ("gather_negatives ids", "`candidate_ids given` must be the same on every rank of the group; received True, "
                             "False"),
    ("sampler, bad labels", "must be in [0, 10]"),
    ("sampler, eval on one rank", "`training (the sampler's mode)` must be the same on every rank"),
    ("module, eval on one rank", "`loss (sampled in training mode, exact in eval mode)` must be the same"),
])
def test_collectives_of_one_rank_alone_are_an_error_on_every_rank(disagreements, name, words):
    for rank, out in enumerate(disagreements):
        assert out[name].startswith("SampledSoftmaxError"), (rank, out[name])
        assert words in out[name], (rank, out[name])


def test_a_failed_step_leaves_the_learned_counts_equal_on_every_rank(disagreements):
    (before0, after0), (before1, after1) = (out["counts"] for out in disagreements)
    assert torch.equal(before0, before1) and torch.equal(after0, after1)
    # The good step counted both ranks' five labels.
    assert float(after0.sum() - before0.sum()) == 2 * N


def test_the_vocab_parallel_losses_take_an_empty_batch(disagreements):
    for out in disagreements:
        rows = 6 if out is disagreements[0] else 5
        assert out["empty"] == ((0,), (rows, D), 0.0)
        assert out["empty sampled"] == ((0,), (rows, D), 0.0)


def _autocast_worker(rank, world):
    from sampled_softmax.torch.distributed import VocabParallelSampledSoftmax

    torch.manual_seed(0)
    encoder = torch.nn.Linear(D, D)
    module = VocabParallelSampledSoftmax(D, V, S)
    torch.manual_seed(1)
    x, y = torch.randn(N, D), torch.randint(V, (N,))
    g = torch.Generator().manual_seed(2)
    with torch.autocast("cpu", torch.bfloat16):
        loss = module(encoder(x), y, generator=g).loss
    loss.backward()
    return loss.dtype, encoder.weight.grad.dtype, bool(torch.isfinite(encoder.weight.grad).all()), \
        module.weight.grad.dtype


def test_the_vocab_parallel_module_trains_under_autocast(tmp_path):
    for loss_dtype, enc_dtype, finite, table_dtype in spawn.run(_autocast_worker, 2, tmp_path):
        assert loss_dtype == torch.float32 and enc_dtype == torch.float32 and finite
        assert table_dtype == torch.float32
