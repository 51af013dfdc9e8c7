"""Feasibility measurement for issue 2: how fast is the sampled-softmax core as one compiled
(C++ ATen) autograd Function, against the kernel floor, the library's current PyTorch path and
``tf.nn.sampled_softmax_loss``?

Not part of the library or its tests: a prototype of the core only (one table, ``num_true=1``,
sparse gradients, no sampler: fresh uniform candidates each call, no accidental-hit mask, no
argument checks). It compiles with ``torch.utils.cpp_extension.load_inline`` (needs a C++
compiler and ``pip install ninja``; about 45 s the first time, cached after), checks that its
loss and gradients equal ``sampled_softmax.torch.sampled_softmax_loss`` given the same
candidates, then times the four methods paired.

    python -m benchmarks.experiments.cpp_core_prototype [threads]

Measured on the 2-core development machine (2 threads, 2026-11-22, two runs): floor 0.82 /
0.74 ms, compiled core 1.06 / 0.96 ms (1.27x / 1.29x the floor), the library's current path
1.80 / 1.63 ms (2.14x / 2.28x the floor, including its sampler, hit mask and checks), tf.nn
2.24 / 2.16 ms: tf.nn / compiled core = 2.29x / 2.22x. Loss and gradients equal the library's
exactly (max abs difference 0).
"""

import sys
import time

import torch

SOURCE = r'''
#include <torch/extension.h>
#include <limits>
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using torch::Tensor;

struct SampledCore : public torch::autograd::Function<SampledCore> {
  // h [N,D], W [V,D], b [V], ids [N+S] (true first), logq [N+S], hits [N,S] bool or empty
  static Tensor forward(AutogradContext* ctx, Tensor h, Tensor W, Tensor b, Tensor ids, Tensor logq, Tensor hits) {
    int64_t n = h.size(0), m = ids.size(0), s = m - n;
    Tensor rows = W.index_select(0, ids);
    Tensor corr = b.index_select(0, ids).sub_(logq);
    Tensor w_true = rows.narrow(0, 0, n), w_cand = rows.narrow(0, n, s);
    Tensor logits = torch::empty({n, s + 1}, h.options());
    Tensor sl = logits.narrow(1, 1, s);
    torch::addmm_out(sl, corr.narrow(0, n, s).unsqueeze(0), h, w_cand.t());
    logits.select(1, 0).copy_((h * w_true).sum(1).add_(corr.narrow(0, 0, n)));
    if (hits.numel()) sl.masked_fill_(hits, -std::numeric_limits<float>::infinity());
    Tensor lp = torch::log_softmax(logits, 1);
    ctx->save_for_backward({h, W, b, rows, ids, lp});
    return lp.select(1, 0).neg();
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    Tensor h = saved[0], W = saved[1], b = saved[2], rows = saved[3], ids = saved[4], lp = saved[5];
    int64_t n = h.size(0), m = ids.size(0), s = m - n, d = h.size(1);
    Tensor go = grads[0].unsqueeze(1);
    Tensor g = lp.exp().mul_(go);
    g.select(1, 0).sub_(grads[0]);
    Tensor gt = g.narrow(1, 0, 1), gc = g.narrow(1, 1, s);
    Tensor w_true = rows.narrow(0, 0, n), w_cand = rows.narrow(0, n, s);
    Tensor dh = torch::addmm(w_true * gt, gc, w_cand);
    Tensor drows = torch::empty({m, d}, h.options());
    Tensor d_true = drows.narrow(0, 0, n), d_cand = drows.narrow(0, n, s);
    torch::mul_out(d_true, h, gt);
    torch::mm_out(d_cand, gc.t(), h);
    Tensor dbv = torch::cat({gt.reshape({-1}), gc.sum(0)});
    Tensor idx = ids.unsqueeze(0);
    Tensor dW = torch::_sparse_coo_tensor_unsafe(idx, drows, W.sizes());
    Tensor db = torch::_sparse_coo_tensor_unsafe(idx, dbv, b.sizes());
    return {dh, dW, db, Tensor(), Tensor(), Tensor()};
  }
};
Tensor sampled_core(Tensor h, Tensor W, Tensor b, Tensor ids, Tensor logq, Tensor hits) {
  return SampledCore::apply(h, W, b, ids, logq, hits);
}
'''


