"""A two-tower retrieval model in PyTorch: in-batch and mixed negatives with a streaming log-Q
correction, evaluated by exact recall@k over the whole catalogue.

Users and items are drawn from a planted model (popular items are chosen more, as in real
catalogues); the user tower and the item tower are embeddings; each step scores the batch's
users against the batch's items plus ``--extra`` uniformly drawn corpus items, corrects every
column by its own probability of being there (``StreamingFrequency`` for the batch's items, the
sampler's for the drawn ones) and trains with ``in_batch_softmax_loss``.

    python examples/two_tower.py [--items 20000 --steps 1000 --batch 512 --extra 512]
"""

from __future__ import annotations

import argparse
import math

import torch

from sampled_softmax.torch import StreamingFrequency, UniformSampler, in_batch_softmax_loss, mixed_negatives


def planted_pairs(users: int, items: int, pairs: int, seed: int = 0, dim: int = 16):
    """``(user ids, item ids)``: user ``u`` picks item ``j`` with probability
    ``softmax_j(a_u . b_j + log popularity_j)``, popularity Zipf over the item ids."""
    g = torch.Generator().manual_seed(seed)
    a, b = (torch.randn(n, dim, generator=g) * 2 / math.sqrt(dim) for n in (users, items))
    log_popularity = -1.1 * torch.log(torch.arange(1, items + 1, dtype=torch.float32))
    u = torch.randint(users, (pairs,), generator=g)
    j = torch.empty(pairs, dtype=torch.int64)
    for user in range(users):
        rows = torch.nonzero(u == user)[:, 0]
        if rows.numel():
            probs = torch.softmax(a[user] @ b.T + log_popularity, 0)
            j[rows] = torch.multinomial(probs, rows.numel(), replacement=True, generator=g)
    return u, j


def recall_at(user_tower, item_tower, users, items, ks=(10, 100)):
    """Exact recall@k of the held-out items among all items."""
    with torch.no_grad():
        scores = user_tower(users) @ item_tower.weight.T
        rank = (scores > scores.gather(1, items[:, None])).sum(1)
    return {k: float((rank < k).float().mean()) for k in ks}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=2_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--steps", type=int, default=1_000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--extra", type=int, default=512, help="uniform corpus negatives per step (0: in-batch only)")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    users, items = planted_pairs(args.users, args.items, args.steps * args.batch + 5_000, seed=args.seed)
    train_u, train_i = users[:-5_000], items[:-5_000]
    test_u, test_i = users[-5_000:], items[-5_000:]
    torch.manual_seed(args.seed)
    user_tower, item_tower = torch.nn.Embedding(args.users, args.dim), torch.nn.Embedding(args.items, args.dim)
    for tower in (user_tower, item_tower):
        torch.nn.init.normal_(tower.weight, std=0.1)
    optimizer = torch.optim.Adam([*user_tower.parameters(), *item_tower.parameters()], lr=1e-2)
    frequency = StreamingFrequency(num_buckets=1 << 20)
    sampler = UniformSampler(args.items, draw="unique_exact")
    before = recall_at(user_tower, item_tower, test_u, test_i)
    for step in range(args.steps):
        u = train_u[step * args.batch:(step + 1) * args.batch]
        i = train_i[step * args.batch:(step + 1) * args.batch]
        query, candidates = user_tower(u), item_tower(i)
        log_q = frequency(i)  # updates the estimate, then reads it
        if args.extra:
            mixed = mixed_negatives(candidates, i, log_q, args.extra, sampler, item_tower)
            loss = in_batch_softmax_loss(query, **mixed._asdict(), temperature=args.temperature)
        else:
            loss = in_batch_softmax_loss(query, candidates, candidate_ids=i, log_q=log_q,
                                         temperature=args.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    after = recall_at(user_tower, item_tower, test_u, test_i)
    print(f"{args.items} items, {args.steps} steps of {args.batch} pairs + {args.extra} corpus negatives: "
          + ", ".join(f"recall@{k} {before[k]:.3f} -> {after[k]:.3f}" for k in after))
    return before, after


if __name__ == "__main__":
    main()
