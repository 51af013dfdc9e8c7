"""``sampled-softmax word2vec``: skip-gram word vectors (Mikolov et al. 2013) trained with the
library's losses, evaluated as gensim evaluates them.

The model is word2vec's: an input vector per word (``vectors``, what is saved), an output table
over the vocabulary, and for each (center, context) pair within a window the context's input
vector predicting the center word. The training loss is one of the library's:
``"negative_sampling"`` (word2vec's own objective, :func:`sampled_softmax.torch.negative_sampling_loss`
with ``negative`` noise words per pair from ``unigram ** 0.75``), ``"nce"`` or
``"sampled_softmax"`` (over ``num_sampled`` candidates shared by a batch). Updates are word2vec's
plain SGD, its learning rate falling linearly from ``alpha`` to ``min_alpha``, applied to the
sparse rows a batch touches. Frequent words are subsampled and the window shrunk at random, as
word2vec and gensim do.

Negative sampling on the CPU runs word2vec's own loop, compiled (``implementation="auto"``, the
compiled core's ``word2vec.cpp``): worker threads walk the corpus in stretches of
``batch_words`` words each, each pair's noise drawn and its rows updated in place at once (one
step of SGD on :func:`~sampled_softmax.torch.negative_sampling_loss` of that pair), the
learning rate falling with the words done, as gensim does. ``implementation="python"`` trains
batches of ``batch`` shuffled pairs through the loss and an optimizer instead (also the route of
``"nce"`` and ``"sampled_softmax"``).

Python API::

    from sampled_softmax.apps.word2vec import Word2VecConfig, read_sentences, train
    model = train(read_sentences("data/wikitext-2"), Word2VecConfig(dim=100, epochs=5))
    model.save_word2vec_format("vectors.txt")                  # gensim's KeyedVectors reads it
    model.evaluate_analogies("data/word-eval/questions-words.txt")
    model.evaluate_word_pairs("data/word-eval/wordsim353.tsv")
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import itertools
import math
import os
import sys
import time
from typing import Literal, Sequence

import numpy as np

from .. import SampledSoftmaxError
from ._progress import progress_bar

__all__ = ["Word2VecConfig", "WordVectors", "read_sentences", "train", "evaluate", "main"]

LOSSES = ("negative_sampling", "nce", "sampled_softmax")
IMPLEMENTATIONS = ("auto", "compiled", "python")


@dataclasses.dataclass
class Word2VecConfig:
    """Skip-gram settings; the defaults are gensim's ``Word2Vec(sg=1)``'s."""

    dim: int = 100
    window: int = 5
    min_count: int = 5
    sample: float = 1e-3
    negative: int = 5
    epochs: int = 5
    alpha: float = 0.025
    min_alpha: float = 0.0001
    loss: Literal["negative_sampling", "nce", "sampled_softmax"] = "negative_sampling"
    num_sampled: int = 64  # candidates shared by a batch, for "nce" and "sampled_softmax"
    # The shared candidates of "nce" and "sampled_softmax" get a gradient from every pair of a
    # batch: word2vec's per-pair SGD rate would throw them far, so those train with
    # SparseRowAdam at this rate (falling linearly as alpha does); None: the best of
    # 0.005 / 0.02 / 0.05 on WikiText-2 (BENCHMARKS.md), 0.005 for sampled softmax, 0.02 for NCE.
    adam_lr: float | None = None
    batch: int = 2048  # (center, context) pairs per step (the Python route)
    seed: int = 1
    threads: int | None = None
    # "auto": negative sampling in the compiled word2vec loop where the compiled core is built
    # (else the Python route); "compiled": that loop or an error; "python": loss and optimizer.
    implementation: Literal["auto", "compiled", "python"] = "auto"
    batch_words: int = 10000  # words per worker per call of the compiled loop (gensim's job size)

    def check(self) -> "Word2VecConfig":
        for name in ("dim", "window", "min_count", "negative", "epochs", "num_sampled", "batch", "batch_words"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SampledSoftmaxError(f"`{name}` must be an integer >= 1; received {value!r}")
        for name in ("alpha", "min_alpha", "sample", "adam_lr"):
            value = getattr(self, name)
            if value is None and name == "adam_lr":
                continue
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise SampledSoftmaxError(f"`{name}` must be a finite number >= 0; received {value!r}")
        if self.loss not in LOSSES:
            raise SampledSoftmaxError(f"`loss` must be one of {', '.join(map(repr, LOSSES))}; received {self.loss!r}")
        if self.implementation not in IMPLEMENTATIONS:
            raise SampledSoftmaxError(f"`implementation` must be one of {', '.join(map(repr, IMPLEMENTATIONS))}; "
                                      f"received {self.implementation!r}")
        if self.implementation == "compiled" and self.loss != "negative_sampling":
            raise SampledSoftmaxError(f"`implementation='compiled'` trains loss='negative_sampling' (word2vec's loop); "
                                      f"received loss={self.loss!r}: use implementation='auto' or 'python'")
        if self.threads is not None and (not isinstance(self.threads, int) or isinstance(self.threads, bool)
                                         or self.threads < 1):
            raise SampledSoftmaxError(f"`threads` must be None or an integer >= 1; received {self.threads!r}")
        return self


def read_sentences(corpus: str) -> list[list[str]]:
    """Sentences (a line each, words split on whitespace) of a corpus: a text file, or a
    directory's ``train.txt`` (or ``ptb.train.txt``), else all its ``*.txt`` files in name order."""
    if os.path.isdir(corpus):
        names = [n for n in ("train.txt", "ptb.train.txt") if os.path.isfile(os.path.join(corpus, n))]
        names = names[:1] or sorted(n for n in os.listdir(corpus) if n.endswith(".txt"))
        paths = [os.path.join(corpus, n) for n in names]
    elif os.path.isfile(corpus):
        paths = [corpus]
    else:
        raise SampledSoftmaxError(f"`corpus` must be a text file or a directory of them; received {corpus!r}")
    if not paths:
        raise SampledSoftmaxError(f"`corpus` directory {corpus!r} holds no .txt file")
    sentences = []
    for path in paths:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    words = raw.decode("utf-8").split()
                except UnicodeDecodeError as e:
                    raise SampledSoftmaxError(
                        f"`corpus` file {path!r} must be UTF-8 text; line {number} holds the bytes "
                        f"{raw[e.start:e.end]!r} at column {e.start + 1} ({e.reason})") from None
                if words:
                    sentences.append(words)
    return sentences


