"""A full training step (forward, backward, optimizer update), paired, and its peak memory.

The model: ``h = tanh(Linear(D, D)(x))`` (the rest of the model, updated by ``torch.optim.Adam``)
followed by an output layer over ``V`` classes. Methods:

* ``recipe``: ``SampledSoftmax(sparse=True)`` with ``SparseRowAdam`` for the class table
  (the library's documented recipe).
* ``recipe defaults``: the recipe at the layer's defaults (its learned unigram sampler, drawn
  on the compiled route since issue 36) instead of ``sampler="log_uniform"``.
* ``recipe rowwise``: the same with ``SparseRowAdam(rowwise=True)`` (one second moment per row).
* ``recipe fused``: ``SampledSoftmax(table_optimizer=RowAdam(...))``: the table's Adam applied to the
  touched rows inside the loss's backward (no gradient built for the table, no optimizer step).
* ``recipe compiled``: the recipe with its forward (model and loss) in
  ``torch.compile(fullgraph=True)``; the draw reads the default generator (seeded once).
* ``stock sparse``: ``nn.Embedding(V, D, sparse=True)`` rows, hand-written sampled logits and
  ``torch.optim.SparseAdam``, what a careful PyTorch user builds today.
* ``sampled dense Adam``: hand-written sampled softmax indexing a dense Parameter, ``Adam``.
* ``full softmax Adam``: ``Linear(D, V)`` and ``F.cross_entropy``, ``Adam``.

Two bounds, not methods: ``recipe without its table step`` (the recipe's step with the table's
optimizer left out: no fused update can be faster than a free one, so ``recipe / this`` bounds
what fusing the table's optimizer can gain) and ``rest of the model alone`` (its layer, a sum
as the loss, its Adam: the part of every step that no output layer changes).

Run as a module for peak memory: ``python -m benchmarks.train_step METHOD V`` prints one JSON
line measured in that fresh process.
"""

from __future__ import annotations

import gc
import json
import sys

METHODS = ("recipe", "recipe defaults", "recipe rowwise", "recipe fused", "recipe compiled", "stock sparse", "sampled dense Adam", "full softmax Adam")
BOUNDS = ("recipe without its table step", "rest of the model alone")
SHAPE = dict(S=100, D=300, B=256)


