"""The two-tower model of ``two_tower.py`` trained on several processes: each rank takes its own
slice of every batch, the towers are under ``DistributedDataParallel``, and every rank's queries
see the **global** batch as negatives (``gather_negatives``: every rank's item embeddings, ids
and ``log_q``, this rank's first, so each query's positive stays at its own column). The
streaming frequency estimate counts the global batch on every rank, so all ranks hold the
same estimate, the one a single process would have.

    torchrun --nproc-per-node 2 examples/two_tower_distributed.py [--items 20000 --steps 300]
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from sampled_softmax.torch import StreamingFrequency, in_batch_softmax_loss
from sampled_softmax.torch.distributed import all_gather_rows, gather_negatives
from two_tower import planted_pairs, recall_at


class Towers(torch.nn.Module):
    def __init__(self, users: int, items: int, dim: int):
        super().__init__()
        self.user_tower, self.item_tower = torch.nn.Embedding(users, dim), torch.nn.Embedding(items, dim)
        for tower in (self.user_tower, self.item_tower):
            torch.nn.init.normal_(tower.weight, std=0.1)

    def forward(self, u, i):
        return self.user_tower(u), self.item_tower(i)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=2_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=512, help="global batch, split over the ranks")
    ap.add_argument("--dim", type=int, default=32)
    args = ap.parse_args(argv)

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.batch % world:
        raise SystemExit(f"--batch ({args.batch}) must be a multiple of the world size ({world})")
    local = args.batch // world
    users, items = planted_pairs(args.users, args.items, args.steps * args.batch + 5_000, seed=0)
    train_u, train_i = users[:-5_000], items[:-5_000]
    torch.manual_seed(0)
    model = DistributedDataParallel(Towers(args.users, args.items, args.dim))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    frequency = StreamingFrequency(num_buckets=1 << 20)
    towers = model.module
    before = recall_at(towers.user_tower, towers.item_tower, users[-5_000:], items[-5_000:])
    for step in range(args.steps):
        rows = slice(step * args.batch + rank * local, step * args.batch + (rank + 1) * local)
        u, i = train_u[rows], train_i[rows]
        query, candidates = model(u, i)
        log_q = frequency(all_gather_rows(i))[rank * local:(rank + 1) * local]  # the global stream, every rank
        negatives = gather_negatives(candidates, i, log_q)
        loss = in_batch_softmax_loss(query, **negatives._asdict())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages over the ranks: the single-process gradient of the global batch
        optimizer.step()
    after = recall_at(towers.user_tower, towers.item_tower, users[-5_000:], items[-5_000:])
    if rank == 0:
        print(f"{world} ranks, global batch {args.batch} ({local} per rank), {args.steps} steps: "
              + ", ".join(f"recall@{k} {before[k]:.3f} -> {after[k]:.3f}" for k in after))
    dist.destroy_process_group()
    return before, after


if __name__ == "__main__":
    main()
