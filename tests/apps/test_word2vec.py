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


# ---------------------------------------------------------------------------------------------
# word2vec's compiled loop (csrc/word2vec.cpp)

def _core():
    from sampled_softmax.torch import _compiled

    ext = _compiled.extension()
    if ext is None:
        pytest.skip(f"compiled core unavailable: {_compiled.unavailable_reason()}")
    return ext


def _loop(ext, vectors, table, ids, bounds, keep, probs, *, window, negative, alpha, seed=7, threads=1, record=True):
    cdf = torch.from_numpy(np.cumsum(np.asarray(probs, np.float64)))
    return ext.word2vec_train_(vectors, table, torch.as_tensor(ids, dtype=torch.int64),
                               torch.as_tensor(bounds, dtype=torch.int64), torch.as_tensor(keep, dtype=torch.float64),
                               cdf, window, negative, alpha, seed, threads, record)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_compiled_loop_is_sgd_on_negative_sampling_loss_pair_by_pair(dtype, tol):
    """Each trained pair is one SGD step on the library's negative_sampling_loss of that pair
    (reduction "sum", accidental hits removed), at the rows' values before the pair's step,
    replayed here from the pairs and noise words the loop recorded."""
    from sampled_softmax.torch import negative_sampling_loss

    ext = _core()
    rng = np.random.default_rng(0)
    V, D, k, alpha = 12, 8, 4, 0.3
    ids = rng.integers(0, V, size=60)
    bounds = [0, 13, 13, 30, 31, 60]  # an empty and a one-word sentence among them
    keep = rng.uniform(0.3, 1.0, size=V)
    keep[:3] = 1.0
    probs = rng.uniform(0.5, 2.0, size=V)
    probs[5] = 0.0  # never drawn
    vectors = torch.from_numpy(rng.normal(0, 0.5, (V, D))).to(dtype)
    table = torch.from_numpy(rng.normal(0, 0.5, (V, D))).to(dtype)
    vectors0, table0 = vectors.clone(), table.clone()
    (pairs, kept), contexts, centers, noise = _loop(ext, vectors, table, ids, bounds, keep, probs, window=3,
                                                    negative=k, alpha=alpha)
    assert pairs == len(contexts) > 50 and kept <= 60
    assert not (noise == 5).any() and (noise == centers[:, None]).any()  # a hit occurs, and is handled
    W, E = vectors0.clone(), table0.clone()
    ones = torch.ones(1, 1, dtype=dtype)
    for x, y, z in zip(contexts.tolist(), centers.tolist(), noise):
        h = W[x].clone().unsqueeze(0).requires_grad_(True)
        rows = E.clone().requires_grad_(True)
        loss = negative_sampling_loss(rows, None, torch.tensor([y]), h, k, V, remove_accidental_hits=True,
                                      sampled_values=(z, ones, torch.ones(k, dtype=dtype)), reduction="sum")
        loss.backward()
        with torch.no_grad():
            E -= alpha * rows.grad
            W[x] -= alpha * h.grad[0]
    torch.testing.assert_close(vectors, W, atol=tol, rtol=tol)
    torch.testing.assert_close(table, E, atol=tol, rtol=tol)


def test_compiled_loop_pairs_are_reduced_windows_over_the_kept_words():
    """Every pair of a center with each kept word within a window of 1..window (the same for
    both sides), inside its sentence; the dropped words (keep 0) are skipped, not counted; the
    window's size is uniform over 1..window."""
    ext = _core()
    V, window = 3000, 4
    ids = np.arange(V)
    bounds = np.arange(0, V + 1, 30)
    keep = np.where(ids % 7 == 3, 0.0, 1.0)
    (pairs, kept), contexts, centers, _ = _loop(ext, torch.zeros(V, 2), torch.zeros(V, 2), ids, bounds, keep,
                                                np.ones(V), window=window, negative=1, alpha=0.0, seed=3)
    assert kept == int(keep.sum()) and pairs == len(centers)
    assert not np.isin(contexts.numpy(), ids[keep == 0]).any() and not np.isin(centers.numpy(), ids[keep == 0]).any()
    reaches = []
    by_center: dict = {}
    for x, y in zip(contexts.tolist(), centers.tolist()):
        by_center.setdefault(y, []).append(x)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        sentence = [w for w in range(lo, hi) if keep[w]]
        for i, c in enumerate(sentence):
            got = sorted(by_center.get(c, []))
            for reach in range(1, window + 1):
                if got == sorted(sentence[j] for j in range(max(0, i - reach), min(len(sentence), i + reach + 1))
                                 if j != i):
                    break
            else:
                raise AssertionError(f"center {c}: contexts {got} are no window of {sentence}")
            if window <= i < len(sentence) - window:  # windows unclipped by the sentence's ends
                reaches.append(len(got) // 2)
    counts = np.bincount(reaches, minlength=window + 1)[1:]
    expected = len(reaches) / window
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected)), counts


