"""The one router of the PyTorch sampled losses, and the routes it picks.

Every sampled loss (``sampled_softmax_loss``, ``nce_loss``, ``negative_sampling_loss`` and the
vocabulary-parallel loss) describes its call once, as a :class:`~._prepare.LossCall`, and hands
it to :func:`route`. The router turns autocast off (the loss is float32 or wider), sends a
traced call (torch.compile, torch.export, meta tensors) to :mod:`._traced` and a
vocabulary-parallel one to :mod:`.distributed.vocab_parallel`, then picks one of the eager
routes, :mod:`._dispatch` deciding which code runs:

* :func:`_compiled_draw`: the compiled core draws and computes the loss in one call;
* :func:`_general`: every check, then the three stages (candidates, corrected logits, head)
  on the compiled core or the Python autograd Function;
* :func:`_per_example`: noise drawn for each example (``noise="per_example"``).
"""

from __future__ import annotations

import functools
import math
import re

import torch

from .. import SampledSoftmaxError
from .. import _validation as V
from .._validation import check_num_sampled
from ..samplers import NOISE, DrawKind, unique_draw_error, unique_draw_limit
from . import _dispatch, _ops, _order
from ._autograd import FusedCoreLoss, HeadKind, PerExampleLoss, SampledLoss, sigmoid_head, softmax_head
from ._columns import candidate_columns, excluded_hits, exclusion_correction, row_excluded_hits
from ._dispatch import IMPLEMENTATIONS
from ._prepare import (
    LossCall, Prepared, _autocast_on, _check_labels_can_be_drawn, _check_not_transformed, _check_sampled_values,
    _check_sparse_bias, _compute_dtype, _prepare,
)
from ._rows import _Spec
from .samplers import CandidateSampler, LearnedUnigramSampler, UnigramSampler, check_generator, make_sampler
from .table_optim import TableOptimizer, check_table_step



@functools.lru_cache(maxsize=64)
def _named_sampler(name: str, num_classes: int) -> CandidateSampler:
    # Stateless samplers by name are built once: constructing a Module costs more than a draw.
    return make_sampler(name, num_classes)


def _sampler_for(sampler, num_classes):
    return _named_sampler(sampler, num_classes) if isinstance(sampler, str) else make_sampler(sampler, num_classes)


@functools.lru_cache(maxsize=64)
def _named_sampler_with_replacement(name: str, num_classes: int) -> CandidateSampler:
    return type(_named_sampler(name, num_classes))(num_classes, draw="with_replacement")


def _with_replacement_sampler(sampler, num_classes, setting="exclude_true=True"):
    """The sampler of ``exclude_true`` and of per-example noise: a name draws with replacement;
    a module must (its expected counts must be ``S q``)."""
    if isinstance(sampler, str):
        _named_sampler(sampler, num_classes)  # the usual check of the name
        return _named_sampler_with_replacement(sampler, num_classes)
    sampler = make_sampler(sampler, num_classes)
    if sampler.draw != "with_replacement":
        raise SampledSoftmaxError(
            f"`sampler` must draw 'with_replacement' with {setting} (its expected counts must be S q); "
            f"received a sampler with draw={sampler.draw!r}")
    return sampler


def _reduce(per_row: torch.Tensor, live: torch.Tensor | None, reduction: str, lead) -> torch.Tensor:
    if reduction == "none":  # a view costs an autograd node; a loss of the right shape needs none
        return per_row if per_row.shape == lead else per_row.reshape(lead)
    if reduction == "sum":
        return per_row.sum()
    count = per_row.new_tensor(per_row.numel()) if live is None else live.sum().to(per_row.dtype)
    return per_row.sum() / count


def _finish(loss, logp, valid, reduction, lead, return_log_prob):
    live = None if valid is None else valid.any(1)
    loss = _reduce(loss, live, reduction, lead)
    if return_log_prob:
        return loss, logp.reshape(lead)
    return loss


