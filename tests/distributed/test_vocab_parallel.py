"""Vocabulary-parallel sampled softmax on 2 and 4 ``gloo`` ranks (spawned here, with deadlines):
the loss and the gradients of the inputs and of every shard equal one process's
``sampled_softmax_loss`` on the whole table with the same candidates (1e-12 float64, 1e-6
float32), over ``num_true`` 1 and 3, accidental hits, ``ignore_index``, label smoothing, uneven
shards, sparse rows; ``k`` optimizer steps equal one process's; the exact eval loss equals
``full_softmax_loss``; bad input is an error on every rank."""

from __future__ import annotations

import pytest
import torch

import spawn
from sampled_softmax.torch import LearnedUnigramSampler, SparseRowAdam, full_softmax_loss, sampled_softmax_loss

pytestmark = pytest.mark.slow

V, D, N, S = 23, 5, 7, 6  # 23 classes: uneven shards on 2 and 4 ranks
PER_RANK = 1  # rows of the batch each rank holds in the Partial FC case (PER_RANK * 4 <= N)

CASES = {
    "f64 one label, bias": dict(dtype=torch.float64, t=1, bias=True),
    "f64 three labels, ignored, smoothing": dict(dtype=torch.float64, t=3, bias=True, ignore_index=-1,
                                                  label_smoothing=0.1),
    "f64 hits kept, no bias, given draw": dict(dtype=torch.float64, t=1, bias=False, remove_accidental_hits=False,
                                               given=True),
    "f64 many hits": dict(dtype=torch.float64, t=2, bias=True, small_labels=True),
    "f32 sparse rows": dict(dtype=torch.float32, t=1, bias=True, sparse=True),
    "f32 three labels, sum": dict(dtype=torch.float32, t=3, bias=True, reduction="sum"),
}


def _problem(case: dict, seed: int):
    g = torch.Generator().manual_seed(seed)
    dtype, t = case["dtype"], case["t"]
    weight = torch.randn(V, D, generator=g, dtype=dtype)
    bias = torch.randn(V, generator=g, dtype=dtype) if case["bias"] else None
    high = 4 if case.get("small_labels") else V
    labels = torch.randint(high, (N, t) if t > 1 else (N,), generator=g)
    if case.get("ignore_index") is not None:
        labels[1, 0] = -1
        labels[3] = -1  # a row with every label ignored
    inputs = torch.randn(N, D, generator=g, dtype=dtype)
    sampled = None
    if case.get("given"):
        sampled = (torch.tensor([0, 5, 5, 22, 11, 3]), torch.full((N, 1), 0.3, dtype=dtype),
                   torch.tensor([0.5, 0.2, float("inf"), 0.1, 0.2, 0.3], dtype=dtype))
    return weight, bias, labels, inputs, sampled


def _kwargs(case: dict) -> dict:
    return dict(num_true=case["t"], remove_accidental_hits=case.get("remove_accidental_hits", True),
                ignore_index=case.get("ignore_index"), label_smoothing=case.get("label_smoothing", 0.0),
                reduction=case.get("reduction", "mean"), sparse=case.get("sparse", False))


def _dense(g):
    return None if g is None else (g.coalesce().to_dense() if g.is_sparse else g)


def _grads_of(loss_fn, weight, bias, inputs):
    weight = weight.detach().requires_grad_()
    bias = None if bias is None else bias.detach().requires_grad_()
    inputs = inputs.detach().requires_grad_()
    loss = loss_fn(weight, bias, inputs)
    loss.sum().backward()
    return loss.detach(), inputs.grad, _dense(weight.grad), None if bias is None else _dense(bias.grad)


