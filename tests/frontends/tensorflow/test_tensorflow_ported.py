"""TensorFlow's own unit tests of the sampled losses and candidate samplers, ported and run on
``tf.nn`` itself, on ``sampled_softmax.tensorflow`` in its place, and on the PyTorch front end.

Sources (tensorflow/tensorflow):

* ``tensorflow/python/ops/nn_test.py`` at ``00205209cfc1e60c20bbbeee60a68d0672ac4213``,
  ``ComputeSampledLogitsTest``: ``testBasic``, ``testAccidentalHitRemoval``,
  ``testSubtractLogQ``, ``testSharded`` (which test ``_compute_sampled_logits``; here through
  the loss it feeds, the softmax cross-entropy of those logits against those labels),
  ``testSampledSoftmaxLoss`` and ``testSampledSoftmaxLossBf16``;
* ``tensorflow/python/kernel_tests/candidate_sampler_ops_test.py`` at
  ``1e08affb058e81ffc10295fff17b9f7b43491e60``, ``RangeSamplerOpsTest``:
  ``testSampledCandidates``, ``testTrueLogExpectedCount``, ``testSampledLogExpectedCount``,
  ``testAccidentalHits``.

As in TensorFlow's tests: 5 classes, batch 3, ``num_true`` 1 to 4, candidates ``[1, 0, 2, 3]``,
every expected count 0.5 with ``true_expected_count`` of shape ``[batch, 1]`` whatever
``num_true`` is, and weights and biases in 3 ``"div"`` shards (rows 2, 2, 1).
"""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from sampled_softmax import tensorflow as sst  # noqa: E402

NUM_CLASSES, BATCH, DIM, SAMPLED = 5, 3, 10, [1, 0, 2, 3]


def make_data(num_true, labels, seed=0):
    """Weights, biases, hidden states, sampled values and the logits and labels that
    ``_compute_sampled_logits`` is expected to give (TensorFlow's ``_GenerateTestData``)."""
    rng = np.random.RandomState(seed)
    weights = rng.randn(NUM_CLASSES, DIM).astype(np.float32)
    biases = rng.randn(NUM_CLASSES).astype(np.float32)
    hidden = rng.randn(BATCH, DIM).astype(np.float32)
    true_exp = np.full([BATCH, 1], 0.5, np.float32)
    sampled_exp = np.full([len(SAMPLED)], 0.5, np.float32)
    labels = np.asarray(labels).reshape(BATCH, num_true)
    true_logits = np.einsum("bd,btd->bt", hidden, weights[labels]) + biases[labels] - np.log(true_exp)
    sampled_logits = hidden @ weights[SAMPLED].T + biases[SAMPLED] - np.log(sampled_exp)
    logits = np.concatenate([true_logits, sampled_logits], 1)
    targets = np.hstack([np.full_like(true_logits, 1.0 / num_true), np.zeros_like(sampled_logits)])
    return weights, biases, hidden, (SAMPLED, true_exp, sampled_exp), labels, logits, targets


