"""Argument handling of the PyTorch losses: types, shapes and values checked once, with the
shared messages of :mod:`sampled_softmax._validation`, before any route is chosen."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch

from .. import SampledSoftmaxError
from .. import _validation as V
from .samplers import check_ignore_index

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 inputs are computed (and their losses returned) in float32."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _shards(weights) -> list[torch.Tensor]:
    if isinstance(weights, torch.Tensor):
        return [weights]
    if isinstance(weights, (list, tuple)):
        for i, w in enumerate(weights):
            if not isinstance(w, torch.Tensor):
                raise TypeError(f"`weights[{i}]` must be a torch.Tensor; received {type(w).__name__}")
        return list(weights)
    raise TypeError(f"`weights` must be a torch.Tensor or a list of shards; received {type(weights).__name__}")


def _check_tensor(name, x, *, floating=None):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor; received {type(x).__name__}")
    if floating is True:
        V.check_floating_dtype(name, x.is_floating_point(), str(x.dtype))
    elif floating is False:
        V.check_integer_dtype(name, not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool, str(x.dtype))


class LossCall(NamedTuple):
    """One loss call as it was given (frozen): the head and every argument of the public
    function, by name. The public functions build it; the router and every route read it."""

    head: Any  # the _autograd head (softmax_head, sigmoid_head), None for the exact loss
    weights: Any
    biases: Any
    labels: Any
    inputs: Any
    num_sampled: Any
    num_classes: Any
    num_true: Any = 1
    sampled_values: Any = None
    remove_accidental_hits: Any = True
    sampler: Any = "log_uniform"
    reduction: Any = "none"
    ignore_index: Any = None
    label_smoothing: Any = 0.0
    generator: Any = None
    partition_strategy: Any = "div"
    subtract_log_q: Any = True
    sparse: Any = False
    return_log_prob: Any = False
    implementation: Any = "auto"
    exclude_true: Any = False
    noise: Any = "shared"
    group: Any = None  # the process group of a vocabulary-parallel call (the table sharded over it)
    table_optimizer: Any = None  # a fused table optimizer (table_optim.TableOptimizer), or None
    excluded_ids: Any = None  # [..., K] ids each row must not see as negatives, or None


class Prepared(NamedTuple):
    """A checked call: the call, its table (shards), its ``[N, T]`` labels and ``[N, D]``
    inputs, and the mask of kept labels (None when no label is ignored)."""

    call: LossCall
    shards: list
    biases: torch.Tensor | None
    y: torch.Tensor  # [N, T]
    h: torch.Tensor  # [N, D]
    lead: tuple  # the batch shape of the result
    num_classes: int
    offsets: tuple  # the first class of each shard (one table: empty)
    valid: torch.Tensor | None  # [N, T] kept labels
    label_smoothing: float


def _prepare(call: LossCall, *, check_values: bool = True) -> Prepared:
    """Validate ``call``'s tensors and settings. Without ``check_values`` (a traced call, which
    cannot read values) the labels are not read and ``valid`` is None."""
    weights, biases, labels, inputs = call.weights, call.biases, call.labels, call.inputs
    shards = _shards(weights)
    for i, w in enumerate(shards):
        _check_tensor("weights" if len(shards) == 1 else f"weights[{i}]", w, floating=True)
    _check_tensor("inputs", inputs, floating=True)
    _check_tensor("labels", labels, floating=False)
    strategy = call.partition_strategy
    bias_shards = None
    if isinstance(biases, (list, tuple)):  # shards, in the weights' layout (tf.nn accepts them)
        bias_shards = list(biases)
        if not bias_shards:
            raise SampledSoftmaxError("`biases` must be a [num_classes] tensor or a non-empty list of shards; "
                                      "received an empty list")
        for i, b in enumerate(bias_shards):
            _check_tensor(f"biases[{i}]", b, floating=True)
            if b.dim() != 1:
                raise SampledSoftmaxError(f"`biases[{i}]` must be 1-D; received shape {list(b.shape)}")
    elif biases is not None:
        _check_tensor("biases", biases, floating=True)
    V.check_choice("reduction", call.reduction, V.REDUCTIONS)
    check_ignore_index(call.ignore_index)
    label_smoothing = V.check_label_smoothing(call.label_smoothing)
    num_classes, dim = V.check_weights_shapes([tuple(w.shape) for w in shards], call.num_classes,
                                              inputs.shape[-1] if inputs.dim() else -1)
    V.check_choice("partition_strategy", strategy, V.PARTITION_STRATEGIES)
    if bias_shards is not None:
        V.shard_layout([b.shape[0] for b in bias_shards], num_classes, strategy, name="biases")
        # One [V] bias made from the shards; autograd hands each shard its part of the gradient.
        biases = _full_table(bias_shards, strategy)
    V.check_biases_shape(None if biases is None else tuple(biases.shape), num_classes)
    lead, num_true = V.resolve_label_shape(tuple(labels.shape), tuple(inputs.shape), call.num_true)
    offsets = ()
    if len(shards) > 1:
        offsets = tuple(V.shard_layout([w.shape[0] for w in shards], num_classes, strategy))
    n = math.prod(lead)
    y = labels.reshape(n, num_true)
    h = inputs.reshape(n, dim)
    valid = _check_label_values(y, num_classes, call.ignore_index) if check_values else None
    return Prepared(call, shards, biases, y, h, lead, num_classes, offsets, valid, label_smoothing)


def _check_label_values(y: torch.Tensor, num_classes: int, ignore_index) -> torch.Tensor | None:
    """Check ``y`` against ``[0, num_classes)``; return the ``[N, T]`` mask of kept labels, or
    None when no label is ignored (the fast path)."""
    valid = None
    if y.numel():
        lo, hi = _min_max(y)
        if ignore_index is not None and lo <= ignore_index <= hi:
            valid = y != ignore_index
            # Zero stands in for ignored labels: it is always in range.
            lo, hi = _min_max(torch.where(valid, y, 0))
        V.check_label_values(lo, hi, num_classes, ignore_index)
    return valid


def _min_max(x: torch.Tensor):
    """Smallest and largest value as Python numbers (one read-back)."""
    if x.device.type == "cpu":
        xn = _as_numpy_float(x) if x.is_floating_point() else x.numpy()
        return xn.min().item(), xn.max().item()
    return torch.stack(list(torch.aminmax(x))).tolist()


def _check_sampled_values(sampled_values, num_sampled, num_classes, y, valid, device):
    sampled_values = V.check_sampled_values_triple(sampled_values)
    cand, true_count, samp_count = (torch.as_tensor(v, device=device) for v in sampled_values)
    _check_tensor("sampled_values[0]", cand, floating=False)
    for name, count in (("sampled_values[1]", true_count), ("sampled_values[2]", samp_count)):
        if count.is_complex() or count.dtype == torch.bool:
            raise TypeError(f"`{name}` must have a real dtype; received {count.dtype}")
    n, t = y.shape
    V.check_sampled_values_shapes(tuple(cand.shape), tuple(true_count.shape), tuple(samp_count.shape),
                                  num_sampled, n, t)
    true_count = _true_count_rows(true_count, n, t)
    padded = False
    if cand.numel():
        tc = true_count if valid is None else torch.where(valid, true_count, 1.0)
        cand_lo, cand_hi = _min_max(cand)
        tc_lo, tc_hi = _min_max(tc) if tc.numel() else (1.0, 1.0)
        sc_lo, sc_hi = _min_max(samp_count)
        V.check_sampled_values_values(cand_lo, cand_hi, num_classes, tc_lo, tc_hi, sc_lo)
        padded = sc_hi == math.inf
    return cand.long(), true_count, samp_count, padded


_AUTOCAST_AVAILABLE: dict = {}


_is_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def _autocast_on(device_type: str) -> bool:
    available = _AUTOCAST_AVAILABLE.get(device_type)
    if available is None:  # asked once per device type: the answer costs a microsecond a call
        available = _AUTOCAST_AVAILABLE[device_type] = torch.amp.is_autocast_available(device_type)
    return available and torch.is_autocast_enabled(device_type)


def _check_sparse_bias(biases, sparse) -> None:
    if sparse and isinstance(biases, (list, tuple)) and len(biases) > 1:
        raise SampledSoftmaxError(
            "`biases` as a list of shards takes sparse=False (its gradient reaches the shards through "
            "their concatenation); with sparse=True pass one [num_classes] tensor")


def _check_not_transformed(inputs, weights) -> None:
    """torch.func transforms wrap tensors in ways the explicit backward and the NumPy-side
    column code cannot see through: say so instead of failing somewhere inside."""
    is_wrapped = _is_functorch_wrapped
    first = weights[0] if isinstance(weights, (list, tuple)) and weights else weights
    if (isinstance(inputs, torch.Tensor) and is_wrapped(inputs)) or (isinstance(first, torch.Tensor)
                                                                     and is_wrapped(first)):
        raise NotImplementedError(
            "sampled_softmax_loss does not run under torch.func transforms (grad, vjp, vmap, jacrev): its "
            "backward is an explicit autograd.Function. Use loss.backward() or torch.autograd.grad, and a "
            "loop or a larger batch instead of vmap")


def _check_labels_can_be_drawn(y, valid, true_count, sampler) -> None:
    """A label the sampler never draws has expected count 0 and corrected logit +inf, so its
    row's loss would be nan: raise instead, naming the label and the sampler."""
    zero = true_count == 0
    if valid is not None:
        zero &= valid
    if bool(zero.any()):
        label = int(y[zero][0])
        raise SampledSoftmaxError(
            f"`labels` contains {label}, which the sampler {sampler!r} gives probability 0 (a reserved id or a "
            f"zero count): its -log E correction would be +inf and its loss nan. Give the class a positive "
            f"count, pass it as ignore_index, or use subtract_log_q=False")


def _true_count_rows(true_count: torch.Tensor, n: int, t: int) -> torch.Tensor:
    """``true_expected_count`` as ``[N, T]``; ``[N, 1]`` is broadcast over the labels, as in TensorFlow."""
    if t > 1 and true_count.numel() == n:
        return true_count.reshape(n, 1).expand(n, t)
    return true_count.reshape(n, t)


def _as_numpy_float(x: torch.Tensor) -> np.ndarray:
    # NumPy has no bfloat16; float16 counts are widened too (their log feeds float32 logits).
    x = x.detach()
    return (x.float() if x.dtype in _LOW_PRECISION else x).numpy()


def _full_table(shards, strategy):
    if len(shards) == 1:
        return shards[0]
    if strategy == "div":
        return torch.cat(shards)
    n = len(shards)
    num_classes = sum(w.shape[0] for w in shards)
    ids = torch.arange(num_classes, device=shards[0].device)
    order = torch.cat([ids[p::n] for p in range(n)])  # class id of each row of cat(shards)
    return torch.cat(shards)[torch.argsort(order)]
