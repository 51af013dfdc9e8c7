"""The ``SampledSoftmax`` output layer, in ``keras.ops`` (backend code lives in :mod:`._backend`)."""

from __future__ import annotations

import warnings
import weakref
from typing import TYPE_CHECKING

import numpy as np

from .. import SampledSoftmaxError
from .. import _validation as V
from ..samplers import unigram_weights
from ._backend import (
    _check_label_values, _concrete_numpy, _in_stateless_scope, _in_symbolic_scope, _observe_label_order,
    _stores_state_on_outputs, _sum_over_replicas, _take_rows, get_tensor_attr, keras, ops, set_keras_mask,
    set_tensor_attr,
)
from ._binding import _OWNER_ATTR, _STATE_ATTR, _check_compiled_loss, _find_upstream_layer, register
from . import table_optim
from ._stages import candidate_columns, corrected_logits, sigmoid_head, softmax_head
from .samplers import DRAWS, SAMPLERS, SavesSeedState, draw, expected_counts, uniforms

if TYPE_CHECKING:
    from .losses import SampledSoftmaxLoss
    from .metrics import SampledSoftmaxMetric

OUTPUTS = ("probabilities", "logits", "log_probabilities")


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


def _log_probs(y_pred, output_mode):
    """Log-probabilities (float32) from a :class:`SampledSoftmax` output of kind ``output_mode``."""
    z = ops.cast(y_pred, "float32")
    if output_mode == "probabilities":
        return ops.log(z)
    if output_mode == "logits":
        return ops.log_softmax(z, axis=-1)
    return z


_FROZEN_WARNED: weakref.WeakSet = weakref.WeakSet()


def _warn_counts_frozen(layer) -> None:
    """Once per layer: the default sampler's counts cannot learn in this train step."""
    if layer in _FROZEN_WARNED:
        return
    _FROZEN_WARNED.add(layer)
    warnings.warn(
        f"SampledSoftmax {layer.name!r}: the default sampler, 'learned_unigram', adds each step's targets to its "
        f"counts in the loss, and this loss runs outside the model's stateless call (a custom JAX train_step), "
        f"where no variable can be updated: it draws from its counts as they are (uniform for a new layer). To "
        f"learn them, compute the loss inside keras.StatelessScope(state_mapping=...) and return the updated "
        f"counts; or choose the sampler (sampler='unigram' with the label counts, 'uniform', or 'log_uniform' for "
        f"a vocabulary sorted by decreasing frequency).", UserWarning, stacklevel=3)


