"""Sequential recommendation: SASRec (Kang & McAuley 2018) trained with the library's losses.

``sampled-softmax seqrec --data FILE --loss NAME --out DIR`` reads a ``user item`` (or
``user i1 i2 ...``) file (:mod:`.seqrec_data`), splits it leave-one-out, trains a PyTorch SASRec
(causal self-attention, learned positions, the item embeddings shared as the output table) with
one loss, stops early on validation NDCG@10 and writes ``DIR/results.json`` (test HR and NDCG
@10 and @100 over the full catalogue, the user's seen items filtered out, as Klenitskiy &
Vasilev, RecSys '23) and ``DIR/valid_ndcg.png`` (validation NDCG@10 against training seconds).

Every loss goes through the library's public PyTorch API: ``full`` (``full_softmax_loss``),
``sampled_softmax``, ``nce``, ``negative_sampling`` (``num_sampled=1``: the original SASRec's),
``gbce`` (gSASRec's), ``in_batch`` and ``mixed`` (``in_batch_softmax_loss`` with the streaming
frequency estimate, plus corpus negatives from ``mixed_negatives``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import sys
import time

import numpy as np
import torch
from torch import nn

from .. import SampledSoftmaxError
from ..torch import (
    LearnedUnigramSampler, StreamingFrequency, UniformSampler, UnigramSampler, full_softmax_loss, gbce_loss,
    in_batch_softmax_loss, mixed_negatives, nce_loss, negative_sampling_loss, sampled_softmax_loss,
)
from ._arguments import check_at_least, check_positive_float
from ._progress import progress_bar, pyplot
from .seqrec_data import Interactions, Split, leave_one_out, read_interactions

LOSSES = ("full", "sampled_softmax", "nce", "negative_sampling", "gbce", "in_batch", "mixed")
SAMPLERS = ("uniform", "popularity", "learned")
NEGATIVES = ("batch", "sequence", "position")
# Per loss: the number of negatives and how they are shared when the command line does not say.
DEFAULT_NUM_SAMPLED = {"sampled_softmax": 3000, "nce": 3000, "negative_sampling": 1, "gbce": 256, "mixed": 3000}
DEFAULT_NEGATIVES = {"sampled_softmax": "batch", "nce": "batch", "negative_sampling": "position",
                     "gbce": "position"}


class SASRec(nn.Module):
    """SASRec: item and position embeddings, ``blocks`` causal self-attention blocks (pre-norm
    queries, point-wise feed-forward with residual), a last layer norm. Inputs are right-padded
    with 0; position ``p``'s output summarises items ``0..p``. The output table is the item
    embedding (``item_emb.weight[1:]``: row ``i - 1`` scores item ``i``)."""

    def __init__(self, num_items: int, *, max_length: int = 50, hidden: int = 64, blocks: int = 2, heads: int = 1,
                 dropout: float = 0.1):
        super().__init__()
        self.item_emb = nn.Embedding(num_items + 1, hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_length, hidden)
        self.dropout = nn.Dropout(dropout)
        self.attention_norms = nn.ModuleList(nn.LayerNorm(hidden, eps=1e-8) for _ in range(blocks))
        self.attentions = nn.ModuleList(nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
                                        for _ in range(blocks))
        self.forward_norms = nn.ModuleList(nn.LayerNorm(hidden, eps=1e-8) for _ in range(blocks))
        self.feed_forwards = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden), nn.Dropout(dropout), nn.ReLU(), nn.Linear(hidden, hidden),
                          nn.Dropout(dropout)) for _ in range(blocks))
        self.last_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.apply(self._init)

    @staticmethod
    def _init(module):
        # The paper's code: N(0, 0.02) linear and embedding weights, zero biases and padding row.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, 0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()

    @property
    def output_table(self) -> torch.Tensor:
        """``[V, D]``: row ``i - 1`` is item ``i``'s embedding (the padding row left out)."""
        return self.item_emb.weight[1:]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        x = self.item_emb(ids) * math.sqrt(self.item_emb.embedding_dim)
        x = self.dropout(x + self.pos_emb.weight[:length])
        keep = (ids != 0).unsqueeze(-1).to(x.dtype)
        x = x * keep
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=ids.device), 1)
        for norm, attention, forward_norm, feed_forward in zip(self.attention_norms, self.attentions,
                                                               self.forward_norms, self.feed_forwards):
            q = norm(x)
            x = q + attention(q, x, x, attn_mask=causal, need_weights=False)[0]
            x = forward_norm(x)
            x = (x + feed_forward(x)) * keep
        return self.last_norm(x)


