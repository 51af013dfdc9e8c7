"""A Flax NNX output layer trained with sampled softmax (or NCE, negative sampling).

``SampledSoftmax`` owns the class table ``kernel [V, D]`` and ``bias [V]`` and draws its
candidates from its own ``nnx.Rngs`` stream (``"sampler"``, falling back to ``"default"``), so a
training step is ``nnx.jit`` / ``nnx.value_and_grad`` of a plain call, as with ``nnx.Dropout``.
``model.eval()`` (``deterministic=True``) switches to the exact full softmax, as the PyTorch
module's eval mode does; ``log_prob`` / ``predict`` are exact at any time. With
``sampler="learned_unigram"`` the counts are a :class:`SamplerCounts` variable (not a
``nnx.Param``: optimizers built with ``wrt=nnx.Param`` leave them alone), updated after each
training draw, as ``tf.random.learned_unigram_candidate_sampler`` does, and saved with the state.

Importing this module imports Flax (``pip install sampled-softmax[flax]``).
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from .. import _validation as V
from . import samplers as S
from .functional import full_logits, full_softmax_loss, nce_loss, negative_sampling_loss, sampled_softmax_loss

__all__ = ["SampledSoftmax", "SamplerCounts", "SamplerTable"]

SAMPLER_NAMES = ("log_uniform", "uniform", "learned_unigram")


class SamplerCounts(nnx.Variable):
    """A learned unigram sampler's class counts: state, not a trainable parameter."""


class SamplerTable(nnx.Variable):
    """A given unigram sampler's weight table: a constant of the layer, not a parameter."""


