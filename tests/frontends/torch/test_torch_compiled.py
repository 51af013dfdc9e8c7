"""The compiled core (``implementation="compiled"``) against the Python path and the reference:
same losses and gradients, the same draws from the same generator, the same cases routed,
clear errors where it does not apply."""

import itertools

import numpy as np
import pytest
import torch

from sampled_softmax import SampledSoftmaxError
from sampled_softmax import reference as R
from sampled_softmax.torch import (
    LearnedUnigramSampler, LogUniformSampler, UniformSampler, UnigramSampler, _compiled, sampled_softmax_loss,
)

pytestmark = pytest.mark.skipif(_compiled.extension() is None,
                                reason=f"compiled core unavailable: {_compiled.unavailable_reason()}")


def case(V=50, D=6, N=9, S=12, dtype=torch.float64, seed=0, with_hits=True, bias=True):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(V, D, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(V, generator=g, dtype=dtype, requires_grad=True) if bias else None
    h = torch.randn(N, D, generator=g, dtype=dtype, requires_grad=True)
    y = torch.randint(V, (N,), generator=g)
    cand = torch.randint(V, (S,), generator=g)
    if with_hits:
        cand[:3] = y[:3]  # accidental hits
        cand[3] = cand[4]  # a duplicate candidate
    tc = torch.rand(N, 1, generator=g, dtype=torch.float32) + 0.1
    sc = torch.rand(S, generator=g, dtype=torch.float32) + 0.1
    return W, b, h, y, (cand, tc, sc)


def grads(impl, W, b, h, y, sv, **kw):
    for t in (W, b, h):
        if t is not None:
            t.grad = None
    loss = sampled_softmax_loss(W, b, y, h, sv[0].numel(), W.shape[0], sampled_values=sv, implementation=impl, **kw)
    loss.sum().backward()
    dense = lambda t: None if t is None else (t.grad.to_dense() if t.grad.is_sparse else t.grad)  # noqa: E731
    return loss.detach(), dense(W), dense(b), h.grad


@pytest.mark.parametrize("dtype,hits,bias,sparse,log_q,pad", list(itertools.product(
    (torch.float32, torch.float64), (True, False), (True, False), (True, False), (True, False), (False, True))))
def test_compiled_equals_python_path(dtype, hits, bias, sparse, log_q, pad):
    W, b, h, y, sv = case(dtype=dtype, with_hits=hits, bias=bias)
    if pad:  # unique_exact padding slots: expected count inf, removed from every row
        sv = (sv[0], sv[1], sv[2].clone().index_fill_(0, torch.tensor([5, 7]), float("inf")))
    kw = dict(remove_accidental_hits=hits, subtract_log_q=log_q, sparse=sparse)
    got = grads("compiled", W, b, h, y, sv, **kw)
    want = grads("python", W, b, h, y, sv, **kw)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    for a, e in zip(got, want):
        if e is None:
            assert a is None
        else:
            torch.testing.assert_close(a, e, **tol)


def test_compiled_equals_the_float64_reference_and_masks_exactly():
    W, b, h, y, sv = case()
    loss, *_ = grads("compiled", W, b, h, y, sv, sparse=True)
    ref = R.sampled_softmax_loss(W.detach().numpy(), b.detach().numpy(), y.numpy()[:, None], h.detach().numpy(),
                                 sampled_values=(sv[0].numpy(), sv[1].double().numpy(), sv[2].double().numpy()))
    np.testing.assert_allclose(loss.numpy(), ref, rtol=1e-12)
    # A padding slot (expected count inf) holding a class used nowhere else: probability 0 in
    # every row, so its row of the weights and its bias get exactly zero gradient.
    unused = next(c for c in range(50) if c not in set(y.tolist()) | set(sv[0].tolist()))
    cand = sv[0].clone()
    cand[7] = unused
    sc = sv[2].clone()
    sc[7] = float("inf")
    _, dW, db, _ = grads("compiled", W, b, h, y, (cand, sv[1], sc), sparse=True)
    assert torch.equal(dW[unused], torch.zeros_like(dW[unused])) and db[unused].item() == 0.0
    _, dW, db, _ = grads("compiled", W, b, h, y, (cand, sv[1], sv[2]), sparse=True)  # not padded: it learns
    assert dW[unused].abs().sum() > 0 and db[unused].item() != 0.0


def test_compiled_gradcheck():
    W, b, h, y, sv = case(V=12, D=3, N=4, S=5)
    f = lambda W, b, h: sampled_softmax_loss(W, b, y, h, 5, 12, sampled_values=sv, implementation="compiled")  # noqa: E731
    assert torch.autograd.gradcheck(f, (W, b, h))


class _CountingExtension:
    """The real extension, counting which entry point each call used."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def __getattr__(self, name):
        fn = getattr(self.real, name)
        return lambda *a: self.calls.append(name) or fn(*a)


def test_auto_routes_what_the_core_takes_and_falls_back_for_the_rest(monkeypatch):
    ext = _CountingExtension(_compiled.extension())
    monkeypatch.setattr(_compiled, "extension", lambda: ext)
    W, b, h, y, sv = case()
    sampled_softmax_loss(W, b, y, h, 12, 50, sampled_values=sv)
    assert ext.calls == ["sampled_softmax_core"]
    sampled_softmax_loss(W, b, y, h, 12, 50, sampled_values=sv, label_smoothing=0.1)  # Python path
    sampled_softmax_loss(W.float(), b.float(), y, h.float(), 12, 50, sampled_values=sv, implementation="python")
    assert ext.calls == ["sampled_softmax_core"]
    # Drawing: the compiled code draws for the stateless samplers it knows, the sampler
    # module draws for the rest and the core takes its draw.
    for sampler in ("log_uniform", "uniform", LogUniformSampler(50, draw="unique_exact"), UniformSampler(50)):
        sampled_softmax_loss(W, b, y, h, 12, 50, sampler=sampler)
    assert ext.calls[1:] == ["sampled_softmax_sampled"] * 4
    # The table samplers too (issue 36); a sampler module of another kind draws for itself.
    sampled_softmax_loss(W, b, y, h, 12, 50, sampler=UnigramSampler(50, np.arange(1, 51)))
    sampled_softmax_loss(W, b, y, h, 12, 50, sampler=LearnedUnigramSampler(50))
    assert ext.calls[-2:] == ["sampled_softmax_sampled"] * 2

    class Reversed(LogUniformSampler):
        pass

    sampled_softmax_loss(W, b, y, h, 12, 50, sampler=Reversed(50))
    assert ext.calls[-1] == "sampled_softmax_core"


def _unigram(V, *, draw):  # zero weights on some classes (not the labels 0..8): never drawn
    k = np.arange(V)
    return UnigramSampler(V, np.where((k % 7 == 5) & (k > 8), 0.0, 1.0 + k[::-1] % 11), draw=draw)


def _learned(V, *, draw):  # counts learned from the labels of each call, after its draw
    return LearnedUnigramSampler(V, draw=draw)


@pytest.mark.parametrize("dtype,sampler,draw,hits,log_q", list(itertools.product(
    (torch.float32, torch.float64), (LogUniformSampler, UniformSampler, _unigram, _learned),
    ("unique", "with_replacement", "unique_exact"), (True, False), (True, False))))
def test_compiled_draw_is_the_python_samplers_draw(dtype, sampler, draw, hits, log_q):
    # Labels among the frequent classes, so that accidental hits occur (and repeats, with replacement).
    W, b, h, _, _ = case(V=60, N=40, dtype=dtype)
    y = torch.arange(40) % 9
    results, states, samplers = [], [], []
    for impl in ("compiled", "python"):
        samplers.append(sampler(60, draw=draw))
        kw = dict(sampler=samplers[-1], remove_accidental_hits=hits, subtract_log_q=log_q, sparse=True)
        for t in (W, b, h):
            t.grad = None
        g = torch.Generator().manual_seed(3)
        loss = torch.cat([sampled_softmax_loss(W, b, y, h, 25, 60, generator=g, implementation=impl, **kw)
                          for _ in range(3)])  # three calls: the generator advances alike
        loss.sum().backward()
        results.append((loss.detach(), W.grad.to_dense(), b.grad.to_dense(), h.grad))
        states.append(g.get_state())
    assert torch.equal(states[0], states[1])
    if sampler is _learned:  # each call learned the same labels
        assert torch.equal(samplers[0].counts, samplers[1].counts)
        assert samplers[0].counts.sum() == 60 + 3 * 40
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    for a, e in zip(*results):
        torch.testing.assert_close(a, e, **tol)


@pytest.mark.parametrize("draw", ["unique", "with_replacement", "unique_exact"])
def test_compiled_learned_draw_is_the_python_draw_on_a_skewed_table_of_many_blocks(draw):
    # S = 300 of 3,000 classes: a unique draw reads several blocks of the chunk's uniforms, each
    # in lanes of descents taken together; the counts learned from skewed labels (ids 0..49
    # 40 times each, then the rest), so that many draws repeat.
    V, S = 3000, 300
    W, b, h, _, _ = case(V=V, N=64, dtype=torch.float64)
    y = torch.arange(64) % 50
    losses, counts = [], []
    for impl in ("compiled", "python"):
        sampler = LearnedUnigramSampler(V, draw=draw)
        for _ in range(40):
            sampler.update(torch.arange(50))
        g = torch.Generator().manual_seed(5)
        losses.append(torch.cat([sampled_softmax_loss(W, b, y, h, S, V, sampler=sampler, generator=g,
                                                      implementation=impl) for _ in range(3)]).detach())
        counts.append(sampler.counts.clone())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-12, atol=1e-13)
    assert torch.equal(counts[0], counts[1])


def _prefix_sums(tree, V):  # the Fenwick query, written from its definition: node i sums (i - lowbit(i), i]
    out = np.zeros(V + 1)
    for k in range(1, V + 1):
        i, total = k, 0.0
        while i:
            total += tree[i]
            i -= i & -i
        out[k] = total
    return out


@pytest.mark.parametrize("V", [1, 2, 7, 64, 1000, 4097])
def test_the_compiled_count_update_is_the_numpy_trees_node_for_node(V):
    from sampled_softmax import samplers as NS

    rng = np.random.default_rng(V)
    counts = rng.integers(1, 5, V).astype(np.float64)
    ours, theirs = NS.CountsTree(counts), NS.CountsTree(counts)
    ids, w = rng.integers(0, V, 300), rng.integers(0, 3, 300).astype(np.float64)
    _compiled.extension().counts_tree_add_(torch.from_numpy(ours.counts), torch.from_numpy(ours._tree),
                                           torch.from_numpy(ids), torch.from_numpy(w))
    theirs.add(ids, w)
    np.testing.assert_array_equal(ours.counts, theirs.counts)
    np.testing.assert_array_equal(ours._tree, theirs._tree)
    expected = counts.copy()
    np.add.at(expected, ids, w)
    np.testing.assert_array_equal(_prefix_sums(ours._tree, V), np.concatenate([[0.0], np.cumsum(expected)]))


def test_the_compiled_count_update_checks_every_id_before_it_changes_anything():
    from sampled_softmax import samplers as NS

    tree = NS.CountsTree(np.ones(10))
    before = tree._tree.copy()
    with pytest.raises(IndexError, match=r"id 10 is outside \[0, 10\)"):
        _compiled.extension().counts_tree_add_(torch.from_numpy(tree.counts), torch.from_numpy(tree._tree),
                                               torch.tensor([3, 10]), torch.ones(2, dtype=torch.float64))
    np.testing.assert_array_equal(tree._tree, before)
    np.testing.assert_array_equal(tree.counts, np.ones(10))


def test_a_learned_samplers_tree_after_updates_is_the_tree_of_its_counts():
    sampler = LearnedUnigramSampler(1000)
    sampler(torch.zeros(1, 1, dtype=torch.long), 5)  # the tree is built on the first draw, which learns label 0
    rng = np.random.default_rng(1)
    for _ in range(5):
        sampler.update(torch.from_numpy(rng.zipf(1.3, 200) % 1000))
    sampler.update(torch.arange(8), torch.tensor([True, False] * 4))  # masked labels add nothing
    from sampled_softmax import samplers as NS

    fresh = NS.CountsTree(sampler.counts.numpy())
    np.testing.assert_array_equal(sampler._tree._tree, fresh._tree)
    assert sampler._tree.total == fresh.total == float(sampler.counts.sum()) == 1000 + 1 + 5 * 200 + 4


def test_the_compiled_draw_learns_its_labels_in_the_same_call(monkeypatch):
    from sampled_softmax import samplers as NS

    ext = _CountingExtension(_compiled.extension())
    monkeypatch.setattr(_compiled, "extension", lambda: ext)
    W, b, h, _, _ = case(V=60, N=40)
    y = torch.arange(40) % 9
    sampler = LearnedUnigramSampler(60)
    for _ in range(3):
        sampled_softmax_loss(W, b, y, h, 25, 60, sampler=sampler)
    assert ext.calls == ["sampled_softmax_sampled"] * 3  # no other call: the update was the draw's
    want = torch.ones(60, dtype=torch.float64).index_add_(0, y.repeat(3), torch.ones(120, dtype=torch.float64))
    assert torch.equal(sampler.counts, want)
    fresh = NS.CountsTree(sampler.counts.numpy())
    np.testing.assert_array_equal(sampler._tree._tree, fresh._tree)
    assert sampler._tree.total == fresh.total == 180.0
    sampler.eval()  # not in training: nothing learned
    sampled_softmax_loss(W, b, y, h, 25, 60, sampler=sampler)
    assert torch.equal(sampler.counts, want)


def test_float32_counts_take_the_general_route_and_learn_there():
    W, b, h, _, _ = case(V=60, N=40)
    y = torch.arange(40) % 9
    sampler = LearnedUnigramSampler(60)
    sampler.counts = sampler.counts.float()  # a buffer the compiled draw does not learn into
    for impl in ("auto", "python"):
        sampled_softmax_loss(W, b, y, h, 25, 60, sampler=sampler, implementation=impl)
    assert sampler.counts.dtype == torch.float32 and float(sampler.counts.sum()) == 60 + 2 * 40


def test_a_label_the_table_cannot_draw_is_the_same_error_on_the_compiled_route():
    W, b, h, _, _ = case(V=60, N=40)
    y = torch.arange(40) % 9
    zero_at_3 = UnigramSampler(60, np.where(np.arange(60) == 3, 0.0, 1.0))
    messages = []
    for impl in ("auto", "python"):
        with pytest.raises(SampledSoftmaxError, match="probability 0") as e:
            sampled_softmax_loss(W, b, y, h, 25, 60, sampler=zero_at_3, implementation=impl)
        messages.append(str(e.value))
    assert messages[0] == messages[1]


def test_compiled_draw_equals_the_float64_reference():
    # The Python sampler's draw from the same seed, fed to the NumPy reference.
    W, b, h, _, _ = case(V=60, N=40)
    y = torch.arange(40) % 9
    loss = sampled_softmax_loss(W, b, y, h, 25, 60, generator=torch.Generator().manual_seed(4), implementation="compiled")
    cand, tc, sc = LogUniformSampler(60)(y[:, None], 25, generator=torch.Generator().manual_seed(4))
    assert (y[:, None] == cand).any()  # accidental hits are part of the case
    ref = R.sampled_softmax_loss(W.detach().numpy(), b.detach().numpy(), y.numpy()[:, None], h.detach().numpy(),
                                 sampled_values=(cand.numpy(), tc.double().numpy(), sc.double().numpy()))
    np.testing.assert_allclose(loss.detach().numpy(), ref, rtol=1e-12)


@pytest.mark.parametrize("kw,match", [
    (dict(label_smoothing=0.1), "label_smoothing=0; received 0.1"),
    (dict(ignore_index=-1, y_first=-1), "no ignored labels"),
    (dict(shards=True), "one weight table, not shards"),
    (dict(half=True), "float32 or float64"),
])
def test_compiled_where_it_does_not_apply_is_a_clear_error(kw, match):
    W, b, h, y, sv = case()
    y = y.clone()
    if kw.pop("y_first", None) is not None:
        y[0] = -1
    weights = [W[:25], W[25:]] if kw.pop("shards", False) else W
    if kw.pop("half", False):
        W, b, h, weights = W.half(), b.half(), h.half(), W.half()
    with pytest.raises(SampledSoftmaxError, match=r"`implementation='compiled'` cannot be used: .*" + match):
        sampled_softmax_loss(weights, b, y, h, 12, 50, sampled_values=sv, implementation="compiled", **kw)


def test_unknown_implementation_is_an_error():
    W, b, h, y, sv = case()
    with pytest.raises(SampledSoftmaxError, match="`implementation` must be one of"):
        sampled_softmax_loss(W, b, y, h, 12, 50, sampled_values=sv, implementation="cuda")


def test_module_passes_its_implementation_on():
    from sampled_softmax.torch import SampledSoftmaxLoss

    layer = SampledSoftmaxLoss(4, 30, 5, implementation="compiled", label_smoothing=0.1)
    with pytest.raises(SampledSoftmaxError, match="label_smoothing=0; received 0.1"):
        layer(torch.randn(3, 4), torch.randint(30, (3,)))
    with pytest.raises(SampledSoftmaxError, match="`implementation` must be one of"):
        SampledSoftmaxLoss(4, 30, 5, implementation="fast")


# ---------------------------------------------------------------------------------------------
# The build never surprises (issue 16): a stale lock, the environment's ninja, the real error


def test_a_lock_left_by_a_killed_build_is_removed_and_said(tmp_path, caplog):
    import os
    import time

    lock = tmp_path / "lock"
    lock.write_text("")
    old = time.time() - _compiled.STALE_LOCK_S - 5
    os.utime(lock, (old, old))
    start = time.perf_counter()
    with caplog.at_level("WARNING", logger="sampled_softmax"):
        _compiled._wait_for_lock(str(tmp_path))
    assert time.perf_counter() - start < 1.0 and not lock.exists()
    assert "stale build lock" in caplog.text


def test_a_fresh_lock_is_waited_for_at_most_the_stale_age(tmp_path, capfd):
    import time

    (tmp_path / "lock").write_text("")
    start = time.perf_counter()
    _compiled._wait_for_lock(str(tmp_path), stale_s=1.5)
    assert 1.0 < time.perf_counter() - start < 10.0
    assert not (tmp_path / "lock").exists()
    assert "another process is building the compiled core" in capfd.readouterr().err


def test_the_environments_ninja_is_found_without_activating_it(monkeypatch):
    import os
    import shutil

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    _compiled._ninja_on_path()
    found = shutil.which("ninja")
    assert found is not None
    assert os.path.dirname(found) != "/usr/bin" or not os.path.exists("/usr/bin/ninja")


def test_a_failed_build_reports_the_compilers_own_line():
    text = "ninja: build stopped: subcommand failed.\n/bin/sh: 1: c++: not found\nFAILED: x.o"
    assert _compiled._first_error_line(text) == "/bin/sh: 1: c++: not found"
    text = "x.cpp:3:1: error: expected ';' before '}' token\nninja: build stopped: subcommand failed."
    assert _compiled._first_error_line(text).startswith("x.cpp:3:1: error:")


def test_info_says_where_and_whether_the_core_is_built(capsys):
    from sampled_softmax.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "compiled core:" in out and _compiled.build_dir() in out


def test_no_compiler_on_path_is_said_plainly_and_the_python_path_runs():
    import os
    import subprocess
    import sys

    code = ("import torch\nfrom sampled_softmax.torch import _compiled, sampled_softmax_loss\n"
            "assert _compiled.extension() is None\nprint('REASON', _compiled.unavailable_reason())\n"
            "print('LOSS', sampled_softmax_loss(torch.randn(50, 4), None, torch.tensor([1]), torch.randn(1, 4), 5, 50).shape)")
    env = dict(os.environ, CXX="no-such-compiler-here")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "REASON no C++ compiler: 'no-such-compiler-here' not found on PATH" in out.stdout
    assert "LOSS torch.Size([1])" in out.stdout


def test_a_long_build_says_it_is_still_running(capfd):
    import time

    done = _compiled._progress(time.perf_counter(), every_s=0.2)
    time.sleep(0.7)
    done.set()
    assert "still building the compiled core" in capfd.readouterr().err