def route(call: LossCall):
    """Run ``call`` on its route. A sampler that starts every draw with a collective
    (``DistributedLearnedUnigramSampler``) must hear of a call that fails on one rank before
    its draw, or the other ranks would wait in that collective: the failing rank takes part in
    the agreement with its error."""
    sampler = call.sampler
    # A vocabulary-parallel call agrees on its own errors, before its draw.
    if call.group is not None or not getattr(sampler, "_collective", False):
        return _route(call)
    before = sampler._agreements
    try:
        return _route(call)
    except Exception as e:
        if sampler._agreements == before and call.sampled_values is None:
            sampler._agree_call(e)  # raises e here, and the same error on every other rank
        raise


# The sigmoid head has no custom operator yet: under torch.compile its losses run eagerly.
route_eagerly = torch.compiler.disable(route)


def _route(call: LossCall):
    V.check_choice("implementation", call.implementation, IMPLEMENTATIONS)
    V.check_choice("noise", call.noise, NOISE)
    inputs = call.inputs
    if isinstance(inputs, torch.Tensor) and _autocast_on(inputs.device.type):
        # As F.cross_entropy under autocast, the loss is computed (and returned) in float32
        # whatever the autocast dtype, on every route, so forward and backward agree on dtypes.
        with torch.autocast(inputs.device.type, enabled=False):
            return _route(call)
    compiled_head = call.head.name in HeadKind.__members__  # gBCE's head is the Python route's
    if call.excluded_ids is not None or not compiled_head:
        _check_python_only(call)
    if call.group is not None:  # it checks the call itself, every rank hearing of any error
        from .distributed.vocab_parallel import sampled_route

        return sampled_route(call)
    if _ops.traced(inputs):
        from ._traced import traced_route

        return traced_route(call)
    _check_not_transformed(inputs, call.weights)
    if _order.uses_log_uniform(call.sampler, call.sampled_values):
        _order.observe(call.labels, call.num_classes)
    V.check_bool("exclude_true", call.exclude_true)
    if call.noise == "per_example":
        if call.sampled_values is not None:
            raise SampledSoftmaxError("`sampled_values` cannot be given with noise='per_example' (the candidates are "
                                      "drawn for each example); pass noise='shared' to give shared candidates")
        if call.return_log_prob:
            raise SampledSoftmaxError("`return_log_prob=True` is not offered with noise='per_example'")
        return _per_example(call)
    if call.exclude_true:
        return _general(call._replace(remove_accidental_hits=True))
    if (call.implementation != "python" and call.excluded_ids is None and compiled_head
            and _dispatch.draw_obstacle(call.sampler, call.sampled_values) is None):
        result = _compiled_draw(call)
        if result is not None:
            _dispatch.record("compiled_draw")
            return result
    return _general(call)


