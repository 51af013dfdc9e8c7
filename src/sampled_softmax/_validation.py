"""Argument checks shared by every front end.

Each check takes plain Python values (ints, shape tuples, dtype names), so the PyTorch,
TensorFlow and Keras front ends raise the same errors with the same messages. Every message
names the argument, what was expected and what was received.
"""

from __future__ import annotations

import math
from typing import Iterable, NamedTuple, Sequence

from . import SampledSoftmaxError

REDUCTIONS = ("none", "mean", "sum")
PARTITION_STRATEGIES = ("div", "mod")


def check_choice(name: str, value, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise SampledSoftmaxError(
            f"`{name}` must be one of {', '.join(repr(c) for c in choices)}; received {value!r}"
        )
    return value


def check_bool(name: str, value) -> bool:
    """``value`` as a bool: True or False (a NumPy bool too), nothing else."""
    if type(value).__name__ not in ("bool", "bool_"):
        raise TypeError(f"`{name}` must be True or False; received {value!r}")
    return bool(value)


def exclusion_error(num_sampled: int, row: int | None = None, total: float | None = None) -> str:
    """The message for ``exclude_true`` given expected counts whose labels' ``Q_i >= 1`` (the
    row and its ``Q`` where known)."""
    which = "a row's labels have" if row is None else f"row {row}'s labels have"
    value = "" if total is None else f" = {total:.6g}"
    return (f"`exclude_true=True` needs the expected counts of {num_sampled} draws with replacement (E = S q): "
            f"{which} total probability Q = sum E / S{value} >= 1")


def check_exclusion_counts(y, valid, cand, true_count, samp_count) -> None:
    """``exclude_true`` with given NumPy ``sampled_values``: every row with a candidate left
    after rejection has ``Q_i = sum E / S < 1`` over its distinct kept labels."""
    import numpy as np

    y, valid, cand = np.asarray(y), np.asarray(valid, bool), np.asarray(cand).reshape(-1)
    s = cand.size
    tc = np.broadcast_to(np.asarray(true_count, np.float64).reshape(y.shape[0], -1), y.shape)
    earlier = np.tril(np.ones((y.shape[1], y.shape[1]), bool), -1)
    repeated = ((y[:, :, None] == y[:, None, :]) & valid[:, None, :] & earlier).any(axis=2)
    Q = np.where(valid & ~repeated, tc / s, 0.0).sum(axis=1)
    hits = ((cand[None, None, :] == y[:, :, None]) & valid[:, :, None]).any(axis=1)
    left = (~hits & np.isfinite(np.asarray(samp_count, np.float64).reshape(-1))[None, :]).sum(axis=1)
    bad = np.nonzero((Q >= 1.0) & (left > 0))[0]
    if bad.size:
        raise SampledSoftmaxError(exclusion_error(s, int(bad[0]), float(Q[bad[0]])))


def check_number(name: str, value, *, positive: bool) -> float:
    """A finite real number, ``> 0`` (``positive``) or ``>= 0``, as a float (an optimizer's rate,
    epsilon, betas)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number; received {type(value).__name__}")
    value = float(value)
    if not ((value > 0 if positive else value >= 0) and math.isfinite(value)):
        raise SampledSoftmaxError(f"`{name}` must be {'positive' if positive else '>= 0'} and finite; received {value}")
    return value


def check_positive_int(name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        raise TypeError(f"`{name}` must be an int; received bool")
    if not isinstance(value, int):
        # numpy / framework integer scalars are accepted through __index__.
        try:
            value = value.__index__()
        except (AttributeError, TypeError):
            raise TypeError(f"`{name}` must be an int; received {type(value).__name__}") from None
    if value < minimum:
        raise SampledSoftmaxError(f"`{name}` must be >= {minimum}; received {value}")
    return value


def check_num_sampled(num_sampled, num_classes: int, *, unique: bool, support: int | None = None):
    """``unique`` draws need ``num_sampled`` distinct classes of non-zero probability."""
    num_sampled = check_positive_int("num_sampled", num_sampled)
    if unique:
        available = num_classes if support is None else support
        if num_sampled > available:
            what = "num_classes" if available == num_classes else "classes with non-zero probability"
            raise SampledSoftmaxError(
                f"`num_sampled` must be <= {available} ({what}) when drawing unique candidates; "
                f"received {num_sampled}"
            )
    return num_sampled


def check_label_smoothing(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`label_smoothing` must be a float; received {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:  # also nan (every comparison with nan is False)
        raise SampledSoftmaxError(f"`label_smoothing` must be in [0, 1]; received {value}")
    return float(value)


def check_integer_dtype(name: str, is_integer: bool, dtype_name: str) -> None:
    if not is_integer:
        raise TypeError(f"`{name}` must have an integer dtype; received {dtype_name}")


def check_floating_dtype(name: str, is_floating: bool, dtype_name: str) -> None:
    if not is_floating:
        raise TypeError(f"`{name}` must have a floating dtype; received {dtype_name}")


def resolve_label_shape(
    labels_shape: Sequence[int], inputs_shape: Sequence[int], num_true
) -> tuple[tuple[int, ...], int]:
    """Leading shape and ``num_true`` from ``labels [...]`` or ``[..., T]`` and ``inputs [..., D]``."""
    num_true = check_positive_int("num_true", num_true)
    labels_shape, inputs_shape = tuple(labels_shape), tuple(inputs_shape)
    if len(inputs_shape) < 1:
        raise SampledSoftmaxError(f"`inputs` must have shape [..., dim]; received shape {list(inputs_shape)}")
    lead = inputs_shape[:-1]
    if labels_shape == lead:
        if num_true != 1:
            raise SampledSoftmaxError(
                f"`labels` must have shape {list(lead) + [num_true]} for num_true={num_true}; "
                f"received shape {list(labels_shape)}"
            )
        return lead, 1
    if labels_shape[:-1] == lead and len(labels_shape) == len(inputs_shape):
        if labels_shape[-1] != num_true:
            raise SampledSoftmaxError(
                f"`labels` last dimension must equal num_true={num_true}; "
                f"received shape {list(labels_shape)}"
            )
        return lead, num_true
    raise SampledSoftmaxError(
        f"`labels` must have shape {list(lead)} or {list(lead) + [num_true]} to match `inputs` of "
        f"shape {list(inputs_shape)}; received shape {list(labels_shape)}"
    )


def shard_layout(shard_rows: Sequence[int], num_classes: int, strategy: str, *, name: str = "weights") -> list[int]:
    """Check shard row counts against TensorFlow's layout; return each shard's first class id
    (``div``) or the shard count repeated (``mod``, where shard ``p`` holds ids ``p, p+n, ...``)."""
    check_choice("partition_strategy", strategy, PARTITION_STRATEGIES)
    n = len(shard_rows)
    base, extra = divmod(num_classes, n)
    expected = [base + 1 if p < extra else base for p in range(n)]
    if list(shard_rows) != expected:
        raise SampledSoftmaxError(
            f"`{name}` shards must have {expected} rows for num_classes={num_classes} in {n} "
            f"shards (TensorFlow's {strategy!r} layout); received {list(shard_rows)}"
        )
    offsets, start = [], 0
    for rows in shard_rows:
        offsets.append(start)
        start += rows
    return offsets


def check_weights_shapes(
    shard_shapes: Sequence[Sequence[int]], num_classes, inputs_dim: int
) -> tuple[int, int]:
    """``weights`` shards are ``[rows, D]`` with one ``D`` equal to ``inputs``' last dim and
    rows summing to ``num_classes``. Returns ``(num_classes, dim)``."""
    if len(shard_shapes) == 0:
        raise SampledSoftmaxError("`weights` must be a [num_classes, dim] tensor or a non-empty list of shards; received an empty list")
    for i, shape in enumerate(shard_shapes):
        if len(shape) != 2:
            what = "`weights`" if len(shard_shapes) == 1 else f"`weights[{i}]`"
            raise SampledSoftmaxError(f"{what} must have shape [num_classes, dim]; received shape {list(shape)}")
    dims = [shape[1] for shape in shard_shapes]
    if len(set(dims)) != 1:
        raise SampledSoftmaxError(f"`weights` shards must all have the same dim; received dims {dims}")
    dim = dims[0]
    if dim != inputs_dim:
        raise SampledSoftmaxError(
            f"`inputs` last dimension must equal the weights' dim {dim}; received {inputs_dim}"
        )
    rows = sum(shape[0] for shape in shard_shapes)
    if num_classes is not None:
        num_classes = check_positive_int("num_classes", num_classes)
        if rows != num_classes:
            raise SampledSoftmaxError(
                f"`num_classes` must equal the number of rows of `weights` ({rows}); received {num_classes}"
            )
    return rows, dim


def check_biases_shape(biases_shape: Sequence[int] | None, num_classes: int) -> None:
    if biases_shape is not None and tuple(biases_shape) != (num_classes,):
        raise SampledSoftmaxError(
            f"`biases` must have shape [{num_classes}]; received shape {list(biases_shape)}"
        )


def check_label_values(lo: int, hi: int, num_classes: int, ignore_index) -> None:
    """``lo``/``hi``: the smallest and largest label other than ``ignore_index`` (None if none)."""
    if lo is None:
        return
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        extra = "" if ignore_index is None else f" (or ignore_index={ignore_index})"
        side = "down to" if lo < 0 else "up to"
        raise SampledSoftmaxError(
            f"`labels` must be in [0, {num_classes - 1}]{extra}; received values {side} {bad}"
        )


def check_sampled_values_shapes(
    candidates_shape, true_count_shape, sampled_count_shape, num_sampled, lead_size: int, num_true: int
) -> None:
    s = [num_sampled] if num_sampled is not None else None
    if len(candidates_shape) != 1 or (s is not None and list(candidates_shape) != s):
        raise SampledSoftmaxError(
            f"`sampled_values[0]` (sampled_candidates) must have shape {s or '[num_sampled]'}; "
            f"received shape {list(candidates_shape)}"
        )
    if list(sampled_count_shape) != list(candidates_shape):
        raise SampledSoftmaxError(
            f"`sampled_values[2]` (sampled_expected_count) must have shape {list(candidates_shape)}; "
            f"received shape {list(sampled_count_shape)}"
        )
    # [batch, 1] is broadcast over num_true labels, as TensorFlow does.
    if list(true_count_shape) not in ([lead_size, num_true], [lead_size, 1]) and not (
        num_true == 1 and list(true_count_shape) == [lead_size]
    ):
        also = f" or [{lead_size}, 1]" if num_true > 1 else ""
        raise SampledSoftmaxError(
            f"`sampled_values[1]` (true_expected_count) must have shape [{lead_size}, {num_true}] "
            f"(batch, num_true){also}; received shape {list(true_count_shape)}"
        )


def check_sampled_values_values(
    cand_lo: int, cand_hi: int, num_classes: int, true_count_min: float, true_count_max: float,
    sampled_count_min: float,
) -> None:
    if cand_lo is not None and (cand_lo < 0 or cand_hi >= num_classes):
        bad = cand_lo if cand_lo < 0 else cand_hi
        raise SampledSoftmaxError(
            f"`sampled_values[0]` (sampled_candidates) must be in [0, {num_classes - 1}]; received {bad}"
        )
    if true_count_min is not None and not (true_count_min > 0 and math.isfinite(true_count_max)):
        bad = true_count_min if not true_count_min > 0 else true_count_max
        raise SampledSoftmaxError(
            f"`sampled_values[1]` (true_expected_count) must be positive and finite; received {bad}"
        )
    if sampled_count_min is not None and not sampled_count_min > 0:
        raise SampledSoftmaxError(
            f"`sampled_values[2]` (sampled_expected_count) must be positive (inf marks a padding "
            f"slot); received {sampled_count_min}"
        )


def check_sampled_values_triple(sampled_values) -> tuple:
    """``sampled_values`` is a 3-sequence; returns it as a tuple."""
    if not isinstance(sampled_values, (tuple, list)) or len(sampled_values) != 3:
        raise SampledSoftmaxError(
            "`sampled_values` must be a triple (sampled_candidates, true_expected_count, "
            f"sampled_expected_count); received {type(sampled_values).__name__}"
            + (f" of length {len(sampled_values)}" if isinstance(sampled_values, (tuple, list)) else "")
        )
    return tuple(sampled_values)


def check_sampled_values_numpy(cand, true_count, samp_count, *, num_sampled, num_classes: int, lead_size: int,
                               num_true: int, valid=None) -> None:
    """The checks of ``sampled_values`` for front ends that can see them as NumPy arrays (the
    reference, eager TensorFlow and Keras): dtype, shapes, values. ``valid`` masks ignored labels,
    whose expected counts are unused."""
    import numpy as np

    cand, true_count, samp_count = (np.asarray(v) for v in (cand, true_count, samp_count))
    check_integer_dtype("sampled_values[0]", np.issubdtype(cand.dtype, np.integer), str(cand.dtype))
    check_sampled_values_shapes(cand.shape, true_count.shape, samp_count.shape, num_sampled, lead_size, num_true)
    if cand.size == 0:
        return
    tc = true_count.astype(np.float64)
    tc = np.broadcast_to(tc.reshape(-1, 1), (lead_size, num_true)) if tc.size == lead_size else tc.reshape(
        lead_size, num_true)
    if valid is not None:
        tc = np.where(valid, tc, 1.0)
    sc = samp_count.astype(np.float64)
    check_sampled_values_values(int(cand.min()), int(cand.max()), num_classes,
                                float(tc.min()) if tc.size else None, float(tc.max()) if tc.size else None,
                                float(sc.min()))


# ---------------------------------------------------------------------------------------------
# In-batch (retrieval) softmax


def check_mixed_negatives_counts(largest_finite: float | None) -> None:
    """``mixed_negatives``: the draw's finite expected counts are inclusion probabilities, at most 1
    (``largest_finite``: the largest, None when there is none)."""
    if largest_finite is not None and largest_finite > 1.0:
        raise SampledSoftmaxError(
            f"`sampled_values[2]` (sampled_expected_count) must be at most 1 for mixed negatives (an inclusion "
            f"probability); received {largest_finite} (draw with draw='unique_exact': unique draws report S p "
            f"when no draw repeats, and draws with replacement S p)")


def div_shard(num_classes: int, index: int, num_shards: int) -> tuple[int, int]:
    """``(first class id, rows)`` of shard ``index`` of ``num_shards`` in TensorFlow's ``"div"``
    layout: the first ``num_classes % num_shards`` shards hold one row more. The one statement of
    the layout for every front end."""
    base, extra = divmod(num_classes, num_shards)
    return index * base + min(index, extra), base + (1 if index < extra else 0)


def check_in_batch_shapes(query_shape: Sequence[int], candidates_shape: Sequence[int], *, candidate_ids=None,
                          query_ids=None, log_q=None, score_mask=None, excluded_ids=None,
                          sample_weight=None) -> tuple[int, int, int]:
    """Shapes of an in-batch softmax call (each optional argument given as its shape, or None):
    ``query [B, D]``, ``candidates [C, D]`` with ``C >= B``, ``candidate_ids`` and ``log_q``
    ``[C]``, ``query_ids`` and ``sample_weight`` ``[B]``, ``score_mask [B, C]``,
    ``excluded_ids [B, K]``. Returns ``(B, C, D)``."""
    query_shape, candidates_shape = list(query_shape), list(candidates_shape)
    if len(query_shape) != 2:
        raise SampledSoftmaxError(f"`query` must have shape [batch, dim]; received shape {query_shape}")
    if len(candidates_shape) != 2:
        raise SampledSoftmaxError(f"`candidates` must have shape [num_candidates, dim]; received shape "
                                  f"{candidates_shape}")
    # A dimension may be None (unknown until run, a tf.function's input_signature): it is
    # compared where both sides are known.
    (b, d), (c, dc) = query_shape, candidates_shape

    def differ(x, y):
        return x is not None and y is not None and x != y

    if differ(dc, d):
        raise SampledSoftmaxError(f"`candidates` last dimension must equal the query's dim {d}; received {dc}")
    if b is not None and c is not None and c < b:
        raise SampledSoftmaxError(f"`candidates` must have at least as many rows as `query` ({b}: candidate i is "
                                  f"query i's positive); received {c}")
    for name, shape, want in (("candidate_ids", candidate_ids, [c]), ("log_q", log_q, [c]),
                              ("query_ids", query_ids, [b]), ("sample_weight", sample_weight, [b]),
                              ("score_mask", score_mask, [b, c])):
        if shape is not None and (len(shape) != len(want) or any(differ(x, y) for x, y in zip(shape, want))):
            raise SampledSoftmaxError(f"`{name}` must have shape {want}; received shape {list(shape)}")
    if excluded_ids is not None and (len(excluded_ids) != 2 or differ(excluded_ids[0], b)):
        raise SampledSoftmaxError(f"`excluded_ids` must have shape [{b}, K] (per query, K ids; negative values are "
                                  f"padding); received shape {list(excluded_ids)}")
    return b, c, d


def check_temperature(value) -> float:
    """A Python temperature: a positive finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`temperature` must be a number or a scalar tensor; received {type(value).__name__}")
    value = float(value)
    check_temperature_value(value)
    return value


def check_temperature_value(value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise SampledSoftmaxError(f"`temperature` must be positive and finite; received {value}")


def check_num_hard_negatives(value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`num_hard_negatives` must be an int or None; received {type(value).__name__}")
    if value < 1:
        raise SampledSoftmaxError(f"`num_hard_negatives` must be >= 1 (or None: every negative); received {value}")
    return value


def check_log_q_values(lo: float, hi: float, finite: bool) -> None:
    """``log_q`` is the log of a probability: finite and ``<= 0``."""
    if not finite:
        raise SampledSoftmaxError("`log_q` must be finite (the log of a sampling probability); received a "
                                  "non-finite value")
    if hi > 0:
        raise SampledSoftmaxError(f"`log_q` must be <= 0 (the log of a sampling probability); received {hi}")


def check_sample_weight_values(lo: float, finite: bool) -> None:
    if not finite or lo < 0:
        raise SampledSoftmaxError(f"`sample_weight` must be finite and >= 0; received "
                                  f"{'a non-finite value' if not finite else lo}")


def check_mixed_negatives_shapes(candidates_shape, ids_shape, log_q_shape, sampled_shape=None,
                                 count_shape=None) -> tuple[int, int]:
    """``mixed_negatives``: ``candidates [B, D]``, ``candidate_ids`` and ``in_batch_log_q`` ``[B]``,
    a draw of ``M`` candidates with ``M`` expected counts. Returns ``(B, D)``."""
    candidates_shape = list(candidates_shape)
    if len(candidates_shape) != 2:
        raise SampledSoftmaxError(f"`candidates` must have shape [batch, dim]; received shape {candidates_shape}")
    b, d = candidates_shape
    for name, shape in (("candidate_ids", ids_shape), ("in_batch_log_q", log_q_shape)):
        if list(shape) != [b]:
            raise SampledSoftmaxError(f"`{name}` must have shape [{b}]; received shape {list(shape)}")
    if sampled_shape is not None and (len(sampled_shape) != 1 or list(count_shape) != list(sampled_shape)):
        raise SampledSoftmaxError(f"`sampled_values` must hold candidates [M] and their expected counts [M]; received "
                                  f"shapes {list(sampled_shape)} and {list(count_shape)}")
    return b, d


def check_encoded_shape(shape, num: int, dim: int) -> None:
    """``encode(ids)`` of ``mixed_negatives`` returns ``[M, D]`` embeddings."""
    if shape is None or list(shape) != [num, dim]:
        raise SampledSoftmaxError(f"`encode` must return [{num}, {dim}] embeddings; received {shape}")


# ---------------------------------------------------------------------------------------------
# Messages and settings shared by the front ends' retrieval losses and output layers


EXCLUDED_NEEDS_CANDIDATE_IDS = "`excluded_ids` needs `candidate_ids` (the ids to compare them with)"


def temperature_shape_error(kind: str, shape, dtype) -> SampledSoftmaxError:
    """A ``temperature`` given as a tensor that is not a floating scalar (``kind``: "tensor" or
    "array")."""
    return SampledSoftmaxError(f"`temperature` must be a number or a floating scalar {kind}; received shape "
                               f"{list(shape)}, {dtype}")


class OutputLayerSettings(NamedTuple):
    """The settings every output layer shares, checked (:func:`check_output_layer`)."""

    loss: str
    reduction: str
    label_smoothing: float
    remove_accidental_hits: bool
    ignore_index: int | None
    exclude_true: bool
    noise: str


def check_output_layer(*, loss: str = "sampled_softmax", reduction: str = "mean", label_smoothing=0.0,
                       remove_accidental_hits=None, ignore_index=-100, exclude_true=False,
                       noise: str = "shared") -> OutputLayerSettings:
    """The arguments of an output layer that every front end's takes (PyTorch's and the
    vocabulary-parallel ``SampledSoftmax``, Keras's, Flax's), with their one default each:
    ``remove_accidental_hits=None`` is the loss's own (True for the sampled softmax, False for
    NCE and negative sampling, as ``tf.nn.nce_loss``); ``label_smoothing`` and ``exclude_true``
    need the softmax."""
    from .samplers import LOSSES, NOISE

    loss = check_choice("loss", loss, LOSSES)
    reduction = check_choice("reduction", reduction, REDUCTIONS)
    label_smoothing = check_label_smoothing(label_smoothing)
    if loss != "sampled_softmax" and label_smoothing:
        raise SampledSoftmaxError(f"`label_smoothing` must be 0 with loss={loss!r} (a sum of logistic losses has no "
                                  f"softmax to smooth); received {label_smoothing}")
    remove_accidental_hits = check_bool("remove_accidental_hits", loss == "sampled_softmax"
                                        if remove_accidental_hits is None else remove_accidental_hits)
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise TypeError(f"`ignore_index` must be an int or None; received {type(ignore_index).__name__}")
    exclude_true = check_bool("exclude_true", exclude_true)
    if exclude_true and loss != "sampled_softmax":
        raise SampledSoftmaxError(f"`exclude_true=True` is an estimator of the softmax normalizer: it needs "
                                  f"loss='sampled_softmax'; received {loss!r}")
    noise = check_choice("noise", noise, NOISE)
    return OutputLayerSettings(loss, reduction, label_smoothing, remove_accidental_hits, ignore_index, exclude_true,
                               noise)


def check_exclusion_draw(draw: str) -> None:
    """``exclude_true=True`` on a layer that draws by name: its draws must be with replacement."""
    if draw != "with_replacement":
        raise SampledSoftmaxError(f"`draw` must be 'with_replacement' with exclude_true=True (the estimator needs "
                                  f"expected counts S q); received {draw!r}")


def check_excluded_ids_shape(shape: Sequence[int], lead: Sequence[int]) -> None:
    """``excluded_ids`` of a sampled loss: ``[..., K]``, its batch shape that of ``inputs``."""
    shape, lead = list(shape), list(lead)
    if len(shape) != len(lead) + 1 or shape[:-1] != lead:
        raise SampledSoftmaxError(f"`excluded_ids` must have shape {lead + ['K']} (the batch shape of `inputs`, then "
                                  f"the ids each row must not see as negatives); received shape {shape}")


def check_gbce(num_sampled: int, num_classes: int, t) -> float:
    """gBCE's calibration ``t`` in ``[0, 1]``, and ``alpha = num_sampled / (num_classes - 1)`` in ``(0, 1]``."""
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"`t` must be a number in [0, 1]; received {type(t).__name__}")
    if not (0.0 <= float(t) <= 1.0):
        raise SampledSoftmaxError(f"`t` must be in [0, 1] (0: plain BCE, 1: fully calibrated); received {t}")
    if num_classes < 2 or not (1 <= num_sampled <= num_classes - 1):
        raise SampledSoftmaxError(f"gBCE needs 1 <= num_sampled <= num_classes - 1 (alpha = num_sampled / "
                                  f"(num_classes - 1) in (0, 1]); received num_sampled={num_sampled}, "
                                  f"num_classes={num_classes}")
    return float(t)
