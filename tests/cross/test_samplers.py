"""Sampler distributions, expected counts and draws: NumPy reference and PyTorch modules."""

import io

import numpy as np
import pytest
import torch
from scipy import stats

from sampled_softmax import SampledSoftmaxError
from sampled_softmax import samplers as NS
from sampled_softmax.torch import (LearnedUnigramSampler, LogUniformSampler, UniformSampler,
                                   UnigramSampler)

V = 50
COUNTS = np.arange(1, V - 1, dtype=float) ** -1.2 * 1000  # V - 2 entries: 2 reserved ids


def torch_samplers(draw):
    return {
        "uniform": UniformSampler(V, draw=draw),
        "log_uniform": LogUniformSampler(V, draw=draw),
        "unigram": UnigramSampler(V, COUNTS, distortion=0.75, num_reserved_ids=2, draw=draw),
    }


def numpy_distributions():
    return {
        "uniform": NS.Uniform(V),
        "log_uniform": NS.LogUniform(V),
        "unigram": NS.Unigram(NS.unigram_weights(COUNTS, num_classes=V, distortion=0.75, num_reserved_ids=2)),
    }


@pytest.mark.parametrize("name", ["uniform", "log_uniform", "unigram"])
def test_distributions_sum_to_one_and_torch_agrees(name):
    q = numpy_distributions()[name].all_probs()
    assert q.sum() == pytest.approx(1.0, abs=1e-12)
    tq = torch_samplers("unique")[name].probs(torch.arange(V)).numpy()
    np.testing.assert_allclose(tq, q, rtol=1e-12)


def test_log_uniform_closed_form_and_unigram_reserved_ids():
    k = np.arange(V)
    np.testing.assert_allclose(NS.log_uniform_probs(k, V), np.log((k + 2) / (k + 1)) / np.log(V + 1), rtol=1e-13)
    q = numpy_distributions()["unigram"].all_probs()
    assert q[0] == q[1] == 0.0
    np.testing.assert_allclose(q[2:], COUNTS**0.75 / (COUNTS**0.75).sum())


