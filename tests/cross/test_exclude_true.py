"""``exclude_true`` (seed 001's estimator) in every front end against the reference, on a grid:
``num_true`` 1 and 3, ignored labels, expected counts of three samplers' ``q``, shared candidates
(every front end) and per-row draws (PyTorch's ``noise="per_example"``, against the reference row
by row)."""

import itertools

import numpy as np
import pytest

from sampled_softmax import reference as R

V, D, B, S = 30, 5, 6, 7


def distribution(name, rng):
    if name == "uniform":
        return np.full(V, 1.0 / V)
    if name == "log_uniform":
        k = np.arange(V)
        return np.log((k + 2.0) / (k + 1.0)) / np.log(V + 1.0)
    return rng.dirichlet(np.ones(V))  # a unigram


def problem(rng, T, q_name, ignore):
    """Weights, labels with a repeated label (T > 1), candidates drawn from ``q`` with a hit and
    their float32 expected counts ``S q``."""
    q = distribution(q_name, rng)
    W, b, h = rng.normal(size=(V, D)), rng.normal(size=V), rng.normal(size=(B, D))
    y = rng.integers(0, V, size=(B, T))
    if T > 1:
        y[1, 1] = y[1, 0]
    cand = rng.choice(V, size=S, p=q)
    cand[0] = y[0, 0]
    if ignore:
        y[2, 0] = -100
        y[3, :] = -100
    sv = (cand, (S * q[np.where(y >= 0, y, 0)]).astype(np.float32), (S * q[cand]).astype(np.float32))
    return W, b, y, h, sv


GRID = list(itertools.product([1, 3], ["uniform", "log_uniform", "unigram"], [False, True]))


def reference(W, b, y, h, sv, ignore, weights):
    kw = dict(exclude_true=True, ignore_index=-100 if ignore else None)
    return (R.sampled_softmax_loss(W, b, y, h, sv, **kw),
            R.sampled_softmax_grads(W, b, y, h, sv, grad_loss=weights, **kw))


@pytest.mark.parametrize("T,q_name,ignore", GRID)
def test_pytorch_shared_candidates(rng, T, q_name, ignore):
    torch = pytest.importorskip("torch")
    from sampled_softmax.torch import sampled_softmax_loss

    W, b, y, h, sv = problem(rng, T, q_name, ignore)
    weights = rng.normal(size=B)
    Wt, bt, ht = (torch.tensor(x, requires_grad=True) for x in (W, b, h))
    loss = sampled_softmax_loss(Wt, bt, torch.as_tensor(y), ht, S, V, num_true=T, exclude_true=True,
                                sampled_values=tuple(torch.as_tensor(v) for v in sv),
                                ignore_index=-100 if ignore else None)
    (loss * torch.as_tensor(weights)).sum().backward()
    ref_loss, ref_grads = reference(W, b, y, h, sv, ignore, weights)
    np.testing.assert_allclose(loss.detach().numpy(), ref_loss, rtol=1e-12)
    for ours, ref in zip((ht.grad, Wt.grad, bt.grad), ref_grads):
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("T,q_name,exclude", list(itertools.product([1, 3], ["uniform", "log_uniform", "unigram"],
                                                                    [True, False])))
