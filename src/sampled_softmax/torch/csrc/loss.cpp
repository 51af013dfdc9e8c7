// The sampled softmax loss of one table with one label per row: the same arithmetic as
// `loss_forward` / `loss_backward` in `_autograd.py` (which stay the reference and the fallback),
// without Python between the steps.
//
// sampled_softmax_core(h [N, D], W [V, D], b [V] or empty, ids [N + S] (labels first),
//                      logq [N + S], removed, sparse) -> loss [N]
//   loss_i = logsumexp_k o_ik - o_i0 over o = [h_i . W_y + c_y, h_i . W_cand + c_cand],
//   c = b - log E. `removed` is a bool [N, S] mask, or int64 flat indices i * S + j, of
//   candidates set to -inf (probability 0, gradient exactly 0); a column whose log E is +inf
//   is removed from every row.
//
// core_forward(h, W, b, ids, logq, removed) -> [loss, logp [N, S + 1], rows [N + S, D]] and
// core_backward(grad_loss, h, rows, ids, logp, need_h, need_w, need_b) -> [d_h, d_rows, d_b_rows]
//   The same loss as two plain functions, for the custom operators of `_ops.py` (torch.compile,
//   meta tensors, torch.export), whose autograd formula scatters the row gradients itself.
#include <cmath>
#include <limits>

#include <torch/csrc/autograd/custom_function.h>

#include "common.h"

namespace sampled_softmax {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The forward: {loss [N], logp [N, S + 1] (log-softmax of the row logits, true column first),
// rows [N + S, D] (the gathered rows of W)}.
std::vector<Tensor> core_forward(const Tensor& h, const Tensor& W, const Tensor& b, const Tensor& ids,
                                 const Tensor& logq, const Tensor& removed) {
  const int64_t n = h.size(0), m = ids.size(0), s = m - n;
  const bool has_bias = b.numel() > 0;
  Tensor hc = h.contiguous();
  Tensor rows = W.index_select(0, ids);
  Tensor w_cand = rows.narrow(0, n, s);
  Tensor corr = at::empty({m}, h.options());
  Tensor logits = at::empty({n, s + 1}, h.options());
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "sampled_softmax_core_corr", [&] {
    // corr = b[ids] - log E: one pass instead of a gather and a subtraction.
    const int64_t* id = ids.data_ptr<int64_t>();
    const scalar_t* lq = logq.data_ptr<scalar_t>();
    scalar_t* c = corr.data_ptr<scalar_t>();
    if (has_bias) {
      Tensor bc = b.contiguous();
      const scalar_t* bp = bc.data_ptr<scalar_t>();
      for (int64_t k = 0; k < m; ++k) c[k] = bp[id[k]] - lq[k];
    } else {
      for (int64_t k = 0; k < m; ++k) c[k] = -lq[k];
    }
  });
  Tensor cand_logits = logits.narrow(1, 1, s);
  at::addmm_out(cand_logits, corr.narrow(0, n, s).unsqueeze(0), hc, w_cand.t());
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "sampled_softmax_core_true", [&] {
    // The true column: one dot product per row, written in place; then removed candidates.
    const int64_t d = hc.size(1);
    const scalar_t* hp = hc.data_ptr<scalar_t>();
    const scalar_t* wp = rows.data_ptr<scalar_t>();
    const scalar_t* c = corr.data_ptr<scalar_t>();
    scalar_t* lp = logits.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) lp[i * (s + 1)] = dot(hp + i * d, wp + i * d, d) + c[i];
    if (removed.numel() > 0 && removed.scalar_type() == at::kLong) {
      const int64_t* r = removed.data_ptr<int64_t>();
      const scalar_t minus_inf = -std::numeric_limits<scalar_t>::infinity();
      for (int64_t k = 0; k < removed.numel(); ++k) lp[(r[k] / s) * (s + 1) + 1 + r[k] % s] = minus_inf;
    }
  });
  if (removed.numel() > 0 && removed.scalar_type() == at::kBool) {
    cand_logits.masked_fill_(removed, -std::numeric_limits<double>::infinity());
  }
  Tensor logp = at::log_softmax(logits, 1);
  return {logp.select(1, 0).neg(), logp, rows};
}

