"""The Keras layer's vocabulary-order check and default sampler (issue 22) on this run's
backend: ``fit`` with ``sampler="log_uniform"`` on labels of a shuffled Zipf vocabulary warns
once (on TensorFlow, in a graph that is not XLA-compiled), on sorted labels it stays silent;
the default sampler learns the label counts and never checks."""

import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from sampled_softmax import VocabularyOrderWarning  # noqa: E402
from sampled_softmax import order_check as OC  # noqa: E402
from sampled_softmax.keras import SampledSoftmax  # noqa: E402

V = 3000


@pytest.fixture(autouse=True)
def fresh_checks():
    OC.reset()
    yield
    OC.reset()


def _fit(labels, jit_compile="auto", **kwargs):
    keras.utils.set_random_seed(0)
    head = SampledSoftmax(V, 32, **kwargs)
    model = keras.Sequential([keras.Input((), dtype="int32"), keras.layers.Embedding(V, 4), head])
    model.compile("adam", loss=head.loss, jit_compile=jit_compile)
    x = np.arange(len(labels), dtype="int32") % V
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.fit(x, labels.astype("int32"), batch_size=512, epochs=1, verbose=0)
        if keras.backend.backend() == "jax":
            import jax

            jax.effects_barrier()
    return head, [w for w in record if issubclass(w.category, VocabularyOrderWarning)]


def _zipf(n, seed=0):
    p = 1.0 / np.arange(1, V + 1)
    return np.random.default_rng(seed).choice(V, size=n, p=p / p.sum())


def test_keras_log_uniform_warns_for_a_shuffled_vocabulary_and_not_for_a_sorted_one():
    y = _zipf(OC.LABELS_TO_CHECK)
    jit = False if keras.backend.backend() == "tensorflow" else "auto"  # XLA cannot call back to Python
    _, record = _fit(y, jit_compile=jit, sampler="log_uniform")
    assert not record
    OC.reset()
    _, record = _fit(np.random.default_rng(1).permutation(V)[y], jit_compile=jit, sampler="log_uniform")
    assert len(record) == 1 and "sampler='learned_unigram'" in str(record[0].message)


def test_keras_default_sampler_learns_the_counts_and_is_not_checked():
    y = np.random.default_rng(1).permutation(V)[_zipf(OC.LABELS_TO_CHECK)]
    head, record = _fit(y)
    check = OC._CHECKS.get(("keras", V))
    assert head.sampler == "learned_unigram" and not record and (check is None or check.counts.sum() == 0)
    counts = keras.ops.convert_to_numpy(head.sampling_counts)
    np.testing.assert_array_equal(counts, 1 + np.bincount(y, minlength=V))
