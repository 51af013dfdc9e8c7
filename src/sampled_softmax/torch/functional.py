"""``sampled_softmax_loss`` and ``full_softmax_loss`` for PyTorch: validate, choose a route,
run the pipeline.

A sampled loss is three stages: the candidates and each row's columns (ids, ``log E``, the
removed-candidate mask: :mod:`._columns`), the corrected logits over the gathered rows and a
head (:mod:`._autograd`: the softmax cross-entropy here). :mod:`._dispatch` is the one place
that picks the code that runs them (the compiled CPU core or the Python autograd Function),
after every argument has been checked (:mod:`._prepare`). Nothing of size ``V`` or ``B x V``
is made, except the dense gradient itself when ``sparse=False``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import re
from typing import Literal, Sequence, Union

import torch

from .. import SampledSoftmaxError
from .. import _validation as V
from . import _dispatch, _ops, _order
from ._autograd import HeadKind, PerExampleLoss, SampledLoss, sigmoid_head, softmax_head
from ._columns import candidate_columns, exclusion_correction
from ._dispatch import IMPLEMENTATIONS
from ._prepare import (
    _autocast_on, _check_labels_can_be_drawn, _check_not_transformed, _check_sampled_values, _check_sparse_bias,
    _check_tensor, _compute_dtype, _full_table, _LOW_PRECISION, _prepare, _shards, _true_count_rows,
)
from ._rows import _Spec
from ..samplers import DrawKind, unique_draw_error, unique_draw_limit
from .._validation import check_num_sampled
from .samplers import CandidateSampler, LearnedUnigramSampler, check_generator, make_sampler, sampler_tables

__all__ = ["sampled_softmax_loss", "nce_loss", "negative_sampling_loss", "full_softmax_loss", "full_logits"]

Tables = Union[torch.Tensor, Sequence[torch.Tensor]]  # one [V, ...] table or its shards
Reduction = Literal["none", "mean", "sum"]
Partition = Literal["div", "mod"]
Implementation = Literal["auto", "compiled", "python"]


@functools.lru_cache(maxsize=64)
def _named_sampler(name: str, num_classes: int) -> CandidateSampler:
    # Stateless samplers by name are built once: constructing a Module costs more than a draw.
    return make_sampler(name, num_classes)


def _sampler_for(sampler, num_classes):
    return _named_sampler(sampler, num_classes) if isinstance(sampler, str) else make_sampler(sampler, num_classes)


@functools.lru_cache(maxsize=64)
def _named_sampler_with_replacement(name: str, num_classes: int) -> CandidateSampler:
    return type(_named_sampler(name, num_classes))(num_classes, draw="with_replacement")


def _with_replacement_sampler(sampler, num_classes, setting="exclude_true=True"):
    """The sampler of ``exclude_true`` and of per-example noise: a name draws with replacement;
    a module must (its expected counts must be ``S q``)."""
    if isinstance(sampler, str):
        _named_sampler(sampler, num_classes)  # the usual check of the name
        return _named_sampler_with_replacement(sampler, num_classes)
    sampler = make_sampler(sampler, num_classes)
    if sampler.draw != "with_replacement":
        raise SampledSoftmaxError(
            f"`sampler` must draw 'with_replacement' with {setting} (its expected counts must be S q); "
            f"received a sampler with draw={sampler.draw!r}")
    return sampler


def _agrees_on_failure(loss_fn):
    """A sampler that starts every draw with a collective (``DistributedLearnedUnigramSampler``)
    must hear of a call that fails on one rank before its draw, or the other ranks would wait
    in that collective: the failing rank takes part in the agreement with its error."""

    @functools.wraps(loss_fn)
    def wrapper(*args, **kwargs):
        sampler = kwargs.get("sampler")
        if not getattr(sampler, "_collective", False):
            return loss_fn(*args, **kwargs)
        before = sampler._agreements
        try:
            return loss_fn(*args, **kwargs)
        except Exception as e:
            given = inspect.signature(loss_fn).bind(*args, **kwargs).arguments.get("sampled_values")
            if sampler._agreements == before and given is None:
                sampler._agree_call(e)  # raises e here, and the same error on every other rank
            raise

    return wrapper


def _reduce(per_row: torch.Tensor, live: torch.Tensor | None, reduction: str, lead) -> torch.Tensor:
    if reduction == "none":
        return per_row.reshape(lead)
    if reduction == "sum":
        return per_row.sum()
    count = per_row.new_tensor(per_row.numel()) if live is None else live.sum().to(per_row.dtype)
    return per_row.sum() / count


@_agrees_on_failure
def sampled_softmax_loss(
    weights: Tables, biases: Tables | None, labels: torch.Tensor, inputs: torch.Tensor, num_sampled: int,
    num_classes: int, num_true: int = 1, sampled_values: Sequence | None = None, remove_accidental_hits: bool = True,
    *, sampler: str | CandidateSampler = "log_uniform", reduction: Reduction = "none", ignore_index: int | None = None,
    label_smoothing: float = 0.0, generator: torch.Generator | None = None, partition_strategy: Partition = "div",
    subtract_log_q: bool = True, sparse: bool = False, return_log_prob: bool = False,
    implementation: Implementation = "auto", exclude_true: bool = False,
    noise: Literal["shared", "per_example"] = "shared",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Sampled softmax loss (Jean et al. 2014), the semantics of ``tf.nn.sampled_softmax_loss``.

    Draws one set of ``S`` candidate classes ``c`` for the whole batch and computes, per row,
    the softmax cross-entropy over the true and candidate columns with corrected logits

    .. math::
        o_{ik} = h_i \cdot W_{k} + b_{k} - \log E(k),\qquad
        \ell_i = \log\sum_{k \in \text{kept}} e^{o_{ik}} - \frac{1}{T}\sum_{j} o_{i y_{ij}}

    where ``E(k)`` is the sampler's expected count of class ``k``. Candidates equal to one of
    row ``i``'s labels are removed from its normalizer (``remove_accidental_hits``: a true mask,
    probability 0 and gradient exactly 0). With ``label_smoothing = eps`` the target is
    ``(1 - eps) / T`` on each label plus ``eps / K_i`` on each of the row's ``K_i`` kept columns.
    For training only; evaluate with :func:`full_softmax_loss`.

    Args:
        weights: ``[V, D]`` tensor, or a list of shards (TensorFlow's ``"div"`` layout by
            default, ``partition_strategy="mod"`` for ``id % n``).
        biases: ``[V]`` tensor or None.
        labels: integer ``[...]`` (``num_true = 1``) or ``[..., T]``.
        inputs: ``[..., D]`` hidden states.
        num_sampled: ``S``, candidates drawn per call (shared by the batch).
        num_classes: ``V``; must equal the rows of ``weights``.
        num_true: ``T``, labels per example.
        sampled_values: optional ``(candidates [S], true_expected_count [N, T],
            sampled_expected_count [S])``, e.g. from a sampler; fixes the randomness.
        remove_accidental_hits: mask candidates equal to a row's label. Default True.
        sampler: ``"log_uniform"`` (default, as TensorFlow's: for class ids sorted by decreasing
            frequency; on another order it nearly doubled PTB's perplexity, and a
            :class:`~sampled_softmax.VocabularyOrderWarning` says so), ``"uniform"``, or a
            :class:`CandidateSampler` (e.g. :class:`LearnedUnigramSampler`, kept across calls).
        reduction: ``"none"`` (default, per-example like ``tf.nn``), ``"mean"`` over the
            examples with a kept label (``nan`` when none has one, as ``F.cross_entropy``),
            or ``"sum"``.
        ignore_index: label value to ignore. A row whose labels are all ignored gets loss 0 and
            no gradient; with ``T > 1`` an ignored label is dropped from its row (padding).
        label_smoothing: ``eps`` in ``[0, 1]``.
        generator: ``torch.Generator`` for the sampler.
        partition_strategy: ``"div"`` or ``"mod"`` for sharded ``weights``.
        subtract_log_q: subtract ``log E``; False gives negative sampling's uncorrected logits.
        sparse: return sparse COO row gradients for ``weights`` and ``biases``.
        return_log_prob: also return the sampled estimate of ``log p(target)`` per example.
        implementation: ``"auto"`` (default): the compiled core where it applies (one weight
            table, ``num_true=1``, no ignored label, no label smoothing, float32/float64 with
            ``inputs``, ``weights`` and ``biases`` of one dtype) and can be built (a C++
            compiler and ``ninja``; built once per machine, about a minute), else the Python
            path. With the ``"uniform"`` or ``"log_uniform"`` sampler on the CPU it also draws
            the candidates (the same ones the sampler module draws from the same generator).
            ``"compiled"`` requires the compiled core (an error says why it cannot be used);
            ``"python"`` never uses it. Both compute the same loss and gradients.
        exclude_true: another estimator than TensorFlow's (the rejection estimator, the labels
            kept out of the sample): negatives are draws from ``q`` given that they are not one
            of the row's labels, so a candidate equal to a label is always
            rejected (removed), the true columns get no correction, and a kept candidate gets
            :math:`-\log(k_i\, q(c) / (1 - Q_i))`: ``k_i`` the row's candidates left after
            rejection, ``Q_i`` the total ``q`` of its distinct kept labels (all ``T`` excluded
            together), ``q(c) = E(c) / S``. The expected counts must be those of ``S`` draws
            with replacement (``E = S q``): a sampler given by name draws so, a sampler module
            must have ``draw="with_replacement"``. Python path only; under ``torch.compile``
            the call runs eagerly.
        noise: ``"shared"`` (default): one set of ``S`` candidates for the batch;
            ``"per_example"``: ``S`` candidates drawn for each example (with replacement, one
            weight table, no ``sampled_values`` nor ``return_log_prob``), corrected by
            ``log(S q(c))``, or with ``exclude_true`` as above. Python path only.

    Returns:
        The loss: shape ``[...]`` for ``reduction="none"``, else a scalar. With
        ``return_log_prob``, a pair ``(loss, log_prob [...])``.

    Raises:
        SampledSoftmaxError: on a bad shape or value (the message names the argument).
        TypeError: on a wrong type or dtype.

    Example:
        >>> import torch
        >>> from sampled_softmax.torch import sampled_softmax_loss
        >>> W, b = torch.eye(3, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
        >>> h = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
        >>> sv = (torch.tensor([1, 2]), torch.ones(1, 1), torch.ones(2))
        >>> sampled_softmax_loss(W, b, torch.tensor([0]), h, 2, 3, sampled_values=sv)
        tensor([1.4076], dtype=torch.float64)
    """
    V.check_choice("implementation", implementation, IMPLEMENTATIONS)
    V.check_choice("noise", noise, ("shared", "per_example"))
    if isinstance(inputs, torch.Tensor) and _autocast_on(inputs.device.type):
        return _without_autocast(sampled_softmax_loss, dict(locals()))
    if _ops.traced(inputs):
        if exclude_true or noise != "shared":
            if torch.compiler.is_compiling():
                return _eager_sampled_softmax_loss(**locals())
            raise NotImplementedError("sampled_softmax_loss with exclude_true=True or noise='per_example' does not "
                                      "take meta or fake tensors yet (torch.export, FakeTensorMode): run it on real "
                                      "tensors")
        return _traced_sampled_softmax_loss(**locals())
    _check_not_transformed(inputs, weights)
    if _order.uses_log_uniform(sampler, sampled_values):
        _order.observe(labels, num_classes)
    V.check_bool("exclude_true", exclude_true)
    if noise == "per_example":
        if sampled_values is not None:
            raise SampledSoftmaxError("`sampled_values` cannot be given with noise='per_example' (the candidates are "
                                      "drawn for each example); pass noise='shared' to give shared candidates")
        if return_log_prob:
            raise SampledSoftmaxError("`return_log_prob=True` is not offered with noise='per_example'")
        return _per_example(softmax_head, weights, biases, labels, inputs, num_sampled, num_classes, num_true,
                            remove_accidental_hits, sampler, reduction, ignore_index, generator, partition_strategy,
                            sparse, implementation, subtract_log_q=subtract_log_q, exclude_true=exclude_true,
                            label_smoothing=label_smoothing)
    if exclude_true:
        return _general_path(softmax_head, weights, biases, labels, inputs, num_sampled, num_classes, num_true,
                             sampled_values, True, sampler, reduction, ignore_index, label_smoothing, generator,
                             partition_strategy, subtract_log_q, sparse, return_log_prob, implementation,
                             exclude_true=True)
    if implementation != "python" and _dispatch.draw_obstacle(sampler, sampled_values) is None:
        result = _compiled_draw(softmax_head, weights, biases, labels, inputs, num_sampled, num_classes, num_true,
                                remove_accidental_hits, sampler, reduction, ignore_index, label_smoothing,
                                generator, partition_strategy, subtract_log_q, sparse, return_log_prob)
        if result is not None:
            _dispatch.record("compiled_draw")
            return result
    return _general_path(softmax_head, weights, biases, labels, inputs, num_sampled, num_classes, num_true,
                         sampled_values, remove_accidental_hits, sampler, reduction, ignore_index, label_smoothing,
                         generator, partition_strategy, subtract_log_q, sparse, return_log_prob, implementation)