// The backward from the forward's saved values: {d_h [N, D], d_rows [N + S, D] (the gradient
// of each gathered row), d_b_rows [N + S]}, each undefined when not asked for.
std::vector<Tensor> core_backward(const Tensor& grad_loss, const Tensor& h_in, const Tensor& rows, const Tensor& ids,
                                  const Tensor& logp, bool need_h, bool need_w, bool need_b) {
  const Tensor h = h_in.contiguous();
  const int64_t n = h.size(0), m = ids.size(0), s = m - n, d = h.size(1);
  // d loss_i / d o_ik = g_i * (p_ik - [k == 0]).
  Tensor go = grad_loss.to(logp.scalar_type()).contiguous();
  Tensor g = logp.exp();
  Tensor d_rows = need_w ? at::empty({m, d}, h.options()) : Tensor();
  Tensor d_b_rows = need_b ? at::zeros({m}, h.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "sampled_softmax_core_scale", [&] {
    scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* gop = go.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) {
      scalar_t* gi = gp + i * (s + 1);
      const scalar_t gi_out = gop[i];
      for (int64_t k = 0; k <= s; ++k) gi[k] *= gi_out;
      gi[0] -= gi_out;
    }
    if (need_w) {  // true rows: d W_{y_i} = g_i0 h_i
      const scalar_t* hp = h.data_ptr<scalar_t>();
      scalar_t* dp = d_rows.data_ptr<scalar_t>();
      for (int64_t i = 0; i < n; ++i) {
        const scalar_t gt = gp[i * (s + 1)];
        for (int64_t k = 0; k < d; ++k) dp[i * d + k] = gt * hp[i * d + k];
      }
    }
    if (need_b) {  // true columns, then each candidate column summed over the rows
      scalar_t* db = d_b_rows.data_ptr<scalar_t>();
      for (int64_t i = 0; i < n; ++i) {
        const scalar_t* gi = gp + i * (s + 1);
        db[i] = gi[0];
        for (int64_t j = 0; j < s; ++j) db[n + j] += gi[1 + j];
      }
    }
  });
  Tensor g_cand = g.narrow(1, 1, s);
  Tensor w_cand = rows.narrow(0, n, s);
  Tensor d_h;
  if (need_h) {
    d_h = at::mm(g_cand, w_cand);
    AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "sampled_softmax_core_dh", [&] {
      const scalar_t* gp = g.data_ptr<scalar_t>();
      const scalar_t* wp = rows.data_ptr<scalar_t>();
      scalar_t* dh = d_h.data_ptr<scalar_t>();
      for (int64_t i = 0; i < n; ++i) {
        const scalar_t gt = gp[i * (s + 1)];
        for (int64_t k = 0; k < d; ++k) dh[i * d + k] += gt * wp[i * d + k];
      }
    });
  }
  if (need_w) {
    Tensor d_cand = d_rows.narrow(0, n, s);
    at::mm_out(d_cand, g_cand.t(), h);
  }
  return {d_h, d_rows, d_b_rows};
}

namespace {

// Row gradients into a [rows, ...] table gradient: uncoalesced sparse COO rows (duplicates
// summed by whoever coalesces, like nn.Embedding(sparse=True)'s) or dense.
Tensor scatter_rows(const Tensor& ids, const Tensor& row_grads, at::IntArrayRef shape, bool sparse) {
  if (sparse) return at::_sparse_coo_tensor_unsafe(ids.unsqueeze(0), row_grads, shape);
  return at::zeros(shape, row_grads.options()).index_add_(0, ids, row_grads);
}

struct SampledSoftmaxCore : public torch::autograd::Function<SampledSoftmaxCore> {
  static Tensor forward(AutogradContext* ctx, const Tensor& h, const Tensor& W, const Tensor& b,
                        const Tensor& ids, const Tensor& logq, const Tensor& removed, bool sparse) {
    auto out = core_forward(h, W, b, ids, logq, removed);
    ctx->saved_data["sparse"] = sparse;
    ctx->saved_data["has_bias"] = b.numel() > 0;
    ctx->saved_data["num_classes"] = W.size(0);
    ctx->save_for_backward({h, out[2], ids, out[1]});
    return out[0];
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    // Autograd runs a backward with grad mode on only for create_graph=True (functional.py's
    // ONCE_DIFFERENTIABLE says the same).
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "sampled_softmax_loss is differentiable once: its backward is explicit, so create_graph=True "
                "(double backward, e.g. a gradient penalty through it) is not supported");
    auto saved = ctx->get_saved_variables();
    const Tensor &h = saved[0], &rows = saved[1], &ids = saved[2], &logp = saved[3];
    const bool sparse = ctx->saved_data["sparse"].toBool();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const int64_t num_classes = ctx->saved_data["num_classes"].toInt();
    const bool need_w = ctx->needs_input_grad(1), need_b = has_bias && ctx->needs_input_grad(2);
    auto grads = core_backward(grad_outputs[0], h, rows, ids, logp, ctx->needs_input_grad(0), need_w, need_b);
    Tensor d_W = need_w ? scatter_rows(ids, grads[1], {num_classes, h.size(1)}, sparse) : Tensor();
    Tensor d_b = need_b ? scatter_rows(ids, grads[2], {num_classes}, sparse) : Tensor();
    return {grads[0], d_W, d_b, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

}  // namespace

Tensor sampled_softmax_core(const Tensor& h, const Tensor& W, const Tensor& b, const Tensor& ids,
                            const Tensor& logq, const Tensor& removed, bool sparse) {
  return SampledSoftmaxCore::apply(h, W, b, ids, logq, removed, sparse);
}

}  // namespace sampled_softmax
