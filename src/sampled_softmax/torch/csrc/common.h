// Declarations shared by the compiled core's files (see bindings.cpp for the entry points).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace sampled_softmax {

using at::Tensor;

// The draw and the distribution, by value. The same names and values as the IntEnums
// `sampled_softmax.samplers.DrawKind` and `DistributionKind`; bindings.cpp exports these for the check
// `_compiled.py` makes when it loads a build (a mismatch is refused, never misread).
enum class DrawKind : int64_t { kWithReplacement = 0, kUnique = 1, kUniqueExact = 2 };
// kUnigram reads a cumulative table, kLearnedUnigram a Fenwick tree (`samplers.CountsTree`).
enum class DistributionKind : int64_t { kUniform = 0, kLogUniform = 1, kUnigram = 2, kLearnedUnigram = 3 };
// The head over a row's logits (`sampled_softmax.torch._autograd.HeadKind`): the softmax
// cross-entropy, or a logistic loss per column (NCE, negative sampling).
enum class HeadKind : int64_t { kSoftmax = 0, kSigmoid = 1 };

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

// loss.cpp
HeadKind head_kind(int64_t value);
std::vector<Tensor> head_forward(const Tensor& logits, HeadKind head);
Tensor head_grad(const Tensor& act, const Tensor& grad_loss, HeadKind head);
Tensor scatter_rows(const Tensor& ids, const Tensor& row_grads, at::IntArrayRef shape, bool sparse);
std::vector<Tensor> core_forward(const Tensor& h, const Tensor& W, const Tensor& b, const Tensor& ids,
                                 const Tensor& logq, const Tensor& removed, int64_t head);
std::vector<Tensor> core_backward(const Tensor& grad_loss, const Tensor& h, const Tensor& rows, const Tensor& ids,
                                  const Tensor& act, int64_t head, bool need_h, bool need_w, bool need_b);
Tensor sampled_softmax_core(const Tensor& h, const Tensor& W, const Tensor& b, const Tensor& ids,
                            const Tensor& logq, const Tensor& removed, int64_t head, bool sparse);

// per_example.cpp
Tensor per_example_core(const Tensor& h, const Tensor& W, const Tensor& b, const Tensor& ids, bool remove_hits,
                        int64_t head, bool sparse);

// sampling.cpp
std::optional<Tensor> sampled_softmax_sampled(const Tensor& h, const Tensor& W, const Tensor& b,
                                              const Tensor& labels, int64_t num_sampled, int64_t distribution,
                                              int64_t draw, std::optional<at::Generator> generator,
                                              bool remove_hits, bool subtract_log_q, int64_t head, bool sparse,
                                              std::optional<int64_t> ignore_index, int64_t unique_draw_limit,
                                              const std::vector<Tensor>& draw_table);
std::optional<std::vector<Tensor>> sampled_columns(const Tensor& h, const Tensor& W, const Tensor& labels,
                                                   int64_t num_sampled, int64_t distribution, int64_t draw,
                                                   std::optional<at::Generator> generator, bool remove_hits,
                                                   bool subtract_log_q, std::optional<int64_t> ignore_index,
                                                   int64_t unique_draw_limit, const std::vector<Tensor>& draw_table);
// CountsTree.add in place: counts[ids] += weights, and the Fenwick tree's nodes over each id.
void counts_tree_add_(Tensor counts, Tensor tree, const Tensor& ids, const Tensor& weights);

// sparse_adam.cpp
void sparse_row_adam_(Tensor param, Tensor moments, Tensor exp_avg, Tensor exp_avg_sq, const Tensor& indices,
                      const Tensor& values, double beta1, double beta2, double step_size, double eps_term);

// word2vec.cpp
std::vector<Tensor> word2vec_train_(Tensor vectors, Tensor table, const Tensor& ids, const Tensor& bounds,
                                    const Tensor& keep, const Tensor& cdf, int64_t window, int64_t negative,
                                    double alpha, int64_t seed, int64_t threads, bool record);

}  // namespace sampled_softmax
