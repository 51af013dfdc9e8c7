"""``VocabParallelSampledSoftmax``: :class:`~sampled_softmax.torch.SampledSoftmax` with its class
table sharded over the ranks of a process group (the losses: :mod:`.vocab_parallel`)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from ... import SampledSoftmaxError
from ... import _validation as V
from .._prepare import _compute_dtype
from ..modules import SampledSoftmaxOutput
from ..samplers import CandidateSampler, LearnedUnigramSampler, make_sampler
from ..table_optim import TableOptimizer, take_table
from ._group import _group, shard_range
from .data_parallel import DistributedLearnedUnigramSampler
from .vocab_parallel import vocab_parallel_full_softmax_loss, vocab_parallel_sampled_softmax_loss


class VocabParallelSampledSoftmax(torch.nn.Module):
    r""":class:`~sampled_softmax.torch.SampledSoftmax` with its class table sharded over the ranks
    of ``group``: the same arguments, defaults, initialisation, output and evaluation methods.

    Each rank holds ``weight [V_r, D]`` (and ``bias [V_r]``), rows
    ``shard_range(num_classes, rank, world)`` of the table, and only their optimizer state. In
    training mode, ``forward(input, target)`` is :func:`vocab_parallel_sampled_softmax_loss`; in
    eval mode the exact :func:`vocab_parallel_full_softmax_loss`. Input and target are the same on
    every rank (gather a data-parallel batch with ``all_gather_rows(h, sum_gradients=False)``).

    Args:
        in_features: ``D``. num_classes: ``V``. num_sampled: ``S``.
        group: process group (default: the world).
        sampler: ``"learned_unigram"`` (default, as :class:`~sampled_softmax.torch.SampledSoftmax`:
            a :class:`~sampled_softmax.torch.LearnedUnigramSampler`, whose counts stay equal on
            every rank since every rank sees the same labels), ``"log_uniform"``, ``"uniform"``
            or a sampler module.
        bias, remove_accidental_hits, sparse, reduction, ignore_index, label_smoothing,
        subtract_log_q: as :class:`~sampled_softmax.torch.SampledSoftmax` (``reduction="mean"``,
            ``ignore_index=-100``).
        num_true: labels per example (``target [..., T]``). Default 1.
        chunk_size: rows per chunk of the exact loss.
        table_optimizer: a fused row optimizer for this rank's shard, as for
            :class:`~sampled_softmax.torch.SampledSoftmax` (each rank updates its own rows).

    Shape:
        - input: ``[..., D]``; target: ``[...]`` or ``[..., T]``
        - output: ``[...]`` (the mean ``log p`` of the kept targets: sampled in training, exact in
          eval; without gradient); loss: scalar, or ``[...]`` for ``reduction="none"``

    :meth:`logits`, :meth:`log_prob` and :meth:`predict` gather every rank's logits (``O(N V)``:
    for evaluation), so every rank of the group must call them.
    """

    def __init__(self, in_features: int, num_classes: int, num_sampled: int, *, group=None,
                 sampler: str | CandidateSampler = "learned_unigram", bias: bool = True,
                 remove_accidental_hits: bool | None = None, sparse: bool = False, reduction: str = "mean",
                 ignore_index: int | None = -100, label_smoothing: float = 0.0, subtract_log_q: bool = True,
                 num_true: int = 1, chunk_size: int = 8192, table_optimizer: TableOptimizer | None = None,
                 device=None, dtype=None):
        super().__init__()
        self.in_features = V.check_positive_int("in_features", in_features)
        self.num_classes = V.check_positive_int("num_classes", num_classes)
        self.num_sampled = V.check_positive_int("num_sampled", num_sampled)
        self.num_true = V.check_positive_int("num_true", num_true)
        self.chunk_size = V.check_positive_int("chunk_size", chunk_size)
        # The output layers' shared settings (its one loss is the sampled softmax).
        settings = V.check_output_layer(reduction=reduction, label_smoothing=label_smoothing,
                                         remove_accidental_hits=remove_accidental_hits, ignore_index=ignore_index)
        self.reduction, self.label_smoothing = settings.reduction, settings.label_smoothing
        self.ignore_index, self.remove_accidental_hits = settings.ignore_index, settings.remove_accidental_hits
        self.subtract_log_q = bool(subtract_log_q)
        self.sparse = bool(sparse)
        if isinstance(sampler, str) and sampler == "learned_unigram":
            sampler = LearnedUnigramSampler(self.num_classes).to(device)  # its counts are this module's state
        if isinstance(sampler, DistributedLearnedUnigramSampler):
            raise SampledSoftmaxError(
                "`sampler` must not be a DistributedLearnedUnigramSampler here: every rank sees the same labels, so "
                "it would count them once per rank; use LearnedUnigramSampler (its counts stay equal on every rank)")
        self.sampler = make_sampler(sampler, self.num_classes)
        V.check_num_sampled(self.num_sampled, self.num_classes, unique=self.sampler.draw == "unique",
                            support=self.sampler.support)
        self.group = _group(group)
        self.rank, self.world_size = dist.get_rank(self.group), dist.get_world_size(self.group)
        self.start, rows = shard_range(self.num_classes, self.rank, self.world_size)
        factory = {"device": device, "dtype": dtype}
        self.weight = torch.nn.Parameter(torch.empty(rows, self.in_features, **factory))
        self.bias = torch.nn.Parameter(torch.empty(rows, **factory)) if bias else None
        self.reset_parameters()
        # Each rank's fused optimizer holds its own shard's state.
        self.table_optimizer = take_table(table_optimizer, self.weight, self.bias, shared=False, sparse=self.sparse)

    def reset_parameters(self) -> None:
        # SampledSoftmax's (nn.Linear's) initialisation, on this rank's rows.
        bound = 1.0 / math.sqrt(self.in_features)
        torch.nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            torch.nn.init.uniform_(self.bias, -bound, bound)

    @torch.no_grad()
    def load_full_table(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Copy this rank's rows of a full ``[V, D]`` table (and ``[V]`` bias)."""
        end = self.start + self.weight.shape[0]
        self.weight.copy_(weight[self.start:end])
        if self.bias is not None and bias is not None:
            self.bias.copy_(bias[self.start:end])

    def forward(self, input: torch.Tensor, target: torch.Tensor, *, generator=None,
                sampled_values=None) -> SampledSoftmaxOutput:
        common = dict(group=self.group, num_true=self.num_true, reduction=self.reduction,
                      ignore_index=self.ignore_index, label_smoothing=self.label_smoothing, return_log_prob=True)
        if self.training:
            loss, output = vocab_parallel_sampled_softmax_loss(
                self.weight, self.bias, target, input, self.num_sampled, self.num_classes,
                sampled_values=sampled_values, remove_accidental_hits=self.remove_accidental_hits,
                sampler=self.sampler, generator=generator, sparse=self.sparse, subtract_log_q=self.subtract_log_q,
                table_optimizer=self.table_optimizer, **common)
        else:
            loss, output = vocab_parallel_full_softmax_loss(self.weight, self.bias, target, input, self.num_classes,
                                                            chunk_size=self.chunk_size, **common)
        return SampledSoftmaxOutput(output, loss)

    def logits(self, input: torch.Tensor) -> torch.Tensor:
        """Exact logits ``[..., V]``: this rank's columns, all-gathered (every rank calls it)."""
        if input.dim() == 0 or input.shape[-1] != self.in_features:
            raise SampledSoftmaxError(f"`input` last dimension must be in_features={self.in_features}; received "
                                      f"shape {list(input.shape)}")
        cdt = _compute_dtype(input.dtype)
        local = torch.nn.functional.linear(input.to(cdt), self.weight.to(cdt),
                                           None if self.bias is None else self.bias.to(cdt))
        # all_gather takes equal sizes: every shard padded to the longest ("div": the first ones).
        longest = shard_range(self.num_classes, 0, self.world_size)[1]
        flat = local.reshape(-1, local.shape[-1])
        padded = torch.cat([flat, flat.new_zeros(flat.shape[0], longest - flat.shape[1])], 1).contiguous()
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded, group=self.group)
        rows = [shard_range(self.num_classes, p, self.world_size)[1] for p in range(self.world_size)]
        full = torch.cat([part[:, :r] for part, r in zip(parts, rows)], 1)
        return full.reshape(*input.shape[:-1], self.num_classes)

    def log_prob(self, input: torch.Tensor) -> torch.Tensor:
        """Exact log-probabilities over all classes, ``[..., V]`` (every rank calls it)."""
        return torch.log_softmax(self.logits(input), dim=-1)

    def predict(self, input: torch.Tensor) -> torch.Tensor:
        """The most likely class, ``[...]`` (every rank calls it)."""
        return self.logits(input).argmax(dim=-1)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, num_sampled={self.num_sampled}, "
                f"rows={self.start}..{self.start + self.weight.shape[0] - 1} (rank {self.rank} of {self.world_size}), "
                f"bias={self.bias is not None}, sparse={self.sparse}, reduction={self.reduction!r}")