def _vocab_parallel_worker(rank, world):
    from sampled_softmax.torch.distributed import (
        shard_range, vocab_parallel_full_softmax_loss, vocab_parallel_sampled_softmax_loss,
    )

    out = {}
    for seed, (name, case) in enumerate(CASES.items()):
        weight, bias, labels, inputs, sampled = _problem(case, seed)
        start, rows = shard_range(V, rank, world)
        kw = _kwargs(case)
        generator = torch.Generator().manual_seed(100 + seed + rank * 7)  # rank 0's draw is the one used

        def loss_fn(w, b, h):
            return vocab_parallel_sampled_softmax_loss(w, b, labels, h, S, V, sampled_values=sampled,
                                                       generator=generator, **kw)

        loss, d_h, d_w, d_b = _grads_of(loss_fn, weight[start:start + rows], None if bias is None else
                                        bias[start:start + rows], inputs)
        out[name] = (loss, d_h, d_w, d_b)
        full_kw = dict(num_true=case["t"], ignore_index=kw["ignore_index"], label_smoothing=kw["label_smoothing"],
                       reduction=kw["reduction"])

        def full_fn(w, b, h):
            return vocab_parallel_full_softmax_loss(w, b, labels, h, V, chunk_size=2, **full_kw)

        out["full " + name] = _grads_of(full_fn, weight[start:start + rows],
                                        None if bias is None else bias[start:start + rows], inputs)
    # Partial FC: each rank holds its own rows of the batch, gathered for the sharded loss.
    from sampled_softmax.torch.distributed import all_gather_rows

    weight, bias, labels, inputs, sampled = _problem(dict(dtype=torch.float64, t=1, bias=True, given=True), 99)
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    start, rows = shard_range(V, rank, world)
    h = inputs[:PER_RANK * world][mine].clone().requires_grad_()
    sv = (sampled[0], sampled[1][:PER_RANK * world], sampled[2])
    loss = vocab_parallel_sampled_softmax_loss(weight[start:start + rows], bias[start:start + rows],
                                               labels[:PER_RANK * world], all_gather_rows(h, sum_gradients=False),
                                               S, V, sampled_values=sv, reduction="sum")
    loss.backward()
    out["partial fc"] = (loss.detach(), h.grad)
    return out


