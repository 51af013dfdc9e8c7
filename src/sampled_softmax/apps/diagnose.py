"""``sampled-softmax diagnose``: how far the sampled softmax estimator is from the full softmax.

Given hidden states ``h [N, D]``, targets and a class table (a checkpoint written by
``sampled-softmax demo --save DIR``, or random with a chosen logit spread), it draws the
candidates ``R`` times for each sampler, draw mode and ``S`` and reports, against the exact
full-softmax mean loss and gradients:

* the bias and the standard deviation (over draws) of the sampled mean loss;
* the cosine similarity of the sampled gradient to the full one, for the per-class gradient
  (``d loss / d b``, a vector over all ``V`` classes) and for the hidden states
  (``d loss / d h``), averaged over draws.

Sampled softmax is a biased estimator of the full loss (its expectation is not the full loss);
what matters for training is how well its gradient points the same way. PyTorch, float64.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np
import torch

from ._progress import progress_bar
from ..torch import LogUniformSampler, UniformSampler, UnigramSampler
from ..torch import full_softmax_loss, sampled_softmax_loss

DRAWS = ("unique", "unique_exact", "with_replacement")


def random_problem(vocab_size: int, dim: int, n: int, spread: float, seed: int = 0):
    """A class table whose logits have standard deviation ``spread``, Zipf-distributed targets
    drawn from the model itself (so the model is calibrated and the exact gradient is small
    but not zero for a finite sample)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(vocab_size, dim, generator=g, dtype=torch.float64) * (spread / math.sqrt(dim))
    zipf = 1.0 / torch.arange(1, vocab_size + 1, dtype=torch.float64)
    b = torch.log(zipf / zipf.sum())  # frequent classes first, as the log-uniform sampler assumes
    h = torch.randn(n, dim, generator=g, dtype=torch.float64)
    probs = torch.softmax(h @ W.T + b, dim=1)
    y = torch.multinomial(probs, 1, generator=g)[:, 0]
    counts = torch.bincount(y, minlength=vocab_size).double().numpy()
    return W, b, h, y, counts


def load_checkpoint(path: str):
    ckpt = torch.load(path, weights_only=False)
    if ckpt.get("weight") is None:
        raise SystemExit(f"{path}: the checkpoint has no class table (method {ckpt.get('method')!r})")
    W = ckpt["weight"].double()
    b = ckpt["bias"].double() if ckpt.get("bias") is not None else torch.zeros(W.shape[0], dtype=torch.float64)
    return W, b, ckpt["hidden"].double(), ckpt["targets"].long(), np.asarray(ckpt["unigram_counts"])


def exact(W, b, h, y):
    """Full-softmax mean loss and its gradients w.r.t. the biases and the hidden states."""
    b = b.clone().requires_grad_(True)
    h = h.clone().requires_grad_(True)
    loss = full_softmax_loss(W, b, y, h, reduction="mean")
    db, dh = torch.autograd.grad(loss, (b, h))
    return loss.item(), db, dh


def sampled(W, b, h, y, sampler, S, generator):
    b = b.clone().requires_grad_(True)
    h = h.clone().requires_grad_(True)
    loss = sampled_softmax_loss(W, b, y, h, S, W.shape[0], sampler=sampler, reduction="mean", generator=generator)
    db, dh = torch.autograd.grad(loss, (b, h))
    return loss.item(), db, dh


def _cos(a, b) -> float:
    a, b = a.flatten(), b.flatten()
    denom = a.norm() * b.norm()
    return float((a @ b) / denom) if denom > 0 else float("nan")


def make_samplers(vocab_size, counts, draw, names):
    out = {}
    for name in names:
        if name == "uniform":
            out[name] = UniformSampler(vocab_size, draw=draw)
        elif name == "log_uniform":
            out[name] = LogUniformSampler(vocab_size, draw=draw)
        elif name == "unigram":
            out[name] = UnigramSampler(vocab_size, np.asarray(counts, np.float64) + 1.0, distortion=0.75, draw=draw)
    return out


def estimate(W, b, h, y, counts, *, sizes, draws, samplers, repeats, seed=0, progress=None):
    """One row per (sampler, draw, S): bias, std, gradient cosines, averaged over ``repeats``."""
    full_loss, full_db, full_dh = exact(W, b, h, y)
    rows = []
    V = W.shape[0]
    for draw in draws:
        for name, sampler in make_samplers(V, counts, draw, samplers).items():
            for S in sizes:
                if S > (sampler.support if draw == "unique" else 10 * V):
                    continue
                g = torch.Generator().manual_seed(seed)
                losses, cos_b, cos_h = [], [], []
                for _ in range(repeats):
                    loss, db, dh = sampled(W, b, h, y, sampler, S, g)
                    losses.append(loss)
                    cos_b.append(_cos(db, full_db))
                    cos_h.append(_cos(dh, full_dh))
                losses = np.asarray(losses)
                rows.append({"sampler": name, "draw": draw, "S": S, "full_loss": full_loss,
                             "mean_sampled_loss": float(losses.mean()), "bias": float(losses.mean() - full_loss),
                             "std": float(losses.std(ddof=1)) if repeats > 1 else 0.0,
                             "grad_cosine_bias": float(np.mean(cos_b)), "grad_cosine_hidden": float(np.mean(cos_h))})
                if progress:
                    progress(f"{name} {draw} S={S}")
    return rows, (full_loss, full_db)


