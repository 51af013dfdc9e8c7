"""The corpus reader and the generated corpus with a known entropy rate."""

import math
import os

import numpy as np
import pytest

from sampled_softmax import SampledSoftmaxError
from sampled_softmax.apps.corpus import read_corpus, zipf_markov

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")


def test_entropy_rate_matches_the_transition_matrix():
    V, follow = 12, 0.6
    corpus = zipf_markov(V, 10, 10, follow=follow, exponent=1.2)
    a = next(m for m in (7919, 7, 11) if math.gcd(m, V) == 1 and m < V)
    z = np.arange(1, V + 1.0) ** -1.2
    z /= z.sum()
    P = np.tile((1 - follow) * z, (V, 1))
    P[np.arange(V), (a * np.arange(V) + 1) % V] += follow
    w, vecs = np.linalg.eig(P.T)
    pi = np.real(vecs[:, np.argmin(np.abs(w - 1))])
    pi /= pi.sum()
    H = -np.sum(pi[:, None] * P * np.log(P))
    np.testing.assert_allclose(math.log(corpus.optimal_perplexity), H, rtol=1e-10)


def test_generated_text_has_that_entropy_rate():
    V, follow = 5000, 0.5
    c = zipf_markov(V, 400_000, 100_000, follow=follow, seed=1)
    seq = np.concatenate([c.train, c.valid])
    a = next(m for m in (7919, 7, 11) if math.gcd(m, V) == 1 and m < V)
    z = 1.0 / np.arange(1, V + 1.0)
    z /= z.sum()
    prev, nxt = seq[:-1], seq[1:]
    p = (1 - follow) * z[nxt] + follow * (nxt == (a * prev + 1) % V)
    # The true model's log-loss on the sample is an unbiased estimate of the entropy rate.
    np.testing.assert_allclose(-np.mean(np.log(p)), math.log(c.optimal_perplexity), rtol=0.01)
    assert c.train.dtype == np.int64 and c.train.min() >= 0 and c.train.max() < V


def test_read_corpus(tmp_path):
    (tmp_path / "train.txt").write_text("a b a\n\nc a\n")
    (tmp_path / "valid.txt").write_text("a d\n")
    c = read_corpus(str(tmp_path))
    assert c.words[:2] == ["a", "<eos>"]  # by decreasing frequency
    assert [c.words[i] for i in c.train] == ["a", "b", "a", "<eos>", "c", "a", "<eos>"]
    assert [c.words[i] for i in c.valid] == ["a", "<unk>", "<eos>"]
    assert c.vocab_size == len(c.words) == 5
    assert c.unigram_perplexity() > 1


def test_read_corpus_missing_split_is_a_clear_error(tmp_path):
    (tmp_path / "train.txt").write_text("a\n")
    with pytest.raises(SampledSoftmaxError, match=r"`corpus` directory must contain valid.txt"):
        read_corpus(str(tmp_path))


@pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "ptb")), reason="shared PTB data not present")
def test_reads_penn_treebank():
    c = read_corpus(os.path.join(DATA, "ptb"))
    assert c.vocab_size == 10_000  # PTB's preprocessed vocabulary, <unk> and <eos> included
    assert c.train.size == 929_589  # the standard count, one <eos> per sentence included
