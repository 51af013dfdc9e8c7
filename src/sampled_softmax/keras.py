r"""Keras 3 front end: a ``SampledSoftmax`` output layer for ``compile``/``fit``/``predict``.

Written with ``keras.ops`` and ``keras.random`` only, so it runs on the TensorFlow, JAX and
PyTorch backends. Imports Keras (and, through it, the backend Keras is configured for).

Replace the final ``Dense(num_classes, activation="softmax")`` of a model by
``SampledSoftmax(num_classes, num_sampled)`` and pass the layer's ``loss`` to ``compile``::

    head = SampledSoftmax(V, num_sampled=1024)
    model = keras.Sequential([keras.Input((None,), dtype="int32"), layers.Embedding(V, 256),
                              layers.LSTM(1024, return_sequences=True), head])
    model.compile(optimizer="adam", loss=head.loss)
    model.fit(tokens, next_tokens)           # sampled softmax, labels through the ordinary y
    model.evaluate(tokens, next_tokens)      # exact full-softmax loss (and metrics)
    model.predict(tokens)                    # full-softmax probabilities [..., V]

How it works: in training mode the layer passes its input hidden states ``h`` through, and
``head.loss`` (which holds the layer) computes the sampled softmax loss from ``h``, the labels
``y`` and the layer's own class table, drawing ``num_sampled`` candidates shared by the batch
with the layer's seed generator. Otherwise the layer computes the full softmax over all
classes and ``head.loss`` is the exact cross-entropy of its output. So ``compile``'s
``metrics`` see full-softmax probabilities in ``evaluate`` (and ``fit``'s ``val_*`` numbers),
but hidden states during ``fit``'s training steps, unless wrapped by ``head.metric(...)``
(:class:`SampledSoftmaxMetric`), which scores the full softmax there too::

    model.compile(optimizer="adam", loss=head.loss,
                  metrics=[head.metric("accuracy"), head.metric("perplexity")])

The sampled loss is the one of :mod:`sampled_softmax.reference`: corrected logits
``o_k = h . W_k + b_k - log E(k)`` over the true class(es) and the candidates, accidental hits
and padding slots removed from the normalizer, optional label smoothing over the kept columns.
"""

from __future__ import annotations

import math
import weakref

