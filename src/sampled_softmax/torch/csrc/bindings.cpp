// The compiled core's Python module, built on first use by `sampled_softmax.torch._compiled`
// through torch.utils.cpp_extension. One file per kernel: loss.cpp (the loss and its
// backward, over a batch's shared candidates), per_example.cpp (the same over each example's own
// noise), sampling.cpp (the CPU draw, then the loss), sparse_adam.cpp (SparseRowAdam's step), word2vec.cpp (word2vec's
// training loop).
#include <torch/extension.h>

#include "common.h"

namespace ss = sampled_softmax;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sampled_softmax_core", &ss::sampled_softmax_core, "A sampled loss (softmax or sigmoid head), one table, one label per row");
  m.def("per_example_core", &ss::per_example_core, "A loss over each example's own noise columns, one table, one label per row");
  m.def("sampled_softmax_sampled", &ss::sampled_softmax_sampled,
        "Draw candidates (uniform, log-uniform or a unigram table) on the CPU, then a sampled loss");
  m.def("sampled_columns", &ss::sampled_columns,
        "Draw candidates on the CPU: the columns' ids, log E and hits, without the loss");
  m.def("counts_tree_add_", &ss::counts_tree_add_,
        "A learned unigram sampler's counts and Fenwick tree (samplers.CountsTree) updated in place");
  m.def("sparse_row_adam_", &ss::sparse_row_adam_, "SparseRowAdam's step for a sparse gradient, in place");
  // The GIL released: word2vec's trainer runs for seconds, and other Python threads (a progress
  // bar, a data loader) go on meanwhile.
  m.def("word2vec_train_", &ss::word2vec_train_, "word2vec's skip-gram negative-sampling loop, rows updated in place",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("core_forward", &ss::core_forward, "The loss's forward without autograd: loss, logp, gathered rows");
  m.def("core_backward", &ss::core_backward, "The loss's backward without autograd: d_h, d_rows, d_b_rows");
  // The enums' values by name, for the check made on loading a build (see common.h).
  pybind11::dict draw, distribution, head;
  draw["with_replacement"] = static_cast<int64_t>(ss::DrawKind::kWithReplacement);
  draw["unique"] = static_cast<int64_t>(ss::DrawKind::kUnique);
  draw["unique_exact"] = static_cast<int64_t>(ss::DrawKind::kUniqueExact);
  distribution["uniform"] = static_cast<int64_t>(ss::DistributionKind::kUniform);
  distribution["log_uniform"] = static_cast<int64_t>(ss::DistributionKind::kLogUniform);
  distribution["unigram"] = static_cast<int64_t>(ss::DistributionKind::kUnigram);
  distribution["learned_unigram"] = static_cast<int64_t>(ss::DistributionKind::kLearnedUnigram);
  head["softmax"] = static_cast<int64_t>(ss::HeadKind::kSoftmax);
  head["sigmoid"] = static_cast<int64_t>(ss::HeadKind::kSigmoid);
  m.attr("DRAW") = draw;
  m.attr("HEAD") = head;
  m.attr("DISTRIBUTION") = distribution;
}
