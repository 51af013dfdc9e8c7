"""One bad-input table, run against every front end: the NumPy reference, PyTorch,
TensorFlow and the Keras layer (on whichever backend this run uses).

Each case is ``(id, overrides, exception type, message regex, front ends)``: the overrides are
NumPy values applied to one valid call, each front end's adapter turns them into its own
tensors and arguments, and the message must name the argument, what was expected and what was
received. ``{labels}`` in a regex stands for the front end's name of the targets (Keras calls
them ``y_true``). A case runs on the front ends that have the argument it exercises.
"""

import numpy as np
import pytest

from sampled_softmax import SampledSoftmaxError

V, D, B, S = 20, 4, 3, 5
ALL = ("reference", "torch", "tensorflow", "keras", "jax")
FUNCTIONAL = ("torch", "tensorflow")  # the functions with tf.nn's arguments, sharded tables included
TF_ARGS = FUNCTIONAL + ("jax",)  # the functions with tf.nn's (num_sampled, num_classes, ...) arguments


def base():
    rng = np.random.default_rng(0)
    return dict(weights=rng.normal(size=(V, D)).astype(np.float32), biases=rng.normal(size=V).astype(np.float32),
                labels=np.array([1, 2, 3]), inputs=rng.normal(size=(B, D)).astype(np.float32),
                num_sampled=S, num_classes=V)


def sv(cand=None, tc=None, sc=None):
    return (np.arange(S) if cand is None else cand,
            np.ones((B, 1), np.float32) if tc is None else tc,
            np.ones(S, np.float32) if sc is None else sc)


