"""The DeepSeek-V2/V3 decoder: embeddings, MLA + (dense | MoE) blocks, final norm, LM head.

Batch 1, written for serving one editor at a time. `forward` adds T new tokens at the end of
`cache` (L, S, R + P) — a view of the latent buffer up to the last new token, so they take
positions [S - T, S) over the rows before them — writes their rows in place and returns logits
for the positions asked for. The positions follow from the shapes, so a compiled one-token step
(model/engine/step.py) runs at any length without recompiling.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import ModelArgs
from .mla import MLA, RMSNorm, Span, linear
from .moe import MLP, MoE
from .rope import RotaryTable


class Block(nn.Module):
    def __init__(self, args: ModelArgs, layer: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(args.dim, args.norm_eps)
        self.attn = MLA(args, layer)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn = MoE(args) if args.is_moe_layer(layer) else MLP(args.dim, args.inter_dim)

    def forward(self, x, cache, span, absorbed) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cache, span, absorbed)
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

    def pack(self) -> None:
        """Once, after loading: stack the products that share an input into one each
        (attention's query and kv_a, gate and up of every MLP) — fewer, larger operations per
        token; with 4-bit experts, the shared experts among them, MoE.fold_shared — and, on
        CPU, store float linear weights column-major: F.linear then reads
        W.T as a contiguous (in, out) matrix, the layout MKL's matrix-vector product reads
        fastest here (the bundled model's head: ~3× faster; 1.2-2.4× for larger ones)."""
        self.requires_grad_(False)
        for module in list(self.modules()):
            if isinstance(module, (MLA, MLP)):
                module.fuse()
        for module in list(self.modules()):
            if isinstance(module, MoE):
                module.fold_shared()
        if self.embed.weight.device.type != "cpu":
            return
        for module in self.modules():
            if type(module) is nn.Linear and module.weight is not self.embed.weight:   # tied: keep
                module.weight = nn.Parameter(module.weight.detach().t().contiguous().t(), requires_grad=False)

    @torch.inference_mode()
    def forward(
        self,
        tokens: torch.Tensor,       # (T,) int64
        cache: torch.Tensor,        # (L, S, R + P): the buffer up to the last new token
        absorbed: bool,
        all_logits: bool = False,   # False: only the last position's logits
    ) -> torch.Tensor:
        if self.rope is None:
            raise RuntimeError("init_rope() must run before the model's forward")
        span = Span.at_end(self.rope, tokens.shape[0], cache.shape[1], cache.dtype)
        x = self.embed(tokens)                                            # (T, D)
        for layer in self.layers:
            x = layer(x, cache, span, absorbed)
        if not all_logits:
            x = x[-1:]
        return self.head(self.norm(x)).float()                            # (T or 1, V)

    def parameter_count(self) -> int:
        """Weights as trained: a quantized layer (model/quant.py, model/int4.py) counts the
        weights it stands for."""
        from .int4 import Int4Experts, Int4Linear
        from .quant import Int8Experts, Int8Linear

        kinds = (Int8Linear, Int8Experts, Int4Linear, Int4Experts)
        quantized = sum(m.values() for m in self.modules() if isinstance(m, kinds))
        return sum(p.numel() for p in self.parameters()) + quantized
