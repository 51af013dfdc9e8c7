"""Candidate-sampler distributions and expected counts, framework-free (NumPy).

The distributions ``Q`` over ``[0, num_classes)`` match TensorFlow's ``*_candidate_sampler``:

* ``uniform``: ``Q(k) = 1 / V``.
* ``log_uniform`` (Zipf, classes sorted by decreasing frequency):
  ``Q(k) = log((k + 2) / (k + 1)) / log(V + 1)``, drawn as ``floor(exp(u log(V + 1))) - 1``.
* ``unigram``: ``Q(k) ∝ weight(k) ** distortion``, with ``num_reserved_ids`` leading ids at 0.
* ``learned_unigram``: ``unigram`` whose counts start at 1 and grow with the labels seen.

Three ways to draw ``S`` candidates, and the expected count ``E(k)`` each gives:

* ``"with_replacement"``: ``S`` independent draws; ``E(k) = S Q(k)`` exactly.
* ``"unique"`` (TensorFlow's ``unique=True``): draw until ``S`` distinct classes have been seen,
  after ``n`` tries; ``E(k) = 1 - (1 - Q(k)) ** n`` (``S Q(k)`` when ``n == S``). TensorFlow's
  own source calls this approximation false: ``n`` is random and depends on the draw.
* ``"unique_exact"``: ``S`` independent draws, de-duplicated; repeated slots are padding
  (expected count ``inf``, removed from every normalizer). ``E(k) = 1 - (1 - Q(k)) ** S`` is
  then the exact inclusion probability of class ``k``.

The NumPy draws here are the reference used by tests; each front end has its own sampler on
its own device that follows the same formulas.
"""

from __future__ import annotations

import enum

import numpy as np

from . import SampledSoftmaxError, SampledValues
from ._validation import check_choice, check_num_sampled, check_positive_int


class DistributionKind(enum.IntEnum):
    """The sampler distributions by name. The compiled PyTorch core takes them by these values
    (``csrc/common.h``)."""

    uniform = 0
    log_uniform = 1
    unigram = 2
    learned_unigram = 3


class DrawKind(enum.IntEnum):
    """The three ways to draw candidates (see the module docstring), by name; the compiled
    PyTorch core takes them by these values (``csrc/common.h``)."""

    with_replacement = 0
    unique = 1
    unique_exact = 2


SAMPLERS = tuple(kind.name for kind in DistributionKind)
DRAWS = tuple(kind.name for kind in DrawKind)
# The draws of a static number of candidates: what a traced step (XLA, Keras, JAX) can take.
STATIC_DRAWS = (DrawKind.unique_exact.name, DrawKind.with_replacement.name)
# The losses on the candidates (the heads), and the two ways to share noise, by name.
LOSSES = ("sampled_softmax", "nce", "negative_sampling")
NOISE = ("shared", "per_example")

__all__ = [
    "SAMPLERS", "DRAWS", "STATIC_DRAWS", "LOSSES", "NOISE", "DistributionKind", "DrawKind", "uniform_probs", "log_uniform_probs", "unigram_weights",
    "expected_count", "Distribution", "Uniform", "LogUniform", "Unigram", "CountsTree", "sample_candidates",
    "draw_from_uniforms", "first_distinct", "repeated_slots", "unique_draw_limit", "unique_draw_error",
    "check_true_classes",
]


def uniform_probs(ids, num_classes: int) -> np.ndarray:
    """``Q(k) = 1 / V`` for each id (float64)."""
    return np.full(np.shape(ids), 1.0 / num_classes)


def log_uniform_probs(ids, num_classes: int) -> np.ndarray:
    """``Q(k) = log((k + 2) / (k + 1)) / log(V + 1)``, computed as ``log1p(1 / (k + 1))``
    so it keeps full precision for large ``k`` (float64)."""
    k = np.asarray(ids, dtype=np.float64)
    return np.log1p(1.0 / (k + 1.0)) / np.log1p(float(num_classes))


