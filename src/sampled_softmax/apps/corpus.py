"""Token streams for the examples, the demo and the benchmarks (NumPy only).

* :func:`read_corpus` reads a directory of plain text (``train.txt`` and ``valid.txt``, or the
  Penn Treebank's ``ptb.train.txt`` and ``ptb.valid.txt``): words split on whitespace, an
  ``<eos>`` after each line, ids sorted by decreasing training frequency (what the log-uniform
  sampler assumes), validation words outside the vocabulary mapped to ``<unk>``.
* :func:`zipf_markov` generates a corpus with no download: a first-order Markov chain over a
  Zipf-distributed vocabulary whose entropy rate, and so the best achievable perplexity of any
  model, is known exactly (:attr:`Corpus.optimal_perplexity`).
"""

from __future__ import annotations

import collections
import math
import os
from dataclasses import dataclass

import numpy as np

from .. import SampledSoftmaxError

__all__ = ["Corpus", "read_corpus", "zipf_markov"]


@dataclass
class Corpus:
    """Training and validation token ids (int64) over ``vocab_size`` classes."""

    train: np.ndarray
    valid: np.ndarray
    vocab_size: int
    name: str
    words: list[str] | None = None
    optimal_perplexity: float | None = None  # known only for generated corpora

    def unigram_counts(self) -> np.ndarray:
        """Training counts per id ``[V]`` (float64)."""
        return np.bincount(self.train, minlength=self.vocab_size).astype(np.float64)

    def unigram_perplexity(self) -> float:
        """Validation perplexity of the training unigram distribution (add-one smoothed): the
        baseline a model that ignores context reaches."""
        p = (self.unigram_counts() + 1.0) / (self.train.size + self.vocab_size)
        return float(np.exp(-np.mean(np.log(p[self.valid]))))


def _find(directory: str, split: str) -> str:
    for name in (f"{split}.txt", f"ptb.{split}.txt"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise SampledSoftmaxError(
        f"`corpus` directory must contain {split}.txt (or ptb.{split}.txt); received {directory!r} "
        f"with {sorted(os.listdir(directory)) if os.path.isdir(directory) else 'no such directory'}")


def _words(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [w for line in f if line.strip() for w in line.split() + ["<eos>"]]


def read_corpus(directory: str) -> Corpus:
    """Read ``train`` and ``valid`` splits of a plain-text corpus directory."""
    train_words = _words(_find(directory, "train"))
    valid_words = _words(_find(directory, "valid"))
    words = [w for w, _ in collections.Counter(train_words).most_common()]
    if "<unk>" not in words:
        words.append("<unk>")
    index = {w: i for i, w in enumerate(words)}
    unk = index["<unk>"]
    train = np.fromiter((index[w] for w in train_words), np.int64, len(train_words))
    valid = np.fromiter((index.get(w, unk) for w in valid_words), np.int64, len(valid_words))
    return Corpus(train, valid, len(words), os.path.basename(os.path.normpath(directory)), words)


def _successor_multiplier(vocab_size: int) -> int:
    for a in (7919, 7, 11, 13, 17, 19, 23):
        if math.gcd(a, vocab_size) == 1 and a < vocab_size:
            return a
    return 1


def zipf_markov(vocab_size: int = 50_000, train_tokens: int = 1_000_000, valid_tokens: int = 100_000, *,
                follow: float = 0.5, exponent: float = 1.0, seed: int = 0) -> Corpus:
    """A first-order Markov chain over ``vocab_size`` words with a known entropy rate.

    After word ``w`` the next word is ``f(w) = (a w + 1) mod V`` (a permutation) with
    probability ``follow``, else a fresh draw from the Zipf law ``z_k ∝ (k + 1)^-exponent``.
    Ids are Zipf-ranked, so the log-uniform sampler fits. The entropy rate is
    ``H = sum_w pi(w) h(f(w))`` with ``pi`` the chain's stationary law and ``h(j)`` the entropy
    of the mixture with its spike at ``j``; no model can beat perplexity ``exp(H)``.
    """
    if not 0.0 <= follow < 1.0:
        raise SampledSoftmaxError(f"`follow` must be in [0, 1); received {follow}")
    V = int(vocab_size)
    a = _successor_multiplier(V)
    successor = (a * np.arange(V) + 1) % V
    z = (np.arange(1, V + 1, dtype=np.float64)) ** -exponent
    z /= z.sum()

    # Stationary law: pi = follow * (pi pushed through f) + (1 - follow) z (a contraction).
    pi = z.copy()
    for _ in range(2000):
        pushed = np.zeros(V)
        pushed[successor] = pi
        new = follow * pushed + (1.0 - follow) * z
        if np.abs(new - pi).sum() < 1e-15:
            break
        pi = new
    q = (1.0 - follow) * z
    base = -np.sum(q * np.log(q))
    spike = follow + q  # probability of the successor itself, per successor id
    h = base + q * np.log(q) - spike * np.log(spike)
    entropy = float(np.sum(pi * h[successor]))

    rng = np.random.default_rng(seed)
    n = train_tokens + valid_tokens
    fresh = rng.choice(V, size=n, p=z)
    keep = rng.random(n) < follow
    keep[0] = False
    # Each fresh draw starts a run of successors: position i is f^k(fresh[start]), k = i - start.
    idx = np.arange(n)
    start = np.maximum.accumulate(np.where(keep, 0, idx))
    steps = idx - start
    seq = fresh[start]
    for k in range(1, int(steps.max()) + 1):
        at = np.flatnonzero(steps >= k)
        seq[at] = successor[seq[at]]
    return Corpus(seq[:train_tokens], seq[train_tokens:], V, f"zipf-markov-{V}",
                  optimal_perplexity=math.exp(entropy))
