"""PyTorch front end: ``sampled_softmax_loss``, ``full_softmax_loss``, the ``SampledSoftmax``
output layer (also ``SampledSoftmaxLoss``),
the candidate samplers as modules, ``SparseRowAdam`` and the fused table optimizers
(``RowSGD``, ``RowAdagrad``, ``RowAdam``) for training steps that do not grow with the vocabulary, and for retrieval ``in_batch_softmax_loss``, ``mixed_negatives`` and the
streaming frequency estimators. Imports PyTorch (and no other framework)."""

from .. import SampledSoftmaxError, SampledValues
from ._compiled import describe as compiled_core_status, extension as compiled_core, is_built as compiled_core_is_built
from ._dispatch import Route, explain as explain_route
from .functional import (
    full_logits, full_softmax_loss, gbce_loss, nce_loss, negative_sampling_loss, sampled_softmax_loss,
)
from .modules import SampledSoftmax, SampledSoftmaxLoss, SampledSoftmaxOutput
from .frequency import CountMinFrequency, StreamingFrequency
from .optim import LazyAdam, SparseRowAdam
from .table_optim import RowAdagrad, RowAdam, RowSGD, TableOptimizer
from .retrieval import MixedNegatives, in_batch_softmax_loss, mixed_negatives
from .samplers import (
    CandidateSampler, LearnedUnigramSampler, LogUniformSampler, UniformSampler, UnigramSampler,
)

__all__ = [
    "sampled_softmax_loss", "nce_loss", "negative_sampling_loss", "gbce_loss", "full_softmax_loss", "full_logits",
    "SampledSoftmax", "SampledSoftmaxLoss",
    "SampledSoftmaxOutput", "CandidateSampler", "UniformSampler", "LogUniformSampler",
    "UnigramSampler", "LearnedUnigramSampler", "SparseRowAdam", "LazyAdam", "SampledValues", "SampledSoftmaxError",
    "explain_route", "Route", "compiled_core", "compiled_core_status", "compiled_core_is_built",
    "in_batch_softmax_loss", "mixed_negatives", "MixedNegatives", "StreamingFrequency", "CountMinFrequency",
    "RowSGD", "RowAdagrad", "RowAdam", "TableOptimizer",
]
