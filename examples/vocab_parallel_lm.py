"""The demo's language model with its output table sharded over the ranks (vocabulary
parallelism), in PyTorch with ``torch.distributed``.

Every rank runs the same batches through the same embedding and LSTM (seeded alike: their
gradients are equal on every rank, since the input gradient of the sharded layer is
all-reduced); the output layer, ``VocabParallelSampledSoftmax``, holds ``1 / P`` of the class
table and its Adam state. Training draws ``--sampled`` candidates per step (rank 0's draw, all
ranks' learned counts equal); evaluation computes the exact perplexity over the sharded table.

    torchrun --nproc-per-node 2 examples/vocab_parallel_lm.py [--vocab 50000 --steps 300]

On GPUs pass ``--backend nccl``; each rank then uses ``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch
import torch.distributed as dist

from sampled_softmax.apps.corpus import zipf_markov
from sampled_softmax.torch import SparseRowAdam
from sampled_softmax.torch.distributed import VocabParallelSampledSoftmax


class Backbone(torch.nn.Module):
    """``Embedding -> LSTM``, the same on every rank."""

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim, sparse=True)
        self.rnn = torch.nn.LSTM(dim, dim, batch_first=True)

    def forward(self, tokens):
        return self.rnn(self.embed(tokens))[0]


def batches(ids: np.ndarray, batch: int, length: int, rng: np.random.Generator):
    while True:
        starts = rng.integers(0, ids.size - length - 1, batch)
        window = np.stack([ids[s:s + length + 1] for s in starts])
        yield torch.from_numpy(window[:, :-1]), torch.from_numpy(window[:, 1:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--sampled", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--backend", default="gloo")
    args = ap.parse_args(argv)

    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}") if args.backend == "nccl" else torch.device("cpu")
    torch.manual_seed(0)  # the same backbone on every rank
    corpus = zipf_markov(args.vocab, train_tokens=200_000, valid_tokens=20_000, seed=0)
    backbone = Backbone(args.vocab, args.dim).to(device)
    head = VocabParallelSampledSoftmax(args.dim, args.vocab, args.sampled, sparse=True, device=device)
    dense = [p for n, p in backbone.named_parameters() if not n.startswith("embed")]
    optimizers = [torch.optim.Adam(dense, lr=args.lr),
                  SparseRowAdam(list(backbone.embed.parameters()) + list(head.parameters()), lr=args.lr)]
    data = batches(corpus.train, args.batch, args.length, np.random.default_rng(0))  # the same on every rank
    generator = torch.Generator(device).manual_seed(1)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = (t.to(device) for t in next(data))
        loss = head(backbone(x), y, generator=generator).loss
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers:
            opt.step()
        if rank == 0 and (step % 100 == 0 or step == args.steps):
            print(f"step {step}: sampled loss {loss.item():.3f}  ({(time.perf_counter() - start) / step * 1e3:.0f} "
                  f"ms/step)", flush=True)
    head.eval()
    with torch.no_grad():
        valid = corpus.valid[: (corpus.valid.size - 1) // args.length * args.length + 1]
        x = torch.from_numpy(valid[:-1].reshape(-1, args.length)).to(device)
        y = torch.from_numpy(valid[1:].reshape(-1, args.length)).to(device)
        loss = head(backbone(x), y).loss.item()
    if rank == 0:
        print(f"{world} ranks, {head.weight.shape[0]} of {args.vocab} classes on rank 0: exact valid perplexity "
              f"{math.exp(loss):.1f} (unigram {corpus.unigram_perplexity():.1f}, best possible "
              f"{corpus.optimal_perplexity:.1f})")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