def _general(call: LossCall):
    """Every check, then the three stages with the call's head: on the compiled core where it
    applies (``"compiled"`` route), else the Python autograd Function (``"python"``)."""
    check_generator(call.generator)
    _check_sparse_bias(call.biases, call.sparse)
    p = _prepare(call)
    table_step = None if call.table_optimizer is None else _table_step(call, p)
    h, valid, exclude_true, subtract_log_q = _inputs(p.h, table_step), p.valid, call.exclude_true, call.subtract_log_q
    y = p.y.long()
    n, t = y.shape
    ext = _dispatch.compiled(call.implementation, _loss_obstacle(p))
    excluded = _excluded_rows(call, p)  # checked before any draw
    if call.sampled_values is None:
        sampler = (_with_replacement_sampler(call.sampler, p.num_classes) if exclude_true
                   else _sampler_for(call.sampler, p.num_classes))
        # The raw labels: a learned sampler must not count ignored labels (as class 0). It learns
        # them after the checks below: a call that fails leaves its counts as they were.
        ignored = None if valid is None else call.ignore_index
        learns = type(sampler).forward is CandidateSampler.forward
        if learns:
            cand, true_count, samp_count = sampler._draw_values(y, call.num_sampled, call.generator, ignored,
                                                                update=False)
        else:
            cand, true_count, samp_count = sampler(y, call.num_sampled, generator=call.generator,
                                                   ignore_index=ignored)
        padded = sampler.draw == "unique_exact"
        # A learned sampler's counts may hold zeros (a loaded state): its support is not
        # tracked, so its labels are checked (one comparison of [N, T] counts).
        if subtract_log_q and (sampler.support < sampler.num_classes or isinstance(sampler, LearnedUnigramSampler)):
            _check_labels_can_be_drawn(y, valid, true_count, sampler)
        if learns and sampler.training:
            sampler.update(y if valid is None else torch.where(valid, y, 0), valid)
    else:
        cand, true_count, samp_count, padded = _check_sampled_values(call.sampled_values, call.num_sampled,
                                                                     p.num_classes, y, valid, h.device)
    y_safe = y if valid is None else torch.where(valid, y, 0)
    cdt = _compute_dtype(h.dtype)
    ids, log_q, removed = candidate_columns(y_safe, valid, cand, true_count, samp_count, cdt,
                                           remove_accidental_hits=call.remove_accidental_hits,
                                           subtract_log_q=subtract_log_q, padded=padded)
    if excluded is not None:
        hits = excluded_hits(cand.to(h.device), excluded)
        removed = hits if removed is None else removed | hits.to(removed.device)
    row_log_q = None
    if exclude_true and subtract_log_q:
        row_log_q = exclusion_correction(y_safe, valid, true_count, removed, cand.shape[0], cdt)
        log_q = torch.cat([torch.zeros_like(log_q[: n * t]), log_q[n * t:]])
    head = call.head
    if ext is not None:
        _dispatch.record("compiled")
        core_args = (h, p.shards[0], h.new_empty(0) if p.biases is None else p.biases, ids, log_q,
                     h.new_empty(0, dtype=torch.bool) if removed is None else removed)
        if table_step is None:
            loss = ext.sampled_softmax_core(*core_args, int(HeadKind[head.name]), bool(call.sparse))
        else:
            loss = FusedCoreLoss.apply(ext, int(HeadKind[head.name]), table_step, *core_args)
        # One label, no smoothing: the softmax loss is -log p(target); the sigmoid head has no
        # estimate of it (zeros, as on the Python path).
        logp = -loss if head is softmax_head else torch.zeros_like(loss)
    else:
        _dispatch.record("python")
        spec = _Spec(t, p.offsets, call.partition_strategy, p.label_smoothing, bool(call.sparse), table_step)
        loss, logp = SampledLoss.apply(head, h, ids, log_q, valid, removed, row_log_q, spec, p.biases, *p.shards)
    return _finish(loss, logp, valid, call.reduction, p.lead, call.return_log_prob)


