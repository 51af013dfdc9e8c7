// The sampled loss of one table with one label per row: the same arithmetic as
// `corrected_logits_forward` / `_backward` and the heads of `_autograd.py` (which stay the
// reference and the fallback), without Python between the steps.
//
// sampled_softmax_core(h [N, D], W [V, D], b [V] or empty, ids [N + S] (labels first),
//                      logq [N + S], removed, head, sparse) -> loss [N]
//   Row logits o = [h_i . W_y + c_y, h_i . W_cand + c_cand], c = b - log E; then the head
//   (HeadKind, common.h): softmax, loss_i = logsumexp_k o_ik - o_i0; sigmoid (NCE, negative
//   sampling), loss_i = softplus(-o_i0) + sum_{k>0} softplus(o_ik). `removed` is a bool [N, S]
//   mask, or int64 flat indices i * S + j, of candidates set to -inf (probability 0, loss 0,
//   gradient exactly 0); a column whose log E is +inf is removed from every row.
//
// core_forward(h, W, b, ids, logq, removed, head) -> [loss, act [N, S + 1], rows [N + S, D]] and
// core_backward(grad_loss, h, rows, ids, act, head, need_h, need_w, need_b) -> [d_h, d_rows, d_b_rows]
//   The same loss as two plain functions, for the custom operators of `_ops.py` (torch.compile,
//   meta tensors, torch.export), whose autograd formula scatters the row gradients itself.
//   `act` is what the head's backward needs: log-softmax (softmax) or sigmoid (sigmoid) of o.
#include <cmath>
#include <limits>

#include <torch/csrc/autograd/custom_function.h>

#include "common.h"

namespace sampled_softmax {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

HeadKind head_kind(int64_t value) {
  TORCH_CHECK(value == static_cast<int64_t>(HeadKind::kSoftmax) || value == static_cast<int64_t>(HeadKind::kSigmoid),
              "sampled_softmax: unknown head ", value);
  return static_cast<HeadKind>(value);
}

// The head over row logits [N, C] (true column first, removed columns -inf): {loss [N], act [N, C]}.
std::vector<Tensor> head_forward(const Tensor& logits, HeadKind head) {
  if (head == HeadKind::kSoftmax) {
    Tensor logp = at::log_softmax(logits, 1);
    return {logp.select(1, 0).neg(), logp};
  }
  // softplus(x) = max(x, 0) + log1p(exp(-|x|)): the true column's -log sigmoid(o) at x = -o, a
  // candidate's -log sigmoid(-o) at x = o; exactly 0 for a removed column (o = -inf).
  Tensor x = logits.clone();
  x.select(1, 0).neg_();
  Tensor loss = x.clamp_min(0).add_(x.abs().neg_().exp_().log1p_()).sum(1);
  Tensor act = at::sigmoid(logits).contiguous();
  return {loss, act};
}

// d loss_i / d o_ik = g_i * (p_ik - [k == 0]), p = exp(act) (softmax) or act (sigmoid). ATen's
// element-wise ops, not a loop here: they run on PyTorch's threads (this extension is built
// without OpenMP, so a loop of its own is one thread), and at large S these passes are the
// loss's biggest cost after the matrix products.
Tensor head_grad(const Tensor& act, const Tensor& grad_loss, HeadKind head) {
  Tensor go = grad_loss.to(act.scalar_type()).reshape({-1, 1});
  Tensor g = head == HeadKind::kSoftmax ? at::exp(act).mul_(go) : at::mul(act, go);
  g.narrow(1, 0, 1).sub_(go);
  return g;
}

// The forward: {loss [N], act [N, S + 1] (the head's activations of the row logits, true column first),
// rows [N + S, D] (the gathered rows of W)}.
std::vector<Tensor> core_forward(const Tensor& h, const Tensor& W, const Tensor& b, const Tensor& ids,
                                 const Tensor& logq, const Tensor& removed, int64_t head) {
  const HeadKind kind = head_kind(head);
  const int64_t n = h.size(0), m = ids.size(0), s = m - n;
  const bool has_bias = b.numel() > 0;
  Tensor hc = h.contiguous();
  Tensor rows = W.index_select(0, ids);
  Tensor w_cand = rows.narrow(0, n, s);
  Tensor corr = at::empty({m}, h.options());
  // The row logits [N, S + 1] as a view of a wider buffer whose candidate block starts on a
  // 64-byte boundary, every row: the GEMM below writes into it at MKL's speed (with rows of an
  // odd S + 1 it ran 20-25% slower at S = 8192), for one strided read by the head.
  constexpr int64_t kAlign = 16;
  const int64_t width = (kAlign + s + kAlign - 1) / kAlign * kAlign;
  Tensor logits = at::empty({n, width}, h.options()).narrow(1, kAlign - 1, s + 1);
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
    for (int64_t i = 0; i < n; ++i) lp[i * width] = dot(hp + i * d, wp + i * d, d) + c[i];
    if (removed.numel() > 0 && removed.scalar_type() == at::kLong) {
      const int64_t* r = removed.data_ptr<int64_t>();
      const scalar_t minus_inf = -std::numeric_limits<scalar_t>::infinity();
      for (int64_t k = 0; k < removed.numel(); ++k) lp[(r[k] / s) * width + 1 + r[k] % s] = minus_inf;
    }
  });
  if (removed.numel() > 0 && removed.scalar_type() == at::kBool) {
    cand_logits.masked_fill_(removed, -std::numeric_limits<double>::infinity());
  }
  auto out = head_forward(logits, kind);
  return {out[0], out[1], rows};
}

