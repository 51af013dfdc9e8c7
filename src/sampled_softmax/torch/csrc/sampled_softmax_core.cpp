// The sampled softmax loss of one table with one label per row, compiled: the same arithmetic
// as `_SampledSoftmax` in functional.py (which stays the reference and the fallback), without
// Python between the steps. Built on first use by `sampled_softmax.torch._compiled` through
// torch.utils.cpp_extension. Two entry points:
//
// sampled_softmax_core(h [N, D], W [V, D], b [V] or empty, ids [N + S] (labels first),
//                      logq [N + S], removed, sparse) -> loss [N]
//   loss_i = logsumexp_k o_ik - o_i0 over o = [h_i . W_y + c_y, h_i . W_cand + c_cand],
//   c = b - log E. `removed` is a bool [N, S] mask, or int64 flat indices i * S + j, of
//   candidates set to -inf (probability 0, gradient exactly 0); a column whose log E is +inf
//   is removed from every row.
//
// sampled_softmax_sampled(h, W, b, labels [N], num_sampled, distribution, draw, generator,
//                         remove_hits, subtract_log_q, sparse, ignore_index, unique_draw_limit)
//                         -> loss [N] or None
//   Draws the candidates on the CPU as `sampled_softmax.torch.samplers` does (the same uniforms
//   from the same generator, the same classes, the same float32 expected counts), then the core.
//   None, before drawing anything, when a label is outside [0, V) or equals ignore_index: the
//   caller's general path then reports the error or handles the ignored labels.
//
// core_forward(h, W, b, ids, logq, removed) -> [loss, logp [N, S + 1], rows [N + S, D]] and
// core_backward(grad_loss, h, rows, ids, logp, need_h, need_w, need_b) -> [d_h, d_rows, d_b_rows]
//   The same loss as two plain functions, for the custom operators of `_ops.py` (torch.compile,
//   meta tensors, torch.export), whose autograd formula scatters the row gradients itself.
//
// sparse_row_adam_(param, moments, exp_avg, exp_avg_sq, indices [K], values [K, ...], beta1,
//                  beta2, step_size, eps_term)
//   SparseRowAdam's step for a sparse gradient, in place: duplicate rows summed, then each
//   touched row's moments and parameters updated in one pass over that row.
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

// x . y with independent partial sums: a single running sum cannot be vectorised without
// reassociation, which the compiler may not do on its own.
template <typename scalar_t>
scalar_t dot(const scalar_t* x, const scalar_t* y, int64_t d) {
  constexpr int kLanes = 8;
  scalar_t part[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= d; k += kLanes) {
    for (int l = 0; l < kLanes; ++l) part[l] += x[k + l] * y[k + l];
  }
  scalar_t acc = 0;
  for (; k < d; ++k) acc += x[k] * y[k];
  for (int l = 0; l < kLanes; ++l) acc += part[l];
  return acc;
}

// ---------------------------------------------------------------------------------------------
// The loss

// The forward: {loss [N], logp [N, S + 1] (log-softmax of the row logits, true column first),
// rows [N + S, D] (the gathered rows of W)}.
std::vector<Tensor> core_forward(const Tensor& h, const Tensor& W, const Tensor& b, const Tensor& ids,
                                 const Tensor& logq, const Tensor& removed) {
  const int64_t n = h.size(0), m = ids.size(0), s = m - n;
  const bool has_bias = b.numel() > 0;
  Tensor hc = h.contiguous();
  Tensor rows = W.index_select(0, ids);
  Tensor w_cand = rows.narrow(0, n, s);
  Tensor corr = torch::empty({m}, h.options());
  Tensor logits = torch::empty({n, s + 1}, h.options());
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
  torch::addmm_out(cand_logits, corr.narrow(0, n, s).unsqueeze(0), hc, w_cand.t());
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "sampled_softmax_core_true", [&] {
    // The true column: one dot product per row, written in place; then removed candidates.
    const int64_t d = hc.size(1);
    const scalar_t* hp = hc.data_ptr<scalar_t>();
    const scalar_t* wp = rows.data_ptr<scalar_t>();
    const scalar_t* c = corr.data_ptr<scalar_t>();
    scalar_t* lp = logits.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) lp[i * (s + 1)] = dot(hp + i * d, wp + i * d, d) + c[i];
    if (removed.numel() > 0 && removed.scalar_type() == torch::kLong) {
      const int64_t* r = removed.data_ptr<int64_t>();
      const scalar_t minus_inf = -std::numeric_limits<scalar_t>::infinity();
      for (int64_t k = 0; k < removed.numel(); ++k) lp[(r[k] / s) * (s + 1) + 1 + r[k] % s] = minus_inf;
    }
  });
  if (removed.numel() > 0 && removed.scalar_type() == torch::kBool) {
    cand_logits.masked_fill_(removed, -std::numeric_limits<double>::infinity());
  }
  Tensor logp = torch::log_softmax(logits, 1);
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
  Tensor d_rows = need_w ? torch::empty({m, d}, h.options()) : Tensor();
  Tensor d_b_rows = need_b ? torch::zeros({m}, h.options()) : Tensor();
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
    d_h = torch::mm(g_cand, w_cand);
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
    torch::mm_out(d_cand, g_cand.t(), h);
  }
  return {d_h, d_rows, d_b_rows};
}