def build(method: str, V: int, *, S=100, D=300, B=256, seed=0, body=True):
    """A ``step()`` closure for ``method`` at ``V`` classes, with its own parameters.

    ``body=False`` leaves out the rest of the model (its layer and its Adam): the step is then
    the output layer alone, loss and table optimizer, on fixed hidden states."""
    import torch
    import torch.nn.functional as F

    from sampled_softmax.torch import LogUniformSampler, RowAdam, SampledSoftmax, SparseRowAdam

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g)
    y = torch.randint(V, (B,), generator=g)
    layer = torch.nn.Linear(D, D) if body else torch.nn.Identity()
    rest_opts = [torch.optim.Adam(layer.parameters(), lr=1e-3)] if body else []

    def hidden():
        return torch.tanh(layer(x)) if body else x

    def make_step(loss, head_opt, *, head_step=True):
        opts = rest_opts + ([] if head_opt is None else [head_opt])
        stepped = rest_opts + ([] if head_opt is None or not head_step else [head_opt])

        def step():
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            loss().backward()
            for opt in stepped:
                opt.step()

        return step

    if method == "rest of the model alone":
        return make_step(lambda: hidden().sum(), None), (layer, *rest_opts)

    if method == "recipe defaults":
        head = SampledSoftmax(D, V, S, sparse=True)
        head_opt = SparseRowAdam(head.parameters(), lr=1e-3)
        return make_step(lambda: head(hidden(), y, generator=g).loss, head_opt), (layer, *rest_opts, head, head_opt)

    if method in ("recipe", "recipe rowwise", "recipe without its table step"):
        head = SampledSoftmax(D, V, S, sampler="log_uniform", sparse=True)  # as tf.nn
        head_opt = SparseRowAdam(head.parameters(), lr=1e-3, rowwise=method == "recipe rowwise")
        return (make_step(lambda: head(hidden(), y, generator=g).loss, head_opt,
                          head_step=method != "recipe without its table step"), (layer, *rest_opts, head, head_opt))

    if method == "recipe fused":
        head = SampledSoftmax(D, V, S, sampler="log_uniform", table_optimizer=RowAdam(lr=1e-3))
        return make_step(lambda: head(hidden(), y, generator=g).loss, None), (layer, *rest_opts, head)

    if method == "recipe compiled":
        head = SampledSoftmax(D, V, S, sampler="log_uniform", sparse=True)  # as tf.nn
        head_opt = SparseRowAdam(head.parameters(), lr=1e-3)
        torch.manual_seed(seed)
        forward = torch.compile(lambda: head(hidden(), y).loss, fullgraph=True)
        forward()  # compiled here, outside any timing
        return make_step(forward, head_opt), (layer, *rest_opts, head, head_opt)

    if method in ("stock sparse", "sampled dense Adam"):
        sparse = method == "stock sparse"
        table = torch.nn.Embedding(V, D, sparse=sparse)
        bias = torch.nn.Embedding(V, 1, sparse=sparse)
        torch.nn.init.zeros_(bias.weight)
        sampler = LogUniformSampler(V)
        params = list(table.parameters()) + list(bias.parameters())
        head_opt = torch.optim.SparseAdam(params, lr=1e-3) if sparse else torch.optim.Adam(params, lr=1e-3)

        def loss():
            h = hidden()
            cand, tc, sc = sampler(y[:, None], S, generator=g)
            ids = torch.cat([y, cand])
            rows, b = table(ids), bias(ids)[:, 0]
            true_logits = (h * rows[:B]).sum(1, keepdim=True) + b[:B, None] - tc.log()
            samp_logits = (h @ rows[B:].t() + b[B:] - sc.log()).masked_fill(y[:, None] == cand, -1e9)
            logits = torch.cat([true_logits, samp_logits], 1)
            return F.cross_entropy(logits, torch.zeros(B, dtype=torch.long))

        return make_step(loss, head_opt), (layer, *rest_opts, table, bias, head_opt)

    if method == "full softmax Adam":
        head = torch.nn.Linear(D, V)
        head_opt = torch.optim.Adam(head.parameters(), lr=1e-3)
        return make_step(lambda: F.cross_entropy(head(hidden()), y), head_opt), (layer, *rest_opts, head, head_opt)
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS + BOUNDS}")


def rounds(quick: bool) -> int:
    """Progress steps :func:`run` reports."""
    return (5 + 5 + 5 + 5 + 3 + 3) if quick else (20 + 20 + 20 + 20 + 5 + 5)


