// Candidate sampling on the CPU, then the loss: the twin of `samplers.draw_from_uniforms`.
//
// sampled_softmax_sampled(h, W, b, labels [N], num_sampled, distribution, draw, generator,
//                         remove_hits, subtract_log_q, head, sparse, ignore_index, unique_draw_limit,
//                         draw_table) -> loss [N] or None
//   `draw_table`: [] for the uniform and log-uniform distributions; for a table's,
//   [weights [V], search, total]: the cumulative weights (unigram) or the Fenwick tree of
//   `samplers.CountsTree` (learned unigram), read in place. A learned table may add the
//   sampler's own counts [V] (float64): the sampler then learns the labels after the draw, in
//   the same call (counts, tree counts and tree += 1 at each label; the caller adds N to its
//   total), as `LearnedUnigramSampler.update` would.
//   Draws the candidates as `sampled_softmax.torch.samplers` does (the same uniforms from the
//   same generator, in the same order, the same classes, the same float32 expected counts), then
//   the loss of loss.cpp with `head`. Parity with the Python sampler depends on consuming the uniforms in
//   its order: change both or neither (tests/frontends/torch/test_torch_compiled.py compares them draw for draw).
//   None, before drawing anything, when a label is outside [0, V) or equals ignore_index: the
//   caller's general path then reports the error or handles the ignored labels.
//
// sampled_columns(h, W, labels, num_sampled, distribution, draw, generator, remove_hits,
//                 subtract_log_q, ignore_index, unique_draw_limit)
//                 -> [ids [N + S], logq [N + S], removed (flat indices i * S + j)] or None
//   The same draw and columns without the loss, for a loss whose backward is the caller's (a
//   fused table optimizer takes the rows' gradient from core_backward).
//
// counts_tree_add_(counts [V], tree [2 top + 1], ids [n], weights [n])
//   A learned unigram sampler's update: `samplers.CountsTree.add` on its arrays, in place.
#include <algorithm>
#include <cmath>
#include <limits>

#include "common.h"

namespace sampled_softmax {
namespace {

struct ClassDistribution {
  DistributionKind kind;
  int64_t num_classes;
  double log_range;  // log(V + 1)
  // A table's distribution (kUnigram, kLearnedUnigram): Q(k) = weights[k] / total, drawn from
  // `search`, the cumulative weights (kUnigram) or the 1-based Fenwick tree of
  // `samplers.CountsTree`, padded with +inf up to 2 * top (kLearnedUnigram).
  const double* weights = nullptr;
  const double* search = nullptr;
  int64_t top = 0;
  double total = 0;

  int64_t from_uniform(double u) const {
    switch (kind) {
      case DistributionKind::kUniform:
        return std::min<int64_t>(static_cast<int64_t>(u * num_classes), num_classes - 1);
      case DistributionKind::kLogUniform:
        // `% V` guards the round-off at u -> 1, as TensorFlow does.
        return (static_cast<int64_t>(std::exp(u * log_range)) - 1) % num_classes;
      case DistributionKind::kUnigram: {
        // searchsorted(cdf, u * total, side="right"): skips zero-weight classes.
        const double x = u * total;
        return std::min<int64_t>(std::upper_bound(search, search + num_classes, x) - search, num_classes - 1);
      }
      case DistributionKind::kLearnedUnigram: {
        // The tree's descent from its largest power of two, as CountsTree.from_uniform.
        double x = u * total;
        int64_t pos = 0;
        for (int64_t step = top; step; step >>= 1) {
          const double node = search[pos + step];
          if (node <= x) {
            x -= node;
            pos += step;
          }
        }
        return std::min<int64_t>(pos, num_classes - 1);
      }
    }
    return 0;
  }

