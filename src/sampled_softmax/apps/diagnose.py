"""``sampled-softmax diagnose``: how far the sampled softmax estimator is from the full softmax.

Given hidden states ``h [N, D]``, targets and a class table (a checkpoint written by
``sampled-softmax demo --save DIR``, or random with a chosen logit spread), it draws the
candidates ``R`` times for each sampler, draw mode and ``S`` and reports, against the exact
full-softmax mean loss and gradients:

* the bias and the standard deviation (over draws) of the sampled mean loss;
* the cosine similarity of the sampled gradient to the full one, for the per-class gradient
  (``d loss / d b``, a vector over all ``V`` classes) and for the hidden states
  (``d loss / d h``), averaged over draws.

Two estimators side by side (``--estimators``): TensorFlow's (``tensorflow``) and the one of
the rejection estimator (``exclude_true``: labels rejected from the draws,
correction ``log(k q / (1 - q_t))``; draws with replacement only). ``--picture`` also draws the
the picture for one example: its full softmax gradient over the classes that matter (a
negative spike on the target, a positive forest on the others) against the sampled gradient of
one draw (spikes on the drawn classes only) and the average of many draws, for both estimators.

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

from ._arguments import check_at_least, check_positive_float, comma_list
from ._progress import progress_bar, pyplot
from ..torch import LogUniformSampler, UniformSampler, UnigramSampler
from ..torch import full_softmax_loss, sampled_softmax_loss

DRAWS = ("unique", "unique_exact", "with_replacement")
ESTIMATORS = ("tensorflow", "exclude_true")
SAMPLERS = ("uniform", "log_uniform", "unigram")


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


def sampled(W, b, h, y, sampler, S, generator, exclude_true=False):
    b = b.clone().requires_grad_(True)
    h = h.clone().requires_grad_(True)
    loss = sampled_softmax_loss(W, b, y, h, S, W.shape[0], sampler=sampler, reduction="mean", generator=generator,
                                exclude_true=exclude_true)
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


def estimate(W, b, h, y, counts, *, sizes, draws, samplers, repeats, seed=0, progress=None,
             estimators=("tensorflow",)):
    """One row per (estimator, sampler, draw, S): bias, std, gradient cosines, averaged over
    ``repeats``. ``exclude_true`` rows only for draws with replacement (its expected counts)."""
    full_loss, full_db, full_dh = exact(W, b, h, y)
    rows = []
    V = W.shape[0]
    for draw in draws:
        for name, sampler in make_samplers(V, counts, draw, samplers).items():
            for S in sizes:
                if S > (sampler.support if draw == "unique" else 10 * V):
                    continue
                for estimator in estimators:
                    if estimator == "exclude_true" and draw != "with_replacement":
                        continue
                    g = torch.Generator().manual_seed(seed)
                    losses, cos_b, cos_h = [], [], []
                    for _ in range(repeats):
                        loss, db, dh = sampled(W, b, h, y, sampler, S, g, estimator == "exclude_true")
                        losses.append(loss)
                        cos_b.append(_cos(db, full_db))
                        cos_h.append(_cos(dh, full_dh))
                    losses = np.asarray(losses)
                    rows.append({"estimator": estimator, "sampler": name, "draw": draw, "S": S,
                                 "full_loss": full_loss, "mean_sampled_loss": float(losses.mean()),
                                 "bias": float(losses.mean() - full_loss),
                                 "std": float(losses.std(ddof=1)) if repeats > 1 else 0.0,
                                 "grad_cosine_bias": float(np.mean(cos_b)),
                                 "grad_cosine_hidden": float(np.mean(cos_h))})
                if progress:
                    progress(f"{name} {draw} S={S}")
    return rows, (full_loss, full_db)


def format_table(rows) -> str:
    lines = [f"{'estimator':<13} {'sampler':<12} {'draw':<17} {'S':>6} {'bias':>9} {'std':>8} {'cos d/db':>9} "
             f"{'cos d/dh':>9}"]
    for r in rows:
        lines.append(f"{r.get('estimator', 'tensorflow'):<13} {r['sampler']:<12} {r['draw']:<17} {r['S']:>6} "
                     f"{r['bias']:>9.4f} {r['std']:>8.4f} {r['grad_cosine_bias']:>9.4f} "
                     f"{r['grad_cosine_hidden']:>9.4f}")
    return "\n".join(lines)


def example_gradients(W, b, h, y, sampler, S, *, example=0, draws=1000, seed=0):
    """For one example: its full softmax gradient over the classes (``d loss / d b``, i.e.
    ``p - onehot(target)``) and, for each estimator, the sampled gradient of one draw and the
    mean over ``draws`` draws. Returns ``{"full": [V], name: (one [V], mean [V])}``."""
    hi, yi = h[example:example + 1], y[example:example + 1]
    _, full, _ = exact(W, b, hi, yi)
    out = {"full": full}
    for estimator in ESTIMATORS:
        g = torch.Generator().manual_seed(seed)
        total = torch.zeros_like(full)
        one = None
        for k in range(draws):
            _, db, _ = sampled(W, b, hi, yi, sampler, S, g, estimator == "exclude_true")
            one = db if k == 0 else one
            total += db
        out[estimator] = (one, total / draws)
    return out


def picture(grads, target: int, S: int, sampler_name: str, path: str, *, classes: int = 16, draws: int = 1000):
    """The estimators' bar chart: over the target and the classes of largest full gradient, the
    full gradient, one draw's and the mean of ``draws``, one panel per estimator. Returns
    ``path``, or None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    full = grads["full"]
    order = [int(k) for k in torch.argsort(full.abs(), descending=True) if int(k) != target][: classes - 1]
    shown = [target] + order
    x = np.arange(len(shown))
    titles = {"tensorflow": "TensorFlow's estimator: every column corrected by -log(S q), hits kept",
              "exclude_true": "Rejection (exclude_true): target rejected from the draws, -log(k q / (1 - q_t))"}
    fig, axes = plt.subplots(2, 1, figsize=(10, 6.4), sharex=True)
    for ax, estimator in zip(axes, ESTIMATORS):
        one, mean = grads[estimator]
        ax.bar(x - 0.27, full[shown].numpy(), 0.27, color="0.55", label="full softmax")
        ax.bar(x, one[shown].numpy(), 0.27, color="tab:blue", label="sampled, one draw")
        ax.bar(x + 0.27, mean[shown].numpy(), 0.27, color="tab:orange", label=f"sampled, mean of {draws} draws")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_title(titles[estimator], fontsize=9)
        ax.set_ylabel("d loss / d logit")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[1].set_xticks(x, ["target\n" + str(target)] + [str(k) for k in order], fontsize=7)
    axes[1].set_xlabel(f"class (the target, then the {classes - 1} largest full gradients); {sampler_name} "
                       f"sampler, S={S} with replacement")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plots(rows, W, b, h, y, full_db, sampler, S, out_dir: str) -> list[str]:
    plt = pyplot()
    if plt is None:
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
    ap.add_argument("--estimators", default=",".join(ESTIMATORS),
                    help="tensorflow (TensorFlow's) and/or exclude_true (the rejection estimator; draws with replacement)")
    ap.add_argument("--picture", action="store_true",
                    help="also draw one example's full and sampled gradients for both estimators "
                         "(diagnose_estimators.png)")
    ap.add_argument("--picture-size", type=int, default=20, help="S of the picture's draws")
    ap.add_argument("--picture-draws", type=int, default=1000, help="draws averaged in the picture")
    args = ap.parse_args(argv)
    # Every option checked before the estimation starts.
    estimators = comma_list(ap, "estimators", args.estimators, ESTIMATORS)
    sizes = comma_list(ap, "sizes", args.sizes, kind=int)
    draws = comma_list(ap, "draws", args.draws, DRAWS)
    samplers = comma_list(ap, "samplers", args.samplers, SAMPLERS)
    check_at_least(ap, args, 1, "dim", "batch", "repeats", "picture_size", "picture_draws")
    check_at_least(ap, args, 2, "vocab")
    check_positive_float(ap, args, "spread")
    if min(sizes) < 1:
        ap.error(f"--sizes must be integers >= 1; received {min(sizes)}")
    if "unique" in draws and not args.checkpoint and max(sizes) > args.vocab:
        ap.error(f"--sizes must be at most --vocab ({args.vocab}) for draws without replacement; received "
                 f"{max(sizes)}")
    if estimators == ["exclude_true"] and "with_replacement" not in draws:
        ap.error("--estimators exclude_true takes draws with replacement only: add with_replacement to --draws "
                 f"(received --draws {','.join(draws)}), or add tensorflow to --estimators")
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        ap.error(f"--checkpoint {args.checkpoint!r} is not a file")
    if args.checkpoint:
        W, b, h, y, counts = load_checkpoint(args.checkpoint)
        source = args.checkpoint
    else:
        W, b, h, y, counts = random_problem(args.vocab, args.dim, args.batch, args.spread, args.seed)
        source = f"random: V={args.vocab}, D={args.dim}, N={args.batch}, logit spread {args.spread}"
    total = len(sizes) * len(draws) * len(samplers)
    with progress_bar(total, "diagnose") as bar:
        rows, (full_loss, full_db) = estimate(W, b, h, y, counts, sizes=sizes, draws=draws, samplers=samplers,
                                              repeats=args.repeats, seed=args.seed, estimators=estimators,
                                              progress=lambda note: (bar.set_postfix_str(note, refresh=False),
                                                                     bar.update()))
    print(f"{source}; exact full-softmax loss {full_loss:.4f}; {args.repeats} draws per setting")
    print(format_table(rows))
    os.makedirs(args.out, exist_ok=True)
    chosen = make_samplers(W.shape[0], counts, "unique", [samplers[0]])[samplers[0]]
    paths = plots(rows, W, b, h, y, full_db, chosen, min(sizes[len(sizes) // 2], W.shape[0]), args.out)
    if args.picture:
        with_replacement = make_samplers(W.shape[0], counts, "with_replacement", [samplers[0]])[samplers[0]]
        grads = example_gradients(W, b, h, y, with_replacement, args.picture_size, draws=args.picture_draws,
                                  seed=args.seed)
        path = picture(grads, int(y[0]), args.picture_size, samplers[0],
                       os.path.join(args.out, "diagnose_estimators.png"), draws=args.picture_draws)
        paths += [path] if path else []
    with open(os.path.join(args.out, "diagnose.json"), "w") as f:
        json.dump({"source": source, "args": vars(args), "rows": rows}, f, indent=1)
    print(f"wrote {', '.join(paths) or '(no plots: matplotlib not installed)'} and {os.path.join(args.out, 'diagnose.json')}")
    return 0
