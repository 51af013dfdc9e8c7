"""Retrieval on real text: a context tower and a word tower trained to retrieve the next word of
WikiText-2 (or PTB), in-batch and mixed negatives against the full softmax at equal wall-clock.

    python -m benchmarks.retrieval_text_study --data ../shared/data [--corpus wikitext-2] [--seconds 120]

The two towers: the context tower embeds the previous ``--window`` words (``EmbeddingBag``,
mean) and maps them with ``Linear(D, D)``; the word tower is ``Embedding(V, D)``. A training
pair is (the context before position ``t``, the word at ``t``), batches of ``--batch`` random
positions of the training split; Adam 3e-3; every method gets the same wall-clock budget:

* ``in-batch, no correction``: the batch's words as negatives;
* ``in-batch, streaming log Q``: corrected by ``StreamingFrequency`` (frequent words, present in
  almost every batch, would otherwise be pushed down);
* ``mixed negatives``: plus ``--extra`` log-uniform corpus negatives (the vocabulary is sorted
  by frequency), each column with its own probability;
* ``full softmax``: ``F.cross_entropy`` over the whole vocabulary.

Reported: recall@10 and @100 of the next word among all ``V`` words (exact), and the full-softmax
perplexity of the towers' scores, on the first ``--valid`` positions of the validation split;
steps done in the budget.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from .harness import dump

METHODS = ("in-batch, no correction", "in-batch, streaming log Q", "mixed negatives", "full softmax")


def _towers(V, dim, seed):
    import torch

    torch.manual_seed(seed)
    context = torch.nn.ModuleDict({"embed": torch.nn.EmbeddingBag(V, dim, mode="mean"),
                                   "proj": torch.nn.Linear(dim, dim)})
    words = torch.nn.Embedding(V, dim)
    torch.nn.init.normal_(words.weight, std=0.1)
    return context, words


def _encode(context, windows):
    return context["proj"](context["embed"](windows))


def run(corpus, *, seconds=120.0, batch=1024, extra=1024, window=5, dim=64, valid=20_000, seed=0,
        methods=METHODS, max_steps=None) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from sampled_softmax.torch import LogUniformSampler, StreamingFrequency, in_batch_softmax_loss, mixed_negatives

    V = corpus.vocab_size
    train = torch.from_numpy(corpus.train)
    offsets = torch.arange(-window, 0)
    valid_ids = torch.from_numpy(corpus.valid)
    positions = torch.arange(window, min(valid_ids.numel(), window + valid))
    valid_windows, valid_next = valid_ids[positions[:, None] + offsets], valid_ids[positions]
    results = {}
    for method in methods:
        context, words = _towers(V, dim, seed)
        opt = torch.optim.Adam([*context.parameters(), *words.parameters()], lr=3e-3)
        frequency = StreamingFrequency(1 << 20)
        sampler = LogUniformSampler(V, draw="unique_exact")
        rng = np.random.default_rng(seed)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds and (max_steps is None or steps < max_steps):
            t = torch.from_numpy(rng.integers(window, train.numel(), batch))
            query = _encode(context, train[t[:, None] + offsets])
            target = train[t]
            if method == "full softmax":
                loss = F.cross_entropy(query @ words.weight.T, target)
            elif method == "in-batch, no correction":
                loss = in_batch_softmax_loss(query, words(target), candidate_ids=target)
            else:
                log_q = frequency(target)
                if method == "mixed negatives":
                    mixed = mixed_negatives(words(target), target, log_q, extra, sampler, words)
                    loss = in_batch_softmax_loss(query, **mixed._asdict())
                else:
                    loss = in_batch_softmax_loss(query, words(target), candidate_ids=target, log_q=log_q)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        seconds_used = time.perf_counter() - start
        with torch.no_grad():
            hits10 = hits100 = 0
            nll = 0.0
            for s in range(0, positions.numel(), 2048):
                scores = _encode(context, valid_windows[s:s + 2048]) @ words.weight.T
                y = valid_next[s:s + 2048]
                rank = (scores > scores.gather(1, y[:, None])).sum(1)
                hits10 += int((rank < 10).sum())
                hits100 += int((rank < 100).sum())
                nll += float(F.cross_entropy(scores, y, reduction="sum"))
        n = positions.numel()
        results[method] = {"recall@10": hits10 / n, "recall@100": hits100 / n, "perplexity": math.exp(nll / n),
                           "steps": steps, "seconds": seconds_used}
    return {"setting": dict(corpus=corpus.name, V=V, seconds=seconds, batch=batch, extra=extra, window=window,
                            dim=dim, valid=int(positions.numel()), seed=seed), "results": results}


def table(payload) -> str:
    lines = ["| method | recall@10 | recall@100 | perplexity | steps |", "|---|---|---|---|---|"]
    for method, r in payload["results"].items():
        lines.append(f"| {method} | {r['recall@10']:.3f} | {r['recall@100']:.3f} | {r['perplexity']:.1f} | "
                     f"{r['steps']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the folder with wikitext-2/ and ptb/ (../shared/data)")
    ap.add_argument("--corpus", default="wikitext-2")
    ap.add_argument("--seconds", type=float, default=120.0, help="training wall-clock per method")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--extra", type=int, default=1024)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--valid", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    from sampled_softmax.apps.corpus import read_corpus

    corpus = read_corpus(os.path.join(args.data, args.corpus))
    payload = run(corpus, seconds=args.seconds, batch=args.batch, extra=args.extra, window=args.window,
                  dim=args.dim, valid=args.valid, seed=args.seed)
    print(f"{corpus.name}: V={corpus.vocab_size}, {args.seconds:.0f} s of training per method")
    print(table(payload))
    if args.json:
        dump(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