def _without_autocast(loss_fn, arguments):
    """``loss_fn(**arguments)`` with autocast off. As F.cross_entropy under autocast, the loss is
    computed (and returned) in float32 whatever the autocast dtype, on every path, so forward
    and backward agree on dtypes."""
    with torch.autocast(arguments["inputs"].device.type, enabled=False):
        return loss_fn(**arguments)


def _general_path(head, weights, biases, labels, inputs, num_sampled, num_classes, num_true, sampled_values,
                  remove_accidental_hits, sampler, reduction, ignore_index, label_smoothing, generator,
                  partition_strategy, subtract_log_q, sparse, return_log_prob, implementation, exclude_true=False):
    """Every check, then the three stages with ``head``: on the compiled core where it applies
    (``"compiled"`` route), else the Python autograd Function (``"python"``). ``exclude_true``:
    the caller passes ``remove_accidental_hits=True``."""
    check_generator(generator)
    _check_sparse_bias(biases, sparse)
    shards, biases, y, h, lead, num_classes, offsets, valid, label_smoothing = _prepare(
        weights, biases, labels, inputs, num_classes, num_true, ignore_index, label_smoothing,
        reduction, partition_strategy,
    )
    y = y.long()
    n, t = y.shape
    ext = _dispatch.compiled(implementation, _loss_obstacle(shards, biases, h, t, valid, label_smoothing,
                                                            exclude_true))
    if sampled_values is None:
        sampler = _with_replacement_sampler(sampler, num_classes) if exclude_true else _sampler_for(sampler,
                                                                                                      num_classes)
        # The raw labels: a learned sampler must not count ignored labels (as class 0). It learns
        # them after the checks below: a call that fails leaves its counts as they were.
        ignored = None if valid is None else ignore_index
        learns = type(sampler).forward is CandidateSampler.forward
        if learns:
            cand, true_count, samp_count = sampler._draw_values(y, num_sampled, generator, ignored, update=False)
        else:
            cand, true_count, samp_count = sampler(y, num_sampled, generator=generator, ignore_index=ignored)
        padded = sampler.draw == "unique_exact"
        # A learned sampler's counts may hold zeros (a loaded state): its support is not
        # tracked, so its labels are checked (one comparison of [N, T] counts).
        if subtract_log_q and (sampler.support < sampler.num_classes or isinstance(sampler, LearnedUnigramSampler)):
            _check_labels_can_be_drawn(y, valid, true_count, sampler)
        if learns and sampler.training:
            sampler.update(y if valid is None else torch.where(valid, y, 0), valid)
    else:
        cand, true_count, samp_count, padded = _check_sampled_values(sampled_values, num_sampled, num_classes, y, valid, h.device)

    y_safe = y if valid is None else torch.where(valid, y, 0)
    ids, logq, removed = candidate_columns(y_safe, valid, cand, true_count, samp_count, _compute_dtype(h.dtype),
                                 remove_accidental_hits, subtract_log_q, padded)
    row_logq = None
    if exclude_true and subtract_log_q:
        row_logq = exclusion_correction(y_safe, valid, true_count, removed, cand.shape[0], _compute_dtype(h.dtype))
        logq = torch.cat([torch.zeros_like(logq[: n * t]), logq[n * t:]])
    if ext is not None:
        _dispatch.record("compiled")
        loss = ext.sampled_softmax_core(h, shards[0], h.new_empty(0) if biases is None else biases, ids, logq,
                                        h.new_empty(0, dtype=torch.bool) if removed is None else removed,
                                        int(HeadKind[head.name]), bool(sparse))
        # One label, no smoothing: the softmax loss is -log p(target); the sigmoid head has no
        # estimate of it (zeros, as on the Python path).
        logp = -loss if head is softmax_head else torch.zeros_like(loss)
    else:
        _dispatch.record("python")
        spec = _Spec(t, offsets, partition_strategy, label_smoothing, bool(sparse))
        loss, logp = SampledLoss.apply(head, h, ids, logq, valid, removed, row_logq, spec, biases, *shards)
    return _finish(loss, logp, valid, reduction, lead, return_log_prob)