def _pad_right(sequences, width: int) -> np.ndarray:
    out = np.zeros((len(sequences), width), np.int64)
    for row, s in enumerate(sequences):
        out[row, : len(s)] = s
    return out


def training_batches(train: list, max_length: int, batch_size: int, rng: np.random.Generator):
    """One epoch of ``(inputs [B, L], labels [B, L])``, right-padded with 0: for each user with
    two or more training items, its last ``max_length + 1`` items, each predicting the next."""
    usable = [s[-max_length - 1:] for s in train if len(s) >= 2]
    order = rng.permutation(len(usable))
    for start in range(0, len(order), batch_size):
        chunk = [usable[i] for i in order[start:start + batch_size]]
        width = max(len(s) for s in chunk) - 1
        yield (torch.from_numpy(_pad_right([s[:-1] for s in chunk], width)),
               torch.from_numpy(_pad_right([s[1:] for s in chunk], width)))


def num_training_steps(train: list, batch_size: int) -> int:
    return math.ceil(sum(len(s) >= 2 for s in train) / batch_size)


class LossFunction:
    """The training loss of one ``--loss``: ``loss(model, inputs, labels) -> scalar``, the mean
    over the batch's real positions. Labels are 0-based item ids (item ``i`` is class ``i - 1``)."""

    def __init__(self, args, data: Interactions, generator: torch.Generator):
        self.args, self.num_items, self.generator = args, data.num_items, generator
        self.sampler = None
        if args.loss not in ("full", "in_batch"):
            draw = "unique_exact" if args.loss == "mixed" else (
                "with_replacement" if args.negatives == "position" or args.exclude_true else "unique")
            self.sampler = make_sampler(args.sampler, data, draw, args.popularity_power)
        self.frequency = StreamingFrequency(num_buckets=max(4 * data.num_items, 1024), seed=args.seed) \
            if args.loss in ("in_batch", "mixed") else None

    def __call__(self, model: SASRec, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        a = self.args
        real = inputs != 0
        rows = model(inputs)[real]  # [N, D]
        y = labels[real] - 1  # [N]
        table = model.output_table
        excluded = None
        if a.exclude_history:  # the user's own items (inputs and labels): never its negatives
            history = torch.cat([inputs[:, :1], labels], 1) - 1  # [B, L + 1], -1 is padding
            excluded = history.unsqueeze(1).expand(-1, inputs.shape[1], -1)[real]  # [N, L + 1]
        if a.loss == "full":
            return full_softmax_loss(table, None, y, rows, reduction="mean")
        if a.loss in ("in_batch", "mixed"):
            return self._in_batch(table, rows, y, excluded)
        if a.negatives == "sequence":  # one draw per user, shared along its sequence (the paper's)
            per_user = real.sum(1).tolist()
            pieces = zip(rows.split(per_user), y.split(per_user),
                         excluded.split(per_user) if excluded is not None else [None] * len(per_user))
            pieces = [p for p in pieces if len(p[1])]
            # Each user's call returns its rows' gradient sparse, to its own view of the table;
            # the views' backward adds them into one dense gradient (not B dense [V, D] tensors).
            views = _Views.apply(table, len(pieces))
            total = sum(self._sampled(view, r, t, ex, "shared", "sum", sparse=True)
                        for view, (r, t, ex) in zip(views, pieces))
            return total / y.shape[0]
        return self._sampled(table, rows, y, excluded, "per_example" if a.negatives == "position" else "shared",
                             "mean")

    def _sampled(self, table, rows, y, excluded, noise, reduction, sparse=False):
        a = self.args
        common = dict(sampler=self.sampler, reduction=reduction, generator=self.generator, noise=noise,
                      excluded_ids=excluded, remove_accidental_hits=True, sparse=sparse)
        if a.loss == "sampled_softmax":
            return sampled_softmax_loss(table, None, y, rows, a.num_sampled, self.num_items,
                                        subtract_log_q=not a.no_log_q, exclude_true=a.exclude_true, **common)
        if a.loss == "nce":
            return nce_loss(table, None, y, rows, a.num_sampled, self.num_items, **common)
        if a.loss == "negative_sampling":
            return negative_sampling_loss(table, None, y, rows, a.num_sampled, self.num_items, **common)
        return gbce_loss(table, None, y, rows, a.num_sampled, self.num_items, t=a.gbce_t, **common)

    def _in_batch(self, table, rows, y, excluded):
        a = self.args
        self.frequency.update(y)
        in_batch_log_q = self.frequency.log_q(y)
        positives = table[y]
        if a.loss == "in_batch":
            return in_batch_softmax_loss(rows, positives, candidate_ids=y, log_q=None if a.no_log_q else in_batch_log_q,
                                         excluded_ids=excluded)
        mixed = mixed_negatives(positives, y, in_batch_log_q, num_negatives=a.num_sampled,
                                sampler=self.sampler, encode=lambda ids: table[ids], generator=self.generator)
        columns = mixed._asdict()
        if a.no_log_q:
            columns["log_q"] = None
        return in_batch_softmax_loss(rows, **columns, excluded_ids=excluded)


class _Views(torch.autograd.Function):
    """``count`` views of the table, one per loss call; backward adds their sparse row gradients
    into one dense gradient, each once (autograd would sum sparse gradients pairwise, copying
    the growing sum at every call)."""

    @staticmethod
    def forward(ctx, table, count):
        ctx.shape = table.shape
        return tuple(table.view_as(table) for _ in range(count))

    @staticmethod
    def backward(ctx, *grads):
        total = None
        for g in grads:
            if g is None:
                continue
            if g.is_sparse:
                if total is None:
                    total = torch.zeros(ctx.shape, dtype=g.dtype, device=g.device)
                total.index_add_(0, g._indices()[0], g._values())
            else:
                total = g.clone() if total is None else total.add_(g)
        return total, None


def make_sampler(kind: str, data: Interactions, draw: str, power: float = 1.0):
    """The negatives' distribution over the ``V`` items: ``uniform``, ``popularity`` (the
    training split's counts, each plus one, raised to ``power``) or ``learned`` (TensorFlow's
    learned unigram: counts of the labels seen so far)."""
    if kind == "learned":
        return LearnedUnigramSampler(data.num_items, draw=draw)
    if kind == "uniform":
        return UniformSampler(data.num_items, draw=draw)
    return UnigramSampler(data.num_items, data.item_counts()[1:] + 1.0, distortion=power, draw=draw)


@torch.no_grad()
def evaluate(model: SASRec, histories: list, targets: np.ndarray, max_length: int, ks=(10, 100),
             batch_size: int = 1024) -> dict:
    """HR@k and NDCG@k of the targets over the full catalogue, each user's seen items (its whole
    history) filtered out: a target the user has already seen counts as a miss, as in the paper's
    code. The rank of the target is one plus the number of unseen items scored above it."""
    model.eval()
    table = model.output_table
    hits = {k: 0.0 for k in ks}
    ndcg = {k: 0.0 for k in ks}
    for start in range(0, len(histories), batch_size):
        chunk = histories[start:start + batch_size]
        inputs = torch.from_numpy(_pad_right([h[-max_length:] for h in chunk], min(max_length, max(map(len, chunk)))))
        last = (inputs != 0).sum(1) - 1
        h = model(inputs)[torch.arange(len(chunk)), last]
        scores = h @ table.T  # [B, V]
        rows = np.repeat(np.arange(len(chunk)), [len(x) for x in chunk])
        scores[torch.from_numpy(rows), torch.from_numpy(np.concatenate(chunk) - 1)] = -math.inf
        target = torch.from_numpy(targets[start:start + batch_size] - 1)
        target_score = scores.gather(1, target[:, None])
        rank = (scores > target_score).sum(1) + 1
        rank = torch.where(torch.isinf(target_score[:, 0]), len(table) + 1, rank).numpy()
        for k in ks:
            hit = rank <= k
            hits[k] += float(hit.sum())
            ndcg[k] += float((hit / np.log2(rank + 1.0)).sum())
    model.train()
    n = max(len(histories), 1)
    out = {}
    for k in ks:
        out[f"hr@{k}"], out[f"ndcg@{k}"] = hits[k] / n, ndcg[k] / n
    return out


def train(data: Interactions, args) -> dict:
    """Train and evaluate (see the module docstring); returns the results written to JSON."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    split: Split = leave_one_out(data)
    valid_users = np.arange(len(split.valid_target))
    if args.valid_users and args.valid_users < len(valid_users):
        valid_users = np.sort(rng.choice(valid_users, args.valid_users, replace=False))
    valid_histories = [split.valid_history[u] for u in valid_users]
    valid_targets = split.valid_target[valid_users]
    model = SASRec(data.num_items, max_length=args.max_length, hidden=args.hidden, blocks=args.blocks,
                   heads=args.heads, dropout=args.dropout)
    # The fused kernel: the same Adam, in one pass over each parameter (the dense [V, D] table's
    # step costs a seventh of the unfused one's on the CPU).
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, fused=True)
    loss_fn = LossFunction(args, data, torch.Generator().manual_seed(args.seed))
    steps = num_training_steps(split.train, args.batch_size)
    history, best, best_state, best_epoch, waited, trained = [], -1.0, None, 0, 0, 0.0
    steps_done, interrupted = 0, False
    try:
        for epoch in range(1, args.epochs + 1):
            start = time.perf_counter()
            with progress_bar(steps, f"{args.loss} epoch {epoch}") as bar:
                for inputs, labels in training_batches(split.train, args.max_length, args.batch_size, rng):
                    loss = loss_fn(model, inputs, labels)
                    if not torch.isfinite(loss):
                        raise SampledSoftmaxError(f"the {args.loss} loss is {float(loss)} at epoch {epoch}: "
                                                  "training diverged (lower --lr)")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    steps_done += 1
                    bar.update()
                    bar.set_postfix_str(f"loss {loss.item():.4f} best ndcg@10 {max(best, 0):.4f}", refresh=False)
                    if args.seconds and trained + time.perf_counter() - start >= args.seconds:
                        break
            trained += time.perf_counter() - start
            metrics = evaluate(model, valid_histories, valid_targets, args.max_length)
            history.append({"epoch": epoch, "train_seconds": round(trained, 3), "loss": loss.item(),
                            **{f"valid_{k}": v for k, v in metrics.items()}})
            print(f"epoch {epoch}: {trained:.1f} s of training, valid ndcg@10 {metrics['ndcg@10']:.4f} "
                  f"hr@10 {metrics['hr@10']:.4f}", file=sys.stderr)
            if metrics["ndcg@10"] > best:
                best, best_state, best_epoch, waited = metrics["ndcg@10"], copy.deepcopy(model.state_dict()), epoch, 0
            else:
                waited += 1
            _write_json(getattr(args, "out", None), "progress.json", {"history": history, "best_epoch": best_epoch})
            if waited >= args.patience or (args.seconds and trained >= args.seconds):
                break
    except KeyboardInterrupt:  # Ctrl-C: the best epoch so far is tested and reported
        if best_state is None:
            raise
        interrupted = True
        print(f"interrupted: testing the best epoch so far ({best_epoch})", file=sys.stderr)
    model.load_state_dict(best_state)
    best_valid = next(h for h in history if h["epoch"] == best_epoch)
    test = evaluate(model, split.test_history, split.test_target, args.max_length)
    return {
        **{f"test_{k}": v for k, v in test.items()},
        **{k: v for k, v in best_valid.items() if k.startswith("valid_")},
        "epochs": len(history), "best_epoch": best_epoch, "train_seconds": round(trained, 3),
        "seconds_per_epoch": round(trained * steps / max(steps_done, 1), 3), "interrupted": interrupted,
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "loss": args.loss, "config": _config(args),
        "data": {"path": os.path.abspath(data.path), "format": data.format, "users": len(data.sequences),
                 "items": data.num_items, "interactions": data.num_interactions,
                 "valid_users": int(len(valid_users))},
        "history": history, "torch_threads": torch.get_num_threads(),
    }


def _write_json(folder: str | None, name: str, value) -> None:
    """``folder/name`` replaced whole (a reader never sees half a file); nothing without a folder."""
    if folder is None:
        return
    path = os.path.join(folder, name)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1)
    os.replace(path + ".tmp", path)


def _config(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("data", "out")}


def plot(results: list, path: str) -> str | None:
    """Validation NDCG@10 against training seconds, one line per result; None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(results):
        label = r.get("label", r["loss"])
        # Past the colour cycle's ten colours, dashed lines: no two lines look alike.
        ax.plot([h["train_seconds"] for h in r["history"]], [h["valid_ndcg@10"] for h in r["history"]],
                marker="o", markersize=3, linestyle="-" if i < 10 else "--", label=label)
    ax.set_xlabel("training seconds")
    ax.set_ylabel("validation NDCG@10")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--data", required=True, help="a `user item` or `user i1 i2 ...` file, users in time order")
    ap.add_argument("--loss", choices=LOSSES, default="sampled_softmax")
    ap.add_argument("--num-sampled", type=int, default=None,
                    help="negatives (default per loss: " + ", ".join(f"{k} {v}" for k, v in
                                                                   DEFAULT_NUM_SAMPLED.items()) + ")")
    ap.add_argument("--sampler", choices=SAMPLERS, default="popularity",
                    help="the negatives' distribution: popularity (the training split's counts, the default: with "
                         "the log Q correction it beat uniform on Beauty), uniform, or learned (the labels seen)")
    ap.add_argument("--popularity-power", type=float, default=1.0,
                    help="--sampler popularity draws item i with probability proportional to count_i ** power "
                         "(1: the counts; 0.5 flatter, word2vec's 0.75; above 1 more skewed), in (0, 4]")
    ap.add_argument("--no-log-q", action="store_true", help="do not subtract log Q (the sampling correction)")
    ap.add_argument("--negatives", choices=NEGATIVES, default=None,
                    help="negatives shared by the batch, by each user's sequence, or drawn per position "
                         "(default: batch for sampled_softmax and nce, position for negative_sampling and gbce)")
    ap.add_argument("--exclude-history", action="store_true",
                    help="remove each user's own items from its negatives")
    ap.add_argument("--exclude-true", action="store_true",
                    help="--loss sampled_softmax with the rejection estimator: the label is kept out of its "
                         "negatives and gets no log Q correction (TensorFlow's estimator corrects it as if it had "
                         "been drawn); the negatives are drawn with replacement")
    ap.add_argument("--gbce-t", type=float, default=0.75, help="gBCE's calibration t in [0, 1]")
    ap.add_argument("--epochs", type=int, default=100, help="at most this many epochs")
    ap.add_argument("--patience", type=int, default=10, help="epochs without a better validation NDCG@10")
    ap.add_argument("--seconds", type=float, default=None, help="stop training after this many seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-length", type=int, default=50, help="sequences cut to their last items")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--valid-users", type=int, default=10000, help="users sampled for validation (0: all)")
    ap.add_argument("--remap-ids", action="store_true", help="number arbitrary item ids 1..V in order of appearance")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", required=True, metavar="DIR", help="where results.json and valid_ndcg.png go")


def check_arguments(ap: argparse.ArgumentParser, args) -> None:
    check_at_least(ap, args, 1, "num_sampled", "epochs", "patience", "batch_size", "max_length", "hidden", "blocks",
                   "heads", "threads")
    check_at_least(ap, args, 0, "valid_users")
    check_positive_float(ap, args, "lr")
    if args.seconds is not None:
        check_positive_float(ap, args, "seconds")
    if not 0.0 <= args.dropout < 1.0:
        ap.error(f"--dropout must be in [0, 1); received {args.dropout}")
    if not (0.0 < args.popularity_power <= 4.0):
        ap.error(f"--popularity-power must be in (0, 4]; received {args.popularity_power}")
    if args.popularity_power != 1.0 and args.sampler != "popularity":
        ap.error(f"--popularity-power applies to --sampler popularity only; received --sampler {args.sampler}")
    if not 0.0 <= args.gbce_t <= 1.0:
        ap.error(f"--gbce-t must be in [0, 1]; received {args.gbce_t}")
    if args.hidden % args.heads:
        ap.error(f"--hidden ({args.hidden}) must be a multiple of --heads ({args.heads})")
    if args.loss in ("full", "in_batch"):
        for option, value in (("--num-sampled", args.num_sampled), ("--negatives", args.negatives)):
            if value is not None:
                ap.error(f"{option} does not apply to --loss {args.loss} (it draws no negatives)")
    if args.loss == "mixed" and args.negatives is not None:
        ap.error("--negatives does not apply to --loss mixed (its corpus negatives are shared by the batch)")
    if args.exclude_true and args.loss != "sampled_softmax":
        ap.error(f"--exclude-true applies to --loss sampled_softmax only; received --loss {args.loss}")
    if args.exclude_true and (args.exclude_history or args.no_log_q):
        ap.error("--exclude-true takes neither --exclude-history nor --no-log-q (its estimator is the log Q "
                 "correction of negatives drawn from the sampler alone)")
    if args.loss == "full" and args.exclude_history:
        ap.error("--exclude-history does not apply to --loss full (it has no negatives to remove from)")
    args.num_sampled = args.num_sampled or DEFAULT_NUM_SAMPLED.get(args.loss)
    args.negatives = args.negatives or DEFAULT_NEGATIVES.get(args.loss)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sampled-softmax seqrec", description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    args = ap.parse_args(argv)
    check_arguments(ap, args)
    try:  # before the training, not after it
        os.makedirs(args.out, exist_ok=True)
        probe = os.path.join(args.out, ".seqrec-write-check")
        with open(probe, "w", encoding="utf-8"):
            pass
        os.remove(probe)
    except OSError as e:
        ap.error(f"--out {args.out!r} cannot be written: {e.strerror}")
    try:
        data = read_interactions(args.data, remap_ids=args.remap_ids)
        if not any(len(seq) > 3 for seq in data.sequences):
            raise SampledSoftmaxError(f"--data {args.data}: no user has more than 3 interactions, so no training "
                                      "sequence has a next item to learn (the last two are the validation and test "
                                      "targets)")
        if args.num_sampled and args.loss != "full" and args.num_sampled >= data.num_items:
            raise SampledSoftmaxError(f"--num-sampled must be smaller than the catalogue ({data.num_items} items); "
                                      f"received {args.num_sampled}")
    except SampledSoftmaxError as e:
        ap.error(str(e))
    print(f"{data.path}: {len(data.sequences):,} users, {data.num_items:,} items, {data.num_interactions:,} "
          f"interactions ({data.format})", file=sys.stderr)
    results = train(data, args)
    _write_json(args.out, "results.json", results)
    path = os.path.join(args.out, "results.json")
    figure = plot([results], os.path.join(args.out, "valid_ndcg.png"))
    print(f"test hr@10 {results['test_hr@10']:.4f} ndcg@10 {results['test_ndcg@10']:.4f} "
          f"(best epoch {results['best_epoch']} of {results['epochs']}, {results['train_seconds']:.0f} s)")
    print(f"wrote {path}" + (f" and {figure}" if figure else ""))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
