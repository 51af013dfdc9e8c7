"""The vocabulary-order check (issue 22): labels whose ids contradict the log-uniform sampler
(an alphabetical or random vocabulary) give one ``VocabularyOrderWarning`` per front end and
vocabulary size; frequency-sorted labels, other samplers and given ``sampled_values`` give none.
The Keras layer's check is in ``frontends/keras/test_keras_order_check.py``."""

import os
import warnings

import numpy as np
import pytest

from sampled_softmax import VocabularyOrderWarning
from sampled_softmax import order_check as OC

V = 3000
DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")


def zipf_labels(n, num_classes, a=1.0, seed=0):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, num_classes + 1) ** a
    return rng.choice(num_classes, size=n, p=p / p.sum())


def permuted(labels, num_classes, seed=1):
    return np.random.default_rng(seed).permutation(num_classes)[labels]


@pytest.fixture(autouse=True)
def fresh_checks():
    OC.reset()
    yield
    OC.reset()


def order_warnings(record):
    return [w for w in record if issubclass(w.category, VocabularyOrderWarning)]


def test_label_counts_and_the_verdict_after_enough_labels():
    assert OC.upper_half(7) == 4 and OC.upper_half(8) == 4 and OC.upper_half(1) == 1
    assert OC.label_counts([0, 3, 4, 6, 7, -1, -100], 7).tolist() == [4, 2]  # 7 and the negatives are outside
    check = OC.OrderCheck(10, "a remedy")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        check.observe([OC.LABELS_TO_CHECK - 1, OC.LABELS_TO_CHECK - 1])
        assert check.pending and not order_warnings(record)  # one label short
        check.observe([1, 1])
        assert not check.pending and check.share == 1.0
        check.observe([5000, 5000])  # after the verdict nothing is counted or said again
    assert check.counts.tolist() == [OC.LABELS_TO_CHECK, OC.LABELS_TO_CHECK]
    [w] = order_warnings(record)
    assert "100% of the labels" in str(w.message) and "ids >= 5 of num_classes=10" in str(w.message)
    assert "a remedy" in str(w.message)


def test_the_threshold_separates_sorted_from_shuffled_zipf_vocabularies():
    for num_classes in (1000, 100_000):
        for a in (0.7, 1.0, 1.3):
            y = zipf_labels(OC.LABELS_TO_CHECK, num_classes, a)
            sorted_share = OC.label_counts(y, num_classes)
            shuffled = OC.label_counts(permuted(y, num_classes), num_classes)
            assert sorted_share[1] / sorted_share[0] < OC.UPPER_HALF_THRESHOLD - 0.05, (num_classes, a)
            assert shuffled[1] / shuffled[0] > OC.UPPER_HALF_THRESHOLD + 0.05, (num_classes, a)


@pytest.fixture(scope="module")
def ptb():
    """PTB's training words and its vocabulary by decreasing frequency (ties by first sight)."""
    path = os.path.join(DATA, "ptb", "ptb.train.txt")
    if not os.path.isfile(path):
        pytest.skip("needs ../shared/data/ptb")
    with open(path) as f:
        words = f.read().replace("\n", " <eos> ").split()
    counts = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    return words, sorted(counts, key=lambda w: -counts[w])


@pytest.mark.parametrize("order", ["frequency", "alphabetical"])
def test_ptb_alphabetical_vocabulary_warns_and_frequency_order_does_not(order, ptb):
    """The issue's own case: PTB's training labels through the PyTorch module with log-uniform."""
    torch = pytest.importorskip("torch")
    from sampled_softmax.torch import SampledSoftmax

    words, vocabulary = ptb
    if order == "alphabetical":
        vocabulary = sorted(vocabulary)
    index = {w: i for i, w in enumerate(vocabulary)}
    ids = np.array([index[w] for w in words[:4096]])
    layer = SampledSoftmax(8, len(vocabulary), 64, sampler="log_uniform")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for batch in np.split(ids, 8):
            layer(torch.randn(len(batch), 8), torch.from_numpy(batch))
    assert len(order_warnings(record)) == (order == "alphabetical")


# -- PyTorch -------------------------------------------------------------------------------


def _torch_steps(labels, **kwargs):
    torch = pytest.importorskip("torch")
    from sampled_softmax.torch import sampled_softmax_loss

    torch.manual_seed(0)
    W, b = torch.randn(V, 4), torch.zeros(V)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for batch in np.split(labels, 8):
            sampled_softmax_loss(W, b, torch.from_numpy(batch), torch.randn(len(batch), 4), 16, V, **kwargs)
    return order_warnings(record)


def test_torch_warns_once_for_a_shuffled_vocabulary_and_names_the_caller():
    y = zipf_labels(8 * 512, V)
    record = _torch_steps(permuted(y, V))
    assert len(record) == 1 and os.path.basename(record[0].filename) == os.path.basename(__file__)
    assert "sampler='learned_unigram'" in str(record[0].message)
    assert not _torch_steps(permuted(y, V))  # once per process for this vocabulary size
    OC.reset()
    assert not _torch_steps(y)  # frequency-sorted
    check = OC.order_check("torch", V, "")
    assert not check.pending and check.share < 0.15 and check.device_counts is None


def test_the_environment_variable_turns_the_check_off(monkeypatch):
    monkeypatch.setenv("SAMPLED_SOFTMAX_ORDER_CHECK", "0")
    assert not _torch_steps(permuted(zipf_labels(8 * 512, V), V))
    monkeypatch.setenv("SAMPLED_SOFTMAX_ORDER_CHECK", "1")
    assert len(_torch_steps(permuted(zipf_labels(8 * 512, V), V))) == 1


