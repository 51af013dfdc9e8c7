"""``sampled_softmax_loss``, ``nce_loss``, ``negative_sampling_loss`` and ``full_softmax_loss``
for PyTorch: the public functions.

A sampled loss is three stages: the candidates and each row's columns (ids, ``log E``, the
removed-candidate mask: :mod:`._columns`), the corrected logits over the gathered rows and a
head (:mod:`._autograd`). Each function here describes its call once (a
:class:`~._prepare.LossCall`) and hands it to the one router, :func:`._routes.route`, which
checks every argument (:mod:`._prepare`) and picks the code that runs (:mod:`._dispatch`): the
compiled CPU core, the Python autograd Function, or the custom operators of a traced call
(:mod:`._traced`). Nothing of size ``V`` or ``B x V`` is made, except the dense gradient itself
when ``sparse=False``.
"""

from __future__ import annotations

import contextlib
from typing import Literal, Sequence, Union

import torch

from .. import _validation as V
from . import _ops
from ._autograd import gbce_head, sigmoid_head, softmax_head
from ._prepare import (
    LossCall, _autocast_on, _check_not_transformed, _check_tensor, _compute_dtype, _full_table, _LOW_PRECISION,
    _prepare, _shards,
)
from ._routes import _reduce, route, route_eagerly
from .samplers import CandidateSampler
from .table_optim import TableOptimizer

__all__ = ["sampled_softmax_loss", "nce_loss", "negative_sampling_loss", "gbce_loss", "full_softmax_loss",
           "full_logits"]

Tables = Union[torch.Tensor, Sequence[torch.Tensor]]  # one [V, ...] table or its shards
Reduction = Literal["none", "mean", "sum"]
Partition = Literal["div", "mod"]
Implementation = Literal["auto", "compiled", "python"]
Noise = Literal["shared", "per_example"]


