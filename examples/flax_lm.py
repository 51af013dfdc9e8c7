"""The demo's language model in Flax NNX, its output layer trained with sampled softmax and optax.

``Embed(V, D) -> LSTM(D) -> SampledSoftmax(D, V)``, the model of ``sampled-softmax demo``; one
``nnx.jit`` step draws the candidates from the layer's own RNG stream, and ``optax.adam`` updates
everything (``nnx.Optimizer(..., wrt=nnx.Param)``). ``model.eval()`` makes the layer compute the
exact full softmax, reported as validation perplexity beside the unigram baseline and, for the
generated corpus, the best perplexity any model can reach. ``--full`` trains the same model with
a full softmax output (``nnx.Linear`` + cross-entropy) for the same number of steps, to compare.

    python examples/flax_lm.py                               # generated corpus, no download
    python examples/flax_lm.py --corpus data/wikitext-2 --minutes 5 --full
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import numpy as np
import optax
from flax import nnx

from sampled_softmax.apps.corpus import read_corpus, zipf_markov
from sampled_softmax.jax.flax import SampledSoftmax


class LanguageModel(nnx.Module):
    """``Embed -> LSTM -> output``: ``SampledSoftmax`` (``num_sampled`` given) or a full softmax."""

    def __init__(self, vocab_size: int, dim: int, num_sampled: int | None, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab_size, dim, rngs=rngs)
        self.rnn = nnx.RNN(nnx.OptimizedLSTMCell(dim, dim, rngs=rngs))
        self.sampled = num_sampled is not None
        self.out = (SampledSoftmax(dim, vocab_size, num_sampled, rngs=rngs) if self.sampled
                    else nnx.Linear(dim, vocab_size, rngs=rngs))

    def __call__(self, tokens, targets):
        """Mean loss per token: sampled in training mode, exact in eval mode."""
        h = self.rnn(self.embed(tokens))
        if self.sampled:
            return self.out(h, targets)
        return optax.softmax_cross_entropy_with_integer_labels(self.out(h), targets).mean()


@nnx.jit
def train_step(model, optimizer, tokens, targets):
    loss, grads = nnx.value_and_grad(lambda m: m(tokens, targets))(model)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def eval_loss(model, tokens, targets):
    return model(tokens, targets)


def windows(ids: np.ndarray, length: int):
    n = (ids.size - 1) // length
    return ids[: n * length].reshape(n, length).astype(np.int32), ids[1: n * length + 1].reshape(n, length).astype(np.int32)


def perplexity(model, x, y, batch: int) -> float:
    model.eval()
    total = sum(float(eval_loss(model, x[i:i + batch], y[i:i + batch])) * len(x[i:i + batch])
                for i in range(0, len(x), batch))
    model.train()
    return math.exp(total / len(x))


def train(corpus, args, num_sampled):
    model = LanguageModel(corpus.vocab_size, args.dim, num_sampled, rngs=nnx.Rngs(args.seed))
    optimizer = nnx.Optimizer(model, optax.adam(args.lr), wrt=nnx.Param)
    x, y = windows(corpus.train, args.seq_len)
    xv, yv = windows(corpus.valid, args.seq_len)
    xv, yv = xv[: args.valid_windows], yv[: args.valid_windows]
    rng = np.random.default_rng(args.seed)
    before = perplexity(model, xv, yv, args.batch)
    start, steps = time.perf_counter(), 0
    while steps < args.steps and time.perf_counter() - start < 60 * args.minutes:
        rows = rng.integers(0, len(x), args.batch)
        train_step(model, optimizer, x[rows], y[rows])
        steps += 1
    jax.block_until_ready(nnx.state(model))
    seconds = time.perf_counter() - start
    return before, perplexity(model, xv, yv, args.batch), steps, seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", help="directory with train.txt and valid.txt (default: a generated corpus)")
    ap.add_argument("--vocab", type=int, default=10_000, help="vocabulary of the generated corpus")
    ap.add_argument("--minutes", type=float, default=2.0, help="training time budget per model")
    ap.add_argument("--steps", type=int, default=10**9, help="stop after this many steps")
    ap.add_argument("--num-sampled", type=int, default=512)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=35)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--valid-windows", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--full", action="store_true", help="also train a full-softmax output for the same steps")
    args = ap.parse_args(argv)

    corpus = (read_corpus(args.corpus) if args.corpus
              else zipf_markov(args.vocab, 400_000, 20_000, follow=0.7, seed=args.seed))
    optimum = f", optimum {corpus.optimal_perplexity:.1f}" if corpus.optimal_perplexity else ""
    print(f"{corpus.name}: V={corpus.vocab_size}, unigram baseline {corpus.unigram_perplexity():.1f}{optimum}")
    results = {}
    before, after, steps, seconds = train(corpus, args, args.num_sampled)
    results["sampled"] = after
    print(f"sampled softmax (S={args.num_sampled}): {steps} steps in {seconds:.0f} s ({steps / seconds:.1f} steps/s), "
          f"full-softmax validation perplexity {before:.1f} -> {after:.1f}")
    if args.full:
        args.steps, args.minutes = steps, float("inf")
        _, full, _, full_seconds = train(corpus, args, None)
        results["full"] = full
        print(f"full softmax: {steps} steps in {full_seconds:.0f} s ({steps / full_seconds:.1f} steps/s), "
              f"validation perplexity {full:.1f}")
    return results, corpus.unigram_perplexity()


if __name__ == "__main__":
    main()
