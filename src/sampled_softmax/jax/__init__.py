"""``sampled_softmax.jax``: the sampled losses as pure JAX functions with explicit PRNG keys.

Losses (:mod:`.functional`): :func:`sampled_softmax_loss`, :func:`nce_loss`,
:func:`negative_sampling_loss`, :func:`gbce_loss`, :func:`full_softmax_loss`, :func:`full_logits`, and for retrieval
:func:`in_batch_softmax_loss`; the class table's optimizer fused into the step (:mod:`.table_optim`:
:func:`value_and_table_step` with :func:`row_sgd`, :func:`row_adagrad`, :func:`row_adam`); samplers
(:mod:`.samplers`): pure functions of a key. Everything compiles under ``jax.jit`` with static
``num_sampled`` / ``num_classes`` / ``num_true``, and works under ``jax.grad`` and ``jax.vmap``.
Importing this module imports JAX only.
"""

from . import samplers
from .table_optim import row_adagrad, row_adam, row_sgd, value_and_table_step
from .retrieval import in_batch_softmax_loss, mixed_negatives
from .functional import (
    candidate_columns, corrected_logits, full_logits, full_softmax_loss, gbce_loss, nce_loss, negative_sampling_loss,
    sampled_softmax_loss, sigmoid_head, softmax_head,
)

__all__ = [
    "sampled_softmax_loss", "nce_loss", "negative_sampling_loss", "gbce_loss", "full_softmax_loss", "full_logits",
    "candidate_columns", "corrected_logits", "softmax_head", "sigmoid_head", "samplers", "in_batch_softmax_loss", "mixed_negatives",
    "row_sgd", "row_adagrad", "row_adam", "value_and_table_step",
]