def _per_example(call: LossCall):
    """``num_sampled`` noise classes drawn for each example (``noise="per_example"``): each row's
    own columns ``[N, T + k]`` (its labels, then its noise) and the call's head. Negative
    sampling (word2vec's) runs on the compiled core where it applies (``"compiled"`` route); the
    rest is :class:`PerExampleLoss`. With ``subtract_log_q`` a column's correction is
    ``log(k q(c))`` (the expected count of ``k`` draws with replacement), with ``exclude_true``
    the rejection estimator's."""
    check_generator(call.generator)
    _check_sparse_bias(call.biases, call.sparse)
    p = _prepare(call)
    if len(p.shards) > 1:
        raise SampledSoftmaxError("`weights` must be one [num_classes, dim] table with noise='per_example'; "
                                  f"received {len(p.shards)} shards")
    # A sampler given by name draws with replacement here, as with exclude_true; a module must.
    sampler = _with_replacement_sampler(call.sampler, p.num_classes,
                                        "noise='per_example' (independent noise for each example)")
    table_step = None if call.table_optimizer is None else _table_step(call, p)
    h, valid, head, subtract_log_q = _inputs(p.h, table_step), p.valid, call.head, call.subtract_log_q
    y = p.y.long()
    n, t = y.shape
    k = call.num_sampled
    check_num_sampled(k, p.num_classes, unique=False)
    why = _loss_obstacle(p)
    excluded = _excluded_rows(call, p)
    if why is None and table_step is not None:
        why = _dispatch.TABLE_OPTIMIZER_PYTHON_ONLY
    if why is None and excluded is not None:
        why = _dispatch.EXCLUDED_IDS_PER_EXAMPLE
    if why is None and (head is not sigmoid_head or subtract_log_q):
        why = _dispatch.PER_EXAMPLE_COMPILED_ONLY
    ext = None if n == 0 else _dispatch.compiled(call.implementation, why)
    kt = torch.ones_like(y, dtype=torch.bool) if valid is None else valid
    y_safe = torch.where(kt, y, 0)
    ignored = None if valid is None else call.ignore_index
    if n == 0:  # nothing to draw for: an empty loss, as on the shared path
        noise = torch.empty(0, k, dtype=torch.int64, device=h.device)
        if getattr(sampler, "_collective", False):  # its other ranks may have rows: take part
            sampler._collect(y, call.ignore_index)
    else:
        # Drawn before the sampler learns this batch's labels: the correction below must be
        # the distribution the noise came from.
        noise, _, _ = sampler._draw_values(y, n * k, call.generator, ignored, update=False)
        noise = noise.to(h.device).view(n, k)
    if subtract_log_q and n:
        # The float32 expected counts of k draws, as a shared draw of k returns them.
        counts = (sampler.probs(torch.cat([y_safe, noise], 1).reshape(-1)) * k).float().view(n, t + k)
        _check_labels_can_be_drawn(y, valid, counts[:, :t], sampler)
    if sampler.training and n:
        sampler.update(y_safe, valid)
    if ext is not None:  # one label per row, none ignored
        _dispatch.record("compiled")
        loss = ext.per_example_core(h, p.shards[0], h.new_empty(0) if p.biases is None else p.biases,
                                    torch.cat([y, noise], 1), bool(call.remove_accidental_hits),
                                    int(HeadKind.sigmoid), bool(call.sparse))
        return _finish(loss, None, None, call.reduction, p.lead, False)
    _dispatch.record("python")
    removed = None
    if call.remove_accidental_hits or call.exclude_true:
        removed = ((noise.unsqueeze(2) == y_safe.unsqueeze(1)) & kt.unsqueeze(1)).any(2)
    if excluded is not None:
        hits = row_excluded_hits(noise, excluded)
        removed = hits if removed is None else removed | hits
    ids = torch.cat([y_safe, noise], 1)
    log_q = None
    if subtract_log_q and n:
        counts = counts.to(device=h.device, dtype=_compute_dtype(h.dtype))
        log_q = torch.where(torch.cat([kt, torch.ones_like(noise, dtype=torch.bool)], 1), counts.log(), 0.0)
        if call.exclude_true:
            row_log_q = exclusion_correction(y_safe, valid, counts[:, :t], removed, k, counts.dtype)
            log_q = torch.cat([torch.zeros_like(log_q[:, :t]), log_q[:, t:] + row_log_q.unsqueeze(1)], 1)
    spec = _Spec(t, (), call.partition_strategy, p.label_smoothing, bool(call.sparse), table_step)
    loss = PerExampleLoss.apply(head, h, ids, valid, removed, log_q, spec, p.biases, p.shards[0])
    return _finish(loss, None, valid, call.reduction, p.lead, False)


_COMPILED_LABEL_DTYPES = (torch.int64, torch.int32)


