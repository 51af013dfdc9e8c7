"""PyTorch-only bad input (``full_softmax_loss``, the module); the table shared by every front
end is in test_bad_input.py."""

import pytest
import torch

from sampled_softmax import SampledSoftmaxError
from sampled_softmax.torch import SampledSoftmaxLoss, full_softmax_loss

V, D, B, S = 20, 4, 3, 5


def base():
    return dict(
        weights=torch.randn(V, D), biases=torch.randn(V), labels=torch.tensor([1, 2, 3]),
        inputs=torch.randn(B, D), num_sampled=S, num_classes=V,
    )


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
