"""The LQ-former: N learnable queries read a variable-length feature sequence into N fixed tokens.

One per modality (audio, video). Each of the L decoder layers is self-attention over the queries, then
cross-attention from the queries to the feature frames, then an FFN (pre- or post-norm). Sinusoidal positions
are added to the attention queries and keys (not to the values), DETR-style, and the weights are randomly
initialised (no BERT). Padded frames are excluded with a *boolean* key-padding mask: unlike the float mask of
the authors' code (which only adds 0/1 to the logits), a padded frame here has exactly zero attention weight,
so whatever a padded position holds cannot change the output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mllm_dr.config import StrictModel


class LQFormerConfig(StrictModel):
    num_queries: int = Field(32, gt=0, description="query tokens N, i.e. LLM tokens per modality")
    num_layers: int = Field(4, gt=0, description="decoder layers L")
    num_heads: int = Field(8, gt=0)
    width: int | None = Field(
        None, gt=0, description="model width; default: the feature dim rounded up to a multiple of num_heads")
    ffn_dim: int | None = Field(None, gt=0, description="FFN hidden size; default 4 x width")
    dropout: float = Field(0.1, ge=0, lt=1)
    norm_first: bool = Field(True, description="pre-norm (True) or post-norm (False) layers")

    def model_width(self, feature_dim: int) -> int:
        width = self.width or self.num_heads * math.ceil(feature_dim / self.num_heads)
        if width % self.num_heads:
            raise ValueError(f"LQ-former width {width} is not divisible by num_heads {self.num_heads}")
        return width


def sinusoidal_positions(length: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """The Transformer's fixed sin/cos position table, ``[length, width]`` (float32)."""
    position = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width + width % 2, device=device)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table[:, :width]


class Attention(nn.Module):
    """Multi-head attention; ``key_mask`` is bool ``[B, T_k]``, True where a key may be attended to."""

    def __init__(self, width: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(width, width) for _ in range(4))

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, n_query, width = query.shape

        def heads(x: torch.Tensor) -> torch.Tensor:  # [B, T, W] -> [B, heads, T, W / heads]
            return x.view(batch, x.shape[1], self.num_heads, width // self.num_heads).transpose(1, 2)

        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(
            heads(self.q_proj(query)), heads(self.k_proj(key)), heads(self.v_proj(value)), attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(batch, n_query, width))


class DecoderLayer(nn.Module):
    def __init__(self, width: int, config: LQFormerConfig) -> None:
        super().__init__()
        self.norm_first = config.norm_first
        self.self_attn = Attention(width, config.num_heads, config.dropout)
        self.cross_attn = Attention(width, config.num_heads, config.dropout)
        ffn_dim = config.ffn_dim or 4 * width
        self.ffn = nn.Sequential(nn.Linear(width, ffn_dim), nn.GELU(), nn.Dropout(config.dropout),
                                 nn.Linear(ffn_dim, width))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor,
                memory_mask: torch.Tensor) -> torch.Tensor:
        keys = memory + memory_pos
        if self.norm_first:
            h = self.norm1(x)
            x = x + self.dropout(self.self_attn(h + query_pos, h + query_pos, h))
            h = self.norm2(x)
            x = x + self.dropout(self.cross_attn(h + query_pos, keys, memory, memory_mask))
            return x + self.dropout(self.ffn(self.norm3(x)))
        x = self.norm1(x + self.dropout(self.self_attn(x + query_pos, x + query_pos, x)))
        x = self.norm2(x + self.dropout(self.cross_attn(x + query_pos, keys, memory, memory_mask)))
        return self.norm3(x + self.dropout(self.ffn(x)))


class LQFormer(nn.Module):
    """``[B, T, feature_dim]`` features + bool frame mask -> ``[B, num_queries, width]`` tokens."""

    def __init__(self, config: LQFormerConfig, feature_dim: int) -> None:
        super().__init__()
        self.config = config
        self.feature_dim = feature_dim
        self.width = config.model_width(feature_dim)
        # Projecting to the width also lets a feature dim that the head count does not divide work.
        self.input_proj = nn.Linear(feature_dim, self.width) if self.width != feature_dim else nn.Identity()
        self.queries = nn.Parameter(torch.randn(config.num_queries, self.width) * 0.02)
        self.layers = nn.ModuleList(DecoderLayer(self.width, config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(self.width) if config.norm_first else nn.Identity()

    def forward(self, features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``frame_mask`` is True on real frames. A row without any frame gets a finite, input-independent output
        (its tokens are never placed in a prompt: a missing modality has no placeholders)."""
        batch, frames, _ = features.shape
        if frame_mask is None:
            frame_mask = torch.ones(batch, frames, dtype=torch.bool, device=features.device)
        memory = self.input_proj(features)
        memory = memory.masked_fill(~frame_mask[..., None], 0.0)
        # Softmax over no key at all is NaN: let empty rows attend to their (zeroed) padding instead.
        attend = frame_mask | ~frame_mask.any(dim=1, keepdim=True)
        dtype = memory.dtype
        memory_pos = sinusoidal_positions(frames, self.width, features.device).to(dtype)
        query_pos = sinusoidal_positions(self.config.num_queries, self.width, features.device).to(dtype)
        x = self.queries.expand(batch, -1, -1)
        for layer in self.layers:
            x = layer(x, query_pos, memory, memory_pos, attend)
        return self.final_norm(x)