def unigram_weights(
    unigrams, *, num_classes: int | None = None, distortion: float = 1.0, num_reserved_ids: int = 0
) -> np.ndarray:
    """Unnormalised sampling weights ``[V]``: ``num_reserved_ids`` zeros, then ``unigrams ** distortion``.

    ``unigrams`` are counts or probabilities for ids ``num_reserved_ids .. V - 1`` (TensorFlow's
    ``fixed_unigram_candidate_sampler`` convention).
    """
    u = np.asarray(unigrams, dtype=np.float64)
    if u.ndim != 1 or u.size == 0:
        raise SampledSoftmaxError(f"`unigrams` must be a non-empty 1-D sequence; received shape {list(u.shape)}")
    if not np.all(np.isfinite(u)) or np.any(u < 0):
        raise SampledSoftmaxError(
            f"`unigrams` must be finite and >= 0; received values down to {np.nanmin(u)} (min) "
            f"and {'non-finite entries' if not np.all(np.isfinite(u)) else 'no non-finite entries'}"
        )
    if num_reserved_ids < 0:
        raise SampledSoftmaxError(f"`num_reserved_ids` must be >= 0; received {num_reserved_ids}")
    if num_classes is not None and u.size + num_reserved_ids != num_classes:
        raise SampledSoftmaxError(
            f"`unigrams` must have num_classes - num_reserved_ids = {num_classes - num_reserved_ids} "
            f"entries; received {u.size}"
        )
    if not np.isfinite(distortion) or distortion < 0:
        raise SampledSoftmaxError(f"`distortion` must be finite and >= 0; received {distortion}")
    with np.errstate(over="ignore"):  # an overflowing power or sum is reported below
        w = np.concatenate([np.zeros(num_reserved_ids), u**distortion])
        total = w.sum()
    if not np.isfinite(total):
        raise SampledSoftmaxError(
            f"`unigrams` ** distortion must have a finite sum (the sampler's cumulative table); received "
            f"entries up to {u.max()} whose sum overflows float64: rescale the counts")
    if not total > 0:
        raise SampledSoftmaxError("`unigrams` must have at least one positive entry; received all zeros")
    return w


# Above 2**53 a float64 count no longer grows by 1: learned counts stop being counts.
MAX_EXACT_COUNT = float(2 ** 53)


def check_learned_counts(counts, name: str = "counts") -> None:
    """Counts a learned unigram sampler may hold (its ``load_state_dict``): finite, ``>= 0``, a
    positive total of at most ``2**53`` (float64 counts are exact integers up to there)."""
    c = np.asarray(counts, dtype=np.float64)
    finite = np.isfinite(c)
    if not finite.all() or (c < 0).any():
        k = int(np.flatnonzero(~finite | (c < 0))[0]) if c.ndim == 1 else -1
        raise SampledSoftmaxError(f"`{name}` must be finite and >= 0; received {c.reshape(-1)[k]} for class {k}")
    total = float(c.sum())
    if not total > 0 or total > MAX_EXACT_COUNT:
        raise SampledSoftmaxError(
            f"`{name}` must have a total in (0, 2**53] (float64 counts are exact integers up to 2**53, and a draw "
            f"needs a positive total); received a total of {total}")


def check_true_classes(lo, hi, num_classes: int, ignore_index=None) -> None:
    """``true_classes`` given to a sampler lie in ``[0, num_classes)`` (``lo``/``hi``: the
    smallest and largest other than ``ignore_index``; None when there are none)."""
    if lo is not None and (lo < 0 or hi >= num_classes):
        bad = lo if lo < 0 else hi
        extra = "" if ignore_index is None else f" (or ignore_index={ignore_index})"
        raise SampledSoftmaxError(
            f"`true_classes` must be in [0, {num_classes - 1}]{extra}; received {bad}")


def expected_count(probs, num_sampled: int, draw: str, num_tries: int | None = None) -> np.ndarray:
    """Expected count of classes with single-draw probabilities ``probs`` (float64).

    ``num_tries`` is needed for ``draw="unique"`` (the draws it took to see ``num_sampled``
    distinct classes).
    """
    check_choice("draw", draw, DRAWS)
    p = np.asarray(probs, dtype=np.float64)
    if draw == "with_replacement":
        return p * num_sampled
    if draw == "unique":
        if num_tries is None:
            raise SampledSoftmaxError("`num_tries` is required for draw='unique'; received None")
        if num_tries == num_sampled:  # TensorFlow's shortcut: no repeat was drawn.
            return p * num_sampled
        return -np.expm1(num_tries * np.log1p(-p))
    return -np.expm1(num_sampled * np.log1p(-p))


