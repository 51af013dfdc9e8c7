"""The traced route of ``sampled_softmax_loss`` (torch.compile, torch.export, meta or fake
tensors): the same checks of types, shapes and settings as the eager routes; every step that
reads values (label and ``sampled_values`` checks, the draw, the masks, the loss) is one of the
custom operators of :mod:`._ops`. A ``generator`` or a sampler of your own is not an
operator's argument: under torch.compile such a call runs eagerly (a graph break)."""

from __future__ import annotations

import torch

from .. import SampledSoftmaxError
from .. import _validation as V
from .._validation import check_num_sampled
from . import _ops
from ._autograd import softmax_head
from ._prepare import LossCall, _check_sparse_bias, _check_tensor, _compute_dtype, _prepare, _true_count_rows
from ._routes import _finish, route
from .samplers import check_generator, make_sampler, sampler_tables

# Under torch.compile, a call the operators cannot express runs eagerly: a graph break here.
_eager_route = torch.compiler.disable(route)


def traced_route(call: LossCall):
    if call.head is not softmax_head:
        raise NotImplementedError("nce_loss and negative_sampling_loss do not take meta or fake tensors yet "
                                  "(torch.export, FakeTensorMode): run them on real tensors")
    if call.table_optimizer is not None:
        if torch.compiler.is_compiling():
            return _eager_route(call)
        raise NotImplementedError("a table_optimizer does not take meta or fake tensors (torch.export, "
                                  "FakeTensorMode): its step updates the table in place; run it on real tensors")
    if call.exclude_true or call.noise != "shared":
        if torch.compiler.is_compiling():
            return _eager_route(call)
        raise NotImplementedError("sampled_softmax_loss with exclude_true=True or noise='per_example' does not "
                                  "take meta or fake tensors yet (torch.export, FakeTensorMode): run it on real "
                                  "tensors")
    sampler, sampled_values, generator = call.sampler, call.sampled_values, call.generator
    table = None if sampled_values is not None or isinstance(sampler, str) else sampler_tables(sampler)
    custom_sampler = sampled_values is None and not isinstance(sampler, str) and table is None
    if (generator is not None or custom_sampler) and torch.compiler.is_compiling():
        return _eager_route(call)
    check_generator(generator)
    _check_sparse_bias(call.biases, call.sparse)
    p = _prepare(call, check_values=False)
    h, num_classes, num_sampled = p.h, p.num_classes, call.num_sampled
    if call.sparse and len(p.shards) > 1:
        raise SampledSoftmaxError(
            "`sparse=True` with sharded `weights` cannot be traced (torch.compile, torch.export, meta tensors): "
            "each shard's rows are a data-dependent selection. Use one table, or sparse=False")
    n, t = p.y.shape
    kind, draw, support, weights_t, cdf, counts = "log_uniform", "unique", num_classes, None, None, None
    cand = true_count = samp_count = None
    if sampled_values is None:
        if isinstance(sampler, str):
            V.check_choice("sampler", sampler, ("uniform", "log_uniform"))
            kind = sampler
        else:
            make_sampler(sampler, num_classes)  # the eager call's check of the sampler's classes
            kind, draw, support, weights_t, cdf, counts = table
        check_num_sampled(num_sampled, num_classes, unique=draw == "unique", support=support)
    else:
        cand, true_count, samp_count = V.check_sampled_values_triple(sampled_values)
        cand, true_count, samp_count = (torch.as_tensor(cand, device=h.device), torch.as_tensor(
            true_count, device=h.device), torch.as_tensor(samp_count, device=h.device))
        _check_tensor("sampled_values[0]", cand, floating=False)
        V.check_sampled_values_shapes(tuple(cand.shape), tuple(true_count.shape), tuple(samp_count.shape),
                                      num_sampled, n, t)
        cand, true_count = cand.long(), _true_count_rows(true_count, n, t)
    update_counts = kind == "learned_unigram" and sampler.training
    ids, log_q, removed, keep = _ops.columns(
        p.y.long(), weights_t, cdf, counts, cand, true_count, samp_count, num_sampled=num_sampled,
        num_classes=num_classes, kind=kind, draw=draw, support=support, update_counts=update_counts,
        remove_accidental_hits=bool(call.remove_accidental_hits),
        subtract_log_q=bool(call.subtract_log_q), ignore_index=call.ignore_index, dtype=_compute_dtype(h.dtype))
    loss, logp, _, _, _ = _ops.loss(h, p.shards, p.biases, ids, log_q, keep, removed, num_true=t,
                                    offsets=list(p.offsets), strategy=call.partition_strategy,
                                    label_smoothing=p.label_smoothing, sparse=bool(call.sparse),
                                    implementation=call.implementation)
    return _finish(loss, logp, keep, call.reduction, p.lead, call.return_log_prob)