  // from_uniform of u[0..count) into out: a tree's descents taken together, level by level, so
  // their cache misses overlap (one descent's loads depend on each other; a 1M-class tree is
  // 16 MB, and its lower levels miss the cache on every draw).
  void from_uniforms(const double* u, int64_t count, int64_t* out) const {
    if (kind != DistributionKind::kLearnedUnigram) {
      for (int64_t k = 0; k < count; ++k) out[k] = from_uniform(u[k]);
      return;
    }
    constexpr int64_t kLanes = 16;
    for (int64_t start = 0; start < count; start += kLanes) {
      const int64_t lanes = std::min(kLanes, count - start);
      double x[kLanes];
      int64_t pos[kLanes];
      for (int64_t l = 0; l < lanes; ++l) {
        x[l] = u[start + l] * total;
        pos[l] = 0;
      }
      for (int64_t step = top; step; step >>= 1) {
        for (int64_t l = 0; l < lanes; ++l) {
          const double node = search[pos[l] + step];
          if (node <= x[l]) {
            x[l] -= node;
            pos[l] += step;
          }
        }
      }
      for (int64_t l = 0; l < lanes; ++l) out[start + l] = std::min<int64_t>(pos[l], num_classes - 1);
    }
  }

  double prob(int64_t k) const {
    switch (kind) {
      case DistributionKind::kUniform:
        return 1.0 / num_classes;
      case DistributionKind::kLogUniform:
        return std::log1p(1.0 / (static_cast<double>(k) + 1.0)) / log_range;
      default:
        return weights[k] / total;
    }
  }
};

// torch.rand(count, generator=generator, dtype=torch.float64): the stream the Python sampler reads.
Tensor uniforms(int64_t count, const std::optional<at::Generator>& generator) {
  return at::rand({count}, generator, at::TensorOptions().dtype(at::kDouble));
}

// The expected count as the Python sampler returns it: the float64 formula, rounded to float32.
float expected_count(double p, int64_t num_sampled, int64_t num_tries, DrawKind draw) {
  double e;
  if (draw == DrawKind::kWithReplacement || (draw == DrawKind::kUnique && num_tries == num_sampled)) {
    e = p * static_cast<double>(num_sampled);
  } else {
    e = -std::expm1(static_cast<double>(num_tries) * std::log1p(-p));
  }
  return static_cast<float>(e);
}

// The columns of drawn candidates: column ids, log E (+inf removes a padding column from every
// row) and the flat indices of accidental hits.
std::vector<Tensor> columns_from_candidates(const Tensor& h, const Tensor& y, const std::vector<int64_t>& cand,
                                            const std::vector<char>& padding, const std::vector<int64_t>& hits,
                                            const ClassDistribution& dist, int64_t num_tries, DrawKind draw,
                                            bool subtract_log_q) {
  const int64_t n = y.numel(), s = static_cast<int64_t>(cand.size());
  Tensor ids = at::empty({n + s}, at::TensorOptions().dtype(at::kLong));
  int64_t* idp = ids.data_ptr<int64_t>();
  std::copy(y.data_ptr<int64_t>(), y.data_ptr<int64_t>() + n, idp);
  std::copy(cand.begin(), cand.end(), idp + n);
  Tensor logq = at::empty({n + s}, h.options());
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
  Tensor removed = at::empty({static_cast<int64_t>(hits.size())}, at::TensorOptions().dtype(at::kLong));
  std::copy(hits.begin(), hits.end(), removed.data_ptr<int64_t>());
  return {ids, logq, removed};
}

}  // namespace

std::optional<Tensor> sampled_softmax_sampled(const Tensor& h, const Tensor& W, const Tensor& b,
                                              const Tensor& labels, int64_t num_sampled, int64_t distribution,
                                              int64_t draw_value, std::optional<at::Generator> generator,
                                              bool remove_hits, bool subtract_log_q, int64_t head, bool sparse,
                                              std::optional<int64_t> ignore_index, int64_t unique_draw_limit,
                                              const std::vector<Tensor>& draw_table) {
  head_kind(head);
  auto columns = sampled_columns(h, W, labels, num_sampled, distribution, draw_value, generator, remove_hits,
                                 subtract_log_q, ignore_index, unique_draw_limit, draw_table);
  if (!columns) return std::nullopt;
  return sampled_softmax_core(h, W, b, (*columns)[0], (*columns)[1], (*columns)[2], head, sparse);
}

std::optional<std::vector<Tensor>> sampled_columns(const Tensor& h, const Tensor& W, const Tensor& labels,
                                                   int64_t num_sampled, int64_t distribution, int64_t draw_value,
                                                   std::optional<at::Generator> generator, bool remove_hits,
                                                   bool subtract_log_q, std::optional<int64_t> ignore_index,
                                                   int64_t unique_draw_limit, const std::vector<Tensor>& draw_table) {
  TORCH_CHECK(labels.device().is_cpu() && h.device().is_cpu(), "sampled_softmax_sampled runs on the CPU");
  TORCH_CHECK(distribution >= static_cast<int64_t>(DistributionKind::kUniform) &&
                  distribution <= static_cast<int64_t>(DistributionKind::kLearnedUnigram),
              "sampled_softmax_sampled: unknown distribution ", distribution);
  TORCH_CHECK(draw_value >= static_cast<int64_t>(DrawKind::kWithReplacement) &&
                  draw_value <= static_cast<int64_t>(DrawKind::kUniqueExact),
              "sampled_softmax_sampled: unknown draw ", draw_value);
  const DrawKind draw = static_cast<DrawKind>(draw_value);
  const int64_t n = labels.numel(), s = num_sampled, num_classes = W.size(0);
  // The caller checks these with its own messages; here they only keep a unique draw finite.
  TORCH_CHECK(s >= 1 && (draw != DrawKind::kUnique || s <= num_classes), "num_sampled out of range for the draw");
  ClassDistribution dist{static_cast<DistributionKind>(distribution), num_classes,
                         std::log1p(static_cast<double>(num_classes))};
  Tensor weights, search;  // held for the pointers below
  if (dist.kind == DistributionKind::kUnigram || dist.kind == DistributionKind::kLearnedUnigram) {
    TORCH_CHECK(draw_table.size() == 3 || (draw_table.size() == 4 && dist.kind == DistributionKind::kLearnedUnigram),
                "sampled_softmax_sampled: a table distribution needs [weights, search, total] (and a learned one may "
                "add the counts it learns into)");
    weights = draw_table[0].to(at::kDouble).contiguous();
    search = draw_table[1].to(at::kDouble).contiguous();
    TORCH_CHECK(weights.numel() == num_classes, "sampled_softmax_sampled: the table has ", weights.numel(),
                " weights for ", num_classes, " classes");
    dist.weights = weights.data_ptr<double>();
    dist.search = search.data_ptr<double>();
    dist.total = draw_table[2].item<double>();
    if (dist.kind == DistributionKind::kLearnedUnigram) {
      dist.top = int64_t{1} << (63 - __builtin_clzll(static_cast<unsigned long long>(num_classes)));
      TORCH_CHECK(search.numel() == 2 * dist.top + 1, "sampled_softmax_sampled: the tree has ", search.numel(),
                  " nodes for ", num_classes, " classes");
    } else {
      TORCH_CHECK(search.numel() == num_classes, "sampled_softmax_sampled: the cumulative table has ",
                  search.numel(), " entries for ", num_classes, " classes");
    }
  }
  Tensor y = labels.to(at::kLong).contiguous();
  const int64_t* yp = y.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    if (yp[i] < 0 || yp[i] >= num_classes || (ignore_index && yp[i] == *ignore_index)) return std::nullopt;
    // A label the table cannot draw has no log E: the caller's general path says so.
    if (subtract_log_q && dist.weights != nullptr && !(dist.weights[yp[i]] > 0)) return std::nullopt;
  }

