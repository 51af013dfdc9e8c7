"""The runnable examples keep working (small settings; they must also learn)."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_torch_recipe_learns_on_synthetic_data():
    before, after = load("torch_recipe").main(["--vocab", "2000", "--steps", "150", "--dim", "32",
                                               "--num-sampled", "64", "--rowwise"])
    assert after < before - 1.0


def write_corpus(directory, tokens=30_000, vocab=300, seed=0):
    """A small text corpus from the generated Markov chain (words w0, w1, ...)."""
    from sampled_softmax.apps.corpus import zipf_markov

    c = zipf_markov(vocab, tokens, tokens // 10, follow=0.7, seed=seed)
    for name, ids in (("train.txt", c.train), ("valid.txt", c.valid)):
        lines = [" ".join(f"w{i}" for i in ids[s:s + 20]) for s in range(0, ids.size, 20)]
        (directory / name).write_text("\n".join(lines) + "\n")
    return directory


def test_keras_lm_example_beats_the_unigram_baseline(tmp_path):
    ppl, unigram = load("keras_lm").main([str(write_corpus(tmp_path)), "--minutes", "2", "--max-steps", "300", "--num-sampled", "32",
                                         "--embed", "32", "--hidden", "32", "--valid-windows", "40"])
    assert ppl < 0.6 * unigram


def test_demo_runs_compares_and_saves(tmp_path, capsys):
    import json

    from sampled_softmax.cli import main

    # A step budget (with a generous time limit) so a slow or busy machine does the same work.
    assert main(["demo", "--budget", "60", "--max-steps", "150", "--vocab", "400", "--dim", "16", "--num-sampled", "32",
                 "--methods", "full,sampled-log-uniform,adaptive", "--curve-points", "2", "--valid-tokens", "1024",
                 "--out", str(tmp_path), "--save", str(tmp_path / "ckpt")]) == 0
    out = capsys.readouterr().out
    for label in ("full softmax", "sampled softmax, log-uniform", "adaptive softmax", "optimum (entropy rate)",
                  "unigram baseline"):
        assert label in out
    report = json.loads((tmp_path / "demo.json").read_text())
    results = {r["method"]: r for r in report["results"]}
    assert set(results) == {"full", "sampled-log-uniform", "adaptive"}
    for r in results.values():
        assert len(r["curve"]) == 2 and r["steps"] == 150
        # No model beats the entropy rate; each learns something in 150 steps.
        assert report["optimal_perplexity"] < r["valid_perplexity"] < report["unigram_perplexity"]
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert (tmp_path / "ckpt" / "checkpoint.pt").exists()


def test_demo_rejects_unknown_methods(capsys):
    import pytest

    from sampled_softmax.cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--methods", "full,nope"])
    assert "--methods: 'nope' is not one of full" in capsys.readouterr().err


def test_flax_lm_example_beats_the_unigram_baseline():
    import pytest

    pytest.importorskip("flax")
    pytest.importorskip("optax")
    results, unigram = load("flax_lm").main(["--vocab", "1000", "--steps", "200", "--dim", "32", "--num-sampled", "64",
                                             "--valid-windows", "40"])
    assert results["sampled"] < 0.5 * unigram


def test_two_tower_example_learns_to_retrieve():
    before, after = load("two_tower").main(["--users", "200", "--items", "1000", "--steps", "80", "--batch", "128",
                                            "--extra", "64"])
    assert after[10] > before[10] + 0.2 and after[100] > before[100] + 0.3


def test_demo_training_stops_at_max_steps_whatever_the_budget():
    """``budget * steps / max_steps`` rounds below ``budget`` for some budgets (100 + 68/7 does,
    with 150 steps): the step count must still stop training, at exactly ``max_steps`` (the
    budget, in seconds, is far more than 150 tiny steps take)."""
    import torch

    from sampled_softmax.apps.corpus import zipf_markov
    from sampled_softmax.apps.demo import LanguageModel, train, windows

    budget = 100 + 68 / 7
    assert budget * 150 / 150 < budget  # the rounding this test is about
    corpus = zipf_markov(50, 4000, 400, seed=0)
    torch.manual_seed(0)
    model = LanguageModel(corpus.vocab_size, 8, "full")
    run = train(model, corpus, budget=budget, batch=2, seq_len=5, lr=1e-3, seed=0,
                curve_valid=windows(corpus.valid, 8, 64), curve_times=[budget / 2, budget], max_steps=150)
    assert run["steps"] == 150 and len(run["curve"]) == 2
