"""Optimizers fused into the loss's backward pass for the class table: ``RowSGD``, ``RowAdagrad``
and ``RowAdam``.

A sampled loss touches ``N*T + S`` rows of a ``[V, D]`` table. With a separate optimizer its
backward builds those rows' gradient (sparse, or a dense ``[V, D]``) and the optimizer reads it
again; fused, the backward sums each distinct row's gradient and updates that row (and its bias,
and the optimizer state of both) in place, as torchrec/FBGEMM's table-batched embeddings and
word2vec do. No gradient is returned for the table: it is the fused optimizer's alone, so it must
not require grad (:class:`~sampled_softmax.torch.SampledSoftmax` sets that up), and the rest of
the model keeps its own optimizer.

The arithmetic, for a touched row ``r`` with summed gradient ``g_r`` at fused step ``t`` (one per
backward of a loss; rows a step does not touch keep their values and state):

* ``RowSGD``: ``w_r -= lr g_r``.
* ``RowAdagrad`` (FBGEMM's exact row-wise Adagrad): ``G_r += mean(g_r ** 2)``,
  ``w_r -= lr g_r / (sqrt(G_r) + eps)``; one accumulator per row (per bias entry for the bias).
* ``RowAdam``: ``torch.optim.Adam``'s update applied lazily, as
  :class:`~sampled_softmax.torch.SparseRowAdam`: ``m_r = b1 m_r + (1 - b1) g_r``,
  ``v_r = b2 v_r + (1 - b2) g_r^2``, ``w_r -= lr / (1 - b1^t) * m_r / (sqrt(v_r / (1 - b2^t)) + eps)``
  with ``t`` the number of fused steps; ``rowwise=True`` keeps one ``v`` per row
  (``mean(g_r ** 2)``). On the CPU its step is :class:`~sampled_softmax.torch.SparseRowAdam`'s
  compiled pass (``implementation="auto"``, as there).

Each is a ``torch.nn.Module`` whose state (the step count and moments) is buffers, so it travels
in the owning layer's ``state_dict`` and with ``.to(device)``. A fused step sees the gradient of
the one process it runs in: with the table replicated over data-parallel ranks (DDP), shard it
instead (``VocabParallelSampledSoftmax(table_optimizer=...)``) or keep an unfused optimizer.
"""

from __future__ import annotations

import math

import torch

from .. import SampledSoftmaxError
from .. import _validation as V
from . import _dispatch

__all__ = ["TableOptimizer", "RowSGD", "RowAdagrad", "RowAdam", "check_table_step"]


def sum_rows(ids: torch.Tensor, values: torch.Tensor):
    """The distinct rows of ``ids`` and their summed ``values``."""
    rows, inverse = torch.unique(ids, return_inverse=True)
    summed = values.new_zeros((rows.shape[0],) + tuple(values.shape[1:]))
    return rows, summed.index_add_(0, inverse, values)


def _check_optimizer(optimizer) -> None:
    if not isinstance(optimizer, TableOptimizer):
        raise TypeError(f"`table_optimizer` must be a RowSGD, RowAdagrad or RowAdam; received {type(optimizer).__name__}")


def take_table(optimizer, weight: torch.Tensor, bias: torch.Tensor | None, *, shared: bool, sparse: bool):
    """An output layer's table handed to its fused ``optimizer`` (None: nothing to do): made not
    to require grad, so that the model's own optimizer leaves it alone, and the state made."""
    if optimizer is None:
        return None
    _check_optimizer(optimizer)
    if shared:
        raise SampledSoftmaxError("`table_optimizer` needs the layer's own table: a shared `weight` (a tied embedding) "
                                  "is trained by the model's optimizer too, which would update it a second time")
    if sparse:
        raise SampledSoftmaxError(SPARSE_MEANINGLESS)
    weight.requires_grad_(False)
    if bias is not None:
        bias.requires_grad_(False)
    optimizer.bind(weight, bias)
    return optimizer


