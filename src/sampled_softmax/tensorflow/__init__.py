"""TensorFlow front end: a drop-in for ``tf.nn.sampled_softmax_loss`` and the exact loss for
evaluation (:mod:`.nn`), candidate samplers that compile with XLA (:mod:`.samplers`), and for
retrieval the in-batch softmax and the streaming frequency estimators (:mod:`.retrieval`).
Imports TensorFlow (and no other framework).
"""

from .. import SampledSoftmaxError, SampledValues
from .nn import compute_accidental_hits, full_logits, full_softmax_loss, gbce_loss, nce_loss, sampled_softmax_loss
from .frequency import CountMinFrequency, StreamingFrequency
from .retrieval import in_batch_softmax_loss, mixed_negatives
from .samplers import (
    LearnedUnigramSampler, all_candidate_sampler, fixed_unigram_candidate_sampler, learned_unigram_candidate_sampler,
    log_uniform_candidate_sampler, uniform_candidate_sampler, unigram_candidate_sampler,
)

__all__ = [
    "sampled_softmax_loss", "nce_loss", "gbce_loss", "full_softmax_loss", "full_logits", "log_uniform_candidate_sampler",
    "uniform_candidate_sampler", "unigram_candidate_sampler", "all_candidate_sampler", "compute_accidental_hits",
    "fixed_unigram_candidate_sampler", "learned_unigram_candidate_sampler", "LearnedUnigramSampler", "SampledValues",
    "SampledSoftmaxError", "in_batch_softmax_loss", "mixed_negatives", "StreamingFrequency", "CountMinFrequency",
]
