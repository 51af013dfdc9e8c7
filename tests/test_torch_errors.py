"""Bad input gets a clear error naming the argument, the expectation and what was received.

One row per case: (id, keyword overrides, exception type, regex the message must match).
"""

import pytest
import torch

from sampled_softmax import SampledSoftmaxError
from sampled_softmax.torch import SampledSoftmaxLoss, full_softmax_loss, sampled_softmax_loss

V, D, B, S = 20, 4, 3, 5


def base():
    return dict(
        weights=torch.randn(V, D), biases=torch.randn(V), labels=torch.tensor([1, 2, 3]),
        inputs=torch.randn(B, D), num_sampled=S, num_classes=V,
    )


def sv(cand=None, tc=None, sc=None):
    return (torch.arange(S) if cand is None else cand,
            torch.ones(B, 1) if tc is None else tc,
            torch.ones(S) if sc is None else sc)


CASES = [
    ("label out of range", dict(labels=torch.tensor([1, 2, 20])), SampledSoftmaxError,
     r"`labels` must be in \[0, 19\]; received values up to 20"),
    ("negative label", dict(labels=torch.tensor([1, -3, 2])), SampledSoftmaxError,
     r"`labels` must be in \[0, 19\]; received values down to -3"),
    ("negative label other than ignore_index", dict(labels=torch.tensor([1, -3, -100]), ignore_index=-100),
     SampledSoftmaxError, r"`labels` must be in \[0, 19\] \(or ignore_index=-100\); received values down to -3"),
    ("float labels", dict(labels=torch.tensor([1.0, 2.0, 3.0])), TypeError,
     r"`labels` must have an integer dtype; received torch.float32"),
    ("integer inputs", dict(inputs=torch.ones(B, D, dtype=torch.long)), TypeError,
     r"`inputs` must have a floating dtype; received torch.int64"),
    ("inputs dim differs", dict(inputs=torch.randn(B, D + 1)), SampledSoftmaxError,
     r"`inputs` last dimension must equal the weights' dim 4; received 5"),
    ("batch mismatch", dict(labels=torch.tensor([1, 2])), SampledSoftmaxError,
     r"`labels` must have shape \[3\] or \[3, 1\] to match `inputs` of shape \[3, 4\]; received shape \[2\]"),
    ("labels last dim differs from num_true", dict(labels=torch.tensor([[1, 2]] * 3)), SampledSoftmaxError,
     r"`labels` last dimension must equal num_true=1; received shape \[3, 2\]"),
    ("num_true without its dim", dict(num_true=2), SampledSoftmaxError,
     r"`labels` must have shape \[3, 2\] for num_true=2; received shape \[3\]"),
    ("num_sampled zero", dict(num_sampled=0), SampledSoftmaxError, r"`num_sampled` must be >= 1; received 0"),
    ("num_sampled above V unique", dict(num_sampled=V + 1), SampledSoftmaxError,
     r"`num_sampled` must be <= 20 \(num_classes\) when drawing unique candidates; received 21"),
    ("num_sampled not an int", dict(num_sampled=2.5), TypeError, r"`num_sampled` must be an int; received float"),
    ("num_classes differs from weights", dict(num_classes=V + 5), SampledSoftmaxError,
     r"`num_classes` must equal the number of rows of `weights` \(20\); received 25"),
    ("weights not 2-D", dict(weights=torch.randn(V * D)), SampledSoftmaxError,
     r"`weights` must have shape \[num_classes, dim\]; received shape \[80\]"),
    ("weights wrong type", dict(weights="W"), TypeError, r"`weights` must be a torch.Tensor or a list of shards; received str"),
    ("shards of unequal dims", dict(weights=[torch.randn(10, D), torch.randn(10, D + 1)]), SampledSoftmaxError,
     r"`weights` shards must all have the same dim; received dims \[4, 5\]"),
    ("shards off TensorFlow's layout", dict(weights=[torch.randn(6, D), torch.randn(14, D)]), SampledSoftmaxError,
     r"`weights` shards must have \[10, 10\] rows for num_classes=20 in 2 shards \(TensorFlow's 'div' layout\); received \[6, 14\]"),
    ("empty shard list", dict(weights=[]), SampledSoftmaxError, r"`weights` must be .* received an empty list"),
    ("biases wrong shape", dict(biases=torch.randn(V + 1)), SampledSoftmaxError,
     r"`biases` must have shape \[20\]; received shape \[21\]"),
    ("unknown sampler", dict(sampler="zipf"), SampledSoftmaxError,
     r"`sampler` must be one of 'uniform', 'log_uniform', 'unigram', 'learned_unigram'; received 'zipf'"),
    ("unigram sampler by name", dict(sampler="unigram"), SampledSoftmaxError,
     r"`sampler='unigram'` needs state: pass an instance"),
    ("unknown reduction", dict(reduction="avg"), SampledSoftmaxError,
     r"`reduction` must be one of 'none', 'mean', 'sum'; received 'avg'"),
    ("unknown partition strategy", dict(partition_strategy="block"), SampledSoftmaxError,
     r"`partition_strategy` must be one of 'div', 'mod'; received 'block'"),
    ("label smoothing above 1", dict(label_smoothing=1.5), SampledSoftmaxError,
     r"`label_smoothing` must be in \[0, 1\]; received 1.5"),
    ("label smoothing negative", dict(label_smoothing=-0.1), SampledSoftmaxError,
     r"`label_smoothing` must be in \[0, 1\]; received -0.1"),
    ("sampled_values not a triple", dict(sampled_values=(torch.arange(S),)), SampledSoftmaxError,
     r"`sampled_values` must be a triple .* received tuple of length 1"),
    ("sampled candidates wrong length", dict(sampled_values=sv(cand=torch.arange(S + 1))), SampledSoftmaxError,
     r"`sampled_values\[0\]` \(sampled_candidates\) must have shape \[5\]; received shape \[6\]"),
    ("sampled expected count wrong shape", dict(sampled_values=sv(sc=torch.ones(S - 1))), SampledSoftmaxError,
     r"`sampled_values\[2\]` \(sampled_expected_count\) must have shape \[5\]; received shape \[4\]"),
    ("true expected count wrong shape", dict(sampled_values=sv(tc=torch.ones(B + 1, 1))), SampledSoftmaxError,
     r"`sampled_values\[1\]` \(true_expected_count\) must have shape \[3, 1\] \(batch, num_true\); received shape \[4, 1\]"),
    ("candidate out of range", dict(sampled_values=sv(cand=torch.tensor([0, 1, 2, 3, 20]))), SampledSoftmaxError,
     r"`sampled_values\[0\]` \(sampled_candidates\) must be in \[0, 19\]; received 20"),
    ("float candidates", dict(sampled_values=sv(cand=torch.arange(S).float())), TypeError,
     r"`sampled_values\[0\]` must have an integer dtype; received torch.float32"),
    ("non-positive expected count", dict(sampled_values=sv(sc=torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0]))),
     SampledSoftmaxError, r"`sampled_values\[2\]` \(sampled_expected_count\) must be positive .* received 0.0"),
    ("zero true expected count", dict(sampled_values=sv(tc=torch.zeros(B, 1))), SampledSoftmaxError,
     r"`sampled_values\[1\]` \(true_expected_count\) must be positive and finite; received 0.0"),
]