@pytest.mark.parametrize("world", [2, 4])
def test_vocab_parallel_equals_one_process(tmp_path, world):
    results = spawn.run(_vocab_parallel_worker, world, tmp_path)
    from sampled_softmax.torch.distributed import shard_range

    # Partial FC: the gathered rows' loss and each rank's own rows' gradient.
    weight, bias, labels, inputs, sampled = _problem(dict(dtype=torch.float64, t=1, bias=True, given=True), 99)
    n = PER_RANK * world
    h = inputs[:n].clone().requires_grad_()
    loss = sampled_softmax_loss(weight, bias, labels[:n], h, S, V, sampled_values=(sampled[0], sampled[1][:n],
                                                                                  sampled[2]), reduction="sum")
    loss.backward()
    for rank, result in enumerate(results):
        r_loss, r_dh = result["partial fc"]
        torch.testing.assert_close(r_loss, loss.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(r_dh, h.grad[rank * PER_RANK:(rank + 1) * PER_RANK], rtol=1e-12, atol=1e-12)

    for seed, (name, case) in enumerate(CASES.items()):
        weight, bias, labels, inputs, sampled = _problem(case, seed)
        kw = _kwargs(case)
        generator = torch.Generator().manual_seed(100 + seed)  # rank 0's

        def loss_fn(w, b, h):
            return sampled_softmax_loss(w, b, labels, h, S, V, sampled_values=sampled, generator=generator,
                                        implementation="python", **kw)

        ref = _grads_of(loss_fn, weight, bias, inputs)
        full_ref = _grads_of(lambda w, b, h: full_softmax_loss(
            w, b, labels, h, ignore_index=kw["ignore_index"], label_smoothing=kw["label_smoothing"],
            reduction=kw["reduction"]), weight, bias, inputs)
        tol = dict(rtol=1e-12, atol=1e-12) if case["dtype"] == torch.float64 else dict(rtol=1e-6, atol=1e-6)
        for key, expected in ((name, ref), ("full " + name, full_ref)):
            for rank, result in enumerate(results):
                loss, d_h, d_w, d_b = result[key]
                start, rows = shard_range(V, rank, world)
                torch.testing.assert_close(loss, expected[0], **tol,
                                           msg=f"{key}: loss on rank {rank}: {loss} against {expected[0]}")
                torch.testing.assert_close(d_h, expected[1], **tol, msg=f"{key}: d inputs on rank {rank}")
                torch.testing.assert_close(d_w, expected[2][start:start + rows], **tol,
                                           msg=f"{key}: d weight shard {rank}")
                if expected[3] is not None:
                    torch.testing.assert_close(d_b, expected[3][start:start + rows], **tol,
                                               msg=f"{key}: d bias shard {rank}")


STEPS = 3


def _training_problem():
    g = torch.Generator().manual_seed(7)
    table = torch.randn(V, D, generator=g, dtype=torch.float64)
    encoder = torch.randn(D, D, generator=g, dtype=torch.float64)
    batches = [(torch.randn(N, D, generator=g, dtype=torch.float64), torch.randint(V, (N,), generator=g))
               for _ in range(STEPS)]
    return table, encoder, batches


def _train_steps(head_params, loss_of, encoder_init, batches):
    """``len(batches)`` steps of a linear encoder and a head: ``loss_of(hidden, labels)``."""
    encoder = torch.nn.Linear(D, D, bias=False, dtype=torch.float64)
    with torch.no_grad():
        encoder.weight.copy_(encoder_init)
    optimizers = [SparseRowAdam(head_params, lr=0.05, implementation="python"),
                  torch.optim.Adam(encoder.parameters(), lr=0.05)]
    losses = []
    for x, y in batches:
        loss = loss_of(encoder(x), y)
        for opt in optimizers:
            opt.zero_grad()
        loss.backward()
        for opt in optimizers:
            opt.step()
        losses.append(loss.item())
    return losses, encoder


def _steps_worker(rank, world):
    from sampled_softmax.torch.distributed import VocabParallelSampledSoftmax

    table, encoder_init, batches = _training_problem()
    head = VocabParallelSampledSoftmax(D, V, S, bias=False, sparse=True, dtype=torch.float64)  # learned unigram
    head.load_full_table(table)
    generator = torch.Generator().manual_seed(11)
    losses, encoder = _train_steps(list(head.parameters()), lambda h, y: head(h, y, generator=generator).loss,
                                   encoder_init, batches)
    head.eval()
    x, y = batches[0]
    with torch.no_grad():
        out = head(encoder(x), y)
        evaluation = (out.loss.item(), out.output, head.log_prob(encoder(x)), head.predict(encoder(x)))
    return losses, head.weight.detach().clone(), encoder.weight.detach().clone(), evaluation, \
        head.sampler.counts.clone()


def test_vocab_parallel_module_steps_equal_one_process(tmp_path):
    from sampled_softmax.torch.distributed import shard_range

    world = 2
    results = spawn.run(_steps_worker, world, tmp_path)
    table, encoder_init, batches = _training_problem()
    weight = torch.nn.Parameter(table.clone())
    generator = torch.Generator().manual_seed(11)
    sampler = LearnedUnigramSampler(V)
    losses, encoder = _train_steps([weight], lambda h, y: sampled_softmax_loss(
        weight, None, y, h, S, V, generator=generator, sparse=True, sampler=sampler, reduction="mean",
        implementation="python"), encoder_init, batches)
    x, y = batches[0]
    with torch.no_grad():
        eval_loss, eval_logp = full_softmax_loss(weight, None, y, encoder(x), reduction="mean", return_log_prob=True)
        eval_loss = eval_loss.item()
        log_prob = torch.log_softmax(encoder(x) @ weight.t(), dim=-1)
    for rank, (r_losses, r_shard, r_encoder, (r_eval, r_logp, r_log_prob, r_predict), r_counts) in enumerate(results):
        # The module's output, log_prob and predict: SampledSoftmax's, over the whole table.
        torch.testing.assert_close(r_logp, eval_logp, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(r_log_prob, log_prob, rtol=1e-12, atol=1e-12)
        assert torch.equal(r_predict, log_prob.argmax(-1))
        torch.testing.assert_close(r_counts, sampler.counts, rtol=0, atol=0)
        start, rows = shard_range(V, rank, world)
        assert r_losses == pytest.approx(losses, rel=1e-12)
        torch.testing.assert_close(r_shard, weight.detach()[start:start + rows], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(r_encoder, encoder.weight.detach(), rtol=1e-12, atol=1e-12)
        assert r_eval == pytest.approx(eval_loss, rel=1e-12)


def _bad_input_worker(rank, world):
    from sampled_softmax import SampledSoftmaxError
    from sampled_softmax.torch import RowSGD
    from sampled_softmax.torch.distributed import shard_range, vocab_parallel_sampled_softmax_loss

    weight, bias, labels, inputs, _ = _problem(CASES["f64 one label, bias"], 0)
    start, rows = shard_range(V, rank, world)
    shard = weight[start:start + rows]
    cases = {
        "uneven shards": dict(w=weight[:rows + (1 if rank == 0 else 0)]),
        "label owned by no rank": dict(y=torch.where(torch.arange(N) == 2, V + 3, labels) if rank == 1 else labels),
        "different num_sampled": dict(s=S + rank),
        "different labels": dict(y=labels.roll(rank)),
        "a draw given on one rank": dict(sv=(torch.arange(S), torch.full((N, 1), 0.1), torch.full((S,), 0.1))
                                         if rank == 0 else None),
        "a draw that fails": dict(s=V + 5),
        "a table_optimizer on one rank": dict(opt=RowSGD(0.1) if rank == 0 else None),
        "a shard that requires grad": dict(w=shard.clone().requires_grad_(rank == 1), opt=RowSGD(0.1)),
    }
    messages = {}
    for name, case in cases.items():
        try:
            vocab_parallel_sampled_softmax_loss(case.get("w", shard), None, case.get("y", labels), inputs,
                                                case.get("s", S), V, sampled_values=case.get("sv"),
                                                table_optimizer=case.get("opt"))
            messages[name] = None
        except SampledSoftmaxError as e:
            messages[name] = str(e)
    # The group still works after every error: no rank is left waiting in a collective. And the
    # bytes each rank hands to the collectives are the formula's.
    from sampled_softmax.torch.distributed import CollectiveBytes

    h = inputs.float().requires_grad_()
    with CollectiveBytes() as sent:
        loss = vocab_parallel_sampled_softmax_loss(shard.float(), None, labels, h, S, V, reduction="mean")
        loss.backward()
    return messages, bool(torch.isfinite(loss)), dict(sent.by_op)


def test_vocab_parallel_bad_input_is_an_error_on_every_rank(tmp_path):
    from sampled_softmax.torch.distributed import vocab_parallel_bytes

    results = spawn.run(_bad_input_worker, 2, tmp_path)
    for rank, (messages, finite, sent) in enumerate(results):
        assert finite
        assert sent == vocab_parallel_bytes(N, 1, S, D, element_size=4)
        assert "`weight_shard` rows must be [12, 11] on ranks 0..1 for num_classes=23" in messages["uneven shards"]
        assert "received [13, 11]" in messages["uneven shards"]
        owned = messages["label owned by no rank"]
        if rank == 1:
            assert "`labels` must be in [0, 22]" in owned and "26" in owned, owned
        else:
            assert "rank 1 of the group rejected its arguments" in owned and "`labels` must be in [0, 22]" in owned
        assert "`num_sampled` must be the same on every rank of the group; received 6, 7 on ranks 0..1" in \
            messages["different num_sampled"]
        assert "`labels (a checksum)` must be the same on every rank" in messages["different labels"]
        assert "`sampled_values given` must be the same on every rank of the group; received 1, 0 on ranks 0..1" in \
            messages["a draw given on one rank"]
        assert "`table_optimizer` must be the same on every rank of the group; received RowSGD, None on ranks " \
            "0..1" in messages["a table_optimizer on one rank"], messages["a table_optimizer on one rank"]
        grad = messages["a shard that requires grad"]
        assert "`weights` requires grad: with a table_optimizer" in grad, grad
        failed = messages["a draw that fails"]
        if rank == 0:
            assert "`num_sampled`" in failed and "28" in failed, failed
        else:
            assert "rank 0 of the group could not draw the candidates" in failed, failed


@pytest.mark.parametrize("kwargs,words", [
    (dict(num_sampled=0), "`num_sampled` must be"), (dict(in_features=0), "`in_features` must be"),
    (dict(reduction="avg"), "`reduction` must be one of"), (dict(label_smoothing=1.5), "`label_smoothing`"),
    (dict(num_true=0), "`num_true` must be"), (dict(num_sampled=50), "`num_sampled`"),
])
def test_the_module_checks_its_arguments_when_made(kwargs, words):
    """Before the first forward (on every rank) and before it needs a process group."""
    from sampled_softmax import SampledSoftmaxError
    from sampled_softmax.torch.distributed import VocabParallelSampledSoftmax

    args = dict(in_features=4, num_classes=20, num_sampled=5, sampler="uniform")
    args.update(kwargs)
    with pytest.raises(SampledSoftmaxError, match=words):
        VocabParallelSampledSoftmax(args.pop("in_features"), args.pop("num_classes"), args.pop("num_sampled"), **args)


def test_the_functions_default_to_per_example_losses_as_sampled_softmax_loss():
    import inspect

    from sampled_softmax.torch.distributed import vocab_parallel_full_softmax_loss, vocab_parallel_sampled_softmax_loss

    for fn in (vocab_parallel_sampled_softmax_loss, vocab_parallel_full_softmax_loss, sampled_softmax_loss,
               full_softmax_loss):
        assert inspect.signature(fn).parameters["reduction"].default == "none", fn.__name__


def _fused_train(head, encoder_init, batches):
    """``len(batches)`` steps: the encoder with Adam, the head's table by its fused optimizer."""
    encoder = torch.nn.Linear(D, D, bias=False, dtype=torch.float64)
    with torch.no_grad():
        encoder.weight.copy_(encoder_init)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(11)
    losses = []
    for x, y in batches:
        optimizer.zero_grad()
        loss = head(encoder(x), y, generator=generator).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, encoder.weight.detach().clone()


def _fused_steps_worker(rank, world):
    from sampled_softmax.torch import RowAdam
    from sampled_softmax.torch.distributed import VocabParallelSampledSoftmax

    table, encoder_init, batches = _training_problem()
    head = VocabParallelSampledSoftmax(D, V, S, bias=True, sampler="uniform", dtype=torch.float64,
                                       table_optimizer=RowAdam(lr=0.05))
    head.load_full_table(table, torch.zeros(V, dtype=torch.float64))
    losses, encoder = _fused_train(head, encoder_init, batches)
    return losses, head.weight.detach().clone(), head.bias.detach().clone(), encoder


def test_vocab_parallel_fused_table_optimizer_steps_equal_one_process(tmp_path):
    """Each rank's RowAdam updates its own shard in backward: the shards, the biases and the
    encoder after k steps equal one process's SampledSoftmax with a fused RowAdam on the whole table."""
    from sampled_softmax.torch import RowAdam, SampledSoftmax
    from sampled_softmax.torch.distributed import shard_range

    world = 2
    results = spawn.run(_fused_steps_worker, world, tmp_path)
    table, encoder_init, batches = _training_problem()
    head = SampledSoftmax(D, V, S, sampler="uniform", implementation="python", table_optimizer=RowAdam(lr=0.05)).double()
    with torch.no_grad():
        head.weight.copy_(table)
        head.bias.zero_()
    losses, encoder = _fused_train(head, encoder_init, batches)
    for rank, (r_losses, r_shard, r_bias, r_encoder) in enumerate(results):
        start, rows = shard_range(V, rank, world)
        assert r_losses == pytest.approx(losses, rel=1e-12)
        torch.testing.assert_close(r_shard, head.weight[start:start + rows], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(r_bias, head.bias[start:start + rows], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(r_encoder, encoder, rtol=1e-12, atol=1e-12)
    assert not torch.equal(head.weight, table)