class SampledSoftmax(nnx.Module):
    r"""Softmax output layer over ``num_classes`` trained with sampled softmax (Jean et al. 2014).

    In training mode (``deterministic=False``, the default) a call draws ``num_sampled``
    candidates shared by the batch from the module's ``"sampler"`` RNG stream and returns the
    sampled loss over the corrected logits ``o_k = h . W_k + b_k - log E(k)`` (see
    :func:`sampled_softmax.jax.sampled_softmax_loss`); under ``model.eval()`` it returns the exact
    full softmax cross-entropy. Only ``B*T + S`` rows of the table get a gradient per step; for a
    step whose cost does not grow with ``V`` use :func:`sampled_softmax.jax.sparse.value_and_row_grads`
    on ``kernel`` and ``bias`` directly.

    Args:
        in_features: ``D``.
        num_classes: ``V``.
        num_sampled: ``S``, candidates drawn per training call.
        rngs: ``nnx.Rngs``; the ``"sampler"`` stream (else ``"default"``) draws the candidates,
            ``"params"`` (else ``"default"``) initialises the table.
        sampler: ``"learned_unigram"`` (default: counts learned from the labels, any vocabulary
            order), ``"log_uniform"`` (only for ids sorted by decreasing frequency; on another
            order it can double the perplexity, and a
            :class:`~sampled_softmax.VocabularyOrderWarning` says so), ``"uniform"``, or a
            :class:`sampled_softmax.jax.samplers.Sampler` (e.g. ``samplers.unigram(V, counts)``).
        draw: ``"unique_exact"`` (default) or ``"with_replacement"``.
        use_bias: learn a bias per class. Default True.
        remove_accidental_hits: remove candidates equal to a row's label. Default None: the
            loss's own, True for sampled softmax, False for the two sigmoid losses (as in TensorFlow).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        ignore_index: label value that contributes nothing. Default -100, as the PyTorch and Keras layers.
        label_smoothing: ``eps`` in ``[0, 1]`` (softmax only). Default 0.
        loss: ``"sampled_softmax"`` (default), ``"nce"`` or ``"negative_sampling"``; eval mode is the
            exact full softmax for all three.
        exclude_true: the rejection estimator (the labels kept out of the sample), as for
            :func:`sampled_softmax.jax.sampled_softmax_loss`; sampled softmax only, and ``draw``
            then defaults to ``"with_replacement"``. Default False.
        param_dtype: the table's dtype. Default float32.
        deterministic: start in eval mode. Default False.

    Shape:
        - inputs: ``[..., D]``; labels: ``[...]`` or ``[..., T]`` for ``T`` labels per example
        - output: the loss, a scalar or ``[...]`` with ``reduction="none"``

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> from sampled_softmax.jax.flax import SampledSoftmax
        >>> layer = SampledSoftmax(16, 1000, num_sampled=20, rngs=nnx.Rngs(0))
        >>> h, y = jnp.ones((4, 16)), jnp.arange(4)
        >>> layer(h, y).shape, layer.log_prob(h).shape
        ((), (4, 1000))
    """

    def __init__(self, in_features: int, num_classes: int, num_sampled: int, *, rngs: nnx.Rngs,
                 sampler="learned_unigram", draw: Literal["unique_exact", "with_replacement"] | None = None,
                 use_bias: bool = True, remove_accidental_hits: bool | None = None,
                 reduction: Literal["none", "mean", "sum"] = "mean", ignore_index: int | None = -100,
                 label_smoothing: float = 0.0,
                 loss: Literal["sampled_softmax", "nce", "negative_sampling"] = "sampled_softmax",
                 exclude_true: bool = False, param_dtype=jnp.float32, deterministic: bool = False):
        self.in_features = V.check_positive_int("in_features", in_features)
        self.num_classes = V.check_positive_int("num_classes", num_classes)
        settings = V.check_output_layer(loss=loss, reduction=reduction, label_smoothing=label_smoothing,
                                         remove_accidental_hits=remove_accidental_hits, ignore_index=ignore_index,
                                         exclude_true=exclude_true)
        self.loss, self.reduction, self.label_smoothing = settings.loss, settings.reduction, settings.label_smoothing
        self.remove_accidental_hits, self.ignore_index = settings.remove_accidental_hits, settings.ignore_index
        self.exclude_true = settings.exclude_true
        if draw is None and self.exclude_true:
            draw = "with_replacement"  # the estimator's expected counts are S q
        self.draw = None if draw is None else V.check_choice("draw", draw, S.DRAWS)
        if self.exclude_true:
            V.check_exclusion_draw(self.draw)
        self.num_sampled = V.check_num_sampled(num_sampled, self.num_classes, unique=draw != "with_replacement")
        self.deterministic = V.check_bool("deterministic", deterministic)
        table = None
        if isinstance(sampler, S.Sampler):
            S.make(sampler, self.num_classes)  # checks its size
            self.sampler = sampler.kind  # the table (arrays) is a variable, the kind a static string
            if sampler.weights is not None:
                table = SamplerTable(jnp.asarray(sampler.weights))
        else:
            self.sampler = V.check_choice("sampler", sampler, SAMPLER_NAMES)
        self.table = nnx.data(table)
        self.counts = (SamplerCounts(jnp.ones(self.num_classes, jnp.float32))
                       if self.sampler == "learned_unigram" else None)
        # nn.Linear's initialisation, as the PyTorch module.
        bound = 1.0 / math.sqrt(self.in_features)
        init = nnx.initializers.uniform(2 * bound)
        key = rngs.params() if "params" in rngs else rngs.default()
        k_w, k_b = jax.random.split(key)
        self.kernel = nnx.Param(init(k_w, (self.num_classes, self.in_features), param_dtype) - bound)
        self.bias = nnx.Param(init(k_b, (self.num_classes,), param_dtype) - bound) if use_bias else None
        self.rngs = (rngs["sampler"] if "sampler" in rngs else rngs["default"]).fork()

    def _sampler(self):
        if self.counts is not None:
            return S.unigram(self.num_classes, self.counts[...])
        if self.table is not None:
            return S.Sampler(self.sampler, self.num_classes, self.table[...])
        return self.sampler

    def __call__(self, inputs, labels, *, key: jax.Array | None = None, deterministic: bool | None = None):
        """The loss: sampled in training mode (``key``, if given, replaces the module's stream),
        the exact full softmax in eval mode."""
        deterministic = self.deterministic if deterministic is None else deterministic
        bias = None if self.bias is None else self.bias[...]
        labels = jnp.asarray(labels)
        num_true = 1 if labels.ndim == jnp.ndim(inputs) - 1 else labels.shape[-1]
        if deterministic:
            return full_softmax_loss(self.kernel[...], bias, labels, inputs, num_true, ignore_index=self.ignore_index,
                                     label_smoothing=self.label_smoothing, reduction=self.reduction)
        key = self.rngs() if key is None else key
        common = dict(num_true=num_true, key=key, sampler=self._sampler(), draw=self.draw,
                      remove_accidental_hits=self.remove_accidental_hits, ignore_index=self.ignore_index,
                      reduction=self.reduction)
        args = (self.kernel[...], bias, labels, inputs, self.num_sampled, self.num_classes)
        if self.loss == "sampled_softmax":
            out = sampled_softmax_loss(*args, label_smoothing=self.label_smoothing, exclude_true=self.exclude_true,
                                       **common)
        elif self.loss == "nce":
            out = nce_loss(*args, **common)
        else:
            out = negative_sampling_loss(*args, **common)
        if self.counts is not None:
            valid = None if self.ignore_index is None else labels != self.ignore_index
            y = labels if valid is None else jnp.where(valid, labels, 0)
            self.counts[...] = S.learned_unigram_update(self.counts[...], jax.lax.stop_gradient(y), valid)
        return out

    def logits(self, inputs) -> jax.Array:
        """Exact logits ``[..., V]``."""
        return full_logits(self.kernel[...], None if self.bias is None else self.bias[...], inputs)

    def log_prob(self, inputs) -> jax.Array:
        """Exact log-probabilities ``[..., V]`` (the full softmax)."""
        return jax.nn.log_softmax(self.logits(inputs), axis=-1)

    def predict(self, inputs) -> jax.Array:
        """The most probable class ``[...]``."""
        return jnp.argmax(self.logits(inputs), axis=-1)
