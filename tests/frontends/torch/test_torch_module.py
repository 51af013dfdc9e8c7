"""``SampledSoftmaxLoss``: sampled in training, exact in eval, tied weights, state, learning."""

import io

import numpy as np
import pytest
import torch

from sampled_softmax import SampledSoftmaxError
from sampled_softmax.torch import (LearnedUnigramSampler, SampledSoftmax, SampledSoftmaxLoss, SampledSoftmaxOutput,
                                   SparseRowAdam, full_softmax_loss, sampled_softmax_loss)


def test_training_mode_is_the_sampled_loss_and_eval_mode_the_full_softmax():
    torch.manual_seed(0)
    layer = SampledSoftmaxLoss(8, 100, 10, sampler="log_uniform", dtype=torch.float64)
    x, y = torch.randn(2, 5, 8, dtype=torch.float64), torch.randint(100, (2, 5))
    out = layer(x, y, generator=torch.Generator().manual_seed(3))
    assert isinstance(out, SampledSoftmaxOutput) and out.output.shape == (2, 5) and out.loss.shape == ()
    expected = sampled_softmax_loss(layer.weight, layer.bias, y, x, 10, 100, sampler="log_uniform",
                                    reduction="mean", ignore_index=-100,
                                    generator=torch.Generator().manual_seed(3))
    assert torch.allclose(out.loss, expected, rtol=1e-12)
    layer.eval()
    out = layer(x, y)
    assert torch.allclose(out.loss, full_softmax_loss(layer.weight, layer.bias, y, x, reduction="mean"), rtol=1e-12)
    logp = layer.log_prob(x)
    assert torch.allclose(out.output, logp.gather(-1, y.unsqueeze(-1)).squeeze(-1), rtol=1e-12)
    assert torch.allclose(logp.logsumexp(-1), torch.zeros(2, 5, dtype=torch.float64), atol=1e-12)
    assert torch.equal(layer.predict(x), logp.argmax(-1))


def test_tied_weight_is_shared_and_receives_gradient_from_both_uses():
    emb = torch.nn.Embedding(50, 6)
    layer = SampledSoftmaxLoss(6, 50, 7, weight=emb.weight, bias=False)
    assert layer.weight is emb.weight and layer.bias is None
    tokens = torch.randint(50, (4, 3))
    out = layer(emb(tokens), tokens.roll(1, dims=1))
    out.loss.backward()
    assert emb.weight.grad is not None and torch.count_nonzero(emb.weight.grad) > 0


def test_module_ignore_index_and_num_true():
    layer = SampledSoftmaxLoss(4, 30, 6, reduction="none")
    x = torch.randn(3, 4)
    y = torch.tensor([[1, 2], [-100, -100], [3, -100]])
    out = layer(x, y)
    assert out.loss.shape == (3,) and out.loss[1] == 0 and out.output[1] == 0
    assert torch.all(out.loss[[0, 2]] > 0)


def test_learned_sampler_state_goes_into_the_module_state_dict():
    layer = SampledSoftmaxLoss(4, 30, 6, sampler=LearnedUnigramSampler(30))
    layer(torch.randn(3, 4), torch.tensor([5, 5, 6]))
    state = layer.state_dict()
    assert state["sampler.counts"][5] == 3
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    fresh = SampledSoftmaxLoss(4, 30, 6, sampler=LearnedUnigramSampler(30))
    fresh.load_state_dict(torch.load(buf))
    assert torch.equal(fresh.sampler.counts, layer.sampler.counts)
    assert torch.equal(fresh.weight, layer.weight)