@_agrees_on_failure
def nce_loss(
    weights: Tables, biases: Tables | None, labels: torch.Tensor, inputs: torch.Tensor, num_sampled: int,
    num_classes: int, num_true: int = 1, sampled_values: Sequence | None = None, remove_accidental_hits: bool = False,
    *, sampler: str | CandidateSampler = "log_uniform", reduction: Reduction = "none", ignore_index: int | None = None,
    generator: torch.Generator | None = None, partition_strategy: Partition = "div", subtract_log_q: bool = True,
    sparse: bool = False, implementation: Implementation = "auto",
) -> torch.Tensor:
    r"""Noise-contrastive estimation loss (Gutmann & Hyvarinen 2010), the semantics of ``tf.nn.nce_loss``.

    The candidates and corrected logits of :func:`sampled_softmax_loss`,
    :math:`o_{ik} = h_i \cdot W_k + b_k - \log E(k)`, each column a logistic classification with
    target :math:`t_{ik} = 1/T` on the true columns and 0 on the candidates; per row, the sum

    .. math::
        \ell_i = -\sum_{k} \big[t_{ik} \log \sigma(o_{ik}) + (1 - t_{ik}) \log \sigma(-o_{ik})\big]

    A removed column (an accidental hit with ``remove_accidental_hits=True``, "sampled
    logistic"; a padding slot; an ignored label) adds nothing. Same arguments as
    :func:`sampled_softmax_loss` without ``label_smoothing`` and ``return_log_prob``;
    ``remove_accidental_hits`` defaults to False, as in ``tf.nn.nce_loss``. ``implementation``:
    as for :func:`sampled_softmax_loss` (the compiled core computes this head too, and draws
    ``"uniform"`` / ``"log_uniform"`` candidates itself). Under ``torch.compile`` the call runs
    eagerly (a graph break).

    Returns:
        The loss: shape ``[...]`` for ``reduction="none"``, else a scalar.

    Example:
        >>> import torch
        >>> from sampled_softmax.torch import nce_loss
        >>> W = torch.eye(3, 2, dtype=torch.float64)
        >>> sv = (torch.tensor([1, 2]), torch.ones(1, 1), torch.ones(2))
        >>> nce_loss(W, None, torch.tensor([0]), torch.tensor([[1.0, 2.0]], dtype=torch.float64), 2, 3, sampled_values=sv)
        tensor([3.1333], dtype=torch.float64)
    """
    return _sigmoid_loss(weights, biases, labels, inputs, num_sampled, num_classes, num_true, sampled_values,
                         remove_accidental_hits, sampler, reduction, ignore_index, generator, partition_strategy,
                         subtract_log_q, sparse, implementation)


