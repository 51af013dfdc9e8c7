"""Exact top-``k`` retrieval over a corpus and its recall metric, for evaluating two-tower models."""

from __future__ import annotations


from .. import SampledSoftmaxError
from ._arrays import _dtype, _shape
from ._backend import keras, ops

__all__ = ["CorpusIndex", "RecallAtK"]


class CorpusIndex:
    """Exact top-``k`` retrieval over a whole corpus, for evaluation: ``index(embeddings [N, D],
    ids [N])`` once (e.g. the candidate tower over every item), then ``search(query [B, D], k)``
    returns ``(scores [B, k], ids [B, k])``, best first. Scores are dot products, computed over
    the corpus in chunks of ``chunk_size`` rows (memory ``B * chunk_size``), merging each chunk's
    top ``k``."""

    def __init__(self, chunk_size: int = 65_536):
        from .._validation import check_positive_int

        self.chunk_size = check_positive_int("chunk_size", chunk_size)
        self.embeddings = self.ids = None

    def index(self, embeddings, ids=None) -> "CorpusIndex":
        embeddings = ops.convert_to_tensor(embeddings)
        if len(_shape(embeddings)) != 2:
            raise SampledSoftmaxError(f"`embeddings` must have shape [num_items, dim]; received shape "
                                      f"{list(_shape(embeddings))}")
        n = _shape(embeddings)[0]
        ids = ops.arange(n, dtype="int32") if ids is None else ops.convert_to_tensor(ids)
        if _shape(ids) != (n,):
            raise SampledSoftmaxError(f"`ids` must have shape [{n}]; received shape {list(_shape(ids))}")
        self.embeddings, self.ids = embeddings, ids
        return self

    def search(self, query, k: int = 10):
        from .._validation import check_positive_int

        if self.embeddings is None:
            raise SampledSoftmaxError("the index is empty: call index(embeddings, ids) first")
        k = check_positive_int("k", k)
        n = _shape(self.embeddings)[0]
        if k > n:
            raise SampledSoftmaxError(f"`k` must be <= {n} (the indexed items); received {k}")
        query = ops.convert_to_tensor(query)
        best_scores = best_ids = None
        for start in range(0, n, self.chunk_size):
            chunk = self.embeddings[start:start + self.chunk_size]
            scores = ops.matmul(query, ops.transpose(ops.cast(chunk, _dtype(query))))
            top_scores, top = ops.top_k(scores, min(k, _shape(chunk)[0]))
            top_ids = ops.take(self.ids[start:start + self.chunk_size], top)
            if best_scores is not None:
                top_scores = ops.concatenate([best_scores, top_scores], axis=1)
                top_ids = ops.concatenate([best_ids, top_ids], axis=1)
                top_scores, order = ops.top_k(top_scores, k)
                top_ids = ops.take_along_axis(top_ids, order, axis=1)
            best_scores, best_ids = top_scores, top_ids
        return best_scores, best_ids


@keras.saving.register_keras_serializable(package="sampled_softmax")
class RecallAtK(keras.metrics.Metric):
    """Recall@k over a :class:`CorpusIndex`: the share of queries whose true item id is among the
    ``k`` best of the whole corpus. ``update_state(y_true ids [B], y_pred query embeddings
    [B, D])``; use it in a loop over held-out pairs (``model.evaluate`` passes a model's output,
    so give it the query tower's)."""

    def __init__(self, index: CorpusIndex, k: int = 10, name: str | None = None, **kwargs):
        super().__init__(name=name or f"recall_at_{k}", **kwargs)
        self.corpus, self.k = index, k
        self.hits = self.add_variable(shape=(), initializer="zeros", name="hits")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        _, top = self.corpus.search(y_pred, self.k)
        y_true = ops.reshape(ops.cast(ops.convert_to_tensor(y_true), _dtype(top)), (-1, 1))
        hit = ops.cast(ops.any(top == y_true, axis=1), "float32")
        weight = ops.ones_like(hit) if sample_weight is None else ops.cast(ops.reshape(sample_weight, (-1,)),
                                                                            "float32")
        self.hits.assign(self.hits + ops.sum(hit * weight))
        self.count.assign(self.count + ops.sum(weight))

    def result(self):
        return ops.divide_no_nan(self.hits, self.count)

    def reset_state(self):
        self.hits.assign(0.0)
        self.count.assign(0.0)