@keras.saving.register_keras_serializable(package="sampled_softmax")
class SampledSoftmax(SavesSeedState, keras.layers.Layer):
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
        sampler: ``"learned_unigram"`` (the default, as
            ``tf.random.learned_unigram_candidate_sampler``: counts start at 1 per class and
            each training step adds its targets after drawing, ignored targets excepted; the
            counts are a non-trainable float32 weight, saved with the model, exact up to 2**24
            per class and rounded, by at most 6e-8 relative, beyond; it fits any vocabulary
            order), ``"log_uniform"`` (Zipf, TensorFlow's default: only for class ids sorted by
            decreasing frequency; on another order it can double the perplexity, and a
            :class:`~sampled_softmax.VocabularyOrderWarning` says so), ``"uniform"`` or
            ``"unigram"`` (needs ``unigrams``). ``benchmarks/sampler_study.py`` measures the choice.
        draw: ``"unique_exact"`` (the default; ``S`` draws, repeats become padding removed
            from the normalizer, ``E = 1 - (1 - Q)^S`` exact) or ``"with_replacement"``
            (``E = S Q``; the default with ``exclude_true``).
            TensorFlow's ``unique=True`` needs a data-dependent loop and is offered by the
            TensorFlow and PyTorch front ends.
        unigrams: counts or probabilities of ids ``num_reserved_ids .. V - 1`` for
            ``sampler="unigram"`` (kept as a weight of the layer, saved with the model).
        distortion, num_reserved_ids: as ``tf.random.fixed_unigram_candidate_sampler``.
        num_true: labels per position (targets ``[..., num_true]``); each gets ``1 / T``.
        use_bias: learn a bias per class.
        remove_accidental_hits: remove candidates equal to a true label from that row. Default
            None: the loss's own default, True for sampled softmax, False for NCE and negative
            sampling (as ``tf.nn.nce_loss``).
        subtract_log_q: subtract ``log E(k)`` (sampled softmax). ``False`` gives negative
            sampling's uncorrected logits.
        label_smoothing: ``eps`` in ``[0, 1]``, spread over each row's kept columns in training
            and over all ``V`` classes in evaluation.
        ignore_index: targets equal to it contribute no loss and are left out of the mean (like
            ``Embedding(mask_zero=True)``'s mask, which the layer also honours). Default -100, as
            the PyTorch and Flax layers (and ``F.cross_entropy``); None ignores no target.
        tied_to: an ``Embedding(V, D)`` layer whose table is also the class table (then the
            layer owns only the bias). The embedding must feed this layer in the same model.
        output: what the layer returns outside training: ``"probabilities"`` (default, like
            ``Dense(V, activation="softmax")``), ``"logits"`` or ``"log_probabilities"``.
        seed: seed of the layer's candidate draws (a ``keras.random.SeedGenerator``, saved
            with the layer's weights).
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer: as ``Dense``.
        loss: the training objective of :attr:`loss` (the loss object): ``"sampled_softmax"``
            (default), ``"nce"`` (noise-contrastive estimation, ``tf.nn.nce_loss``'s sigmoid head)
            or ``"negative_sampling"`` (NCE's head without ``- log E(k)``). ``label_smoothing``
            must be 0 with the last two. Evaluation is the exact softmax for all three.
        exclude_true: the rejection estimator (the labels kept out of the sample) instead of
            TensorFlow's: candidates equal to a target are always rejected, targets get no
            correction, a kept candidate gets ``-log(k_i q(c) / (1 - Q_i))`` (``k_i`` the row's
            candidates left, ``Q_i`` the total ``q`` of its distinct kept targets). Needs
            ``draw="with_replacement"`` and ``loss="sampled_softmax"``.

        table_optimizer: :class:`~sampled_softmax.keras.RowSGD`, :class:`~sampled_softmax.keras.RowAdagrad`
            or :class:`~sampled_softmax.keras.RowAdam`: the layer's loss updates the rows each training step
            touched itself (the table and bias are then not trainable weights; the rest of the model keeps
            the model's optimizer). See :mod:`sampled_softmax.keras.table_optim`.

    Shape:
        - Input: ``[..., D]`` (``[B, D]`` or sequences ``[B, T, D]``).
        - Output: ``[..., V]`` outside training; the input itself in training.
        - Targets (``y`` of ``fit``/``evaluate``): integer ``[...]``, ``[..., 1]`` or ``[..., num_true]``.
    """

    def __init__(self, num_classes, num_sampled, *, sampler=None, draw=None,
                 unigrams=None, distortion=1.0, num_reserved_ids=0, num_true=1, use_bias=True,
                 remove_accidental_hits=None, subtract_log_q=True, label_smoothing=0.0,
                 ignore_index=-100, tied_to=None, output="probabilities", seed=None,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, loss="sampled_softmax", exclude_true=False,
                 table_optimizer=None, **kwargs):
        tied_name = kwargs.pop("tied_to_name", None)
        unigrams_in_weights = kwargs.pop("unigrams_in_weights", False)
        full_in_training = bool(kwargs.pop("full_output_in_training", False))
        super().__init__(**kwargs)
        self.num_classes = V.check_positive_int("num_classes", num_classes)
        # None: the default, learned_unigram; a custom JAX train_step, where its counts cannot
        # be updated, then draws from the counts as they are, with a warning, rather than failing.
        self._sampler_given = sampler is not None
        self.sampler = V.check_choice("sampler", "learned_unigram" if sampler is None else sampler, SAMPLERS)
        settings = V.check_output_layer(loss=loss, label_smoothing=label_smoothing,
                                         remove_accidental_hits=remove_accidental_hits, ignore_index=ignore_index,
                                         exclude_true=exclude_true)
        self.objective, self.label_smoothing = settings.loss, settings.label_smoothing
        self.exclude_true, self.remove_accidental_hits = settings.exclude_true, settings.remove_accidental_hits
        draw = ("with_replacement" if self.exclude_true else "unique_exact") if draw is None else draw
        self.draw = V.check_choice("draw", draw, DRAWS)
        if self.exclude_true:
            V.check_exclusion_draw(self.draw)
        self.num_true = V.check_positive_int("num_true", num_true)
        self.use_bias = bool(use_bias)
        self.subtract_log_q = bool(subtract_log_q)
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
        self._table_optimizer = table_optim.get(table_optimizer)
        if self._table_optimizer is not None:
            if self._tied_name is not None:
                raise SampledSoftmaxError("`table_optimizer` needs the layer's own table: a tied table (`tied_to`) is "
                                          "trained by the model's optimizer too, which would update it a second time")
            if self.kernel_regularizer is not None or self.bias_regularizer is not None:
                raise SampledSoftmaxError("`kernel_regularizer` and `bias_regularizer` cannot be used with a "
                                          "table_optimizer (the table is outside the model's optimizer, which "
                                          "applies a regularizer's gradient)")
        self.supports_masking = True
        self._training_output = False
        # Set once a SampledSoftmaxMetric binds to the layer: training outputs then carry the
        # full output too (see `call`).
        self._full_in_training = full_in_training  # restored with the layer: its metrics are restored after it
        register(self)

    # -- the class table -------------------------------------------------------------------

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise SampledSoftmaxError(f"`inputs` last dimension must be known; received shape {list(input_shape)}")
        self.input_dim = int(dim)
        # With a table_optimizer the table is the loss's to update: outside the trainable set.
        trainable = self._table_optimizer is None
        if self._tied_name is None:
            self.kernel = self.add_weight(
                name="kernel", shape=(self.num_classes, self.input_dim), initializer=self.kernel_initializer,
                regularizer=self.kernel_regularizer, trainable=trainable)
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.num_classes,), initializer=self.bias_initializer,
                                        regularizer=self.bias_regularizer, trainable=trainable)
        if self.sampler == "unigram":
            # Sampling state is float32 under any dtype policy (autocast=False: never read in
            # a mixed policy's bfloat16, whose counts stop at 256 and whose CDF has 8 bits).
            self.sampling_cdf = self.add_weight(name="sampling_cdf", shape=(self.num_classes,), dtype="float32",
                                                initializer="zeros", trainable=False, autocast=False)
            self.sampling_probs = self.add_weight(name="sampling_probs", shape=(self.num_classes,), dtype="float32",
                                                  initializer="zeros", trainable=False, autocast=False)
            if self._unigrams is not None:
                cdf, probs = self._tables_from_weights(self._unigrams)
                self.sampling_cdf.assign(cdf)
                self.sampling_probs.assign(probs)
        if self.sampler == "learned_unigram":
            # Under a tf.distribute strategy every replica adds all replicas' targets (see
            # sampled_loss), so the copies agree and their mean is the count.
            self.sampling_counts = self.add_weight(name="sampling_counts", shape=(self.num_classes,), dtype="float32",
                                                   initializer="ones", trainable=False, aggregation="mean",
                                                   autocast=False)
        if self._table_optimizer is not None:
            # Not tracked again: add_weight tracks the variables already.
            object.__setattr__(self, "_table_state", table_optim.make_state(self, self._table_optimizer))

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
                 "u": uniforms(self.num_sampled, self.seed_generator)}
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
        if training and _stores_state_on_outputs():
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
        from .losses import SampledSoftmaxLoss

        if self._bound_loss is None:  # one object, so that walks over the model terminate
            object.__setattr__(self, "_bound_loss", SampledSoftmaxLoss(self))
        return self._bound_loss

    def metric(self, metric="sparse_categorical_accuracy", *, name=None) -> "SampledSoftmaxMetric":
        """A metric for ``compile(metrics=[...])`` that sees the full softmax in ``fit`` too.

        ``metric``: a Keras metric object or name (``"accuracy"`` means sparse categorical
        accuracy), or ``"perplexity"``. See :class:`SampledSoftmaxMetric`.
        """
        from .metrics import SampledSoftmaxMetric

        return SampledSoftmaxMetric(metric, self, name=name)

    # -- sampling --------------------------------------------------------------------------

    def _value(self, name, state):
        return ops.convert_to_tensor(getattr(self, name)) if state is None else state[name]

    def sample(self, labels, state=None):
        """Candidates ``[S]`` (int32), expected counts of ``labels`` and of the candidates
        (float32, padding slots of ``draw="unique_exact"`` at ``inf``). ``state``: values read
        in the layer's call (see ``_binding._STATE_ATTR``), else the layer's own."""
        u = uniforms(self.num_sampled, self.seed_generator) if state is None else state["u"]
        tables = {}
        if self.sampler == "unigram":
            tables = dict(cdf=self._value("sampling_cdf", state), probs=self._value("sampling_probs", state))
        elif self.sampler == "learned_unigram":
            tables = dict(counts=self._value("sampling_counts", state))
        cand, probs = draw(self.sampler, u, self.num_classes, **tables)
        true_count, samp_count = expected_counts(self.draw, self.num_sampled, cand, probs(labels), probs(cand))
        return cand, true_count, samp_count

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

    def sampled_loss(self, y_true, inputs, sampled_values=None, state=None, pieces=None):
        """Per-position sampled softmax loss ``[...]`` (float32) from hidden states ``inputs
        [..., D]`` and targets; ``sampled_values`` overrides the layer's own draw; ``state``
        (values read in the layer's call, see ``_STATE_ATTR``) the layer's variables.
        ``pieces``: a dict to receive what the fused table step needs (:meth:`table_step`)."""
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
            if self.sampler == "log_uniform":
                _observe_label_order(y2, valid, self.num_classes)
            cand, true_count, samp_count = self.sample(y_safe, state)
            if self.sampler == "learned_unigram":
                frozen = state is not None and not _in_stateless_scope()
                if frozen and self._sampler_given:
                    raise SampledSoftmaxError(
                        "`sampler`='learned_unigram' adds each step's targets to its counts in the loss, and this "
                        "loss runs outside the model's stateless call (a custom JAX train_step), where no "
                        "variable can be updated: compute the loss inside keras.StatelessScope(state_mapping=...) "
                        "and return its updated counts, or use another sampler")
                if frozen:
                    _warn_counts_frozen(self)
                else:
                    # After drawing, as TensorFlow's learned sampler; ignored targets are not counted.
                    seen = ops.segment_sum(ops.reshape(ops.cast(valid, "float32"), (-1,)),
                                           ops.reshape(y_safe, (-1,)), num_segments=self.num_classes)
                    self.sampling_counts.assign_add(_sum_over_replicas(seen))
        else:
            cand, true_count, samp_count = self._checked_sampled_values(sampled_values, y2, valid)
            cand = ops.cast(cand, "int32")
            true_count = ops.cast(true_count, "float32")
            if T > 1 and _shape(true_count)[-1:] == (1,):  # [batch, 1] broadcast over the targets, as tf.nn does
                true_count = ops.broadcast_to(true_count, (ops.shape(y2)[0], T))
            true_count = ops.reshape(true_count, (-1, T))
            samp_count = ops.cast(samp_count, "float32")
        ids, log_q, keep = candidate_columns(y2, valid, cand, true_count, samp_count,
                                             remove_accidental_hits=self.remove_accidental_hits,
                                             subtract_log_q=self.subtract_log_q
                                             and self.objective != "negative_sampling",
                                             exclude_true=self.exclude_true)
        table = self.table if state is None else state["table"]
        tables = [table] + ([self.bias if state is None else state["bias"]] if self.use_bias else [])
        # Sparse rows on TF; a tied table's gradient is dense there (see _take_rows).
        gathered = [ops.cast(t, "float32") for t in _take_rows(tables, ids, (0,) if self._tied_name else ())]
        rows, bias_rows = gathered[0], (gathered[1] if self.use_bias else None)
        logits = corrected_logits(h, rows, bias_rows, log_q, keep, T)
        if self.objective == "sampled_softmax":
            loss, live = softmax_head(logits, keep, T, self.label_smoothing)
        else:
            loss, live = sigmoid_head(logits, keep, T)
        loss = self._nan_if_out_of_range(loss, y2, valid)
        if pieces is not None:
            pieces.update(h=h, ids=ids, logits=logits, keep=keep, live=live, num_true=T, valid=valid)
        return self._with_padding_mask(ops.reshape(loss, ops.shape(inputs)[:-1]), live)

    def table_step(self, pieces: dict, position_weights) -> None:
        """The fused table optimizer's step for one loss call (:func:`.table_optim.table_step`)."""
        table_optim.table_step(self, pieces, position_weights)

    @property
    def table_optimizer(self):
        """The fused table optimizer (:mod:`.table_optim`), or None."""
        return self._table_optimizer

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
                y_now = _concrete_numpy(y2)
                if self.exclude_true and y_now is not None:
                    V.check_exclusion_counts(y_now, arrays[3], *arrays[:3])
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
        loss = self._nan_if_out_of_range(loss, y2, valid)
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

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes, num_sampled=self.num_sampled,
            sampler=self.sampler if self._sampler_given else None, draw=self.draw, distortion=self.distortion, num_reserved_ids=self.num_reserved_ids,
            num_true=self.num_true, use_bias=self.use_bias,
            remove_accidental_hits=self.remove_accidental_hits, subtract_log_q=self.subtract_log_q,
            label_smoothing=self.label_smoothing, ignore_index=self.ignore_index,
            output=self.output_mode, seed=self.seed, loss=self.objective, exclude_true=self.exclude_true,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
            bias_regularizer=keras.regularizers.serialize(self.bias_regularizer),
        )
        if self._tied_name is not None:
            config["tied_to_name"] = self._tied_name
        if self._table_optimizer is not None:
            config["table_optimizer"] = keras.saving.serialize_keras_object(self._table_optimizer)
        if self._full_in_training:
            config["full_output_in_training"] = True
        if self.sampler == "unigram":
            # The sampling table is a (non-trainable) weight, saved with the others.
            config["unigrams_in_weights"] = True
        return config