F32 = r"(torch\.)?float32"
CASES = [
    # labels
    ("label out of range", dict(labels=np.array([1, 2, 20])), SampledSoftmaxError,
     r"{labels} must be in \[0, 19\]; received values up to 20", ALL),
    ("negative label", dict(labels=np.array([1, -3, 2])), SampledSoftmaxError,
     r"{labels} must be in \[0, 19\]; received values down to -3", ALL),
    ("negative label other than ignore_index", dict(labels=np.array([1, -3, -100]), ignore_index=-100),
     SampledSoftmaxError, r"{labels} must be in \[0, 19\] \(or ignore_index=-100\); received values down to -3",
     ("reference", "torch", "keras", "jax")),
    # TensorFlow's drop-in casts float labels to int64, as tf.nn does (tested in test_tensorflow.py).
    ("float labels", dict(labels=np.array([1.0, 2.0, 3.0], np.float32)), TypeError,
     r"{labels} must have an integer dtype; received " + F32, ("reference", "torch", "keras", "jax")),
    ("string labels", dict(labels=np.array(["a", "b", "c"])), TypeError,
     r"{labels} must have an integer dtype; received string", ("tensorflow",)),
    ("labels batch differs from inputs", dict(labels=np.array([1, 2])), SampledSoftmaxError,
     r"{labels} must have shape \[3\] or \[3, 1\] .*received shape \[2\]", ALL),
    ("labels last dim differs from num_true", dict(labels=np.array([[1, 2]] * 3)), SampledSoftmaxError,
     r"{labels} (last dimension must equal num_true=1|must have shape \[3\] or \[3, 1\]).*received shape \[3, 2\]",
     ("torch", "tensorflow", "keras", "jax")),
    ("num_true without its labels dim", dict(num_true=2), SampledSoftmaxError,
     r"{labels} must have shape \[3, 2\] .*received shape \[3\]", ("torch", "tensorflow", "keras", "jax")),
    ("labels dim disagrees with num_true", dict(labels=np.array([[1], [2], [3]]), num_true=2), SampledSoftmaxError,
     r"{labels} (last dimension must equal num_true=2|must have shape \[3, 2\]).*received shape \[3, 1\]",
     ("torch", "tensorflow", "keras", "jax")),
    ("num_true zero", dict(num_true=0), SampledSoftmaxError, r"`num_true` must be >= 1; received 0",
     ("torch", "tensorflow", "keras", "jax")),
    # inputs
    ("integer inputs", dict(inputs=np.ones((B, D), np.int64)), TypeError,
     r"`inputs` must have a floating dtype; received (torch\.)?int64", ("reference", "torch", "tensorflow", "jax")),
    ("inputs dim differs from weights", dict(inputs=np.ones((B, D + 1), np.float32)), SampledSoftmaxError,
     r"`inputs` last dimension must equal the weights' dim 4; received 5", ALL),
    ("inputs without a batch axis", dict(inputs=np.ones(D, np.float32)), SampledSoftmaxError,
     r"`inputs` must have shape \[batch, dim\]; received shape", ("reference", "tensorflow")),
    # num_sampled, num_classes
    ("num_sampled zero", dict(num_sampled=0), SampledSoftmaxError, r"`num_sampled` must be >= 1; received 0",
     ("torch", "tensorflow", "keras", "jax")),
    ("num_sampled negative", dict(num_sampled=-4), SampledSoftmaxError, r"`num_sampled` must be >= 1; received -4",
     ("torch", "tensorflow", "keras", "jax")),
    ("num_sampled above num_classes for unique draws", dict(num_sampled=V + 1), SampledSoftmaxError,
     r"`num_sampled` must be <= 20 \(num_classes\) when drawing unique candidates; received 21",
     ("torch", "tensorflow", "keras", "jax")),
    ("num_sampled not an int", dict(num_sampled=2.5), TypeError, r"`num_sampled` must be an int; received float",
     ("torch", "tensorflow", "keras", "jax")),
    ("num_classes differs from weights", dict(num_classes=V + 5), SampledSoftmaxError,
     r"`num_classes` must equal the number of rows of `weights` \(20\); received 25", TF_ARGS),
    ("num_classes zero", dict(num_classes=0), SampledSoftmaxError, r"`num_classes` must be >= 1; received 0",
     ("torch", "tensorflow", "keras", "jax")),
    # weights, biases
    ("weights not 2-D", dict(weights=np.ones(V * D, np.float32)), SampledSoftmaxError,
     r"`weights` must have shape \[num_classes, dim\]; received shape \[80\]", ("reference", "torch", "tensorflow", "jax")),
    ("integer weights", dict(weights=np.ones((V, D), np.int32)), TypeError,
     r"`weights` must have a floating dtype; received (torch\.)?int32", ("reference", "torch", "tensorflow", "jax")),
    ("weights not a tensor", dict(weights="W"), TypeError,
     r"`weights` must (be a torch.Tensor or a list of shards|have a floating dtype); received (str|string|<U1)",
     ("reference", "torch", "tensorflow", "jax")),
    ("shards of unequal dims", dict(weights=[np.ones((10, D), np.float32), np.ones((10, D + 1), np.float32)]),
     SampledSoftmaxError, r"`weights` shards must all have the same dim; received dims \[4, 5\]", FUNCTIONAL),
    ("shards off TensorFlow's layout", dict(weights=[np.ones((6, D), np.float32), np.ones((14, D), np.float32)]),
     SampledSoftmaxError, r"`weights` shards must have \[10, 10\] rows for num_classes=20 in 2 shards "
     r"\(TensorFlow's 'div' layout\); received \[6, 14\]", FUNCTIONAL),
    ("empty shard list", dict(weights=[]), SampledSoftmaxError, r"`weights` must be .* received an empty list",
     FUNCTIONAL),
    ("biases wrong shape", dict(biases=np.ones(V + 1, np.float32)), SampledSoftmaxError,
     r"`biases` must have shape \[20\]; received shape \[21\]", ("reference", "torch", "tensorflow", "jax")),
    ("integer biases", dict(biases=np.ones(V, np.int64)), TypeError,
     r"`biases` must have a floating dtype; received (torch\.)?int64", ("reference", "torch", "tensorflow", "jax")),
    # choices and hyperparameters
    ("unknown sampler", dict(sampler="zipf"), SampledSoftmaxError, r"`sampler` must be one of .*; received 'zipf'",
     ("torch", "keras", "jax")),
    ("unigram sampler without its counts", dict(sampler="unigram"), SampledSoftmaxError,
     r"sampler='unigram'", ("torch", "keras", "jax")),
    ("unknown draw", dict(draw="lottery"), SampledSoftmaxError, r"`draw` must be one of .*; received 'lottery'",
     ("torch", "keras", "jax")),
    ("unknown reduction", dict(reduction="avg"), SampledSoftmaxError,
     r"`reduction` must be one of 'none', 'mean', 'sum'; received 'avg'", ("torch", "jax")),
    ("unknown partition strategy", dict(partition_strategy="block"), SampledSoftmaxError,
     r"`partition_strategy` must be one of 'div', 'mod'; received 'block'", ("torch",)),
    ("label smoothing above 1", dict(label_smoothing=1.5), SampledSoftmaxError,
     r"`label_smoothing` must be in \[0, 1\]; received 1.5", ("reference", "torch", "keras", "jax")),
    ("label smoothing negative", dict(label_smoothing=-0.1), SampledSoftmaxError,
     r"`label_smoothing` must be in \[0, 1\]; received -0.1", ("reference", "torch", "keras", "jax")),
    ("label smoothing nan", dict(label_smoothing=float("nan")), SampledSoftmaxError,
     r"`label_smoothing` must be in \[0, 1\]; received nan", ("reference", "torch", "keras", "jax")),
    # sampled_values
    ("sampled_values not a triple", dict(sampled_values=(np.arange(S),)), SampledSoftmaxError,
     r"`sampled_values` must be a triple .* received tuple of length 1", ALL),
    ("sampled candidates longer than num_sampled", dict(sampled_values=sv(cand=np.arange(S + 1))),
     SampledSoftmaxError, r"`sampled_values\[0\]` \(sampled_candidates\) must have shape \[5\]; received shape \[6\]",
     TF_ARGS),
    ("sampled candidates 2-D", dict(sampled_values=sv(cand=np.arange(S)[:, None])), SampledSoftmaxError,
     r"`sampled_values\[0\]` \(sampled_candidates\) must have shape (\[5\]|\[num_sampled\]); received shape \[5, 1\]",
     ALL),
    ("sampled expected count wrong shape", dict(sampled_values=sv(sc=np.ones(S - 1, np.float32))),
     SampledSoftmaxError,
     r"`sampled_values\[2\]` \(sampled_expected_count\) must have shape \[5\]; received shape \[4\]", ALL),
    ("true expected count wrong shape", dict(sampled_values=sv(tc=np.ones((B + 1, 1), np.float32))),
     SampledSoftmaxError, r"`sampled_values\[1\]` \(true_expected_count\) must have shape \[3, 1\] \(batch, "
     r"num_true\); received shape \[4, 1\]", ALL),
    ("candidate out of range", dict(sampled_values=sv(cand=np.array([0, 1, 2, 3, 20]))), SampledSoftmaxError,
     r"`sampled_values\[0\]` \(sampled_candidates\) must be in \[0, 19\]; received 20", ALL),
    ("negative candidate", dict(sampled_values=sv(cand=np.array([0, -1, 2, 3, 4]))), SampledSoftmaxError,
     r"`sampled_values\[0\]` \(sampled_candidates\) must be in \[0, 19\]; received -1", ALL),
    ("float candidates", dict(sampled_values=sv(cand=np.arange(S, dtype=np.float32))), TypeError,
     r"`sampled_values\[0\]` must have an integer dtype; received " + F32, ALL),
    ("zero sampled expected count", dict(sampled_values=sv(sc=np.array([1, 0, 1, 1, 1], np.float32))),
     SampledSoftmaxError, r"`sampled_values\[2\]` \(sampled_expected_count\) must be positive .* received 0.0", ALL),
    ("negative sampled expected count", dict(sampled_values=sv(sc=np.array([1, 1, -2, 1, 1], np.float32))),
     SampledSoftmaxError, r"`sampled_values\[2\]` \(sampled_expected_count\) must be positive .* received -2.0", ALL),
    ("zero true expected count", dict(sampled_values=sv(tc=np.zeros((B, 1), np.float32))), SampledSoftmaxError,
     r"`sampled_values\[1\]` \(true_expected_count\) must be positive and finite; received 0.0", ALL),
    ("nan true expected count", dict(sampled_values=sv(tc=np.array([[1], [np.nan], [1]], np.float32))),
     SampledSoftmaxError, r"`sampled_values\[1\]` \(true_expected_count\) must be positive and finite; received nan",
     ALL),
    ("infinite true expected count", dict(sampled_values=sv(tc=np.array([[1], [np.inf], [1]], np.float32))),
     SampledSoftmaxError, r"`sampled_values\[1\]` \(true_expected_count\) must be positive and finite; received inf",
     ALL),
]