def format_table(rows) -> str:
    lines = [f"{'sampler':<12} {'draw':<17} {'S':>6} {'bias':>9} {'std':>8} {'cos d/db':>9} {'cos d/dh':>9}"]
    for r in rows:
        lines.append(f"{r['sampler']:<12} {r['draw']:<17} {r['S']:>6} {r['bias']:>9.4f} {r['std']:>8.4f} "
                     f"{r['grad_cosine_bias']:>9.4f} {r['grad_cosine_hidden']:>9.4f}")
    return "\n".join(lines)


def plots(rows, W, b, h, y, full_db, sampler, S, out_dir: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for key in sorted({(r["sampler"], r["draw"]) for r in rows}):
        sel = [r for r in rows if (r["sampler"], r["draw"]) == key]
        xs = [r["S"] for r in sel]
        axes[0].plot(xs, [r["bias"] for r in sel], marker="o", ms=3, label=f"{key[0]}, {key[1]}")
        axes[1].plot(xs, [r["grad_cosine_bias"] for r in sel], marker="o", ms=3, label=f"{key[0]}, {key[1]}")
    axes[0].axhline(0, color="k", lw=0.8)
    axes[0].set_ylabel("sampled mean loss - full loss")
    axes[1].set_ylabel("cosine(sampled, full) of d loss / d bias")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("num_sampled S")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "diagnose_bias_cosine.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    _, db, _ = sampled(W, b, h, y, sampler, S, torch.Generator().manual_seed(1))
    top = torch.argsort(full_db.abs(), descending=True)[:20]
    fig, ax = plt.subplots(figsize=(10, 4))
    x = np.arange(top.numel())
    ax.bar(x - 0.2, full_db[top].numpy(), 0.4, label="full softmax")
    ax.bar(x + 0.2, db[top].numpy(), 0.4, label=f"one sampled draw ({sampler.__class__.__name__}, S={S})")
    ax.set_xticks(x, [str(int(k)) for k in top])
    ax.set_xlabel("class id (the 20 largest full-softmax gradients)")
    ax.set_ylabel("d loss / d bias")
    ax.legend()
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "diagnose_per_class_gradient.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sampled-softmax diagnose", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="a checkpoint.pt from `sampled-softmax demo --save DIR`")
    ap.add_argument("--vocab", type=int, default=10_000, help="classes of the random problem")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=512, help="hidden states of the random problem")
    ap.add_argument("--spread", type=float, default=3.0, help="standard deviation of the random problem's logits")
    ap.add_argument("--sizes", default="16,64,256,1024,4096")
    ap.add_argument("--samplers", default="uniform,log_uniform,unigram")
    ap.add_argument("--draws", default=",".join(DRAWS))
    ap.add_argument("--repeats", type=int, default=20, help="Monte Carlo draws per setting")
    ap.add_argument("--out", default=".", help="where the PNG plots and diagnose.json go")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.checkpoint:
        W, b, h, y, counts = load_checkpoint(args.checkpoint)
        source = args.checkpoint
    else:
        W, b, h, y, counts = random_problem(args.vocab, args.dim, args.batch, args.spread, args.seed)
        source = f"random: V={args.vocab}, D={args.dim}, N={args.batch}, logit spread {args.spread}"
    sizes = [int(s) for s in args.sizes.split(",")]
    draws = [d for d in args.draws.split(",") if d]
    samplers = [s for s in args.samplers.split(",") if s]
    total = len(sizes) * len(draws) * len(samplers)
    with progress_bar(total, "diagnose") as bar:
        rows, (full_loss, full_db) = estimate(W, b, h, y, counts, sizes=sizes, draws=draws, samplers=samplers,
                                              repeats=args.repeats, seed=args.seed,
                                              progress=lambda note: (bar.set_postfix_str(note, refresh=False),
                                                                     bar.update()))
    print(f"{source}; exact full-softmax loss {full_loss:.4f}; {args.repeats} draws per setting")
    print(format_table(rows))
    os.makedirs(args.out, exist_ok=True)
    chosen = make_samplers(W.shape[0], counts, "unique", [samplers[0]])[samplers[0]]
    paths = plots(rows, W, b, h, y, full_db, chosen, min(sizes[len(sizes) // 2], W.shape[0]), args.out)
    with open(os.path.join(args.out, "diagnose.json"), "w") as f:
        json.dump({"source": source, "args": vars(args), "rows": rows}, f, indent=1)
    print(f"wrote {', '.join(paths) or '(no plots: matplotlib not installed)'} and {os.path.join(args.out, 'diagnose.json')}")
    return 0
