"""Stage 1 of the pipeline: the columns of each row. From the labels and the candidates,
the class id of every column (``N * T`` true columns, then the ``S`` candidates), its
``log E`` (the ``-log Q`` correction) and the removed-candidate mask (accidental hits and
padding slots). One rule, two implementations: NumPy on the CPU, whose small-array operations
cost a fraction of torch's there, and torch ops on accelerators; tests hold them equal."""

from __future__ import annotations

import numpy as np
import torch

from .. import SampledSoftmaxError
from .._validation import exclusion_error
from ._prepare import _as_numpy_float


def _columns_numpy(y_safe, valid, cand, true_count, samp_count, cdt, *, remove_hits, subtract_log_q, padded):
    """On the CPU: column ids ``[N*T + S]``, ``log E`` per column and the removed-candidate mask
    ``[N, S]`` (or None), built with NumPy, whose small-array operations cost a fraction of torch's."""
    n, t = y_safe.shape
    yn, cn = y_safe.numpy(), cand.numpy()
    ids = torch.from_numpy(np.concatenate([yn.reshape(-1), cn]))
    vn = None if valid is None else valid.numpy()
    removed = None
    if remove_hits:
        hits = yn[:, :, None] == cn
        if vn is not None:
            hits &= vn[:, :, None]
        removed = hits[:, 0] if t == 1 else hits.any(1)
    sc = _as_numpy_float(samp_count)
    if padded:  # padding slots (expected count inf) are removed from every row
        pad = ~np.isfinite(sc)
        removed = np.broadcast_to(pad, (n, cn.size)).copy() if removed is None else removed | pad
    if subtract_log_q:
        np_dtype = torch.empty(0, dtype=cdt).numpy().dtype
        counts = np.concatenate([_as_numpy_float(true_count).reshape(-1), sc]).astype(np_dtype)
        if vn is not None:
            counts[: n * t][~vn.reshape(-1)] = 1.0
        if padded:
            counts[n * t:][pad] = 1.0
        log_q = torch.from_numpy(np.log(counts))
    else:
        log_q = torch.zeros(ids.shape[0], dtype=cdt)
    return ids, log_q, None if removed is None else torch.from_numpy(removed)


def _columns_torch(y_safe, valid, cand, true_count, samp_count, cdt, *, remove_hits, subtract_log_q, padded):
    """:func:`_columns_numpy` in torch ops, for accelerators."""
    n, t = y_safe.shape
    s = cand.shape[0]
    ids = torch.cat([y_safe.reshape(-1), cand])
    removed = None
    if remove_hits:
        hits = y_safe.unsqueeze(2) == cand.view(1, 1, s)
        if valid is not None:
            hits &= valid.unsqueeze(2)
        removed = hits.any(1)
    if padded:
        pad = ~torch.isfinite(samp_count)
        removed = pad.expand(n, s) if removed is None else removed | pad
    if subtract_log_q:
        counts = torch.cat([true_count.reshape(-1).to(cdt), samp_count.to(cdt)])
        if valid is not None:
            counts[: n * t].masked_fill_(~valid.reshape(-1), 1.0)
        if padded:
            counts[n * t:].masked_fill_(pad, 1.0)
        log_q = counts.log()
    else:
        log_q = torch.zeros(ids.shape[0], dtype=cdt, device=ids.device)
    return ids, log_q, removed


def candidate_columns(y_safe, valid, cand, true_count, samp_count, cdt, *, remove_accidental_hits, subtract_log_q,
                      padded=False):
    """``(ids [N*T + S], log E [N*T + S], removed [N, S] or None)`` for labels ``y_safe [N, T]``
    (ignored ones replaced by 0, ``valid`` their mask or None) and candidates ``cand [S]``."""
    build = _columns_numpy if y_safe.device.type == "cpu" and cand.device.type == "cpu" else _columns_torch
    return build(y_safe, valid, cand, true_count, samp_count, cdt, remove_hits=remove_accidental_hits,
                 subtract_log_q=subtract_log_q, padded=padded)


def exclusion_correction(y_safe, valid, true_count, removed, num_sampled, cdt):
    """The rejection estimator's correction (``exclude_true``), after :func:`candidate_columns` (with the hits
    ``removed [N, S]``): ``row_log_q_i = log(k_i / S) - log(1 - Q_i)`` ``[N]``, added to the
    ``log E(c) = log(S q(c))`` of row ``i``'s candidates (the true columns get none), so that a
    candidate's correction is ``log(k_i q(c) / (1 - Q_i))``: ``k_i`` the row's candidates left,
    ``Q_i`` the ``q = E / S`` of its distinct kept labels, in the compute dtype ``cdt``."""
    n, t = y_safe.shape
    s = num_sampled
    kept_true = torch.ones_like(y_safe, dtype=torch.bool) if valid is None else valid
    earlier = torch.ones(t, t, dtype=torch.bool, device=y_safe.device).tril_(-1)  # [j, j']: j' < j
    repeated = ((y_safe.unsqueeze(2) == y_safe.unsqueeze(1)) & kept_true.unsqueeze(1) & earlier).any(2)
    q_true = true_count.reshape(n, t).to(device=y_safe.device, dtype=cdt) / s
    Q = torch.where(kept_true & ~repeated, q_true, 0.0).sum(1)
    k = torch.full((n,), s, dtype=cdt, device=y_safe.device)
    if removed is not None:
        k = k - removed.sum(1).to(cdt)
    bad = (Q >= 1.0) & (k > 0)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise SampledSoftmaxError(exclusion_error(s, i, float(Q[i])))
    return torch.where(k > 0, torch.log(k / s) - torch.log1p(-Q), 0.0)


def excluded_hits(candidate_ids: torch.Tensor, excluded_ids: torch.Tensor) -> torch.Tensor:
    """``[B, C]``: whether candidate ``j``'s id is one of ``excluded_ids[i]`` (negative entries are
    padding), in ``O(B C + B K)`` memory and static shapes: an id's key is the position of its
    first copy among the sorted candidate ids; each row's excluded ids mark their keys in a
    ``[B, C + 1]`` table (the last column collects the ids no candidate has), read back at each
    candidate's key."""
    b, c = excluded_ids.shape[0], candidate_ids.shape[0]
    if c == 0:
        return torch.zeros((b, 0), dtype=torch.bool, device=candidate_ids.device)
    ids = candidate_ids.to(torch.int64)
    ordered = torch.sort(ids).values
    key = torch.searchsorted(ordered, ids)
    ex = excluded_ids.to(torch.int64).contiguous()
    where = torch.searchsorted(ordered, ex).clamp_(max=c - 1)
    found = (ordered[where] == ex) & (ex >= 0)
    marked = torch.zeros((b, c + 1), dtype=torch.bool, device=candidate_ids.device)
    marked.scatter_(1, torch.where(found, where, c), True)
    return marked[:, key]


def row_excluded_hits(noise: torch.Tensor, excluded_ids: torch.Tensor) -> torch.Tensor:
    """``[N, k]``: whether ``noise[i, j]`` (row ``i``'s own candidates) is one of
    ``excluded_ids[i]`` (negative entries are padding), by a search of each row's sorted ids."""
    if excluded_ids.shape[1] == 0 or noise.numel() == 0:
        return torch.zeros(noise.shape, dtype=torch.bool, device=noise.device)
    ex = excluded_ids.to(device=noise.device, dtype=torch.int64).sort(1).values
    where = torch.searchsorted(ex, noise.to(torch.int64)).clamp_(max=ex.shape[1] - 1)
    return ex.gather(1, where) == noise