// Row gradients into a [rows, ...] table gradient: uncoalesced sparse COO rows (duplicates
// summed by whoever coalesces, like nn.Embedding(sparse=True)'s) or dense.
Tensor scatter_rows(const Tensor& ids, const Tensor& row_grads, at::IntArrayRef shape, bool sparse) {
  if (sparse) return torch::_sparse_coo_tensor_unsafe(ids.unsqueeze(0), row_grads, shape);
  return torch::zeros(shape, row_grads.options()).index_add_(0, ids, row_grads);
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

Tensor sampled_softmax_core(const Tensor& h, const Tensor& W, const Tensor& b, const Tensor& ids,
                            const Tensor& logq, const Tensor& removed, bool sparse) {
  return SampledSoftmaxCore::apply(h, W, b, ids, logq, removed, sparse);
}

// ---------------------------------------------------------------------------------------------
// Candidate sampling: the CPU twin of samplers.py's `draw_from_uniforms`

enum DistributionKind : int64_t { kUniform = 0, kLogUniform = 1 };
enum DrawKind : int64_t { kWithReplacement = 0, kUnique = 1, kUniqueExact = 2 };  // samplers.DRAWS

struct Distribution {
  int64_t kind, num_classes;
  double log_range;  // log(V + 1)

  int64_t from_uniform(double u) const {
    if (kind == kUniform) return std::min<int64_t>(static_cast<int64_t>(u * num_classes), num_classes - 1);
    // `% V` guards the round-off at u -> 1, as TensorFlow does.
    return (static_cast<int64_t>(std::exp(u * log_range)) - 1) % num_classes;
  }

  double prob(int64_t k) const {
    if (kind == kUniform) return 1.0 / num_classes;
    return std::log1p(1.0 / (static_cast<double>(k) + 1.0)) / log_range;
  }
};

// Open addressing from a class id to the first slot that holds it.
class SlotTable {
 public:
  explicit SlotTable(int64_t expected) {
    int64_t capacity = 16;
    while (capacity < 4 * expected) capacity <<= 1;
    keys_.assign(capacity, -1);
    slots_.assign(capacity, -1);
    mask_ = capacity - 1;
  }
  // The slot already holding `key`, or -1 after recording `slot` for it.
  int64_t find_or_insert(int64_t key, int64_t slot) {
    uint64_t pos = position(key);
    while (keys_[pos] != -1) {
      if (keys_[pos] == key) return slots_[pos];
      pos = (pos + 1) & mask_;
    }
    keys_[pos] = key;
    slots_[pos] = slot;
    return -1;
  }
  int64_t find(int64_t key) const {
    uint64_t pos = position(key);
    while (keys_[pos] != -1) {
      if (keys_[pos] == key) return slots_[pos];
      pos = (pos + 1) & mask_;
    }
    return -1;
  }

 private:
  uint64_t position(int64_t key) const {
    return (static_cast<uint64_t>(key) * 0x9E3779B97F4A7C15ull >> 17) & mask_;
  }
  std::vector<int64_t> keys_, slots_;
  uint64_t mask_;
};

// torch.rand(count, generator=generator, dtype=torch.float64): the stream the Python sampler reads.
Tensor uniforms(int64_t count, const std::optional<at::Generator>& generator) {
  return at::rand({count}, generator, torch::TensorOptions().dtype(torch::kDouble));
}

// The expected count as the Python sampler returns it: the float64 formula, rounded to float32.
float expected_count(double p, int64_t num_sampled, int64_t num_tries, int64_t draw) {
  double e;
  if (draw == kWithReplacement || (draw == kUnique && num_tries == num_sampled)) {
    e = p * static_cast<double>(num_sampled);
  } else {
    e = -std::expm1(static_cast<double>(num_tries) * std::log1p(-p));
  }
  return static_cast<float>(e);
}

// The loss from drawn candidates: column ids, log E (+inf removes a padding column from every
// row) and the flat indices of accidental hits.
Tensor loss_from_candidates(const Tensor& h, const Tensor& W, const Tensor& b, const Tensor& y,
                            const std::vector<int64_t>& cand, const std::vector<char>& padding,
                            const std::vector<int64_t>& hits, const Distribution& dist, int64_t num_tries,
                            int64_t draw, bool subtract_log_q, bool sparse) {
  const int64_t n = y.numel(), s = static_cast<int64_t>(cand.size());
  Tensor ids = torch::empty({n + s}, torch::TensorOptions().dtype(torch::kLong));
  int64_t* idp = ids.data_ptr<int64_t>();
  std::copy(y.data_ptr<int64_t>(), y.data_ptr<int64_t>() + n, idp);
  std::copy(cand.begin(), cand.end(), idp + n);
  Tensor logq = torch::empty({n + s}, h.options());
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "sampled_softmax_log_q", [&] {
    scalar_t* lq = logq.data_ptr<scalar_t>();
    for (int64_t k = 0; k < n + s; ++k) {
      if (k >= n && padding[k - n]) {
        lq[k] = std::numeric_limits<scalar_t>::infinity();
      } else if (subtract_log_q) {
        // The sampler's float32 count, widened to the compute dtype, as on the Python path.
        lq[k] = std::log(static_cast<scalar_t>(expected_count(dist.prob(idp[k]), s, num_tries, draw)));
      } else {
        lq[k] = 0;
      }
    }
  });
  Tensor removed = torch::empty({static_cast<int64_t>(hits.size())}, torch::TensorOptions().dtype(torch::kLong));
  std::copy(hits.begin(), hits.end(), removed.data_ptr<int64_t>());
  return SampledSoftmaxCore::apply(h, W, b, ids, logq, removed, sparse);
}