@_agrees_on_failure
def negative_sampling_loss(
    weights: Tables, biases: Tables | None, labels: torch.Tensor, inputs: torch.Tensor, num_sampled: int,
    num_classes: int, num_true: int = 1, sampled_values: Sequence | None = None, remove_accidental_hits: bool = False,
    *, sampler: str | CandidateSampler = "log_uniform", reduction: Reduction = "none", ignore_index: int | None = None,
    generator: torch.Generator | None = None, partition_strategy: Partition = "div", sparse: bool = False,
    implementation: Implementation = "auto", noise: Literal["shared", "per_example"] = "shared",
) -> torch.Tensor:
    r"""Negative sampling (Mikolov et al. 2013): :func:`nce_loss` over uncorrected logits
    :math:`o_{ik} = h_i \cdot W_k + b_k`. With one label and noise classes :math:`c_k`,

    .. math::
        \ell_i = -\log \sigma(o_{i y_i}) - \sum_k \log \sigma(-o_{i c_k})

    The noise is drawn by ``sampler`` (word2vec's is ``UnigramSampler(V, counts,
    distortion=0.75, draw="with_replacement")``): ``num_sampled`` classes shared by the batch
    (``noise="shared"``, the default), or, as word2vec itself does, ``num_sampled`` classes drawn
    independently for each example (``noise="per_example"``: the sampler's draw must be
    ``"with_replacement"``, and ``sampled_values`` cannot be given; one weight table). With
    ``remove_accidental_hits`` a noise class equal to the example's label adds nothing, as
    word2vec skips it. Same arguments as :func:`nce_loss` without ``subtract_log_q``.

    Example:
        >>> import torch
        >>> from sampled_softmax.torch import negative_sampling_loss
        >>> W = torch.eye(3, 2, dtype=torch.float64)
        >>> sv = (torch.tensor([1, 2]), torch.ones(1, 1), torch.ones(2))
        >>> negative_sampling_loss(W, None, torch.tensor([0]), torch.tensor([[1.0, 2.0]], dtype=torch.float64), 2, 3,
        ...                        sampled_values=sv)
        tensor([3.1333], dtype=torch.float64)
    """
    V.check_choice("noise", noise, ("shared", "per_example"))
    if noise == "per_example" and sampled_values is not None:
        raise SampledSoftmaxError("`sampled_values` cannot be given with noise='per_example' (the noise is "
                                  "drawn for each example); pass noise='shared' to give shared candidates")
    return _sigmoid_loss(weights, biases, labels, inputs, num_sampled, num_classes, num_true, sampled_values,
                         remove_accidental_hits, sampler, reduction, ignore_index, generator, partition_strategy,
                         False, sparse, implementation, noise)


