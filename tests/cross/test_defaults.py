"""One concept, one default (issue 33): the documented defaults read from the signatures of every
front end that offers the argument. A front end that drifts fails here, naming the argument."""

import inspect

import pytest

# argument -> its default everywhere it exists, per kind of callable.
LAYER_DEFAULTS = {"ignore_index": -100, "remove_accidental_hits": None, "reduction": "mean",
                  "label_smoothing": 0.0, "sampler": {"learned_unigram", None}, "loss": "sampled_softmax"}
FUNCTION_DEFAULTS = {"ignore_index": None, "reduction": "none", "label_smoothing": 0.0, "subtract_log_q": True,
                     "num_true": 1, "exclude_true": False}
# remove_accidental_hits of a function: TensorFlow's, per loss.
HITS = {"sampled_softmax_loss": True, "vocab_parallel_sampled_softmax_loss": True, "nce_loss": False,
        "negative_sampling_loss": False, "vocab_parallel_nce_loss": False,
        "vocab_parallel_negative_sampling_loss": False}


def _layers():
    out = []
    torch = pytest.importorskip("torch")
    del torch
    from sampled_softmax.torch import SampledSoftmax as TorchLayer
    from sampled_softmax.torch.distributed import VocabParallelSampledSoftmax

    out += [("torch.SampledSoftmax", TorchLayer.__init__), ("torch.VocabParallelSampledSoftmax",
                                                            VocabParallelSampledSoftmax.__init__)]
    try:
        from sampled_softmax.jax.flax import SampledSoftmax as FlaxLayer
        out.append(("flax.SampledSoftmax", FlaxLayer.__init__))
    except ImportError:  # pragma: no cover - flax is a dev dependency
        pass
    from sampled_softmax.keras import SampledSoftmax as KerasLayer
    out.append(("keras.SampledSoftmax", KerasLayer.__init__))
    return out


def _functions():
    from sampled_softmax import jax as sjax
    from sampled_softmax import tensorflow as stf
    from sampled_softmax import torch as storch
    from sampled_softmax.jax import parallel as jpar
    from sampled_softmax.torch import distributed as tdist

    out = []
    for front, module in (("torch", storch), ("tensorflow", stf), ("jax", sjax), ("jax.parallel", jpar),
                          ("torch.distributed", tdist)):
        for name in ("sampled_softmax_loss", "nce_loss", "negative_sampling_loss", "full_softmax_loss",
                     "vocab_parallel_sampled_softmax_loss", "vocab_parallel_nce_loss",
                     "vocab_parallel_negative_sampling_loss", "vocab_parallel_full_softmax_loss"):
            fn = getattr(module, name, None)
            if fn is not None:
                out.append((f"{front}.{name}", name, fn))
    return out


def _default(fn, arg):
    parameter = inspect.signature(fn).parameters.get(arg)
    return inspect.Parameter.empty if parameter is None else parameter.default


@pytest.mark.parametrize("arg", sorted(LAYER_DEFAULTS))
def test_the_output_layers_share_their_defaults(arg):
    want = LAYER_DEFAULTS[arg]
    for name, init in _layers():
        got = _default(init, arg)
        if got is inspect.Parameter.empty:
            continue
        assert got in want if isinstance(want, set) else got == want, f"{name}: `{arg}` defaults to {got!r}"


@pytest.mark.parametrize("arg", sorted(FUNCTION_DEFAULTS) + ["remove_accidental_hits"])
def test_the_loss_functions_share_their_defaults(arg):
    # tf.nn's drop-ins keep tf.nn's own reduction ("none"), like every other function here.
    for name, base, fn in _functions():
        got = _default(fn, arg)
        if got is inspect.Parameter.empty:
            continue
        want = HITS.get(base) if arg == "remove_accidental_hits" else FUNCTION_DEFAULTS[arg]
        assert got == want, f"{name}: `{arg}` defaults to {got!r}, where the others give {want!r}"


def test_the_row_sparse_adam_has_one_name_in_every_front_end():
    from sampled_softmax.jax.sparse import lazy_adam
    from sampled_softmax.keras import LazyAdam as KerasLazyAdam
    from sampled_softmax.torch import LazyAdam, SparseRowAdam

    assert LazyAdam is SparseRowAdam and KerasLazyAdam.__name__ == "LazyAdam" and lazy_adam.__name__ == "lazy_adam"