# ---------------------------------------------------------------------------------------------
# Adapters: one valid call per front end, with the overrides applied


def _reference(kw, loss="sampled_softmax_loss"):
    from sampled_softmax import reference as R

    kw = dict(kw)
    for k in ("num_sampled", "num_classes"):
        kw.pop(k)
    sampled_values = kw.pop("sampled_values", sv())
    return getattr(R, loss)(kw.pop("weights"), kw.pop("biases"), kw.pop("labels"), kw.pop("inputs"),
                            sampled_values, **kw)


def _converted(kw, to_tensor):
    """``kw`` with every array, also inside lists and tuples, made a framework tensor."""
    def conv(x):
        if isinstance(x, np.ndarray):
            return to_tensor(x)
        if isinstance(x, (list, tuple)):
            return type(x)(conv(v) for v in x)
        return x

    return {k: conv(v) for k, v in kw.items()}


def _torch(kw, implementation="auto", loss="sampled_softmax_loss"):
    torch = pytest.importorskip("torch")
    import sampled_softmax.torch as sst
    from sampled_softmax.torch import LogUniformSampler

    kw = _converted(kw, torch.from_numpy)
    kw["implementation"] = implementation
    if "draw" in kw:
        kw["sampler"] = LogUniformSampler(kw["num_classes"], draw=kw.pop("draw"))
    return getattr(sst, loss)(**kw)


