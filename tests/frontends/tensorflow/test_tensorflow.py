"""The TensorFlow drop-in against ``tf.nn.sampled_softmax_loss`` itself and the reference."""

import itertools

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from sampled_softmax import reference as R  # noqa: E402
from sampled_softmax import tensorflow as sst  # noqa: E402


def problem(seed, *, V=101, D=16, B=12, S=20, T=1, dtype=np.float32, label_dtype=np.int64):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(V, D)).astype(dtype)
    b = rng.normal(size=V).astype(dtype)
    h = rng.normal(size=(B, D)).astype(dtype)
    y = rng.integers(0, V, size=(B, T)).astype(label_dtype)
    hit = np.unique(y[:, 0])[:6]  # many accidental hits; candidates distinct like TF's default draw
    cand = np.concatenate([hit, rng.choice(np.setdiff1d(np.arange(V), hit), S - hit.size, replace=False)])
    sv = (cand.astype(np.int64), rng.uniform(0.01, 2, (B, T)).astype(dtype), rng.uniform(0.01, 2, S).astype(dtype))
    return W, b, y, h, sv


def loss_and_grads(fn, W, b, y, h, sv, T, hits, shards=None, **extras):
    Wv = [tf.Variable(w) for w in (np.array_split(W, shards) if shards else [W])]
    bv, hv = tf.Variable(b), tf.Variable(h)
    with tf.GradientTape() as tape:
        loss = fn(Wv if shards else Wv[0], bv, tf.constant(y), hv, len(sv[0]), W.shape[0], num_true=T,
                  sampled_values=tuple(tf.constant(v) for v in sv), remove_accidental_hits=hits, **extras)
    grads = tape.gradient(loss, Wv + [bv, hv])
    return loss.numpy(), grads


@pytest.mark.parametrize("T,hits,shards,label_dtype,dtype", list(itertools.product(
    [1, 3], [True, False], [None, 3], [np.int32, np.int64], [np.float32, np.float64])))
def test_matches_tf_nn_sampled_softmax_loss(T, hits, shards, label_dtype, dtype):
    W, b, y, h, sv = problem(T * 7 + hits, T=T, dtype=dtype, label_dtype=label_dtype)
    ours, g_ours = loss_and_grads(sst.sampled_softmax_loss, W, b, y, h, sv, T, hits, shards)
    ref, g_ref = loss_and_grads(tf.nn.sampled_softmax_loss, W, b, y, h, sv, T, hits, shards)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours, ref, **tol)
    for a, r in zip(g_ours, g_ref):
        assert isinstance(a, tf.IndexedSlices) == isinstance(r, tf.IndexedSlices)
        np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(r).numpy(), **tol)