def _per_example(head, weights, biases, labels, inputs, num_sampled, num_classes, num_true, remove_accidental_hits,
                 sampler, reduction, ignore_index, generator, partition_strategy, sparse, implementation, *,
                 subtract_log_q=False, exclude_true=False, label_smoothing=0.0):
    """``num_sampled`` noise classes drawn for each example (``noise="per_example"``): each row's
    own columns ``[N, T + k]`` (its labels, then its noise) and ``head``. Negative sampling
    (word2vec's) runs on the compiled core where it applies (``"compiled"`` route); the rest is
    :class:`PerExampleLoss`. With ``subtract_log_q`` a column's correction is ``log(k q(c))``
    (the expected count of ``k`` draws with replacement), with ``exclude_true`` the rejection estimator's."""
    check_generator(generator)
    _check_sparse_bias(biases, sparse)
    shards, biases, y, h, lead, num_classes, _, valid, label_smoothing = _prepare(
        weights, biases, labels, inputs, num_classes, num_true, ignore_index, label_smoothing, reduction,
        partition_strategy)
    if len(shards) > 1:
        raise SampledSoftmaxError("`weights` must be one [num_classes, dim] table with noise='per_example'; "
                                  f"received {len(shards)} shards")
    # A sampler given by name draws with replacement here, as with exclude_true; a module must.
    sampler = _with_replacement_sampler(sampler, num_classes, "noise='per_example' (independent noise for each "
                                                              "example)")
    y = y.long()
    n, t = y.shape
    k = num_sampled
    check_num_sampled(k, num_classes, unique=False)
    why = _loss_obstacle(shards, biases, h, t, valid, label_smoothing, exclude_true)
    if why is None and (head is not sigmoid_head or subtract_log_q):
        why = _dispatch.PER_EXAMPLE_COMPILED_ONLY
    ext = None if n == 0 else _dispatch.compiled(implementation, why)
    kt = torch.ones_like(y, dtype=torch.bool) if valid is None else valid
    y_safe = torch.where(kt, y, 0)
    if n == 0:  # nothing to draw for: an empty loss, as on the shared path
        noise = torch.empty(0, k, dtype=torch.int64, device=h.device)
        if getattr(sampler, "_collective", False):  # its other ranks may have rows: take part
            sampler._collect(y, ignore_index)
    else:
        # Drawn before the sampler learns this batch's labels: the correction below must be
        # the distribution the noise came from.
        noise, _, _ = sampler._draw_values(y, n * k, generator, None if valid is None else ignore_index,
                                           update=False)
        noise = noise.to(h.device).view(n, k)
    logq = None
    if subtract_log_q and n:
        # The float32 expected counts of k draws, as a shared draw of k returns them.
        counts = (sampler.probs(torch.cat([y_safe, noise], 1).reshape(-1)) * k).float().view(n, t + k)
        _check_labels_can_be_drawn(y, valid, counts[:, :t], sampler)
    if sampler.training and n:
        sampler.update(y_safe, valid)
    if ext is not None:  # one label per row, none ignored
        _dispatch.record("compiled")
        loss = ext.per_example_core(h, shards[0], h.new_empty(0) if biases is None else biases,
                                    torch.cat([y, noise], 1), bool(remove_accidental_hits), int(HeadKind.sigmoid),
                                    bool(sparse))
        return _finish(loss, None, None, reduction, lead, False)
    _dispatch.record("python")
    removed = None
    if remove_accidental_hits or exclude_true:
        removed = ((noise.unsqueeze(2) == y_safe.unsqueeze(1)) & kt.unsqueeze(1)).any(2)
    ids = torch.cat([y_safe, noise], 1)
    if subtract_log_q and n:
        counts = counts.to(device=h.device, dtype=_compute_dtype(h.dtype))
        logq = torch.where(torch.cat([kt, torch.ones_like(noise, dtype=torch.bool)], 1), counts.log(), 0.0)
        if exclude_true:
            row_logq = exclusion_correction(y_safe, valid, counts[:, :t], removed, k, counts.dtype)
            logq = torch.cat([torch.zeros_like(logq[:, :t]), logq[:, t:] + row_logq.unsqueeze(1)], 1)
    spec = _Spec(t, (), partition_strategy, label_smoothing, bool(sparse))
    loss = PerExampleLoss.apply(head, h, ids, valid, removed, logq, spec, biases, shards[0])
    return _finish(loss, None, valid, reduction, lead, False)


