"""The commands check every argument before any work starts (issue 31): an error names the
option, what it must be and what it received; a window past the longest sentence or a corpus
too small for one batch still trains, and fast."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("torch")

from sampled_softmax import SampledSoftmaxError  # noqa: E402
from sampled_softmax.apps import word2vec as W2V  # noqa: E402
from sampled_softmax.cli import main  # noqa: E402


def _corpus(tmp_path, lines=200, seed=0):
    rng = np.random.default_rng(seed)
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(" ".join(f"w{i}" for i in rng.integers(0, 30, size=rng.integers(1, 13)))
                              for _ in range(lines)))
    return path


def _error(capsys, argv):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("argv,words", [
    (["demo", "--budget", "0"], "--budget must be a finite number > 0; received 0.0"),
    (["demo", "--budget", "nan"], "--budget must be a finite number > 0; received nan"),
    (["demo", "--num-sampled", "0"], "--num-sampled must be an integer >= 1; received 0"),
    (["demo", "--vocab", "1"], "--vocab must be an integer >= 2; received 1"),
    (["diagnose", "--samplers", "unifrom"], "--samplers: 'unifrom' is not one of uniform, log_uniform, unigram"),
    (["diagnose", "--repeats", "0"], "--repeats must be an integer >= 1; received 0"),
    (["diagnose", "--batch", "0"], "--batch must be an integer >= 1; received 0"),
    (["diagnose", "--vocab", "0"], "--vocab must be an integer >= 2; received 0"),
    (["diagnose", "--draws", "uniqe"], "--draws: 'uniqe' is not one of unique, unique_exact, with_replacement"),
    (["diagnose", "--sizes", "16,x"], "--sizes must be comma-separated ints; received 'x'"),
    (["diagnose", "--vocab", "100", "--sizes", "16,1000", "--draws", "unique"], "--sizes must be at most --vocab"),
    (["diagnose", "--estimators", "exclude_true", "--draws", "unique"],
     "--estimators exclude_true takes draws with replacement only"),
])
def test_bad_options_are_refused_before_any_work(capsys, argv, words):
    assert words in _error(capsys, argv)


def test_word2vec_refuses_an_unwritable_out_before_training(tmp_path, capsys):
    corpus = _corpus(tmp_path)
    line = _error(capsys, ["word2vec", "--corpus", str(corpus), "--out", str(tmp_path / "missing" / "v.txt")])
    assert "--out" in line and "cannot be written" in line
    line = _error(capsys, ["word2vec", "--corpus", str(corpus), "--out", str(tmp_path)])  # a directory
    assert "--out" in line and "cannot be written" in line


def test_word2vec_names_the_file_and_line_that_is_not_utf8(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"good words here\nmore good words\n\xff\xfe broken\n")
    line = _error(capsys, ["word2vec", "--corpus", str(bad), "--out", str(tmp_path / "v.txt")])
    assert f"--corpus file {str(bad)!r} must be UTF-8 text; line 3" in line
    with pytest.raises(SampledSoftmaxError, match="`corpus` file .* must be UTF-8 text; line 3"):
        W2V.read_sentences(str(bad))


def test_a_window_past_the_longest_sentence_gives_every_pair_of_each_sentence(tmp_path):
    ids = np.arange(9)
    sentence = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    centers, contexts = W2V.skipgram_pairs(ids, sentence, 100_000_000, np.random.default_rng(0))
    # The reduced window is drawn from 1..1e8: almost surely past 4 tokens, so every pair is in.
    expected = sorted((i, j) for i in range(9) for j in range(9) if i != j and sentence[i] == sentence[j])
    assert sorted(zip(centers.tolist(), contexts.tolist())) == expected


def test_word2vec_with_a_huge_window_trains_a_small_corpus(tmp_path, capsys):
    corpus = _corpus(tmp_path)
    out = tmp_path / "v.txt"
    assert main(["word2vec", "--corpus", str(corpus), "--window", "100000000", "--min-count", "1", "--epochs",
                 "1", "--dim", "8", "--out", str(out)]) == 0
    assert W2V.WordVectors.load_word2vec_format(str(out)).vectors.shape == (30, 8)


@pytest.mark.parametrize("loss", W2V.LOSSES)
def test_word2vec_on_a_corpus_without_a_single_pair(tmp_path, capsys, loss):
    corpus = tmp_path / "one-word-lines.txt"
    corpus.write_text("a\nb\na\nb\nc\n")  # no sentence has two words: no pair at all
    out = tmp_path / "v.txt"
    assert main(["word2vec", "--corpus", str(corpus), "--min-count", "1", "--epochs", "2", "--dim", "4",
                 "--num-sampled", "2", "--loss", loss, "--out", str(out)]) == 0
    assert os.path.getsize(out) > 0
