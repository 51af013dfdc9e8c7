"""A training step whose cost does not grow with the vocabulary, in PyTorch.

The recipe:
1. ``SampledSoftmax(..., sparse=True)`` as the output layer: each step reads and writes
   only the ``B*T + S`` rows of the class table it touches, as sparse gradients. Any other
   ``[V, ...]`` table (an input ``nn.Embedding``) gets ``sparse=True`` too.
2. ``SparseRowAdam`` for every such table: Adam on the touched rows only (``rowwise=True``
   keeps one second moment per row instead of a second ``[V, D]`` table).
3. Any ordinary optimizer (here ``Adam``) for the rest of the model.
4. ``zero_grad(set_to_none=True)`` so no dense ``[V, D]`` gradient is ever allocated.
5. ``model.eval()`` for evaluation: the same layer then computes the exact full softmax.

Runs without data: a next-token task over a Zipf-distributed synthetic vocabulary. With
``--corpus DIR`` (a directory with ``train.txt`` and ``valid.txt``, e.g. data/ptb or
data/wikitext-2) it trains a small language model on that text instead.

    python examples/torch_recipe.py [--vocab 100000] [--steps 300] [--corpus DIR] [--rowwise]
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import time

import torch

from sampled_softmax.torch import SampledSoftmax, SparseRowAdam


def synthetic(vocab: int, tokens: int, seed: int = 0):
    """A first-order Markov chain: each word's successor is a fixed function of it plus noise,
    over Zipf-distributed words (ids sorted by frequency, as the log-uniform sampler assumes)."""
    g = torch.Generator().manual_seed(seed)
    zipf = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64)
    noise = torch.multinomial(zipf / zipf.sum(), tokens, replacement=True, generator=g)
    seq = torch.empty(tokens, dtype=torch.long)
    seq[0] = 0
    follow = torch.rand(tokens, generator=g) < 0.6
    for i in range(1, tokens):  # 60% of successors are deterministic: learnable structure
        seq[i] = (seq[i - 1] * 7 + 3) % vocab if follow[i] else noise[i]
    cut = int(0.9 * tokens)
    return seq[:cut], seq[cut:], vocab


def from_corpus(directory: str):
    def read(name):
        with open(os.path.join(directory, name), encoding="utf-8") as f:
            return [w for line in f for w in line.split() + ["<eos>"]]

    train, valid = read("train.txt"), read("valid.txt")
    vocab = [w for w, _ in collections.Counter(train).most_common()]
    if "<unk>" not in vocab:
        vocab.append("<unk>")
    index = {w: i for i, w in enumerate(vocab)}
    return (torch.tensor([index[w] for w in train]),
            torch.tensor([index.get(w, index["<unk>"]) for w in valid]), len(vocab))


class BigramLM(torch.nn.Module):
    def __init__(self, vocab: int, dim: int, num_sampled: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim, sparse=True)
        self.hidden = torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.Tanh())
        self.output = SampledSoftmax(dim, vocab, num_sampled, sparse=True)

    def forward(self, prev, target):
        return self.output(self.hidden(self.embed(prev)), target)


def evaluate(model, seq, batch=8192):
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(1, seq.numel(), batch):
            pos = torch.arange(start, min(start + batch, seq.numel()))
            total += model(seq[pos - 1], seq[pos]).loss.item() * pos.numel()
    model.train()
    return total / (seq.numel() - 1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--num-sampled", type=int, default=256)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--corpus", help="directory with train.txt and valid.txt")
    ap.add_argument("--rowwise", action="store_true", help="row-wise second moments for the table")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    train, valid, vocab = from_corpus(args.corpus) if args.corpus else synthetic(args.vocab, 200_000)
    model = BigramLM(vocab, args.dim, args.num_sampled)
    tables = list(model.output.parameters()) + list(model.embed.parameters())  # the [V, ...] ones
    table_opt = SparseRowAdam(tables, lr=3e-3, rowwise=args.rowwise)
    rest_opt = torch.optim.Adam(model.hidden.parameters(), lr=3e-3)

    before = evaluate(model, valid)
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(args.steps):
        pos = torch.randint(1, train.numel(), (args.batch,), generator=g)
        table_opt.zero_grad(set_to_none=True)
        rest_opt.zero_grad(set_to_none=True)
        model(train[pos - 1], train[pos]).loss.backward()
        table_opt.step()
        rest_opt.step()
    per_step = (time.perf_counter() - start) / args.steps
    after = evaluate(model, valid)
    print(f"vocabulary {vocab}, {args.steps} steps, {per_step * 1e3:.2f} ms/step")
    print(f"full-softmax validation loss {before:.3f} -> {after:.3f} "
          f"(perplexity {math.exp(before):.0f} -> {math.exp(after):.0f})")
    return before, after


if __name__ == "__main__":
    main()
