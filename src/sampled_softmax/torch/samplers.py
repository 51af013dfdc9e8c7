"""Candidate samplers as ``nn.Module``s: their state lives in ``state_dict``.

Each returns :class:`sampled_softmax.SampledValues` (candidates int64 ``[S]``, expected counts
float32 ``[B, T]`` and ``[S]``, as TensorFlow's samplers do), drawn on the device of the true
classes with an optional ``torch.Generator``. The formulas are those of
:mod:`sampled_softmax.samplers`.

``draw`` picks how candidates are drawn:

* ``"with_replacement"``: ``S`` independent draws, ``E = S Q``. No host synchronisation.
* ``"unique"`` (default, TensorFlow's ``unique=True``): ``S`` distinct classes,
  ``E = 1 - (1 - Q) ** num_tries``. The number of tries is data dependent, so this mode reads
  one count back to the host per call (free on the CPU, a synchronisation on an accelerator).
* ``"unique_exact"``: ``S`` draws, de-duplicated; repeats become padding slots (``E = inf``,
  removed from every normalizer) and ``E = 1 - (1 - Q) ** S`` is the exact inclusion
  probability. No host synchronisation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .. import SampledSoftmaxError, SampledValues
from .._validation import check_choice, check_num_sampled, check_positive_int
from .. import samplers as NS
from ..samplers import DRAWS, unigram_weights
from . import _compiled

__all__ = [
    "CandidateSampler", "UniformSampler", "LogUniformSampler", "UnigramSampler",
    "LearnedUnigramSampler", "make_sampler",
]


def keep_buffer_dtypes(module: nn.Module, apply, fn, recurse):
    """``apply(fn, recurse)`` (a module's ``nn.Module._apply``) moving ``module``'s buffers to
    their new device but keeping their dtypes: state such as counts and estimates, which a
    model's ``.half()`` or ``.to(torch.bfloat16)`` must not round."""
    before = dict(module._buffers)
    apply(fn, recurse)
    for name, old in before.items():
        new = module._buffers.get(name)
        if old is not None and new is not None and new.dtype != old.dtype:
            module._buffers[name] = old.to(device=new.device)
    return module


def check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator or None; received {type(generator).__name__}")


def check_ignore_index(ignore_index) -> None:
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise TypeError(f"`ignore_index` must be an int or None; received {type(ignore_index).__name__}")


def _repeated_slots(values: torch.Tensor) -> torch.Tensor:
    """True where a value already appeared at an earlier position (sort-based, no sync)."""
    sorted_vals, order = torch.sort(values, stable=True)
    first = torch.ones_like(sorted_vals, dtype=torch.bool)
    first[1:] = sorted_vals[1:] != sorted_vals[:-1]
    repeated = torch.empty_like(first)
    repeated[order] = ~first
    return repeated


class CandidateSampler(nn.Module):
    """Base class. Subclasses give ``probs(ids)`` and ``_sample(u)`` in torch ops (used on
    accelerators) and ``_distribution()``, their NumPy twin from :mod:`sampled_softmax.samplers`
    (used on the CPU, where NumPy's small-array operations cost a fraction of torch's). Both
    paths read the same uniforms from the generator and give the same draws."""

    def __init__(self, num_classes: int, *, draw: str = "unique"):
        super().__init__()
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.draw = check_choice("draw", draw, DRAWS)

    @property
    def support(self) -> int:
        """Number of classes with non-zero probability."""
        return self.num_classes

    def probs(self, ids: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Single-draw probability ``Q(id)`` of each id (float64)."""
        raise NotImplementedError

    def _sample(self, u: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _distribution(self) -> NS.Distribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def _apply(self, fn, recurse=True):
        # `.half()`, `.to(torch.bfloat16)` on a model move the sampler's tables with it but
        # must not round them: float16 cumulative counts overflow, bfloat16 counts stop at 2048.
        return keep_buffer_dtypes(self, super()._apply, fn, recurse)

    def forward(
        self, true_classes: torch.Tensor, num_sampled: int, *, generator=None, ignore_index=None
    ) -> SampledValues:
        """Draw ``num_sampled`` candidates; expected counts of ``true_classes [B, T]`` and of them.

        ``true_classes`` must be integers in ``[0, num_classes)``; those equal to
        ``ignore_index`` get an expected count of 1 (they are unused).
        """
        if not isinstance(true_classes, torch.Tensor):
            raise TypeError(f"`true_classes` must be a torch.Tensor; received {type(true_classes).__name__}")
        if true_classes.is_floating_point() or true_classes.is_complex() or true_classes.dtype == torch.bool:
            raise TypeError(f"`true_classes` must have an integer dtype; received {true_classes.dtype}")
        check_ignore_index(ignore_index)
        if true_classes.numel():
            kept = true_classes if ignore_index is None else true_classes[true_classes != ignore_index]
            lo, hi = (int(v) for v in torch.aminmax(kept)) if kept.numel() else (None, None)
            NS.check_true_classes(lo, hi, self.num_classes, ignore_index)
        return self._draw_values(true_classes, num_sampled, generator, ignore_index)

    def _draw_values(self, true_classes, num_sampled, generator, ignore_index, *, update=True) -> SampledValues:
        """:meth:`forward` for callers that checked ``true_classes`` already (the losses).
        ``update=False``: the caller updates a learned sampler itself, after reading the
        probabilities the draw used."""
        check_generator(generator)
        num_sampled = check_num_sampled(
            num_sampled, self.num_classes, unique=self.draw == "unique", support=self.support
        )
        valid = None if ignore_index is None else true_classes != ignore_index
        true_safe = true_classes if valid is None else torch.where(valid, true_classes, 0)
        if true_classes.device.type == "cpu":
            candidates, true_count, sampled_count = self._draw_numpy(true_safe, num_sampled, generator)
        else:
            candidates, true_count, sampled_count = self._draw_torch(true_safe, num_sampled, generator)
        if valid is not None:
            true_count = true_count.masked_fill(~valid, 1.0)
        if self.training and update:
            self.update(true_safe, valid)
        return SampledValues(candidates, true_count, sampled_count)

    def _uniforms(self, n, generator, device):
        return torch.rand(n, generator=generator, device=device, dtype=torch.float64)

    def _draw_numpy(self, true_safe, num_sampled, generator):
        candidates, true_count, sampled_count = NS.draw_from_uniforms(
            self._distribution(), true_safe.numpy(), num_sampled, self.draw,
            lambda n: self._uniforms(n, generator, "cpu").numpy())
        return (torch.from_numpy(candidates), torch.from_numpy(true_count.astype(np.float32)),
                torch.from_numpy(sampled_count.astype(np.float32)))

    def _draw_torch(self, true_safe, num_sampled, generator):
        device = true_safe.device
        if self.draw == "unique":
            chunk = 2 * num_sampled + 64
            drawn = self._sample(self._uniforms(chunk, generator, device))
            while True:
                first = torch.nonzero(~_repeated_slots(drawn)).squeeze(1)
                if first.numel() >= num_sampled:  # one read-back per call
                    break
                chunk *= 2
                if drawn.numel() + chunk > NS.unique_draw_limit(num_sampled):
                    raise NS.unique_draw_error(num_sampled, drawn.numel(), first.numel())
                drawn = torch.cat([drawn, self._sample(self._uniforms(chunk, generator, device))])
            first = first[:num_sampled]
            candidates, num_tries = drawn[first], int(first[-1]) + 1
        else:
            candidates = self._sample(self._uniforms(num_sampled, generator, device))
            num_tries = num_sampled
        p = self.probs(torch.cat([true_safe.reshape(-1), candidates]))
        if self.draw == "with_replacement" or (self.draw == "unique" and num_tries == num_sampled):
            counts = p * num_sampled  # TensorFlow's shortcut when a unique draw saw no repeat
        else:
            counts = torch.expm1(torch.log1p(-p).mul_(num_tries)).neg_()
        counts = counts.float()
        n = true_safe.numel()
        sampled_count = counts[n:]
        if self.draw == "unique_exact":
            sampled_count = sampled_count.masked_fill(_repeated_slots(candidates), math.inf)
        return candidates, counts[:n].view(true_safe.shape), sampled_count

    def update(self, true_classes: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Learn from the labels seen (only :class:`LearnedUnigramSampler` does)."""

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, draw={self.draw!r}"


class UniformSampler(CandidateSampler):
    """``Q(k) = 1 / V`` (``tf.random.uniform_candidate_sampler``)."""

    def probs(self, ids):
        return torch.full(ids.shape, 1.0 / self.num_classes, dtype=torch.float64, device=ids.device)

    def _sample(self, u):
        return (u * self.num_classes).long().clamp_(max=self.num_classes - 1)

    def _distribution(self):
        return NS.Uniform(self.num_classes)


class LogUniformSampler(CandidateSampler):
    """Zipfian ``Q(k) = log((k + 2) / (k + 1)) / log(V + 1)`` for classes sorted by decreasing
    frequency (``tf.random.log_uniform_candidate_sampler``, the default of
    ``tf.nn.sampled_softmax_loss``)."""

    def __init__(self, num_classes: int, *, draw: str = "unique"):
        super().__init__(num_classes, draw=draw)
        self._log_range = math.log1p(num_classes)
        self._numpy_twin = NS.LogUniform(num_classes)

    def probs(self, ids):
        return torch.log1p(ids.to(torch.float64).add_(1.0).reciprocal_()).div_(self._log_range)

    def _sample(self, u):
        return (torch.exp(u * self._log_range).long() - 1).remainder_(self.num_classes)

    def _distribution(self):
        return self._numpy_twin


class _TableSampler(CandidateSampler):
    """Sampling by inverting a cumulative weight table ``cdf [V]`` (float64 buffer)."""

    def _weights(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _cdf(self) -> torch.Tensor:
        return torch.cumsum(self._weights(), 0)

    def probs(self, ids):
        w = self._weights()
        return w[ids.to(w.device)].to(ids.device) / self._total()

    def _total(self):
        return self._weights().sum()

    def _sample(self, u):
        cdf = self._cdf()
        # right=True skips zero-weight classes: cdf[k-1] <= x < cdf[k] needs weight(k) > 0.
        ids = torch.searchsorted(cdf, u.to(cdf.device) * cdf[-1], right=True).clamp_(max=self.num_classes - 1)
        return ids.to(u.device)

    def _distribution(self):
        return NS.Unigram(self._weights().cpu().numpy(), self._cdf().cpu().numpy())


class UnigramSampler(_TableSampler):
    """Fixed unigram ``Q(k) ∝ unigrams[k] ** distortion`` (``tf.random.fixed_unigram_candidate_sampler``).

    Args:
        num_classes: ``V``.
        unigrams: counts or probabilities for ids ``num_reserved_ids .. V - 1``.
        distortion: exponent applied to each unigram (word2vec uses 0.75).
        num_reserved_ids: leading ids that are never sampled (probability 0).
    """

    def __init__(self, num_classes: int, unigrams, *, distortion: float = 1.0, num_reserved_ids: int = 0,
                 draw: str = "unique"):
        super().__init__(num_classes, draw=draw)
        if isinstance(unigrams, torch.Tensor):
            unigrams = unigrams.detach().cpu().numpy()
        w = unigram_weights(unigrams, num_classes=num_classes, distortion=distortion,
                            num_reserved_ids=num_reserved_ids)
        self.distortion, self.num_reserved_ids = float(distortion), int(num_reserved_ids)
        self.register_buffer("weights", torch.from_numpy(w))
        self.register_buffer("cdf", torch.from_numpy(np.cumsum(w)))
        self._support = int(np.count_nonzero(w))

    @property
    def support(self):
        return self._support

    # The table's settings travel with its buffers in `state_dict`, and the support is
    # recounted on load: a loaded table must not accept a unique draw it cannot finish.
    def get_extra_state(self):
        return {"distortion": self.distortion, "num_reserved_ids": self.num_reserved_ids}

    def set_extra_state(self, state):
        self.distortion = float(state["distortion"])
        self.num_reserved_ids = int(state["num_reserved_ids"])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._support = int(torch.count_nonzero(self.weights))

    def _weights(self):
        return self.weights

    def _cdf(self):
        return self.cdf

    def _total(self):
        return self.cdf[-1]

    def extra_repr(self):
        return super().extra_repr() + f", distortion={self.distortion}, num_reserved_ids={self.num_reserved_ids}"


class LearnedUnigramSampler(_TableSampler):
    """Unigram distribution learned from the labels seen (``tf.random.learned_unigram_candidate_sampler``).

    Counts start at 1 for every class (as TensorFlow's) and each call in training mode adds the
    true classes it was given, after drawing. The counts are a buffer: ``state_dict`` saves and
    restores them. On the CPU the draw reads a Fenwick tree of the counts
    (:class:`sampled_softmax.samplers.CountsTree`, updated with each batch: ``O((N T + S) log V)``
    a step, the same draws as the cumulative table); on an accelerator it rebuilds the
    cumulative table, one ``O(V)`` pass per draw.
    """

    def __init__(self, num_classes: int, *, draw: str = "unique"):
        super().__init__(num_classes, draw=draw)
        self.register_buffer("counts", torch.ones(num_classes, dtype=torch.float64))
        self._tree = None  # derived from `counts`; rebuilt when they change other than by `update`
        self._tree_of = None

    def _weights(self):
        return self.counts

    # On the CPU the tree holds the counts' total and reads a probability in O(1): never an
    # O(V) sum per call (per-example noise reads the probabilities of every draw).
    def probs(self, ids):
        if self.counts.device.type != "cpu":
            return super().probs(ids)
        return torch.from_numpy(self._distribution().probs(ids.detach().cpu().numpy())).to(ids.device)

    def _total(self):
        return self._distribution().total if self.counts.device.type == "cpu" else super()._total()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        counts = state_dict.get(prefix + "counts")
        if isinstance(counts, torch.Tensor) and counts.shape == self.counts.shape:
            NS.check_learned_counts(counts.detach().cpu().to(torch.float64).numpy(), "counts")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _counts_key(self):
        return (self.counts.data_ptr(), self.counts._version)

    def _distribution(self):
        if self.counts.device.type != "cpu":
            return super()._distribution()
        if self._tree is None or self._tree_of != self._counts_key():
            self._tree = NS.CountsTree(self.counts.numpy())
            self._tree_of = self._counts_key()
        return self._tree

    @torch.no_grad()
    def update(self, true_classes, valid=None):
        ones = torch.ones(true_classes.numel(), dtype=self.counts.dtype, device=self.counts.device)
        if valid is not None:
            ones = valid.reshape(-1).to(self.counts)
        self._add(true_classes.reshape(-1).to(self.counts.device), ones)

    def _learned_in_place(self, count: int) -> None:
        """The compiled draw added ``count`` labels to the counts and the tree (each once): the
        tree's total follows, and the tree stays in step with the counts."""
        self._tree.total += float(count)
        self._tree_of = self._counts_key()

    def _add(self, ids: torch.Tensor, weights: torch.Tensor) -> None:
        """``counts[ids] += weights``, and the same in the tree if it is in step with them."""
        in_step = self._tree is not None and self._tree_of == self._counts_key()
        self.counts.index_add_(0, ids, weights)
        if in_step:
            tree = self._tree
            ext = _compiled.loaded()
            if ext is not None and ids.device.type == "cpu":  # one call, not a NumPy call per tree level
                w = weights.to(torch.float64).contiguous()
                ext.counts_tree_add_(torch.from_numpy(tree.counts), torch.from_numpy(tree._tree),
                                     ids.to(torch.int64).contiguous(), w)
                tree.total += float(w.sum())
            else:
                tree.add(ids.cpu().numpy(), weights.cpu().numpy())
            self._tree_of = self._counts_key()


_BY_NAME = {"uniform": UniformSampler, "log_uniform": LogUniformSampler}


def sampler_tables(sampler: CandidateSampler):
    """``(kind, draw, support, weights, cdf, counts)`` of a library sampler, enough to rebuild
    it around the same tables with :func:`sampler_from_tables` (the custom operators take
    tensors, not modules); None for any other sampler. Tables a kind lacks are None."""
    kind = {UniformSampler: "uniform", LogUniformSampler: "log_uniform", UnigramSampler: "unigram",
            LearnedUnigramSampler: "learned_unigram"}.get(type(sampler))
    if kind is None:
        return None
    return (kind, sampler.draw, sampler.support, getattr(sampler, "weights", None), getattr(sampler, "cdf", None),
            getattr(sampler, "counts", None))


def sampler_from_tables(kind: str, num_classes: int, draw: str, support: int, weights=None, cdf=None,
                        counts=None) -> CandidateSampler:
    """The sampler :func:`sampler_tables` describes, sharing its tables (a learned sampler's
    counts are updated in place)."""
    if kind in _BY_NAME:
        return _BY_NAME[kind](num_classes, draw=draw)
    cls = UnigramSampler if kind == "unigram" else LearnedUnigramSampler
    sampler = cls.__new__(cls)
    CandidateSampler.__init__(sampler, num_classes, draw=draw)
    if kind == "unigram":
        sampler.register_buffer("weights", weights)
        sampler.register_buffer("cdf", cdf)
        sampler.distortion, sampler.num_reserved_ids, sampler._support = 1.0, 0, support
    else:
        sampler.register_buffer("counts", counts)
        sampler._tree = sampler._tree_of = None
    return sampler


def make_sampler(sampler, num_classes: int) -> CandidateSampler:
    """A sampler from a name (``"uniform"``, ``"log_uniform"``) or an existing instance."""
    if isinstance(sampler, CandidateSampler):
        if sampler.num_classes != num_classes:
            raise SampledSoftmaxError(
                f"`sampler` must cover num_classes={num_classes}; received a sampler over {sampler.num_classes}"
            )
        return sampler
    if sampler in ("unigram", "learned_unigram"):
        raise SampledSoftmaxError(
            f"`sampler={sampler!r}` needs state: pass an instance, e.g. "
            f"{'UnigramSampler(num_classes, counts)' if sampler == 'unigram' else 'LearnedUnigramSampler(num_classes)'}"
        )
    check_choice("sampler", sampler, tuple(_BY_NAME) + ("unigram", "learned_unigram"))
    return _BY_NAME[sampler](num_classes)

