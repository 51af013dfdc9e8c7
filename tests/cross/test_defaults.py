"""One concept, one default (issue 33): the documented defaults read from the signatures of every
front end that offers the argument. A front end that drifts fails here, naming the argument."""

import inspect

import pytest

# argument -> its default everywhere it exists, per kind of callable.
LAYER_DEFAULTS = {"ignore_index": -100, "remove_accidental_hits": None, "reduction": "mean",
                  "label_smoothing": 0.0, "sampler": {"learned_unigram", None}, "loss": "sampled_softmax",
                  "exclude_true": False, "noise": "shared", "table_optimizer": None}
FUNCTION_DEFAULTS = {"ignore_index": None, "reduction": "none", "label_smoothing": 0.0, "subtract_log_q": True,
                     "num_true": 1, "exclude_true": False, "noise": "shared", "table_optimizer": None}
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


# (arguments, the error's class, the message every output layer gives)
BAD_LAYER_SETTINGS = [
    (dict(loss="nce", label_smoothing=0.1), "SampledSoftmaxError",
     r"^`label_smoothing` must be 0 with loss='nce' \(a sum of logistic losses has no softmax to smooth\); "
     r"received 0.1$"),
    (dict(loss="nce", exclude_true=True), "SampledSoftmaxError",
     r"^`exclude_true=True` is an estimator of the softmax normalizer: it needs loss='sampled_softmax'; "
     r"received 'nce'$"),
    (dict(loss="softmax"), "SampledSoftmaxError",
     r"^`loss` must be one of 'sampled_softmax', 'nce', 'negative_sampling'; received 'softmax'$"),
    (dict(ignore_index="pad"), "TypeError", r"^`ignore_index` must be an int or None; received str$"),
    (dict(remove_accidental_hits="yes"), "TypeError", r"^`remove_accidental_hits` must be True or False; "
                                                      r"received 'yes'$"),
]


@pytest.mark.parametrize("kw,error,message", BAD_LAYER_SETTINGS)
def test_the_output_layers_refuse_bad_settings_with_one_message(kw, error, message):
    """The settings every output layer shares are checked once (``_validation.check_output_layer``):
    the PyTorch, Flax and Keras layers raise the same error, word for word."""
    import builtins

    from sampled_softmax import SampledSoftmaxError

    cls = SampledSoftmaxError if error == "SampledSoftmaxError" else getattr(builtins, error)
    constructors = {}
    from sampled_softmax.torch import SampledSoftmax as TorchLayer
    constructors["torch"] = lambda: TorchLayer(4, 30, 5, **kw)
    from sampled_softmax.keras import SampledSoftmax as KerasLayer
    constructors["keras"] = lambda: KerasLayer(30, 5, **kw)
    try:
        from flax import nnx

        from sampled_softmax.jax.flax import SampledSoftmax as FlaxLayer
        constructors["flax"] = lambda: FlaxLayer(4, 30, 5, rngs=nnx.Rngs(0), **kw)
    except ImportError:  # pragma: no cover - flax is a dev dependency
        pass
    for name, make in constructors.items():
        with pytest.raises(cls, match=message):
            make()
