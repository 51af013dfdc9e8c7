// The compiled core's Python module, built on first use by `sampled_softmax.torch._compiled`
// through torch.utils.cpp_extension. One file per kernel: loss.cpp (the loss and its
// backward), sampling.cpp (the CPU draw, then the loss), sparse_adam.cpp (SparseRowAdam's step).
#include <torch/extension.h>

#include "common.h"

namespace ss = sampled_softmax;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sampled_softmax_core", &ss::sampled_softmax_core, "Sampled softmax loss, one table, one label per row");
  m.def("sampled_softmax_sampled", &ss::sampled_softmax_sampled,
        "Draw candidates (uniform or log-uniform) on the CPU, then the sampled softmax loss");
  m.def("sparse_row_adam_", &ss::sparse_row_adam_, "SparseRowAdam's step for a sparse gradient, in place");
  m.def("core_forward", &ss::core_forward, "The loss's forward without autograd: loss, logp, gathered rows");
  m.def("core_backward", &ss::core_backward, "The loss's backward without autograd: d_h, d_rows, d_b_rows");
  // The enums' values by name, for the check made on loading a build (see common.h).
  pybind11::dict draw, distribution;
  draw["with_replacement"] = static_cast<int64_t>(ss::DrawKind::kWithReplacement);
  draw["unique"] = static_cast<int64_t>(ss::DrawKind::kUnique);
  draw["unique_exact"] = static_cast<int64_t>(ss::DrawKind::kUniqueExact);
  distribution["uniform"] = static_cast<int64_t>(ss::DistributionKind::kUniform);
  distribution["log_uniform"] = static_cast<int64_t>(ss::DistributionKind::kLogUniform);
  m.attr("DRAW") = draw;
  m.attr("DISTRIBUTION") = distribution;
}
