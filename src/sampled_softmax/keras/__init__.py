r"""Keras 3 front end: a ``SampledSoftmax`` output layer for ``compile``/``fit``/``predict``.

The layer, loss and metrics are written with ``keras.ops`` and ``keras.random``, so they run on
the TensorFlow, JAX and PyTorch backends. Imports Keras (and, through it, the backend Keras is configured for).

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

For two-tower retrieval, :class:`InBatchSoftmax` and :class:`InBatchSoftmaxLoss`, with mixed
negatives from :class:`CorpusSampler` and :func:`mixed_negatives` (:mod:`.retrieval`).

Files: :mod:`.layers` (the layer), :mod:`.losses`, :mod:`.metrics`, :mod:`.optimizers`,
:mod:`.samplers` (draws in ``keras.ops``); every backend branch and private Keras access is in
``_backend``, the layer-to-loss binding in ``_binding``.
"""

from .. import SampledSoftmaxError
from ..samplers import LOSSES
from .layers import OUTPUTS, SampledSoftmax
from .losses import SampledSoftmaxLoss
from .metrics import Perplexity, SampledSoftmaxMetric
from .optimizers import LazyAdam
from .table_optim import RowAdagrad, RowAdam, RowSGD
from .frequency import CountMinFrequency, StreamingFrequency
from .index import CorpusIndex, RecallAtK
from .retrieval import CorpusSampler, InBatchSoftmax, InBatchSoftmaxLoss, MixedNegatives, mixed_negatives
from .samplers import DRAWS, SAMPLERS

__all__ = ["SampledSoftmax", "SampledSoftmaxLoss", "SampledSoftmaxMetric", "Perplexity", "LazyAdam",
           "RowSGD", "RowAdagrad", "RowAdam",
           "InBatchSoftmax", "InBatchSoftmaxLoss", "StreamingFrequency", "CountMinFrequency", "CorpusIndex",
           "RecallAtK", "CorpusSampler", "MixedNegatives", "mixed_negatives",
           "SampledSoftmaxError", "SAMPLERS", "DRAWS", "OUTPUTS", "LOSSES"]
