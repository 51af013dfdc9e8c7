// word2vec's skip-gram training loop with negative sampling, compiled: the subsampling of
// frequent words, the reduced window, the pairs, each pair's negative draws, the sigmoid head
// and the in-place SGD update of the rows it touched, in one pass per pair, as word2vec.c and
// gensim do; worker threads share the tables without locks (Hogwild, as both do).
//
// word2vec_train_(vectors [V, D], table [V, D], ids [n], bounds [s + 1], keep [V], cdf [V],
//                 window, negative, alpha, seed, threads, record)
//   ids: a stretch of the corpus as vocabulary ids; bounds: its sentences' offsets into ids.
//   keep: each word's probability of surviving the subsampling; cdf: the noise distribution's
//   cumulative weights (its last entry the total; drawn from an alias table made of it). For each kept center word and each context
//   word within a window shrunk to 1..window at random, the context's input vector h predicts
//   the center word against `negative` noise words drawn from cdf, a noise word equal to the
//   center adding nothing (an accidental hit). Each pair is one step of plain SGD at rate alpha
//   on the library's negative sampling loss of that pair (reduction "sum"):
//       loss = -log sigmoid(h . t_center) - sum_k log sigmoid(-h . t_k)
//   its gradient taken at the rows' values before the pair's update (a noise word drawn twice
//   in one pair gets both updates, as a loss over that pair would give it).
//   Returns [pairs, kept words] (int64); with `record` (one thread), also the pairs' context
//   and center ids [P] and noise ids [P, negative], in the order trained.
#include <algorithm>
#include <cmath>
#include <thread>

#include "common.h"

namespace sampled_softmax {
namespace {

// splitmix64: a small, fast generator with a 64-bit state, one per worker.
struct SplitMix {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  int64_t below(int64_t n) { return static_cast<int64_t>(next() % static_cast<uint64_t>(n)); }
};

// Walker's alias table of the weights whose cumulative sums are `cdf` (Vose's construction): a
// draw is one random 64-bit number, a column and a coin, in O(1) where an inverse CDF searches
// O(log V) (word2vec.c reads a 10^8-entry table instead; gensim bisects). Exact: each class is
// drawn with probability w_k / total; a class of weight 0 never.
struct AliasTable {
  std::vector<double> prob;
  std::vector<int64_t> alias;

  explicit AliasTable(const double* cdf, int64_t n) : prob(n, 1.0), alias(n) {
    const double total = cdf[n - 1];
    std::vector<double> p(n);
    std::vector<int64_t> zero, small, large;
    int64_t some_positive = 0;
    for (int64_t k = 0; k < n; ++k) {
      p[k] = (cdf[k] - (k ? cdf[k - 1] : 0.0)) / total * static_cast<double>(n);
      alias[k] = k;
      if (p[k] <= 0.0) {
        zero.push_back(k);
      } else {
        some_positive = k;
        (p[k] < 1.0 ? small : large).push_back(k);
      }
    }
    // The weight-0 classes first: while one is left, a class of p > 1 is too, so none of them
    // is left over to the rounding at the end.
    while ((!zero.empty() || !small.empty()) && !large.empty()) {
      std::vector<int64_t>& from = zero.empty() ? small : zero;
      const int64_t s = from.back(), l = large.back();
      from.pop_back();
      prob[s] = p[s] > 0.0 ? p[s] : 0.0;
      alias[s] = l;
      p[l] -= 1.0 - prob[s];
      if (p[l] < 1.0) {
        large.pop_back();
        small.push_back(l);
      }
    }
    // Left over (p is 1 up to rounding): always themselves; a weight-0 class never.
    for (int64_t k : zero) {
      prob[k] = 0.0;
      alias[k] = some_positive;
    }
  }
};

struct Recorded {
  std::vector<int64_t> contexts, centers, noise;
};

template <typename scalar_t>
struct Trainer {
  scalar_t *vectors, *table;
  const int64_t *ids, *bounds;
  const double* keep;
  const AliasTable* noise;
  int64_t num_classes, dim, window, negative;
  scalar_t alpha;

