"""Under a ``mixed_bfloat16`` dtype policy (issue 32), on whichever backend this run uses: the
state that estimates frequencies or counts stays float32 and gives the float32 policy's
results, where it crashed (TensorFlow), never updated (PyTorch) or computed in bfloat16 (JAX)."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from sampled_softmax.keras import CorpusSampler, SampledSoftmax, StreamingFrequency  # noqa: E402

IDS = np.array([3, 8, 3, 5, 40, 8], np.int32)


@pytest.fixture
def policies():
    """Run ``make()`` under the float32 policy and under mixed_bfloat16; restore the policy."""
    before = keras.config.dtype_policy()

    def run(make):
        out = {}
        for name in ("float32", "mixed_bfloat16"):
            keras.config.set_dtype_policy(name)
            try:
                out[name] = make()
            finally:
                keras.config.set_dtype_policy(before)
        return out

    return run


def _np(x):
    return keras.ops.convert_to_numpy(x)


def test_streaming_frequency_learns_in_float32_under_mixed_precision(policies):
    def make():
        f = StreamingFrequency(64)
        outs = [_np(f(IDS[: 2 + k], training=True)) for k in range(4)]
        return outs, _np(f.gap), f.gap.dtype, _np(f(IDS)).dtype

    out = policies(make)
    (want, gap, _, _), (got, got_gap, dtype, out_dtype) = out["float32"], out["mixed_bfloat16"]
    assert dtype == "float32" and out_dtype == np.float32
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    np.testing.assert_array_equal(got_gap, gap)
    assert np.any(gap > 0)  # it learned


@pytest.mark.parametrize("sampler", ["learned_unigram", "uniform"])
def test_corpus_sampler_draws_and_counts_in_float32_under_mixed_precision(policies, sampler):
    def make():
        s = CorpusSampler(2000, 1500, sampler=sampler, draw="with_replacement", seed=0)
        drawn = [tuple(_np(v) for v in s(IDS, training=True)) for _ in range(2)]
        return drawn, (_np(s.sampling_counts) if sampler == "learned_unigram" else None)

    out = policies(make)
    (want, counts), (got, got_counts) = out["float32"], out["mixed_bfloat16"]
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            np.testing.assert_array_equal(a, b)
    # Every class can be drawn: 1500 uniform draws from 2000 classes reach about 1055 distinct.
    if sampler == "uniform":
        assert len(np.unique(got[0][0])) > 900
    else:
        np.testing.assert_array_equal(got_counts, counts)
        assert got_counts.sum() == 2000 + 2 * len(IDS)


def test_the_output_layers_learned_counts_are_float32_under_mixed_precision(policies):
    from sampled_softmax.keras._backend import get_tensor_attr
    from sampled_softmax.keras._binding import _STATE_ATTR

    def make():
        layer = SampledSoftmax(300, 20, seed=0)
        layer.build((None, 4))
        layer.sampling_counts.assign(keras.ops.one_hot(5, 300) * 300 + 1)  # 301: bfloat16 holds 300 or 302
        out = layer(keras.ops.ones((3, 4)), training=True)  # the call reads the state the loss uses
        state = get_tensor_attr(out, _STATE_ATTR)
        counts = layer.sampling_counts if state is None else state["sampling_counts"]
        labels = keras.ops.convert_to_tensor(np.array([5, 5, 299, 7], np.int32))
        return _np(counts), tuple(_np(v) for v in layer.sample(labels, state)), layer.sampling_counts.dtype

    out = policies(make)
    (counts, drawn, _), (got_counts, got_drawn, dtype) = out["float32"], out["mixed_bfloat16"]
    assert dtype == "float32" and got_counts.dtype == np.float32 and got_counts[5] == 301
    np.testing.assert_array_equal(got_counts, counts)
    for got, want in zip(got_drawn, drawn):
        np.testing.assert_array_equal(got, want)
