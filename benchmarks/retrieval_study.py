"""Two-tower retrieval on a synthetic catalogue where the truth is known: what the log-Q
correction, the streaming estimate and mixed negatives do, against the full softmax.

    python -m benchmarks.retrieval_study [--items 20000 --users 4000 --steps 1500 --batch 512]

The world: ``N`` items with Zipf popularity ``p_j ∝ (j + 1) ** -1.1`` and ``U`` users; user
``u`` picks item ``j`` with probability ``P(j | u) = softmax_j(a_u . b_j + log p_j)`` for
planted unit-scale vectors ``a``, ``b`` (dimension 16). Training and held-out pairs are drawn
from it. Every method trains the same two towers (``Embedding(U, 32)``, ``Embedding(N, 32)``,
Adam 1e-2) for the same number of steps on the same batches of ``B`` pairs:

* ``in-batch, no correction``: the batch's items as negatives, ``log_q = 0``;
* ``in-batch, exact log Q``: ``log_q_j = log(1 - (1 - P(j)) ** B)``, the exact probability that
  item ``j`` is in a batch (``P(j)`` its marginal frequency);
* ``in-batch, streaming estimate``: ``log_q`` from ``StreamingFrequency`` updated on the stream;
* ``mixed negatives``: the streaming estimate plus ``M = B`` uniform corpus negatives
  (``mixed_negatives``, their own ``log_q``);
* ``full softmax``: ``F.cross_entropy`` over all ``N`` items.

Reported: recall@10 and @100 of the held-out item among all ``N`` (exact top-k); the popularity
bias, ``log(predicted share / true share)`` of the items in the top and bottom popularity deciles
(predicted share: the model's softmax over all items averaged over the held-out users; 0 is
calibrated; a sampled loss without correction over-predicts rare items and under-predicts
popular ones); and the streaming estimate's median relative error against the exact in-batch
probability of the 100 most popular items.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

from .harness import dump

METHODS = ("in-batch, no correction", "in-batch, exact log Q", "in-batch, streaming estimate", "mixed negatives",
           "full softmax")


def world(items, users, pairs, held_out, seed=0, dim=16, exponent=1.1):
    """``(train_users, train_items, test_users, test_items, marginal [N])`` as torch tensors."""
    import torch

    g = torch.Generator().manual_seed(seed)
    a = torch.randn(users, dim, generator=g) / math.sqrt(dim) * 2.0
    b = torch.randn(items, dim, generator=g) / math.sqrt(dim) * 2.0
    log_p = -exponent * torch.log(torch.arange(1, items + 1, dtype=torch.float32))
    log_p = log_p - torch.logsumexp(log_p, 0)
    total = pairs + held_out
    u = torch.randint(users, (total,), generator=g)
    j = torch.empty(total, dtype=torch.int64)
    marginal = torch.zeros(items, dtype=torch.float64)
    order = torch.argsort(u, stable=True)  # the pairs grouped by user
    counts = torch.bincount(u, minlength=users).tolist()
    first = 0
    for start in range(0, users, 256):  # P(j | u) for a block of users at a time
        block = torch.arange(start, min(start + 256, users))
        probs = torch.softmax(a[block] @ b.T + log_p, 1)
        marginal += probs.double().sum(0) / users
        for k, user in enumerate(block.tolist()):
            n = counts[user]
            if n:
                j[order[first:first + n]] = torch.multinomial(probs[k], n, replacement=True, generator=g)
                first += n
    return u[:pairs], j[:pairs], u[pairs:], j[pairs:], marginal


def train(method, data, *, items, users, steps, batch, seed=0, dim=32, lr=1e-2):
    import torch
    import torch.nn.functional as F

    from sampled_softmax.torch import StreamingFrequency, UniformSampler, in_batch_softmax_loss, mixed_negatives

    tu, ti, _, _, marginal = data
    torch.manual_seed(seed)
    user_tower, item_tower = torch.nn.Embedding(users, dim), torch.nn.Embedding(items, dim)
    for t in (user_tower, item_tower):
        torch.nn.init.normal_(t.weight, std=0.1)
    opt = torch.optim.Adam(list(user_tower.parameters()) + list(item_tower.parameters()), lr=lr)
    frequency = StreamingFrequency(1 << 20)
    exact_log_q = torch.log(-torch.expm1(batch * torch.log1p(-marginal))).float()
    sampler = UniformSampler(items, draw="unique_exact")
    order = torch.randperm(tu.numel(), generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    for step in range(steps):
        rows = order[(step * batch) % (order.numel() - batch):][:batch]
        users_b, items_b = tu[rows], ti[rows]
        q, c = user_tower(users_b), item_tower(items_b)
        if method == "full softmax":
            loss = F.cross_entropy(q @ item_tower.weight.T, items_b)
        elif method == "in-batch, no correction":
            loss = in_batch_softmax_loss(q, c, candidate_ids=items_b)
        elif method == "in-batch, exact log Q":
            loss = in_batch_softmax_loss(q, c, candidate_ids=items_b, log_q=exact_log_q[items_b])
        else:
            log_q = frequency(items_b)
            if method == "mixed negatives":
                mixed = mixed_negatives(c, items_b, log_q, batch, sampler, item_tower,
                                        generator=torch.Generator().manual_seed(seed * 100_003 + step))
                loss = in_batch_softmax_loss(q, **mixed._asdict())
            else:
                loss = in_batch_softmax_loss(q, c, candidate_ids=items_b, log_q=log_q)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    return user_tower, item_tower, frequency, seconds


def evaluate(user_tower, item_tower, data, *, batch, frequency=None):
    import torch

    _, _, vu, vi, marginal = data
    with torch.no_grad():
        table = item_tower.weight
        hits10 = hits100 = 0
        share = torch.zeros(table.shape[0], dtype=torch.float64)
        for start in range(0, vu.numel(), 1024):
            scores = user_tower(vu[start:start + 1024]) @ table.T
            target = scores.gather(1, vi[start:start + 1024, None])
            rank = (scores > target).sum(1)
            hits10 += int((rank < 10).sum())
            hits100 += int((rank < 100).sum())
            share += torch.softmax(scores.double(), 1).sum(0)
        share /= vu.numel()
    n = table.shape[0]
    deciles = max(n // 10, 1)
    log_ratio = torch.log(share / marginal)
    out = {"recall@10": hits10 / vu.numel(), "recall@100": hits100 / vu.numel(),
           "bias top decile": float(log_ratio[:deciles].mean()), "bias bottom decile": float(log_ratio[-deciles:].mean())}
    if frequency is not None and int(frequency.step) > 0:
        top = torch.arange(100)
        truth = -torch.expm1(batch * torch.log1p(-marginal[top]))
        estimate = frequency.probability(top).double()
        out["estimate median relative error (top 100)"] = float(torch.median((estimate / truth - 1).abs()))
    return out


def run(items=20_000, users=4_000, steps=1500, batch=512, held_out=20_000, seed=0, methods=METHODS) -> dict:
    data = world(items, users, steps * batch, held_out, seed=seed)
    results = {}
    for method in methods:
        user_tower, item_tower, frequency, seconds = train(method, data, items=items, users=users, steps=steps,
                                                           batch=batch, seed=seed)
        uses_estimate = method in ("in-batch, streaming estimate", "mixed negatives")
        results[method] = dict(evaluate(user_tower, item_tower, data, batch=batch,
                                        frequency=frequency if uses_estimate else None), seconds=seconds)
    return {"setting": dict(items=items, users=users, steps=steps, batch=batch, held_out=held_out, seed=seed),
            "results": results}


def table(payload) -> str:
    cols = ["recall@10", "recall@100", "bias top decile", "bias bottom decile", "seconds"]
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for method, r in payload["results"].items():
        lines.append(f"| {method} | " + " | ".join(f"{r[c]:.3f}" if c != "seconds" else f"{r[c]:.0f}" for c in cols)
                     + " |")
    errors = {m: r["estimate median relative error (top 100)"] for m, r in payload["results"].items()
              if "estimate median relative error (top 100)" in r}
    lines += [f"streaming estimate, median relative error on the 100 most popular items ({m}): {e:.3f}"
              for m, e in errors.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=4_000)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--held-out", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    payload = run(args.items, args.users, args.steps, args.batch, args.held_out, args.seed)
    print(table(payload))
    if args.json:
        dump(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
