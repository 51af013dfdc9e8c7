// SparseRowAdam's step for a sparse gradient, in place.
//
// sparse_row_adam_(param, moments, exp_avg, exp_avg_sq, indices [K], values [K, ...], beta1,
//                  beta2, step_size, eps_term)
//   Duplicate rows summed, then each touched row's moments and parameters updated in one pass
//   over that row.
#include <algorithm>
#include <cmath>

#include "common.h"

namespace sampled_softmax {
namespace {

// The state of one parameter as row pointers: m (may be null) and v, each `stride` elements
// from one row to the next; v has `v_width` elements per row (1 when row-wise).
template <typename scalar_t>
struct RowState {
  scalar_t *m, *v;
  int64_t m_stride, v_stride, v_width;
};

constexpr int64_t kRowsAhead = 4;

template <typename scalar_t>
void prefetch_span(const scalar_t* x, int64_t count) {
  const char* begin = reinterpret_cast<const char*>(x);
  const char* end = reinterpret_cast<const char*>(x + count);
  for (const char* line = begin; line < end; line += 64) __builtin_prefetch(line, 1);
}

template <typename scalar_t>
void adam_rows(scalar_t* param, const RowState<scalar_t>& st, const std::vector<int64_t>& rows,
               const scalar_t* grads, int64_t width, double beta1, double beta2, double step_size,
               double eps_term) {
  const scalar_t w1 = static_cast<scalar_t>(1.0 - beta1), b2 = static_cast<scalar_t>(beta2);
  const scalar_t w2 = static_cast<scalar_t>(1.0 - beta2), lr = static_cast<scalar_t>(step_size);
  const scalar_t eps = static_cast<scalar_t>(eps_term);
  const int64_t num_rows = static_cast<int64_t>(rows.size());
  // One thread: at::parallel_for would run serially here anyway (this extension is built
  // without OpenMP, so as not to load a second OpenMP runtime beside PyTorch's). The rows are
  // random rows of a large table, latency bound: a later row's memory is requested early.
  std::vector<scalar_t> m_buf(width);
  for (int64_t u = 0; u < num_rows; ++u) {
    if (u + kRowsAhead < num_rows) {
      const int64_t ahead = rows[u + kRowsAhead];
      prefetch_span(param + ahead * width, width);
      if (st.m) prefetch_span(st.m + ahead * st.m_stride, width);
      prefetch_span(st.v + ahead * st.v_stride, st.v_width);
    }
    const int64_t r = rows[u];
    const scalar_t* g = grads + u * width;
    scalar_t* p = param + r * width;
    scalar_t* m = st.m ? st.m + r * st.m_stride : m_buf.data();
    scalar_t* v = st.v + r * st.v_stride;
    if (st.m) {  // torch.lerp: m + w (g - m)
      for (int64_t k = 0; k < width; ++k) m[k] += w1 * (g[k] - m[k]);
    } else {
      std::copy(g, g + width, m);
    }
    if (st.v_width == width) {
      for (int64_t k = 0; k < width; ++k) {
        v[k] = v[k] * b2 + w2 * (g[k] * g[k]);
        p[k] += lr * (m[k] / (std::sqrt(v[k]) + eps));
      }
    } else {  // row-wise: one second moment fed with the row's mean squared gradient
      scalar_t sq = 0;
      for (int64_t k = 0; k < width; ++k) sq += g[k] * g[k];
      v[0] = v[0] * b2 + w2 * (sq / static_cast<scalar_t>(width));
      const scalar_t denom = std::sqrt(v[0]) + eps;
      for (int64_t k = 0; k < width; ++k) p[k] += lr * (m[k] / denom);
    }
  }
}

}  // namespace

void sparse_row_adam_(Tensor param, Tensor moments, Tensor exp_avg, Tensor exp_avg_sq, const Tensor& indices,
                      const Tensor& values, double beta1, double beta2, double step_size, double eps_term) {
  TORCH_CHECK(param.is_contiguous() && param.device().is_cpu(), "sparse_row_adam_ takes a contiguous CPU parameter");
  TORCH_CHECK(param.dim() >= 1 && indices.dim() == 1 && values.size(0) == indices.size(0) &&
                  values.numel() == indices.numel() * (param.numel() / std::max<int64_t>(param.size(0), 1)),
              "sparse_row_adam_ takes row indices [K] and values [K, ...] matching the parameter's rows");
  const int64_t width = param.numel() / std::max<int64_t>(param.size(0), 1);
  Tensor idx = indices.contiguous(), vals = values.contiguous();
  const int64_t count = idx.numel();
  const int64_t* ip = idx.data_ptr<int64_t>();
  // Distinct rows in first-seen order; each one's gradient summed in the order given.
  SlotTable table(count);
  std::vector<int64_t> rows, slot_of(count);
  rows.reserve(count);
  const int64_t num_rows = param.size(0);
  for (int64_t k = 0; k < count; ++k) {
    // The caller checks the rows with its own message; this keeps every write inside `param`.
    TORCH_CHECK_INDEX(ip[k] >= 0 && ip[k] < num_rows, "sparse_row_adam_: row index ", ip[k],
                      " is out of bounds for a parameter of ", num_rows, " rows");
    const int64_t seen = table.find_or_insert(ip[k], static_cast<int64_t>(rows.size()));
    if (seen < 0) rows.push_back(ip[k]);
    slot_of[k] = seen < 0 ? static_cast<int64_t>(rows.size()) - 1 : seen;
  }
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "sparse_row_adam_", [&] {
    std::vector<scalar_t> summed(rows.size() * width, scalar_t(0));
    const scalar_t* vp = vals.data_ptr<scalar_t>();
    for (int64_t k = 0; k < count; ++k) {
      scalar_t* dst = summed.data() + slot_of[k] * width;
      for (int64_t j = 0; j < width; ++j) dst[j] += vp[k * width + j];
    }
    RowState<scalar_t> st{};
    if (moments.defined() && moments.numel() > 0) {  // [V, 2, ...]: m and v side by side
      st = {moments.data_ptr<scalar_t>(), moments.data_ptr<scalar_t>() + width, 2 * width, 2 * width, width};
    } else {
      const int64_t v_width = exp_avg_sq.numel() / std::max<int64_t>(exp_avg_sq.size(0), 1);
      st = {exp_avg.defined() && exp_avg.numel() > 0 ? exp_avg.data_ptr<scalar_t>() : nullptr,
            exp_avg_sq.data_ptr<scalar_t>(), width, v_width, v_width};
    }
    adam_rows(param.data_ptr<scalar_t>(), st, rows, summed.data(), width, beta1, beta2, step_size, eps_term);
  });
}

}  // namespace sampled_softmax