def run(*, quick=False, seed=0, progress=None):
    """Timing groups, each paired in this process (see the module docstring)."""
    from .harness import paired, paired_ratio, summarize

    big = 100_000 if quick else 1_000_000
    sizes = (10_000, big) if quick else (10_000, 100_000, 1_000_000)
    repeats = 5 if quick else 20
    block = 2 if quick else 5
    results = {"case": dict(SHAPE, V=list(sizes)), "kind": "train-step", "groups": {}}

    # 1. The recipe is flat in V.
    steps = {f"recipe V={v}": build("recipe", v, seed=seed)[0] for v in sizes}
    s = paired(steps, repeats=repeats, block=block, progress=progress)
    results["groups"]["flatness"] = {"summary": summarize(s), "ratio": paired_ratio(
        s, f"recipe V={big}", f"recipe V={sizes[0]}")}
    del steps
    gc.collect()

    # 2. At the largest V: the recipe, its row-wise variant and stock SparseAdam.
    steps = {m: build(m, big, seed=seed)[0]
             for m in ("recipe", "recipe defaults", "recipe rowwise", "recipe fused", "stock sparse", *BOUNDS)}
    s = paired(steps, repeats=repeats, block=block, progress=progress)
    results["groups"]["sparse"] = {"V": big, "summary": summarize(s), "ratios": {
        "stock sparse / recipe": paired_ratio(s, "stock sparse", "recipe"),
        "stock sparse / recipe defaults": paired_ratio(s, "stock sparse", "recipe defaults"),
        "recipe defaults / recipe": paired_ratio(s, "recipe defaults", "recipe"),
        "recipe rowwise / recipe": paired_ratio(s, "recipe rowwise", "recipe"),
        "recipe / recipe fused": paired_ratio(s, "recipe", "recipe fused"),
        "stock sparse / recipe fused": paired_ratio(s, "stock sparse", "recipe fused"),
        # The most a fused table optimizer could gain, were its update free (module docstring).
        "recipe / recipe without its table step": paired_ratio(s, "recipe", "recipe without its table step"),
        "stock sparse / recipe without its table step": paired_ratio(s, "stock sparse",
                                                                      "recipe without its table step")}}
    recipe = steps["recipe"]
    del steps
    gc.collect()

    # 2b. The output layer alone (loss and table optimizer, no body): what the library controls.
    steps = {m: build(m, big, seed=seed, body=False)[0] for m in ("recipe", "recipe fused", "stock sparse")}
    s = paired(steps, repeats=repeats, block=block, progress=progress)
    results["groups"]["head only"] = {"V": big, "summary": summarize(s), "ratios": {
        "stock sparse / recipe": paired_ratio(s, "stock sparse", "recipe"),
        "recipe / recipe fused": paired_ratio(s, "recipe", "recipe fused")}}
    del steps
    gc.collect()

    # 2c. torch.compile: what compiling the forward (fullgraph, through the library's custom
    # operators) gains or costs on the recipe's step.
    steps = {m: build(m, big, seed=seed)[0] for m in ("recipe", "recipe compiled")}
    s = paired(steps, repeats=repeats, block=block, progress=progress)
    results["groups"]["torch.compile"] = {"V": big, "summary": summarize(s), "ratios": {
        "recipe / recipe compiled": paired_ratio(s, "recipe", "recipe compiled")}}
    del steps
    gc.collect()

    # 3. Dense optimizers at the largest V (slow: few rounds). Blocks of 2 calls, the first
    # left out: a step right after a full-softmax step finds every cache evicted.
    for m in ("sampled dense Adam", "full softmax Adam"):
        step = build(m, big, seed=seed)[0]
        s = paired({"recipe": recipe, m: step}, repeats=3 if quick else 5, warmup=1, block=2,
                   progress=progress)
        results["groups"][m] = {"V": big, "summary": summarize(s), "ratio": paired_ratio(s, m, "recipe")}
        del step
        gc.collect()
    return results


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _state_bytes(objects) -> int:
    """Bytes of parameters, buffers and optimizer state held by ``objects``."""
    import torch

    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()

    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            for t in list(obj.parameters()) + list(obj.buffers()):
                add(t)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                for t in state.values():
                    add(t)
    return total


def measure_memory(method: str, V: int, steps: int = 3) -> dict:
    """Peak resident memory of training steps beyond the weights and optimizer state.

    Build, take one step (optimizer state is allocated then), hand freed heap back to the OS
    (``malloc_trim``), read the resident set, reset the high-water mark and take more steps:
    the growth is what a step needs (gradients, activations, temporaries)."""
    import ctypes

    step, owned = build(method, V)
    step()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the baseline then includes freed heap
        pass
    base_kb = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # VmHWM := VmRSS (Linux)
        f.write("5")
    for _ in range(steps):
        step()
    peak_kb = _status_kb("VmHWM")
    return {"method": method, "V": V, "weights_and_state_mb": _state_bytes(owned) / 2**20,
            "peak_extra_mb": (peak_kb - base_kb) / 1024}


def memory_in_subprocess(method: str, V: int) -> dict:
    """Median of fresh-process runs (see :func:`harness.median_memory_run`)."""
    from .harness import median_memory_run

    row = median_memory_run(["-m", "benchmarks.train_step", method, str(V)])
    if "skipped" in row:
        raise RuntimeError(f"memory of {method} at V={V}: {row['skipped']}")
    return row


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(measure_memory(sys.argv[1], int(sys.argv[2]))))