def test_pytorch_per_row_draws_are_the_reference_row_by_row(rng, T, q_name, exclude):
    torch = pytest.importorskip("torch")
    from sampled_softmax.torch import LogUniformSampler, UniformSampler, UnigramSampler, sampled_softmax_loss

    W, b, y, h, _ = problem(rng, T, q_name, False)
    sampler = {"uniform": lambda: UniformSampler(V, draw="with_replacement"),
               "log_uniform": lambda: LogUniformSampler(V, draw="with_replacement"),
               "unigram": lambda: UnigramSampler(V, rng.integers(1, 40, V), draw="with_replacement")}[q_name]()
    Wt, bt, ht = (torch.tensor(x, requires_grad=True) for x in (W, b, h))
    loss = sampled_softmax_loss(Wt, bt, torch.as_tensor(y), ht, S, V, num_true=T, sampler=sampler,
                                exclude_true=exclude, noise="per_example", generator=torch.Generator().manual_seed(3))
    weights = rng.normal(size=B)
    (loss * torch.as_tensor(weights)).sum().backward()
    noise = sampler(torch.as_tensor(y), B * S, generator=torch.Generator().manual_seed(3))[0].view(B, S).numpy()
    q = sampler.probs(torch.arange(V)).numpy()
    d_h, d_W, d_b = np.zeros_like(h), np.zeros_like(W), np.zeros_like(b)
    for i in range(B):
        sv = (noise[i], (S * q[y[i:i + 1]]).astype(np.float32), (S * q[noise[i]]).astype(np.float32))
        kw = dict(exclude_true=exclude)
        np.testing.assert_allclose(loss[i].item(), R.sampled_softmax_loss(W, b, y[i:i + 1], h[i:i + 1], sv, **kw)[0],
                                   rtol=1e-12)
        gh, gW, gb = R.sampled_softmax_grads(W, b, y[i:i + 1], h[i:i + 1], sv, grad_loss=weights[i:i + 1], **kw)
        d_h[i], d_W, d_b = gh[0], d_W + gW, d_b + gb
    for ours, ref in zip((ht.grad, Wt.grad, bt.grad), (d_h, d_W, d_b)):
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("T,q_name,ignore,mode", [c + ("eager",) for c in GRID] + [
    (3, "unigram", True, "function"), (3, "unigram", True, "xla"), (1, "log_uniform", False, "xla")])
def test_tensorflow(rng, T, q_name, ignore, mode):
    tf = pytest.importorskip("tensorflow")
    from sampled_softmax.tensorflow import sampled_softmax_loss

    W, b, y, h, sv = problem(rng, T, q_name, ignore)
    weights = rng.normal(size=B)
    Wt, bt, ht = (tf.Variable(x) for x in (W, b, h))

    def run():
        with tf.GradientTape() as tape:
            loss = sampled_softmax_loss(Wt, bt, y, ht, S, V, num_true=T, sampled_values=sv, exclude_true=True,
                                        ignore_index=-100 if ignore else None)
            total = tf.reduce_sum(loss * weights)
        return loss, tape.gradient(total, [ht, Wt, bt])

    if mode != "eager":
        run = tf.function(run, jit_compile=mode == "xla")
    loss, grads = run()
    ref_loss, ref_grads = reference(W, b, y, h, sv, ignore, weights)
    np.testing.assert_allclose(loss.numpy(), ref_loss, rtol=1e-12)
    for ours, ref in zip(grads, ref_grads):
        np.testing.assert_allclose(tf.convert_to_tensor(ours).numpy(), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("T,q_name,ignore", GRID)
def test_keras(rng, T, q_name, ignore):
    pytest.importorskip("keras")
    from keras_layer_helpers import built_layer, sampled_loss_and_grads

    W, b, y, h, sv = problem(rng, T, q_name, ignore)
    layer = built_layer(W, b, num_sampled=S, num_true=T, exclude_true=True, ignore_index=-100 if ignore else None)
    loss, grads = sampled_loss_and_grads(layer, y, h.astype(np.float32), sv)
    ref_loss, ref_grads = reference(W, b, y, h, sv, ignore, np.ones(B))
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-5, atol=2e-6)
    for ours, ref in zip(grads, ref_grads):
        np.testing.assert_allclose(ours, ref, rtol=2e-4, atol=2e-5)


# -- bad input, the same words everywhere ------------------------------------------------------

def test_counts_that_are_not_with_replacement_are_refused_by_name(rng):
    W, b, y, h, (cand, tc, sc) = problem(rng, 1, "unigram", False)
    bad = (cand, np.full_like(tc, 2.0 * S), sc)  # Q = 2 for every row
    message = r"`exclude_true=True` needs the expected counts of 7 draws with replacement \(E = S q\): row 0's"
    from sampled_softmax import SampledSoftmaxError

    with pytest.raises(SampledSoftmaxError, match=message):
        _torch_call(W, b, y, h, bad)
    tf = pytest.importorskip("tensorflow")
    from sampled_softmax.tensorflow import sampled_softmax_loss

    with pytest.raises(SampledSoftmaxError, match=message):
        sampled_softmax_loss(tf.constant(W), tf.constant(b), y, tf.constant(h), S, V, sampled_values=bad,
                             exclude_true=True)
    with pytest.raises(TypeError, match=r"`exclude_true` must be True or False; received 'yes'"):
        sampled_softmax_loss(tf.constant(W), tf.constant(b), y, tf.constant(h), S, V, exclude_true="yes")


