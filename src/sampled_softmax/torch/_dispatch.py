"""Which code runs a call: the one place that decides, with the reason for every choice.

The losses validate their arguments first (``implementation`` before anything else), then ask
here. Routes of the sampled loss:

* ``"compiled_draw"``: the compiled core draws the candidates (``uniform`` / ``log_uniform`` on
  the CPU) and computes the loss in one call;
* ``"compiled"``: the compiled core computes the loss from columns built in Python;
* ``"python"``: the autograd Function of :mod:`._autograd` (the reference; every device).

``SparseRowAdam`` has ``"compiled"`` (a sparse step on the CPU) and ``"python"``. GPU kernels
and vocabulary-parallel training will be further routes here. :func:`explain` gives the route
of a call with its reason; with the ``sampled_softmax`` logger at DEBUG each call logs it.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch

from .. import SampledSoftmaxError
from ..samplers import LOSSES, NOISE, DistributionKind
from . import _compiled
from .samplers import LearnedUnigramSampler, LogUniformSampler, UniformSampler, UnigramSampler

IMPLEMENTATIONS = ("auto", "compiled", "python")
ROUTES = ("compiled_draw", "compiled", "python")
log = logging.getLogger("sampled_softmax")

# The samplers the compiled core draws from itself (stateless, with a closed-form inverse CDF),
# by name and by class.
COMPILED_SAMPLERS = {"uniform": DistributionKind.uniform, "log_uniform": DistributionKind.log_uniform,
                     UniformSampler: DistributionKind.uniform, LogUniformSampler: DistributionKind.log_uniform,
                     UnigramSampler: DistributionKind.unigram, LearnedUnigramSampler: DistributionKind.learned_unigram}
_DTYPES = (torch.float32, torch.float64)


class Route(NamedTuple):
    """A route and why: ``name`` is one of :data:`ROUTES`; ``reason`` says why the faster
    routes were not taken (empty for the fastest)."""

    name: str
    reason: str


def loss_obstacle(device_type: str, num_shards: int, num_true: int, ignored: bool, label_smoothing: float,
                  dtypes: tuple, exclude_true: bool = False) -> str | None:
    """What keeps the compiled core from a loss call, or None. The rules, stated once.

    ``dtypes``: of inputs, weights and biases (None for no biases); ``ignored``: whether a
    label equals ``ignore_index``.
    """
    if device_type != "cpu":
        return f"it runs on the CPU; received inputs on {device_type}"
    if num_shards > 1:
        return "it takes one weight table, not shards"
    if num_true != 1:
        return f"it takes num_true=1; received {num_true}"
    if ignored:
        return "it takes no ignored labels (ignore_index present in labels)"
    if label_smoothing:
        return f"it takes label_smoothing=0; received {label_smoothing}"
    if exclude_true:
        return "it takes exclude_true=False (TensorFlow's estimator)"
    h, w, b = dtypes
    if h not in _DTYPES or w != h or (b is not None and b != h):
        return (f"it takes float32 or float64 inputs, weights and biases of one dtype; received "
                f"{h}, {w}, {b}")
    return None


def draw_obstacle(sampler, sampled_values) -> str | None:
    """What keeps the compiled core from drawing the candidates itself, or None."""
    if sampled_values is not None:
        return "the candidates are given (sampled_values)"
    if compiled_kind(sampler) is None:
        name = sampler if isinstance(sampler, str) else type(sampler).__name__
        return (f"it draws from 'uniform', 'log_uniform', UnigramSampler and LearnedUnigramSampler only; received "
                f"the sampler {name!r}")
    return None


def compiled_kind(sampler) -> DistributionKind | None:
    """The distribution the compiled core draws for ``sampler`` (a name or a sampler module), or None."""
    return COMPILED_SAMPLERS.get(sampler if isinstance(sampler, str) else type(sampler))


def adam_obstacle(p: torch.Tensor, grad: torch.Tensor, state: dict) -> str | None:
    """What keeps the compiled core from a ``SparseRowAdam`` sparse step, or None."""
    held = [p] + [v for v in state.values() if isinstance(v, torch.Tensor)]
    if p.device.type != "cpu":
        return f"it runs on the CPU; received a parameter on {p.device}"
    if p.dtype not in _DTYPES or any(t.dtype != p.dtype for t in held + [grad]):
        return (f"it takes float32 or float64 parameters, gradients and state of one dtype; received "
                f"{p.dtype} and a {grad.dtype} gradient")
    if not all(t.is_contiguous() for t in held):
        return "it takes a contiguous parameter and state"
    return None


def compiled(implementation: str, why: str | None):
    """The extension for a caller's ``implementation`` (one of :data:`IMPLEMENTATIONS`, already
    checked), or None for the Python route. ``why`` is the obstacle (None: none); with
    ``"compiled"`` an obstacle, or a failed build, is an error naming it."""
    if implementation == "python":
        return None
    ext = None if why else _compiled.extension()
    if ext is None and why is None:
        why = f"it could not be built ({_compiled.unavailable_reason()})"
    if why and implementation == "compiled":
        raise SampledSoftmaxError(f"`implementation='compiled'` cannot be used: {why}")
    return ext


def record(route: str, reason: str = "") -> None:
    """Log the route a call took (DEBUG; free when the logger is quieter)."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("sampled_softmax: route %s%s", route, f" ({reason})" if reason else "")


