"""GRFTLayer: forward and gradients equal the dense layer with the delta scattered in, without dW."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from grft_core.method.layers import GRFTLayer, weight_matrix_shape

CASES = [
    ("linear", lambda: nn.Linear(6, 5), (4, 3, 6)),
    ("linear-2d", lambda: nn.Linear(7, 9), (5, 7)),
    ("conv3x3-stride2", lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1), (2, 4, 9, 9)),
    ("conv1x1", lambda: nn.Conv2d(4, 6, 1), (2, 4, 5, 5)),
    ("conv-depthwise", lambda: nn.Conv2d(6, 6, 3, padding=1, groups=6), (2, 6, 7, 7)),
    ("conv-grouped-dilated", lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2), (2, 4, 7, 7)),
    ("conv-rect-kernel", lambda: nn.Conv2d(3, 4, (1, 3), stride=(1, 2), padding=(0, 1)), (2, 3, 5, 8)),
]


def _dense_reference(base: nn.Module, layer: GRFTLayer) -> nn.Module:
    ref = copy.deepcopy(base)
    for p in ref.parameters():
        p.requires_grad_(True)
    with torch.no_grad():
        ref.weight += layer.delta_weight()
        if layer.grft_bias is not None:
            ref.bias += layer.grft_bias
    return ref


@pytest.mark.parametrize("axis", ["rows", "columns"])
@pytest.mark.parametrize(("case", "make", "shape"), CASES, ids=[c[0] for c in CASES])
class TestGRFTLayer:
    def _layer(self, make, axis):
        torch.manual_seed(0)
        base = make()
        out_dim, in_dim = weight_matrix_shape(base)
        idx = torch.tensor([1, 3]) if axis == "rows" else torch.tensor([0, in_dim - 1])
        layer = GRFTLayer(base, idx, axis)
        with torch.no_grad():
            layer.grft_delta.normal_()
            layer.grft_bias.normal_()
        return base, layer

    def test_forward_and_gradients_match_dense(self, case, make, shape, axis):
        base, layer = self._layer(make, axis)
        x = torch.randn(shape)
        x1 = x.clone().requires_grad_()
        y = layer(x1)
        g = torch.randn_like(y)
        (y * g).sum().backward()

        ref = _dense_reference(base, layer)
        x2 = x.clone().requires_grad_()
        y2 = ref(x2)
        (y2 * g).sum().backward()

        torch.testing.assert_close(y, y2)
        torch.testing.assert_close(x1.grad, x2.grad)
        dense = ref.weight.grad.reshape(ref.weight.shape[0], -1)
        expected = dense[layer.grft_indices] if axis == "rows" else dense[:, layer.grft_indices]
        torch.testing.assert_close(layer.grft_delta.grad, expected)
        torch.testing.assert_close(layer.grft_bias.grad, ref.bias.grad)

    def test_base_weight_gets_no_gradient(self, case, make, shape, axis):
        base, layer = self._layer(make, axis)
        layer(torch.randn(shape).requires_grad_()).sum().backward()
        assert not base.weight.requires_grad
        assert base.weight.grad is None
        assert layer.grft_delta.grad.shape == layer.grft_delta.shape

    def test_merge_then_unmerge_is_bit_exact(self, case, make, shape, axis):
        base, layer = self._layer(make, axis)
        x = torch.randn(shape)
        w0, b0 = base.weight.detach().clone(), base.bias.detach().clone()
        with torch.no_grad():
            unmerged = layer(x)
            layer.merge()
            merged = layer(x)
            layer.unmerge()
        torch.testing.assert_close(merged, unmerged)
        assert torch.equal(base.weight, w0)
        assert torch.equal(base.bias, b0)


@pytest.mark.parametrize("axis", ["rows", "columns"])
def test_linear_function_passes_gradcheck(axis):
    torch.manual_seed(0)
    base = nn.Linear(5, 4).double()
    layer = GRFTLayer(base, torch.tensor([0, 2]), axis)
    with torch.no_grad():
        layer.grft_delta.normal_()
    x = torch.randn(3, 5, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp, d, b: layer(inp), (x, layer.grft_delta, layer.grft_bias))


class TestValidation:
    def test_out_of_range_index_rejected(self):
        with pytest.raises(ValueError, match="within"):
            GRFTLayer(nn.Linear(4, 3), torch.tensor([3]), "rows")

    def test_duplicate_index_rejected(self):
        with pytest.raises(ValueError, match="unique"):
            GRFTLayer(nn.Linear(4, 3), torch.tensor([1, 1]), "rows")

    def test_bad_axis_rejected(self):
        with pytest.raises(ValueError, match="axis"):
            GRFTLayer(nn.Linear(4, 3), torch.tensor([1]), "diagonal")  # type: ignore[arg-type]

    def test_trainable_parameter_count_is_k_rows_plus_bias(self):
        layer = GRFTLayer(nn.Linear(10, 8), torch.tensor([1, 5, 7]), "rows")
        assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == 3 * 10 + 8