def test_the_default_sampler_learns_the_label_counts_and_saves_them():
    """The default sampler fits any vocabulary order (issue 22): it is a LearnedUnigramSampler
    whose counts (1 per class to start) add each training call's labels, ignored ones excepted,
    and travel in ``state_dict``; eval mode leaves them alone."""
    torch.manual_seed(0)
    layer = SampledSoftmaxLoss(4, 30, 6, dtype=torch.float64)
    assert isinstance(layer.sampler, LearnedUnigramSampler)
    y = torch.tensor([[3, 3, 7], [29, -100, 0]])
    layer(torch.randn(2, 3, 4, dtype=torch.float64), y)
    expected = torch.ones(30, dtype=torch.float64)
    expected[[3, 7, 29, 0]] += torch.tensor([2.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(layer.state_dict()["sampler.counts"], expected, rtol=0, atol=0)
    layer.eval()
    layer(torch.randn(2, 3, 4, dtype=torch.float64), y)
    torch.testing.assert_close(layer.sampler.counts, expected, rtol=0, atol=0)
    restored = SampledSoftmaxLoss(4, 30, 6, dtype=torch.float64)
    restored.load_state_dict(layer.state_dict())
    torch.testing.assert_close(restored.sampler.counts, expected, rtol=0, atol=0)


def test_extra_repr_and_dtype():
    layer = SampledSoftmaxLoss(4, 30, 6, sparse=True, dtype=torch.float64)
    assert "in_features=4, num_classes=30, num_sampled=6" in repr(layer) and "sparse=True" in repr(layer)
    assert "LearnedUnigramSampler(num_classes=30, draw='unique')" in repr(layer)
    assert layer.weight.dtype == torch.float64 and layer.bias.dtype == torch.float64


def test_training_with_sparse_rows_reduces_the_full_softmax_loss():
    """A learnable task: the class is a fixed linear function of the input."""
    g = torch.Generator().manual_seed(0)
    V, D, N = 200, 16, 2048
    true_W = torch.randn(V, D, generator=g) * 3
    x = torch.randn(N, D, generator=g)
    y = (x @ true_W.T).argmax(1)
    layer = SampledSoftmaxLoss(D, V, 20, sparse=True)
    opt = SparseRowAdam(layer.parameters(), lr=0.05)
    layer.eval()
    before = layer(x, y).loss.item()
    layer.train()
    for _ in range(200):
        idx = torch.randint(N, (64,), generator=g)
        opt.zero_grad(set_to_none=True)
        layer(x[idx], y[idx], generator=g).loss.backward()
        assert layer.weight.grad.is_sparse
        opt.step()
    layer.eval()
    after = layer(x, y).loss.item()
    assert after < 0.5 * before and after < np.log(V) / 2


def test_learned_sampler_does_not_count_ignored_labels():
    layer = SampledSoftmaxLoss(4, 30, 6, sampler=LearnedUnigramSampler(30))
    layer(torch.randn(3, 4), torch.tensor([5, -100, 7]))
    counts = layer.sampler.counts
    assert counts[5] == 2 and counts[7] == 2 and counts[0] == 1 and counts.sum() == 30 + 2


@pytest.mark.parametrize("loss,exclude_true,noise", [("sampled_softmax", True, "shared"),
                                                     ("sampled_softmax", False, "per_example"),
                                                     ("sampled_softmax", True, "per_example"),
                                                     ("nce", False, "per_example"),
                                                     ("negative_sampling", False, "per_example")])
def test_the_layer_takes_exclude_true_and_noise_as_the_functional_losses(loss, exclude_true, noise):
    """The layer's training loss is the functional one with the same settings and generator (a
    sampler given by name drawing with replacement, as the functional losses draw then)."""
    from sampled_softmax.torch import LogUniformSampler, nce_loss, negative_sampling_loss, sampled_softmax_loss

    torch.manual_seed(0)
    layer = SampledSoftmax(8, 50, 6, sampler="log_uniform", loss=loss, exclude_true=exclude_true, noise=noise,
                           reduction="none").double()
    assert layer.sampler.draw == "with_replacement"
    h, y = torch.randn(5, 8, dtype=torch.float64), torch.randint(50, (5,))
    out = layer(h, y, generator=torch.Generator().manual_seed(3))
    fn = {"sampled_softmax": sampled_softmax_loss, "nce": nce_loss, "negative_sampling": negative_sampling_loss}[loss]
    extra = {"exclude_true": exclude_true} if loss == "sampled_softmax" else {}
    want = fn(layer.weight, layer.bias, y, h, 6, 50, sampler=LogUniformSampler(50, draw="with_replacement"),
              noise=noise, remove_accidental_hits=loss == "sampled_softmax", ignore_index=-100,
              generator=torch.Generator().manual_seed(3), **extra)
    torch.testing.assert_close(out.loss, want)
    if noise == "per_example" or loss != "sampled_softmax":
        torch.testing.assert_close(out.output, -want)


def test_the_layer_refuses_what_its_estimator_cannot_use():
    from sampled_softmax.torch import LogUniformSampler

    with pytest.raises(SampledSoftmaxError, match=r"`sampler` must draw 'with_replacement' with exclude_true=True"):
        SampledSoftmax(8, 50, 6, sampler=LogUniformSampler(50), exclude_true=True)
    with pytest.raises(SampledSoftmaxError, match=r"`exclude_true=True` is an estimator of the softmax normalizer"):
        SampledSoftmax(8, 50, 6, loss="nce", exclude_true=True)
    with pytest.raises(SampledSoftmaxError, match=r"`noise` must be one of 'shared', 'per_example'"):
        SampledSoftmax(8, 50, 6, noise="each")
