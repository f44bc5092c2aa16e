"""LQ-former: shapes, padding truly excluded, parameter count, every parameter trained."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mllm_dr.model.lq_former import LQFormer, LQFormerConfig, sinusoidal_positions


def expected_parameters(config: LQFormerConfig, feature_dim: int, width: int) -> int:
    """The formula, written out independently of the module."""
    ffn = config.ffn_dim or 4 * width
    attention = 4 * (width * width + width)  # q, k, v, out projections with bias
    layer = 2 * attention + (width * ffn + ffn) + (ffn * width + width) + 3 * 2 * width  # + 3 LayerNorms
    total = config.num_queries * width + config.num_layers * layer
    total += (feature_dim * width + width) if width != feature_dim else 0  # input projection
    total += 2 * width if config.norm_first else 0  # final norm (pre-norm only)
    return total


@pytest.mark.parametrize("feature_dim, config, width, projected", [
    (16, LQFormerConfig(num_queries=5, num_layers=2, num_heads=4), 16, False),
    (10, LQFormerConfig(num_queries=3, num_layers=1, num_heads=4), 12, True),  # 10 % 4 != 0: rounded up
    (16, LQFormerConfig(num_queries=8, num_layers=3, num_heads=2, width=24, ffn_dim=40), 24, True),
    (12, LQFormerConfig(num_queries=4, num_layers=2, num_heads=3, norm_first=False), 12, False),
])
def test_shapes_and_parameter_count(feature_dim, config, width, projected):
    former = LQFormer(config, feature_dim)
    assert former.width == width
    assert isinstance(former.input_proj, nn.Linear) == projected
    out = former(torch.randn(3, 7, feature_dim), torch.ones(3, 7, dtype=torch.bool))
    assert out.shape == (3, config.num_queries, width)
    assert sum(p.numel() for p in former.parameters()) == expected_parameters(config, feature_dim, width)


def test_default_configuration_is_the_papers():
    config = LQFormerConfig()
    assert (config.num_queries, config.num_layers) == (32, 4)
    with pytest.raises(ValueError, match="not divisible"):
        LQFormerConfig(width=30, num_heads=8).model_width(64)


@pytest.mark.parametrize("norm_first", [True, False])
def test_padded_frames_are_truly_ignored(norm_first):
    torch.manual_seed(0)
    former = LQFormer(LQFormerConfig(num_queries=4, num_layers=2, num_heads=2, norm_first=norm_first), 8).eval()
    features = torch.randn(2, 9, 8)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 5:] = False  # row 0 has 5 real frames and 4 padded ones
    before = former(features, mask)
    garbage = features.clone()
    garbage[0, 5:] = torch.tensor([1e4, -3e3, float("nan"), float("inf")])[:, None]
    after = former(garbage, mask)
    assert torch.equal(before, after)
    # ... and padding changes nothing compared with the unpadded sequence on its own.
    alone = former(features[:1, :5], torch.ones(1, 5, dtype=torch.bool))
    torch.testing.assert_close(before[:1], alone, rtol=0, atol=1e-6)
    # Without the mask, the same padded positions do change the output: the check above can fail.
    assert not torch.allclose(former(features, None)[0], before[0], atol=1e-3)


def test_row_without_any_frame_is_finite_and_input_independent():
    former = LQFormer(LQFormerConfig(num_queries=3, num_layers=2, num_heads=2), 6).eval()
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[1] = True
    first = former(torch.randn(2, 4, 6), mask)
    second = former(torch.randn(2, 4, 6) * 100, mask)
    assert torch.isfinite(first).all()
    assert torch.equal(first[0], second[0])


@pytest.mark.parametrize("norm_first", [True, False])
def test_every_parameter_receives_a_gradient(norm_first):
    torch.manual_seed(0)
    former = LQFormer(LQFormerConfig(num_queries=4, num_layers=2, num_heads=2, width=8, norm_first=norm_first), 5)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 3:] = False
    former(torch.randn(2, 6, 5), mask).pow(2).sum().backward()
    missing = [name for name, p in former.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_sinusoidal_positions():
    table = sinusoidal_positions(50, 7)
    assert table.shape == (50, 7)
    assert torch.equal(table[0, 0::2], torch.zeros(4)) and torch.equal(table[0, 1::2], torch.ones(3))
    assert len({tuple(row.tolist()) for row in table}) == 50  # every position distinct