  int64_t draw(SplitMix& rng) const {
    const uint64_t r = rng.next();
    const int64_t k = static_cast<int64_t>(((r >> 32) * static_cast<uint64_t>(num_classes)) >> 32);
    const double coin = static_cast<double>(r & 0xFFFFFFFFull) * 0x1.0p-32;
    return coin < noise->prob[k] ? k : noise->alias[k];
  }

  // Sentences [first, last): returns pairs and kept words.
  std::pair<int64_t, int64_t> run(int64_t first, int64_t last, uint64_t seed, Recorded* rec) const {
    SplitMix rng{seed};
    std::vector<int64_t> kept, rows(negative + 1);
    std::vector<scalar_t> grads(negative + 1), neu1e(dim);
    int64_t pairs = 0, kept_words = 0;
    for (int64_t s = first; s < last; ++s) {
      kept.clear();
      for (int64_t p = bounds[s]; p < bounds[s + 1]; ++p) {
        const int64_t w = ids[p];
        if (keep[w] >= 1.0 || rng.uniform() < keep[w]) kept.push_back(w);
      }
      kept_words += static_cast<int64_t>(kept.size());
      const int64_t n = static_cast<int64_t>(kept.size());
      for (int64_t i = 0; i < n; ++i) {
        const int64_t reach = window - rng.below(window);  // 1..window
        const int64_t lo = std::max<int64_t>(0, i - reach), hi = std::min<int64_t>(n - 1, i + reach);
        for (int64_t j = lo; j <= hi; ++j) {
          if (j == i) continue;
          step(kept[j], kept[i], rng, rows, grads, neu1e, rec);
          ++pairs;
        }
      }
    }
    return {pairs, kept_words};
  }