@pytest.mark.parametrize("skewed", [False, True])
def test_compiled_loop_draws_noise_from_the_table_and_keeps_words_with_their_probability(skewed):
    ext = _core()
    rng = np.random.default_rng(1)
    V = 50
    probs = rng.uniform(0, 1, V) ** 3
    probs[[4, 9]] = 0.0
    if skewed:  # most classes of weight 0, one of nearly all the mass
        probs[10:] = 0.0
        probs[0] = 1e3
    ids = rng.integers(0, V, size=4000)
    keep = np.full(V, 0.5)
    (pairs, kept), _, _, noise = _loop(ext, torch.zeros(V, 2), torch.zeros(V, 2), ids, [0, 4000], keep, probs,
                                       window=2, negative=3, alpha=0.0, seed=11)
    assert abs(kept - 2000) < 5 * np.sqrt(4000 * 0.25)
    freq = np.bincount(noise.flatten().numpy(), minlength=V)
    n = noise.numel()
    p = probs / probs.sum()
    assert freq[[4, 9]].sum() == 0
    assert np.all(np.abs(freq - n * p) < 5 * np.sqrt(n * p * (1 - p)) + 1), (freq, n * p)


def test_compiled_loop_with_two_workers_trains_every_sentence():
    """Two worker threads split the sentences between them: the same pairs (by count) as one
    worker would train (the draws differ), and the tables change only where words were."""
    ext = _core()
    V = 40
    rng = np.random.default_rng(2)
    ids = rng.integers(0, V - 5, size=5000)  # the last 5 words never occur
    bounds = np.arange(0, 5001, 50)
    vectors, table = torch.zeros(V, 4), torch.zeros(V, 4)
    vectors[:, 0] = 1.0
    pairs, kept = _loop(ext, vectors, table, ids, bounds, np.ones(V), np.r_[np.ones(V - 5), np.zeros(5)], window=1,
                        negative=2, alpha=0.1, threads=2, record=False)[0].tolist()
    assert kept == 5000 and pairs == 2 * (5000 - len(bounds) + 1)  # window 1: every neighbour, both ways
    assert torch.all(table[-5:] == 0) and torch.all(vectors[-5:, 1:] == 0) and torch.all(table[:-5, 0] != 0)


def test_compiled_and_python_routes_learn_the_same_topics():
    rng = np.random.default_rng(0)
    corpus = planted_corpus(rng)
    sims = {}
    for implementation in ("compiled", "python"):
        if implementation == "compiled":
            _core()
        config = W2V.Word2VecConfig(dim=16, window=3, min_count=1, sample=0.0, negative=3, epochs=3, batch=256,
                                    alpha=0.05, seed=3, implementation=implementation, threads=1)
        model = W2V.train(corpus, config, progress=False)
        assert model.stats["implementation"] == implementation
        unit = model._unit()
        topic = np.array([w[0] for w in model.words])
        s = unit @ unit.T
        sims[implementation] = s[topic[:, None] == topic[None, :]].mean() - s[topic[:, None] != topic[None, :]].mean()
    assert sims["compiled"] > 0.3 and sims["python"] > 0.3


def test_compiled_route_settings_are_checked():
    with pytest.raises(SampledSoftmaxError, match=r"`implementation='compiled'` trains loss='negative_sampling'"):
        W2V.Word2VecConfig(loss="nce", implementation="compiled").check()
    with pytest.raises(SampledSoftmaxError, match=r"`implementation` must be one of 'auto', 'compiled', 'python'"):
        W2V.Word2VecConfig(implementation="fast").check()
    with pytest.raises(SampledSoftmaxError, match=r"`threads` must be None or an integer >= 1; received 0"):
        W2V.Word2VecConfig(threads=0).check()
    with pytest.raises(SampledSoftmaxError, match=r"`batch_words` must be an integer >= 1"):
        W2V.Word2VecConfig(batch_words=0).check()
