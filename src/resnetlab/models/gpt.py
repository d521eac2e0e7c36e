"""A decoder-only byte-level language model (a small GPT, after nanoGPT's `model.py`), and its plain twin.

    bytes (B, T) -> wte(bytes) + wpe(positions) -> n_layer x [attn unit, mlp unit] -> ln_f -> lm_head
    attn unit: x + s * CausalSelfAttention(LN(x));  mlp unit: x + s * MLP(LN(x))   (pre-LN, GPT-2)

The plain twin applies the same units in sequence with no additions. The vocabulary is the 256
byte values, so the head is left untied from the embedding (tying would save 256 * width
parameters and make the twins' state dicts differ from nanoGPT's in nothing that matters here).
Init as GPT-2: N(0, 0.02) everywhere, and N(0, 0.02 / sqrt(2 * n_layer)) for the projections that
write into the stream [Radford19], the same draw for both twins.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnetlab.errors import Error
from resnetlab.models.prenorm import FeedForward, PreNormUnit
from resnetlab.models.registry import register_model

VOCAB_SIZE = 256  # bytes
LANGUAGE_MODELS = ("gpt", "plain_gpt")  # the registry's models that read bytes, not images


class CausalSelfAttention(nn.Module):
    """Multi-head attention where position t sees positions <= t; (B, T, width) -> (B, T, width)."""

    def __init__(self, width: int, n_head: int) -> None:
        super().__init__()
        if width % n_head:
            raise Error(f"width {width} must be a multiple of n_head {n_head}")
        self.n_head = n_head
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, heads, T, C / heads)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))

    def last_layer(self) -> nn.Linear:
        return self.proj


class TransformerBlock(nn.Module):
    """One transformer layer: the attention unit, then the MLP unit (4x wide)."""

    def __init__(self, width: int, n_head: int, *, norm: str, branch_scale: str, shortcut: bool) -> None:
        super().__init__()
        opts = dict(norm=norm, branch_scale=branch_scale, shortcut=shortcut)
        self.attn = PreNormUnit(width, CausalSelfAttention(width, n_head), **opts)
        self.mlp = PreNormUnit(width, FeedForward(width, 4 * width), **opts)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.attn(x))


class GPT(nn.Module):
    """Byte-level GPT: (B, T) int64 bytes -> (B, T, 256) next-byte logits; T <= `context`."""

    family = "gpt"

    def __init__(
        self,
        *,
        depth: int = 4,
        width: int = 128,
        n_head: int = 4,
        context: int = 64,
        norm: str = "ln",
        branch_scale: str = "one",
        shortcut: bool = True,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("depth", depth), ("width", width), ("n_head", n_head), ("context", context)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise Error(f"{name} must be an integer >= 1; got {value!r}")
        self.depth, self.width, self.context = depth, width, context
        self.has_shortcut, self.norm_type, self.branch_scale = shortcut, norm, branch_scale
        self.wte = nn.Embedding(VOCAB_SIZE, width)
        self.wpe = nn.Embedding(context, width)  # learned positions
        self.h = nn.ModuleList(
            TransformerBlock(width, n_head, norm=norm, branch_scale=branch_scale, shortcut=shortcut)
            for _ in range(depth)
        )
        self.ln_f = nn.LayerNorm(width) if norm == "ln" else nn.Identity()
        self.lm_head = nn.Linear(width, VOCAB_SIZE, bias=False)
        self.num_classes = VOCAB_SIZE
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                stream = name.endswith(("attn.fn.proj.weight", "mlp.fn.fc2.weight"))
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * self.depth) if stream else 0.02)
        if zero_init_residual:
            for unit in self.blocks():
                unit.zero_init_last()

    def blocks(self) -> list[nn.Module]:
        """Every residual unit in forward order: attention and MLP of layer 1, then of layer 2, ..."""
        return [unit for block in self.h for unit in (block.attn, block.mlp)]

    def embed(self, idx: Tensor) -> Tensor:
        """(B, T) bytes -> (B, T, width): byte plus position embedding."""
        T = idx.shape[1]
        if self.context < T:
            raise Error(f"sequence of {T} bytes is longer than the context of {self.context}")
        return self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))

    def forward_intermediates(self, idx: Tensor) -> list[Tensor]:
        """[embedding, output of unit 1, ..., output of unit 2 * depth], each (B, T, width)."""
        feats = [self.embed(idx)]
        for unit in self.blocks():
            feats.append(unit(feats[-1]))
        return feats

    def forward_features(self, idx: Tensor) -> Tensor:
        x = self.embed(idx)
        for block in self.h:
            x = block(x)
        return self.ln_f(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x if pre_logits else self.lm_head(x)

    def forward(self, idx: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(idx))


@register_model
def gpt(**kwargs: Any) -> GPT:
    """Byte-level GPT with pre-LN residual units; nanoGPT's CPU size: 4 layers, 128 wide, context 64."""
    return GPT(**{"shortcut": True, **kwargs})


@register_model
def plain_gpt(**kwargs: Any) -> GPT:
    """The GPT's plain twin: attention and MLP units in sequence, no additions to a stream."""
    return GPT(**{**kwargs, "shortcut": False})