SPARSE_MEANINGLESS = ("`sparse=True` has no meaning with a table_optimizer (no gradient is returned for the table); "
                      "leave it False")


def check_table_step(optimizer, table: torch.Tensor, bias: torch.Tensor | None, sparse: bool) -> None:
    """A loss call's fused ``optimizer`` on ``table`` and ``bias``: neither may require grad (the
    table is the optimizer's alone), and no sparse gradient is asked for."""
    _check_optimizer(optimizer)
    for name, tensor in (("weights", table), ("biases", bias)):
        if tensor is not None and tensor.requires_grad:
            raise SampledSoftmaxError(
                f"`{name}` requires grad: with a table_optimizer the table is updated in the loss's backward and gets "
                f"no gradient, so another optimizer training it would update it a second time. Call "
                f"{name}.requires_grad_(False) (SampledSoftmax(table_optimizer=...) does)")
    if sparse:
        raise SampledSoftmaxError(SPARSE_MEANINGLESS)


class TableOptimizer(torch.nn.Module):
    """The base of the fused table optimizers: state buffers made for a ``[V, D]`` table and its
    ``[V]`` bias (:meth:`bind`), and :meth:`step_rows`, which the loss's backward calls."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self._shape: tuple | None = None
        self._bias_shape: tuple | None = None

    def bind(self, table: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Make the state for ``table`` (and ``bias``), zero; a second call with the same shapes
        keeps it (a loaded ``state_dict``, a resumed run)."""
        shape, bias_shape = tuple(table.shape), None if bias is None else tuple(bias.shape)
        if table.dim() != 2:
            raise SampledSoftmaxError(f"`weights` must be one [num_classes, dim] table with a table_optimizer; "
                                      f"received shape {list(shape)}")
        if bias_shape is not None and bias_shape != shape[:1]:
            raise SampledSoftmaxError(f"`biases` must have shape [{shape[0]}] with a table_optimizer; received shape "
                                      f"{list(bias_shape)}")
        if self._shape is not None:
            if (shape, bias_shape) != (self._shape, self._bias_shape):
                raise SampledSoftmaxError(
                    f"this {type(self).__name__} holds the state of a table of shape {list(self._shape)}"
                    f"{'' if self._bias_shape is None else ' with a bias'}; received a table of shape {list(shape)}"
                    f"{'' if bias_shape is None else ' with a bias'}: give each table its own optimizer")
            return
        self._shape, self._bias_shape = shape, bias_shape
        self._make_state(table, bias)

    def step_for(self, table: torch.Tensor, bias: torch.Tensor | None):
        """The step one loss call's backward makes: :meth:`step_rows` on ``table`` and ``bias``,
        refused if the table changed since this call (two losses on one table in one backward,
        gradients accumulated over several forwards)."""
        self.bind(table, bias)
        version = table._version

        def step(ids, d_rows, d_bias_rows, keep):
            if table._version != version:
                raise SampledSoftmaxError(
                    "the table changed between this loss's forward and its backward (two losses on one table in one "
                    "backward, or gradients accumulated over several forwards): a table_optimizer applies each "
                    "loss's gradient in that loss's backward, so call backward after each forward")
            self.step_rows(table, bias, ids, d_rows, d_bias_rows, keep)

        return step

    def _make_state(self, table: torch.Tensor, bias: torch.Tensor | None) -> None:
        pass

    @torch.no_grad()
    def step_rows(self, table: torch.Tensor, bias: torch.Tensor | None, ids: torch.Tensor, d_rows: torch.Tensor,
                  d_bias_rows: torch.Tensor | None, keep: torch.Tensor | None) -> None:
        """One fused step: the gradient ``d_rows [M, D]`` of the rows ``ids [M]`` (repeats
        summed; ``keep [M]`` leaves out rows the step did not touch: ignored labels' placeholders),
        and ``d_bias_rows [M]``, applied to ``table`` and ``bias`` in place."""
        self.bind(table, bias)
        if bias is None:
            d_bias_rows = None
        if keep is not None:
            ids, d_rows = ids[keep], d_rows[keep]
            d_bias_rows = None if d_bias_rows is None else d_bias_rows[keep]
        self.step += 1
        t = int(self.step)
        if self._compiled_step(table, bias, ids, d_rows, d_bias_rows, t):
            return
        rows, g = sum_rows(ids, d_rows)
        g_bias = None if d_bias_rows is None else sum_rows(ids, d_bias_rows)[1]
        self._update_rows(table, bias, rows, g, g_bias, t)

    def _compiled_step(self, table, bias, ids, d_rows, d_bias_rows, t) -> bool:
        """The step in compiled code where there is one for it (True when it ran)."""
        return False

    def _update_rows(self, table, bias, rows, g, g_bias, t) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self._settings().items())

    def _settings(self) -> dict:
        return {}