@pytest.mark.parametrize("name", ["uniform", "log_uniform", "unigram"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_with_replacement_frequencies_chi_square(name, backend):
    q = numpy_distributions()[name].all_probs()
    n = 200_000
    if backend == "numpy":
        draws = numpy_distributions()[name].sample(n, np.random.default_rng(7))
    else:
        g = torch.Generator().manual_seed(7)
        u = torch.rand(n, generator=g, dtype=torch.float64)
        draws = torch_samplers("with_replacement")[name]._sample(u).numpy()  # the accelerator path
    observed = np.bincount(draws, minlength=V)
    support = q > 0
    assert observed[~support].sum() == 0  # reserved ids are never drawn
    _, p = stats.chisquare(observed[support], n * q[support])
    assert p > 1e-3


def _inclusion_frequency(draw_fn, reps):
    counts = np.zeros(V)
    for r in range(reps):
        cand, exp_count = draw_fn(r)
        cand = np.asarray(cand)[np.isfinite(np.asarray(exp_count))]
        counts[np.unique(cand)] += 1
    return counts / reps


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_unique_exact_expected_counts_are_inclusion_probabilities(backend):
    S, reps = 10, 4000
    dist, sampler = numpy_distributions()["log_uniform"], torch_samplers("unique_exact")["log_uniform"]
    y = np.zeros((1, 1), np.int64)
    if backend == "numpy":
        rng = np.random.default_rng(3)
        freq = _inclusion_frequency(lambda r: NS.sample_candidates(dist, y, S, "unique_exact", rng)[::2], reps)
    else:
        g = torch.Generator().manual_seed(3)
        freq = _inclusion_frequency(lambda r: sampler(torch.as_tensor(y), S, generator=g)[::2], reps)
    pi = NS.expected_count(dist.all_probs(), S, "unique_exact")
    se = np.sqrt(pi * (1 - pi) / reps)
    assert np.all(np.abs(freq - pi) < 5 * se + 1e-9)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_unique_like_tensorflow_draws_distinct_classes_with_its_expected_counts(backend):
    S = 20
    y = np.array([[0], [7]])
    q = NS.log_uniform_probs(np.arange(V), V)
    if backend == "numpy":
        cand, tc, sc = NS.sample_candidates(NS.LogUniform(V), y, S, "unique", np.random.default_rng(5))
    else:
        cand, tc, sc = (x.double().numpy() if x.is_floating_point() else x.numpy()
                        for x in LogUniformSampler(V)(torch.as_tensor(y), S, generator=torch.Generator().manual_seed(5)))
    cand = np.asarray(cand)
    assert len(set(cand.tolist())) == S
    # All expected counts come from one num_tries n >= S: 1 - (1 - q)^n.
    n = np.log1p(-sc[0]) / np.log1p(-q[cand[0]])
    assert n >= S
    rtol = 1e-12 if backend == "numpy" else 1e-6
    np.testing.assert_allclose(sc, NS.expected_count(q[cand], S, "unique", round(n)), rtol=rtol)
    np.testing.assert_allclose(np.asarray(tc)[:, 0], NS.expected_count(q[y[:, 0]], S, "unique", round(n)), rtol=rtol)


def test_unique_like_tensorflow_set_distribution_matches_numpy_reference():
    """First-candidate frequencies of the torch and NumPy TF-unique draws agree (chi-square)."""
    S, reps = 5, 3000
    y = torch.zeros(1, 1, dtype=torch.long)
    g = torch.Generator().manual_seed(11)
    sampler = LogUniformSampler(V)
    rng = np.random.default_rng(11)
    t_counts, n_counts = np.zeros(V), np.zeros(V)
    for _ in range(reps):
        t_counts[sampler(y, S, generator=g)[0].numpy()] += 1
        n_counts[NS.sample_candidates(NS.LogUniform(V), y.numpy(), S, "unique", rng)[0]] += 1
    table = np.stack([t_counts, n_counts])[:, (t_counts + n_counts) > 20]
    _, p, _, _ = stats.chi2_contingency(table)
    assert p > 1e-3


def test_same_generator_seed_same_draw_and_different_seed_differs():
    sampler = LogUniformSampler(10_000)
    y = torch.tensor([[3], [4]])
    a = sampler(y, 64, generator=torch.Generator().manual_seed(0))
    b = sampler(y, 64, generator=torch.Generator().manual_seed(0))
    c = sampler(y, 64, generator=torch.Generator().manual_seed(1))
    for x, z in zip(a, b):
        assert torch.equal(x, z)
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("name", ["uniform", "log_uniform", "unigram"])
def test_torch_expected_counts_with_replacement(name):
    sampler = torch_samplers("with_replacement")[name]
    y = torch.tensor([[2, 9]])
    cand, tc, sc = sampler(y, 7, generator=torch.Generator().manual_seed(0))
    q = numpy_distributions()[name].all_probs()
    np.testing.assert_allclose(sc.numpy(), 7 * q[cand.numpy()], rtol=1e-6)
    np.testing.assert_allclose(tc.numpy(), 7 * q[y.numpy()], rtol=1e-6)


def test_learned_unigram_counts_update_and_survive_state_dict():
    sampler = LearnedUnigramSampler(V)
    y = torch.tensor([[3], [3], [5]])
    sampler(y, 4, generator=torch.Generator().manual_seed(0))
    assert sampler.counts[3] == 3 and sampler.counts[5] == 2 and sampler.counts[0] == 1
    sampler.eval()
    sampler(y, 4)  # no update in eval mode
    assert sampler.counts[3] == 3
    buf = io.BytesIO()
    torch.save(sampler.state_dict(), buf)
    buf.seek(0)
    restored = LearnedUnigramSampler(V)
    restored.load_state_dict(torch.load(buf))
    assert torch.equal(restored.counts, sampler.counts)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    for x, z in zip(sampler(y, 4, generator=g1), restored(y, 4, generator=g2)):
        assert torch.equal(x, z)


def test_learned_unigram_ignores_ignore_index_when_updating():
    sampler = LearnedUnigramSampler(V)
    sampler(torch.tensor([[3, -1]]), 4, ignore_index=-1)
    assert sampler.counts.sum() == V + 1 and sampler.counts[3] == 2


def test_unique_draws_need_enough_classes_of_nonzero_probability():
    with pytest.raises(SampledSoftmaxError, match="num_sampled.*<= 48.*non-zero probability.*received 49"):
        torch_samplers("unique")["unigram"](torch.tensor([[2]]), 49)
    with pytest.raises(SampledSoftmaxError, match="num_sampled.*received 0"):
        LogUniformSampler(V, draw="with_replacement")(torch.tensor([[2]]), 0)
    # With replacement or unique_exact, num_sampled > V is possible.
    assert LogUniformSampler(V, draw="unique_exact")(torch.tensor([[2]]), 2 * V)[0].shape == (2 * V,)


def test_bad_sampler_arguments():
    with pytest.raises(SampledSoftmaxError, match="`draw` must be one of"):
        LogUniformSampler(V, draw="sometimes")
    with pytest.raises(SampledSoftmaxError, match="`unigrams` must have num_classes - num_reserved_ids = 48 entries; received 47"):
        UnigramSampler(V, COUNTS[:-1], num_reserved_ids=2)
    with pytest.raises(SampledSoftmaxError, match="`unigrams` must be finite and >= 0"):
        UnigramSampler(3, [1.0, -1.0, 2.0])


def test_tensorflow_sampler_ops_give_the_same_expected_counts():
    tf = pytest.importorskip("tensorflow")
    y = tf.constant([[1], [40]], dtype=tf.int64)
    q = NS.log_uniform_probs(np.arange(V), V)
    for unique in (False, True):
        cand, tc, sc = tf.random.log_uniform_candidate_sampler(y, 1, 12, unique, V, seed=4)
        cand = cand.numpy()
        if unique:
            n = int(round(np.log1p(-sc.numpy()[0]) / np.log1p(-np.float32(q[cand[0]]))))
            expected = NS.expected_count(q[cand], 12, "unique", n)
        else:
            expected = NS.expected_count(q[cand], 12, "with_replacement")
        np.testing.assert_allclose(sc.numpy(), expected, rtol=2e-6)


@pytest.mark.parametrize("draw", ["with_replacement", "unique", "unique_exact"])
@pytest.mark.parametrize("name", ["uniform", "log_uniform", "unigram", "learned"])
def test_numpy_cpu_path_and_torch_ops_path_give_identical_draws(name, draw):
    sampler = LearnedUnigramSampler(V, draw=draw) if name == "learned" else torch_samplers(draw)[name]
    if name == "learned":
        sampler.counts[:10] += 40.0
    y = torch.tensor([[2, 3], [9, 2]])
    for S in (5, 40):
        if draw == "unique" and S > sampler.support:
            continue
        a = sampler._draw_numpy(y, S, torch.Generator().manual_seed(S))
        b = sampler._draw_torch(y, S, torch.Generator().manual_seed(S))
        assert torch.equal(a[0], b[0])
        for x, z in zip(a[1:], b[1:]):
            np.testing.assert_allclose(x.numpy(), z.numpy(), rtol=1e-6)


@pytest.mark.parametrize("num_classes", [1, 2, 3, 8, 9, 100, 1025])
def test_counts_tree_draws_equal_the_cumulative_table(num_classes):
    """The Fenwick tree of a learned sampler: after batches of additions (repeats, zero
    counts), the same ids as ``searchsorted(cumsum(counts), u * total, side="right")`` from the
    same uniforms, and the same probabilities."""
    rng = np.random.default_rng(num_classes)
    counts = rng.integers(0, 4, num_classes).astype(float)
    counts[rng.integers(num_classes)] += 1
    tree = NS.CountsTree(counts)
    for _ in range(6):
        ids = rng.integers(0, num_classes, 37)
        tree.add(ids)
        np.add.at(counts, ids, 1.0)
        u = np.concatenate([rng.random(500), [0.0, np.nextafter(1.0, 0.0)]])
        np.testing.assert_array_equal(tree.from_uniform(u), NS.Unigram(counts).from_uniform(u))
        np.testing.assert_array_equal(tree.probs(np.arange(num_classes)), counts / counts.sum())


def test_learned_sampler_follows_its_counts_after_a_load():
    """The tree is derived from the counts buffer: loading other counts (or changing them in
    place) makes the next draw follow them, exactly as a sampler built with those counts."""
    trained = LearnedUnigramSampler(V)
    for step in range(3):
        trained(torch.randint(V, (16, 1), generator=torch.Generator().manual_seed(step)), 8)
    fresh = LearnedUnigramSampler(V)
    fresh(torch.zeros(4, 1, dtype=torch.int64), 8)  # its tree now holds other counts
    fresh.load_state_dict(trained.state_dict())
    for sampler in (fresh, trained):
        sampler.eval()
    draws = [s(torch.zeros(1, 1, dtype=torch.int64), 8, generator=torch.Generator().manual_seed(9))
             for s in (fresh, trained)]
    for a, b in zip(*draws):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.no_grad():
        trained.counts.fill_(1.0)
        trained.counts[7] = 1e9  # in place: nearly every draw is class 7
    cand, _, _ = trained(torch.zeros(1, 1, dtype=torch.int64), 1, generator=torch.Generator().manual_seed(0))
    assert cand.tolist() == [7]