  // The draw, consuming the uniforms exactly as the Python sampler does.
  std::vector<int64_t> cand(s), next(s, -1), tail(s);
  std::vector<char> padding(s, 0);
  int64_t num_tries = s;
  SlotTable table(s);
  if (draw == DrawKind::kUnique) {
    // TensorFlow's procedure in chunks of 2S + 64, doubling: the first S distinct classes.
    // Stop before the total passes the caller's bound (samplers.unique_draw_limit); the caller
    // turns this error into its own.
    int64_t found = 0, tries = 0;
    for (int64_t chunk = 2 * s + 64; found < s; chunk *= 2) {
      TORCH_CHECK_VALUE(tries == 0 || tries + chunk <= unique_draw_limit, "unique draw stopped: num_sampled=", s,
                        " num_tries=", tries, " found=", found);
      Tensor u = uniforms(chunk, generator);
      const double* up = u.data_ptr<double>();
      // The classes of the chunk's uniforms a block at a time (a block's descents overlap),
      // taken in order until S are distinct.
      constexpr int64_t kBlock = 64;
      int64_t classes[kBlock];
      for (int64_t k = 0; k < chunk && found < s; k += kBlock) {
        const int64_t block = std::min(kBlock, chunk - k);
        dist.from_uniforms(up + k, block, classes);
        for (int64_t l = 0; l < block && found < s; ++l) {
          ++tries;
          if (table.find_or_insert(classes[l], found) < 0) cand[found++] = classes[l];
        }
      }
    }
    num_tries = tries;
  } else {
    Tensor u = uniforms(s, generator);
    dist.from_uniforms(u.data_ptr<double>(), s, cand.data());
    for (int64_t j = 0; j < s; ++j) {
      tail[j] = j;
      const int64_t first = table.find_or_insert(cand[j], j);
      if (first >= 0) {
        // A repeat: a padding slot for unique_exact; for with_replacement, chained after the
        // first slot so that a label finds every slot holding it.
        padding[j] = draw == DrawKind::kUniqueExact;
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
  auto columns = columns_from_candidates(h, y, cand, padding, hits, dist, num_tries, draw, subtract_log_q);
  if (draw_table.size() == 4) {  // the learned sampler learns its labels, after its draw
    Tensor counts = draw_table[3];
    TORCH_CHECK(counts.scalar_type() == at::kDouble && counts.numel() == num_classes,
                "sampled_softmax_sampled: the counts to learn into must be float64 [", num_classes, "]");
    Tensor ones = at::ones({n}, at::TensorOptions().dtype(at::kDouble));
    counts.index_add_(0, y, ones);  // the buffer's version moves, as with the sampler's own update
    counts_tree_add_(draw_table[0], draw_table[1], y, ones);
  }
  return columns;
}

void counts_tree_add_(Tensor counts, Tensor tree, const Tensor& ids, const Tensor& weights) {
  TORCH_CHECK(counts.device().is_cpu() && tree.device().is_cpu() && ids.device().is_cpu() && weights.device().is_cpu(),
              "counts_tree_add_ runs on the CPU");
  TORCH_CHECK(counts.scalar_type() == at::kDouble && tree.scalar_type() == at::kDouble &&
                  weights.scalar_type() == at::kDouble && ids.scalar_type() == at::kLong,
              "counts_tree_add_ takes float64 counts, tree and weights and int64 ids");
  TORCH_CHECK(counts.is_contiguous() && tree.is_contiguous() && ids.is_contiguous() && weights.is_contiguous(),
              "counts_tree_add_ takes contiguous tensors");
  const int64_t num_classes = counts.numel(), n = ids.numel();
  TORCH_CHECK(num_classes >= 1 && weights.numel() == n, "counts_tree_add_: ", n, " ids and ", weights.numel(),
              " weights for ", num_classes, " classes");
  const int64_t top = int64_t{1} << (63 - __builtin_clzll(static_cast<unsigned long long>(num_classes)));
  TORCH_CHECK(tree.numel() == 2 * top + 1, "counts_tree_add_: the tree has ", tree.numel(), " nodes for ",
              num_classes, " classes");
  const int64_t* id = ids.data_ptr<int64_t>();
  for (int64_t k = 0; k < n; ++k) {  // every id checked before anything changes
    TORCH_CHECK_INDEX(id[k] >= 0 && id[k] < num_classes, "counts_tree_add_: id ", id[k], " is outside [0, ",
                      num_classes, ")");
  }
  double* c = counts.data_ptr<double>();
  double* t = tree.data_ptr<double>();
  const double* w = weights.data_ptr<double>();
  // Node i holds the counts of (i - lowbit(i), i] (CountsTree): an id's count is in the nodes
  // from id + 1 up by lowbit. The counts are integers, so every sum is exact in any order and
  // the tree equals CountsTree.add's, node for node.
  for (int64_t k = 0; k < n; ++k) {
    c[id[k]] += w[k];
    for (int64_t node = id[k] + 1; node <= num_classes; node += node & -node) t[node] += w[k];
  }
}

}  // namespace sampled_softmax