class RowSGD(TableOptimizer):
    r"""Plain SGD on the touched rows, fused into the loss's backward: ``w_r -= lr g_r``."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = V.check_number("lr", lr, positive=True)

    def _update_rows(self, table, bias, rows, g, g_bias, t):
        table.index_add_(0, rows, g.to(table.dtype), alpha=-self.lr)
        if g_bias is not None:
            bias.index_add_(0, rows, g_bias.to(bias.dtype), alpha=-self.lr)

    def _settings(self):
        return {"lr": self.lr}


class RowAdagrad(TableOptimizer):
    r"""FBGEMM's exact row-wise Adagrad on the touched rows, fused into the loss's backward:
    ``G_r += mean(g_r ** 2)``, ``w_r -= lr g_r / (sqrt(G_r) + eps)``; one accumulator per table
    row (``[V]`` of state) and one per bias entry."""

    def __init__(self, lr: float = 0.01, eps: float = 1e-10) -> None:
        super().__init__()
        self.lr, self.eps = V.check_number("lr", lr, positive=True), V.check_number("eps", eps, positive=False)

    def _make_state(self, table, bias):
        self.register_buffer("sum_sq", torch.zeros(table.shape[0], dtype=table.dtype, device=table.device))
        if bias is not None:
            self.register_buffer("bias_sum_sq", torch.zeros(bias.shape, dtype=bias.dtype, device=bias.device))

    def _update_rows(self, table, bias, rows, g, g_bias, t):
        acc = self.sum_sq.index_select(0, rows).add_(g.square().mean(1).to(self.sum_sq.dtype))
        self.sum_sq.index_copy_(0, rows, acc)
        table.index_add_(0, rows, (g / (acc.sqrt() + self.eps).to(g.dtype)[:, None]).to(table.dtype),
                         alpha=-self.lr)
        if g_bias is not None:
            acc_b = self.bias_sum_sq.index_select(0, rows).add_(g_bias.square().to(self.bias_sum_sq.dtype))
            self.bias_sum_sq.index_copy_(0, rows, acc_b)
            bias.index_add_(0, rows, (g_bias / (acc_b.sqrt() + self.eps).to(g_bias.dtype)).to(bias.dtype),
                            alpha=-self.lr)

    def _settings(self):
        return {"lr": self.lr, "eps": self.eps}


class RowAdam(TableOptimizer):
    r"""Adam on the touched rows, fused into the loss's backward: ``torch.optim.Adam``'s update
    applied lazily, as :class:`~sampled_softmax.torch.SparseRowAdam` applies it to the summed row
    gradient (``t`` counts the fused steps). ``rowwise=True`` keeps one second moment per row."""

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, *,
                 rowwise: bool = False, implementation: str = "auto") -> None:
        super().__init__()
        self.implementation = V.check_choice("implementation", implementation, _dispatch.IMPLEMENTATIONS)
        self.lr, self.eps = V.check_number("lr", lr, positive=True), V.check_number("eps", eps, positive=False)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise SampledSoftmaxError(f"`betas` must be a pair (beta1, beta2); received {betas!r}")
        b1, b2 = (V.check_number(f"betas[{i}]", b, positive=False) for i, b in enumerate(betas))
        if not (b1 < 1 and b2 < 1):
            raise SampledSoftmaxError(f"`betas` must be in [0, 1); received {tuple(betas)}")
        self.betas = (b1, b2)
        if type(rowwise) is not bool:
            raise TypeError(f"`rowwise` must be True or False; received {rowwise!r}")
        self.rowwise = rowwise

    def _make_state(self, table, bias):
        z = dict(dtype=table.dtype, device=table.device)
        self.register_buffer("exp_avg", torch.zeros(table.shape, **z))
        self.register_buffer("exp_avg_sq", torch.zeros(table.shape[:1] if self.rowwise else table.shape, **z))
        if bias is not None:
            zb = dict(dtype=bias.dtype, device=bias.device)
            self.register_buffer("bias_exp_avg", torch.zeros(bias.shape, **zb))
            self.register_buffer("bias_exp_avg_sq", torch.zeros(bias.shape, **zb))

    def _update_rows(self, table, bias, rows, g, g_bias, t):
        b1, b2 = self.betas
        root_c2 = math.sqrt(1.0 - b2**t)
        step_size = -self.lr * root_c2 / (1.0 - b1**t)
        eps = self.eps * root_c2  # sqrt(v / c2) + eps == (sqrt(v) + eps sqrt(c2)) / sqrt(c2)
        self._update(table, self.exp_avg, self.exp_avg_sq, rows, g, step_size, eps)
        if g_bias is not None:
            self._update(bias, self.bias_exp_avg, self.bias_exp_avg_sq, rows, g_bias, step_size, eps)

    def _compiled_step(self, table, bias, ids, d_rows, d_bias_rows, t) -> bool:
        # SparseRowAdam's compiled pass: duplicates summed and each row updated in one pass.
        if self.implementation == "python":
            return False
        state = {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}
        why = _dispatch.adam_obstacle(table, d_rows.to(table.dtype), state)
        if why is None and d_bias_rows is not None:
            why = _dispatch.adam_obstacle(bias, d_bias_rows.to(bias.dtype), {"exp_avg": self.bias_exp_avg,
                                                                             "exp_avg_sq": self.bias_exp_avg_sq})
        ext = _dispatch.compiled(self.implementation, why)
        if ext is None:
            return False
        b1, b2 = self.betas
        root_c2 = math.sqrt(1.0 - b2**t)
        step_size, eps = -self.lr * root_c2 / (1.0 - b1**t), self.eps * root_c2
        empty = table.new_empty(0)
        ext.sparse_row_adam_(table, empty, self.exp_avg, self.exp_avg_sq, ids, d_rows.to(table.dtype), b1, b2,
                             step_size, eps)
        if d_bias_rows is not None:
            ext.sparse_row_adam_(bias, empty, self.bias_exp_avg, self.bias_exp_avg_sq, ids,
                                 d_bias_rows.to(bias.dtype), b1, b2, step_size, eps)
        return True

    def _update(self, param, exp_avg, exp_avg_sq, rows, g, step_size, eps):
        b1, b2 = self.betas
        g = g.to(exp_avg.dtype)
        m = exp_avg.index_select(0, rows).lerp_(g, 1.0 - b1)
        v = exp_avg_sq.index_select(0, rows)
        if v.dim() < g.dim():  # row-wise second moment
            v.mul_(b2).add_(g.square().mean(1), alpha=1.0 - b2)
            denom = v.sqrt().add_(eps)[:, None]
        else:
            v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            denom = v.sqrt().add_(eps)
        exp_avg.index_copy_(0, rows, m)
        exp_avg_sq.index_copy_(0, rows, v)
        param.index_add_(0, rows, (m / denom).to(param.dtype), alpha=step_size)

    def _settings(self):
        return {"lr": self.lr, "betas": self.betas, "eps": self.eps, "rowwise": self.rowwise,
                "implementation": self.implementation}
