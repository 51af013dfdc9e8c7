"""``sampled-softmax demo``: the same language model trained with full softmax, sampled
softmax (log-uniform and unigram samplers) and adaptive softmax, each for the same wall-clock
budget, compared on the exact full-softmax validation perplexity. PyTorch.

Without ``--corpus`` it needs no download: the text is a generated Markov chain over a
Zipf-distributed 50k-word vocabulary whose entropy rate is known, so the best perplexity any
model can reach is printed beside the results (:func:`sampled_softmax.apps.corpus.zipf_markov`).

The model: ``Embedding(V, D)``, one ``LSTM(D, D)`` layer, then the output layer under test.
Full and adaptive softmax train with ``torch.optim.Adam``; sampled softmax with the library's
recipe (sparse row gradients for both ``[V, D]`` tables, :class:`SparseRowAdam` for them,
``Adam`` for the LSTM). The budget bounds each method's whole run, its evaluations included
(the validation sets are cut to fit); steps/s and the curve count training time only.

Which sampler: the demo's ids are sorted by decreasing frequency (the generated corpus by
construction, ``read_corpus`` by counting), which is what log-uniform assumes. With your own
vocabulary in any other order, keep the output layer's default (a learned unigram) or give a
unigram table of the counts (BENCHMARKS.md, "Which sampler").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._arguments import check_at_least, check_positive_float, comma_list
from ._progress import progress_bar, pyplot
from .corpus import Corpus, read_corpus, zipf_markov
from ..torch import LogUniformSampler, SampledSoftmax, SparseRowAdam, UniformSampler, UnigramSampler

METHODS = ("full", "sampled-log-uniform", "sampled-unigram", "adaptive")
LABELS = {
    "full": "full softmax",
    "sampled-log-uniform": "sampled softmax, log-uniform",
    "sampled-unigram": "sampled softmax, unigram",
    "adaptive": "adaptive softmax (torch.nn)",
}
# demo method -> (head, sampler); the draw is TensorFlow's "unique" (exactly S distinct).
HEADS = {"full": ("full", None), "adaptive": ("adaptive", None),
         "sampled-log-uniform": ("sampled", "log_uniform"), "sampled-unigram": ("sampled", "unigram")}


class LanguageModel(nn.Module):
    """``Embedding -> dropout -> LSTM -> dropout -> output layer``.

    ``head``: ``"full"`` (``nn.Linear`` + cross-entropy), ``"adaptive"``
    (``nn.AdaptiveLogSoftmaxWithLoss``) or ``"sampled"`` (:class:`SampledSoftmax` with
    ``sampler`` in ``"log_uniform"``, ``"uniform"``, ``"unigram"`` (training counts + 1 raised
    to ``distortion``) drawn as ``draw``).
    """

    def __init__(self, vocab_size: int, dim: int, head: str, *, num_sampled: int = 1024,
                 sampler: str = "log_uniform", draw: str = "unique", unigram_counts: np.ndarray | None = None,
                 distortion: float = 0.75, dropout: float = 0.0):
        super().__init__()
        if head not in ("full", "adaptive", "sampled"):
            raise ValueError(f"`head` must be 'full', 'adaptive' or 'sampled'; received {head!r}")
        self.head = head
        sampled = head == "sampled"
        self.embed = nn.Embedding(vocab_size, dim, sparse=sampled)
        self.rnn = nn.LSTM(dim, dim, batch_first=True)
        self.drop = nn.Dropout(dropout)
        if head == "full":
            self.out = nn.Linear(dim, vocab_size)
        elif head == "adaptive":
            cutoffs = [c for c in (vocab_size // 25, vocab_size // 5) if 0 < c < vocab_size]
            self.out = nn.AdaptiveLogSoftmaxWithLoss(dim, vocab_size, sorted(set(cutoffs)), div_value=4.0)
        else:
            if sampler == "unigram":
                if unigram_counts is None:
                    raise ValueError("sampler='unigram' needs `unigram_counts`")
                q = UnigramSampler(vocab_size, unigram_counts + 1.0, distortion=distortion, draw=draw)
            elif sampler in ("log_uniform", "uniform"):
                q = (LogUniformSampler if sampler == "log_uniform" else UniformSampler)(vocab_size, draw=draw)
            else:
                raise ValueError(f"`sampler` must be 'log_uniform', 'uniform' or 'unigram'; received {sampler!r}")
            self.out = SampledSoftmax(dim, vocab_size, num_sampled, sampler=q, sparse=True)

    def hidden(self, tokens):
        return self.drop(self.rnn(self.drop(self.embed(tokens)))[0])

    def training_loss(self, tokens, targets):
        h = self.hidden(tokens)
        if self.head == "full":
            return F.cross_entropy(self.out(h).flatten(0, 1), targets.flatten())
        if self.head == "adaptive":
            return self.out(h.flatten(0, 1), targets.flatten()).loss
        return self.out(h, targets).loss

    @torch.no_grad()
    def full_nll(self, tokens, targets) -> float:
        """Summed exact full-softmax negative log-likelihood of ``targets``."""
        h = self.hidden(tokens).flatten(0, 1)
        y = targets.flatten()
        if self.head == "full":
            return F.cross_entropy(self.out(h), y, reduction="sum").item()
        if self.head == "adaptive":
            return -self.out.log_prob(h).gather(1, y[:, None]).sum().item()
        return -self.out(h, y).output.sum().item()  # eval mode: exact log-probabilities

    def optimizers(self, lr: float):
        if self.head == "sampled":
            tables = list(self.embed.parameters()) + list(self.out.parameters())
            return [SparseRowAdam(tables, lr=lr), torch.optim.Adam(self.rnn.parameters(), lr=lr)]
        return [torch.optim.Adam(self.parameters(), lr=lr)]


def windows(ids: np.ndarray, length: int, limit: int | None = None):
    """Consecutive non-overlapping ``(tokens, targets)`` windows ``[n, length]``."""
    n = (ids.size - 1) // length
    if limit is not None:
        n = min(n, max(1, limit // length))
    x = ids[: n * length].reshape(n, length)
    y = ids[1: n * length + 1].reshape(n, length)
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


def perplexity(model: LanguageModel, valid, chunk_tokens: int = 1024) -> float:
    model.eval()
    x, y = valid
    rows = max(1, chunk_tokens // x.shape[1])
    total = sum(model.full_nll(x[i:i + rows], y[i:i + rows]) for i in range(0, x.shape[0], rows))
    model.train()
    return math.exp(total / y.numel())


def train(model: LanguageModel, corpus: Corpus, *, budget: float, batch: int, seq_len: int, lr: float,
          seed: int, curve_valid, curve_times, milestone_valid=None, milestones=(), label: str = "",
          max_steps: int | None = None) -> dict:
    """Train ``model`` for ``budget`` seconds of optimisation (evaluation not counted) on random
    windows of ``corpus.train``. Perplexity on ``curve_valid`` after each of ``curve_times``
    (seconds) and on ``milestone_valid`` after each of ``milestones``. With ``max_steps``,
    training also stops after that many steps, and the times count as fractions of the steps."""
    opts = model.optimizers(lr)
    rng = np.random.default_rng(seed)
    starts_max = corpus.train.size - seq_len - 1
    offsets = np.arange(seq_len + 1)
    curve_times, milestones = sorted(curve_times), sorted(milestones)
    bar = progress_bar(len(curve_times), f"{label:<31}")
    curve, at_milestones, steps, trained, clock, done = [], [], 0, 0.0, 0.0, False
    while not done:
        idx = rng.integers(0, starts_max, batch)[:, None] + offsets
        chunk = torch.from_numpy(corpus.train[idx])
        t0 = time.perf_counter()
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        model.training_loss(chunk[:, :-1], chunk[:, 1:]).backward()
        for opt in opts:
            opt.step()
        trained += time.perf_counter() - t0
        steps += 1
        # Progress in budget seconds: wall time, or the share of max_steps done if that is further.
        clock = trained if not max_steps else max(trained, budget * steps / max_steps)
        # The step count decides by itself: budget * steps / max_steps can round below budget.
        done = clock >= budget or (bool(max_steps) and steps >= max_steps)
        while curve_times and (clock >= curve_times[0] or done):
            curve_times.pop(0)
            ppl = perplexity(model, curve_valid)
            curve.append((trained, ppl))
            bar.set_postfix_str(f"{trained:6.1f}s ppl {ppl:8.1f}", refresh=False)
            bar.update()
        while milestones and (clock >= milestones[0] or done):
            milestones.pop(0)
            at_milestones.append({"wall_s": trained, "steps": steps,
                                  "valid_perplexity": perplexity(model, milestone_valid)})
    bar.update(bar.total - bar.n)
    bar.close()
    return {"steps": steps, "wall_s": trained, "steps_per_s": steps / trained,
            "tokens_per_s": steps * batch * seq_len / trained, "curve": curve, "milestones": at_milestones}


# At most this share of a method's budget goes to evaluation (its curve and its final
# perplexity); validation sets are cut to fit, never the budget exceeded.
EVAL_SHARE = 0.4


def _fit_windows(valid, tokens: int):
    """The first windows of ``valid`` holding about ``tokens`` tokens (at least one)."""
    x, y = valid
    rows = max(1, min(x.shape[0], tokens // max(1, x.shape[1])))
    return x[:rows], y[:rows]


def train_for(method: str, corpus: Corpus, args, curve_valid, final_valid) -> dict:
    """One method within ``args.budget`` seconds of wall time, its evaluations included: what
    evaluation costs is measured first on a few windows, and the validation sets are cut so that
    it takes at most ``EVAL_SHARE`` of the budget; training gets the rest."""
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    head, sampler = HEADS[method]
    model = LanguageModel(corpus.vocab_size, args.dim, head, num_sampled=args.num_sampled,
                          sampler=sampler or "log_uniform", unigram_counts=corpus.unigram_counts())
    points = args.curve_points
    probe = _fit_windows(final_valid, 256)
    t0 = time.perf_counter()
    perplexity(model, probe)
    per_token = (time.perf_counter() - t0) / probe[1].numel()
    curve_tokens, final_tokens = curve_valid[1].numel(), final_valid[1].numel()
    wanted = per_token * (points * curve_tokens + final_tokens)
    scale = min(1.0, EVAL_SHARE * args.budget / max(wanted, 1e-9))
    curve_valid = _fit_windows(curve_valid, int(curve_tokens * scale))
    final_valid = _fit_windows(final_valid, int(final_tokens * scale))
    spent = time.perf_counter() - start
    train_budget = max(0.05 * args.budget, args.budget - spent - per_token * (
        points * curve_valid[1].numel() + final_valid[1].numel()))
    run = train(model, corpus, budget=train_budget, batch=args.batch, seq_len=args.seq_len, lr=args.lr,
                seed=args.seed, curve_valid=curve_valid, curve_times=[train_budget * (i + 1) / points for i in range(points)],
                label=LABELS[method], max_steps=args.max_steps)
    run.pop("milestones")
    result = {"method": method, "label": LABELS[method], **run,
              "valid_perplexity": perplexity(model, final_valid), "model": model,
              "valid_tokens": final_valid[1].numel()}
    result["total_s"] = time.perf_counter() - start
    return result


def table(results, corpus: Corpus) -> str:
    lines = [f"{'method':<31} {'steps':>7} {'steps/s':>8} {'tokens/s':>9} {'wall s':>7} {'valid ppl':>10}"]
    for r in results:
        lines.append(f"{r['label']:<31} {r['steps']:>7} {r['steps_per_s']:>8.2f} {r['tokens_per_s']:>9.0f} "
                     f"{r['wall_s']:>7.1f} {r['valid_perplexity']:>10.1f}")
    lines.append(f"{'unigram baseline':<31} {'':>7} {'':>8} {'':>9} {'':>7} {corpus.unigram_perplexity():>10.1f}")
    if corpus.optimal_perplexity is not None:
        lines.append(f"{'optimum (entropy rate)':<31} {'':>7} {'':>8} {'':>9} {'':>7} {corpus.optimal_perplexity:>10.1f}")
    return "\n".join(lines)


def plot(results, corpus: Corpus, path: str) -> str | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        t, p = zip(*r["curve"])
        ax.plot(t, p, marker="o", ms=3, label=r["label"])
    if corpus.optimal_perplexity is not None:
        ax.axhline(corpus.optimal_perplexity, color="k", ls="--", lw=1, label="optimum (entropy rate)")
    ax.set_yscale("log")
    ax.set_xlabel("training wall-clock time (s)")
    ax.set_ylabel("full-softmax validation perplexity")
    ax.set_title(f"{corpus.name}: V={corpus.vocab_size}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_checkpoint(result, corpus: Corpus, args, directory: str) -> str:
    """What ``sampled-softmax diagnose`` reads: the output layer's table and validation hidden
    states with their targets."""
    os.makedirs(directory, exist_ok=True)
    model = result["model"]
    x, y = windows(corpus.valid, args.seq_len, 4096)
    model.eval()
    with torch.no_grad():
        h = model.hidden(x).flatten(0, 1)
    out = model.out
    weight = out.weight if hasattr(out, "weight") else None
    payload = {"method": result["method"], "vocab_size": corpus.vocab_size, "corpus": corpus.name,
               "weight": weight.detach().clone(), "bias": None if out.bias is None else out.bias.detach().clone(),
               "hidden": h.clone(), "targets": y.flatten().clone(), "unigram_counts": corpus.unigram_counts()}
    path = os.path.join(directory, "checkpoint.pt")
    torch.save(payload, path)
    return path


def add_training_arguments(ap: argparse.ArgumentParser, *, dim: int, curve_points: int) -> None:
    """The model and optimisation options the demo and the WikiText-2 study share."""
    ap.add_argument("--dim", type=int, default=dim)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--curve-points", type=int, default=curve_points)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sampled-softmax demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=30.0,
                    help="wall seconds per method, evaluation included (default 30)")
    ap.add_argument("--corpus", help="directory with train.txt and valid.txt (default: generated, no download)")
    ap.add_argument("--out", default=".", help="where demo.png and demo.json go (default: current directory)")
    ap.add_argument("--save", help="directory for a checkpoint of the log-uniform sampled model (for diagnose)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    ap.add_argument("--vocab", type=int, default=50_000, help="vocabulary of the generated corpus")
    ap.add_argument("--num-sampled", type=int, default=1024)
    add_training_arguments(ap, dim=128, curve_points=6)
    ap.add_argument("--valid-tokens", type=int, default=16_384, help="validation tokens for the final perplexity")
    ap.add_argument("--max-steps", type=int, help="also stop each method after this many steps (default: no limit)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    methods = comma_list(ap, "methods", args.methods, METHODS)
    check_positive_float(ap, args, "budget", "lr")
    check_at_least(ap, args, 1, "num_sampled", "dim", "batch", "seq_len", "curve_points", "valid_tokens",
                   "max_steps")
    check_at_least(ap, args, 2, "vocab")
    torch.set_num_threads(os.cpu_count() or 1)

    corpus = read_corpus(args.corpus) if args.corpus else zipf_markov(args.vocab, seed=args.seed)
    print(f"corpus {corpus.name}: V={corpus.vocab_size}, {corpus.train.size} training tokens; "
          f"model Embedding({args.dim}) -> LSTM({args.dim}) -> output; batch {args.batch}x{args.seq_len}, "
          f"S={args.num_sampled}; {args.budget:.0f} s per method, evaluation included")
    curve_valid = windows(corpus.valid, args.seq_len, 4096)
    final_valid = windows(corpus.valid, args.seq_len, args.valid_tokens)
    if any(m != "full" for m in methods):
        # Build (or load) the compiled core before any clock starts: a first run on a machine
        # must not time the build as training.
        from ..torch import compiled_core, compiled_core_is_built

        if not compiled_core_is_built():
            print("building PyTorch's compiled core first (once per machine, 1-3 minutes, not counted "
                  "in the budget) ...", flush=True)
        compiled_core()
    results = [train_for(m, corpus, args, curve_valid, final_valid) for m in methods]
    print()
    print(table(results, corpus))
    os.makedirs(args.out, exist_ok=True)
    png = plot(results, corpus, os.path.join(args.out, "demo.png"))
    with open(os.path.join(args.out, "demo.json"), "w") as f:
        json.dump({"corpus": corpus.name, "vocab_size": corpus.vocab_size, "args": vars(args),
                   "optimal_perplexity": corpus.optimal_perplexity, "unigram_perplexity": corpus.unigram_perplexity(),
                   "results": [{k: v for k, v in r.items() if k != "model"} for r in results]}, f, indent=1)
    print(f"\nwrote {png or '(no plot: matplotlib not installed)'} and {os.path.join(args.out, 'demo.json')}")
    if any(m.startswith("sampled") for m in methods):
        print("Which sampler: log-uniform assumes ids sorted by decreasing frequency, as here; with a vocabulary "
              "in another order keep the output layer's default (a learned unigram) or give a unigram table.")
    if args.save:
        chosen = next((r for r in results if r["method"] == "sampled-log-uniform"), results[0])
        print(f"checkpoint: {save_checkpoint(chosen, corpus, args, args.save)}")
    return 0