@torch.compiler.disable  # the sigmoid head has no custom operator yet: under torch.compile, eager
def _sigmoid_loss(weights, biases, labels, inputs, num_sampled, num_classes, num_true, sampled_values,
                  remove_accidental_hits, sampler, reduction, ignore_index, generator, partition_strategy,
                  subtract_log_q, sparse, implementation, noise="shared"):
    V.check_choice("implementation", implementation, IMPLEMENTATIONS)
    if isinstance(inputs, torch.Tensor) and _autocast_on(inputs.device.type):
        return _without_autocast(_sigmoid_loss, dict(locals()))
    if _ops.traced(inputs):
        raise NotImplementedError("nce_loss and negative_sampling_loss do not take meta or fake tensors yet "
                                  "(torch.export, FakeTensorMode): run them on real tensors")
    _check_not_transformed(inputs, weights)
    if _order.uses_log_uniform(sampler, sampled_values):
        _order.observe(labels, num_classes)
    if noise == "per_example":
        return _per_example(sigmoid_head, weights, biases, labels, inputs, num_sampled, num_classes, num_true,
                            remove_accidental_hits, sampler, reduction, ignore_index, generator, partition_strategy,
                            sparse, implementation)
    if implementation != "python" and _dispatch.draw_obstacle(sampler, sampled_values) is None:
        result = _compiled_draw(sigmoid_head, weights, biases, labels, inputs, num_sampled, num_classes, num_true,
                                remove_accidental_hits, sampler, reduction, ignore_index, 0.0, generator,
                                partition_strategy, subtract_log_q, sparse, False)
        if result is not None:
            _dispatch.record("compiled_draw")
            return result
    return _general_path(sigmoid_head, weights, biases, labels, inputs, num_sampled, num_classes, num_true,
                         sampled_values, remove_accidental_hits, sampler, reduction, ignore_index, 0.0, generator,
                         partition_strategy, subtract_log_q, sparse, False, implementation)


def _traced_sampled_softmax_loss(weights, biases, labels, inputs, num_sampled, num_classes, num_true,
                                 sampled_values, remove_accidental_hits, sampler, reduction, ignore_index,
                                 label_smoothing, generator, partition_strategy, subtract_log_q, sparse,
                                 return_log_prob, implementation, exclude_true=False, noise="shared"):
    """:func:`sampled_softmax_loss` for a traced call (torch.compile, torch.export, meta or fake
    tensors): the same checks of types, shapes and settings; every step that reads values
    (label and ``sampled_values`` checks, the draw, the masks, the loss) is one of the custom
    operators of :mod:`._ops`. A ``generator`` or a sampler of your own is not an operator's
    argument: under torch.compile such a call runs eagerly (a graph break)."""
    arguments = dict(locals())
    table = None if sampled_values is not None or isinstance(sampler, str) else sampler_tables(sampler)
    custom_sampler = sampled_values is None and not isinstance(sampler, str) and table is None
    if (generator is not None or custom_sampler) and torch.compiler.is_compiling():
        return _eager_sampled_softmax_loss(**arguments)
    check_generator(generator)
    _check_sparse_bias(biases, sparse)
    shards, biases, y, h, lead, num_classes, offsets, _, label_smoothing = _prepare(
        weights, biases, labels, inputs, num_classes, num_true, ignore_index, label_smoothing,
        reduction, partition_strategy, check_values=False,
    )
    if sparse and len(shards) > 1:
        raise SampledSoftmaxError(
            "`sparse=True` with sharded `weights` cannot be traced (torch.compile, torch.export, meta tensors): "
            "each shard's rows are a data-dependent selection. Use one table, or sparse=False")
    n, t = y.shape
    kind, draw, support, weights_t, cdf, counts = "log_uniform", "unique", num_classes, None, None, None
    cand = true_count = samp_count = None
    if sampled_values is None:
        if isinstance(sampler, str):
            V.check_choice("sampler", sampler, ("uniform", "log_uniform"))
            kind = sampler
        else:
            make_sampler(sampler, num_classes)  # the eager call's check of the sampler's classes
            kind, draw, support, weights_t, cdf, counts = table
        check_num_sampled(num_sampled, num_classes, unique=draw == "unique", support=support)
    else:
        # No comprehension here: it would make `h` a closure cell, which `locals()` above reads
        # before it is set (torch.compile refuses that).
        cand, true_count, samp_count = V.check_sampled_values_triple(sampled_values)
        cand, true_count, samp_count = (torch.as_tensor(cand, device=h.device), torch.as_tensor(
            true_count, device=h.device), torch.as_tensor(samp_count, device=h.device))
        _check_tensor("sampled_values[0]", cand, floating=False)
        V.check_sampled_values_shapes(tuple(cand.shape), tuple(true_count.shape), tuple(samp_count.shape),
                                      num_sampled, n, t)
        cand, true_count = cand.long(), _true_count_rows(true_count, n, t)
    update_counts = kind == "learned_unigram" and sampler.training
    ids, logq, removed, keep = _ops.columns(
        y.long(), num_sampled, num_classes, kind, draw, support, weights_t, cdf, counts, update_counts, cand,
        true_count, samp_count, bool(remove_accidental_hits), bool(subtract_log_q), ignore_index,
        _compute_dtype(h.dtype))
    loss, logp, _, _, _ = _ops.loss(h, shards, biases, ids, logq, keep, removed, t, list(offsets),
                                    partition_strategy, label_smoothing, bool(sparse), implementation)
    return _finish(loss, logp, keep, reduction, lead, return_log_prob)