def _tensorflow(kw, loss="sampled_softmax_loss"):
    tf = pytest.importorskip("tensorflow")
    from sampled_softmax import tensorflow as sst

    return getattr(sst, loss)(**_converted(kw, tf.constant))


def _keras(kw, loss="sampled_softmax"):
    keras = pytest.importorskip("keras")
    from sampled_softmax.keras import SampledSoftmax

    ops = keras.ops
    kw = dict(kw)
    call = {k: kw.pop(k) for k in ("labels", "inputs")}
    sampled_values = kw.pop("sampled_values", sv())
    W, b = kw.pop("weights"), kw.pop("biases")
    kw.setdefault("ignore_index", None)  # the functions' default, so every front end reads one table row alike
    layer = SampledSoftmax(kw.pop("num_classes"), kw.pop("num_sampled"), loss=loss, **kw)
    layer.build((None, D))
    layer.kernel.assign(W)
    layer.bias.assign(b)
    conv = lambda x: ops.convert_to_tensor(x) if isinstance(x, np.ndarray) else x  # noqa: E731
    if isinstance(sampled_values, tuple):
        sampled_values = tuple(conv(v) for v in sampled_values)
    return layer.sampled_loss(conv(call["labels"]), conv(call["inputs"]), sampled_values=sampled_values)


def _jax(kw, loss="sampled_softmax_loss"):
    jax = pytest.importorskip("jax")
    import sampled_softmax.jax as ssj

    # NumPy arrays as given (JAX takes them; without x64 a JAX array cannot hold int64 or float64).
    kw = dict(kw)
    if "sampled_values" not in kw:
        kw["key"] = jax.random.key(0)
    return getattr(ssj, loss)(**kw)