def test_torch_device_counts_equal_the_numpy_counts():
    """The torch-ops count (used off the CPU) against the NumPy one (used on it)."""
    torch = pytest.importorskip("torch")
    from sampled_softmax.torch import _order

    ids = np.array([0, 3, 4, 6, 7, -1, -100, 2, 5])
    assert _order.device_counts(torch.from_numpy(ids), 7).tolist() == OC.label_counts(ids, 7).tolist() == [6, 3]


def test_torch_checks_only_log_uniform_draws():
    torch = pytest.importorskip("torch")
    from sampled_softmax.torch import LogUniformSampler

    shuffled = permuted(zipf_labels(8 * 512, V), V)
    assert not _torch_steps(shuffled, sampler="uniform")
    given = LogUniformSampler(V)(torch.zeros(512, 1, dtype=torch.long), 16)
    assert not _torch_steps(shuffled, sampled_values=given)
    assert ("torch", V) not in OC._CHECKS or OC._CHECKS[("torch", V)].counts.sum() == 0
    assert len(_torch_steps(shuffled, sampler=LogUniformSampler(V))) == 1


def test_torch_ignored_labels_are_not_counted():
    y = permuted(zipf_labels(OC.LABELS_TO_CHECK, V), V)
    y[::2] = -100
    assert not _torch_steps(y, ignore_index=-100)  # enough labels, but half are ignored: no verdict yet
    check = OC.order_check("torch", V, "")
    assert check.pending and check.counts[0] == OC.LABELS_TO_CHECK // 2


# -- JAX ---------------------------------------------------------------------------------


@pytest.mark.parametrize("jit", [False, True])
def test_jax_warns_for_a_shuffled_vocabulary_eager_and_jitted(jit):
    jax = pytest.importorskip("jax")
    from sampled_softmax.jax import sampled_softmax_loss

    W, b = jax.numpy.zeros((V, 4)), jax.numpy.zeros(V)

    def loss(y, h, key):
        return sampled_softmax_loss(W, b, y, h, 16, V, key=key)

    step = jax.jit(loss) if jit else loss
    y = zipf_labels(OC.LABELS_TO_CHECK, V)
    for labels, expected in ((y, 0), (permuted(y, V), 1)):
        OC.reset()
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            for i, batch in enumerate(np.split(labels, 4)):
                step(batch, jax.numpy.ones((512, 4)), jax.random.key(i)).block_until_ready()
            jax.effects_barrier()
        assert len(order_warnings(record)) == expected, (jit, expected)


def test_jax_vmapped_steps_count_every_mapped_call():
    jax = pytest.importorskip("jax")
    from sampled_softmax.jax import sampled_softmax_loss

    W, b = jax.numpy.zeros((V, 4)), jax.numpy.zeros(V)
    labels = permuted(zipf_labels(OC.LABELS_TO_CHECK, V), V).reshape(4, -1)

    def loss(y, key):
        return sampled_softmax_loss(W, b, y, jax.numpy.ones((y.shape[0], 4)), 16, V, key=key)

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        jax.jit(jax.vmap(loss))(labels, jax.random.split(jax.random.key(0), 4)).block_until_ready()
        jax.effects_barrier()
    assert len(order_warnings(record)) == 1


# -- TensorFlow -----------------------------------------------------------------------------


@pytest.mark.parametrize("graph", [False, True])
def test_tensorflow_drop_in_warns_eager_and_in_a_graph(graph):
    tf = pytest.importorskip("tensorflow")
    from sampled_softmax.tensorflow import sampled_softmax_loss

    W, b = tf.zeros((V, 4)), tf.zeros(V)

    def loss(y, h):
        return sampled_softmax_loss(W, b, y, h, 16, V, seed=0)

    step = tf.function(loss) if graph else loss
    y = zipf_labels(OC.LABELS_TO_CHECK, V).reshape(-1, 1)
    for labels, expected in ((y, 0), (permuted(y, V), 1)):
        OC.reset()
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            for batch in np.split(labels, 4):
                step(tf.constant(batch), tf.ones((512, 4)))
        assert len(order_warnings(record)) == expected, (graph, expected)


def test_tensorflow_graph_stops_calling_back_once_the_verdict_is_in(monkeypatch):
    """A step traced while the check is pending calls back to Python (a host round trip) until
    the verdict, then skips the callback; ``reset`` makes it count again."""
    tf = pytest.importorskip("tensorflow")
    from sampled_softmax.tensorflow import sampled_softmax_loss

    W, b = tf.zeros((V, 4)), tf.zeros(V)
    step = tf.function(lambda y, h: sampled_softmax_loss(W, b, y, h, 16, V, seed=0))
    check = OC.order_check("tensorflow", V, "")
    calls = []
    observe = check.observe
    monkeypatch.setattr(check, "observe", lambda counts: (calls.append(1), observe(counts)))
    y = zipf_labels(OC.LABELS_TO_CHECK, V).reshape(-1, 1)
    for batch in np.split(y, 4):
        step(tf.constant(batch), tf.ones((512, 4)))
    assert len(calls) == 4 and not check.pending
    for batch in np.split(y, 4):
        step(tf.constant(batch), tf.ones((512, 4)))
    assert len(calls) == 4
    OC.reset()
    step(tf.constant(y[:512]), tf.ones((512, 4)))
    assert len(calls) == 5 and check.pending