class Distribution:
    """A fixed distribution over ``[0, num_classes)``: ``probs(ids)`` and ``sample(n, rng)``."""

    name = ""

    def __init__(self, num_classes: int):
        self.num_classes = check_positive_int("num_classes", num_classes)

    @property
    def support(self) -> int:
        """Number of classes with non-zero probability."""
        return self.num_classes

    def probs(self, ids) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def from_uniform(self, u: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """Class ids from uniforms ``u`` in ``[0, 1)`` (inverse CDF): one id per uniform."""
        raise NotImplementedError

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.from_uniform(rng.random(n))

    def all_probs(self) -> np.ndarray:
        return self.probs(np.arange(self.num_classes))


class Uniform(Distribution):
    name = "uniform"

    def probs(self, ids):
        return uniform_probs(ids, self.num_classes)

    def from_uniform(self, u):
        return np.minimum((u * self.num_classes).astype(np.int64), self.num_classes - 1)


class LogUniform(Distribution):
    name = "log_uniform"

    def probs(self, ids):
        return log_uniform_probs(ids, self.num_classes)

    def from_uniform(self, u):
        # `% V` guards the float round-off at u -> 1, as TensorFlow does.
        return (np.exp(u * np.log1p(self.num_classes)).astype(np.int64) - 1) % self.num_classes


class Unigram(Distribution):
    name = "unigram"

    def __init__(self, weights, cdf=None):
        w = np.asarray(weights, dtype=np.float64)
        super().__init__(w.size)
        self.weights = w
        self._cdf = np.cumsum(w) if cdf is None else np.asarray(cdf, dtype=np.float64)

    @property
    def support(self):
        return int(np.count_nonzero(self.weights))

    def probs(self, ids):
        return self.weights[np.asarray(ids)] / self._cdf[-1]

    def from_uniform(self, u):
        # side="right" skips zero-weight classes: cdf[k-1] <= x < cdf[k] needs weight(k) > 0.
        x = u * self._cdf[-1]
        return np.minimum(np.searchsorted(self._cdf, x, side="right"), self.num_classes - 1).astype(np.int64)


class CountsTree(Distribution):
    """A unigram distribution over counts that change, ``Q(k) = counts[k] / total``, kept in a
    Fenwick (binary indexed) tree: adding a batch of ids costs ``O(n log V)`` and drawing ``S``
    ids ``O(S log V)``, where :class:`Unigram` rebuilds its ``O(V)`` cumulative table for every
    draw from new counts. For a learned sampler, whose counts grow by each batch's labels.

    With integer counts (below ``2**53``) every sum is exact, so a draw equals
    :class:`Unigram`'s inverse CDF (``searchsorted(cumsum(counts), u * total, side="right")``)
    from the same uniforms, to the id.
    """

    name = "unigram"

    def __init__(self, counts):
        counts = np.array(counts, dtype=np.float64)
        super().__init__(counts.size)
        self.counts = counts
        self.total = float(counts.sum())
        # Node i holds the counts of (i - lowbit(i), i]: a difference of two prefix sums. Nodes
        # past V up to the next power of two are +inf, so the descent never takes them and needs
        # no bounds check.
        self._top = 1 << (counts.size.bit_length() - 1)
        prefix = np.concatenate([[0.0], np.cumsum(counts)])
        i = np.arange(counts.size + 1)
        self._tree = np.concatenate([prefix - prefix[i - (i & -i)], np.full(2 * self._top - counts.size, np.inf)])

    @property
    def support(self):
        return int(np.count_nonzero(self.counts))

    def add(self, ids, weights=1.0) -> None:
        """``counts[ids] += weights`` (repeated ids add up)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        w = np.broadcast_to(np.asarray(weights, dtype=np.float64), ids.shape)
        np.add.at(self.counts, ids, w)
        self.total += float(w.sum())
        node = ids + 1
        while node.size:
            np.add.at(self._tree, node, w)
            node = node + (node & -node)
            inside = node <= self.num_classes
            node, w = node[inside], w[inside]

    def probs(self, ids):
        return self.counts[np.asarray(ids)] / self.total

    def from_uniform(self, u):
        # Descend from the largest power of two: the number of classes whose cumulative count
        # is at most x, i.e. searchsorted(cdf, x, side="right").
        x = np.asarray(u, dtype=np.float64) * self.total
        pos = np.zeros(x.shape, dtype=np.int64)
        step = self._top
        while step:
            node = self._tree[pos + step]
            below = node <= x
            x -= np.where(below, node, 0.0)
            pos += below * step
            step >>= 1
        return np.minimum(pos, self.num_classes - 1)


def sample_candidates(
    distribution: Distribution,
    true_classes,
    num_sampled: int,
    draw: str = "unique",
    rng: np.random.Generator | None = None,
) -> SampledValues:
    """Draw candidates and expected counts in NumPy (the reference sampler).

    Args:
        distribution: the sampling distribution ``Q``.
        true_classes: ``[B, T]`` integer labels whose expected counts are returned.
        num_sampled: ``S``.
        draw: ``"with_replacement"``, ``"unique"`` (TensorFlow) or ``"unique_exact"``.
        rng: a ``numpy.random.Generator``.

    Returns:
        ``SampledValues`` of NumPy arrays: ``[S]`` int64, ``[B, T]`` float64, ``[S]`` float64.
    """
    check_choice("draw", draw, DRAWS)
    num_sampled = check_num_sampled(
        num_sampled, distribution.num_classes, unique=draw == "unique", support=distribution.support
    )
    rng = np.random.default_rng() if rng is None else rng
    return SampledValues(*draw_from_uniforms(distribution, true_classes, num_sampled, draw, rng.random))


# A unique draw takes chunks of 2S + 64 draws, doubling, until S distinct classes have been seen.
# On a distribution that gives some needed classes almost no mass (S near the support of a
# skewed table) that could take longer than anyone waits, and TensorFlow's op then never
# returns: every front end stops before its total would pass this bound, with the same error.
UNIQUE_DRAW_MIN_LIMIT = 1 << 24


def unique_draw_limit(num_sampled: int) -> int:
    """The most draws a ``"unique"`` draw of ``num_sampled`` classes may take."""
    return max(UNIQUE_DRAW_MIN_LIMIT, 64 * num_sampled)


def unique_draw_error(num_sampled: int, num_tries: int, found: int) -> SampledSoftmaxError:
    """The error of a unique draw that stopped at :func:`unique_draw_limit` (the same text from
    every implementation)."""
    return SampledSoftmaxError(
        f"`num_sampled`={num_sampled} distinct classes were not found in {num_tries} draws (a draw='unique' "
        f"stops after {unique_draw_limit(num_sampled)}; {found} found): the sampler gives some classes too "
        f"little probability for that many distinct ones. Use a smaller num_sampled, or draw='unique_exact' "
        f"or 'with_replacement'"
    )


def draw_from_uniforms(distribution: Distribution, true_classes, num_sampled: int, draw: str, uniforms):
    """The draw itself, from any source of uniforms: ``uniforms(n)`` returns ``n`` floats in
    ``[0, 1)`` (NumPy's generator here, a ``torch.Generator`` in the PyTorch samplers, so both
    make the same draw from the same uniforms). No argument checks.

    Returns ``(candidates [S] int64, true_expected_count [like true_classes], sampled_expected_count [S])``,
    expected counts in float64, padding slots of ``"unique_exact"`` at ``inf``.
    """
    true_classes = np.asarray(true_classes)
    num_tries = num_sampled
    if draw == "unique":
        # TensorFlow's procedure, in chunks: the first S distinct values in draw order.
        chunk = 2 * num_sampled + 64
        drawn = distribution.from_uniform(uniforms(chunk))
        while (picked := first_distinct(drawn, num_sampled)) is None:
            chunk *= 2
            if drawn.size + chunk > unique_draw_limit(num_sampled):
                raise unique_draw_error(num_sampled, drawn.size, np.unique(drawn).size)
            drawn = np.concatenate([drawn, distribution.from_uniform(uniforms(chunk))])
        candidates, num_tries = picked
    else:
        candidates = distribution.from_uniform(uniforms(num_sampled))
    n = true_classes.size
    # One pass over labels and candidates together.
    counts = expected_count(distribution.probs(np.concatenate([true_classes.reshape(-1), candidates])),
                            num_sampled, draw, num_tries)
    if draw == "unique_exact":
        counts[n:][repeated_slots(candidates)] = np.inf
    return candidates, counts[:n].reshape(true_classes.shape), counts[n:]


def first_distinct(drawn: np.ndarray, num_sampled: int):
    """TensorFlow's unique draw, given a sequence of draws: the first ``num_sampled`` distinct
    values in draw order and ``num_tries``, the draws it took; None if there are too few."""
    # The position of each distinct value's first draw, in draw order (one sort).
    _, first = np.unique(drawn, return_index=True)
    if first.size < num_sampled:
        return None
    first.sort()
    first = first[:num_sampled]
    return drawn[first].astype(np.int64, copy=False), int(first[-1]) + 1


def repeated_slots(candidates: np.ndarray) -> np.ndarray:
    """True for each slot whose class already appeared in an earlier slot."""
    _, first = np.unique(candidates, return_index=True)
    repeated = np.ones(candidates.shape, dtype=bool)
    repeated[first] = False
    return repeated