@pytest.mark.parametrize("T,hits", [(1, True), (3, True), (2, False)])
def test_matches_numpy_reference_float64(T, hits):
    W, b, y, h, sv = problem(3, T=T, dtype=np.float64)
    ours, grads = loss_and_grads(sst.sampled_softmax_loss, W, b, y, h, sv, T, hits)
    np.testing.assert_allclose(ours, R.sampled_softmax_loss(W, b, y, h, sv, remove_accidental_hits=hits), rtol=1e-12)
    gh, gW, gb = R.sampled_softmax_grads(W, b, y, h, sv, remove_accidental_hits=hits)
    np.testing.assert_allclose(tf.convert_to_tensor(grads[0]).numpy(), gW, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(tf.convert_to_tensor(grads[1]).numpy(), gb, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads[2].numpy(), gh, rtol=1e-10, atol=1e-12)


def test_default_sampler_with_a_seed_draws_what_tf_nn_draws():
    W, b, y, h, _ = problem(5, V=1000, T=1)
    losses = []
    for fn in (tf.nn.sampled_softmax_loss, sst.sampled_softmax_loss):
        tf.random.set_seed(1234)
        losses.append(fn(tf.constant(W), tf.constant(b), tf.constant(y), tf.constant(h), 50, 1000, seed=7).numpy())
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_inside_tf_function_and_xla_with_given_sampled_values():
    W, b, y, h, sv = problem(9, T=2)
    Wv, hv = tf.Variable(W), tf.Variable(h)
    svt = tuple(tf.constant(v) for v in sv)

    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(sst.sampled_softmax_loss(Wv, tf.constant(b), tf.constant(y), hv, 20, 101, 2,
                                                          sampled_values=svt))
        return loss, tape.gradient(loss, [Wv, hv])

    eager_loss, eager_grads = step()
    for compiled in (tf.function(step), tf.function(step, jit_compile=True)):
        loss, grads = compiled()
        np.testing.assert_allclose(loss.numpy(), eager_loss.numpy(), rtol=1e-5)
        np.testing.assert_allclose(tf.convert_to_tensor(grads[0]).numpy(),
                                   tf.convert_to_tensor(eager_grads[0]).numpy(), rtol=1e-4, atol=1e-6)


def test_float16_inputs_accumulate_in_float32():
    W, b, y, h, sv = problem(2, T=1)
    loss = sst.sampled_softmax_loss(tf.constant(W.astype(np.float16)), tf.constant(b.astype(np.float16)),
                                    tf.constant(y), tf.constant(h.astype(np.float16)), 20, 101, sampled_values=sv)
    assert loss.dtype == tf.float32
    ref = R.sampled_softmax_loss(W.astype(np.float16), b.astype(np.float16), y, h.astype(np.float16), sv)
    np.testing.assert_allclose(loss.numpy(), ref, rtol=2e-3, atol=2e-3)


def test_full_softmax_loss_matches_reference():
    W, b, y, h, _ = problem(4, T=2, dtype=np.float64)
    got = sst.full_softmax_loss([W[:51], W[51:]], b, y, h, num_true=2)
    np.testing.assert_allclose(got.numpy(), R.full_softmax_loss(W, b, y, h), rtol=1e-12)


def test_padding_slots_are_removed_like_the_reference():
    W, b, y, h, sv = problem(11, T=1, dtype=np.float64)
    cand = sv[0].copy()
    cand[5] = cand[4]
    sc = sv[2].copy()
    sc[5] = np.inf
    padded = (cand, sv[1], sc)
    got = sst.sampled_softmax_loss(W, b, y, h, 20, 101, sampled_values=padded)
    np.testing.assert_allclose(got.numpy(), R.sampled_softmax_loss(W, b, y, h, padded), rtol=1e-12)


@pytest.mark.parametrize("name", ["uniform", "log_uniform", "unigram"])
@pytest.mark.parametrize("draw", ["with_replacement", "unique_exact"])
def test_tf_op_samplers_follow_the_reference_distributions(name, draw):
    from scipy import stats

    from sampled_softmax import samplers as NS

    V, S = 50, 20000 if draw == "with_replacement" else 10
    counts = np.arange(1, V - 1, dtype=float) ** -1.2 * 1000
    make = {
        "uniform": lambda **kw: sst.uniform_candidate_sampler(num_classes=V, **kw),
        "log_uniform": lambda **kw: sst.log_uniform_candidate_sampler(num_classes=V, **kw),
        "unigram": lambda **kw: sst.unigram_candidate_sampler(num_classes=V, unigrams=counts, distortion=0.75,
                                                              num_reserved_ids=2, **kw),
    }[name]
    dist = {"uniform": NS.Uniform(V), "log_uniform": NS.LogUniform(V),
            "unigram": NS.Unigram(NS.unigram_weights(counts, num_classes=V, distortion=0.75, num_reserved_ids=2))}[name]
    q = dist.all_probs()
    g = tf.random.Generator.from_seed(3)
    y = tf.constant([[2], [7]])
    cand, tc, sc = make(true_classes=y, num_sampled=S, draw=draw, generator=g)
    np.testing.assert_allclose(tc.numpy()[:, 0], NS.expected_count(q[[2, 7]], S, draw), rtol=1e-6)
    finite = np.isfinite(sc.numpy())
    np.testing.assert_allclose(sc.numpy()[finite], NS.expected_count(q[cand.numpy()[finite]], S, draw), rtol=1e-6)
    if draw == "with_replacement":
        observed = np.bincount(cand.numpy(), minlength=V)
        assert observed[q == 0].sum() == 0
        assert stats.chisquare(observed[q > 0], S * q[q > 0]).pvalue > 1e-3
    else:  # padding exactly at the repeats
        c = cand.numpy()
        assert all((c[i] in c[:i]) == (not finite[i]) for i in range(S))


def test_whole_step_with_tf_op_sampler_compiles_with_xla_and_is_seeded():
    W = tf.Variable(np.random.default_rng(0).normal(size=(1000, 16)).astype(np.float32))
    h = tf.constant(np.random.default_rng(1).normal(size=(4, 16)).astype(np.float32))
    y = tf.constant([[1], [2], [3], [4]])

    def run(seed):
        g = tf.random.Generator.from_seed(seed)

        @tf.function(jit_compile=True)
        def step():
            with tf.GradientTape() as tape:
                sv = sst.log_uniform_candidate_sampler(y, 64, 1000, generator=g)
                loss = tf.reduce_sum(sst.sampled_softmax_loss(W, tf.zeros(1000), y, h, 64, 1000, sampled_values=sv))
            return loss, tape.gradient(loss, W)

        return [step()[0].numpy() for _ in range(2)]

    a, b = run(5), run(5)
    assert a == b and a[0] != a[1] and np.isfinite(a).all()


MIRRORED = r"""
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from sampled_softmax import tensorflow as sst
rng = np.random.default_rng(0)
W0 = rng.normal(size=(200, 8)).astype(np.float32)
h = rng.normal(size=(8, 8)).astype(np.float32)
y = rng.integers(0, 200, size=(8, 1))
sv = (np.arange(0, 60, 3, dtype=np.int64), np.ones((8, 1), np.float32), np.ones(20, np.float32))
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    W = tf.Variable(W0)
def replica_step(h_part, y_part):
    ctx = tf.distribute.get_replica_context()
    i = ctx.replica_id_in_sync_group
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(sst.sampled_softmax_loss(W, tf.zeros(200), y_part, h_part, 20, 200,
            sampled_values=(sv[0], sv[1][:4], sv[2])))
    return loss, tf.convert_to_tensor(tape.gradient(loss, W))
@tf.function
def step():
    per = strategy.run(replica_step, args=(
        strategy.experimental_distribute_values_from_function(lambda c: tf.constant(h[c.replica_id_in_sync_group * 4:][:4])),
        strategy.experimental_distribute_values_from_function(lambda c: tf.constant(y[c.replica_id_in_sync_group * 4:][:4]))))
    return (strategy.reduce("SUM", per[0], axis=None), strategy.reduce("SUM", per[1], axis=None))
loss, grad = step()
with tf.GradientTape() as tape:
    W1 = tf.Variable(W0)
    ref = tf.reduce_sum(sst.sampled_softmax_loss(W1, tf.zeros(200), y, h, 20, 200, sampled_values=sv))
ref_grad = tf.convert_to_tensor(tape.gradient(ref, W1))
np.testing.assert_allclose(loss.numpy(), ref.numpy(), rtol=1e-5)
np.testing.assert_allclose(grad.numpy(), ref_grad.numpy(), rtol=1e-4, atol=1e-6)
print("replicas", strategy.num_replicas_in_sync)
"""


def test_inside_mirrored_strategy_with_two_cpu_replicas():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "replicas 2" in out.stdout


# ---------------------------------------------------------------------------------------------
# The drop-in where it was not one, and no silent wrong result (issue 15)


def test_unknown_feature_dimension_in_an_input_signature():
    W, b, y, h, sv = problem(0)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32)])
    def loss(inputs):
        return sst.sampled_softmax_loss(W, b, y, inputs, len(sv[0]), W.shape[0], sampled_values=sv)

    np.testing.assert_allclose(loss(tf.constant(h)).numpy(), sst.sampled_softmax_loss(
        W, b, y, h, len(sv[0]), W.shape[0], sampled_values=sv).numpy(), rtol=1e-6)