def _compiled_draw(call: LossCall):
    """The ``"compiled_draw"`` route: draw, hit mask, log Q and loss in one compiled call,
    without the general argument handling, whose per-call cost is a tenth of the whole loss.

    The router has checked ``implementation`` and the sampler (:func:`_dispatch.draw_obstacle`).
    This takes the call only where :func:`_dispatch.loss_obstacle` finds nothing and every
    argument is one the general route would accept unchanged (plain tensors of matching shapes,
    ``num_sampled`` in range, known settings); otherwise it returns None having drawn nothing,
    and the general route checks the call, raises its error or takes another route.
    """
    weights, biases, labels, inputs = call.weights, call.biases, call.labels, call.inputs
    num_sampled, num_classes, num_true, sampler = call.num_sampled, call.num_classes, call.num_true, call.sampler
    ignore_index, label_smoothing, generator = call.ignore_index, call.label_smoothing, call.generator
    if not (isinstance(weights, torch.Tensor) and isinstance(inputs, torch.Tensor)
            and isinstance(labels, torch.Tensor)):
        return None
    if biases is not None and not isinstance(biases, torch.Tensor):
        return None
    # The label check and ignore_index are the compiled draw's own (it returns None when one
    # label is out of range or ignored): no ignored label is known here.
    if _dispatch.loss_obstacle(inputs.device.type, 1, num_true, False, label_smoothing,
                               (inputs.dtype, weights.dtype, None if biases is None else biases.dtype)):
        return None
    if (weights.dim() != 2 or inputs.dim() < 2 or inputs.shape[-1] != weights.shape[1]
            or weights.shape[0] != num_classes or weights.device.type != "cpu" or labels.device.type != "cpu"):
        return None
    if biases is not None and not (biases.shape == (num_classes,) and biases.device.type == "cpu"):
        return None
    lead = inputs.shape[:-1]
    draw = "unique" if isinstance(sampler, str) else sampler.draw
    if (labels.dtype not in _COMPILED_LABEL_DTYPES or type(num_true) is not int
            or not (labels.shape == lead or labels.shape == lead + (1,))):
        return None
    if (type(num_sampled) is not int or num_sampled < 1 or (draw == "unique" and num_sampled > num_classes)
            or type(label_smoothing) not in (int, float)
            or call.reduction not in V.REDUCTIONS or call.partition_strategy not in V.PARTITION_STRATEGIES
            or not (ignore_index is None or (type(ignore_index) is int and -2**63 <= ignore_index < 2**63))
            or not (generator is None or (isinstance(generator, torch.Generator) and generator.device.type == "cpu"))
            or (not isinstance(sampler, str) and sampler.num_classes != num_classes)):
        return None
    n = math.prod(lead)
    ext = None if n == 0 else _dispatch.compiled("auto", None)
    if ext is None:
        return None
    optimizer = call.table_optimizer
    if optimizer is not None and (call.sparse or weights.requires_grad or (biases is not None and biases.requires_grad)
                                  or not isinstance(optimizer, TableOptimizer)):
        return None  # the general route says what is wrong
    kind = _dispatch.compiled_kind(sampler)
    table = _draw_table(sampler, num_sampled, draw)
    if table is None:
        return None
    # A learned sampler in training learns the labels in the same call, after its draw.
    learns = isinstance(sampler, LearnedUnigramSampler) and sampler.training
    if learns:
        table = table + [sampler.counts]
    h = inputs if inputs.dim() == 2 else inputs.reshape(n, inputs.shape[-1])
    bias = inputs.new_empty(0) if biases is None else biases
    head = int(HeadKind[call.head.name])
    draw_args = (num_sampled, int(kind), int(DrawKind[draw]), generator, bool(call.remove_accidental_hits),
                 bool(call.subtract_log_q))
    try:
        if optimizer is None:
            loss = ext.sampled_softmax_sampled(h, weights, bias, labels.reshape(n), *draw_args, head,
                                               bool(call.sparse), ignore_index, unique_draw_limit(num_sampled), table)
        else:  # the draw compiled, the loss's backward handing the rows' gradient to the optimizer
            columns = ext.sampled_columns(h, weights, labels.reshape(n), *draw_args, ignore_index,
                                          unique_draw_limit(num_sampled), table)
            loss = None
            if columns is not None:
                step = optimizer.step_for(weights, biases)
                loss = FusedCoreLoss.apply(ext, head, step, _inputs(h, step), weights, bias, *columns)
    except ValueError as e:  # the unique draw's bound: the Python route's error, word for word
        found = re.search(r"unique draw stopped: num_sampled=(\d+) num_tries=(\d+) found=(\d+)", str(e))
        if found is None:
            raise
        raise unique_draw_error(*(int(v) for v in found.groups())) from None
    if loss is None:  # a label out of range, ignored or not drawable: nothing was drawn
        return None
    if learns:  # the compiled call learned the labels after its draw, as every route does
        sampler._learned_in_place(n)
    return _finish(loss, -loss if call.return_log_prob else None, None, call.reduction, lead, call.return_log_prob)


