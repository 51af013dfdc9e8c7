// The sampled softmax loss of one table with one label per row, as one compiled autograd
// Function: the same ATen operations as `_SampledSoftmax` in functional.py (which stays the
// reference and the fallback), without Python between them. Built on first use by
// `sampled_softmax.torch._compiled` through torch.utils.cpp_extension.
//
// forward(h [N, D], W [V, D], b [V] or empty, ids [N + S] (labels first), logq [N + S],
//         removed [N, S] bool or empty, sparse) -> loss [N]
// loss_i = logsumexp_k o_ik - o_i0 over o = [h_i . W_y + c_y, h_i . W_cand + c_cand], c = b - log E,
// removed candidates at -inf (probability 0, gradient exactly 0).
#include <torch/extension.h>

#include <limits>

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

struct SampledSoftmaxCore : public torch::autograd::Function<SampledSoftmaxCore> {
  static Tensor forward(AutogradContext* ctx, const Tensor& h, const Tensor& W, const Tensor& b,
                        const Tensor& ids, const Tensor& logq, const Tensor& removed, bool sparse) {
    const int64_t n = h.size(0), m = ids.size(0), s = m - n;
    const bool has_bias = b.numel() > 0;
    Tensor rows = W.index_select(0, ids);
    Tensor corr = has_bias ? b.index_select(0, ids).sub_(logq) : logq.neg();
    Tensor w_true = rows.narrow(0, 0, n), w_cand = rows.narrow(0, n, s);
    Tensor logits = torch::empty({n, s + 1}, h.options());
    Tensor cand_logits = logits.narrow(1, 1, s);
    torch::addmm_out(cand_logits, corr.narrow(0, n, s).unsqueeze(0), h, w_cand.t());
    logits.select(1, 0).copy_(torch::linalg_vecdot(h, w_true).add_(corr.narrow(0, 0, n)));
    if (removed.numel() > 0) {
      cand_logits.masked_fill_(removed, -std::numeric_limits<double>::infinity());
    }
    Tensor logp = torch::log_softmax(logits, 1);
    ctx->saved_data["sparse"] = sparse;
    ctx->saved_data["has_bias"] = has_bias;
    ctx->saved_data["num_classes"] = W.size(0);
    ctx->save_for_backward({h, rows, ids, logp});
    return logp.select(1, 0).neg();
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    const Tensor &h = saved[0], &rows = saved[1], &ids = saved[2], &logp = saved[3];
    const bool sparse = ctx->saved_data["sparse"].toBool();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const int64_t num_classes = ctx->saved_data["num_classes"].toInt();
    const int64_t n = h.size(0), m = ids.size(0), s = m - n, d = h.size(1);
    // d loss_i / d o_ik = g_i * (p_ik - [k == 0]).
    Tensor go = grad_outputs[0].to(logp.scalar_type());
    Tensor g = logp.exp().mul_(go.unsqueeze(1));
    g.select(1, 0).sub_(go);
    Tensor g_true = g.narrow(1, 0, 1), g_cand = g.narrow(1, 1, s);
    Tensor w_true = rows.narrow(0, 0, n), w_cand = rows.narrow(0, n, s);

    Tensor d_h, d_W, d_b;
    if (ctx->needs_input_grad(0)) {
      d_h = torch::addmm(w_true * g_true, g_cand, w_cand);
    }
    if (ctx->needs_input_grad(1)) {
      Tensor d_rows = torch::empty({m, d}, h.options());
      Tensor d_true = d_rows.narrow(0, 0, n), d_cand = d_rows.narrow(0, n, s);
      torch::mul_out(d_true, h, g_true);
      torch::mm_out(d_cand, g_cand.t(), h);
      // Sparse: uncoalesced COO rows (duplicates summed by whoever coalesces), like
      // nn.Embedding(sparse=True)'s.
      d_W = sparse ? torch::_sparse_coo_tensor_unsafe(ids.unsqueeze(0), d_rows, {num_classes, d})
                   : torch::zeros({num_classes, d}, h.options()).index_add_(0, ids, d_rows);
    }
    if (has_bias && ctx->needs_input_grad(2)) {
      Tensor d_b_rows = torch::cat({g_true.reshape({-1}), g_cand.sum(0)});
      d_b = sparse ? torch::_sparse_coo_tensor_unsafe(ids.unsqueeze(0), d_b_rows, {num_classes})
                   : torch::zeros({num_classes}, h.options()).index_add_(0, ids, d_b_rows);
    }
    return {d_h, d_W, d_b, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor sampled_softmax_core(const Tensor& h, const Tensor& W, const Tensor& b, const Tensor& ids,
                            const Tensor& logq, const Tensor& removed, bool sparse) {
  return SampledSoftmaxCore::apply(h, W, b, ids, logq, removed, sparse);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sampled_softmax_core", &sampled_softmax_core, "Sampled softmax loss, one table, one label per row");
}