@pytest.mark.parametrize("label_dtype", [tf.float32, tf.bfloat16, tf.float64])
def test_floating_labels_are_cast_like_tf_nn(label_dtype):
    W, b, y, h, sv = problem(1)
    as_float = tf.cast(tf.constant(y), label_dtype)
    ours = sst.sampled_softmax_loss(W, b, as_float, h, len(sv[0]), W.shape[0], sampled_values=sv)
    theirs = tf.nn.sampled_softmax_loss(W, b, as_float, h, len(sv[0]), W.shape[0], sampled_values=sv)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5)


def test_bias_shards_match_tf_nn_with_gradients():
    W, b, y, h, sv = problem(2, T=2)
    Wv = [tf.Variable(w) for w in np.array_split(W, 3)]
    bv = [tf.Variable(x) for x in np.array_split(b, 3)]
    results = []
    for fn in (sst.sampled_softmax_loss, tf.nn.sampled_softmax_loss):
        with tf.GradientTape() as tape:
            loss = fn(Wv, bv, y, h, len(sv[0]), W.shape[0], num_true=2, sampled_values=sv)
        results.append([loss] + [tf.convert_to_tensor(g) for g in tape.gradient(loss, Wv + bv)])
    for a, e in zip(*results):
        np.testing.assert_allclose(a.numpy(), e.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(sst.SampledSoftmaxError, match=r"`biases` shards must have \[51, 50\] rows"):
        sst.sampled_softmax_loss(Wv, [tf.zeros(50), tf.zeros(51)], y, h, len(sv[0]), W.shape[0], num_true=2,
                                 sampled_values=sv)


def test_true_expected_count_of_one_column_is_broadcast_over_num_true():
    W, b, y, h, (cand, tc, sc) = problem(3, T=3)
    one = tc[:, :1]
    ours = sst.sampled_softmax_loss(W, b, y, h, len(cand), W.shape[0], num_true=3, sampled_values=(cand, one, sc))
    theirs = tf.nn.sampled_softmax_loss(W, b, y, h, len(cand), W.shape[0], num_true=3, sampled_values=(cand, one, sc))
    full = R.sampled_softmax_loss(W, b, y, h, (cand, np.repeat(one, 3, axis=1), sc))
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5)
    np.testing.assert_allclose(ours.numpy(), full, rtol=1e-5)
    np.testing.assert_allclose(R.sampled_softmax_loss(W, b, y, h, (cand, one, sc)), full, rtol=1e-12)