def _np(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _tensorflow_traced(kw, jit_compile):
    """The TensorFlow call inside ``tf.function`` (``jit_compile``: under XLA), its array
    arguments passed as the function's inputs so that their values are unknown when traced."""
    tf = pytest.importorskip("tensorflow")
    from sampled_softmax import tensorflow as sst

    kw = _converted(kw, tf.constant)
    names = [k for k, v in kw.items() if isinstance(v, (tf.Tensor, list, tuple))]
    fixed = {k: v for k, v in kw.items() if k not in names}
    fn = tf.function(lambda *values: sst.sampled_softmax_loss(**fixed, **dict(zip(names, values))),
                     jit_compile=jit_compile, autograph=False)
    return fn(*[kw[k] for k in names])


ADAPTERS = {"reference": _reference, "torch": _torch, "tensorflow": _tensorflow, "keras": _keras, "jax": _jax,
            # The same PyTorch call on its Python path: both implementations give the same error.
            "torch-python": lambda kw: _torch(kw, "python")}
LABELS_NAME = {"keras": r"`y_true` \(targets\)"}
PARAMS = [pytest.param(front, overrides, exc, message, id=f"{front}: {case}")
          for case, overrides, exc, message, fronts in CASES
          for front in fronts + (("torch-python",) if "torch" in fronts else ())]


# The same table against the relatives (NCE, negative sampling): every case whose argument they take.
RELATIVES = {
    "reference nce_loss": lambda kw: _reference(kw, "nce_loss"),
    "reference negative_sampling_loss": lambda kw: _reference(kw, "negative_sampling_loss"),
    "torch nce_loss": lambda kw: _torch(kw, loss="nce_loss"),
    "torch negative_sampling_loss": lambda kw: _torch(kw, loss="negative_sampling_loss"),
    "tensorflow nce_loss": lambda kw: _tensorflow(kw, "nce_loss"),
    "keras loss=nce": lambda kw: _keras(kw, "nce"),
    "keras loss=negative_sampling": lambda kw: _keras(kw, "negative_sampling"),
    "jax nce_loss": lambda kw: _jax(kw, "nce_loss"),
    "jax negative_sampling_loss": lambda kw: _jax(kw, "negative_sampling_loss"),
}
NOT_TAKEN = {"label_smoothing", "return_log_prob", "partition_strategy"}
RELATIVE_PARAMS = [pytest.param(name, overrides, exc, message, id=f"{name}: {case}")
                   for case, overrides, exc, message, fronts in CASES
                   for name in RELATIVES if name.split()[0] in fronts and not NOT_TAKEN & set(overrides)]


@pytest.mark.parametrize("name,overrides,exc,message", RELATIVE_PARAMS)
def test_bad_input_to_the_relatives_is_the_same_clear_error(name, overrides, exc, message):
    kw = base()
    kw.update(overrides)
    labels = LABELS_NAME.get(name.split()[0], "`labels`")
    with pytest.raises(exc, match=message.replace("{labels}", labels)):
        RELATIVES[name](kw)


def test_the_table_has_thirty_distinct_cases_and_covers_every_front_end():
    assert len({c[0] for c in CASES}) == len(CASES) >= 30
    for front in ALL:
        assert sum(front in c[4] for c in CASES) >= 20


@pytest.mark.parametrize("front,overrides,exc,message", PARAMS)
def test_bad_input_is_a_clear_error(front, overrides, exc, message):
    kw = base()
    kw.update(overrides)
    pattern = message.replace("{labels}", LABELS_NAME.get(front, "`labels`"))
    with pytest.raises(exc, match=pattern):
        ADAPTERS[front](kw)


TF_TRACED = [pytest.param(jit, overrides, exc, message, id=f"tensorflow {'xla' if jit else 'tf.function'}: {case}")
             for case, overrides, exc, message, fronts in CASES if "tensorflow" in fronts for jit in (False, True)]


@pytest.mark.parametrize("jit_compile,overrides,exc,message", TF_TRACED)
def test_bad_input_inside_tf_function_and_xla(jit_compile, overrides, exc, message):
    """In a graph, what is known when tracing raises as eagerly; values raise when the step
    runs (an assertion naming the argument and the expectation). Under XLA, which drops
    assertions, a bad value gives nan, never a plausible loss."""
    tf = pytest.importorskip("tensorflow")
    kw = base()
    if jit_compile and "num_sampled" not in overrides:  # TensorFlow's sampler ops do not compile:
        kw["sampled_values"] = sv()                       # XLA steps take given draws
    kw.update(overrides)
    pattern = message.replace("{labels}", "`labels`")
    try:
        loss = _tensorflow_traced(kw, jit_compile)
    except (exc, tf.errors.InvalidArgumentError) as err:
        if isinstance(err, tf.errors.InvalidArgumentError):
            # An assertion prints the offending values after its text, in its own format.
            pattern = __import__("re").split(r";? (?:\.\* )?received", pattern)[0]
            assert not jit_compile, f"XLA raised {err}"
        assert __import__("re").search(pattern, str(err)), f"{pattern!r} not in {str(err)[:500]!r}"
        return
    assert jit_compile, "a graph must raise on bad input"
    assert np.isnan(_np(loss)).any(), f"XLA returned a plausible loss {_np(loss)} for bad input"


@pytest.mark.parametrize("front", ALL + ("torch-python",))
def test_the_valid_call_works(front):
    # The table's errors come from its overrides, not from the base call.
    loss = _np(ADAPTERS[front](base()))
    assert loss.shape == (B,) and np.all(np.isfinite(loss)) and np.all(loss > 0)


@pytest.mark.parametrize("front", ALL)
def test_empty_batch_gives_an_empty_loss(front):
    kw = base()
    kw.update(labels=np.zeros(0, np.int64), inputs=np.zeros((0, D), np.float32),
              sampled_values=sv(tc=np.ones((0, 1), np.float32)))
    loss = ADAPTERS[front](kw)
    assert tuple(loss.shape) == (0,)


@pytest.mark.parametrize("front", ALL)
def test_no_input_is_modified_in_place(front):
    kw = base()
    extra = {} if front == "tensorflow" else {"ignore_index": -1}
    labels = np.array([1, -1, 3]) if extra else np.array([1, 2, 3])
    cand = np.array([1, 3, 3, 7, 9])  # accidental hits and a repeat marked as padding
    sc = np.array([0.5, 0.5, np.inf, 1.0, 2.0], np.float32)
    kw.update(labels=labels, sampled_values=sv(cand=cand, sc=sc), **extra)
    before = {k: (np.copy(v) if isinstance(v, np.ndarray) else tuple(np.copy(a) for a in v))
              for k, v in kw.items() if isinstance(v, (np.ndarray, tuple))}
    loss = _np(ADAPTERS[front](kw))
    assert np.all(np.isfinite(loss))
    for k, v in before.items():
        after = kw[k]
        for x, y in zip(v if isinstance(v, tuple) else (v,), after if isinstance(after, tuple) else (after,)):
            np.testing.assert_array_equal(np.asarray(y), x, err_msg=f"{front} modified `{k}`")



def test_tensorflow_out_of_range_labels_fail_inside_tf_function_too():
    tf = pytest.importorskip("tensorflow")
    from sampled_softmax import tensorflow as sst

    kw = base()
    step = tf.function(lambda labels: sst.sampled_softmax_loss(
        tf.constant(kw["weights"]), tf.constant(kw["biases"]), labels, tf.constant(kw["inputs"]), S, V,
        sampled_values=tuple(tf.constant(v) for v in sv())))
    assert step(tf.constant([1, 2, 3])).shape == (B,)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`labels` must be in \[0, 19\]; received values up to\] \[20\]"):
        step(tf.constant([1, 2, 20]))