def main(argv=None):
    from torch.utils.cpp_extension import load_inline

    argv = sys.argv[1:] if argv is None else argv
    torch.set_num_threads(int(argv[0]) if argv else 2)
    t0 = time.time()
    ext = load_inline("ss_core_prototype", cpp_sources=SOURCE, functions=["sampled_core"],
                      extra_cflags=["-O3"], verbose=False)
    print("compile s", round(time.time() - t0, 1))
    from benchmarks.harness import paired, paired_ratio, summarize
    from benchmarks.loss import tf_methods
    from sampled_softmax.torch import sampled_softmax_loss

    V, S, D, B = 100_000, 100, 300, 256
    g = torch.Generator().manual_seed(0)
    W = torch.nn.Parameter(torch.randn(V, D, generator=g).mul_(0.05))
    b = torch.nn.Parameter(torch.zeros(V))
    h = torch.randn(B, D, generator=g, requires_grad=True)
    y = torch.randint(V, (B,), generator=g)
    Wd, bd, hd = W.detach(), b.detach(), h.detach()
    no_log_q, no_hits = torch.zeros(B + S), torch.empty(0, dtype=torch.bool)

    def fresh_ids():
        return torch.cat([y, torch.randint(V, (S,), generator=g)])

    def reset():
        W.grad = b.grad = h.grad = None

    def floor():  # as benchmarks/loss.py's kernel floor
        ids = fresh_ids()
        rows, bias = Wd.index_select(0, ids), bd.index_select(0, ids)
        w_true, w_cand = rows.split([B, S])
        logits = torch.cat([torch.linalg.vecdot(hd, w_true).unsqueeze_(1),
                            torch.addmm(bias[B:].unsqueeze(0), hd, w_cand.t())], 1)
        p = torch.log_softmax(logits, 1).exp_()
        torch.addmm(w_true * p[:, :1], p[:, 1:], w_cand)
        p[:, 1:].t().mm(hd)

    def compiled():
        ext.sampled_core(h, W, b, fresh_ids(), no_log_q, no_hits).sum().backward()
        reset()

    def ours():
        sampled_softmax_loss(W, b, y, h, S, V, sparse=True, generator=g).sum().backward()
        reset()

    # Same candidates, no log Q, no hit removal: the compiled core must equal the library.
    ids = fresh_ids()
    loss = ext.sampled_core(h, W, b, ids, no_log_q, no_hits)
    loss.sum().backward()
    got = (loss.detach(), h.grad, W.grad.to_dense(), b.grad.to_dense())
    reset()
    want_loss = sampled_softmax_loss(W, b, y, h, S, V, sparse=True, remove_accidental_hits=False,
                                     sampled_values=(ids[B:], torch.ones(B, 1), torch.ones(S)))
    want_loss.sum().backward()
    want = (want_loss.detach(), h.grad, W.grad.to_dense(), b.grad.to_dense())
    reset()
    print("max abs differences (loss, d inputs, d weights, d biases):",
          [float((a - e).abs().max()) for a, e in zip(got, want)])

    methods = {"floor": floor, "compiled core": compiled, "ours": ours}
    tf_steps = tf_methods(W, b, h, y, S, V, 0)
    if tf_steps is not None:
        methods["tf.nn"] = tf_steps["tf.nn"]
    samples = paired(methods, repeats=40, block=10)
    print("median ms:", {k: round(v["median_ms"], 3) for k, v in summarize(samples).items()})
    print("x floor:", {k: round(paired_ratio(samples, k, "floor"), 2) for k in samples})
    if "tf.nn" in samples:
        print("tf.nn / compiled core:", round(paired_ratio(samples, "tf.nn", "compiled core"), 2))

if __name__ == "__main__":
    main()
