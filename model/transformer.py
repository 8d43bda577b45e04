"""The DeepSeek-V2/V3 decoder: embeddings, MLA + (dense | MoE) blocks, final norm, LM head.

Batch 1, written for serving one editor at a time. `forward` adds T new tokens at positions
[start, start + T) on top of the latent rows already in `cache` (L, S_max, R + P), writes
their rows in place and returns logits for the positions asked for.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import ModelArgs
from .mla import MLA, RMSNorm, linear
from .moe import MLP, MoE
from .rope import RotaryTable


class Block(nn.Module):
    def __init__(self, args: ModelArgs, layer: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(args.dim, args.norm_eps)
        self.attn = MLA(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn = MoE(args) if args.is_moe_layer(layer) else MLP(args.dim, args.inter_dim)

    def forward(self, x, cache, start, cos, sin, absorbed) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cache, start, cos, sin, absorbed)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.embed = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.head = linear(args.dim, args.vocab_size)
        self.rope: RotaryTable | None = None  # built after load, on the model's device

    def init_rope(self, length: int) -> None:
        self.rope = RotaryTable(self.args, length, self.embed.weight.device)

    def new_cache(self, length: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Latent rows for `length` tokens, all layers: (L, S, R + P), allocated once."""
        w = self.embed.weight
        return torch.zeros(self.args.n_layers, length, self.args.latent_dim, dtype=dtype or w.dtype, device=w.device)

    @torch.inference_mode()
    def forward(
        self,
        tokens: torch.Tensor,       # (T,) int64
        cache: torch.Tensor,        # (L, S_max, R + P)
        start: int,
        absorbed: bool,
        all_logits: bool = False,   # False: only the last position's logits
    ) -> torch.Tensor:
        T = tokens.shape[0]
        cos, sin = self.rope.span(start, start + T)
        x = self.embed(tokens)                                            # (T, D)
        for i, layer in enumerate(self.layers):
            x = layer(x, cache[i], start, cos, sin, absorbed)
        if not all_logits:
            x = x[-1:]
        return self.head(self.norm(x)).float()                            # (T or 1, V)

    def parameter_count(self) -> int:
        """Weights as trained: an int8-quantized weight (a buffer) counts one per value."""
        quantized = sum(b.numel() for b in self.buffers() if b.dtype == torch.int8)
        return sum(p.numel() for p in self.parameters()) + quantized