std::optional<Tensor> sampled_softmax_sampled(const Tensor& h, const Tensor& W, const Tensor& b,
                                              const Tensor& labels, int64_t num_sampled, int64_t distribution,
                                              int64_t draw, std::optional<at::Generator> generator,
                                              bool remove_hits, bool subtract_log_q, bool sparse,
                                              std::optional<int64_t> ignore_index, int64_t unique_draw_limit) {
  TORCH_CHECK(labels.device().is_cpu() && h.device().is_cpu(), "sampled_softmax_sampled runs on the CPU");
  const int64_t n = labels.numel(), s = num_sampled, num_classes = W.size(0);
  // The caller checks these with its own messages; here they only keep a unique draw finite.
  TORCH_CHECK(s >= 1 && (draw != kUnique || s <= num_classes), "num_sampled out of range for the draw");
  const Distribution dist{distribution, num_classes, std::log1p(static_cast<double>(num_classes))};
  Tensor y = labels.to(torch::kLong).contiguous();
  const int64_t* yp = y.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    if (yp[i] < 0 || yp[i] >= num_classes || (ignore_index && yp[i] == *ignore_index)) return std::nullopt;
  }

  // The draw, consuming the uniforms exactly as the Python sampler does.
  std::vector<int64_t> cand(s), next(s, -1), tail(s);
  std::vector<char> padding(s, 0);
  int64_t num_tries = s;
  SlotTable table(s);
  if (draw == kUnique) {
    // TensorFlow's procedure in chunks of 2S + 64, doubling: the first S distinct classes.
    // Stop before the total passes the caller's bound (samplers.unique_draw_limit); the caller
    // turns this error into its own.
    int64_t found = 0, tries = 0;
    for (int64_t chunk = 2 * s + 64; found < s; chunk *= 2) {
      TORCH_CHECK_VALUE(tries == 0 || tries + chunk <= unique_draw_limit, "unique draw stopped: num_sampled=", s,
                        " num_tries=", tries, " found=", found);
      Tensor u = uniforms(chunk, generator);
      const double* up = u.data_ptr<double>();
      for (int64_t k = 0; k < chunk && found < s; ++k) {
        const int64_t c = dist.from_uniform(up[k]);
        ++tries;
        if (table.find_or_insert(c, found) < 0) cand[found++] = c;
      }
    }
    num_tries = tries;
  } else {
    Tensor u = uniforms(s, generator);
    const double* up = u.data_ptr<double>();
    for (int64_t j = 0; j < s; ++j) {
      cand[j] = dist.from_uniform(up[j]);
      tail[j] = j;
      const int64_t first = table.find_or_insert(cand[j], j);
      if (first >= 0) {
        // A repeat: a padding slot for unique_exact; for with_replacement, chained after the
        // first slot so that a label finds every slot holding it.
        padding[j] = draw == kUniqueExact;
        next[tail[first]] = j;
        tail[first] = j;
      }
    }
  }
  std::vector<int64_t> hits;
  if (remove_hits) {
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = table.find(yp[i]); j >= 0; j = next[j]) hits.push_back(i * s + j);
    }
  }
  return loss_from_candidates(h, W, b, y, cand, padding, hits, dist, num_tries, draw, subtract_log_q, sparse);
}

// ---------------------------------------------------------------------------------------------
// SparseRowAdam's sparse step

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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sampled_softmax_core", &sampled_softmax_core, "Sampled softmax loss, one table, one label per row");
  m.def("sampled_softmax_sampled", &sampled_softmax_sampled,
        "Draw candidates (uniform or log-uniform) on the CPU, then the sampled softmax loss");
  m.def("sparse_row_adam_", &sparse_row_adam_, "SparseRowAdam's step for a sparse gradient, in place");
  m.def("core_forward", &core_forward, "The loss's forward without autograd: loss, logp, gathered rows");
  m.def("core_backward", &core_backward, "The loss's backward without autograd: d_h, d_rows, d_b_rows");
}