@dataclasses.dataclass
class WordVectors:
    """Trained vectors ``[V, D]`` (float32) of ``words``, most frequent first, and ``counts``."""

    words: list[str]
    vectors: np.ndarray
    counts: np.ndarray
    stats: dict = dataclasses.field(default_factory=dict)

    def save_word2vec_format(self, path: str) -> str:
        """The plain word2vec text format (``V D`` then a word and its numbers per line)."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"{len(self.words)} {self.vectors.shape[1]}\n")
            for word, vector in zip(self.words, self.vectors):
                f.write(word + " " + " ".join(f"{x:.6g}" for x in vector) + "\n")
        return path

    @classmethod
    def load_word2vec_format(cls, path: str) -> "WordVectors":
        with open(path, encoding="utf-8") as f:
            count, dim = (int(x) for x in f.readline().split())
            words, rows = [], []
            for line in f:
                parts = line.rstrip("\n").split(" ")
                words.append(parts[0])
                rows.append(np.asarray(parts[1:], dtype=np.float32))
        vectors = np.stack(rows) if rows else np.zeros((0, dim), np.float32)
        if vectors.shape != (count, dim):
            raise SampledSoftmaxError(f"`path` {path!r}: header says {count} x {dim}, file holds {vectors.shape}")
        return cls(words, vectors, np.zeros(count))

    def _unit(self) -> np.ndarray:
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        return self.vectors / np.where(norms > 0, norms, 1.0)

    def evaluate_analogies(self, path: str, restrict_vocab: int = 30000, case_insensitive: bool = True) -> dict:
        """Accuracy on ``a b c d`` analogies (``questions-words.txt``) by 3CosAdd over the
        ``restrict_vocab`` most frequent words, as gensim's ``evaluate_word_analogies``: a
        question with a word outside them is skipped; the answer is the word nearest to
        ``unit(b) - unit(a) + unit(c)`` among the 5 nearest other than ``a``, ``b``, ``c`` (with
        ``case_insensitive``, words compared by their folded spelling). Returns ``{"accuracy",
        "correct", "total", "sections": {name: accuracy}}``."""
        limit = min(restrict_vocab, len(self.words))
        unit = self._unit()[:limit]
        index: dict[str, int] = {}
        for i in reversed(range(limit)):  # the most frequent spelling wins when case is folded
            index[self.words[i].upper() if case_insensitive else self.words[i]] = i
        # Each word's most frequent spelling under case folding (itself without folding).
        fold = np.array([index[w.upper() if case_insensitive else w] for w in self.words[:limit]])
        sections: dict[str, list[int]] = collections.OrderedDict()
        section = None
        questions = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith(":"):
                    section = line[1:].strip()
                    sections[section] = [0, 0]
                    continue
                words = line.split()
                if len(words) != 4:
                    continue
                if case_insensitive:
                    words = [w.upper() for w in words]
                if all(w in index for w in words):
                    questions.append((section, [index[w] for w in words]))
        for start in range(0, len(questions), 2048):  # batched: one matrix product per block
            block = questions[start:start + 2048]
            ids = np.array([q[1] for q in block])
            query = unit[ids[:, 1]] - unit[ids[:, 0]] + unit[ids[:, 2]]
            query /= np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
            sims = query @ unit.T
            rows = np.arange(len(block))[:, None]
            sims[rows, ids[:, :3]] = -np.inf
            top = np.argpartition(-sims, 4, axis=1)[:, :5]
            top = np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1), axis=1)
            for (name, _), candidates, question in zip(block, fold[top], ids):
                # As gensim: the first of the 5 nearest whose folded spelling is not a, b or c.
                guess = next((c for c in candidates if c not in question[:3]), candidates[-1])
                sections[name][0] += int(guess == question[3])
                sections[name][1] += 1
        correct = sum(c for c, _ in sections.values())
        total = sum(t for _, t in sections.values())
        return {"accuracy": correct / total if total else 0.0, "correct": correct, "total": total,
                "sections": {k: (c / t if t else float("nan")) for k, (c, t) in sections.items()}}

    def evaluate_word_pairs(self, path: str, restrict_vocab: int = 300000, case_insensitive: bool = True) -> dict:
        """Spearman correlation between human scores and cosine similarity over the pairs whose
        words are among the ``restrict_vocab`` most frequent, as gensim's ``evaluate_word_pairs``
        (tab-separated ``word word score`` lines, ``#`` comments). Returns ``{"spearman",
        "pairs", "oov"}``."""
        limit = min(restrict_vocab, len(self.words))
        unit = self._unit()[:limit]
        index: dict[str, int] = {}
        for i in reversed(range(limit)):
            index[self.words[i].upper() if case_insensitive else self.words[i]] = i
        human, model, oov = [], [], 0
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("#") or not line.strip():
                    continue
                a, b, score = line.split("\t")[:3]
                if case_insensitive:
                    a, b = a.upper(), b.upper()
                if a not in index or b not in index:
                    oov += 1
                    continue
                human.append(float(score))
                model.append(float(unit[index[a]] @ unit[index[b]]))
        return {"spearman": _spearman(np.array(human), np.array(model)), "pairs": len(human), "oov": oov}


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    return ranks


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / math.sqrt((ra @ ra) * (rb @ rb)))


# ---------------------------------------------------------------------------------------------
# Training


def build_vocabulary(sentences: Sequence[Sequence[str]], min_count: int):
    """Words with at least ``min_count`` occurrences, most frequent first (ties in order of
    first appearance), and their counts."""
    counts = collections.Counter(itertools.chain.from_iterable(sentences))
    kept = [(w, c) for w, c in counts.items() if c >= min_count]
    kept.sort(key=lambda wc: -wc[1])  # stable: ties keep first appearance
    if not kept:
        raise SampledSoftmaxError(f"`min_count`={min_count} leaves no word of the corpus")
    return [w for w, _ in kept], np.array([c for _, c in kept], dtype=np.int64)


def _encode(sentences, index):
    """Token ids of the words in the vocabulary, and the sentence number of each."""
    lengths = np.fromiter((len(words) for words in sentences), np.int64, len(sentences))
    ids = np.fromiter((index.get(w, -1) for w in itertools.chain.from_iterable(sentences)), np.int64,
                      int(lengths.sum()))
    sentence = np.repeat(np.arange(len(sentences), dtype=np.int64), lengths)
    known = ids >= 0
    return ids[known], sentence[known]


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
    """word2vec's subsampling: a word of count ``c`` among ``N`` is kept with probability
    ``(sqrt(c / (s N)) + 1) s N / c`` (at most 1); ``sample = 0`` keeps every word."""
    if sample == 0:
        return np.ones(len(counts))
    threshold = sample * counts.sum()
    return np.minimum((np.sqrt(counts / threshold) + 1.0) * threshold / counts, 1.0)


def skipgram_pairs(ids, sentence, window, rng):
    """(center, context) position pairs of one pass: each center's window shrunk to a random
    ``1..window`` (word2vec's reduced window), within its sentence. No pair is further apart
    than the longest sentence, so distances stop there whatever ``window`` is."""
    reach = window - rng.integers(0, window, size=len(ids))
    centers, contexts = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for d in range(1, min(window, _longest_sentence(sentence) - 1) + 1):
        same = sentence[d:] == sentence[:-d]
        left = np.nonzero(same & (reach[:-d] >= d))[0]  # center i, context i + d
        right = np.nonzero(same & (reach[d:] >= d))[0]  # center i + d, context i
        centers += [ids[left], ids[right + d]]
        contexts += [ids[left + d], ids[right]]
    return np.concatenate(centers), np.concatenate(contexts)


def _longest_sentence(sentence: np.ndarray) -> int:
    """Tokens of the longest sentence (``sentence``: each token's sentence number, in order)."""
    return int(np.diff(sentence_bounds(sentence)).max()) if len(sentence) else 0


def train(sentences: Sequence[Sequence[str]], config: Word2VecConfig | None = None, *,
          progress: bool = True) -> WordVectors:
    """Skip-gram vectors for ``sentences`` (lists of words) with ``config``'s settings."""
    import torch

    from ..torch import UnigramSampler

    config = (config or Word2VecConfig()).check()
    threads = config.threads or torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    words, counts = build_vocabulary(sentences, config.min_count)
    index = {w: i for i, w in enumerate(words)}
    ids, sentence = _encode(sentences, index)
    V, D = len(words), config.dim
    rng = np.random.default_rng(config.seed)
    # gensim 4's initialisation (its defaults are ours): input vectors uniform in [-1/D, 1/D)
    # (word2vec.c's range is half that), output vectors at zero.
    vectors = torch.nn.Parameter(torch.from_numpy(((rng.random((V, D)) * 2.0 - 1.0) / D).astype(np.float32)))
    table = torch.nn.Parameter(torch.zeros(V, D))
    shared = config.loss != "negative_sampling"
    sampler = UnigramSampler(V, counts.astype(np.float64), distortion=0.75,
                             draw="unique" if shared else "with_replacement")
    keep = keep_probabilities(counts.astype(np.float64), config.sample)
    ext = _word2vec_loop(config)
    bar = progress_bar(config.epochs * len(ids), "word2vec") if progress else None
    start = time.perf_counter()
    run = _Run(ids, sentence, vectors, table, sampler, keep, config, rng, bar, start)
    if ext is not None:
        _train_compiled(ext, run, threads)
    else:
        _train_batches(run)
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - start
    stats = {"wall_s": wall, "words_per_s": config.epochs * len(ids) / wall, "vocabulary": V,
             "corpus_words": int(sum(len(s) for s in sentences)), "trained_words": int(len(ids)),
             "implementation": "python" if ext is None else "compiled", "config": dataclasses.asdict(config)}
    return WordVectors(words, vectors.detach().numpy().copy(), counts, stats)


@dataclasses.dataclass
class _Run:
    """One training run's corpus (token ids and sentence numbers), tables, noise sampler,
    subsampling probabilities, settings, generator and progress bar."""

    ids: np.ndarray
    sentence: np.ndarray
    vectors: object
    table: object
    sampler: object
    keep: np.ndarray
    config: Word2VecConfig
    rng: np.random.Generator
    bar: object
    start: float


def _word2vec_loop(config: Word2VecConfig):
    """The compiled core, when ``config`` trains in word2vec's compiled loop; else None."""
    if config.loss != "negative_sampling" or config.implementation == "python":
        return None
    from ..torch import _compiled

    ext = _compiled.extension()
    if ext is None and config.implementation == "compiled":
        raise SampledSoftmaxError(f"`implementation='compiled'` cannot be used: the compiled core could not be built "
                                  f"({_compiled.unavailable_reason()})")
    return ext


def sentence_bounds(sentence: np.ndarray) -> np.ndarray:
    """Each sentence's first token and, last, the number of tokens (``sentence``: each token's
    sentence number, in order)."""
    return np.concatenate([[0], np.flatnonzero(np.diff(sentence)) + 1, [len(sentence)]]).astype(np.int64)


def _train_compiled(ext, run: _Run, threads: int) -> None:
    """word2vec's loop: calls of ``threads * batch_words`` words (whole sentences), each at one
    learning rate, falling linearly with the words done, as gensim's jobs."""
    import torch

    ids, sentence, config, rng, bar = run.ids, run.sentence, run.config, run.rng, run.bar

    bounds = sentence_bounds(sentence)
    # The sentences each call starts at: one call per `threads * batch_words` words.
    per_call = threads * config.batch_words
    starts = np.unique(np.searchsorted(bounds[:-1], np.arange(0, len(ids), per_call), side="left"))
    stops = np.append(starts[1:], len(bounds) - 1)
    ids_t, bounds_t = torch.from_numpy(ids), torch.from_numpy(bounds)
    keep_t = torch.from_numpy(np.asarray(run.keep, np.float64))
    cdf = run.sampler.cdf.to(torch.float64).contiguous()
    total_words = max(config.epochs * len(ids), 1)
    words_done = 0
    for epoch in range(config.epochs):
        for first, last in zip(starts.tolist(), stops.tolist()):
            lr = config.alpha - (config.alpha - config.min_alpha) * (words_done / total_words)
            ext.word2vec_train_(run.vectors.data, run.table.data, ids_t, bounds_t[first:last + 1], keep_t, cdf,
                                config.window, config.negative, lr, int(rng.integers(0, 2 ** 63)), threads, False)
            covered = int(bounds[last] - bounds[first])
            words_done += covered
            if bar is not None:
                bar.update(covered)
                rate = words_done / max(time.perf_counter() - run.start, 1e-9)
                bar.set_postfix_str(f"epoch {epoch + 1}/{config.epochs} {rate:,.0f} words/s lr {lr:.4f}",
                                    refresh=False)


def _train_batches(run: _Run) -> None:
    """Batches of ``batch`` shuffled pairs through the library's loss, then SGD on the rows
    (negative sampling) or ``SparseRowAdam`` (the shared-candidate losses)."""
    import torch

    ids, sentence, vectors, table, sampler, keep = run.ids, run.sentence, run.vectors, run.table, run.sampler, run.keep
    config, rng, bar, start = run.config, run.rng, run.bar, run.start

    from ..torch import SparseRowAdam, nce_loss, negative_sampling_loss, sampled_softmax_loss

    V, D = vectors.shape
    generator = torch.Generator().manual_seed(config.seed)
    shared = config.loss != "negative_sampling"
    adam_lr = config.adam_lr if config.adam_lr is not None else {"nce": 0.02}.get(config.loss, 0.005)
    adam = SparseRowAdam([vectors, table], lr=adam_lr) if shared else None
    # The learning rate falls linearly over all pairs; the pairs of an epoch are known once it is
    # drawn, so the schedule uses the expected number of pairs per epoch.
    window = max(1, min(config.window, _longest_sentence(sentence) - 1))
    expected_pairs = max(float((keep[ids]).sum()) * (window + 1), 1.0)
    total_pairs = expected_pairs * config.epochs
    done_pairs, words_done = 0, 0
    for epoch in range(config.epochs):
        kept = rng.random(len(ids)) < keep[ids]
        centers, contexts = skipgram_pairs(ids[kept], sentence[kept], config.window, rng)
        order = rng.permutation(len(centers))
        centers = torch.from_numpy(centers[order])
        contexts = torch.from_numpy(contexts[order])
        steps = max(1, math.ceil(len(centers) / config.batch))
        for step in range(steps):
            lo, hi = step * config.batch, min((step + 1) * config.batch, len(centers))
            y, x = centers[lo:hi], contexts[lo:hi]
            lr = max(config.min_alpha, config.alpha * (1.0 - done_pairs / total_pairs))
            h = torch.nn.functional.embedding(x, vectors, sparse=True)
            if config.loss == "negative_sampling":
                loss = negative_sampling_loss(table, None, y, h, config.negative, V, remove_accidental_hits=True,
                                              sampler=sampler, reduction="sum", generator=generator, sparse=True,
                                              noise="per_example")
            elif config.loss == "nce":
                loss = nce_loss(table, None, y, h, config.num_sampled, V, sampler=sampler, reduction="sum",
                                generator=generator, sparse=True, remove_accidental_hits=True)
            else:
                loss = sampled_softmax_loss(table, None, y, h, config.num_sampled, V, sampler=sampler,
                                            reduction="sum", generator=generator, sparse=True)
            if adam is not None:
                adam.param_groups[0]["lr"] = adam_lr * lr / config.alpha if config.alpha else adam_lr
                loss.backward()
                adam.step()
                adam.zero_grad(set_to_none=True)
            else:
                # The gradient of -lr * loss is the SGD step itself: scatter_add_ it into the touched
                # rows (duplicates summed; 3x faster than index_add_ or a sparse add on the CPU).
                (loss * -lr).backward()
                with torch.no_grad():
                    for p in (vectors, table):
                        rows, step_rows = p.grad._indices()[0], p.grad._values()
                        p.scatter_add_(0, rows.unsqueeze(1).expand(-1, D), step_rows)
                        p.grad = None
            done_pairs += hi - lo
            words_done += _advance(bar, len(ids), step, steps, epoch, config, words_done=words_done, start=start,
                                   lr=lr)


def _advance(bar, num_words, step, steps, epoch, config, *, words_done, start, lr) -> int:
    """The corpus words one step covers (an epoch's words spread evenly over its steps), shown
    on the progress bar with the rate so far."""
    covered = (num_words * (step + 1)) // steps - (num_words * step) // steps
    if bar is not None:
        bar.update(covered)
        if step % 50 == 0:
            rate = (words_done + covered) / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"epoch {epoch + 1}/{config.epochs} {rate:,.0f} words/s lr {lr:.4f}", refresh=False)
    return covered


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(ap: argparse.ArgumentParser) -> None:
    defaults = Word2VecConfig()
    ap.add_argument("--corpus", required=True, help="a text file, or a directory (its train.txt, else every *.txt)")
    for name, help_text in (("dim", "vector size"), ("window", "largest distance to a context word"),
                            ("min-count", "ignore words rarer than this"), ("negative", "noise words per pair"),
                            ("epochs", "passes over the corpus"), ("num-sampled", "shared candidates per batch "
                                                                                 "(nce, sampled_softmax)"),
                            ("batch", "pairs per step"), ("seed", "random seed")):
        ap.add_argument(f"--{name}", type=int, default=getattr(defaults, name.replace("-", "_")), help=help_text)
    ap.add_argument("--sample", type=float, default=defaults.sample, help="subsampling threshold of frequent words")
    ap.add_argument("--alpha", type=float, default=defaults.alpha, help="initial learning rate")
    ap.add_argument("--min-alpha", type=float, default=defaults.min_alpha, help="final learning rate")
    ap.add_argument("--loss", choices=LOSSES, default=defaults.loss)
    ap.add_argument("--threads", type=int, default=None, help="worker threads (default: torch's thread count)")
    ap.add_argument("--implementation", choices=IMPLEMENTATIONS, default=defaults.implementation,
                    help="negative sampling in word2vec's compiled loop (auto: where it builds) or through the loss")
    ap.add_argument("--out", default="vectors.txt", help="where to save the vectors (word2vec text format)")
    ap.add_argument("--eval", default=None, metavar="DIR",
                    help="evaluate on DIR's questions-words.txt, wordsim353.tsv and simlex999.txt")


def evaluate(model: WordVectors, directory: str) -> dict:
    """The analogy accuracy and word-pair correlations of the evaluation sets in ``directory``."""
    results = {}
    analogies = os.path.join(directory, "questions-words.txt")
    if os.path.isfile(analogies):
        results["analogy"] = model.evaluate_analogies(analogies)
    for name in ("wordsim353.tsv", "simlex999.txt"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            results[name.split(".")[0]] = model.evaluate_word_pairs(path)
    return results


def _check_writable(ap: argparse.ArgumentParser, option: str, path: str) -> None:
    existed = os.path.exists(path)
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as e:
        ap.error(f"{option} {path!r} cannot be written: {e.strerror}")
    if not existed:
        os.remove(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sampled-softmax word2vec", description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    args = ap.parse_args(argv)
    _check_writable(ap, "--out", args.out)  # before the training, not after it
    config = Word2VecConfig(dim=args.dim, window=args.window, min_count=args.min_count, sample=args.sample,
                            negative=args.negative, epochs=args.epochs, alpha=args.alpha, min_alpha=args.min_alpha,
                            loss=args.loss, num_sampled=args.num_sampled, batch=args.batch, seed=args.seed,
                            threads=args.threads, implementation=args.implementation)
    try:
        sentences = read_sentences(args.corpus)
        config.check()
    except SampledSoftmaxError as e:
        ap.error(str(e).replace("`corpus`", "--corpus"))
    model = train(sentences, config)
    print(f"{model.stats['vocabulary']} words, {model.stats['corpus_words']:,} corpus words, "
          f"{model.stats['wall_s']:.1f} s ({model.stats['words_per_s']:,.0f} words/s)")
    print(f"wrote {model.save_word2vec_format(args.out)}")
    if args.eval:
        for name, result in evaluate(model, args.eval).items():
            if name == "analogy":
                print(f"analogy accuracy {result['accuracy']:.4f} ({result['correct']}/{result['total']})")
            else:
                print(f"{name} spearman {result['spearman']:.4f} ({result['pairs']} pairs, {result['oov']} OOV)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
