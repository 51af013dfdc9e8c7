"""``SparseRowAdam``: Adam that updates only the rows a sparse gradient touches.

``torch.optim.SparseAdam`` does the same lazily but costs several sparse-tensor passes per step
and always keeps two dense ``[V, D]`` moment tables. This one updates each touched row's state
and parameters in one compiled pass (on the CPU, where the extension builds; otherwise it
gathers the touched rows, updates them and writes them back in a handful of ``[U, D]``
operations), whatever ``V``, and can keep less state:

* ``rowwise=True`` keeps one second moment per row (``[V]`` instead of ``[V, D]``), the
  mean of the squared gradient over the row, as row-wise Adagrad does for embeddings;
* ``betas[0] = 0`` keeps no first moment at all.

State per parameter: ``step``, and ``moments`` (``[rows, 2, ...]``: first and second moment
side by side), or ``exp_avg_sq`` (``[rows]`` row-wise, or the parameter's shape) with
``exp_avg`` when ``betas[0] > 0``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import SampledSoftmaxError
from .. import _validation as V
from . import _dispatch

__all__ = ["SparseRowAdam", "LazyAdam"]


def _sum_duplicate_rows(grad: torch.Tensor):
    """Distinct rows of a sparse gradient and their summed values (what ``coalesce`` gives,
    cheaper: on the CPU NumPy's ``unique`` costs a third of ``coalesce``)."""
    if grad.is_coalesced():
        return grad.indices()[0], grad.values()
    idx, values = grad._indices()[0], grad._values()
    if idx.device.type == "cpu":
        rows, inverse = np.unique(idx.numpy(), return_inverse=True)
        rows, inverse = torch.from_numpy(rows), torch.from_numpy(inverse.reshape(-1))
    else:
        rows, inverse = torch.unique(idx, return_inverse=True)
    summed = values.new_zeros((rows.shape[0],) + tuple(values.shape[1:]))
    if values.dim() > 1:  # scatter_add_ runs faster than index_add_ on the CPU
        summed.scatter_add_(0, inverse.view(-1, *([1] * (values.dim() - 1))).expand_as(values), values)
    else:
        summed.index_add_(0, inverse, values)
    return rows, summed


EPS_PLACEMENTS = ("adam", "sparse_adam")


def _real(name, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if not (isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex()):
            raise TypeError(f"`{name}` must be a real number; received {type(value).__name__}")
    return float(value)


def _check_rows(rows: torch.Tensor, p: torch.Tensor) -> None:
    """Row indices outside ``[0, rows)`` would be read and written out of bounds: they raise
    ``IndexError`` (what ``index_select`` and ``torch.optim.SparseAdam`` raise)."""
    if rows.numel():
        lo, hi = (int(v) for v in torch.aminmax(rows))  # a gradient's read-back, as coalesce does
        if lo < 0 or hi >= p.shape[0]:
            raise IndexError(
                f"sparse gradient row indices must be in [0, {p.shape[0] - 1}] for a parameter of shape "
                f"{list(p.shape)}; received {'down to ' + str(lo) if lo < 0 else 'up to ' + str(hi)}")


def _row_sparse(grad: torch.Tensor, p: torch.Tensor, check_rows: bool = True) -> torch.Tensor:
    """``grad`` as a row-sparse COO tensor (``sparse_dim=1``), its row indices checked unless
    ``check_rows`` is False (the compiled step checks them itself, before writing anything).

    A gradient with more sparse dimensions has its elements gathered into the rows that hold
    them (the rows' other elements get gradient 0).
    """
    if grad.shape != p.shape:
        raise SampledSoftmaxError(
            f"a sparse gradient must have its parameter's shape {list(p.shape)}; received {list(grad.shape)}")
    idx = grad._indices()
    if check_rows or grad.sparse_dim() > 1:
        _check_rows(idx[0], p)
    if idx.numel():
        if grad.sparse_dim() > 1:
            for k in range(1, grad.sparse_dim()):
                k_lo, k_hi = (int(v) for v in torch.aminmax(idx[k]))
                if k_lo < 0 or k_hi >= p.shape[k]:
                    raise IndexError(f"sparse gradient indices of dimension {k} must be in [0, {p.shape[k] - 1}]; "
                                     f"received {k_lo if k_lo < 0 else k_hi}")
    if grad.sparse_dim() == 1:
        return grad
    rows, inverse = torch.unique(idx[0], return_inverse=True)
    values = grad._values().new_zeros((rows.shape[0],) + tuple(p.shape[1:]))
    values.index_put_((inverse,) + tuple(idx[1:]), grad._values(), accumulate=True)
    return torch.sparse_coo_tensor(rows.unsqueeze(0), values, tuple(p.shape), check_invariants=False)


class SparseRowAdam(torch.optim.Optimizer):
    r"""Lazy Adam over rows: for each touched row ``r`` with gradient ``g_r`` at step ``t``

    .. math::
        m_r \leftarrow \beta_1 m_r + (1 - \beta_1) g_r,\quad
        v_r \leftarrow \beta_2 v_r + (1 - \beta_2) g_r^2,\quad
        \theta_r \leftarrow \theta_r - \frac{lr}{1 - \beta_1^t}\,
            \frac{m_r}{\sqrt{v_r / (1 - \beta_2^t)} + \epsilon}

    (``torch.optim.Adam``'s formula; rows not touched keep their parameters and moments).
    ``t`` counts the optimizer's steps. With ``rowwise=True``, ``v_r`` is a scalar per row fed
    with ``mean(g_r ** 2)``. Dense gradients are accepted and update every row.

    A row is touched when the sparse gradient has an entry in it: a gradient with more than one
    sparse dimension (``dense.to_sparse()``, ``sparse_dim=2``) touches every row holding one of
    its elements, and that row's other elements get gradient 0 (their moments decay), as for a
    row-sparse gradient with those zeros written out. Row indices outside ``[0, rows)`` raise
    ``IndexError``.

    Args:
        params: parameters (typically the class table and its bias, with ``sparse=True``), each
            with at least one dimension (the rows).
        lr, betas, eps: as ``torch.optim.Adam``.
        eps_placement: ``"adam"`` (default): ``eps`` is added to the bias-corrected
            ``sqrt(v / (1 - beta2^t))``, as ``torch.optim.Adam`` does; ``"sparse_adam"``: to the
            uncorrected ``sqrt(v)``, as ``torch.optim.SparseAdam`` does, so that the two give the
            same update at any ``eps``.
        rowwise: one second moment per row instead of per element.
        implementation: ``"auto"`` (default): a sparse step on the CPU runs in the compiled
            extension of :func:`sampled_softmax.torch.sampled_softmax_loss` when it can be
            built (one pass over each touched row instead of a dozen ``[rows, D]`` operations);
            ``"compiled"`` requires it; ``"python"`` never uses it. Both give the same update.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, *, eps_placement="adam", rowwise=False,
                 implementation="auto"):
        lr, eps = _real("lr", lr), _real("eps", eps)
        if not lr > 0:
            raise SampledSoftmaxError(f"`lr` must be > 0; received {lr}")
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise SampledSoftmaxError(f"`betas` must be a pair (beta1, beta2); received {betas!r}")
        betas = (_real("betas[0]", betas[0]), _real("betas[1]", betas[1]))
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise SampledSoftmaxError(f"`betas` must be in [0, 1); received {tuple(betas)}")
        if not eps >= 0:
            raise SampledSoftmaxError(f"`eps` must be >= 0; received {eps}")
        V.check_choice("eps_placement", eps_placement, EPS_PLACEMENTS)
        self.implementation = V.check_choice("implementation", implementation, _dispatch.IMPLEMENTATIONS)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, eps_placement=eps_placement,
                                      rowwise=bool(rowwise)))

    def add_param_group(self, param_group):
        for p in (param_group["params"] if isinstance(param_group["params"], (list, tuple))
                  else [param_group["params"]]):
            if isinstance(p, torch.Tensor) and p.dim() == 0:
                raise SampledSoftmaxError(
                    "`params` must each have at least one dimension (SparseRowAdam updates rows); "
                    "received a 0-d parameter")
        super().add_param_group(param_group)

    def _init_state(self, p, group):
        state = self.state[p]
        state["step"] = 0
        rowwise = group["rowwise"] and p.dim() > 1
        if group["betas"][0] > 0 and not rowwise:
            # m and v side by side, [rows, 2, ...]: a touched row costs one gather and one
            # write-back of the state, not two of each (random rows of a large table are
            # what a sparse step pays for).
            state["moments"] = torch.zeros((p.shape[0], 2) + tuple(p.shape[1:]), dtype=p.dtype, device=p.device)
        else:
            if group["betas"][0] > 0:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if rowwise:
                state["exp_avg_sq"] = torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)
            else:
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                sparse = p.grad.is_sparse
                compiled = sparse and self.implementation != "python"
                grad = _row_sparse(p.grad, p, check_rows=not compiled) if sparse else p.grad
                state = self.state[p] or self._init_state(p, group)
                ext = self._compiled_for(p, grad, state) if compiled else None
                if compiled and ext is None:  # the Python step after all: check what the compiled one would
                    _check_rows(grad._indices()[0], p)  # have, before the step is counted
                state["step"] += 1
                t = state["step"]
                # sqrt(v / c2) + eps == (sqrt(v) + eps sqrt(c2)) / sqrt(c2): one pass fewer.
                root_c2 = math.sqrt(1.0 - beta2**t)
                step_size = -lr * root_c2 / (1.0 - beta1**t)
                eps_term = eps * root_c2 if group.get("eps_placement", "adam") == "adam" else eps
                if ext is not None:
                    empty = p.new_empty(0)
                    try:
                        ext.sparse_row_adam_(p.data, state.get("moments", empty), state.get("exp_avg", empty),
                                             state.get("exp_avg_sq", empty), grad._indices()[0], grad._values(),
                                             beta1, beta2, step_size, eps_term)
                    except IndexError:  # a row out of range, found before any write: say it as Python does
                        state["step"] -= 1
                        _check_rows(grad._indices()[0], p)
                        raise
                    continue
                if sparse:
                    rows, g = _sum_duplicate_rows(grad)
                else:  # dense gradient: every row, in place
                    rows, g = None, p.grad
                moments = state.get("moments")
                if moments is not None:
                    mv = moments.index_select(0, rows) if sparse else moments
                    m, v = mv.select(1, 0), mv.select(1, 1)
                else:
                    mv = None
                    m = state.get("exp_avg")
                    if m is not None and sparse:
                        m = m.index_select(0, rows)
                    v = state["exp_avg_sq"].index_select(0, rows) if sparse else state["exp_avg_sq"]
                if m is not None:
                    m.lerp_(g, 1.0 - beta1)  # beta1 m + (1 - beta1) g
                else:
                    m = g
                row_v = v.dim() < g.dim()
                if row_v:
                    v.mul_(beta2).add_(g.square().mean(dim=tuple(range(1, g.dim()))), alpha=1.0 - beta2)
                else:
                    v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
                denom = v.sqrt().add_(eps_term)
                if row_v:
                    denom = denom.view(-1, *([1] * (g.dim() - 1)))
                if not sparse:
                    p.addcdiv_(m, denom, value=step_size)
                    continue
                if mv is not None:
                    moments.index_copy_(0, rows, mv)
                else:
                    if "exp_avg" in state:
                        state["exp_avg"].index_copy_(0, rows, m)
                    state["exp_avg_sq"].index_copy_(0, rows, v)
                p.index_add_(0, rows, m.div(denom), alpha=step_size)
        return loss

    def _compiled_for(self, p, grad, state):
        """The compiled extension when it can take this parameter's sparse step, else None."""
        if self.implementation == "python":
            return None
        return _dispatch.compiled(self.implementation, _dispatch.adam_obstacle(p, grad, state))

    def state_bytes(self) -> int:
        """Bytes of optimizer state held, all parameters together."""
        return sum(v.numel() * v.element_size() for s in self.state.values() for v in s.values()
                   if isinstance(v, torch.Tensor))


# The concept's name in the other front ends (Keras ``LazyAdam``, JAX ``sparse.lazy_adam``, TensorFlow
# Addons' ``LazyAdam``): the same optimizer.
LazyAdam = SparseRowAdam
