"""Sampled softmax for PyTorch, TensorFlow, Keras 3 and JAX.

``import sampled_softmax`` loads NumPy only. Each front end imports its own framework:
``sampled_softmax.torch``, ``sampled_softmax.tensorflow``, ``sampled_softmax.keras``,
``sampled_softmax.jax``.
"""

from typing import Any, NamedTuple

from .order_check import VocabularyOrderWarning  # NumPy only

__version__ = "0.1.0"

__all__ = ["SampledValues", "MixedNegatives", "SampledSoftmaxError", "VocabularyOrderWarning", "__version__"]


class SampledValues(NamedTuple):
    """The triple a candidate sampler returns, as TensorFlow's ``*_candidate_sampler`` ops do.

    Attributes:
        sampled_candidates: ``[S]`` integer class ids shared by the whole batch.
        true_expected_count: ``[B, T]`` expected count of each true label under the sampler.
        sampled_expected_count: ``[S]`` expected count of each candidate. ``inf`` marks a
            padding slot (``draw="unique_exact"``): it is removed from every row's normalizer.
    """

    sampled_candidates: Any
    true_expected_count: Any
    sampled_expected_count: Any


class MixedNegatives(NamedTuple):
    """What every front end's ``mixed_negatives`` returns (Yang et al. 2020): the batch's
    candidates followed by ``M`` sampled ones, ready for ``in_batch_softmax_loss(query,
    **mixed._asdict())``.

    Attributes:
        candidates: ``[B + M, D]``.
        candidate_ids: ``[B + M]``.
        log_q: ``[B + M]``, each column's own log probability of being a candidate (in-batch: the
            frequency estimate; sampled: the draw's inclusion probability).
        score_mask: ``[B, B + M]`` bool, False on the padding slots of the draw (repeats).
    """

    candidates: Any
    candidate_ids: Any
    log_q: Any
    score_mask: Any


class SampledSoftmaxError(ValueError):
    """An argument had the wrong value or shape; the message names it, the expectation and
    what was received."""

    # TensorFlow's autograph re-raises an error from a traced function as its own type only when
    # that type's __init__ is Exception's (else a StagingError, which `except
    # SampledSoftmaxError` would miss); it takes the same arguments as ValueError's.
    __init__ = Exception.__init__
