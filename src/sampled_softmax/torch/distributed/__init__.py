r"""Past one process with ``torch.distributed`` (gloo on CPU, NCCL on GPU, started by ``torchrun``).

**Vocabulary-parallel sampled softmax** (:func:`vocab_parallel_sampled_softmax_loss`,
:class:`VocabParallelSampledSoftmax`). Rank ``r`` of the ``P`` ranks of ``group`` holds shard
``r`` of the class table in TensorFlow's ``"div"`` layout (:func:`shard_range`: the first
``V mod P`` shards one row longer), and only that shard's optimizer state. The hidden states
and labels are the same on every rank (as in Megatron's tensor parallelism; gather a
data-parallel batch first with ``all_gather_rows(h, sum_gradients=False)``). One call:

1. *Agreement* (one all-gather of 21 integers per rank): the loss (sampled or exact), the dtypes
   of inputs, shard and bias and the device type, ``num_sampled``, ``num_classes``, the shapes,
   checksums of the labels and of the inputs, ``reduction``, ``ignore_index``,
   ``label_smoothing``, ``remove_accidental_hits``, ``subtract_log_q``, whether and which
   ``sampled_values`` are given, and each rank's shard size; an argument a rank rejects, or one
   the ranks disagree on, is a :class:`~sampled_softmax.SampledSoftmaxError` raised on *every*
   rank (never a hang, nor gloo's abort, in a later collective). Only ``sparse``, ``generator``,
   ``sampler`` (rank 0's draw is used) and ``chunk_size`` may differ between ranks.
2. *Candidates*: every rank runs the sampler (so a learned sampler's counts stay equal on every
   rank: they all see the same labels) and rank 0's draw is broadcast, ``O(S + N T)`` numbers,
   so that all ranks use the same candidates whatever their generators. ``sampled_values`` given
   by the caller are used as they are and must agree (their checksum is compared).
3. *Corrected logits and the head*: each rank computes the corrected logits
   ``h . W_k + b_k - log E(k)`` of the columns whose class it owns (its candidates, ``S / P``
   on average, and the labels in its shard): ``O(N S D / P)`` work. As Megatron's exact
   vocabulary-parallel cross-entropy does over all classes, three all-reduces of ``O(N T)``
   numbers give every rank the labels' logits, the count and sum of the kept candidates'
   logits (for label smoothing), their max and their sum of exponentials, hence each row's
   log-sum-exp and loss: the loss of :func:`sampled_softmax_loss` (accidental hits and padding
   removed, ``ignore_index``, label smoothing).
4. *Backward*: ``d loss / d o`` of a rank's own columns follows from the log-sum-exp; each rank
   scatters them into its shard (row-sparse with ``sparse=True``) and the input gradient is one
   all-reduce (sum) of ``[N, D]``.

Bytes per rank and call (``_traffic.vocab_parallel_bytes``): 168 for the agreement,
``8 (1 + 2 S + N T)`` for rank 0's draw, ``4 N (T + 4)`` in the head's all-reduces and ``4 N D`` for
the input gradient (float32): never ``O(N V)``, never the table, and of Megatron's exact loss
(``4 N (3 + D)``, ``_traffic.megatron_exact_bytes``) but for the draw.
:func:`vocab_parallel_full_softmax_loss` is the exact loss for evaluation (running
max and sum of exponentials over chunks of the local shard, then an all-reduce of ``O(N T)``).

**Data parallel with row-sparse tables**: ``DistributedDataParallel`` rejects the row-sparse
gradients of ``SampledSoftmax(sparse=True)`` ("Cannot access storage of SparseTensorImpl": it
expects sparse gradients only from ``nn.Embedding``). :func:`all_reduce_gradients` is its
replacement: after ``backward``, the average over ranks of every gradient, dense ones by
all-reduce, row-sparse ones by all-gathering their indices and values.
:func:`all_reduce_buffers` averages buffers that are sums (a learned sampler's counts).

**Negatives across ranks** for in-batch retrieval: :func:`gather_negatives` gathers every
rank's candidate embeddings (differentiably), ids and ``log_q``, the rank's own first, so that
``in_batch_softmax_loss(query, *gather_negatives(...))`` sees the global batch as negatives with
each query's positive still at its own column.
"""

from __future__ import annotations

from ._group import shard_range
from ._traffic import CollectiveBytes, megatron_exact_bytes, vocab_parallel_bytes  # noqa: F401
from .data_parallel import DistributedLearnedUnigramSampler, all_reduce_buffers, all_reduce_gradients
from .negatives import GatheredNegatives, all_gather_rows, gather_negatives
from .layer import VocabParallelSampledSoftmax
from .vocab_parallel import vocab_parallel_full_softmax_loss, vocab_parallel_sampled_softmax_loss

__all__ = [
    "shard_range", "vocab_parallel_sampled_softmax_loss", "vocab_parallel_full_softmax_loss",
    "VocabParallelSampledSoftmax", "all_gather_rows", "gather_negatives", "GatheredNegatives",
    "all_reduce_gradients", "all_reduce_buffers", "DistributedLearnedUnigramSampler",
]
# Traffic accounting (CollectiveBytes, vocab_parallel_bytes, megatron_exact_bytes) stays importable
# from here for the benchmarks; it is measurement, not training API, and is left out of __all__.