// The backward from the forward's saved values: {d_h [N, D], d_rows [N + S, D] (the gradient
// of each gathered row), d_b_rows [N + S]}, each undefined when not asked for.
std::vector<Tensor> core_backward(const Tensor& grad_loss, const Tensor& h_in, const Tensor& rows, const Tensor& ids,
                                  const Tensor& act, int64_t head, bool need_h, bool need_w, bool need_b) {
  const Tensor h = h_in.contiguous();
  const int64_t n = h.size(0), m = ids.size(0), s = m - n, d = h.size(1);
  Tensor g = head_grad(act, grad_loss, head_kind(head));
  Tensor g_true = g.narrow(1, 0, 1), g_cand = g.narrow(1, 1, s);
  Tensor w_true = rows.narrow(0, 0, n), w_cand = rows.narrow(0, n, s);
  Tensor d_rows, d_b_rows, d_h;
  if (need_w) {  // true rows: d W_{y_i} = g_i0 h_i; candidates: g_cand^T h
    d_rows = at::empty({m, d}, h.options());
    Tensor d_true = d_rows.narrow(0, 0, n);
    at::mul_out(d_true, h, g_true);
    Tensor d_cand = d_rows.narrow(0, n, s);
    at::mm_out(d_cand, g_cand.t(), h);
  }
  if (need_b) {  // true columns, then each candidate column summed over the rows
    d_b_rows = at::empty({m}, h.options());
    d_b_rows.narrow(0, 0, n).copy_(g_true.squeeze(1));
    Tensor d_b_cand = d_b_rows.narrow(0, n, s);
    at::sum_out(d_b_cand, g_cand, 0);
  }
  if (need_h) d_h = at::mm(g_cand, w_cand).addcmul_(w_true, g_true);
  return {d_h, d_rows, d_b_rows};
}

// Row gradients into a [rows, ...] table gradient: uncoalesced sparse COO rows (duplicates
// summed by whoever coalesces, like nn.Embedding(sparse=True)'s) or dense.
Tensor scatter_rows(const Tensor& ids, const Tensor& row_grads, at::IntArrayRef shape, bool sparse) {
  if (sparse) return at::_sparse_coo_tensor_unsafe(ids.unsqueeze(0), row_grads, shape);
  return at::zeros(shape, row_grads.options()).index_add_(0, ids, row_grads);
}

namespace {

struct SampledSoftmaxCore : public torch::autograd::Function<SampledSoftmaxCore> {
  static Tensor forward(AutogradContext* ctx, const Tensor& h, const Tensor& W, const Tensor& b,
                        const Tensor& ids, const Tensor& logq, const Tensor& removed, int64_t head, bool sparse) {
    auto out = core_forward(h, W, b, ids, logq, removed, head);
    ctx->saved_data["head"] = head;
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
    const Tensor &h = saved[0], &rows = saved[1], &ids = saved[2], &act = saved[3];
    const int64_t head = ctx->saved_data["head"].toInt();
    const bool sparse = ctx->saved_data["sparse"].toBool();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const int64_t num_classes = ctx->saved_data["num_classes"].toInt();
    const bool need_w = ctx->needs_input_grad(1), need_b = has_bias && ctx->needs_input_grad(2);
    auto grads = core_backward(grad_outputs[0], h, rows, ids, act, head, ctx->needs_input_grad(0), need_w, need_b);
    Tensor d_W = need_w ? scatter_rows(ids, grads[1], {num_classes, h.size(1)}, sparse) : Tensor();
    Tensor d_b = need_b ? scatter_rows(ids, grads[2], {num_classes}, sparse) : Tensor();
    return {grads[0], d_W, d_b, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

}  // namespace

Tensor sampled_softmax_core(const Tensor& h, const Tensor& W, const Tensor& b, const Tensor& ids,
                            const Tensor& logq, const Tensor& removed, int64_t head, bool sparse) {
  head_kind(head);
  return SampledSoftmaxCore::apply(h, W, b, ids, logq, removed, head, sparse);
}

}  // namespace sampled_softmax
