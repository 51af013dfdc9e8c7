"""Does the vocabulary order fit the log-uniform sampler? A check every front end runs on the
labels of its first training steps, warning once when they contradict the sampler.

The log-uniform (Zipf) sampler gives id ``k`` the probability
``Q(k) = log((k + 2) / (k + 1)) / log(V + 1)``: it assumes ids sorted by decreasing frequency.
With such ids, the upper half of the id range (``k >= ceil(V / 2)``, the rarest half of the
vocabulary) holds few of the labels: 5-7% on PTB and WikiText-2 as distributed, at most 31% for
any Zipf law ``p(k) ∝ (k + 1)^-a`` with ``a >= 0.5`` (below 10% for ``a >= 1`` and ``V >= 1000``).
In alphabetical, random or first-occurrence order it holds about half: 44% and 60% for PTB and
WikiText-2 in alphabetical order, 37-56% in random orders. The check counts the labels of the
first :data:`LABELS_TO_CHECK` and warns (:class:`VocabularyOrderWarning`), once per process for
each front end and vocabulary size, when the upper half holds more than
:data:`UPPER_HALF_THRESHOLD` of them, naming the remedies. Counting is two sums over the labels
of the first steps, on their device (no host synchronisation), and one read of two numbers when
enough labels are seen; afterwards nothing runs, except that a JAX step jitted while the check
was pending keeps its ``jax.debug.callback`` (it returns at once; about 0.15 ms a step on this
machine, ``benchmarks/sampler_costs.py``), and a TensorFlow graph traced while it was pending
keeps a ``tf.cond`` on a flag that skips its callback (``benchmarks/tf_drop_in.py``). ``SAMPLED_SOFTMAX_ORDER_CHECK=0`` turns the check off.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings

import numpy as np

__all__ = ["VocabularyOrderWarning", "LABELS_TO_CHECK", "UPPER_HALF_THRESHOLD", "upper_half", "label_counts",
           "OrderCheck", "order_check", "reset"]

#: Labels counted before the verdict.
LABELS_TO_CHECK = 2048
#: Share of the labels in the upper half of the ids above which the order contradicts log-uniform.
UPPER_HALF_THRESHOLD = 0.3


class VocabularyOrderWarning(UserWarning):
    """The labels contradict the sampler's assumption about the order of the class ids."""


def upper_half(num_classes: int) -> int:
    """The first id of the upper half of ``0..V-1``: ``ceil(V / 2)``."""
    return (int(num_classes) + 1) // 2


def label_counts(ids, num_classes: int) -> np.ndarray:
    """``[labels in [0, V), of which in [ceil(V / 2), V)]`` (int64); others are not counted.

    >>> label_counts([0, 1, 2, 7, 9, -100], 10).tolist()
    [5, 2]
    """
    ids = np.asarray(ids).reshape(-1)
    live = (ids >= 0) & (ids < num_classes)
    return np.array([live.sum(), (live & (ids >= upper_half(num_classes))).sum()], np.int64)


def message(share: float, num_classes: int, remedy: str) -> str:
    return (f"The labels contradict the log-uniform sampler: it assumes class ids sorted by decreasing frequency "
            f"(id 0 the most frequent), but {100 * share:.0f}% of the labels of the first training steps are in the "
            f"upper half of the ids (ids >= {upper_half(num_classes)} of num_classes={num_classes}; a "
            f"frequency-sorted vocabulary puts well under {100 * UPPER_HALF_THRESHOLD:.0f}% there), as in an "
            f"alphabetical or random vocabulary order. Such a sampler can double the model's perplexity. Sort the "
            f"vocabulary by decreasing frequency, or {remedy}.")


class OrderCheck:
    """The label counts seen so far and the verdict once :data:`LABELS_TO_CHECK` labels are in.
    ``observe(counts)`` takes a step's :func:`label_counts`; ``pending`` is False once the
    verdict is given, ``share`` is then the upper half's share of the labels."""

    def __init__(self, num_classes: int, remedy: str):
        self.num_classes, self.remedy = int(num_classes), remedy
        self.counts = np.zeros(2, np.int64)
        self.pending = True
        self.share: float | None = None
        # A front end's counts not yet read back from its device, and how many labels they may hold.
        self.device_counts, self.device_labels = None, 0
        self._lock = threading.Lock()
        # What a front end must do when the check starts over (a TensorFlow graph's flag).
        self.on_reset: list = []

    def observe(self, counts) -> None:
        with self._lock:
            if not self.pending:
                return
            # [..., 2]: a callback under jax.vmap receives the counts of each mapped call.
            self.counts += np.asarray(counts, np.int64).reshape(-1, 2).sum(axis=0)
            if self.counts[0] < LABELS_TO_CHECK:
                return
            self.pending = False
            self.share = float(self.counts[1] / self.counts[0])
        if self.share > UPPER_HALF_THRESHOLD:
            warnings.warn(message(self.share, self.num_classes, self.remedy), VocabularyOrderWarning,
                          stacklevel=_user_stacklevel())

    def reset(self) -> None:
        with self._lock:
            self.counts[:] = 0
            self.pending, self.share = True, None
            self.device_counts, self.device_labels = None, 0
        for hook in self.on_reset:
            hook()


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # site-packages or src
_FRAMEWORKS = ("sampled_softmax", "torch", "keras", "jax", "jaxlib", "flax", "tensorflow", "optree", "tree")


def _user_stacklevel() -> int:
    """The ``stacklevel`` of the first caller outside this library and the frameworks (the
    user's training step), so that the warning names the user's line."""
    frame, level = sys._getframe(1), 1
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        inside = any(f"{os.sep}{name}{os.sep}" in path for name in _FRAMEWORKS) or path.startswith(
            os.path.join(_PACKAGE, "sampled_softmax"))
        if not inside:
            return level
        frame, level = frame.f_back, level + 1
    return 2


_CHECKS: dict[tuple[str, int], OrderCheck] = {}


def order_check(front: str, num_classes: int, remedy: str) -> OrderCheck:
    """The process-wide check of ``front`` (e.g. ``"torch"``) for this vocabulary size; with
    the environment variable ``SAMPLED_SOFTMAX_ORDER_CHECK=0``, a check already decided (nothing
    is counted: a jitted JAX step then carries no callback)."""
    if os.environ.get("SAMPLED_SOFTMAX_ORDER_CHECK", "1") == "0":
        off = OrderCheck(num_classes, remedy)
        off.pending = False
        return off
    key = (front, int(num_classes))
    check = _CHECKS.get(key)
    if check is None:
        check = _CHECKS.setdefault(key, OrderCheck(num_classes, remedy))
    return check


def reset() -> None:
    """Forget every verdict (tests; a new training run in the same process)."""
    for check in list(_CHECKS.values()):
        check.reset()