def _torch_call(W, b, y, h, sv):
    torch = pytest.importorskip("torch")
    from sampled_softmax.torch import sampled_softmax_loss

    return sampled_softmax_loss(torch.as_tensor(W), torch.as_tensor(b), torch.as_tensor(y), torch.as_tensor(h), S, V,
                                sampled_values=tuple(torch.as_tensor(v) for v in sv), exclude_true=True)


def test_pytorch_refuses_a_sampler_without_replacement_and_names_the_route(rng):
    torch = pytest.importorskip("torch")
    from sampled_softmax import SampledSoftmaxError
    from sampled_softmax.torch import LogUniformSampler, explain_route, sampled_softmax_loss

    W, b, y, h = (torch.as_tensor(x) for x in problem(rng, 1, "uniform", False)[:4])
    with pytest.raises(SampledSoftmaxError, match=r"`sampler` must draw 'with_replacement' with exclude_true=True"):
        sampled_softmax_loss(W, b, y, h, S, V, sampler=LogUniformSampler(V), exclude_true=True)
    with pytest.raises(SampledSoftmaxError, match=r"cannot be used: it takes exclude_true=False"):
        sampled_softmax_loss(W, b, y, h, S, V, exclude_true=True, implementation="compiled")
    assert explain_route(W, b, y, h, S, V, exclude_true=True).name == "python"
    # A sampler by name draws with replacement: the call works as is.
    assert sampled_softmax_loss(W, b, y, h, S, V, exclude_true=True).shape == (B,)
    with pytest.raises(SampledSoftmaxError, match=r"`sampled_values` cannot be given with noise='per_example'"):
        sampled_softmax_loss(W, b, y, h, S, V, noise="per_example", sampled_values=(torch.arange(S),
                             torch.ones(B, 1), torch.ones(S)))


def test_keras_needs_draws_with_replacement_and_the_softmax_head():
    pytest.importorskip("keras")
    from sampled_softmax import SampledSoftmaxError
    from sampled_softmax.keras import SampledSoftmax

    assert SampledSoftmax(V, S, exclude_true=True).draw == "with_replacement"
    with pytest.raises(SampledSoftmaxError, match=r"`draw` must be 'with_replacement' with exclude_true=True"):
        SampledSoftmax(V, S, exclude_true=True, draw="unique_exact")
    with pytest.raises(SampledSoftmaxError, match=r"`exclude_true=True` is an estimator of the softmax normalizer"):
        SampledSoftmax(V, S, exclude_true=True, loss="nce")
    layer = SampledSoftmax(V, S, exclude_true=True)
    assert SampledSoftmax.from_config(layer.get_config()).exclude_true is True


def test_pytorch_exclude_true_runs_eagerly_under_torch_compile_and_refuses_meta_tensors(rng):
    torch = pytest.importorskip("torch")
    from sampled_softmax.torch import sampled_softmax_loss

    W, b, y, h, sv = problem(rng, 1, "unigram", False)
    args = [torch.as_tensor(x) for x in (W, b, y, h)]
    svt = tuple(torch.as_tensor(v) for v in sv)

    def loss(W_, h_):
        return sampled_softmax_loss(W_, args[1], args[2], h_, S, V, sampled_values=svt, exclude_true=True)

    torch.testing.assert_close(torch.compile(loss)(args[0], args[3]), loss(args[0], args[3]))
    with pytest.raises(NotImplementedError, match=r"exclude_true=True or noise='per_example' does not take meta"):
        sampled_softmax_loss(args[0].to("meta"), None, args[2].to("meta"), args[3].to("meta"), S, V,
                             exclude_true=True)