@torch.compiler.disable
def _eager_sampled_softmax_loss(**arguments):
    return sampled_softmax_loss(**arguments)


def _finish(loss, logp, valid, reduction, lead, return_log_prob):
    live = None if valid is None else valid.any(1)
    loss = _reduce(loss, live, reduction, lead)
    if return_log_prob:
        return loss, logp.reshape(lead)
    return loss


_COMPILED_LABEL_DTYPES = (torch.int64, torch.int32)


def _compiled_draw(head, weights, biases, labels, inputs, num_sampled, num_classes, num_true,
                   remove_accidental_hits, sampler, reduction, ignore_index, label_smoothing, generator,
                   partition_strategy, subtract_log_q, sparse, return_log_prob):
    """The ``"compiled_draw"`` route: draw, hit mask, log Q and loss in one compiled call,
    without the general argument handling, whose per-call cost is a tenth of the whole loss.

    The caller has checked ``implementation`` and the sampler (:func:`_dispatch.draw_obstacle`).
    This takes the call only where :func:`_dispatch.loss_obstacle` finds nothing and every
    argument is one the general path would accept unchanged (plain tensors of matching shapes,
    ``num_sampled`` in range, known settings); otherwise it returns None having drawn nothing,
    and the general path checks the call, raises its error or takes another route.
    """
    if not (isinstance(weights, torch.Tensor) and isinstance(inputs, torch.Tensor)
            and isinstance(labels, torch.Tensor)):
        return None
    if biases is not None and not isinstance(biases, torch.Tensor):
        return None
    # The label check and ignore_index are the compiled draw's own (it returns None when one
    # label is out of range or ignored): no ignored label is known here.
    if _dispatch.loss_obstacle(inputs.device.type, 1, num_true, False, label_smoothing,
                               (inputs.dtype, weights.dtype, None if biases is None else biases.dtype)):
        return None
    if (weights.dim() != 2 or inputs.dim() < 2 or inputs.shape[-1] != weights.shape[1]
            or weights.shape[0] != num_classes or weights.device.type != "cpu" or labels.device.type != "cpu"):
        return None
    if biases is not None and not (biases.shape == (num_classes,) and biases.device.type == "cpu"):
        return None
    lead = inputs.shape[:-1]
    draw = "unique" if isinstance(sampler, str) else sampler.draw
    if (labels.dtype not in _COMPILED_LABEL_DTYPES or type(num_true) is not int
            or not (labels.shape == lead or labels.shape == lead + (1,))):
        return None
    if (type(num_sampled) is not int or num_sampled < 1 or (draw == "unique" and num_sampled > num_classes)
            or type(label_smoothing) not in (int, float)
            or reduction not in V.REDUCTIONS or partition_strategy not in V.PARTITION_STRATEGIES
            or not (ignore_index is None or (type(ignore_index) is int and -2**63 <= ignore_index < 2**63))
            or not (generator is None or (isinstance(generator, torch.Generator) and generator.device.type == "cpu"))
            or (not isinstance(sampler, str) and sampler.num_classes != num_classes)):
        return None
    n = math.prod(lead)
    ext = None if n == 0 else _dispatch.compiled("auto", None)
    if ext is None:
        return None
    kind = _dispatch.compiled_kind(sampler)
    h = inputs if inputs.dim() == 2 else inputs.reshape(n, inputs.shape[-1])
    try:
        loss = ext.sampled_softmax_sampled(h, weights, inputs.new_empty(0) if biases is None else biases,
                                           labels.reshape(n), num_sampled, int(kind), int(DrawKind[draw]), generator,
                                           bool(remove_accidental_hits), bool(subtract_log_q),
                                           int(HeadKind[head.name]), bool(sparse), ignore_index,
                                           unique_draw_limit(num_sampled))
    except ValueError as e:  # the unique draw's bound: the Python path's error, word for word
        found = re.search(r"unique draw stopped: num_sampled=(\d+) num_tries=(\d+) found=(\d+)", str(e))
        if found is None:
            raise
        raise unique_draw_error(*(int(v) for v in found.groups())) from None
    if loss is None:  # a label out of range or ignored: nothing was drawn
        return None
    return _finish(loss, -loss if return_log_prob else None, None, reduction, lead, return_log_prob)


