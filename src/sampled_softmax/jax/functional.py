"""The sampled losses for JAX: pure functions, an explicit PRNG ``key``, per-example outputs.

The three stages of :mod:`sampled_softmax.reference`, in ``jax.numpy``: each row's columns
(:func:`candidate_columns`: ids, ``log E`` and the keep mask), the corrected logits over the
gathered rows (:func:`corrected_logits`) and a head (:func:`softmax_head`, :func:`sigmoid_head`).
Everything has static shapes: ``jax.jit`` (``num_sampled``, ``num_classes``, ``num_true`` and the
settings static), ``jax.grad`` and ``jax.vmap`` work. Removed columns (accidental hits,
padding slots, ignored labels) are a true mask: probability 0, gradient exactly 0.

Values can only be checked when they are concrete: outside ``jit`` a label out of range or a bad
``sampled_values`` raises the same error as in the other front ends; under ``jit`` such a row's
loss is ``nan`` (never a plausible number).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import SampledSoftmaxError
from .. import _validation as V
from . import _order
from . import samplers as S

__all__ = ["sampled_softmax_loss", "nce_loss", "negative_sampling_loss", "full_softmax_loss", "full_logits",
           "candidate_columns", "corrected_logits", "softmax_head", "sigmoid_head", "gbce_loss"]

# Removed columns take the lowest finite value of the compute dtype: exp() of it underflows to
# exactly 0, and 0 * logit stays finite.


def _lowest(dtype):
    return jnp.finfo(dtype).min


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


# ---------------------------------------------------------------------------------------------
# Stage 1: the columns of each row


def candidate_columns(labels, valid, cand, true_count, samp_count, *, remove_accidental_hits=True, subtract_log_q=True,
                      exclude_true=False, dtype=jnp.float32):
    """``(ids [N*T + S], log_q [N, T + S], keep [N, T + S])`` for ``labels [N, T]`` (``valid``:
    not ignored; ignored ones' ids are 0) and candidates ``cand [S]``: the rows to gather (each
    row's labels, then the candidates shared by the batch) and, per row and column, ``log E`` and
    the keep mask of :func:`sampled_softmax.reference.candidate_columns` (``exclude_true`` too)."""
    n, t = labels.shape
    s = cand.shape[0]
    y = jnp.where(valid, labels, 0)
    ids = jnp.concatenate([y.reshape(-1), cand])
    padding = ~jnp.isfinite(samp_count)
    keep_s = jnp.broadcast_to(~padding[None, :], (n, s))
    if remove_accidental_hits or exclude_true:
        hits = jnp.any((cand[None, None, :] == y[:, :, None]) & valid[:, :, None], axis=1)
        keep_s = keep_s & ~hits
    keep = jnp.concatenate([valid, keep_s], axis=1)
    if not subtract_log_q:
        return ids, jnp.zeros(keep.shape, dtype), keep
    log_true = jnp.log(jnp.where(valid, true_count, 1.0).astype(dtype))
    log_cand = jnp.broadcast_to(jnp.log(jnp.where(padding, 1.0, samp_count).astype(dtype))[None, :], (n, s))
    if exclude_true:
        log_true = jnp.zeros_like(log_true)
        log_cand = log_cand + _exclusion_correction(y, valid, true_count.astype(dtype), keep_s)[:, None]
    return ids, jnp.concatenate([log_true, log_cand], axis=1), keep


def _exclusion_correction(y, valid, true_count, keep_s):
    """``log(k_i / S) - log(1 - Q_i)`` per row (0 for a row without candidates; nan for a row
    whose labels have ``Q_i >= 1``, which counts of draws with replacement never give)."""
    t, s = y.shape[1], keep_s.shape[1]
    earlier = np.tril(np.ones((t, t), bool), -1)  # [j, j']: j' < j
    repeated = jnp.any((y[:, :, None] == y[:, None, :]) & valid[:, None, :] & earlier[None], axis=2)
    big_q = jnp.sum(jnp.where(valid & ~repeated, true_count / s, 0.0), axis=1)
    k = jnp.sum(keep_s, axis=1).astype(true_count.dtype)
    correction = jnp.log(jnp.maximum(k, 1.0) / s) - jnp.log1p(-jnp.minimum(big_q, 1.0))
    return jnp.where(k > 0, jnp.where(big_q < 1.0, correction, jnp.nan), 0.0)


# ---------------------------------------------------------------------------------------------
# Stage 2: corrected logits


def corrected_logits(inputs, rows, bias_rows, log_q, keep, num_true):
    """``o [N, T + S] = h . W[ids] + b[ids] - log_q`` from the rows gathered at
    :func:`candidate_columns`' ids (``rows [N*T + S, D]``, ``bias_rows [N*T + S]`` or None),
    removed columns at the dtype's lowest value: one product per label, one matrix product with
    the shared candidates."""
    n, d = inputs.shape
    rows = rows.astype(inputs.dtype)
    true_rows = rows[: n * num_true].reshape(n, num_true, d)
    t = jnp.einsum("nd,ntd->nt", inputs, true_rows)
    s = inputs @ rows[n * num_true:].T
    if bias_rows is not None:
        bias_rows = bias_rows.astype(inputs.dtype)
        t = t + bias_rows[: n * num_true].reshape(n, num_true)
        s = s + bias_rows[n * num_true:]
    o = jnp.concatenate([t, s], axis=1) - log_q.astype(inputs.dtype)
    return jnp.where(keep, o, _lowest(o.dtype))


# ---------------------------------------------------------------------------------------------
# Stage 3: heads


def softmax_target(keep, num_true, label_smoothing=0.0, dtype=jnp.float32):
    """The softmax head's target ``[N, T + S]``: ``(1 - eps) / T_i + eps / K_i`` on each kept
    label, ``eps / K_i`` on each kept candidate (``T_i`` kept labels, ``K_i`` kept columns)."""
    kt = keep[:, :num_true].astype(dtype)
    n_true = jnp.sum(kt, axis=1, keepdims=True)
    n_kept = jnp.sum(keep.astype(dtype), axis=1, keepdims=True)
    on_true = jnp.concatenate([kt, jnp.zeros((keep.shape[0], keep.shape[1] - num_true), dtype)], axis=1)
    eps = label_smoothing
    target = on_true * (1.0 - eps) / jnp.maximum(n_true, 1.0)
    if eps:
        target = target + jnp.where(keep, eps / jnp.maximum(n_kept, 1.0), 0.0)
    return target


def softmax_head(logits, keep, num_true, label_smoothing=0.0):
    """Per-row softmax cross-entropy ``[N]`` and the rows with a kept label ``[N]``, against
    :func:`softmax_target`."""
    target = softmax_target(keep, num_true, label_smoothing, logits.dtype)
    loss = jax.nn.logsumexp(logits, axis=1) - jnp.sum(target * jnp.where(keep, logits, 0.0), axis=1)
    live = jnp.any(keep[:, :num_true], axis=1)
    return jnp.where(live, loss, 0.0), live


def sigmoid_columns(logits, keep, num_true, beta=1.0):
    """NCE's per-column logistic losses ``[N, T + S]``: target ``1 / T_i`` on the kept labels, 0
    on the candidates, 0 where removed. ``beta`` (gBCE's, a Python float) multiplies the
    labels' ``-target log s(o)`` term."""
    kt = keep[:, :num_true].astype(logits.dtype)
    n_true = jnp.sum(kt, axis=1, keepdims=True)
    target = jnp.concatenate([kt / jnp.maximum(n_true, 1.0), jnp.zeros_like(logits[:, num_true:])], axis=1)
    z = jnp.where(keep, logits, 0.0)
    if beta == 1.0:
        per_column = jnp.maximum(z, 0.0) - z * target + jnp.log1p(jnp.exp(-jnp.abs(z)))
    else:  # -(beta t log s(z) + (1 - t) log s(-z))
        per_column = beta * target * jax.nn.softplus(-z) + (1.0 - target) * jax.nn.softplus(z)
    return jnp.where(keep, per_column, 0.0)


def sigmoid_head(logits, keep, num_true, beta=1.0):
    """NCE's head (negative sampling's over uncorrected logits; gBCE's with ``beta``): each kept
    column a logistic classification (:func:`sigmoid_columns`); per row the sum ``[N]``, and the
    rows with a kept label ``[N]``."""
    live = jnp.any(keep[:, :num_true], axis=1)
    return jnp.where(live, jnp.sum(sigmoid_columns(logits, keep, num_true, beta), axis=1), 0.0), live


# ---------------------------------------------------------------------------------------------
# The losses


def _prepare(weights, biases, labels, inputs, num_classes, num_true, ignore_index, table_rows=None):
    """Checked ``(W, b, y [N, T], h [N, D], lead, valid [N, T])``. ``table_rows``: a function
    ``(rows of weights) -> None`` that checks a table shard (default: all ``num_classes`` rows)."""
    # Dtypes are checked as given (without x64, jnp.asarray makes int64 int32 and float64 float32).
    for name, x, kind in (("weights", weights, jnp.floating), ("inputs", inputs, jnp.floating),
                          ("labels", labels, jnp.integer)):
        dtype = _given_dtype(name, x)
        check = V.check_integer_dtype if kind is jnp.integer else V.check_floating_dtype
        check(name, jnp.issubdtype(dtype, kind), str(dtype))
    weights, inputs, labels = jnp.asarray(weights), jnp.asarray(inputs), jnp.asarray(labels)
    num_true = V.check_positive_int("num_true", num_true)
    if inputs.ndim < 1:
        raise SampledSoftmaxError(f"`inputs` must have shape [..., dim]; received shape {list(inputs.shape)}")
    V.check_weights_shapes([tuple(weights.shape)], None if table_rows else num_classes, inputs.shape[-1])
    if table_rows:
        table_rows(weights.shape[0])
    if biases is not None:
        dtype = _given_dtype("biases", biases)
        V.check_floating_dtype("biases", jnp.issubdtype(dtype, jnp.floating), str(dtype))
        biases = jnp.asarray(biases)
        V.check_biases_shape(tuple(biases.shape), weights.shape[0] if table_rows else num_classes)
    lead, num_true = V.resolve_label_shape(tuple(labels.shape), tuple(inputs.shape), num_true)
    n = int(np.prod(lead, dtype=np.int64))
    y = labels.reshape(n, num_true)
    h = inputs.reshape(n, inputs.shape[-1])
    valid = jnp.ones(y.shape, bool) if ignore_index is None else y != ignore_index
    if _concrete(y) and y.size:  # labels known now (outside jit, or closed over): checked now
        y_now = np.asarray(y)
        kept = y_now if ignore_index is None else y_now[y_now != ignore_index]
        if kept.size:
            V.check_label_values(int(kept.min()), int(kept.max()), num_classes, ignore_index)
    return weights, biases, y, h, lead, valid


def _given_dtype(name, x):
    dtype = getattr(x, "dtype", None)
    if dtype is not None:
        return np.dtype(dtype) if not isinstance(dtype, np.dtype) else dtype
    try:
        return np.asarray(x).dtype
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` must be an array; received {type(x).__name__}") from err


def _compute_dtype(dtype):
    return jnp.float32 if dtype in (jnp.float16, jnp.bfloat16) else dtype


def _columns(y, valid, num_sampled, num_classes, *, num_true, sampled_values, key, sampler, draw, exclude_true):
    """The candidates and their expected counts: given, or drawn from ``key``."""
    if sampled_values is None:
        if key is None:
            raise SampledSoftmaxError("`key` (a jax.random key) is required to draw the candidates; received None "
                                      "(or pass sampled_values)")
        sampler = S.make(sampler, num_classes)
        if sampler.kind == "log_uniform":
            _order.observe(y, valid, num_classes)
        if exclude_true:
            if draw is None:
                draw = "with_replacement"
            if draw != "with_replacement":
                raise SampledSoftmaxError(f"`draw` must be 'with_replacement' with exclude_true=True (its expected "
                                          f"counts must be S q); received {draw!r}")
        draw = "unique_exact" if draw is None else V.check_choice("draw", draw, S.DRAWS)
        return S.sampled_values(key, sampler, jnp.where(valid, y, 0), num_sampled, draw=draw)
    cand, true_count, samp_count = (jnp.asarray(v) for v in V.check_sampled_values_triple(sampled_values))
    V.check_integer_dtype("sampled_values[0]", jnp.issubdtype(cand.dtype, jnp.integer), str(cand.dtype))
    n = y.shape[0]
    V.check_sampled_values_shapes(tuple(cand.shape), tuple(true_count.shape), tuple(samp_count.shape), num_sampled,
                                  n, num_true)
    true_count = jnp.broadcast_to(true_count.reshape(n, true_count.size // max(n, 1) if n else num_true),
                                  (n, num_true))
    if all(_concrete(v) for v in (cand, true_count, samp_count, y, valid)):
        V.check_sampled_values_numpy(np.asarray(cand), np.asarray(true_count), np.asarray(samp_count),
                                     num_sampled=num_sampled, num_classes=num_classes, lead_size=n,
                                     num_true=num_true, valid=np.asarray(valid))
        if exclude_true:
            V.check_exclusion_counts(np.asarray(y), np.asarray(valid), np.asarray(cand), np.asarray(true_count),
                                     np.asarray(samp_count))
    return cand.astype(jnp.int32), true_count, samp_count


class _Call(NamedTuple):
    """A checked call through stage 1: what stages 2 and 3 need besides the rows."""

    W: jax.Array
    b: jax.Array | None
    h: jax.Array  # [N, D] in the compute dtype
    ids: jax.Array  # [N*T + S], the rows to gather
    log_q: jax.Array
    keep: jax.Array
    y: jax.Array
    valid: jax.Array
    num_true: int
    lead: tuple
    bad_draw: jax.Array | None  # under jit: given sampled_values that could not be checked are bad


def _stage1(weights, biases, labels, inputs, *, num_sampled, num_classes, num_true, sampled_values,
            remove_accidental_hits, key, sampler, draw, ignore_index, subtract_log_q, exclude_true, reduction,
            table_rows=None) -> _Call:
    V.check_choice("reduction", reduction, V.REDUCTIONS)
    exclude_true = V.check_bool("exclude_true", exclude_true)
    num_classes = V.check_positive_int("num_classes", num_classes)
    W, b, y, h, lead, valid = _prepare(weights, biases, labels, inputs, num_classes, num_true, ignore_index,
                                       table_rows)
    cdt = _compute_dtype(h.dtype)
    cand, true_count, samp_count = _columns(y, valid, num_sampled, num_classes, num_true=y.shape[1],
                                            sampled_values=sampled_values, key=key, sampler=sampler, draw=draw,
                                            exclude_true=exclude_true)
    ids, log_q, keep = candidate_columns(y, valid, cand, true_count, samp_count,
                                         remove_accidental_hits=remove_accidental_hits,
                                         subtract_log_q=subtract_log_q, exclude_true=exclude_true, dtype=cdt)
    bad_draw = None
    if sampled_values is not None and not all(_concrete(v) for v in (cand, true_count, samp_count, y, valid)):
        bad_draw = _bad_sampled_values(cand, true_count, samp_count, valid, num_classes)
    return _Call(W, b, h.astype(cdt), ids, log_q, keep, y, valid, y.shape[1], lead, bad_draw)


def _bad_sampled_values(cand, true_count, samp_count, valid, num_classes):
    """Whether given ``sampled_values`` break the checks the eager call makes (a scalar bool):
    under jit they are not known until run, and every row's loss is then nan."""
    return (jnp.any((cand < 0) | (cand >= num_classes))
            | jnp.any(valid & ~((true_count > 0) & jnp.isfinite(true_count)))
            | jnp.any(~(samp_count > 0)))


def _loss(head, weights, biases, labels, inputs, *, num_sampled, num_classes, num_true, sampled_values,
          remove_accidental_hits, key, sampler, draw, ignore_index, label_smoothing, subtract_log_q, exclude_true,
          reduction):
    c = _stage1(weights, biases, labels, inputs, num_sampled=num_sampled, num_classes=num_classes, num_true=num_true,
                sampled_values=sampled_values, remove_accidental_hits=remove_accidental_hits, key=key,
                sampler=sampler, draw=draw, ignore_index=ignore_index, subtract_log_q=subtract_log_q,
                exclude_true=exclude_true, reduction=reduction)
    rows = jnp.take(c.W, c.ids, axis=0)
    bias_rows = None if c.b is None else jnp.take(c.b, c.ids)
    return _head_loss(head, c, c.h, rows, bias_rows, label_smoothing, reduction)


def _head_loss(head, c: _Call, h, rows, bias_rows, label_smoothing, reduction):
    """Stages 2 and 3 from the gathered rows, reduced: the part :mod:`.sparse` differentiates."""
    logits = corrected_logits(h, rows, bias_rows, c.log_q, c.keep, c.num_true)
    if head == "softmax":
        loss, live = softmax_head(logits, c.keep, c.num_true, label_smoothing)
    else:  # "sigmoid", or ("gbce", beta)
        loss, live = sigmoid_head(logits, c.keep, c.num_true, head[1] if isinstance(head, tuple) else 1.0)
    return _reduced(loss, live, c.y, c.valid, c.lead, c.W.shape[0], reduction, c.bad_draw)


def _reduced(loss, live, y, valid, lead, num_classes, reduction, bad_draw=None):
    """``loss [N]`` reduced; a label out of range, or (``bad_draw``) sampled values the eager
    call would refuse (only possible under jit, where they cannot be checked) make the loss
    nan, never a plausible number."""
    bad = jnp.any(valid & ((y < 0) | (y >= num_classes)), axis=1)
    if bad_draw is not None:
        bad = bad | bad_draw
    loss = jnp.where(bad, jnp.nan, loss)
    if reduction == "none":
        return loss.reshape(lead)
    if reduction == "sum":
        return jnp.sum(loss)
    return jnp.sum(loss) / jnp.sum(live).astype(loss.dtype)


def sampled_softmax_loss(
    weights, biases, labels, inputs, num_sampled: int, num_classes: int, num_true: int = 1, sampled_values=None,
    remove_accidental_hits: bool = True, *, key: jax.Array | None = None, sampler="log_uniform",
    draw: Literal["unique_exact", "with_replacement"] | None = None, ignore_index: int | None = None,
    label_smoothing: float = 0.0, subtract_log_q: bool = True, exclude_true: bool = False,
    reduction: Literal["none", "mean", "sum"] = "none",
) -> jax.Array:
    r"""Sampled softmax loss, the semantics of ``tf.nn.sampled_softmax_loss``, as a pure function.

    Per row ``i``: ``o_ik = h_i . W_k + b_k - log E(k)`` over its labels and the ``S`` candidates
    shared by the batch (drawn from ``key`` by ``sampler``, or given as ``sampled_values``),
    candidates equal to a label removed (``remove_accidental_hits``), and
    ``loss_i = logsumexp_kept(o_i) - (1/T) sum_j o_{i y_ij}`` (with ``label_smoothing`` the
    target spreads ``eps`` over the kept columns).

    Args:
        weights: ``[V, D]``. biases: ``[V]`` or None. labels: integer ``[...]`` or ``[..., T]``.
        inputs: ``[..., D]``.
        num_sampled, num_classes, num_true: static ints (``jax.jit(..., static_argnums=...)``).
        sampled_values: ``(candidates [S], true_expected_count [N, T], sampled_expected_count [S])``.
        remove_accidental_hits: remove candidates equal to one of the row's labels.
        key: a ``jax.random`` key for the draw (required without ``sampled_values``).
        sampler: ``"log_uniform"`` (default: for ids sorted by decreasing frequency; on another
            order it nearly doubled PTB's perplexity, and a
            :class:`~sampled_softmax.VocabularyOrderWarning` says so), ``"uniform"``, or a
            :class:`sampled_softmax.jax.samplers.Sampler` (``samplers.unigram(V, counts)``).
        draw: ``"unique_exact"`` (default) or ``"with_replacement"`` (the default with
            ``exclude_true``); TensorFlow's data-dependent ``"unique"`` is not offered.
        ignore_index: label value to ignore (its column removed; an all-ignored row has loss 0).
        label_smoothing: ``eps`` in ``[0, 1]``.
        subtract_log_q: subtract ``log E`` (False: negative sampling's uncorrected logits).
        exclude_true: the rejection estimator (see
            :func:`sampled_softmax.torch.sampled_softmax_loss`): labels rejected from the draws,
            no correction on the labels, ``log(k_i q / (1 - Q_i))`` on the candidates.
        reduction: ``"none"`` (default, ``[...]``), ``"mean"`` over rows with a kept label, ``"sum"``.

    Returns:
        Per-example losses ``[...]`` in the compute dtype (float32 for float16/bfloat16), or a scalar.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from sampled_softmax.jax import sampled_softmax_loss
        >>> W, h = jnp.eye(3, 2), jnp.array([[1.0, 2.0]])
        >>> sv = (jnp.array([1, 2]), jnp.ones((1, 1)), jnp.ones(2))
        >>> round(float(sampled_softmax_loss(W, None, jnp.array([0]), h, 2, 3, sampled_values=sv)[0]), 4)
        1.4076
    """
    label_smoothing = V.check_label_smoothing(label_smoothing)
    return _loss("softmax", weights, biases, labels, inputs, num_sampled=num_sampled, num_classes=num_classes,
                 num_true=num_true, sampled_values=sampled_values, remove_accidental_hits=remove_accidental_hits,
                 key=key, sampler=sampler, draw=draw, ignore_index=ignore_index, label_smoothing=label_smoothing,
                 subtract_log_q=subtract_log_q, exclude_true=exclude_true, reduction=reduction)


def nce_loss(
    weights, biases, labels, inputs, num_sampled: int, num_classes: int, num_true: int = 1, sampled_values=None,
    remove_accidental_hits: bool = False, *, key: jax.Array | None = None, sampler="log_uniform",
    draw: Literal["unique_exact", "with_replacement"] | None = None, ignore_index: int | None = None,
    subtract_log_q: bool = True, reduction: Literal["none", "mean", "sum"] = "none",
) -> jax.Array:
    r"""Noise-contrastive estimation, ``tf.nn.nce_loss``'s semantics: the corrected logits of
    :func:`sampled_softmax_loss`, each column a logistic classification (target ``1 / T`` on the
    labels, 0 on the candidates), summed per row. ``remove_accidental_hits`` defaults to False."""
    return _loss("sigmoid", weights, biases, labels, inputs, num_sampled=num_sampled, num_classes=num_classes,
                 num_true=num_true, sampled_values=sampled_values, remove_accidental_hits=remove_accidental_hits,
                 key=key, sampler=sampler, draw=draw, ignore_index=ignore_index, label_smoothing=0.0,
                 subtract_log_q=subtract_log_q, exclude_true=False, reduction=reduction)


def negative_sampling_loss(
    weights, biases, labels, inputs, num_sampled: int, num_classes: int, num_true: int = 1, sampled_values=None,
    remove_accidental_hits: bool = False, *, key: jax.Array | None = None, sampler="log_uniform",
    draw: Literal["unique_exact", "with_replacement"] | None = None, ignore_index: int | None = None,
    reduction: Literal["none", "mean", "sum"] = "none",
) -> jax.Array:
    """Negative sampling (Mikolov et al. 2013): :func:`nce_loss` without the ``- log E``
    correction, over noise shared by the batch."""
    return _loss("sigmoid", weights, biases, labels, inputs, num_sampled=num_sampled, num_classes=num_classes,
                 num_true=num_true, sampled_values=sampled_values, remove_accidental_hits=remove_accidental_hits,
                 key=key, sampler=sampler, draw=draw, ignore_index=ignore_index, label_smoothing=0.0,
                 subtract_log_q=False, exclude_true=False, reduction=reduction)


def gbce_loss(
    weights, biases, labels, inputs, num_sampled: int, num_classes: int, num_true: int = 1, sampled_values=None,
    remove_accidental_hits: bool = False, *, t: float = 0.75, key: jax.Array | None = None, sampler="uniform",
    draw: Literal["unique_exact", "with_replacement"] | None = None, ignore_index: int | None = None,
    reduction: Literal["none", "mean", "sum"] = "none",
) -> jax.Array:
    """gBCE (Petrov & Macdonald 2023): :func:`negative_sampling_loss` with the labels'
    probability raised to ``beta = alpha (t (1 - 1/alpha) + 1/alpha)``, ``alpha = k / (V - 1)``
    (:func:`sampled_softmax.torch.gbce_loss`); the default sampler is ``"uniform"``."""
    num_sampled, num_classes = V.check_positive_int("num_sampled", num_sampled), V.check_positive_int(
        "num_classes", num_classes)
    t = V.check_gbce(num_sampled, num_classes, t)
    alpha = num_sampled / (num_classes - 1)
    beta = alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)
    return _loss(("gbce", beta), weights, biases, labels, inputs, num_sampled=num_sampled, num_classes=num_classes,
                 num_true=num_true, sampled_values=sampled_values, remove_accidental_hits=remove_accidental_hits,
                 key=key, sampler=sampler, draw=draw, ignore_index=ignore_index, label_smoothing=0.0,
                 subtract_log_q=False, exclude_true=False, reduction=reduction)


def full_logits(weights, biases, inputs) -> jax.Array:
    """Exact logits ``inputs @ W^T + b``, ``[..., V]``."""
    inputs = jnp.asarray(inputs)
    cdt = _compute_dtype(inputs.dtype)
    logits = jnp.asarray(inputs, cdt) @ jnp.asarray(weights, cdt).T
    return logits if biases is None else logits + jnp.asarray(biases, cdt)


def full_softmax_loss(weights, biases, labels, inputs, num_true: int = 1, *, ignore_index: int | None = None,
                      label_smoothing: float = 0.0, reduction: Literal["none", "mean", "sum"] = "none") -> jax.Array:
    """Exact softmax cross-entropy over all classes, for evaluation: target ``1 / T`` on each
    kept label (``(1 - eps)`` of it with ``label_smoothing``, plus ``eps / V`` everywhere)."""
    V.check_choice("reduction", reduction, V.REDUCTIONS)
    label_smoothing = V.check_label_smoothing(label_smoothing)
    W = jnp.asarray(weights)
    W, b, y, h, lead, valid = _prepare(W, biases, labels, inputs, W.shape[0], num_true, ignore_index)
    logp = jax.nn.log_softmax(full_logits(W, b, h), axis=-1)
    picked = jnp.take_along_axis(logp, jnp.where(valid, y, 0), axis=1)
    n_true = jnp.sum(valid, axis=1).astype(logp.dtype)
    loss = -(1.0 - label_smoothing) * jnp.sum(jnp.where(valid, picked, 0.0), axis=1) / jnp.maximum(n_true, 1.0)
    if label_smoothing:
        loss = loss - label_smoothing * jnp.mean(logp, axis=1)
    live = n_true > 0
    return _reduced(jnp.where(live, loss, 0.0), live, y, valid, lead, W.shape[0], reduction)
