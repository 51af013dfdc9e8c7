"""The word2vec application: its pieces against direct computations, its evaluation against
gensim's own, and a small training run that learns."""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sampled_softmax import SampledSoftmaxError  # noqa: E402
from sampled_softmax.apps import word2vec as W2V  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")


def test_vocabulary_is_by_decreasing_count_with_min_count():
    words, counts = W2V.build_vocabulary([["b", "a", "b", "c"], ["a", "b", "d", "d"]], min_count=2)
    assert words == ["b", "a", "d"] and counts.tolist() == [3, 2, 2]
    with pytest.raises(SampledSoftmaxError, match="`min_count`=9 leaves no word"):
        W2V.build_vocabulary([["a"]], min_count=9)


def test_subsampling_is_word2vecs_formula():
    counts = np.array([1000.0, 100.0, 10.0, 1.0])
    keep = W2V.keep_probabilities(counts, 1e-2)
    threshold = 1e-2 * counts.sum()
    np.testing.assert_allclose(keep, np.minimum((np.sqrt(counts / threshold) + 1) * threshold / counts, 1.0))
    assert keep[0] < 1 and keep[-1] == 1.0
    assert np.all(W2V.keep_probabilities(counts, 0.0) == 1.0)


def test_skipgram_pairs_are_every_pair_within_each_reduced_window_and_sentence():
    rng = np.random.default_rng(0)
    ids = np.arange(12)
    sentence = np.array([0] * 7 + [1] * 5)
    window = 3
    centers, contexts = W2V.skipgram_pairs(ids, sentence, window, np.random.default_rng(5))
    reach = window - np.random.default_rng(5).integers(0, window, size=12)
    expected = sorted((i, j) for i in range(12) for j in range(12)
                      if i != j and abs(i - j) <= reach[i] and sentence[i] == sentence[j])
    assert sorted(zip(centers.tolist(), contexts.tolist())) == expected
    del rng


def test_spearman_with_ties_equals_scipys():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 5, 40).astype(float), rng.normal(size=40)
    assert W2V._spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, rel=1e-12)


def test_analogies_and_pairs_on_constructed_vectors(tmp_path):
    words = ["king", "queen", "man", "woman", "apple"]
    vectors = np.array([[1, 1, 0], [1, -1, 0], [0, 1, 0.1], [0, -1, 0.1], [0, 0, 1]], np.float32)
    model = W2V.WordVectors(words, vectors, np.ones(5))
    questions = tmp_path / "q.txt"
    questions.write_text(": family\nman woman king queen\nking queen man apple\nman woman king nowhere\n")
    result = model.evaluate_analogies(str(questions))
    assert (result["correct"], result["total"]) == (1, 2)
    pairs = tmp_path / "p.tsv"
    pairs.write_text("# header\nking\tqueen\t5\nman\twoman\t6\nking\tapple\t1\nking\tnowhere\t3\n")
    result = model.evaluate_word_pairs(str(pairs))
    assert result["pairs"] == 3 and result["oov"] == 1


def test_save_and_load_the_word2vec_text_format(tmp_path):
    model = W2V.WordVectors(["a", "b"], np.array([[1.5, -2.0], [0.25, 3.0]], np.float32), np.array([2, 1]))
    path = model.save_word2vec_format(str(tmp_path / "v.txt"))
    assert open(path).readline() == "2 2\n"
    back = W2V.WordVectors.load_word2vec_format(path)
    assert back.words == ["a", "b"] and np.array_equal(back.vectors, model.vectors)
    gensim = pytest.importorskip("gensim")
    kv = gensim.models.KeyedVectors.load_word2vec_format(path)
    assert np.array_equal(kv["b"], model.vectors[1])


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "word-eval")), reason="../shared/data absent")
def test_our_evaluation_is_gensims_on_the_real_sets(tmp_path):
    gensim = pytest.importorskip("gensim")
    rng = np.random.default_rng(0)
    lines = [line.split() for line in open(os.path.join(DATA, "word-eval", "questions-words.txt"))
             if not line.startswith(":")]
    words = [w for line in lines[::50] for w in line]
    words = list(dict.fromkeys(words + ["love", "sex", "tiger", "cat", "old", "new"]))
    words += [w.lower() for w in words[:60] if w.lower() not in words]  # spellings that fold onto others
    model = W2V.WordVectors(words, rng.normal(size=(len(words), 8)).astype(np.float32), np.ones(len(words)))
    kv = gensim.models.KeyedVectors.load_word2vec_format(model.save_word2vec_format(str(tmp_path / "v.txt")))
    questions = os.path.join(DATA, "word-eval", "questions-words.txt")
    assert model.evaluate_analogies(questions)["accuracy"] == pytest.approx(kv.evaluate_word_analogies(questions)[0])
    pairs = os.path.join(DATA, "word-eval", "wordsim353.tsv")
    assert model.evaluate_word_pairs(pairs)["spearman"] == pytest.approx(
        kv.evaluate_word_pairs(pairs)[1].statistic, rel=1e-9)


def planted_corpus(rng, sentences=400):
    """Sentences from two topics: words of one topic appear together."""
    topics = [[f"a{i}" for i in range(10)], [f"b{i}" for i in range(10)]]
    return [list(rng.choice(topics[rng.integers(2)], size=8)) for _ in range(sentences)]


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["negative_sampling", "nce", "sampled_softmax"])
def test_training_puts_words_of_one_topic_together(loss):
    rng = np.random.default_rng(0)
    config = W2V.Word2VecConfig(dim=16, window=3, min_count=1, sample=0.0, negative=3, epochs=3, loss=loss,
                                num_sampled=8, batch=256, alpha=0.05, adam_lr=0.05, seed=3)
    model = W2V.train(planted_corpus(rng), config, progress=False)
    unit = model._unit()
    topic = np.array([w[0] for w in model.words])
    sims = unit @ unit.T
    within = sims[topic[:, None] == topic[None, :]].mean()
    across = sims[topic[:, None] != topic[None, :]].mean()
    assert within > across + 0.3
    assert model.stats["vocabulary"] == 20


def test_bad_settings_are_clear_errors():
    with pytest.raises(SampledSoftmaxError, match=r"`window` must be an integer >= 1; received 0"):
        W2V.Word2VecConfig(window=0).check()
    with pytest.raises(SampledSoftmaxError, match=r"`loss` must be one of 'negative_sampling', 'nce', 'sampled_softmax'"):
        W2V.Word2VecConfig(loss="cbow").check()
    with pytest.raises(SampledSoftmaxError, match=r"`corpus` must be a text file or a directory"):
        W2V.read_sentences("/nonexistent/corpus")


@pytest.mark.slow
def test_the_command_line_trains_saves_and_evaluates(tmp_path, capsys):
    from sampled_softmax.cli import main

    rng = np.random.default_rng(1)
    corpus = tmp_path / "train.txt"
    corpus.write_text("\n".join(" ".join(s) for s in planted_corpus(rng, 100)))
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    (evaluation / "wordsim353.tsv").write_text("a1\ta2\t9\na1\tb1\t1\nb2\tb3\t8\na3\tb4\t2\n")
    out = tmp_path / "v.txt"
    assert main(["word2vec", "--corpus", str(tmp_path), "--dim", "8", "--epochs", "1", "--min-count", "1",
                 "--batch", "128", "--out", str(out), "--eval", str(evaluation)]) == 0
    printed = capsys.readouterr().out
    assert "words/s" in printed and "wordsim353 spearman" in printed
    assert W2V.WordVectors.load_word2vec_format(str(out)).vectors.shape == (20, 8)