def _loss_obstacle(shards, biases, h, t, valid, label_smoothing, exclude_true=False):
    """:func:`_dispatch.loss_obstacle` of a checked call."""
    return _dispatch.loss_obstacle(h.device.type, len(shards), t, valid is not None, label_smoothing,
                                   (h.dtype, shards[0].dtype, None if biases is None else biases.dtype), exclude_true)


def full_logits(weights: Tables, biases: torch.Tensor | None, inputs: torch.Tensor, *,
                partition_strategy: Partition = "div") -> torch.Tensor:
    """Exact logits ``inputs @ W^T + b``, ``[..., V]``, from one table or shards."""
    shards = _shards(weights)
    if len(shards) > 1:
        V.shard_layout([w.shape[0] for w in shards], sum(w.shape[0] for w in shards), partition_strategy)
    W = _full_table(shards, partition_strategy)
    cdt = _compute_dtype(inputs.dtype)
    return torch.nn.functional.linear(inputs.to(cdt), W.to(cdt), None if biases is None else biases.to(cdt))


def full_softmax_loss(
    weights: Tables, biases: Tables | None, labels: torch.Tensor, inputs: torch.Tensor, *,
    reduction: Reduction = "none", ignore_index: int | None = None, label_smoothing: float = 0.0,
    partition_strategy: Partition = "div", return_log_prob: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Exact softmax cross-entropy over all ``V`` classes, for evaluation.

    .. math:: \ell_i = -\frac{1 - \epsilon}{T}\sum_j \log p(y_{ij} \mid h_i) - \frac{\epsilon}{V}\sum_k \log p(k \mid h_i),
        \qquad p(\cdot \mid h_i) = \mathrm{softmax}(W h_i + b)

    Same arguments and conventions as :func:`sampled_softmax_loss` (``T = 1`` and ``eps``
    match ``F.cross_entropy``). ``return_log_prob`` also returns the mean
    ``log p(y_ij | h_i)`` over the row's kept labels.

    Example:
        >>> import torch
        >>> from sampled_softmax.torch import full_softmax_loss
        >>> W = torch.eye(3, 2, dtype=torch.float64)
        >>> full_softmax_loss(W, None, torch.tensor([0]), torch.tensor([[1.0, 2.0]], dtype=torch.float64))
        tensor([1.4076], dtype=torch.float64)
    """
    _check_tensor("labels", labels, floating=False)
    _check_tensor("inputs", inputs, floating=True)
    traced = _ops.traced(inputs)
    if not traced:
        _check_not_transformed(inputs, weights)
    shards, biases, y, h, lead, num_classes, _, valid, label_smoothing = _prepare(
        weights, biases, labels, inputs, None, labels.shape[-1] if labels.dim() == inputs.dim() else 1,
        ignore_index, label_smoothing, reduction, partition_strategy, check_values=not traced,
    )
    y = y.long()
    if traced:  # the range check as an operator; every label's mask, as values are unknown
        y = _ops.checked_labels(y, num_classes, ignore_index)
        valid = None if ignore_index is None else y != ignore_index
    # The [N, V] logits follow autocast when it is on (the matmul is the cost); the softmax and
    # the loss are float32 or wider, as in F.cross_entropy under autocast.
    logits = full_logits(shards, biases, h, partition_strategy=partition_strategy)
    device_type = h.device.type
    with torch.autocast(device_type, enabled=False) if _autocast_on(device_type) else contextlib.nullcontext():
        return _full_softmax_from_logits(logits, y, valid, label_smoothing, reduction, lead, return_log_prob)


def _full_softmax_from_logits(logits, y, valid, label_smoothing, reduction, lead, return_log_prob):
    if logits.dtype in _LOW_PRECISION:
        logits = logits.float()
    logp_all = torch.log_softmax(logits, dim=-1)
    n, t = y.shape
    y_safe = y if valid is None else torch.where(valid, y, 0)
    picked = logp_all.gather(1, y_safe)
    if valid is None:
        logp = picked.mean(1)
        live = None
    else:
        n_true = valid.sum(1)
        live = n_true > 0
        logp = torch.where(live, (picked * valid).sum(1) / n_true.clamp(min=1), 0.0)
    loss = -logp
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * logp_all.mean(1)
        if live is not None:
            loss = torch.where(live, loss, 0.0)
    loss = _reduce(loss, live, reduction, lead)
    if return_log_prob:
        return loss, logp.reshape(lead)
    return loss