@pytest.mark.parametrize("case,overrides,exc,message", CASES, ids=[c[0] for c in CASES])
def test_sampled_softmax_loss_rejects(case, overrides, exc, message):
    kwargs = base()
    kwargs.update(overrides)
    with pytest.raises(exc, match=message):
        sampled_softmax_loss(**kwargs)


@pytest.mark.parametrize("overrides,exc,message", [
    (dict(labels=torch.tensor([1, 2, 20])), SampledSoftmaxError, r"`labels` must be in \[0, 19\]"),
    (dict(inputs=torch.randn(B, D + 1)), SampledSoftmaxError, r"`inputs` last dimension"),
    (dict(reduction="avg"), SampledSoftmaxError, r"`reduction`"),
])
def test_full_softmax_loss_rejects(overrides, exc, message):
    kwargs = base()
    del kwargs["num_sampled"], kwargs["num_classes"]
    kwargs.update(overrides)
    with pytest.raises(exc, match=message):
        full_softmax_loss(**kwargs)


def test_module_rejects_bad_construction():
    with pytest.raises(SampledSoftmaxError, match=r"`weight` must have shape \[20, 4\]; received shape \[20, 5\]"):
        SampledSoftmaxLoss(4, 20, 5, weight=torch.nn.Parameter(torch.randn(20, 5)))
    with pytest.raises(SampledSoftmaxError, match=r"`num_sampled` must be <= 20"):
        SampledSoftmaxLoss(4, 20, 21)
    with pytest.raises(SampledSoftmaxError, match="`reduction`"):
        SampledSoftmaxLoss(4, 20, 5, reduction="avg")


def test_nothing_is_clipped_silently_in_training():
    layer = SampledSoftmaxLoss(D, V, S)
    with pytest.raises(SampledSoftmaxError, match="received values up to 25"):
        layer(torch.randn(B, D), torch.tensor([1, 2, 25]))
    layer.eval()
    with pytest.raises(SampledSoftmaxError, match="received values up to 25"):
        layer(torch.randn(B, D), torch.tensor([1, 2, 25]))