def _draw_table(sampler, num_sampled: int, draw: str) -> list | None:
    """The compiled draw's ``table`` argument: ``[]`` for a closed-form distribution; a unigram
    table's ``[weights, cdf, total]``, a learned one's ``[counts, Fenwick tree, total]`` (its
    CPU tree, read in place). None where the general route must decide (a unique draw of more
    classes than the table can give: its error; counts that are not float64, e.g. a float32
    tensor assigned to the buffer)."""
    if not isinstance(sampler, (UnigramSampler, LearnedUnigramSampler)):  # a name, or a closed form
        return []
    if draw == "unique" and num_sampled > sampler.support:
        return None
    if isinstance(sampler, UnigramSampler):
        return [sampler.weights, sampler.cdf, sampler.cdf[-1]] if sampler.weights.device.type == "cpu" else None
    if sampler.counts.device.type != "cpu" or sampler.counts.dtype != torch.float64:
        return None
    tree = sampler._distribution()
    return [torch.from_numpy(tree.counts), torch.from_numpy(tree._tree), torch.tensor(tree.total, dtype=torch.float64)]


def _check_python_only(call: LossCall) -> None:
    """``excluded_ids`` and the heads the compiled core lacks (gBCE's) run on the eager routes."""
    what = "`excluded_ids`" if call.excluded_ids is not None else f"the {call.head.name} head"
    if call.group is not None:
        raise SampledSoftmaxError(f"{what} is not offered by the vocabulary-parallel loss")
    if _ops.traced(call.inputs):
        raise SampledSoftmaxError(f"{what} is not offered under torch.compile or with meta tensors (call the loss "
                                  "eagerly)")
    if call.excluded_ids is not None and call.exclude_true:
        raise SampledSoftmaxError("`excluded_ids` cannot be given with exclude_true=True (the rejection estimator "
                                  "excludes the labels only)")


def _excluded_rows(call: LossCall, p: Prepared) -> torch.Tensor | None:
    """``excluded_ids`` as ``[N, K]`` int64 on the inputs' device, checked: an integer tensor of
    shape ``[..., K]`` over the batch shape of ``inputs``, each id ``< num_classes`` (negative
    entries are padding)."""
    ex = call.excluded_ids
    if ex is None:
        return None
    if not isinstance(ex, torch.Tensor):
        raise TypeError(f"`excluded_ids` must be an integer torch.Tensor; received {type(ex).__name__}")
    V.check_integer_dtype("excluded_ids", not ex.is_floating_point() and not ex.is_complex()
                          and ex.dtype != torch.bool, str(ex.dtype))
    V.check_excluded_ids_shape(tuple(ex.shape), tuple(p.lead))
    ex = ex.reshape(p.h.shape[0], ex.shape[-1]).to(device=p.h.device, dtype=torch.int64)
    if ex.numel():
        top = int(ex.max())
        if top >= p.num_classes:
            raise SampledSoftmaxError(f"`excluded_ids` must be < num_classes ({p.num_classes}), negative entries "
                                      f"being padding; received {top}")
    return ex


def _loss_obstacle(p: Prepared):
    """:func:`_dispatch.loss_obstacle` of a checked call."""
    if p.call.head is not None and p.call.head.name not in HeadKind.__members__:
        return _dispatch.HEAD_PYTHON_ONLY
    return _dispatch.loss_obstacle(p.h.device.type, len(p.shards), p.y.shape[1], p.valid is not None,
                                   p.label_smoothing,
                                   (p.h.dtype, p.shards[0].dtype, None if p.biases is None else p.biases.dtype),
                                   p.call.exclude_true)


def _table_step(call: LossCall, p: Prepared):
    """The fused table optimizer's step for this call, checked now (before any draw): one table,
    one bias tensor, neither requiring grad (the optimizer's alone), no sparse gradient asked."""
    if len(p.shards) > 1:
        raise SampledSoftmaxError("`weights` must be one [num_classes, dim] table with a table_optimizer; received "
                                  f"{len(p.shards)} shards")
    if isinstance(call.biases, (list, tuple)):
        raise SampledSoftmaxError("`biases` must be one [num_classes] tensor with a table_optimizer; received a list "
                                  "of shards")
    table, bias = p.shards[0], p.biases
    check_table_step(call.table_optimizer, table, bias, call.sparse)
    return call.table_optimizer.step_for(table, bias)


def _inputs(h: torch.Tensor, table_step) -> torch.Tensor:
    """``h``; with a fused table step and autograd on, one that requires grad, so that the
    loss's backward (which applies the step) runs even when only the table trains."""
    if table_step is not None and torch.is_grad_enabled() and not h.requires_grad:
        return h.detach().requires_grad_()
    return h
