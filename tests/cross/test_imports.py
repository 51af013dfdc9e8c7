"""Import hygiene: the core loads no framework; each front end loads only its own."""

import subprocess
import sys

FRAMEWORKS = ("torch", "tensorflow", "keras", "jax")


def loaded_after(statement):
    code = f"import sys; {statement}; print(' '.join(m for m in {FRAMEWORKS!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_core_loads_no_framework():
    assert loaded_after("import sampled_softmax, sampled_softmax.reference, sampled_softmax.samplers") == set()


def test_torch_front_end_loads_only_torch():
    assert loaded_after("import sampled_softmax.torch, sampled_softmax.torch.distributed") == {"torch"}


def test_front_ends_ci_expects_are_importable():
    # Fails loudly (no skip) if the dev environment lost a framework.
    import sampled_softmax.torch  # noqa: F401
    import sampled_softmax.tensorflow  # noqa: F401
    import sampled_softmax.keras  # noqa: F401
    import jax  # noqa: F401  (a Keras backend the Keras tests run under)


def test_public_names():
    import sampled_softmax
    import sampled_softmax.torch as sst

    assert sampled_softmax.__version__
    assert issubclass(sampled_softmax.SampledSoftmaxError, ValueError)
    assert sampled_softmax.SampledValues._fields == ("sampled_candidates", "true_expected_count", "sampled_expected_count")
    for name in ("sampled_softmax_loss", "full_softmax_loss", "SampledSoftmaxLoss", "SampledSoftmaxOutput",
                 "UniformSampler", "LogUniformSampler", "UnigramSampler", "LearnedUnigramSampler", "SparseRowAdam"):
        assert hasattr(sst, name), name


def test_tensorflow_front_end_loads_only_what_tensorflow_loads():
    # `import tensorflow` itself registers keras; the front end must add nothing to that.
    baseline = loaded_after("import tensorflow")
    assert "tensorflow" in baseline and "torch" not in baseline
    assert loaded_after("import sampled_softmax.tensorflow") == baseline


def test_keras_front_end_loads_only_what_keras_loads():
    # Keras loads the backend it is configured for (its torch backend also peeks at jax); the
    # front end adds nothing to that.
    for backend in ("jax", "torch"):
        env = f"import os; os.environ['KERAS_BACKEND'] = {backend!r}"
        baseline = loaded_after(f"{env}; import keras")
        assert backend in baseline and "tensorflow" not in baseline
        assert loaded_after(f"{env}; import sampled_softmax.keras") == baseline


def test_keras_without_its_backend_says_which_to_install():
    import subprocess
    import sys

    code = ("import os, sys; os.environ['KERAS_BACKEND'] = 'tensorflow'; sys.modules['tensorflow'] = None\n"
            "try:\n    import sampled_softmax.keras\nexcept ImportError as e:\n    print('ERROR', e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "ERROR Keras is installed, but its backend 'tensorflow' is not" in out.stdout, out.stderr[-2000:]
    assert "KERAS_BACKEND" in out.stdout


def test_keras_picks_an_installed_backend_when_none_was_chosen(tmp_path):
    import os
    import subprocess
    import sys

    code = ("import sys; sys.modules['tensorflow'] = None\n"
            "import sampled_softmax.keras, keras\nprint('BACKEND', keras.backend.backend())")
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["KERAS_HOME"] = str(tmp_path)  # no keras.json there
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert "BACKEND jax" in out.stdout, out.stderr[-2000:]


def test_jax_front_ends_load_only_jax_and_flax_only_when_asked():
    assert loaded_after("import sampled_softmax.jax, sampled_softmax.jax.parallel, sampled_softmax.jax.sparse") == {"jax"}
    code = "import sys, sampled_softmax.jax; print('flax' in sys.modules, 'optax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert loaded_after("import sampled_softmax.jax.flax") == {"jax"}