def _choose_installed_backend() -> None:
    """Keras defaults to TensorFlow. Where nothing chose a backend (no KERAS_BACKEND, no
    keras.json) and TensorFlow is not installed, use one that is (JAX, which the `keras` extra
    installs, then PyTorch), so that `pip install sampled-softmax[keras]` works as it is."""
    import importlib.util
    import json
    import os
    import sys

    if "keras" in sys.modules or "KERAS_BACKEND" in os.environ:
        return
    config = os.path.join(os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras")), "keras.json")
    try:
        with open(config) as f:
            if "backend" in json.load(f):
                return
    except (OSError, ValueError):
        pass

    def installed(name):
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            return False

    if installed("tensorflow"):
        return
    for name in ("jax", "torch"):
        if installed(name):
            os.environ["KERAS_BACKEND"] = name
            return


_choose_installed_backend()
try:
    import keras
except ModuleNotFoundError as _missing:  # Keras is there but the backend it is set to is not
    _backend = (_missing.name or "").split(".")[0]
    if _backend in ("tensorflow", "jax", "torch"):
        raise ImportError(
            f"Keras is installed, but its backend {_backend!r} is not: install it (the extras "
            f"sampled-softmax[keras] bring JAX, [tensorflow], [tensorflow-cpu] and [torch] the others) and set "
            f"KERAS_BACKEND to an installed one (jax, tensorflow or torch)") from _missing
    raise
import numpy as np
from keras import ops

from . import SampledSoftmaxError
from . import _validation as V
from .samplers import unigram_weights

try:  # Keras keeps masks beside tensors that cannot carry attributes (JAX arrays).
    from keras.src.backend.common.masking import get_keras_mask, set_keras_mask
    from keras.src.backend.common.tensor_attributes import get_tensor_attr, set_tensor_attr
except ImportError:  # pragma: no cover - older or newer layouts
    def get_tensor_attr(x, attr):
        return getattr(x, attr, None)

    def set_tensor_attr(x, attr, value):
        setattr(x, attr, value)

    def get_keras_mask(x):
        return get_tensor_attr(x, "_keras_mask")

    def set_keras_mask(x, mask):
        set_tensor_attr(x, "_keras_mask", mask)

# The attribute that ties a layer's output to the layer: its loss and metrics read it from
# `y_pred`, so they always belong to the layer of the model that produced it.
_OWNER_ATTR = "_sampled_softmax_layer"
# On JAX, the values the sampled loss needs, read inside the model's (stateless) call: a custom
# train_step that computes its loss outside that call, as Keras's JAX guide writes one, would
# otherwise read the variables' stored values (no gradient reaches them) and draw outside it.
_STATE_ATTR = "_sampled_softmax_state"

__all__ = ["SampledSoftmax", "SampledSoftmaxLoss", "SampledSoftmaxMetric", "Perplexity", "LazyAdam",
           "SampledSoftmaxError"]

SAMPLERS = ("log_uniform", "uniform", "unigram", "learned_unigram")
DRAWS = ("unique_exact", "with_replacement")
OUTPUTS = ("probabilities", "logits", "log_probabilities")

# The most recent layer of each name: where `y_pred` does not name its layer (see _OWNER_ATTR),
# a loss restored by `load_model` (whose config can only name its layer) looks it up here.
_LAYERS_BY_NAME: "weakref.WeakValueDictionary[str, SampledSoftmax]" = weakref.WeakValueDictionary()


def _shape(x) -> tuple:
    """Static shape, ``None`` for dimensions unknown at trace time."""
    return tuple(None if d is None else int(d) for d in x.shape)


def _same_dims(a, b) -> bool:
    """Shapes equal, with unknown (None) dimensions matching anything."""
    return len(a) == len(b) and all(p is None or q is None or p == q for p, q in zip(a, b))


def _label_shape(labels_shape, lead, num_true) -> int:
    """``num_true`` actually present: labels are ``lead`` or ``lead + (T,)``."""
    labels_shape, lead = tuple(labels_shape), tuple(lead)
    if _same_dims(labels_shape, lead) and num_true == 1:
        return 0  # no trailing axis
    if _same_dims(labels_shape, lead + (num_true,)):
        return num_true
    expected = [list(lead) + [num_true]] if num_true > 1 else [list(lead), list(lead) + [1]]
    raise SampledSoftmaxError(
        f"`y_true` (targets) must have shape {' or '.join(str(e) for e in expected)} for this "
        f"layer's output of leading shape {list(lead)} and num_true={num_true}; received shape "
        f"{list(labels_shape)}"
    )


def _is_integer_dtype(x) -> bool:
    return "int" in keras.backend.standardize_dtype(x.dtype)


def _concrete_numpy(x):
    """The values of ``x`` as NumPy when they are known now (eager), else None (traced)."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return x.numpy() if tf.executing_eagerly() and hasattr(x, "numpy") else None
        if backend == "jax":
            import jax

            return None if isinstance(x, jax.core.Tracer) else np.asarray(x)
        if backend == "torch":
            return x.detach().cpu().numpy()
        return np.asarray(x)
    except Exception:  # noqa: BLE001 - symbolic tensors of any kind: checked where they run
        return None


def _raise_if_out_of_range(values, num_classes: int, ignore_index) -> None:
    """NumPy label values: raise the shared message, worded for Keras targets."""
    v = np.asarray(values)
    if ignore_index is not None:
        v = v[v != ignore_index]
    if v.size:
        try:
            V.check_label_values(int(v.min()), int(v.max()), num_classes, ignore_index)
        except SampledSoftmaxError as err:
            raise SampledSoftmaxError(str(err).replace("`labels`", "`y_true` (targets)")) from None


def _raise_where_seen(values, num_classes, ignore_index):
    """Inside a compiled JAX step: JAX reports the error at the end of a long runtime
    traceback, so the message is also written to stderr, one line, where it is seen."""
    import sys

    try:
        _raise_if_out_of_range(values, num_classes, ignore_index)
    except SampledSoftmaxError as err:
        print(f"sampled_softmax.SampledSoftmaxError: {err}", file=sys.stderr, flush=True)
        raise


def _check_label_values(y, num_classes: int, ignore_index):
    """Out-of-range labels raise: now when eager, when the step runs when traced (graph TF,
    jitted JAX). Returns ``y`` (on TensorFlow, ordered after the check)."""
    values = _concrete_numpy(y)
    if values is not None:
        _raise_if_out_of_range(values, num_classes, ignore_index)
        return y
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        jax.debug.callback(lambda v: _raise_where_seen(v, num_classes, ignore_index), y)
        return y
    if backend == "tensorflow":
        import tensorflow as tf

        valid = tf.ones_like(y, tf.bool) if ignore_index is None else tf.not_equal(y, ignore_index)
        bad = tf.logical_and(valid, tf.logical_or(y < 0, y >= num_classes))
        check = tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(bad)),
            [f"`y_true` (targets) must be in [0, {num_classes - 1}]; received values out of range:",
             tf.boolean_mask(y, bad)],
            summarize=5,
        )
        with tf.control_dependencies([check]):  # before the gathers that would fail first
            return tf.identity(y)
    return y


def _take_rows(table, ids):
    """``table[ids]`` for a weight: on TensorFlow a sparse read of the variable (``ResourceGather``).

    ``ops.take`` reads the whole variable first (``ReadVariableOp``); while that dense read is
    alive, the optimizer's in-place row update of the variable must copy all of it.
    """
    if keras.backend.backend() == "tensorflow" and isinstance(table, keras.Variable):
        import tensorflow as tf

        return tf.gather(table.value, ids)
    return ops.take(table, ids, axis=0)


def _log_probs(y_pred, output_mode):
    """Log-probabilities (float32) from a :class:`SampledSoftmax` output of kind ``output_mode``."""
    z = ops.cast(y_pred, "float32")
    if output_mode == "probabilities":
        return ops.log(z)
    if output_mode == "logits":
        return ops.log_softmax(z, axis=-1)
    return z


# ---------------------------------------------------------------------------------------------
# Samplers in keras.ops: the distributions and expected counts of `sampled_softmax.samplers`.

def _log_uniform_draw(u, num_classes):
    x = ops.floor(ops.exp(u * math.log1p(num_classes)))
    return ops.mod(ops.cast(x, "int32") - 1, num_classes)


def _log_uniform_probs(ids, num_classes):
    k = ops.cast(ids, "float32")
    return ops.log1p(1.0 / (k + 1.0)) / math.log1p(num_classes)


def _repeated_slots(values):
    """True where a value also sits at another slot that counts as its first (sort-based)."""
    order = ops.argsort(values)
    sorted_values = ops.take(values, order)
    repeat_sorted = ops.concatenate(
        [ops.zeros((1,), "bool"), ops.equal(sorted_values[1:], sorted_values[:-1])], axis=0)
    return ops.take(repeat_sorted, ops.argsort(order))


@keras.saving.register_keras_serializable(package="sampled_softmax")
class SampledSoftmax(keras.layers.Layer):
    r"""Softmax output layer over ``num_classes`` trained with sampled softmax (Jean et al. 2014).

    Replaces a final ``Dense(num_classes, activation="softmax")``. Owns the class table
    ``kernel [V, D]`` (rows are classes, like an embedding table and like
    ``tf.nn.sampled_softmax_loss``'s ``weights``) and ``bias [V]``, or reads the table of a tied
    ``Embedding`` layer. Training goes through :attr:`loss` (see the module docstring):

    .. math::

        \ell_i = \log \sum_{k \in K_i} e^{o_{ik}} - o_{i,y_i},\qquad
        o_{ik} = h_i \cdot W_k + b_k - \log E(k)

    over the true class and ``num_sampled`` candidates ``K_i`` (accidental hits and repeated
    draws removed), with ``E(k)`` the expected count of class ``k`` under the sampler.
    Outside training the layer returns the full softmax over all ``V`` classes.

    Args:
        num_classes: ``V``.
        num_sampled: ``S``, candidates drawn per training step, shared by the batch.
        sampler: ``"log_uniform"`` (Zipf; class ids sorted by decreasing frequency, TensorFlow's
            default), ``"uniform"``, ``"unigram"`` (needs ``unigrams``) or ``"learned_unigram"``
            (``tf.random.learned_unigram_candidate_sampler``: counts start at 1 per class and
            each training step adds its targets after drawing, ignored targets excepted; the
            counts are a non-trainable float32 weight, saved with the model, exact up to 2**24
            per class and rounded, by at most 6e-8 relative, beyond).
        draw: ``"unique_exact"`` (``S`` draws, repeats become padding removed from the
            normalizer, ``E = 1 - (1 - Q)^S`` exact) or ``"with_replacement"`` (``E = S Q``).
            TensorFlow's ``unique=True`` needs a data-dependent loop and is offered by the
            TensorFlow and PyTorch front ends.
        unigrams: counts or probabilities of ids ``num_reserved_ids .. V - 1`` for
            ``sampler="unigram"`` (kept as a weight of the layer, saved with the model).
        distortion, num_reserved_ids: as ``tf.random.fixed_unigram_candidate_sampler``.
        num_true: labels per position (targets ``[..., num_true]``); each gets ``1 / T``.
        use_bias: learn a bias per class.
        remove_accidental_hits: remove candidates equal to a true label from that row.
        subtract_log_q: subtract ``log E(k)`` (sampled softmax). ``False`` gives negative
            sampling's uncorrected logits.
        label_smoothing: ``eps`` in ``[0, 1]``, spread over each row's kept columns in training
            and over all ``V`` classes in evaluation.
        ignore_index: targets equal to it contribute no loss and are left out of the mean
            (like ``Embedding(mask_zero=True)``'s mask, which the layer also honours).
        tied_to: an ``Embedding(V, D)`` layer whose table is also the class table (then the
            layer owns only the bias). The embedding must feed this layer in the same model.
        output: what the layer returns outside training: ``"probabilities"`` (default, like
            ``Dense(V, activation="softmax")``), ``"logits"`` or ``"log_probabilities"``.
        seed: seed of the layer's candidate draws (a ``keras.random.SeedGenerator``, saved
            with the layer's weights).
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer: as ``Dense``.

    Shape:
        - Input: ``[..., D]`` (``[B, D]`` or sequences ``[B, T, D]``).
        - Output: ``[..., V]`` outside training; the input itself in training.
        - Targets (``y`` of ``fit``/``evaluate``): integer ``[...]``, ``[..., 1]`` or ``[..., num_true]``.
    """

    def __init__(self, num_classes, num_sampled, *, sampler="log_uniform", draw="unique_exact",
                 unigrams=None, distortion=1.0, num_reserved_ids=0, num_true=1, use_bias=True,
                 remove_accidental_hits=True, subtract_log_q=True, label_smoothing=0.0,
                 ignore_index=None, tied_to=None, output="probabilities", seed=None,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, **kwargs):
        tied_name = kwargs.pop("tied_to_name", None)
        unigrams_in_weights = kwargs.pop("unigrams_in_weights", False)
        full_in_training = bool(kwargs.pop("full_output_in_training", False))
        super().__init__(**kwargs)
        self.num_classes = V.check_positive_int("num_classes", num_classes)
        self.sampler = V.check_choice("sampler", sampler, SAMPLERS)
        self.draw = V.check_choice("draw", draw, DRAWS)
        self.num_true = V.check_positive_int("num_true", num_true)
        self.use_bias = bool(use_bias)
        self.remove_accidental_hits = bool(remove_accidental_hits)
        self.subtract_log_q = bool(subtract_log_q)
        self.label_smoothing = V.check_label_smoothing(label_smoothing)
        if ignore_index is not None and not isinstance(ignore_index, int):
            raise TypeError(f"`ignore_index` must be an int or None; received {type(ignore_index).__name__}")
        self.ignore_index = ignore_index
        self.output_mode = V.check_choice("output", output, OUTPUTS)
        self.seed = seed
        self.distortion = float(distortion)
        self.num_reserved_ids = int(num_reserved_ids)
        self._unigrams = None
        support = self.num_classes
        if self.sampler == "unigram":
            if unigrams is None and not unigrams_in_weights:
                raise SampledSoftmaxError("`unigrams` (counts or probabilities) is required for sampler='unigram'; received None")
            if unigrams is not None:
                weights = unigram_weights(unigrams, num_classes=self.num_classes, distortion=self.distortion,
                                          num_reserved_ids=self.num_reserved_ids)
                self._unigrams = weights
                support = int(np.count_nonzero(weights))
        # "unique_exact" with more draws than classes is not impossible (repeats are padding) but
        # certainly wasteful: an error, as for the other unique draws.
        self.num_sampled = V.check_num_sampled(num_sampled, self.num_classes, unique=self.draw == "unique_exact",
                                               support=support)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.seed_generator = keras.random.SeedGenerator(seed)
        if tied_to is not None and not isinstance(tied_to, keras.layers.Embedding):
            raise TypeError(f"`tied_to` must be a keras.layers.Embedding; received {type(tied_to).__name__}")
        # Not tracked as a sub-layer: the table belongs to (and is saved with) the Embedding.
        object.__setattr__(self, "_tied", tied_to)
        object.__setattr__(self, "_bound_loss", None)
        self._tied_name = tied_to.name if tied_to is not None else tied_name
        self.supports_masking = True
        self._training_output = False
        # Set once a SampledSoftmaxMetric binds to the layer: training outputs then carry the
        # full output too (see `call`).
        self._full_in_training = full_in_training  # restored with the layer: its metrics are restored after it
        _LAYERS_BY_NAME[self.name] = self

    # -- the class table -------------------------------------------------------------------

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise SampledSoftmaxError(f"`inputs` last dimension must be known; received shape {list(input_shape)}")
        self.input_dim = int(dim)
        if self._tied_name is None:
            self.kernel = self.add_weight(
                name="kernel", shape=(self.num_classes, self.input_dim), initializer=self.kernel_initializer,
                regularizer=self.kernel_regularizer)
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.num_classes,), initializer=self.bias_initializer,
                                        regularizer=self.bias_regularizer)
        if self.sampler == "unigram":
            self.sampling_cdf = self.add_weight(name="sampling_cdf", shape=(self.num_classes,),
                                                initializer="zeros", trainable=False)
            self.sampling_probs = self.add_weight(name="sampling_probs", shape=(self.num_classes,),
                                                  initializer="zeros", trainable=False)
            if self._unigrams is not None:
                cdf, probs = self._tables_from_weights(self._unigrams)
                self.sampling_cdf.assign(cdf)
                self.sampling_probs.assign(probs)
        if self.sampler == "learned_unigram":
            # Under a tf.distribute strategy every replica adds all replicas' targets (see
            # sampled_loss), so the copies agree and their mean is the count.
            self.sampling_counts = self.add_weight(name="sampling_counts", shape=(self.num_classes,),
                                                   initializer="ones", trainable=False, aggregation="mean")

    @staticmethod
    def _tables_from_weights(weights):
        """Float32 CDF to draw from and float32 probabilities to correct with, both normalised in
        float64. Probabilities are stored, not read back as CDF steps: a rare class's step can
        round to 0 in float32 while its probability (1e-12, say) cannot, and as a label it needs
        a finite log-Q."""
        total = np.sum(weights)
        cdf = np.cumsum(weights) / total
        cdf[-1] = 1.0
        return cdf.astype(np.float32), (np.asarray(weights, np.float64) / total).astype(np.float32)

    def __call__(self, inputs, *args, **kwargs):
        if self._tied_name is not None and self._tied is None:
            object.__setattr__(self, "_tied", _find_upstream_layer(inputs, self._tied_name))
        return super().__call__(inputs, *args, **kwargs)

    @property
    def table(self):
        """The class table ``[V, D]`` (the tied embedding's, if tied)."""
        if self._tied_name is None:
            return self.kernel
        if self._tied is None:
            raise SampledSoftmaxError(
                f"`tied_to` Embedding {self._tied_name!r} was not found upstream of this layer; "
                f"call the layer on the output of a model that contains it")
        table = self._tied.embeddings
        if tuple(table.shape) != (self.num_classes, self.input_dim):
            raise SampledSoftmaxError(
                f"`tied_to` Embedding table must have shape [{self.num_classes}, {self.input_dim}] "
                f"(num_classes, input dim); received shape {list(table.shape)}")
        return table

    # -- forward ---------------------------------------------------------------------------

    def logits(self, inputs):
        """Full logits ``[..., V]`` (computed in the layer's compute dtype)."""
        W = ops.cast(self.table, self.compute_dtype)
        z = ops.matmul(ops.cast(inputs, self.compute_dtype), ops.transpose(W))
        if self.use_bias:
            z = z + ops.cast(self.bias, self.compute_dtype)
        return z

    def call(self, inputs, training=None, mask=None):
        self._training_output = bool(training)
        if training:
            _check_compiled_loss(self)
            if self._full_in_training:
                # Metrics made by `metric()` score the full output with the weights the loss
                # saw. It can only reach them through `y_pred` (JAX traces the loss and the
                # metrics separately), so the training output is [h, full output] in float32.
                full = ops.stop_gradient(self.full_output(inputs))
                return self._owned(ops.concatenate([ops.cast(inputs, "float32"), full], axis=-1), True)
            owner = get_tensor_attr(inputs, _OWNER_ATTR)
            if owner is not None and owner[0]() is not self:  # one hidden state feeding two heads
                inputs = ops.copy(inputs)
            return self._owned(inputs, True)
        return self._owned(self.full_output(inputs), False)

    def _training_state(self) -> dict:
        """The table, bias, sampling tables and this step's uniforms, as values (see _STATE_ATTR)."""
        state = {"table": ops.convert_to_tensor(self.table),
                 "u": keras.random.uniform((self.num_sampled,), dtype="float32", seed=self.seed_generator)}
        if self.use_bias:
            state["bias"] = ops.convert_to_tensor(self.bias)
        if self.sampler == "unigram":
            state["sampling_cdf"] = ops.convert_to_tensor(self.sampling_cdf)
            state["sampling_probs"] = ops.convert_to_tensor(self.sampling_probs)
        if self.sampler == "learned_unigram":
            state["sampling_counts"] = ops.convert_to_tensor(self.sampling_counts)
        return state

    def _owned(self, outputs, training: bool):
        # The layer and the kind of output (hidden states for the loss, or the full output):
        # a trainer may call the model in both modes before its loss sees one of the outputs.
        set_tensor_attr(outputs, _OWNER_ATTR, (weakref.ref(self), training))
        if training and keras.backend.backend() == "jax":
            set_tensor_attr(outputs, _STATE_ATTR, self._training_state())
        return outputs

    def _is_training_output(self, y_pred) -> bool:
        owner = get_tensor_attr(y_pred, _OWNER_ATTR)
        return owner[1] if owner is not None and owner[0]() is self else self._training_output

    def _split_training_output(self, y_pred):
        """``(hidden states, full output or None)`` of a training output."""
        if self._full_in_training and _shape(y_pred)[-1] == self.input_dim + self.num_classes:
            return y_pred[..., :self.input_dim], y_pred[..., self.input_dim:]
        return y_pred, None

    def full_output(self, inputs):
        """What the layer returns outside training (``output``), from hidden states ``[..., D]``."""
        z = ops.cast(self.logits(inputs), "float32")  # the softmax in float32, as for Dense under mixed precision
        if self.output_mode == "logits":
            return z
        if self.output_mode == "log_probabilities":
            return ops.log_softmax(z, axis=-1)
        return ops.softmax(z, axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_classes,)

    def compute_output_spec(self, inputs, training=None, mask=None):
        self._training_output = bool(training)
        if training and self._full_in_training:
            return keras.KerasTensor(tuple(inputs.shape[:-1]) + (inputs.shape[-1] + self.num_classes,), dtype="float32")
        shape = inputs.shape if training else self.compute_output_shape(inputs.shape)
        dtype = inputs.dtype if training else "float32"
        return keras.KerasTensor(shape, dtype=dtype)

    def compute_mask(self, inputs, mask=None):
        return mask

    @property
    def loss(self) -> "SampledSoftmaxLoss":
        """The loss to pass to ``compile``: sampled in training, exact otherwise."""
        if self._bound_loss is None:  # one object, so that walks over the model terminate
            object.__setattr__(self, "_bound_loss", SampledSoftmaxLoss(self))
        return self._bound_loss

    def metric(self, metric="sparse_categorical_accuracy", *, name=None) -> "SampledSoftmaxMetric":
        """A metric for ``compile(metrics=[...])`` that sees the full softmax in ``fit`` too.

        ``metric``: a Keras metric object or name (``"accuracy"`` means sparse categorical
        accuracy), or ``"perplexity"``. See :class:`SampledSoftmaxMetric`.
        """
        return SampledSoftmaxMetric(metric, self, name=name)

    # -- sampling --------------------------------------------------------------------------

    def _value(self, name, state):
        return ops.convert_to_tensor(getattr(self, name)) if state is None else state[name]

    def _probs(self, ids, state=None):
        if self.sampler == "uniform":
            return ops.full(ops.shape(ids), 1.0 / self.num_classes, "float32")
        if self.sampler == "log_uniform":
            return _log_uniform_probs(ids, self.num_classes)
        return ops.take(self._value("sampling_probs", state), ids)

    def sample(self, labels, state=None):
        """Candidates ``[S]`` (int32), expected counts of ``labels`` and of the candidates
        (float32, padding slots of ``draw="unique_exact"`` at ``inf``). ``state``: values read
        in the layer's call (see ``_STATE_ATTR``), else the layer's own."""
        S = self.num_sampled
        u = keras.random.uniform((S,), dtype="float32", seed=self.seed_generator) if state is None else state["u"]
        if self.sampler == "uniform":
            cand = ops.minimum(ops.cast(ops.floor(u * self.num_classes), "int32"), self.num_classes - 1)
        elif self.sampler == "log_uniform":
            cand = _log_uniform_draw(u, self.num_classes)
        elif self.sampler == "unigram":
            cand = ops.minimum(ops.cast(ops.searchsorted(self._value("sampling_cdf", state), u, side="right"),
                                        "int32"), self.num_classes - 1)
        if self.sampler == "learned_unigram":
            # One O(V) pass over the counts per draw: the CDF, its total, and the probabilities from both.
            counts = self._value("sampling_counts", state)
            cumulative = ops.cumsum(counts)
            total = cumulative[-1]
            cand = ops.minimum(ops.cast(ops.searchsorted(cumulative, u * total, side="right"), "int32"),
                               self.num_classes - 1)
            p_true, p_cand = ops.take(counts, labels) / total, ops.take(counts, cand) / total
        else:
            p_true, p_cand = self._probs(labels, state), self._probs(cand, state)
        if self.draw == "with_replacement":
            return cand, p_true * S, p_cand * S
        expected = lambda p: -ops.expm1(S * ops.log1p(-p))  # noqa: E731
        samp = ops.where(_repeated_slots(cand), float("inf"), expected(p_cand))
        return cand, expected(p_true), samp

    # -- losses ----------------------------------------------------------------------------

    def _flatten_targets(self, y_true, lead):
        # Keras's symbolic build under a tf.distribute strategy makes placeholder targets of
        # float64 zeros whatever the data's dtype: only shapes are computed there.
        if not _is_integer_dtype(y_true) and not _in_symbolic_scope():
            raise TypeError(f"`y_true` (targets) must have an integer dtype; received "
                            f"{keras.backend.standardize_dtype(y_true.dtype)}")
        has_axis = _label_shape(_shape(y_true), lead, self.num_true)
        T = max(has_axis, 1)
        y2 = ops.reshape(ops.cast(y_true, "int32"), (-1, T))
        return _check_label_values(y2, self.num_classes, self.ignore_index), T

    def sampled_loss(self, y_true, inputs, sampled_values=None, state=None):
        """Per-position sampled softmax loss ``[...]`` (float32) from hidden states ``inputs
        [..., D]`` and targets; ``sampled_values`` overrides the layer's own draw; ``state``
        (values read in the layer's call, see ``_STATE_ATTR``) the layer's variables."""
        lead = _shape(inputs)[:-1]
        if _shape(inputs)[-1] not in (None, self.input_dim):
            raise SampledSoftmaxError(f"`inputs` last dimension must equal the weights' dim {self.input_dim}; "
                                      f"received {_shape(inputs)[-1]}")
        y2, T = self._flatten_targets(y_true, lead)
        h = ops.reshape(ops.cast(inputs, "float32"), (-1, self.input_dim))
        if self.ignore_index is None:
            valid = ops.ones_like(y2, "bool")
            y_safe = y2
        else:
            valid = ops.not_equal(y2, self.ignore_index)
            y_safe = ops.where(valid, y2, 0)
        if sampled_values is None:
            cand, true_count, samp_count = self.sample(y_safe, state)
            if self.sampler == "learned_unigram":
                if state is not None and not _in_stateless_scope():
                    raise SampledSoftmaxError(
                        "`sampler`='learned_unigram' adds each step's targets to its counts in the loss, and this "
                        "loss runs outside the model's stateless call (a custom JAX train_step), where no "
                        "variable can be updated: compute the loss inside keras.StatelessScope(state_mapping=...) "
                        "and return its updated counts, or use another sampler")
                # After drawing, as TensorFlow's learned sampler; ignored targets are not counted.
                seen = ops.segment_sum(ops.reshape(ops.cast(valid, "float32"), (-1,)), ops.reshape(y_safe, (-1,)),
                                       num_segments=self.num_classes)
                self.sampling_counts.assign_add(_sum_over_replicas(seen))
        else:
            cand, true_count, samp_count = self._checked_sampled_values(sampled_values, y2, valid)
            cand = ops.cast(cand, "int32")
            true_count = ops.cast(true_count, "float32")
            if T > 1 and _shape(true_count)[-1:] == (1,):  # [batch, 1] broadcast over the targets, as tf.nn does
                true_count = ops.broadcast_to(true_count, (ops.shape(y2)[0], T))
            true_count = ops.reshape(true_count, (-1, T))
            samp_count = ops.cast(samp_count, "float32")
        n = ops.shape(y2)[0]
        ids = ops.concatenate([ops.reshape(y_safe, (-1,)), cand], axis=0)
        table = self.table if state is None else state["table"]
        rows = ops.cast(_take_rows(table, ids), "float32")  # one gather: sparse rows on TF
        true_rows = ops.reshape(rows[: n * T], (n, T, self.input_dim))
        cand_rows = rows[n * T:]
        t = ops.sum(ops.expand_dims(h, 1) * true_rows, axis=-1)
        s = ops.matmul(h, ops.transpose(cand_rows))
        if self.use_bias:
            b = ops.cast(_take_rows(self.bias if state is None else state["bias"], ids), "float32")
            t = t + ops.reshape(b[: n * T], (n, T))
            s = s + b[n * T:]
        padding = ops.logical_not(ops.isfinite(samp_count))
        if self.subtract_log_q:
            t = t - ops.log(ops.where(valid, true_count, 1.0))
            s = s - ops.log(ops.where(padding, 1.0, samp_count))
        keep_s = ops.logical_and(ops.logical_not(padding)[None, :], ops.ones_like(s, dtype="bool"))
        if self.remove_accidental_hits:
            hits = ops.logical_and(ops.equal(ops.reshape(cand, (1, 1, -1)), y2[:, :, None]), valid[:, :, None])
            keep_s = ops.logical_and(keep_s, ops.logical_not(ops.any(hits, axis=1)))
        keep = ops.concatenate([valid, keep_s], axis=1)
        logits = ops.where(keep, ops.concatenate([t, s], axis=1), np.finfo(np.float32).min)
        n_true = ops.sum(ops.cast(valid, "float32"), axis=1, keepdims=True)
        n_kept = ops.sum(ops.cast(keep, "float32"), axis=1, keepdims=True)
        eps = self.label_smoothing
        on_true = ops.concatenate([ops.ones_like(t), ops.zeros_like(s)], axis=1)
        target = ops.where(keep, on_true * (1.0 - eps) / ops.maximum(n_true, 1.0) + eps / n_kept, 0.0)
        loss = ops.logsumexp(logits, axis=1) - ops.sum(target * ops.where(keep, logits, 0.0), axis=1)
        live = n_true[:, 0] > 0
        loss = self._nan_if_out_of_range(ops.where(live, loss, 0.0), y2, valid)
        return self._with_padding_mask(ops.reshape(loss, ops.shape(inputs)[:-1]), live)

    def _checked_sampled_values(self, sampled_values, y2, valid):
        """Dtypes and shapes; values too where they are known now (eager)."""
        cand, true_count, samp_count = (ops.convert_to_tensor(v) for v in V.check_sampled_values_triple(sampled_values))
        V.check_integer_dtype("sampled_values[0]", _is_integer_dtype(cand), keras.backend.standardize_dtype(cand.dtype))
        n, T = _shape(y2)
        shapes = [_shape(v) for v in (cand, true_count, samp_count)]
        if n is not None and all(None not in s for s in shapes):
            V.check_sampled_values_shapes(*shapes, None, n, T)  # any S: it replaces the layer's draw
            arrays = [_concrete_numpy(v) for v in (cand, true_count, samp_count, valid)]
            if all(a is not None for a in arrays):
                V.check_sampled_values_numpy(*arrays[:3], num_sampled=None, num_classes=self.num_classes,
                                             lead_size=n, num_true=T, valid=arrays[3])
        return cand, true_count, samp_count

    def full_loss(self, y_true, y_pred):
        """Per-position exact cross-entropy ``[...]`` of this layer's full-softmax output."""
        lead = _shape(y_pred)[:-1]
        y2, T = self._flatten_targets(y_true, lead)
        logp = _log_probs(ops.reshape(y_pred, (-1, self.num_classes)), self.output_mode)
        valid = ops.ones_like(y2, "bool") if self.ignore_index is None else ops.not_equal(y2, self.ignore_index)
        y_safe = ops.where(valid, y2, 0)
        picked = ops.take_along_axis(logp, y_safe, axis=1)
        n_true = ops.sum(ops.cast(valid, "float32"), axis=1)
        eps = self.label_smoothing
        loss = -(1.0 - eps) * ops.sum(ops.where(valid, picked, 0.0), axis=1) / ops.maximum(n_true, 1.0)
        if eps:
            loss = loss - eps * ops.mean(logp, axis=1)
        live = n_true > 0
        loss = self._nan_if_out_of_range(ops.where(live, loss, 0.0), y2, valid)
        return self._with_padding_mask(ops.reshape(loss, ops.shape(y_pred)[:-1]), live)

    def _nan_if_out_of_range(self, loss, y2, valid):
        # Where no assertion can run (XLA drops them, and its gathers clamp), a bad label still
        # never yields a plausible number.
        bad = ops.logical_and(valid, ops.logical_or(y2 < 0, y2 >= self.num_classes))
        return ops.where(ops.any(bad, axis=1), float("nan"), loss)

    def _with_padding_mask(self, loss, live):
        if self.ignore_index is not None:
            # Keras leaves masked positions out of the mean: ignored targets do not dilute it.
            set_keras_mask(loss, ops.reshape(live, ops.shape(loss)))
        return loss

    # Keras saves a layer's own variables but not its SeedGenerator's state: without it a
    # resumed fit would draw the first epoch's candidates again.
    _SEED_KEY = "seed_generator_state"

    def save_own_variables(self, store):
        super().save_own_variables(store)
        store[self._SEED_KEY] = self.seed_generator.state

    def load_own_variables(self, store):
        keys = list(store.keys())
        if self._SEED_KEY in keys:
            self.seed_generator.state.assign(store[self._SEED_KEY])
            store = {k: store[k] for k in keys if k != self._SEED_KEY}
        super().load_own_variables(store)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes, num_sampled=self.num_sampled, sampler=self.sampler,
            draw=self.draw, distortion=self.distortion, num_reserved_ids=self.num_reserved_ids,
            num_true=self.num_true, use_bias=self.use_bias,
            remove_accidental_hits=self.remove_accidental_hits, subtract_log_q=self.subtract_log_q,
            label_smoothing=self.label_smoothing, ignore_index=self.ignore_index,
            output=self.output_mode, seed=self.seed,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
            bias_regularizer=keras.regularizers.serialize(self.bias_regularizer),
        )
        if self._tied_name is not None:
            config["tied_to_name"] = self._tied_name
        if self._full_in_training:
            config["full_output_in_training"] = True
        if self.sampler == "unigram":
            # The sampling table is a (non-trainable) weight, saved with the others.
            config["unigrams_in_weights"] = True
        return config


def _sum_over_replicas(x):
    """``x`` summed over the replicas of a tf.distribute strategy (each replica sees its own
    part of the batch); ``x`` itself elsewhere (JAX and PyTorch see the whole batch)."""
    if keras.backend.backend() != "tensorflow":
        return x
    import tensorflow as tf

    replica = tf.distribute.get_replica_context()
    if replica is None or replica.num_replicas_in_sync == 1:
        return x
    return replica.all_reduce(tf.distribute.ReduceOp.SUM, x)


def _in_symbolic_scope() -> bool:
    try:
        from keras.src.backend.common.symbolic_scope import in_symbolic_scope
    except ImportError:  # pragma: no cover - other layouts
        return False
    return in_symbolic_scope()


def _in_stateless_scope() -> bool:
    try:
        from keras.src.backend.common.stateless_scope import in_stateless_scope
    except ImportError:  # pragma: no cover - other layouts
        return True
    return in_stateless_scope()


def _find_upstream_layer(inputs, name):
    """The layer called ``name`` among those that produced the symbolic ``inputs``."""
    seen, stack = set(), [inputs]
    while stack:
        tensor = stack.pop()
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            continue
        layer = history[0]
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if layer.name == name:
            return layer
        node = layer._inbound_nodes[history[1]]
        stack.extend(node.input_tensors)
    return None


_WARNED_MODELS: "weakref.WeakSet" = weakref.WeakSet()


_CHECKED_MODELS: "weakref.WeakSet" = weakref.WeakSet()


def _check_compiled_loss(layer) -> None:
    """In training the layer outputs hidden states for ``head.loss``: a model compiled with
    another loss for it (``"sparse_categorical_crossentropy"``, what a Dense softmax had) would
    train on those silently or fail with a shape error. Raise, once per model, saying so."""
    model = _calling_model(compiled=True)
    if model is None or model in _CHECKED_MODELS:
        return
    loss = getattr(model, "loss", None)
    if isinstance(loss, dict):
        loss = loss.get(layer.name)
    elif isinstance(loss, (list, tuple)):
        loss = loss[0] if len(loss) == 1 else None
    if loss is None or isinstance(loss, SampledSoftmaxLoss):
        _CHECKED_MODELS.add(model)
        return
    name = loss if isinstance(loss, str) else getattr(loss, "name", None) or type(loss).__name__
    raise SampledSoftmaxError(
        f"`loss`: this model is compiled with loss={name!r} for its SampledSoftmax layer {layer.name!r}, which "
        f"in training outputs hidden states for its own loss: compile with loss=head.loss (head being that "
        f"layer), e.g. model.compile(optimizer=..., loss=head.loss)")


def _warn_about_plain_metrics(layer) -> None:
    """Warn, once per model, when ``compile(metrics=[...])`` has a plain metric for this
    layer's output: during ``fit``'s training steps it would score hidden states."""
    import warnings

    model = _calling_model()
    if model is None or getattr(model, "_compile_metrics", None) is None or model in _WARNED_MODELS:
        return
    _WARNED_MODELS.add(model)
    compiled = model._compile_metrics
    plain = []
    for group in (getattr(compiled, "_user_metrics", None), getattr(compiled, "_user_weighted_metrics", None)):
        if isinstance(group, dict):
            group = group.get(layer.name, [])
        for metric in group if isinstance(group, (list, tuple)) else [group] if group else []:
            if isinstance(metric, (list, tuple, dict)) or isinstance(metric, SampledSoftmaxMetric):
                continue
            plain.append(metric if isinstance(metric, str) else getattr(metric, "name", type(metric).__name__))
    if plain:
        names = ", ".join(repr(p) for p in plain)
        warnings.warn(
            f"compile(metrics=[{names}]): during fit's training steps these score the hidden states that the "
            f"SampledSoftmax layer {layer.name!r} outputs for its loss, so their training numbers are "
            f"meaningless (evaluate and val_ numbers are right). Use metrics=[head.metric({plain[0]!r})], with "
            f"head that layer: it scores the full softmax in training too.", UserWarning, stacklevel=2)


def _reduce(losses, sample_weight, mask, reduction):
    """Keras's loss reduction: masked positions weigh 0 and leave the mean's denominator."""
    losses = ops.cast(losses, "float32")
    weight = None
    if mask is not None:
        weight = ops.cast(mask, "float32")
        if reduction in ("sum_over_batch_size", "mean"):
            size = ops.cast(ops.size(weight), "float32")
            weight = weight * ops.divide_no_nan(size, ops.sum(weight))
    if sample_weight is not None:
        sw = ops.cast(sample_weight, "float32")
        while len(sw.shape) > len(losses.shape) and sw.shape[-1] == 1:
            sw = ops.squeeze(sw, -1)
        while len(sw.shape) < len(losses.shape):
            sw = ops.expand_dims(sw, -1)
        weight = sw if weight is None else weight * sw
    weighted = losses if weight is None else losses * weight
    if reduction in (None, "none"):
        return weighted
    total = ops.sum(weighted)
    if reduction == "sum":
        return total
    if reduction == "mean_with_sample_weight" and weight is not None:
        return ops.divide_no_nan(total, ops.sum(weight * ops.ones_like(losses)))
    return ops.divide_no_nan(total, ops.cast(ops.size(losses), "float32"))


def _calling_model(compiled: bool = False):
    """The Keras model whose call or training step is running (the model's call, its trainer's
    step or a custom ``train_step`` is a few frames up), or None; with ``compiled``, the first
    such model that is compiled (a model nested in another is not)."""
    import sys

    frame = sys._getframe(2)
    for _ in range(40):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, keras.Model) and (not compiled or getattr(candidate, "compiled", False)):
            return candidate
        frame = frame.f_back
    return None


def _layer_of_model(model, name):
    """The model's own SampledSoftmax layer: the only one, or the one called ``name``."""
    try:
        layers = [x for x in model._flatten_layers(include_self=False) if isinstance(x, SampledSoftmax)]
    except Exception:  # noqa: BLE001 - a model in construction
        return None
    if len(layers) == 1:
        return layers[0]
    return next((x for x in layers if x.name == name), None)


def _bound_layer(owner, what: str, fix: str, y_pred=None) -> SampledSoftmax:
    """The layer a loss or metric belongs to, so that it can never score, nor train, another
    model's layer, whatever the names: the one that produced ``y_pred``; else the
    SampledSoftmax layer of the model whose step calls it; else the one it holds by weak
    reference; else, once restored, the one of its name."""
    produced = None if y_pred is None else get_tensor_attr(y_pred, _OWNER_ATTR)
    layer = produced[0]() if produced is not None else None
    if layer is None:
        model = _calling_model()
        if model is not None:
            layer = _layer_of_model(model, owner._layer_name)
    if layer is None and owner._layer_ref is not None:
        layer = owner._layer_ref()
    if layer is None and owner._layer_name is not None:
        layer = _LAYERS_BY_NAME.get(owner._layer_name)
    if layer is None:
        raise SampledSoftmaxError(
            f"`layer`: {what} is not bound to a SampledSoftmax layer (name {owner._layer_name!r}); {fix}")
    return layer


@keras.saving.register_keras_serializable(package="sampled_softmax")
class SampledSoftmaxLoss(keras.losses.Loss):
    """The loss of a :class:`SampledSoftmax` layer (``layer.loss``): the sampled softmax loss
    on the layer's training output, the exact cross-entropy on its full-softmax output.

    Reduced like every Keras loss (``"sum_over_batch_size"`` by default), honouring the mask of
    ``Embedding(mask_zero=True)`` and the layer's ``ignore_index``.
    """

    def __init__(self, layer=None, *, layer_name=None, reduction="sum_over_batch_size", name="sampled_softmax", **kwargs):
        super().__init__(reduction=reduction, name=name, **kwargs)
        if layer is not None and not isinstance(layer, SampledSoftmax):
            raise TypeError(f"`layer` must be a SampledSoftmax layer; received {type(layer).__name__}")
        # A weak reference, and a method rather than a property to reach it: Keras's saving walks
        # every attribute, and layer -> loss -> layer would be a cycle it does not stop.
        self._layer_ref = weakref.ref(layer) if layer is not None else None
        self._layer_name = layer.name if layer is not None else layer_name

    def get_layer(self, y_pred=None) -> SampledSoftmax:
        """The :class:`SampledSoftmax` layer this loss belongs to (the one that produced
        ``y_pred``, when given)."""
        return _bound_layer(self, "this loss", "compile with loss=layer.loss", y_pred)

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras's Loss.__call__ casts y_true to float; class ids must stay integers.
        in_mask = get_keras_mask(y_pred)
        losses = self.call(y_true, y_pred)
        out_mask = get_keras_mask(losses)
        if in_mask is not None and out_mask is not None:
            mask = ops.logical_and(ops.cast(in_mask, "bool"), ops.cast(out_mask, "bool"))
        else:
            mask = in_mask if in_mask is not None else out_mask
        return _reduce(losses, sample_weight, mask, self.reduction)

    def call(self, y_true, y_pred):
        layer = self.get_layer(y_pred)
        y_true = ops.convert_to_tensor(y_true)
        if layer._is_training_output(y_pred):
            _warn_about_plain_metrics(layer)
            return layer.sampled_loss(y_true, layer._split_training_output(y_pred)[0],
                                      state=get_tensor_attr(y_pred, _STATE_ATTR))
        if _shape(y_pred)[-1] != layer.num_classes:
            raise SampledSoftmaxError(
                f"`y_pred` must be the SampledSoftmax layer's output [..., {layer.num_classes}]; "
                f"received shape {list(_shape(y_pred))}")
        return layer.full_loss(y_true, y_pred)

    def get_config(self):
        return {"layer_name": self._layer_name, "reduction": self.reduction, "name": self.name}


@keras.saving.register_keras_serializable(package="sampled_softmax")
class Perplexity(keras.metrics.Metric):
    """``exp`` of the mean full-softmax cross-entropy of the targets (no label smoothing),
    over the positions a mask or ``sample_weight`` keeps; ``y_pred`` is a
    :class:`SampledSoftmax` output (``output`` names its kind)."""

    def __init__(self, output="probabilities", name="perplexity", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.output = V.check_choice("output", output, OUTPUTS)
        self.total = self.add_variable((), initializer="zeros", name="total", dtype="float32")
        self.count = self.add_variable((), initializer="zeros", name="count", dtype="float32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        mask = get_keras_mask(y_pred)
        logp = _log_probs(y_pred, self.output)
        y = ops.cast(ops.convert_to_tensor(y_true), "int32")
        if len(_shape(y)) == len(_shape(logp)):  # targets [..., 1]
            if _shape(y)[-1] != 1:
                raise SampledSoftmaxError(f"`y_true`: perplexity needs one target per position, [...] or [..., 1]; "
                                          f"received shape {list(_shape(y))}")
            y = ops.squeeze(y, -1)
        nll = -ops.squeeze(ops.take_along_axis(logp, ops.expand_dims(y, -1), axis=-1), -1)
        weight = ops.ones_like(nll)
        if sample_weight is not None:
            weight = weight * ops.cast(sample_weight, "float32")
        if mask is not None:
            weight = weight * ops.cast(ops.reshape(mask, ops.shape(nll)), "float32")
        self.add_nll(nll, weight)

    def add_nll(self, nll, weight):
        """Add per-position negative log-likelihoods with their weights."""
        self.total.assign_add(ops.sum(nll * weight))
        self.count.assign_add(ops.sum(weight))

    def result(self):
        return ops.exp(ops.divide_no_nan(self.total, self.count))

    def get_config(self):
        return {"output": self.output, "name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="sampled_softmax")
class SampledSoftmaxMetric(keras.metrics.Metric):
    """A Keras metric that sees a :class:`SampledSoftmax` layer's full-softmax output during
    ``fit``'s training steps too (``layer.metric(...)`` makes one).

    In training the layer passes its hidden states through (its loss needs them), so a plain
    ``compile(metrics=["accuracy"])`` would score hidden states there. Once a metric of this
    class is made, the layer's training output also carries its full output, computed from the
    same weights without a gradient (``[..., D + V]`` float32: hidden states, then the output;
    one ``[N, D] x [D, V]`` product per step, about a third of a ``Dense`` softmax step), and
    the metric scores that: the numbers ``fit`` prints are exactly those ``evaluate`` gives for
    the same batch and weights. Positions whose target is the layer's ``ignore_index`` are left
    out, in ``fit`` and ``evaluate`` alike.

    Args:
        metric: a ``keras.metrics.Metric`` or its name (``"accuracy"`` means
            ``"sparse_categorical_accuracy"``), or ``"perplexity"`` (:class:`Perplexity`).
        layer: the :class:`SampledSoftmax` layer (or, when restored, ``layer_name``).
    """

    def __init__(self, metric="sparse_categorical_accuracy", layer=None, *, layer_name=None, name=None, dtype=None):
        if layer is not None and not isinstance(layer, SampledSoftmax):
            raise TypeError(f"`layer` must be a SampledSoftmax layer; received {type(layer).__name__}")
        inner = self._resolve(metric, layer)
        super().__init__(name=name or inner.name, dtype=dtype)
        self.metric = inner
        self._layer_ref = weakref.ref(layer) if layer is not None else None
        self._layer_name = layer.name if layer is not None else layer_name
        if layer is None and layer_name is not None:  # restored by load_model: its layer already is
            layer = _LAYERS_BY_NAME.get(layer_name)
        if layer is not None:
            layer._full_in_training = True

    @staticmethod
    def _resolve(metric, layer):
        if isinstance(metric, keras.metrics.Metric):
            return metric
        if isinstance(metric, dict):
            return keras.metrics.deserialize(metric)
        if metric in ("accuracy", "acc"):
            return keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        if metric == "perplexity":
            return Perplexity(output=layer.output_mode if layer is not None else "probabilities")
        if isinstance(metric, str):
            return keras.metrics.get(metric)
        raise TypeError(f"`metric` must be a keras.metrics.Metric or a metric name; received {type(metric).__name__}")

    def get_layer(self, y_pred=None) -> SampledSoftmax:
        """The :class:`SampledSoftmax` layer this metric belongs to (the one that produced
        ``y_pred``, when given)."""
        return _bound_layer(self, "this metric", "make it with layer.metric(...)", y_pred)

    def update_state(self, y_true, y_pred, sample_weight=None):
        layer = self.get_layer(y_pred)
        if layer._is_training_output(y_pred):
            mask = get_keras_mask(y_pred)
            _, y_pred = layer._split_training_output(y_pred)
            if y_pred is None:
                raise SampledSoftmaxError(
                    f"`y_pred`: {self.name} needs the layer's full output in training, but the training step "
                    f"was traced before the metric was made; make metrics with layer.metric(...) before compile")
            if mask is not None:
                set_keras_mask(y_pred, mask)
        y_true = ops.convert_to_tensor(y_true)
        # The targets' shape, checked here with the loss's message (before any framework's own).
        num_true = _label_shape(_shape(y_true), _shape(y_pred)[:-1], layer.num_true)
        if num_true > 1:
            return self._update_several_targets(layer, y_true, y_pred, sample_weight)
        if layer.ignore_index is not None:
            valid = ops.not_equal(y_true, layer.ignore_index)
            keep = ops.cast(valid, "float32")
            if len(_shape(y_true)) == len(_shape(y_pred)):
                keep = ops.squeeze(keep, -1)
            sample_weight = keep if sample_weight is None else ops.cast(sample_weight, "float32") * keep
            y_true = ops.where(valid, y_true, 0)
        self.metric.update_state(y_true, y_pred, sample_weight=sample_weight)

    def _update_several_targets(self, layer, y_true, y_pred, sample_weight):
        """``num_true > 1`` targets per position: accuracy counts a position when its top class
        is one of its targets; perplexity is ``exp`` of the mean of the exact loss, each
        target weighing ``1 / T`` (ignored targets left out)."""
        y = ops.cast(y_true, "int32")
        valid = ops.ones_like(y, "bool") if layer.ignore_index is None else ops.not_equal(y, layer.ignore_index)
        keep = ops.cast(ops.any(valid, axis=-1), "float32")
        mask = get_keras_mask(y_pred)
        if mask is not None:
            keep = keep * ops.cast(ops.reshape(mask, ops.shape(keep)), "float32")
        weight = keep if sample_weight is None else ops.cast(sample_weight, "float32") * keep
        if isinstance(self.metric, keras.metrics.SparseCategoricalAccuracy):
            top = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
            hit = ops.any(ops.logical_and(ops.equal(y, top[..., None]), valid), axis=-1)
            # The top class where it is a target, another class where it is not: the same count.
            target = ops.where(hit, top, ops.mod(top + 1, layer.num_classes))
            return self.metric.update_state(target, y_pred, sample_weight=weight)
        if isinstance(self.metric, Perplexity):
            logp = _log_probs(y_pred, self.metric.output)
            picked = ops.take_along_axis(logp, ops.where(valid, y, 0), axis=-1)
            n = ops.maximum(ops.sum(ops.cast(valid, "float32"), axis=-1), 1.0)
            nll = -ops.sum(ops.where(valid, picked, 0.0), axis=-1) / n
            return self.metric.add_nll(nll, weight)
        raise SampledSoftmaxError(
            f"`metric`: {self.metric.name} takes one target per position, and this layer has "
            f"num_true={layer.num_true}; with several targets head.metric supports 'accuracy' (the top class is "
            f"one of the targets) and 'perplexity'")

    def result(self):
        return self.metric.result()

    def reset_state(self):
        self.metric.reset_state()

    def get_config(self):
        return {"metric": keras.metrics.serialize(self.metric), "layer_name": self._layer_name,
                "name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="sampled_softmax")
class LazyAdam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` that updates only the rows a row-sparse gradient touches.

    On the TensorFlow backend the gradients of ``SampledSoftmax``'s table and of ``Embedding``
    tables are ``tf.IndexedSlices`` over the rows a step read, but ``Adam`` turns them into
    dense updates of every row of the weights and of both moments (for ``V = 100k, D = 1024``
    that is 300M floats written per step, most of a sampled softmax step's time). ``LazyAdam``
    applies Adam's update to those rows only, with their summed gradient; rows a step did not
    touch keep their weights and moments (the semantics of ``torch.optim.SparseAdam`` and of
    TensorFlow Addons' ``LazyAdam``). Dense gradients, and every gradient on the JAX and PyTorch
    backends (which arrive dense), get ``Adam``'s update unchanged. ``weight_decay``, if set, is
    applied densely by Keras before the update.

    Same arguments as ``keras.optimizers.Adam``; ``amsgrad=True`` is not lazy (Adam's update).
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or keras.backend.backend() != "tensorflow":
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        rows, position = tf.unique(gradient.indices)
        g = tf.math.unsorted_segment_sum(tf.cast(gradient.values, dtype), position, tf.shape(rows)[0])
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        alpha = tf.cast(learning_rate, dtype) * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        m_rows = beta_1 * tf.gather(m.value, rows) + (1 - beta_1) * g
        v_rows = beta_2 * tf.gather(v.value, rows) + (1 - beta_2) * tf.square(g)
        self.assign(m, tf.IndexedSlices(m_rows, rows))
        self.assign(v, tf.IndexedSlices(v_rows, rows))
        self.assign_sub(variable, tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))