@pytest.mark.parametrize("bad", ["label", "negative label", "candidate"])
def test_out_of_range_ids_under_xla_give_nan_rows(bad):
    W, b, y, h, (cand, tc, sc) = problem(4)
    y, cand = y.copy(), cand.copy()
    if bad == "label":
        y[2, 0] = W.shape[0] + 5
    elif bad == "negative label":
        y[2, 0] = -1
    else:
        cand[3] = W.shape[0]
    step = tf.function(jit_compile=True)(lambda y, cand: sst.sampled_softmax_loss(
        W, b, y, h, len(cand), W.shape[0], sampled_values=(cand, tc, sc)))
    loss = step(tf.constant(y), tf.constant(cand)).numpy()
    if bad == "candidate":
        assert np.isnan(loss).all()
    else:
        assert np.isnan(loss[2]) and np.isfinite(np.delete(loss, 2)).all()
    full = tf.function(jit_compile=True)(lambda y: sst.full_softmax_loss(W, b, y, h))
    if bad != "candidate":
        assert np.isnan(full(tf.constant(y)).numpy()[2])


@pytest.mark.parametrize("which,value,message", [
    (1, 0.0, r"true_expected_count\) must be positive"),
    (2, -1.0, r"sampled_expected_count\) must be positive"),
])
def test_invalid_sampled_values_raise_inside_tf_function(which, value, message):
    W, b, y, h, sv = problem(5)
    sv = [np.array(v) for v in sv]
    sv[which].flat[0] = value
    step = tf.function(lambda tc, sc: sst.sampled_softmax_loss(W, b, y, h, len(sv[0]), W.shape[0],
                                                               sampled_values=(sv[0], tc, sc)))
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        step(tf.constant(sv[1]), tf.constant(sv[2]))


