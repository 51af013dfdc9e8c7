"""``SparseRowAdam``: Adam that updates only the rows a sparse gradient touches.

``torch.optim.SparseAdam`` does the same lazily but costs several sparse-tensor passes per step
and always keeps two dense ``[V, D]`` moment tables. This one gathers the touched rows of its
state, updates them and writes them back (a handful of ``[U, D]`` operations for ``U`` touched
rows, whatever ``V``), and can keep less state:

* ``rowwise=True`` keeps one second moment per row (``[V]`` instead of ``[V, D]``), the
  mean of the squared gradient over the row, as row-wise Adagrad does for embeddings;
* ``betas[0] = 0`` keeps no first moment at all.
"""

from __future__ import annotations

import math

import torch

from .. import SampledSoftmaxError

__all__ = ["SparseRowAdam"]


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

    Args:
        params: parameters (typically the class table and its bias, with ``sparse=True``).
        lr, betas, eps: as ``torch.optim.Adam``.
        rowwise: one second moment per row instead of per element.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, *, rowwise=False):
        if not lr > 0:
            raise SampledSoftmaxError(f"`lr` must be > 0; received {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise SampledSoftmaxError(f"`betas` must be in [0, 1); received {tuple(betas)}")
        if not eps >= 0:
            raise SampledSoftmaxError(f"`eps` must be >= 0; received {eps}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, rowwise=bool(rowwise)))

    def _init_state(self, p, group):
        state = self.state[p]
        state["step"] = 0
        if group["betas"][0] > 0:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["rowwise"] and p.dim() > 1:
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
            lr, eps, rowwise = group["lr"], group["eps"], group["rowwise"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p] or self._init_state(p, group)
                state["step"] += 1
                t = state["step"]
                if grad.is_sparse:
                    grad = grad.coalesce()
                    rows, g = grad.indices()[0], grad.values()
                else:
                    rows, g = None, grad

                def take(x):
                    return x if rows is None else x.index_select(0, rows)

                def put(x, value):
                    if rows is None:
                        x.copy_(value)
                    else:
                        x.index_copy_(0, rows, value)

                if beta1 > 0:
                    m = take(state["exp_avg"]).mul_(beta1).add_(g, alpha=1.0 - beta1)
                    put(state["exp_avg"], m)
                else:
                    m = g
                row_v = rowwise and p.dim() > 1
                g2 = g.square().mean(dim=tuple(range(1, g.dim()))) if row_v else g.square()
                v = take(state["exp_avg_sq"]).mul_(beta2).add_(g2, alpha=1.0 - beta2)
                put(state["exp_avg_sq"], v)
                denom = (v / (1.0 - beta2**t)).sqrt_().add_(eps)
                if row_v:
                    denom = denom.view(-1, *([1] * (g.dim() - 1)))
                update = m / denom * (-lr / (1.0 - beta1**t))
                if rows is None:
                    p.add_(update)
                else:
                    p.index_add_(0, rows, update)
        return loss

    def state_bytes(self) -> int:
        """Bytes of optimizer state held, all parameters together."""
        return sum(v.numel() * v.element_size() for s in self.state.values() for v in s.values()
                   if isinstance(v, torch.Tensor))