  void step(int64_t context, int64_t center, SplitMix& rng, std::vector<int64_t>& rows, std::vector<scalar_t>& grads,
            std::vector<scalar_t>& neu1e, Recorded* rec) const {
    scalar_t* h = vectors + context * dim;
    rows[0] = center;
    for (int64_t k = 1; k <= negative; ++k) rows[k] = draw(rng);
    // The gradient at the values before this pair's update: every logit first.
    for (int64_t k = 0; k <= negative; ++k) {
      if (k > 0 && rows[k] == center) {  // an accidental hit adds nothing
        grads[k] = 0;
        continue;
      }
      const scalar_t logit = dot(h, table + rows[k] * dim, dim);
      const scalar_t p = scalar_t(1) / (scalar_t(1) + std::exp(-logit));
      grads[k] = alpha * ((k == 0 ? scalar_t(1) : scalar_t(0)) - p);  // -alpha d loss / d logit
    }
    std::fill(neu1e.begin(), neu1e.end(), scalar_t(0));
    for (int64_t k = 0; k <= negative; ++k) {
      const scalar_t g = grads[k];
      if (g == 0) continue;
      const scalar_t* t = table + rows[k] * dim;
      for (int64_t d = 0; d < dim; ++d) neu1e[d] += g * t[d];
    }
    for (int64_t k = 0; k <= negative; ++k) {
      const scalar_t g = grads[k];
      if (g == 0) continue;
      scalar_t* t = table + rows[k] * dim;
      for (int64_t d = 0; d < dim; ++d) t[d] += g * h[d];
    }
    for (int64_t d = 0; d < dim; ++d) h[d] += neu1e[d];
    if (rec) {
      rec->contexts.push_back(context);
      rec->centers.push_back(center);
      rec->noise.insert(rec->noise.end(), rows.begin() + 1, rows.end());
    }
  }
};

Tensor int64_tensor(const std::vector<int64_t>& values, at::IntArrayRef shape) {
  Tensor out = at::empty(shape, at::kLong);
  std::copy(values.begin(), values.end(), out.data_ptr<int64_t>());
  return out;
}

}  // namespace

std::vector<Tensor> word2vec_train_(Tensor vectors, Tensor table, const Tensor& ids, const Tensor& bounds,
                                    const Tensor& keep, const Tensor& cdf, int64_t window, int64_t negative,
                                    double alpha, int64_t seed, int64_t threads, bool record) {
  TORCH_CHECK(vectors.device().is_cpu() && table.device().is_cpu() && vectors.is_contiguous() &&
                  table.is_contiguous() && vectors.dim() == 2 && vectors.sizes() == table.sizes() &&
                  vectors.scalar_type() == table.scalar_type(),
              "word2vec_train_ takes two contiguous CPU tables [V, D] of one dtype");
  TORCH_CHECK(ids.scalar_type() == at::kLong && bounds.scalar_type() == at::kLong && ids.is_contiguous() &&
                  bounds.is_contiguous() && bounds.dim() == 1 && bounds.numel() >= 1,
              "word2vec_train_ takes contiguous int64 ids and sentence bounds");
  TORCH_CHECK(keep.scalar_type() == at::kDouble && cdf.scalar_type() == at::kDouble && keep.is_contiguous() &&
                  cdf.is_contiguous() && keep.numel() == vectors.size(0) && cdf.numel() == vectors.size(0),
              "word2vec_train_ takes float64 keep and cdf of one entry per word");
  TORCH_CHECK(window >= 1 && negative >= 0 && threads >= 1 && (!record || threads == 1),
              "word2vec_train_: window >= 1, negative >= 0, threads >= 1 (1 when recording)");
  const int64_t num_classes = vectors.size(0), num_sentences = bounds.numel() - 1;
  const int64_t* bp = bounds.data_ptr<int64_t>();
  const int64_t* ip = ids.data_ptr<int64_t>();
  TORCH_CHECK(bp[0] >= 0 && bp[num_sentences] <= ids.numel(), "word2vec_train_: bounds outside ids");
  for (int64_t s = 0; s < num_sentences; ++s) TORCH_CHECK(bp[s] <= bp[s + 1], "word2vec_train_: bounds must not fall");
  for (int64_t p = bp[0]; p < bp[num_sentences]; ++p) {
    TORCH_CHECK_INDEX(ip[p] >= 0 && ip[p] < num_classes, "word2vec_train_: id ", ip[p], " outside the vocabulary");
  }
  TORCH_CHECK(num_classes > 0 && num_classes < (int64_t(1) << 32) && cdf.data_ptr<double>()[num_classes - 1] > 0,
              "word2vec_train_: the noise distribution must have a positive total over fewer than 2^32 words");
  const AliasTable noise(cdf.data_ptr<double>(), num_classes);
  // Workers take consecutive sentences, about as many words each.
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(threads, num_sentences));
  std::vector<int64_t> first(workers + 1, num_sentences);
  const int64_t total = bp[num_sentences] - bp[0];
  for (int64_t t = 0; t < workers; ++t) {
    const int64_t target = bp[0] + (total * t) / workers;
    first[t] = std::lower_bound(bp, bp + num_sentences, target) - bp;
  }
  first[0] = 0;
  std::vector<std::pair<int64_t, int64_t>> counts(workers);
  Recorded recorded;
  const uint64_t base = static_cast<uint64_t>(seed);
  AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "word2vec_train_", [&] {
    const Trainer<scalar_t> trainer{vectors.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(), ip, bp,
                                    keep.data_ptr<double>(), &noise, num_classes, vectors.size(1),
                                    window, negative, static_cast<scalar_t>(alpha)};
    auto work = [&](int64_t t) {
      counts[t] = trainer.run(first[t], first[t + 1], base + 0x632BE59BD9B4E019ull * static_cast<uint64_t>(t + 1),
                              record ? &recorded : nullptr);
    };
    std::vector<std::thread> pool;
    for (int64_t t = 1; t < workers; ++t) pool.emplace_back(work, t);
    work(0);
    for (auto& th : pool) th.join();
  });
  int64_t pairs = 0, kept = 0;
  for (const auto& c : counts) {
    pairs += c.first;
    kept += c.second;
  }
  std::vector<Tensor> out{int64_tensor({pairs, kept}, {2})};
  if (record) {
    const int64_t recorded_pairs = static_cast<int64_t>(recorded.contexts.size());
    out.push_back(int64_tensor(recorded.contexts, {recorded_pairs}));
    out.push_back(int64_tensor(recorded.centers, {recorded_pairs}));
    out.push_back(int64_tensor(recorded.noise, {recorded_pairs, negative}));
  }
  return out;
}

}  // namespace sampled_softmax