def test_a_candidate_count_unknown_when_traced_is_checked_when_it_runs():
    W, b, y, h, (cand, tc, sc) = problem(6, S=7)
    step = tf.function(input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.float32)])(
        lambda cand, sc: sst.sampled_softmax_loss(W, b, y, h, 5, W.shape[0], sampled_values=(cand, tc, sc)))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"sampled_candidates\) must have shape \[5\]"):
        step(tf.constant(cand), tf.constant(sc))


_LEARNED = []


def _learned_sampler():
    # One sampler (its counts are a variable, which a tf.function may create only once).
    if not _LEARNED:
        _LEARNED.append(sst.LearnedUnigramSampler(20))
    return _LEARNED[0]


@pytest.mark.parametrize("make", [
    lambda tc, g: sst.log_uniform_candidate_sampler(tc, 5, 20, generator=g),
    lambda tc, g: sst.uniform_candidate_sampler(tc, 5, 20, generator=g),
    lambda tc, g: sst.unigram_candidate_sampler(tc, 5, 20, [1.0] * 20, generator=g),
    lambda tc, g: _learned_sampler()(tc, 5, generator=g),
], ids=["log_uniform", "uniform", "unigram", "learned"])
def test_samplers_reject_true_classes_out_of_range(make):
    g = tf.random.Generator.from_seed(0)
    for bad in ([[0, -10]], [[3, 20]]):
        with pytest.raises(sst.SampledSoftmaxError, match=r"`true_classes` must be in \[0, 19\]"):
            make(tf.constant(bad, tf.int64), g)
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"`true_classes` must be in \[0, 19\]"):
            tf.function(lambda tc: make(tc, g))(tf.constant(bad, tf.int64))
        _, true_count, _ = tf.function(jit_compile=True)(lambda tc: make(tc, g))(tf.constant(bad, tf.int64))
        assert np.isnan(true_count.numpy()[0, 1]) and np.isfinite(true_count.numpy()[0, 0])


LEARNED_MIRRORED = r"""
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from sampled_softmax import tensorflow as sst
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    sampler = sst.LearnedUnigramSampler(10)
labels = np.array([[1], [1], [2], [7]])  # replica 0 sees [1, 1], replica 1 sees [2, 7]
@tf.function
def step():
    def replica_fn(y):
        sampler(y, 3)
        return tf.constant(0)
    strategy.run(replica_fn, args=(strategy.experimental_distribute_values_from_function(
        lambda c: tf.constant(labels[c.replica_id_in_sync_group * 2:][:2])),))
step(); step()
copies = [v.numpy() for v in strategy.experimental_local_results(sampler.counts)]
expected = np.ones(10); expected[[1, 2, 7]] += [4, 2, 2]
for c in copies:
    np.testing.assert_array_equal(c, expected)
ckpt = tf.train.Checkpoint(sampler=sampler)
path = ckpt.save("CKPT")
restored = sst.LearnedUnigramSampler(10)
tf.train.Checkpoint(sampler=restored).restore(path)
np.testing.assert_array_equal(restored.counts.numpy(), expected)
print("counts agree")
"""


@pytest.mark.slow
def test_learned_sampler_counts_aggregate_across_mirrored_replicas(tmp_path):
    import subprocess
    import sys

    script = LEARNED_MIRRORED.replace("CKPT", str(tmp_path / "ckpt"))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "counts agree" in out.stdout
