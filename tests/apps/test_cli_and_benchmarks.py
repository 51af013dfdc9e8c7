"""The command line and a smoke run of the benchmark suite (tiny shapes: asserts structure,
never speed)."""

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(*args, **kw):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, **kw)


def test_version_and_info():
    import sampled_softmax

    out = run("-m", "sampled_softmax", "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"sampled-softmax {sampled_softmax.__version__}"
    out = run("-m", "sampled_softmax", "info")
    assert out.returncode == 0
    assert "sampled_softmax.torch importable" in out.stdout


def test_bench_outside_a_checkout_says_how_to_run_it(tmp_path):
    out = subprocess.run([sys.executable, "-m", "sampled_softmax", "bench", "--smoke"], capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode == 2
    assert "from the root of a clone of the repository" in out.stderr and "python -m benchmarks" in out.stderr


def test_the_library_never_imports_the_applications():
    code = ("import sys, sampled_softmax.torch, sampled_softmax.tensorflow, sampled_softmax.keras; "
            "print(sorted(m for m in sys.modules if m.startswith('sampled_softmax.apps')))")
    out = run("-c", code)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_unknown_command_is_an_error():
    out = run("-m", "sampled_softmax", "frobnicate")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_benchmark_smoke_run_writes_results(tmp_path):
    out = run("-m", "sampled_softmax", "bench", "--smoke", "--out", str(tmp_path), timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    payload = json.loads((tmp_path / "results.json").read_text())
    summary = payload["loss"]["summary"]
    for method in ("ours sparse", "ours dense", "hand sparse", "hand dense", "tf.nn", "ours tf", "ours tf xla",
                   "kernel floor", "tf kernel floor"):
        assert summary[method]["median_ms"] > 0
    env = payload["environment"]
    for key in ("torch", "commit", "seed", "cpu", "torch_threads", "MALLOC_MMAP_MAX_"):
        assert key in env
    sweep = payload["vocab_sweep"]
    assert [r["case"]["V"] for r in sweep] == [500, 2000]
    for r in sweep + [payload["sequence"]]:
        assert {"ours sparse", "hand dense", "full softmax", "adaptive"} <= set(r["summary"])
    assert all(r["peak_extra_mb"] >= 0 for r in payload["memory_by_vocab"])
    assert (tmp_path / "time_memory_vs_V.png").stat().st_size > 10_000
    md = (tmp_path / "results.md").read_text()
    assert "## Goals" in md and "Keras train_on_batch" not in md  # the Keras part is left out of --smoke


def test_relatives_benchmark_smoke_run():
    from benchmarks import relatives

    res = relatives.run(repeats=1, block=1, shape=dict(V=500, S=10, D=8, B=4))
    assert {"ours sampled softmax", "ours nce", "ours negative sampling"} <= set(res["summary"])
    assert all(r > 0 for r in res["ratios"].values())


def test_keras_fit_benchmark_smoke_run():
    from benchmarks import keras_fit

    res = keras_fit.run(smoke=True, backends=("jax", "no-such-backend"))
    ok, missing = res["backends"]
    assert ok["backend"] == "jax" and ok["dense_over_sampled"] > 0
    assert set(ok["summary"]) == {"SampledSoftmax + LazyAdam", "SampledSoftmax", "Dense softmax", keras_fit.FLOOR}
    assert ok["dense_over_lazy"] > 0
    assert "skipped" in missing  # reported, not silently dropped
    assert any("skipped" in row for row in keras_fit.format_rows(res))


def test_wikitext_study_quick_run_reports_goals_and_resumes(tmp_path, capsys):
    import torch
    from benchmarks import wikitext_study

    threads = torch.get_num_threads()
    only = "full,sampled-unigram-256-unique_exact,adaptive"
    args = ["--quick", "--budget", "0.4", "--out", str(tmp_path), "--only", only]
    assert wikitext_study.main(args) == 0
    for name in only.split(","):
        result = json.loads((tmp_path / f"{name}.json").read_text())
        assert result["milestones"][-1]["valid_perplexity"] > 1
    full = json.loads((tmp_path / "full.json").read_text())
    assert len(full["milestones"]) == 2  # after one budget and after three
    assert full["milestones"][1]["wall_s"] >= 3 * 0.4 > full["milestones"][0]["wall_s"] >= 0.4
    md = (tmp_path / "study.md").read_text()
    assert "sampled beats full softmax at equal budget" in md and "within 5%" in md
    assert (tmp_path / "study.png").stat().st_size > 10_000
    capsys.readouterr()
    assert wikitext_study.main(args) == 0  # resumes: nothing is trained again
    assert capsys.readouterr().out.count("done earlier") == 3
    torch.set_num_threads(threads)  # the study pins torch to one thread


def test_sweep_skips_what_does_not_fit_and_says_why():
    from benchmarks import sweeps

    assert sweeps.fits("ours sparse", 10_000_000, 100, 300, 256) or sweeps._total_ram() < 16 * 2**30
    too_big = 10 ** 12  # classes: no machine holds these tables
    steps, skipped = sweeps._methods(dict(V=too_big, S=100, D=300, B=256), 0, ("full softmax", "tf.nn"))
    assert not steps and set(skipped) == {"full softmax", "tf.nn"}
    assert all("needs about" in why and "GB" in why for why in skipped.values())
    rows = sweeps.format_sweep([{"case": dict(V=too_big, S=100, D=300, B=256), "summary": {}, "skipped": skipped}])
    assert any("skipped at V=1000000M: full softmax (needs about" in r for r in rows)


def test_jax_benchmark_custom_vjp_computes_the_same_gradients_and_steps_run():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks import jax_bench
    from sampled_softmax.jax.sparse import value_and_row_grads

    V, S, D, B = 500, 20, 8, 16
    rng = np.random.default_rng(0)
    W, b = jnp.asarray(rng.normal(size=(V, D)), jnp.float32), jnp.asarray(rng.normal(size=V), jnp.float32)
    h, y = jnp.asarray(rng.normal(size=(B, D)), jnp.float32), jnp.asarray(rng.integers(0, V, (B, 1)))
    y = y.at[3].set(y[0])  # a label repeated in the batch
    key = jax.random.key(1)
    loss, (d_rows, d_bias, d_h) = jax_bench.custom_vjp_rows(W, b, y, h, S, V, key)
    ref, grads = value_and_row_grads(W, b, y, h, S, V, key=key, reduction="sum")
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    for ours, theirs in ((d_rows, grads.weights.values), (d_bias, grads.biases.values), (d_h, grads.inputs)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    times = jax_bench.step_times((50, 100), D=4, B=3, S=5, repeats=2)
    assert set(times) == {(V, m) for V in (50, 100) for m in ("lazy_adam", "fused")}
    assert all(t > 0 for t in times.values())


def test_retrieval_benchmark_and_study_smoke_runs():
    from benchmarks import retrieval, retrieval_study

    res = retrieval.run(repeats=1, shape=dict(B=16, D=8, M=16), memory=False,
                        only=("ours", "torch cross_entropy", "ours tf"))
    assert set(res["summary"]) >= {"ours", "torch cross_entropy"} and all(r > 0 for r in res["ratios"].values())
    assert set(res["estimator_ms"]) == {"StreamingFrequency", "CountMinFrequency"}
    study = retrieval_study.run(items=300, users=40, steps=15, batch=32, held_out=200)
    assert set(study["results"]) == set(retrieval_study.METHODS)
    for r in study["results"].values():
        assert 0.0 <= r["recall@10"] <= r["recall@100"] <= 1.0
    assert "estimate median relative error (top 100)" in study["results"]["mixed negatives"]
    assert "| full softmax |" in retrieval_study.table(study)


def test_retrieval_text_study_smoke_run():
    from benchmarks import retrieval_text_study
    from sampled_softmax.apps.corpus import zipf_markov

    corpus = zipf_markov(500, 5_000, 1_000, seed=0)
    res = retrieval_text_study.run(corpus, seconds=60, max_steps=5, batch=32, extra=32, valid=200, dim=8)
    assert set(res["results"]) == set(retrieval_text_study.METHODS)
    for r in res["results"].values():
        assert r["steps"] == 5 and 0.0 <= r["recall@10"] <= r["recall@100"] <= 1.0 and r["perplexity"] > 1.0
    assert "| full softmax |" in retrieval_text_study.table(res)


def test_sampler_study_and_sampler_costs_benchmark_smoke_runs(tmp_path):
    from benchmarks import sampler_costs, sampler_study

    rng = np.random.default_rng(0)
    words = np.array([f"w{i}" for i in range(60)])
    for split, n in (("train", 3000), ("valid", 600)):
        (tmp_path / f"{split}.txt").write_text(" ".join(words[np.minimum(rng.zipf(1.3, n) - 1, 59)]) + "\n")
    setting = dict(sampler_study.SETTING, tokens=2000, valid=400, embed=8, hidden=8)
    res = sampler_study.run(str(tmp_path), orders=("frequency", "alphabetical"), samplers=("learned_unigram",),
                            num_sampled=(8,), epochs=1, setting=setting, log=lambda line: None)
    assert [(r["order"], r["sampler"]) for r in res["results"]] == [
        ("frequency", "full"), ("frequency", "learned_unigram"), ("alphabetical", "full"),
        ("alphabetical", "learned_unigram")]
    assert all(r["perplexity"] > 1 and r["steps"] > 0 for r in res["results"])
    assert "| learned_unigram | 8 |" in sampler_study.table(res)
    data = sampler_study.load(str(tmp_path), "alphabetical", 2000, 400)
    assert data["counts"].sum() == 2000 and data["train"].max() < data["V"]
    bench = sampler_costs.run(repeats=1, shape=dict(V=1000, S=10, D=8, B=16), large=dict(V=1000, D=8, B=16, S=10))
    assert all(r > 0 for r in bench["ratios"].values())