def sampled_softmax_loss(
    weights: Tables, biases: Tables | None, labels: torch.Tensor, inputs: torch.Tensor, num_sampled: int,
    num_classes: int, num_true: int = 1, sampled_values: Sequence | None = None, remove_accidental_hits: bool = True,
    *, sampler: str | CandidateSampler = "log_uniform", reduction: Reduction = "none", ignore_index: int | None = None,
    label_smoothing: float = 0.0, generator: torch.Generator | None = None, partition_strategy: Partition = "div",
    subtract_log_q: bool = True, sparse: bool = False, return_log_prob: bool = False,
    implementation: Implementation = "auto", exclude_true: bool = False,
    noise: Noise = "shared", table_optimizer: TableOptimizer | None = None, excluded_ids: torch.Tensor | None = None,
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
        table_optimizer: a :class:`RowSGD`, :class:`RowAdagrad` or :class:`RowAdam` fused into
            the backward: each distinct row the call touched (and its bias) is updated in place
            with its summed gradient, and no gradient is returned for ``weights`` and
            ``biases``, which must not require grad (the table is the fused optimizer's alone).
            One weight table, one bias tensor, ``sparse=False``; the rest of the model keeps
            its optimizer. Compiled where the loss is (per-example noise: the Python route).
        excluded_ids: integer ``[..., K]`` (the batch shape of ``inputs``): ids each row must not
            see as negatives, removed from its normalizer as an accidental hit (probability 0,
            gradient exactly 0), e.g. the items a user already interacted with; negative entries
            are padding. Not with ``exclude_true``; the candidates are drawn in Python (the
            compiled core computes the loss), per-example noise runs on the Python route.

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
    return route(LossCall(
        softmax_head, weights, biases, labels, inputs, num_sampled, num_classes, num_true=num_true,
        sampled_values=sampled_values, remove_accidental_hits=remove_accidental_hits, sampler=sampler,
        reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing, generator=generator,
        partition_strategy=partition_strategy, subtract_log_q=subtract_log_q, sparse=sparse,
        return_log_prob=return_log_prob, implementation=implementation, exclude_true=exclude_true, noise=noise,
        table_optimizer=table_optimizer, excluded_ids=excluded_ids))


def nce_loss(
    weights: Tables, biases: Tables | None, labels: torch.Tensor, inputs: torch.Tensor, num_sampled: int,
    num_classes: int, num_true: int = 1, sampled_values: Sequence | None = None, remove_accidental_hits: bool = False,
    *, sampler: str | CandidateSampler = "log_uniform", reduction: Reduction = "none", ignore_index: int | None = None,
    generator: torch.Generator | None = None, partition_strategy: Partition = "div", subtract_log_q: bool = True,
    sparse: bool = False, implementation: Implementation = "auto", noise: Noise = "shared",
    table_optimizer: TableOptimizer | None = None, excluded_ids: torch.Tensor | None = None,
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
    ``remove_accidental_hits`` defaults to False, as in ``tf.nn.nce_loss``. ``noise``: as for
    :func:`sampled_softmax_loss` (``"per_example"``: each example's own ``num_sampled`` classes,
    corrected by ``log(S q(c))``). ``table_optimizer``, ``excluded_ids``: as for :func:`sampled_softmax_loss`.
    ``implementation``:
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
    return route_eagerly(LossCall(
        sigmoid_head, weights, biases, labels, inputs, num_sampled, num_classes, num_true=num_true,
        sampled_values=sampled_values, remove_accidental_hits=remove_accidental_hits, sampler=sampler,
        reduction=reduction, ignore_index=ignore_index, generator=generator,
        partition_strategy=partition_strategy, subtract_log_q=subtract_log_q, sparse=sparse,
        implementation=implementation, noise=noise, table_optimizer=table_optimizer, excluded_ids=excluded_ids))


def negative_sampling_loss(
    weights: Tables, biases: Tables | None, labels: torch.Tensor, inputs: torch.Tensor, num_sampled: int,
    num_classes: int, num_true: int = 1, sampled_values: Sequence | None = None, remove_accidental_hits: bool = False,
    *, sampler: str | CandidateSampler = "log_uniform", reduction: Reduction = "none", ignore_index: int | None = None,
    generator: torch.Generator | None = None, partition_strategy: Partition = "div", sparse: bool = False,
    implementation: Implementation = "auto", noise: Noise = "shared", table_optimizer: TableOptimizer | None = None,
    excluded_ids: torch.Tensor | None = None,
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
    word2vec skips it. Same arguments as :func:`nce_loss` without ``subtract_log_q`` (word2vec's
    in-place update of the rows: ``table_optimizer=RowSGD(lr)``; ``excluded_ids`` as for
    :func:`sampled_softmax_loss`).

    Example:
        >>> import torch
        >>> from sampled_softmax.torch import negative_sampling_loss
        >>> W = torch.eye(3, 2, dtype=torch.float64)
        >>> sv = (torch.tensor([1, 2]), torch.ones(1, 1), torch.ones(2))
        >>> negative_sampling_loss(W, None, torch.tensor([0]), torch.tensor([[1.0, 2.0]], dtype=torch.float64), 2, 3,
        ...                        sampled_values=sv)
        tensor([3.1333], dtype=torch.float64)
    """
    return route_eagerly(LossCall(
        sigmoid_head, weights, biases, labels, inputs, num_sampled, num_classes, num_true=num_true,
        sampled_values=sampled_values, remove_accidental_hits=remove_accidental_hits, sampler=sampler,
        reduction=reduction, ignore_index=ignore_index, generator=generator,
        partition_strategy=partition_strategy, subtract_log_q=False, sparse=sparse, implementation=implementation,
        noise=noise, table_optimizer=table_optimizer, excluded_ids=excluded_ids))


def gbce_loss(
    weights: Tables, biases: Tables | None, labels: torch.Tensor, inputs: torch.Tensor, num_sampled: int,
    num_classes: int, num_true: int = 1, sampled_values: Sequence | None = None, remove_accidental_hits: bool = False,
    *, t: float = 0.75, sampler: str | CandidateSampler = "uniform", reduction: Reduction = "none",
    ignore_index: int | None = None, generator: torch.Generator | None = None, partition_strategy: Partition = "div",
    sparse: bool = False, implementation: Implementation = "auto", noise: Noise = "shared",
    table_optimizer: TableOptimizer | None = None, excluded_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""gBCE (Petrov & Macdonald 2023, gSASRec): :func:`negative_sampling_loss` with the
    positive's probability raised to :math:`\beta`, which calibrates a model trained on ``k``
    negatives of the ``V - 1`` (:math:`\alpha = k / (V - 1)`):

    .. math::
        \beta = \alpha\,\big(t\,(1 - 1/\alpha) + 1/\alpha\big),\qquad
        \ell_i = -\beta \log \sigma(o_{i y_i}) - \sum_k \log \sigma(-o_{i c_k})

    ``t = 0`` is negative sampling (:math:`\beta = 1`), ``t = 1`` full calibration
    (:math:`\beta = \alpha`); gSASRec's default is 0.75. ``k`` is ``num_sampled`` (each row's
    negatives, shared or per example). The same arguments as :func:`negative_sampling_loss` plus
    ``t``; the default sampler is ``"uniform"``, the noise gBCE's calibration assumes. Python
    route (the compiled core has no gBCE head).

    Example:
        >>> import torch
        >>> from sampled_softmax.torch import gbce_loss
        >>> W = torch.eye(3, 2, dtype=torch.float64)
        >>> sv = (torch.tensor([1]), torch.ones(1, 1), torch.ones(1))
        >>> gbce_loss(W, None, torch.tensor([0]), torch.tensor([[1.0, 2.0]], dtype=torch.float64), 1, 3,
        ...           sampled_values=sv, t=1.0)
        tensor([2.2836], dtype=torch.float64)
    """
    num_sampled, num_classes = V.check_positive_int("num_sampled", num_sampled), V.check_positive_int(
        "num_classes", num_classes)
    V.check_gbce(num_sampled, num_classes, t)
    alpha = num_sampled / (num_classes - 1)
    beta = alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)
    return route_eagerly(LossCall(
        gbce_head(beta), weights, biases, labels, inputs, num_sampled, num_classes, num_true=num_true,
        sampled_values=sampled_values, remove_accidental_hits=remove_accidental_hits, sampler=sampler,
        reduction=reduction, ignore_index=ignore_index, generator=generator,
        partition_strategy=partition_strategy, subtract_log_q=False, sparse=sparse, implementation=implementation,
        noise=noise, table_optimizer=table_optimizer, excluded_ids=excluded_ids))


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
    p = _prepare(LossCall(None, weights, biases, labels, inputs, None, None,
                          labels.shape[-1] if labels.dim() == inputs.dim() else 1, reduction=reduction,
                          ignore_index=ignore_index, label_smoothing=label_smoothing,
                          partition_strategy=partition_strategy), check_values=not traced)
    shards, biases, h, lead, num_classes, valid = p.shards, p.biases, p.h, p.lead, p.num_classes, p.valid
    y = p.y.long()
    if traced:  # the range check as an operator; every label's mask, as values are unknown
        y = _ops.checked_labels(y, num_classes, ignore_index)
        valid = None if ignore_index is None else y != ignore_index
    # The [N, V] logits follow autocast when it is on (the matmul is the cost); the softmax and
    # the loss are float32 or wider, as in F.cross_entropy under autocast.
    logits = full_logits(shards, biases, h, partition_strategy=partition_strategy)
    device_type = h.device.type
    with torch.autocast(device_type, enabled=False) if _autocast_on(device_type) else contextlib.nullcontext():
        return _full_softmax_from_logits(logits, y, valid, p.label_smoothing, reduction, lead, return_log_prob)


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
