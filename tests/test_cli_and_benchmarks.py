"""The command line and a smoke run of the benchmark suite (tiny shapes: asserts structure,
never speed)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, **kw):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, **kw)


def test_version_and_info():
    import sampled_softmax

    out = run("-m", "sampled_softmax", "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"sampled-softmax {sampled_softmax.__version__}"
    out = run("-m", "sampled_softmax", "info")
    assert out.returncode == 0
    assert "sampled_softmax.torch importable" in out.stdout


def test_unknown_command_is_an_error():
    out = run("-m", "sampled_softmax", "frobnicate")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_benchmark_smoke_run_writes_results(tmp_path):
    out = run("-m", "sampled_softmax", "bench", "--smoke", "--out", str(tmp_path), timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    payload = json.loads((tmp_path / "results.json").read_text())
    summary = payload["loss"]["summary"]
    for method in ("ours sparse", "ours dense", "hand sparse", "hand dense", "tf.nn", "ours tf", "ours tf xla"):
        assert summary[method]["median_ms"] > 0
    env = payload["environment"]
    for key in ("torch", "commit", "seed", "cpu", "torch_threads", "MALLOC_MMAP_MAX_"):
        assert key in env
    assert "## Goals" in (tmp_path / "results.md").read_text()


def test_keras_fit_benchmark_smoke_run():
    from benchmarks import keras_fit

    res = keras_fit.run(smoke=True, backends=("jax", "no-such-backend"))
    ok, missing = res["backends"]
    assert ok["backend"] == "jax" and ok["dense_over_sampled"] > 0
    assert set(ok["summary"]) == {"SampledSoftmax", "Dense softmax"}
    assert "skipped" in missing  # reported, not silently dropped
    assert any("skipped" in row for row in keras_fit.format_rows(res))
