"""``SampledSoftmax`` (also ``SampledSoftmaxLoss``, its first name): an output layer that trains
with sampled softmax and evaluates exactly."""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import nn

from .. import _validation as V
from ..samplers import LOSSES  # the names of the training losses, in every front end
from ._dispatch import IMPLEMENTATIONS
from ._routes import _reduce
from .functional import full_logits, full_softmax_loss, nce_loss, negative_sampling_loss, sampled_softmax_loss
from .samplers import CandidateSampler, LearnedUnigramSampler, make_sampler
from .table_optim import TableOptimizer, take_table

__all__ = ["SampledSoftmax", "SampledSoftmaxLoss", "SampledSoftmaxOutput", "LOSSES"]


class SampledSoftmaxOutput(NamedTuple):
    """``output``: per-example log-probability of the target ``[...]`` (the sampled estimate
    in training mode, exact in eval mode); ``loss``: the loss, reduced as asked."""

    output: torch.Tensor
    loss: torch.Tensor


class SampledSoftmax(nn.Module):
    r"""Softmax output layer over ``num_classes`` trained with sampled softmax (Jean et al. 2014).

    Owns the class table ``weight [V, D]`` and ``bias [V]`` (or shares a given ``weight``
    Parameter, e.g. a tied input embedding). In training mode each call draws ``num_sampled``
    candidates shared by the batch and returns the sampled softmax loss with corrected logits
    ``o_k = h . W_k + b_k - log E(k)``; in eval mode it computes the exact full softmax. Only
    ``B*T + S`` rows of the table are read or receive gradient per training step; with
    ``sparse=True`` those gradients are sparse rows, for :class:`SparseRowAdam`,
    ``torch.optim.SparseAdam``, ``SGD`` or ``Adagrad``.

    Args:
        in_features: ``D``.
        num_classes: ``V``.
        num_sampled: ``S``, candidates drawn per training step.
        sampler: ``"learned_unigram"`` (default: a :class:`LearnedUnigramSampler`, which learns
            the label frequencies as it trains, so any vocabulary order works), ``"log_uniform"``
            (only for class ids sorted by decreasing frequency: on another order it can double
            the perplexity, and a :class:`~sampled_softmax.VocabularyOrderWarning` says so),
            ``"uniform"`` or a :class:`CandidateSampler`, e.g. :class:`UnigramSampler` with
            known counts (registered as a submodule: its state, e.g. learned counts, is in
            ``state_dict``). ``benchmarks/sampler_study.py`` measures the choice.
        bias: learn a bias per class. Default True.
        weight: an existing ``[V, D]`` Parameter to share instead of creating one.
        remove_accidental_hits: mask candidates equal to a row's label. Default None: the loss's
            own default, True for sampled softmax, False for NCE and negative sampling (as
            ``nce_loss`` and ``tf.nn.nce_loss``).
        sparse: sparse row gradients for ``weight`` and ``bias``. Default False.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        ignore_index: target value that contributes nothing. Default -100.
        label_smoothing: ``eps`` in ``[0, 1]``. Default 0.
        subtract_log_q: subtract ``log E(k)`` (False gives negative sampling). Default True.
        implementation: ``"auto"``, ``"compiled"`` or ``"python"``, as for
            :func:`~sampled_softmax.torch.sampled_softmax_loss`. Default ``"auto"``.
        loss: the training loss: ``"sampled_softmax"`` (default), ``"nce"``
            (:func:`~sampled_softmax.torch.nce_loss`) or ``"negative_sampling"``
            (:func:`~sampled_softmax.torch.negative_sampling_loss`; ``subtract_log_q`` is then
            False). With the last two, ``output`` in training mode is the per-example
            log-likelihood of their logistic classifications (minus the unreduced loss), and
            ``label_smoothing`` must be 0. Eval mode is the exact full softmax for all three.
        exclude_true: the rejection estimator (the labels kept out of the sample), as for
            :func:`~sampled_softmax.torch.sampled_softmax_loss`; sampled softmax only. Default
            False.
        noise: ``"shared"`` (default): one set of candidates per step for the batch;
            ``"per_example"``: each example's own ``num_sampled`` (word2vec's way). With either
            of these two, a sampler given by name draws with replacement (a module must), and
            ``output`` in training mode is minus the unreduced loss.
        table_optimizer: a :class:`~sampled_softmax.torch.RowSGD`, ``RowAdagrad`` or ``RowAdam``
            fused into the loss's backward: the rows a training step touched (and their biases)
            are updated in place, and ``weight`` and ``bias`` get no gradient (they are made not
            to require grad, so the model's own optimizer leaves them alone). Its state is in this
            layer's ``state_dict``. Default None: the table has a gradient, for any optimizer.

    Shape:
        - input: ``[..., D]``
        - target: ``[...]`` or ``[..., T]`` for ``T`` labels per example
        - output: ``[...]``; loss: scalar, or ``[...]`` for ``reduction="none"``

    Example:
        >>> import torch
        >>> from sampled_softmax.torch import SampledSoftmax
        >>> _ = torch.manual_seed(0)
        >>> layer = SampledSoftmax(16, 1000, num_sampled=20)
        >>> out = layer(torch.randn(4, 7, 16), torch.randint(1000, (4, 7)))
        >>> out.output.shape, out.loss.shape
        (torch.Size([4, 7]), torch.Size([]))
        >>> layer.log_prob(torch.randn(4, 16)).shape
        torch.Size([4, 1000])
    """

    def __init__(self, in_features: int, num_classes: int, num_sampled: int, *,
                 sampler: str | CandidateSampler = "learned_unigram", bias: bool = True,
                 weight: torch.nn.Parameter | None = None, remove_accidental_hits: bool | None = None,
                 sparse: bool = False,
                 reduction: Literal["none", "mean", "sum"] = "mean", ignore_index: int | None = -100,
                 label_smoothing: float = 0.0, subtract_log_q: bool = True,
                 implementation: Literal["auto", "compiled", "python"] = "auto",
                 loss: Literal["sampled_softmax", "nce", "negative_sampling"] = "sampled_softmax",
                 exclude_true: bool = False, noise: Literal["shared", "per_example"] = "shared",
                 table_optimizer: TableOptimizer | None = None, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.in_features = V.check_positive_int("in_features", in_features)
        self.num_classes = V.check_positive_int("num_classes", num_classes)
        self.num_sampled = V.check_positive_int("num_sampled", num_sampled)
        settings = V.check_output_layer(loss=loss, reduction=reduction, label_smoothing=label_smoothing,
                                         remove_accidental_hits=remove_accidental_hits, ignore_index=ignore_index,
                                         exclude_true=exclude_true, noise=noise)
        self.loss, self.reduction, self.label_smoothing = settings.loss, settings.reduction, settings.label_smoothing
        self.remove_accidental_hits, self.ignore_index = settings.remove_accidental_hits, settings.ignore_index
        self.exclude_true, self.noise = settings.exclude_true, settings.noise
        self.subtract_log_q = bool(subtract_log_q)
        self.sparse = bool(sparse)
        self.implementation = V.check_choice("implementation", implementation, IMPLEMENTATIONS)
        # The rejection estimator and per-example noise need draws with replacement (E = S q).
        draw = "with_replacement" if self.exclude_true or self.noise == "per_example" else "unique"
        if isinstance(sampler, str) and sampler == "learned_unigram":
            sampler = LearnedUnigramSampler(num_classes, draw=draw).to(device)  # its counts are this module's state
        elif isinstance(sampler, str) and draw == "with_replacement":
            sampler = type(make_sampler(sampler, num_classes))(num_classes, draw=draw)
        self.sampler = make_sampler(sampler, num_classes)
        if draw == "with_replacement" and self.sampler.draw != draw:
            setting = "exclude_true=True" if self.exclude_true else "noise='per_example'"
            raise V.SampledSoftmaxError(f"`sampler` must draw 'with_replacement' with {setting} (its expected counts "
                                        f"must be S q); received a sampler with draw={self.sampler.draw!r}")
        V.check_num_sampled(num_sampled, num_classes, unique=self.sampler.draw == "unique", support=self.sampler.support)
        if weight is None:
            self.weight = nn.Parameter(torch.empty(num_classes, in_features, **factory))
        else:
            if not isinstance(weight, torch.Tensor):
                raise TypeError(f"`weight` must be a torch.Tensor or Parameter; received {type(weight).__name__}")
            if tuple(weight.shape) != (num_classes, in_features):
                raise V.SampledSoftmaxError(
                    f"`weight` must have shape [{num_classes}, {in_features}]; received shape {list(weight.shape)}"
                )
            self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight)
        self.bias = nn.Parameter(torch.empty(num_classes, **factory)) if bias else None
        self._owns_weight = weight is None
        self.reset_parameters()
        self.table_optimizer = take_table(table_optimizer, self.weight, self.bias, shared=weight is not None,
                                          sparse=self.sparse)

    def reset_parameters(self) -> None:
        # nn.Linear's initialisation; a shared weight is left as it is.
        bound = 1.0 / math.sqrt(self.in_features)
        if self._owns_weight:
            nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def _num_true(self, input, target):
        return target.shape[-1] if target.dim() == input.dim() else 1

    def forward(self, input: torch.Tensor, target: torch.Tensor, *, generator=None) -> SampledSoftmaxOutput:
        if not self.training:
            loss, output = full_softmax_loss(
                self.weight, self.bias, target, input, reduction=self.reduction,
                ignore_index=self.ignore_index, label_smoothing=self.label_smoothing, return_log_prob=True,
            )
            return SampledSoftmaxOutput(output, loss)
        num_true = self._num_true(input, target)
        common = dict(remove_accidental_hits=self.remove_accidental_hits, sampler=self.sampler,
                      ignore_index=self.ignore_index, generator=generator, sparse=self.sparse,
                      implementation=self.implementation, noise=self.noise, table_optimizer=self.table_optimizer)
        if self.loss == "sampled_softmax" and self.noise == "shared":
            loss, output = sampled_softmax_loss(
                self.weight, self.bias, target, input, self.num_sampled, self.num_classes, num_true,
                reduction=self.reduction, label_smoothing=self.label_smoothing, subtract_log_q=self.subtract_log_q,
                return_log_prob=True, exclude_true=self.exclude_true, **common)
            return SampledSoftmaxOutput(output, loss)
        # The relatives, and per-example noise: the output is minus the unreduced loss.
        if self.loss == "sampled_softmax":
            relative, extra = sampled_softmax_loss, {"subtract_log_q": self.subtract_log_q,
                                                     "label_smoothing": self.label_smoothing,
                                                     "exclude_true": self.exclude_true}
        elif self.loss == "nce":
            relative, extra = nce_loss, {"subtract_log_q": self.subtract_log_q}
        else:
            relative, extra = negative_sampling_loss, {}
        per_example = relative(self.weight, self.bias, target, input, self.num_sampled, self.num_classes, num_true,
                               reduction="none", **common, **extra)
        live = None
        if self.ignore_index is not None:
            live = (target != self.ignore_index).reshape(per_example.numel(), num_true).any(1)
        loss = _reduce(per_example.reshape(-1), live, self.reduction, per_example.shape)
        return SampledSoftmaxOutput(per_example.neg(), loss)

    def logits(self, input: torch.Tensor) -> torch.Tensor:
        """Exact logits ``[..., V]``."""
        return full_logits(self.weight, self.bias, input)

    def log_prob(self, input: torch.Tensor) -> torch.Tensor:
        """Exact log-probabilities over all classes, ``[..., V]``."""
        return torch.log_softmax(self.logits(input), dim=-1)

    def predict(self, input: torch.Tensor) -> torch.Tensor:
        """The most likely class, ``[...]``."""
        return self.logits(input).argmax(dim=-1)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, "
                f"num_sampled={self.num_sampled}, bias={self.bias is not None}, sparse={self.sparse}, "
                f"reduction={self.reduction!r}" + ("" if self.loss == "sampled_softmax" else f", loss={self.loss!r}")
                + (", exclude_true=True" if self.exclude_true else "")
                + ("" if self.noise == "shared" else f", noise={self.noise!r}"))


# The first name of the layer, kept as an alias. Keras' ``SampledSoftmaxLoss`` is a loss object
# bound to its ``SampledSoftmax`` layer; here the layer itself is one name in both front ends.
SampledSoftmaxLoss = SampledSoftmax
