"""The TensorFlow loss's keyword-only extras (``ignore_index``, ``label_smoothing``,
``subtract_log_q``, ``reduction``) against the NumPy reference, eagerly, in ``tf.function`` and
under XLA; their defaults give ``tf.nn``'s loss."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from sampled_softmax import SampledSoftmaxError  # noqa: E402
from sampled_softmax import reference as R  # noqa: E402
from sampled_softmax import tensorflow as sst  # noqa: E402

IGNORE = -1


def problem(seed, *, V=60, D=8, B=10, S=15, T=2):
    rng = np.random.default_rng(seed)
    W, b, h = rng.normal(size=(V, D)), rng.normal(size=V), rng.normal(size=(B, D))
    y = rng.integers(0, V, size=(B, T))
    y[1, 0] = IGNORE  # one label of a row ignored
    y[3, :] = IGNORE  # a whole row ignored
    cand = np.concatenate([y[0, :1], rng.choice(np.setdiff1d(np.arange(V), y[0, :1]), S - 1, replace=False)])
    sv = (cand.astype(np.int64), rng.uniform(0.05, 2, (B, T)), rng.uniform(0.05, 2, S))
    return W, b, y, h, sv


def run(mode, W, b, y, h, sv, **extras):
    Wv, bv, hv = tf.Variable(W), tf.Variable(b), tf.Variable(h)
    svt = tuple(tf.constant(v) for v in sv)

    def step():
        with tf.GradientTape() as tape:
            loss = sst.sampled_softmax_loss(Wv, bv, tf.constant(y), hv, len(sv[0]), W.shape[0], num_true=y.shape[1],
                                            sampled_values=svt, **extras)
            total = tf.reduce_sum(loss)
        return loss, tape.gradient(total, [Wv, bv, hv])

    if mode != "eager":
        step = tf.function(step, jit_compile=mode == "xla")
    loss, grads = step()
    return loss.numpy(), [tf.convert_to_tensor(g).numpy() for g in grads]


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("eps,subtract,hits", [(0.0, True, True), (0.2, True, True), (0.1, False, False)])
def test_extras_match_the_reference(mode, eps, subtract, hits):
    W, b, y, h, sv = problem(3)
    loss, (gW, gb, gh) = run(mode, W, b, y, h, sv, ignore_index=IGNORE, label_smoothing=eps, subtract_log_q=subtract,
                             remove_accidental_hits=hits)
    kw = dict(ignore_index=IGNORE, label_smoothing=eps, subtract_log_q=subtract, remove_accidental_hits=hits)
    np.testing.assert_allclose(loss, R.sampled_softmax_loss(W, b, y, h, sv, **kw), rtol=1e-10, atol=1e-12)
    rh, rW, rb = R.sampled_softmax_grads(W, b, y, h, sv, **kw)
    for ours, ref in ((gW, rW), (gb, rb), (gh, rh)):
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


def test_an_ignored_row_has_loss_zero_and_no_gradient():
    W, b, y, h, sv = problem(4)
    loss, (_, _, gh) = run("eager", W, b, y, h, sv, ignore_index=IGNORE)
    assert loss[3] == 0.0
    assert np.all(gh[3] == 0.0)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_reduction(reduction):
    W, b, y, h, sv = problem(5)
    per_row = R.sampled_softmax_loss(W, b, y, h, sv, ignore_index=IGNORE)
    loss, _ = run("eager", W, b, y, h, sv, ignore_index=IGNORE, reduction=reduction)
    live = (y != IGNORE).any(axis=1)
    expected = {"none": per_row, "sum": per_row.sum(), "mean": per_row.sum() / live.sum()}[reduction]
    np.testing.assert_allclose(loss, expected, rtol=1e-12)


def test_defaults_are_tf_nn():
    W, b, y, h, sv = problem(6)
    y = np.abs(y)
    ours, _ = run("eager", W, b, y, h, sv, ignore_index=None, label_smoothing=0.0, subtract_log_q=True,
                  reduction="none")
    ref = tf.nn.sampled_softmax_loss(W, b, y, h, len(sv[0]), W.shape[0], num_true=2, sampled_values=sv).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


@pytest.mark.parametrize("extras,error,match", [
    (dict(reduction="avg"), SampledSoftmaxError, r"`reduction` must be one of 'none', 'mean', 'sum'; received 'avg'"),
    (dict(label_smoothing=1.5), SampledSoftmaxError, r"`label_smoothing`"),
    (dict(ignore_index="x"), TypeError, r"`ignore_index` must be an int or None; received str"),
])
def test_bad_extras(extras, error, match):
    W, b, y, h, sv = problem(7)
    with pytest.raises(error, match=match):
        run("eager", W, b, np.abs(y), h, sv, **extras)


def test_ignored_labels_with_the_default_sampler_are_not_drawn_against():
    W, b, y, h, _ = problem(8)
    loss = sst.sampled_softmax_loss(W, b, y, h, 10, W.shape[0], num_true=2, ignore_index=IGNORE, seed=3)
    assert np.all(np.isfinite(loss.numpy())) and loss.numpy()[3] == 0.0


@pytest.mark.parametrize("mode,loss,shards", [("eager", "softmax", None), ("graph", "softmax", None),
                                              ("xla", "softmax", None), ("graph", "nce", None),
                                              ("graph", "softmax", "div"), ("eager", "nce", "div")])
def test_table_gradients_move_the_table_under_keras_adam_as_their_dense_form_does(mode, loss, shards):
    # Keras 3's optimizers on TensorFlow square a tf.IndexedSlices gradient's values before its
    # repeated rows are summed (tf.nn's own gradients list a row once per read).
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("Keras's optimizers take TensorFlow gradients on the TensorFlow backend only")
    W, b, y, h, sv = problem(5)
    y[:5, 0] = y[0, 0]  # one label in many rows, and drawn as a candidate (problem's sv)
    if shards is None:
        parts, bias_parts = [W], [b]
    else:  # tf.nn's "div" shards: rows 0-29, then 30-59
        parts, bias_parts = [W[:30], W[30:]], [b[:30], b[30:]]
    variables = [tf.Variable(p) for p in parts] + [tf.Variable(p) for p in bias_parts]
    fn = sst.sampled_softmax_loss if loss == "softmax" else sst.nce_loss
    k = len(parts)

    def step():
        with tf.GradientTape() as tape:
            weights, biases = (variables[:k], variables[k:]) if shards else (variables[0], variables[1])
            per_row = fn(weights, biases, tf.constant(np.maximum(y, 0)), tf.constant(h), len(sv[0]), W.shape[0],
                         num_true=y.shape[1], sampled_values=tuple(tf.constant(v) for v in sv))
            total = tf.reduce_sum(per_row)
        grads = tape.gradient(total, variables)
        return [(g.values, g.indices) for g in grads]

    if mode != "eager":
        step = tf.function(step, jit_compile=mode == "xla")
    shapes = [p.shape for p in parts + bias_parts]
    slices = [tf.IndexedSlices(v, i, tf.constant(shape, tf.int64)) for (v, i), shape in zip(step(), shapes)]
    moved = {}
    for form in ("as_given", "dense"):
        tables = [keras.Variable(p.astype(np.float32)) for p in parts + bias_parts]
        optimizer = keras.optimizers.Adam(0.1)
        for _ in range(3):
            given = [tf.IndexedSlices(tf.cast(g.values, tf.float32), g.indices, g.dense_shape) for g in slices]
            if form == "dense":
                given = [tf.convert_to_tensor(g) for g in given]
            optimizer.apply_gradients(zip(given, tables))
        moved[form] = [t.numpy() for t in tables]
    for got, want in zip(moved["as_given"], moved["dense"]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert any(np.any(m != p) for m, p in zip(moved["dense"], parts + bias_parts))


@pytest.mark.parametrize("num_classes", [None, 7])
@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("m", [0, 1, 6, 60])
def test_summed_on_first_keeps_the_dense_gradient_and_names_each_row_once(m, in_place, mode, num_classes):
    """Each id's reads summed on its first read, zeros on the others: by a segment sum, or
    (``in_place``) by moving the repeated reads' rows within the gradient's buffer, which
    outside XLA the gradient's own ``InplaceAdd`` aliases. The first reads under XLA come from
    a sort, or with the ids' range from a table of first positions."""
    from sampled_softmax.tensorflow import _rows

    rng = np.random.default_rng(m)
    ids = rng.integers(0, 7, m)
    d = rng.normal(size=(m, 3))

    def run(ids, d):
        first = _rows.first_reads(ids, num_classes)
        return first, _rows.summed_on_first(d * 1.0, first, in_place=in_place)  # d * 1: a fresh tensor

    if mode != "eager":
        run = tf.function(run, jit_compile=mode == "xla")
    first, out = (t.numpy() for t in run(tf.constant(ids), tf.constant(d)))
    np.testing.assert_array_equal(first, [list(ids).index(i) for i in ids])  # the first occurrence, by list.index
    dense, spread = np.zeros((7, 3)), np.zeros((7, 3))
    np.add.at(dense, ids, d)
    np.add.at(spread, ids, out)
    np.testing.assert_allclose(spread, dense, rtol=1e-12, atol=1e-12)
    is_first = first == np.arange(m)
    assert np.all(out[~is_first] == 0)
    np.testing.assert_allclose(out[is_first], dense[ids[is_first]], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("fn", ["sampled_softmax_loss", "nce_loss", "full_softmax_loss"])
def test_floating_labels_must_be_whole_numbers(mode, fn):
    """tf.nn casts floating labels to int64: 3.0 is class 3 (the same loss as integer labels);
    3.5 was truncated to 3 silently, and is now an error (a nan row under XLA, which drops
    assertions, as for labels out of range)."""
    W, b, y, h, sv = problem(7, T=1)
    y = np.abs(y)
    svt = tuple(tf.constant(v) for v in sv)

    def loss(labels):
        if fn == "full_softmax_loss":
            return sst.full_softmax_loss(W, b, labels, h)
        return getattr(sst, fn)(W, b, labels, h, 15, 60, sampled_values=svt)

    call = {"eager": loss, "function": tf.function(loss), "xla": tf.function(loss, jit_compile=True)}[mode]
    whole = call(tf.constant(y.astype(np.float32)))
    np.testing.assert_allclose(whole.numpy(), call(tf.constant(y)).numpy(), rtol=1e-12)
    fractional = y.astype(np.float32)
    fractional[2, 0] += 0.5
    if mode == "xla":
        out = call(tf.constant(fractional)).numpy()
        assert np.isnan(out[2]) and np.isfinite(np.delete(out, 2)).all()
        return
    error = SampledSoftmaxError if mode == "eager" else tf.errors.InvalidArgumentError
    with pytest.raises(error, match=r"`labels` must be whole numbers .*received.*\.5"):
        call(tf.constant(fractional))


@pytest.mark.parametrize("jit", [False, True])
def test_our_error_keeps_its_type_inside_a_tf_function(jit):
    """Raised while a tf.function traces, it reached the caller as autograph's StagingError,
    which `except SampledSoftmaxError` misses."""
    W, b, y, h, _ = problem(3, T=1)

    @tf.function(jit_compile=jit)
    def step():
        return sst.sampled_softmax_loss(W, b, np.abs(y), h, 500, 60)  # num_sampled > num_classes

    with pytest.raises(SampledSoftmaxError, match="`num_sampled`"):
        step()


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_the_exact_loss_takes_the_sampled_losss_extras(mode, reduction, eps):
    """TensorFlow's full_softmax_loss with ignore_index, label_smoothing and reduction, against
    the NumPy reference (as the other front ends' exact losses)."""
    W, b, y, h, _ = problem(5, T=2)  # an ignored label, and a row with every label ignored

    def loss():
        return sst.full_softmax_loss(W, b, y, h, num_true=2, ignore_index=IGNORE, label_smoothing=eps,
                                     reduction=reduction)

    call = {"eager": loss, "function": tf.function(loss), "xla": tf.function(loss, jit_compile=True)}[mode]
    per_row = R.full_softmax_loss(W, b, y, h, label_smoothing=eps, ignore_index=IGNORE)
    live = (y != IGNORE).any(axis=1)
    want = {"none": per_row, "sum": per_row.sum(), "mean": per_row.sum() / live.sum()}[reduction]
    np.testing.assert_allclose(call().numpy(), want, rtol=1e-10, atol=1e-12)
    # Its defaults are tf.nn's plain loss (and the other front ends' defaults).
    np.testing.assert_allclose(sst.full_softmax_loss(W, b, np.abs(y), h, num_true=2).numpy(),
                               R.full_softmax_loss(W, b, np.abs(y), h), rtol=1e-10)


@pytest.mark.parametrize("graph", [False, True])
def test_a_gradient_of_the_tables_gradient_equals_tf_nn(graph):
    """A tape recording the backward (a penalty on the table's gradient) differentiates the
    repeated rows' sum: the in-place move, which has no gradient, is left out there."""
    rng = np.random.default_rng(0)
    W = tf.Variable(rng.normal(size=(20, 4)))
    b = tf.Variable(np.zeros(20))
    h = tf.constant(rng.normal(size=(6, 4)))
    y = tf.constant([[1], [1], [2], [3], [1], [5]], tf.int64)  # repeats, and 1 is also a candidate
    sv = (tf.constant([1, 7, 9], tf.int64), tf.fill([6, 1], tf.constant(0.5, tf.float64)),
          tf.constant([0.5, 0.2, 0.1], tf.float64))

    def penalty_gradient(loss_fn):
        with tf.GradientTape() as outer:
            outer.watch(h)
            with tf.GradientTape() as inner:
                inner.watch(h)
                loss = tf.reduce_sum(loss_fn(W, b, y, h, 3, 20, sampled_values=sv))
            penalty = tf.reduce_sum(tf.convert_to_tensor(inner.gradient(loss, W)) ** 2)
        return outer.gradient(penalty, h)

    run = tf.function(penalty_gradient) if graph else penalty_gradient
    got = run(sst.sampled_softmax_loss).numpy()
    want = run(tf.nn.sampled_softmax_loss).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("num_classes", [50, 10**6])
def test_xla_unique_exact_padding_slots_are_the_repeats_whatever_finds_them(num_classes):
    """``draw="unique_exact"`` under XLA marks every repeated candidate (and only those) as a
    padding slot, whether the repeats are found through a table of the ``V`` classes (small ``V``)
    or a sort (``V`` far above the draws); the first copy keeps its expected count."""
    from sampled_softmax.tensorflow import _rows

    S = 40
    assert (num_classes <= _rows.TABLE_READS_RATIO * S) == (num_classes == 50)  # both routes are taken
    labels = tf.constant([[0], [3]], tf.int64)
    gen = tf.random.Generator.from_seed(5)
    # Candidates in few classes even when V is large: repeats must occur on both routes.
    fn = tf.function(lambda: sst.unigram_candidate_sampler(labels, S, num_classes, [1.0] * 8 + [0.0] * (num_classes - 8),
                                                           generator=gen), jit_compile=True)
    cand, _, samp = (t.numpy() for t in fn())
    repeat = np.array([c in cand[:j] for j, c in enumerate(cand)])
    assert repeat.any() and not repeat.all()
    np.testing.assert_array_equal(np.isinf(samp), repeat)
    np.testing.assert_allclose(samp[~repeat], 1 - (1 - 1 / 8) ** S, rtol=1e-6)
