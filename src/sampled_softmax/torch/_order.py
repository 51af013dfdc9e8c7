"""The vocabulary-order check (:mod:`sampled_softmax.order_check`) on torch tensors: each
training call with the log-uniform sampler adds two sums over its labels, on their device; once
enough labels are in, one read to the host gives the verdict, after which nothing runs."""

from __future__ import annotations

import torch

from .. import order_check as OC
from .samplers import LogUniformSampler

REMEDY = ("use sampler='learned_unigram' (learns the label frequencies), a UnigramSampler with the label counts, "
          "or sampler='uniform'")


def device_counts(ids: torch.Tensor, num_classes: int) -> torch.Tensor:
    """:func:`sampled_softmax.order_check.label_counts` in torch ops, on the ids' device."""
    live = (ids >= 0) & (ids < num_classes)
    return torch.stack([live.sum(), (live & (ids >= OC.upper_half(num_classes))).sum()])


def uses_log_uniform(sampler, sampled_values) -> bool:
    return sampled_values is None and (type(sampler) is LogUniformSampler or (isinstance(sampler, str)
                                                                              and sampler == "log_uniform"))


def observe(labels, num_classes, front: str = "torch") -> None:
    """Count these labels for the check of ``(front, num_classes)`` (invalid arguments are left
    to the loss's own checks)."""
    if (not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int32, torch.int64)
            or isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
        return
    check = OC.order_check(front, num_classes, REMEDY)
    if not check.pending:
        return
    ids = labels.detach().reshape(-1)
    if ids.device.type == "cpu":  # NumPy's small-array operations cost a fraction of torch's
        check.observe(OC.label_counts(ids.numpy(), num_classes))
        return
    counts = device_counts(ids, num_classes)
    check.device_counts = counts if check.device_counts is None else check.device_counts + counts
    check.device_labels += ids.numel()
    if check.device_labels >= OC.LABELS_TO_CHECK:
        held, check.device_counts, check.device_labels = check.device_counts, None, 0
        check.observe(held.cpu().numpy())
