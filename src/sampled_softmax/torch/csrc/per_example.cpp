// A loss over columns of each example's own (word2vec's negative sampling, noise drawn per
// example): the twin of `_autograd.PerExampleLoss` for one table and one label per row.
//
// per_example_core(h [N, D], W [V, D], b [V] or empty, ids [N, C] (the label, then C - 1 noise
//                  classes), remove_hits, head, sparse) -> loss [N]
//   o_ic = h_i . W_{ids_ic} + b_{ids_ic}; with remove_hits a noise column equal to the row's
//   label is removed (-inf: loss 0, gradient exactly 0, as word2vec skips it); then the head of
//   loss.cpp. Backward: d h_i = sum_c g_ic W_{ids_ic} and d W_{ids_ic} = g_ic h_i (sparse COO
//   rows, or dense), g = d loss / d o. Rows run in parallel; nothing of size [N, C, D] is read
//   twice: the table is read in place (saved for backward, so an in-place change of it between
//   forward and backward is autograd's error, never a silently wrong gradient).
#include <cmath>
#include <limits>

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include "common.h"

namespace sampled_softmax {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Rows per task: a row is C dot products of length D, a few microseconds.
constexpr int64_t kGrain = 64;
// Table rows are read at random: ask for those of the example `kAhead` rows on while this one
// computes (memory latency, not arithmetic, is the cost of a row; measured 2x on the forward).
constexpr int64_t kAhead = 2;

template <typename scalar_t>
inline void prefetch_rows(const scalar_t* table, const int64_t* row_ids, int64_t count, int64_t d) {
  for (int64_t k = 0; k < count; ++k) {
    const char* row = reinterpret_cast<const char*>(table + row_ids[k] * d);
    for (int64_t byte = 0; byte < d * static_cast<int64_t>(sizeof(scalar_t)); byte += 64) __builtin_prefetch(row + byte);
  }
}

Tensor per_example_logits(const Tensor& h, const Tensor& W, const Tensor& b, const Tensor& ids, bool remove_hits) {
  const int64_t n = ids.size(0), c = ids.size(1), d = h.size(1);
  Tensor logits = at::empty({n, c}, h.options());
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "sampled_softmax_per_example_logits", [&] {
    const scalar_t* hp = h.data_ptr<scalar_t>();
    const scalar_t* wp = W.data_ptr<scalar_t>();
    const scalar_t* bp = b.numel() > 0 ? b.data_ptr<scalar_t>() : nullptr;
    const int64_t* id = ids.data_ptr<int64_t>();
    scalar_t* o = logits.data_ptr<scalar_t>();
    const scalar_t minus_inf = -std::numeric_limits<scalar_t>::infinity();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t* row = id + i * c;
        if (i + kAhead < end) prefetch_rows(wp, id + (i + kAhead) * c, c, d);
        for (int64_t k = 0; k < c; ++k) {
          if (k > 0 && remove_hits && row[k] == row[0]) {
            o[i * c + k] = minus_inf;
            continue;
          }
          o[i * c + k] = dot(hp + i * d, wp + row[k] * d, d) + (bp ? bp[row[k]] : scalar_t(0));
        }
      }
    });
  });
  return logits;
}