def softmax_cross_entropy(logits, targets, removed=None):
    if removed is not None:
        logits = np.where(removed, -np.inf, logits)
    shifted = logits - logits.max(1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return -(targets * np.where(np.isfinite(log_p), log_p, 0.0)).sum(1)


def shard(x, n=3):
    """TensorFlow's fixed_size_partitioner: the first shards take one row more."""
    return np.array_split(x, n)


def _tf_call(fn):
    def call(weights, biases, labels, hidden, sampled_values, num_true, remove_accidental_hits, label_dtype=tf.int64,
             dtype=tf.float32):
        as_t = lambda x: [tf.constant(s, dtype) for s in x] if isinstance(x, list) else tf.constant(x, dtype)  # noqa: E731
        values = (sampled_values[0], tf.constant(sampled_values[1], dtype), tf.constant(sampled_values[2], dtype))
        loss = fn(weights=as_t(weights), biases=as_t(biases), labels=tf.constant(labels, label_dtype),
                  inputs=tf.constant(hidden, dtype), num_sampled=len(SAMPLED), num_classes=NUM_CLASSES,
                  num_true=num_true, sampled_values=values, remove_accidental_hits=remove_accidental_hits)
        return tf.cast(loss, tf.float32).numpy()
    return call


def _torch_call(weights, biases, labels, hidden, sampled_values, num_true, remove_accidental_hits, label_dtype=None,
                dtype=None):
    torch = pytest.importorskip("torch")
    from sampled_softmax.torch import sampled_softmax_loss

    tdtype = torch.bfloat16 if dtype == tf.bfloat16 else torch.float32
    # NumPy's bfloat16 (ml_dtypes) does not convert: through float32, then to the dtype.
    tensor = lambda x: torch.tensor(np.asarray(x, np.float32)).to(tdtype)  # noqa: E731
    as_t = lambda x: [tensor(s) for s in x] if isinstance(x, list) else tensor(x)  # noqa: E731
    values = (torch.tensor(sampled_values[0]), tensor(sampled_values[1]), tensor(sampled_values[2]))
    loss = sampled_softmax_loss(as_t(weights), as_t(biases), torch.tensor(labels), as_t(hidden), len(SAMPLED),
                                NUM_CLASSES, num_true, sampled_values=values,
                                remove_accidental_hits=remove_accidental_hits)
    return loss.float().numpy()


FRONT_ENDS = {"tf.nn": _tf_call(tf.nn.sampled_softmax_loss), "sampled_softmax.tensorflow": _tf_call(sst.sampled_softmax_loss),
              "sampled_softmax.torch": _torch_call}


@pytest.mark.parametrize("front", list(FRONT_ENDS))
@pytest.mark.parametrize("sharded", [False, True], ids=["one table", "3 shards"])
@pytest.mark.parametrize("num_true", [1, 2, 3, 4])
def test_basic_subtract_log_q_and_sharded(front, sharded, num_true):
    """testBasic, testSubtractLogQ, testSharded: the loss of the expected logits (with every
    expected count 0.5, subtracting log Q shifts all logits alike)."""
    rng = np.random.RandomState(0)
    labels = rng.randint(0, NUM_CLASSES, size=BATCH * num_true)
    weights, biases, hidden, sv, labels, logits, targets = make_data(num_true, labels)
    if sharded:
        weights, biases = shard(weights), shard(biases)
    got = FRONT_ENDS[front](weights, biases, labels, hidden, sv, num_true, False)
    np.testing.assert_allclose(got, softmax_cross_entropy(logits, targets), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("front", list(FRONT_ENDS))
@pytest.mark.parametrize("num_true", [1, 2, 3, 4])
def test_accidental_hit_removal(front, num_true):
    """testAccidentalHitRemoval: a candidate equal to one of the row's labels has probability
    ~0 (here: the loss equals the cross-entropy with those columns removed)."""
    rng = np.random.RandomState(0)
    labels = rng.randint(0, NUM_CLASSES, size=BATCH * num_true)
    weights, biases, hidden, sv, labels, logits, targets = make_data(num_true, labels)
    removed = np.zeros_like(logits, bool)
    for row in range(BATCH):
        for col, c in enumerate(SAMPLED):
            removed[row, num_true + col] = c in labels[row]
    assert removed.any()
    got = FRONT_ENDS[front](weights, biases, labels, hidden, sv, num_true, True)
    np.testing.assert_allclose(got, softmax_cross_entropy(logits, targets, removed), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("front", list(FRONT_ENDS))
def test_sampled_softmax_loss(front):
    """testSampledSoftmaxLoss, one table and 3 shards of weights and biases."""
    weights, biases, hidden, sv, labels, logits, targets = make_data(1, [0, 1, 2])
    expected = softmax_cross_entropy(logits, targets)
    for w, b in ((weights, biases), (shard(weights), shard(biases))):
        got = FRONT_ENDS[front](w, b, labels, hidden, sv, 1, False)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("front", list(FRONT_ENDS))
def test_sampled_softmax_loss_bfloat16(front):
    """testSampledSoftmaxLossBf16: bfloat16 weights, biases, inputs and expected counts, and
    (for the TensorFlow functions) bfloat16 labels, which they cast."""
    weights, biases, hidden, (cand, true_exp, sampled_exp), labels, logits, targets = make_data(1, [0, 1, 2])
    bf16 = tf.bfloat16.as_numpy_dtype
    sv = (cand, true_exp.astype(bf16), sampled_exp.astype(bf16))
    label_dtype = tf.bfloat16 if front != "sampled_softmax.torch" else None
    got = FRONT_ENDS[front](weights, biases, labels, hidden, sv, 1, False, label_dtype=label_dtype, dtype=tf.bfloat16)
    np.testing.assert_allclose(got, softmax_cross_entropy(logits, targets), rtol=1e-1, atol=1e-1)


# ---------------------------------------------------------------------------------------------
# candidate_sampler_ops_test.py, RangeSamplerOpsTest

TRUE_LABELS = [[1, 2], [0, 4], [3, 3]]
SAMPLERS = {"tf": tf.random.all_candidate_sampler, "sampled_softmax.tensorflow": sst.all_candidate_sampler}
HITS = {"tf": tf.nn.compute_accidental_hits, "sampled_softmax.tensorflow": sst.compute_accidental_hits}


@pytest.mark.parametrize("which", list(SAMPLERS))
def test_all_candidate_sampler(which):
    """testSampledCandidates, testTrueLogExpectedCount, testSampledLogExpectedCount."""
    true_classes = tf.constant(TRUE_LABELS, tf.int64)
    cand, true_count, sampled_count = SAMPLERS[which](true_classes, 2, 5, True)
    np.testing.assert_array_equal(cand.numpy(), [0, 1, 2, 3, 4])
    assert cand.shape == [5] and true_count.shape == [3, 2] and sampled_count.shape == [5]
    np.testing.assert_array_equal(tf.math.log(true_count).numpy(), np.zeros((3, 2)))
    np.testing.assert_array_equal(tf.math.log(sampled_count).numpy(), np.zeros(5))


@pytest.mark.parametrize("which", list(HITS))
def test_accidental_hits(which):
    """testAccidentalHits."""
    true_classes = tf.constant(TRUE_LABELS, tf.int64)
    cand, _, _ = tf.random.all_candidate_sampler(true_classes, 2, 5, True)
    indices, ids, weights = HITS[which](true_classes, cand, 2)
    assert indices.shape.ndims == ids.shape.ndims == weights.shape.ndims == 1
    for index, id_, weight in zip(indices.numpy(), ids.numpy(), weights.numpy()):
        assert id_ in TRUE_LABELS[index]
        assert weight < -1.0e37


@pytest.mark.parametrize("seed", range(5))
def test_compute_accidental_hits_equals_tensorflows(seed):
    """Beyond the port: the same hits, in the same order, with the same dtypes, as TensorFlow's
    op, on random labels and candidates with repeats."""
    rng = np.random.default_rng(seed)
    true_classes = rng.integers(0, 12, size=(7, 3))
    cand = rng.integers(0, 12, size=9)  # repeats: TensorFlow keeps a candidate's last position
    ours = sst.compute_accidental_hits(tf.constant(true_classes), tf.constant(cand), 3)
    theirs = tf.nn.compute_accidental_hits(tf.constant(true_classes, tf.int64), tf.constant(cand, tf.int64), 3)
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a.numpy(), b.numpy())
