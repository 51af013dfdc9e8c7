"""Data parallelism on 2 and 4 ``gloo`` ranks (spawned here, with deadlines): the row-sparse
recipe (``nn.Embedding(sparse=True)``, ``SampledSoftmax(sparse=True)``, ``SparseRowAdam``) with
``all_reduce_gradients`` in place of DDP gives the parameters of one process on the
concatenated batch after ``k`` steps, and ``DistributedLearnedUnigramSampler`` its counts;
in-batch negatives gathered across ranks give each rank's rows the single-process loss and
gradients over the global batch, in any rank order."""

from __future__ import annotations

import pytest
import torch

import spawn
from sampled_softmax.torch import LearnedUnigramSampler, SampledSoftmax, SparseRowAdam, in_batch_softmax_loss

pytestmark = pytest.mark.slow

V_IN, V, D, B, S, STEPS = 40, 31, 6, 5, 8, 3


def _data(world):
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randint(V_IN, (world * B,), generator=g), torch.randint(V, (world * B,), generator=g))
               for _ in range(STEPS)]
    embedding = torch.randn(V_IN, D, generator=g, dtype=torch.float64)
    table = torch.randn(V, D, generator=g, dtype=torch.float64)
    return batches, embedding, table


def _model(sampler, embedding, table):
    model = torch.nn.ModuleDict({
        "embedding": torch.nn.Embedding(V_IN, D, sparse=True, dtype=torch.float64),
        "output": SampledSoftmax(D, V, S, sampler=sampler, sparse=True, implementation="python",
                                 dtype=torch.float64),
    })
    with torch.no_grad():
        model["embedding"].weight.copy_(embedding)
        model["output"].weight.copy_(table)
        model["output"].bias.copy_(table[:, 0])  # every parameter set here: the ranks' RNGs differ
    return model


def _train(model, batches, rows, step_hook=None):
    optimizer = SparseRowAdam(model.parameters(), lr=0.05, implementation="python")
    generator = torch.Generator().manual_seed(5)  # the same draws on every rank and in one process
    for x, y in batches:
        optimizer.zero_grad()
        out = model["output"](model["embedding"](x[rows]), y[rows], generator=generator)
        out.loss.backward()
        if step_hook is not None:
            step_hook(model)
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _data_parallel_worker(rank, world):
    from sampled_softmax.torch.distributed import DistributedLearnedUnigramSampler, all_reduce_gradients

    batches, embedding, table = _data(world)
    model = _model(DistributedLearnedUnigramSampler(V), embedding, table)
    return _train(model, batches, slice(rank * B, (rank + 1) * B),
                  lambda m: all_reduce_gradients(m.parameters()))


@pytest.mark.parametrize("world", [2, 4])
def test_sparse_rows_data_parallel_equal_one_process(tmp_path, world):
    results = spawn.run(_data_parallel_worker, world, tmp_path)
    batches, embedding, table = _data(world)
    expected = _train(_model(LearnedUnigramSampler(V), embedding, table), batches, slice(None))
    for rank, state in enumerate(results):
        assert set(state) == set(expected)
        for name, value in expected.items():
            torch.testing.assert_close(state[name], value, rtol=1e-12, atol=1e-12)
    # Learned counts: one process's over the concatenated batches, exactly.
    assert float(expected["output.sampler.counts"].sum()) == V + STEPS * world * B


def _in_batch_problem(world):
    g = torch.Generator().manual_seed(9)
    n = world * B
    query = torch.randn(n, D, generator=g, dtype=torch.float64)
    candidates = torch.randn(n, D, generator=g, dtype=torch.float64)
    ids = torch.randint(6, (n,), generator=g)  # repeats across ranks: accidental hits between ranks
    log_q = -torch.rand(n, generator=g, dtype=torch.float64) - 1
    return query, candidates, ids, log_q


def _in_batch_worker(rank, world):
    from sampled_softmax.torch.distributed import gather_negatives

    query, candidates, ids, log_q = _in_batch_problem(world)
    rows = slice(rank * B, (rank + 1) * B)
    q = query[rows].clone().requires_grad_()
    c = candidates[rows].clone().requires_grad_()
    gathered = gather_negatives(c, ids[rows], log_q[rows])
    loss = in_batch_softmax_loss(q, **gathered._asdict(), temperature=0.5, reduction="none")
    loss.sum().backward()
    return loss.detach(), q.grad, c.grad


@pytest.mark.parametrize("world", [2, 4])
def test_in_batch_negatives_across_ranks_equal_one_process(tmp_path, world):
    results = spawn.run(_in_batch_worker, world, tmp_path)
    query, candidates, ids, log_q = _in_batch_problem(world)
    q, c = query.clone().requires_grad_(), candidates.clone().requires_grad_()
    loss = in_batch_softmax_loss(q, c, candidate_ids=ids, log_q=log_q, temperature=0.5, reduction="none")
    loss.sum().backward()
    for rank, (r_loss, r_dq, r_dc) in enumerate(results):
        rows = slice(rank * B, (rank + 1) * B)
        torch.testing.assert_close(r_loss, loss.detach()[rows], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(r_dq, q.grad[rows], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(r_dc, c.grad[rows], rtol=1e-12, atol=1e-12)