struct PerExampleCore : public torch::autograd::Function<PerExampleCore> {
  static Tensor forward(AutogradContext* ctx, const Tensor& h_in, const Tensor& W_in, const Tensor& b_in,
                        const Tensor& ids_in, bool remove_hits, int64_t head, bool sparse) {
    const Tensor h = h_in.contiguous(), W = W_in.contiguous(), b = b_in.contiguous();
    const Tensor ids = ids_in.contiguous();
    auto out = head_forward(per_example_logits(h, W, b, ids, remove_hits), head_kind(head));
    ctx->saved_data["head"] = head;
    ctx->saved_data["sparse"] = sparse;
    ctx->saved_data["has_bias"] = b.numel() > 0;
    ctx->save_for_backward({h, W, ids, out[1]});
    return out[0];
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "negative_sampling_loss is differentiable once: its backward is explicit, so create_graph=True "
                "(double backward) is not supported");
    auto saved = ctx->get_saved_variables();
    const Tensor &h = saved[0], &W = saved[1], &ids = saved[2], &act = saved[3];
    const bool sparse = ctx->saved_data["sparse"].toBool();
    const bool need_h = ctx->needs_input_grad(0), need_w = ctx->needs_input_grad(1);
    const bool need_b = ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2);
    const Tensor g = head_grad(act, grad_outputs[0], head_kind(ctx->saved_data["head"].toInt()));
    const int64_t n = ids.size(0), c = ids.size(1), d = h.size(1);
    const Tensor flat = ids.reshape({-1});
    Tensor d_h = need_h ? at::empty({n, d}, h.options()) : Tensor();
    Tensor d_rows = need_w ? at::empty({n * c, d}, h.options()) : Tensor();
    AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "sampled_softmax_per_example_backward", [&] {
      const scalar_t* hp = h.data_ptr<scalar_t>();
      const scalar_t* wp = W.data_ptr<scalar_t>();
      const scalar_t* gp = g.data_ptr<scalar_t>();
      const int64_t* id = ids.data_ptr<int64_t>();
      scalar_t* dh = need_h ? d_h.data_ptr<scalar_t>() : nullptr;
      scalar_t* dr = need_w ? d_rows.data_ptr<scalar_t>() : nullptr;
      at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const scalar_t* hi = hp + i * d;
          if (dh && i + kAhead < end) prefetch_rows(wp, id + (i + kAhead) * c, c, d);
          if (dh) {
            scalar_t* out = dh + i * d;
            for (int64_t j = 0; j < d; ++j) out[j] = 0;
          }
          for (int64_t k = 0; k < c; ++k) {
            const scalar_t gik = gp[i * c + k];
            if (dh) {
              const scalar_t* w = wp + id[i * c + k] * d;
              scalar_t* out = dh + i * d;
              for (int64_t j = 0; j < d; ++j) out[j] += gik * w[j];
            }
            if (dr) {
              scalar_t* out = dr + (i * c + k) * d;
              for (int64_t j = 0; j < d; ++j) out[j] = gik * hi[j];
            }
          }
        }
      });
    });
    Tensor d_W = need_w ? scatter_rows(flat, d_rows, W.sizes(), sparse) : Tensor();
    Tensor d_b = need_b ? scatter_rows(flat, g.reshape({-1}), {W.size(0)}, sparse) : Tensor();
    return {d_h, d_W, d_b, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

}  // namespace

Tensor per_example_core(const Tensor& h, const Tensor& W, const Tensor& b, const Tensor& ids, bool remove_hits,
                        int64_t head, bool sparse) {
  head_kind(head);
  TORCH_CHECK(h.dim() == 2 && W.dim() == 2 && ids.dim() == 2 && ids.size(0) == h.size(0) && W.size(1) == h.size(1),
              "per_example_core: expected h [N, D], W [V, D], ids [N, C]");
  TORCH_CHECK(ids.scalar_type() == at::kLong && W.scalar_type() == h.scalar_type() &&
                  (b.numel() == 0 || b.scalar_type() == h.scalar_type()),
              "per_example_core: expected int64 ids and h, W, b of one dtype");
  // The callers check labels and draws; this keeps a bad id from reading outside the table.
  const Tensor flat = ids.contiguous();
  const int64_t* id = flat.data_ptr<int64_t>();
  for (int64_t k = 0; k < flat.numel(); ++k) {
    TORCH_CHECK(id[k] >= 0 && id[k] < W.size(0), "per_example_core: id ", id[k], " outside [0, ", W.size(0), ")");
  }
  return PerExampleCore::apply(h, W, b, ids, remove_hits, head, sparse);
}

}  // namespace sampled_softmax