PER_EXAMPLE_COMPILED_ONLY = "it draws per-example noise for negative sampling only (the sigmoid head without log Q)"
TABLE_OPTIMIZER_PYTHON_ONLY = "with per-example noise a fused table_optimizer runs on the Python route"
EXCLUDED_IDS_PER_EXAMPLE = "with per-example noise, excluded_ids run on the Python route"
HEAD_PYTHON_ONLY = "it computes the softmax and sigmoid heads only (gBCE's runs on the Python route)"


def explain(weights, biases, labels, inputs, num_sampled, num_classes, num_true=1, sampled_values=None, *,
            sampler="log_uniform", ignore_index=None, label_smoothing=0.0, implementation="auto",
            loss="sampled_softmax", noise="shared", exclude_true=False, table_optimizer=None,
            excluded_ids=None) -> Route:
    """The route :func:`sampled_softmax_loss` (``loss="nce"``: :func:`nce_loss`;
    ``"negative_sampling"``: :func:`negative_sampling_loss`; ``"gbce"``: :func:`gbce_loss`; with
    ``noise``, ``table_optimizer`` and ``excluded_ids`` as they take them) takes for these arguments, and why. Per-example noise is drawn by its sampler: its routes are
    ``"compiled"`` and ``"python"``.

    Example:
        >>> import torch
        >>> from sampled_softmax.torch import explain_route
        >>> W, h, y = torch.randn(50, 4), torch.randn(3, 4), torch.tensor([1, 2, 3])
        >>> explain_route(W, None, y, h, 10, 50, implementation="python")
        Route(name='python', reason="implementation='python'")
    """
    from .._validation import check_choice

    check_choice("implementation", implementation, IMPLEMENTATIONS)
    check_choice("loss", loss, LOSSES + ("gbce",))
    check_choice("noise", noise, NOISE)
    if implementation == "python":
        return Route("python", "implementation='python'")
    shards = weights if isinstance(weights, (list, tuple)) else [weights]
    ignored = ignore_index is not None and bool((labels == ignore_index).any())
    why = loss_obstacle(inputs.device.type, len(shards), num_true, ignored, label_smoothing,
                        (inputs.dtype, shards[0].dtype, None if biases is None else biases.dtype), exclude_true)
    if why is None and loss == "gbce":
        why = HEAD_PYTHON_ONLY
    if why is None and table_optimizer is not None and noise == "per_example":
        why = TABLE_OPTIMIZER_PYTHON_ONLY
    if why is None and excluded_ids is not None and noise == "per_example":
        why = EXCLUDED_IDS_PER_EXAMPLE
    if why is None and noise == "per_example" and loss != "negative_sampling":
        why = PER_EXAMPLE_COMPILED_ONLY
    if compiled(implementation, why) is None:  # raises for implementation="compiled"
        why = why or f"it could not be built ({_compiled.unavailable_reason()})"
        return Route("python", f"the compiled core cannot be used: {why}")
    draw_why = draw_obstacle(sampler, sampled_values)
    if noise == "per_example":
        draw_why = "the noise of each example is drawn by its sampler (noise='per_example')"
    elif excluded_ids is not None:
        draw_why = "with excluded_ids the candidates are drawn in Python"
    if draw_why is not None:
        return Route("compiled", f"the compiled core computes the loss but does not draw: {draw_why}")
    return Route("compiled_draw", "")
