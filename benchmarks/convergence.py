"""Does a smaller optimizer state for the class table cost convergence? Measured on real text.

A trigram MLP language model (two previous words -> embedding -> tanh layer -> output layer)
is trained on a corpus directory holding ``train.txt``/``valid.txt`` (default: Penn Treebank
under ``../shared/data/ptb``, read by path, never copied) with ``SampledSoftmax(sparse=True)``
and each optimizer for the class table, from the same seed and data order:

* ``SparseAdam``: ``torch.optim.SparseAdam`` (two dense ``[V, D]`` moment tables);
* ``SparseRowAdam``: the library's lazy Adam (same state, cheaper step);
* ``SparseRowAdam rowwise``: one second moment per row (``[V, D] + [V]``);
* ``SparseRowAdam rowwise, beta1=0``: no first moment (``[V]`` only).

Reported: exact full-softmax validation perplexity after the same number of steps, and the
bytes of optimizer state for the class table.

    python -m benchmarks.convergence [--corpus DIR] [--steps N]
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CORPUS = os.path.join(REPO, "..", "shared", "data", "ptb")


def _read(path):
    with open(path, encoding="utf-8") as f:
        return [w for line in f for w in line.split() + ["<eos>"]]


def load_corpus(directory):
    """Token ids of train and valid, vocabulary sorted by decreasing train frequency (so the
    log-uniform sampler's Zipf assumption applies); unseen valid words map to ``<unk>``."""
    names = {"train": None, "valid": None}
    for name in names:
        for candidate in (f"{name}.txt", f"ptb.{name}.txt"):
            if os.path.exists(os.path.join(directory, candidate)):
                names[name] = os.path.join(directory, candidate)
        if names[name] is None:
            raise FileNotFoundError(f"no {name}.txt (or ptb.{name}.txt) in {directory}")
    train, valid = _read(names["train"]), _read(names["valid"])
    counts = collections.Counter(train)
    vocab = [w for w, _ in counts.most_common()]
    if "<unk>" not in counts:
        vocab.append("<unk>")
    index = {w: i for i, w in enumerate(vocab)}
    unk = index["<unk>"]
    return [index[w] for w in train], [index.get(w, unk) for w in valid], vocab


def train_one(optimizer_name, train_ids, valid_ids, V, *, steps, D=128, S=256, B=512, lr=2e-3, seed=0):
    import torch

    from sampled_softmax.torch import SampledSoftmax, SparseRowAdam

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.Embedding(V, D)
    body = torch.nn.Sequential(torch.nn.Linear(2 * D, D), torch.nn.Tanh())
    head = SampledSoftmax(D, V, S, sampler="log_uniform", sparse=True)
    dense_opt = torch.optim.Adam(list(emb.parameters()) + list(body.parameters()), lr=lr)
    if optimizer_name == "SparseAdam":
        head_opt = torch.optim.SparseAdam(list(head.parameters()), lr=lr)
    elif optimizer_name == "SparseRowAdam":
        head_opt = SparseRowAdam(head.parameters(), lr=lr)
    elif optimizer_name == "SparseRowAdam rowwise":
        head_opt = SparseRowAdam(head.parameters(), lr=lr, rowwise=True)
    elif optimizer_name == "SparseRowAdam rowwise, beta1=0":
        head_opt = SparseRowAdam(head.parameters(), lr=lr, betas=(0.0, 0.999), rowwise=True)
    else:
        raise ValueError(optimizer_name)
    data = torch.tensor(train_ids)
    val = torch.tensor(valid_ids)

    def features(seq, pos):
        return body(torch.cat([emb(seq[pos - 2]), emb(seq[pos - 1])], dim=-1))

    t0 = time.perf_counter()
    for _ in range(steps):
        pos = torch.randint(2, data.numel(), (B,), generator=g)
        dense_opt.zero_grad(set_to_none=True)
        head_opt.zero_grad(set_to_none=True)
        head(features(data, pos), data[pos], generator=g).loss.backward()
        dense_opt.step()
        head_opt.step()
    elapsed = time.perf_counter() - t0
    head.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(2, val.numel(), 4096):
            pos = torch.arange(start, min(start + 4096, val.numel()))
            out = head(features(val, pos), val[pos])
            total += out.loss.item() * pos.numel()
            count += pos.numel()
    state = sum(t.numel() * t.element_size() for s in head_opt.state.values() for t in s.values()
                if isinstance(t, torch.Tensor))
    return {"optimizer": optimizer_name, "steps": steps, "valid_ppl": math.exp(total / count),
            "table_state_mb": state / 2**20, "train_seconds": elapsed}


OPTIMIZERS = ("SparseAdam", "SparseRowAdam", "SparseRowAdam rowwise", "SparseRowAdam rowwise, beta1=0")


def run(corpus=DEFAULT_CORPUS, steps=3000, progress=None):
    train_ids, valid_ids, vocab = load_corpus(corpus)
    rows = []
    for name in OPTIMIZERS:
        rows.append(train_one(name, train_ids, valid_ids, len(vocab), steps=steps))
        if progress:
            progress(name)
    unigram = collections.Counter(train_ids)
    n = len(train_ids)
    unigram_ppl = math.exp(-sum(math.log(unigram.get(t, 0.5) / n) for t in valid_ids) / len(valid_ids))
    return {"corpus": os.path.relpath(os.path.abspath(corpus), REPO), "vocab": len(vocab), "rows": rows,
            "unigram_ppl": unigram_ppl}


if __name__ == "__main__":  # pragma: no cover
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=DEFAULT_CORPUS)
    ap.add_argument("--steps", type=int, default=3000)
    args = ap.parse_args()
    res = run(args.corpus, args.steps, progress=lambda name: print("done:", name, flush=True))
    print(f"corpus {res['corpus']}, V={res['vocab']}, unigram perplexity {res['unigram_ppl']:.1f}")
    print(f"{'optimizer':<32} {'valid ppl':>10} {'table state MB':>15} {'train s':>8}")
    for r in res["rows"]:
        print(f"{r['optimizer']:<32} {r['valid_ppl']:>10.1f} {r['table_state_mb']:>15.1f} {r['train_seconds']:>8.1f}")
