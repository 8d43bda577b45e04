"""Multi-head Latent Attention (DeepSeek-V2), batch 1, over a per-layer latent cache.

Per token and layer the cache holds one row of `kv_lora_rank + qk_rope_head_dim` values:
the RMS-normed latent c_KV followed by k_pe after RoPE. Nothing per head is ever stored.

Two ways to attend over that cache, held equal by the tests:
- absorbed: W_UK is folded into the query and W_UV into the output, so attention runs in the
  latent space against the cache rows directly (cheap when few tokens are added: decode and
  keystroke-sized prefills);
- naive: decompress the whole cache to per-head K and V with kv_b_proj, then ordinary
  attention (cheaper for long prefills from scratch). It is also the reference.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelArgs
from .rope import RotaryTable, apply_rotary


class Span(NamedTuple):
    """Where a forward's T new tokens sit among the S rows: worked out once, read by every layer."""

    positions: torch.Tensor         # (T,) int64: S - T, …, S - 1
    cos: torch.Tensor               # (T, P/2) rope angles of those positions
    sin: torch.Tensor
    mask: torch.Tensor | None       # (T, S) added to scores: 0 up to each token, -inf after; None for one token

    @classmethod
    def at_end(cls, rope: RotaryTable, T: int, S: int, dtype: torch.dtype) -> "Span":
        device = rope.cos.device
        positions = torch.arange(S - T, S, device=device)
        cos, sin = rope.span(S - T, S)
        mask = None
        if T > 1:
            after = torch.arange(S, device=device)[None, :] > positions[:, None]
            mask = torch.zeros(T, S, dtype=dtype, device=device).masked_fill_(after, float("-inf"))
        return cls(positions, cos, sin, mask)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one fused kernel on the hot path
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)


def linear(n_in: int, n_out: int) -> nn.Linear:
    return nn.Linear(n_in, n_out, bias=False)


def stack_rows(*layers: nn.Module) -> nn.Module:
    """One linear layer whose output is the given layers' outputs side by side (their weight
    rows stacked): a single product where there were several on the same input. Float layers
    give an nn.Linear; int8 layers (model/quant.py) their own kind, exactly (scales are per row)."""
    linears = [layer for layer in layers if type(layer) is nn.Linear]
    if len(linears) == len(layers):
        weight = torch.cat([layer.weight.detach() for layer in linears])
        fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        fused.weight = nn.Parameter(weight, requires_grad=False)
        return fused
    stacked = getattr(type(layers[0]), "stacked", None)   # Int8Linear.stacked (model/quant.py)
    if stacked is None:
        raise TypeError(f"cannot stack {type(layers[0]).__name__} layers")
    return stacked(layers)


class MLA(nn.Module):
    def __init__(self, args: ModelArgs, layer: int) -> None:
        super().__init__()
        self.layer = layer          # which of the cache's layers holds this layer's rows
        self.n_heads = args.n_heads
        self.nope_dim, self.rope_dim, self.v_dim = args.qk_nope_head_dim, args.qk_rope_head_dim, args.v_head_dim
        self.rank = args.kv_lora_rank
        self.scale = args.softmax_scale
        self.interleaved = args.rope_interleave
        qk = args.qk_head_dim
        self.q_lora = bool(args.q_lora_rank)
        self.q_width = args.q_lora_rank or args.n_heads * qk   # what x's query product gives
        if args.q_lora_rank:
            self.q_a_proj = linear(args.dim, args.q_lora_rank)
            self.q_a_layernorm = RMSNorm(args.q_lora_rank, args.norm_eps)
            self.q_b_proj = linear(args.q_lora_rank, args.n_heads * qk)
        else:
            self.q_proj = linear(args.dim, args.n_heads * qk)
        self.kv_a_proj_with_mqa = linear(args.dim, args.kv_lora_rank + args.qk_rope_head_dim)
        self.kv_a_layernorm = RMSNorm(args.kv_lora_rank, args.norm_eps)
        self.kv_b_proj = linear(args.kv_lora_rank, args.n_heads * (args.qk_nope_head_dim + args.v_head_dim))
        self.o_proj = linear(args.n_heads * args.v_head_dim, args.dim)
        # after fuse(): the query's product (q_proj or q_a_proj) and kv_a_proj_with_mqa, both
        # of x, stacked into one; the two layers as loaded are then dropped
        self.q_kv_a_proj: nn.Module | None = None
        self._kv_b_float: torch.Tensor | None = None   # kv_b_proj's weight widened, when it is int8
        # when kv_b_proj is int4: W_UK transposed, (H * R, nope) in 4 bits of its own (model/int4.py
        # `quantize_q4`: packed, scales), and W_UV read in place from kv_b_proj's rows
        self._uk_t_q4: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- weights ----------------------------------------------------------------------------
    def absorbed_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK (H, nope, R) and W_UV (H, v, R): views of kv_b_proj's weight, taken anew each
        call (free; a compiled step then reads the weight itself), or of its float form made
        once when it is int8."""
        # int8 layers (model/quant.py Int8Linear) widen their weight; float ones have it as it is
        dequantized: Callable[[], torch.Tensor] | None = getattr(self.kv_b_proj, "dequantized", None)
        if dequantized is not None:
            if self._kv_b_float is None:
                self._kv_b_float = dequantized()
            w = self._kv_b_float
        else:
            w = self.kv_b_proj.weight
        w = w.view(self.n_heads, self.nope_dim + self.v_dim, self.rank)
        return w[:, : self.nope_dim], w[:, self.nope_dim :]

    def refresh_weights(self, uk_t_q4: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """kv_b_proj was replaced (loaded, quantized): derive the absorbed weights again. When
        it is int4, `uk_t_q4` is W_UK transposed quantized from the float weights as they loaded
        (`int4_query_weight`); without it, W_UK is taken from kv_b_proj's own 4 bits and rounded
        a second time along the other axis (a random benchmark model)."""
        self._kv_b_float = None
        self._uk_t_q4 = None
        from .int4 import Int4Linear

        if isinstance(self.kv_b_proj, Int4Linear) and self._int4_absorbable():
            if uk_t_q4 is None:
                uk_t_q4 = self.int4_query_weight(self.kv_b_proj.dequantized())
            self._uk_t_q4 = uk_t_q4

    def _int4_absorbable(self) -> bool:
        """Whether each head's W_UK and W_UV are whole tiles of 8 rows of kv_b_proj, and W_UK
        transposed has whole blocks of 32 inputs (model/int4.py)."""
        from .int4 import TILE, fits_int4

        return fits_int4(self.nope_dim) and self.v_dim % TILE == 0 and self.rank % TILE == 0

    def int4_query_weight(self, kv_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """W_UK transposed, (H * R, nope), in 4 bits, from kv_b_proj's float weight (H * (nope +
        v), R): the absorbed query's product on the int4 kernel (as llama.cpp keeps DeepSeek's
        k_b transposed and quantized on its own). None where its shape does not fit the kernel."""
        if not self._int4_absorbable():
            return None
        from .int4 import quantize_q4

        w_uk = kv_b.view(self.n_heads, self.nope_dim + self.v_dim, self.rank)[:, : self.nope_dim]
        return quantize_q4(w_uk.transpose(1, 2).reshape(self.n_heads * self.rank, self.nope_dim))

    def fuse(self) -> None:
        """Stack the two products of x into one (once, after loading; int8 layers too)."""
        if self.q_kv_a_proj is not None:
            return
        q_name = "q_a_proj" if self.q_lora else "q_proj"
        self.q_kv_a_proj = stack_rows(getattr(self, q_name), self.kv_a_proj_with_mqa)
        delattr(self, q_name)
        del self.kv_a_proj_with_mqa

    # -- forward ----------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,            # (T, dim) hidden states of the new tokens
        cache: torch.Tensor,        # (L, S, R + P) every layer's latent rows up to the last new token
        span: Span,
        absorbed: bool,
    ) -> torch.Tensor:
        T = x.shape[0]
        q, kv = self._project(x)                                          # (T, H*(nope + P)), (T, R + P)
        if T == 1 and absorbed:
            out = self._decode_int4(q, kv, cache, span)
            if out is not None:
                return self.o_proj(out)
        q = q.view(T, self.n_heads, -1).transpose(0, 1)                   # (H, T, nope + P)
        q_nope, q_pe = q.split([self.nope_dim, self.rope_dim], dim=-1)
        q_pe = apply_rotary(q_pe, span.cos, span.sin, self.interleaved)

        c, k_pe = kv.split([self.rank, self.rope_dim], dim=-1)
        new = torch.cat((self.kv_a_layernorm(c), apply_rotary(k_pe, span.cos, span.sin, self.interleaved)), dim=-1)
        # written into the cache tensor itself (not a view of one layer): a compiled step then
        # updates it in place instead of copying it
        cache.index_put_((span.positions.new_full((1,), self.layer), span.positions), new)

        rows = cache[self.layer]                                          # (S, R + P)
        if absorbed:
            out = self._attend_absorbed(q_nope, q_pe, rows, span.mask)
        else:
            out = self._attend_naive(q_nope, q_pe, rows, span.mask)
        return self.o_proj(out)                                           # (T, dim)

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (T, dim) -> the query (T, H*(nope + P)) and kv_a's output (T, R + P)."""
        if self.q_kv_a_proj is not None:
            q, kv = self.q_kv_a_proj(x).split([self.q_width, self.rank + self.rope_dim], dim=-1)
        else:
            q, kv = getattr(self, "q_a_proj" if self.q_lora else "q_proj")(x), self.kv_a_proj_with_mqa(x)
        if self.q_lora:
            q = self.q_b_proj(self.q_a_layernorm(q))
        return q, kv

    def _decode_int4(self, q: torch.Tensor, kv: torch.Tensor, cache: torch.Tensor, span: Span) -> torch.Tensor | None:
        """One new token with int4 absorbed weights (decode): the cache row, the attention and
        W_UK / W_UV in one kernel call (model/int4.py `q4_mla_decode`), where PyTorch runs some
        twenty operations a layer. None where it does not apply: other weights or dtypes, a
        compiled step, no kernel."""
        uk = self._uk_t_q4
        if (uk is None or torch.compiler.is_compiling() or cache.dtype != torch.float32 or q.dtype != torch.float32
                or cache.stride(-1) != 1):
            return None
        from .int4 import TILE, Int4Linear, q4_mla_decode

        kv_b = self.kv_b_proj
        assert isinstance(kv_b, Int4Linear), "refresh_weights sets _uk_t_q4 for an int4 kv_b_proj only"
        rows = cache[self.layer]                                          # (S, R + P): the new row is the last
        return q4_mla_decode(q.contiguous(), kv.contiguous(), self.kv_a_layernorm.weight.detach(),
                             self.kv_a_layernorm.eps, span.cos[0], span.sin[0], self.interleaved, rows, uk,
                             (kv_b.weight, kv_b.scale), self.nope_dim // TILE, (self.nope_dim + self.v_dim) // TILE,
                             (self.n_heads, self.nope_dim, self.rope_dim, self.rank, self.v_dim), self.scale)

    def _attend_absorbed(self, q_nope, q_pe, rows, mask) -> torch.Tensor:
        """Few new tokens (decode, short prefills): scores (H, T, S) are small, and two plain
        products beat SDPA here (measured: 341 against 287 decode tokens/s, bundled model)."""
        H, T, _ = q_nope.shape
        q_lat = self._absorb_query(q_nope)                                # (H, T, R)
        q_full = torch.cat((q_lat, q_pe), dim=-1).view(H * T, -1)         # (H*T, R + P)
        scores = (q_full @ rows.T).view(H, T, -1) * self.scale            # (H, T, S)
        if mask is not None:
            scores = scores + mask
        probs = scores.softmax(dim=-1, dtype=torch.float32).to(rows.dtype)
        o_lat = (probs.view(H * T, -1) @ rows[:, : self.rank]).view(H, T, self.rank)  # (H, T, R)
        out = self._absorb_output(o_lat)                                  # (H, T, v)
        return out.transpose(0, 1).reshape(T, H * self.v_dim)

    def _absorb_query(self, q_nope: torch.Tensor) -> torch.Tensor:
        """(H, T, nope) -> (H, T, R): each head's query through its W_UK (int4: all heads in one
        kernel call)."""
        if self._uk_t_q4 is None:
            return torch.bmm(q_nope, self.absorbed_weights()[0])
        from .int4 import TILE, q4_heads

        return q4_heads(q_nope, *self._uk_t_q4, 0, self.rank // TILE, self.rank).to(q_nope.dtype)

    def _absorb_output(self, o_lat: torch.Tensor) -> torch.Tensor:
        """(H, T, R) -> (H, T, v): each head's latent output through its W_UV."""
        if self._uk_t_q4 is None:
            return torch.bmm(o_lat, self.absorbed_weights()[1].transpose(1, 2))
        from .int4 import TILE, Int4Linear, q4_heads

        # W_UV: rows nope .. nope + v of each head's nope + v rows of kv_b_proj
        kv_b, head_tiles = self.kv_b_proj, (self.nope_dim + self.v_dim) // TILE
        assert isinstance(kv_b, Int4Linear), "refresh_weights sets _uk_t_q4 for an int4 kv_b_proj only"
        return q4_heads(o_lat, kv_b.weight, kv_b.scale, self.nope_dim // TILE, head_tiles, self.v_dim).to(o_lat.dtype)

    def _attend_naive(self, q_nope, q_pe, rows, mask) -> torch.Tensor:
        H, T, _ = q_nope.shape
        S = rows.shape[0]
        kv = self.kv_b_proj(rows[:, : self.rank]).view(S, H, -1).transpose(0, 1)  # (H, S, nope + v)
        k_nope, v = kv.split([self.nope_dim, self.v_dim], dim=-1)
        k_pe = rows[:, self.rank :].unsqueeze(0).expand(H, S, self.rope_dim)
        k = torch.cat((k_nope, k_pe), dim=-1)                             # (H, S, nope + P)
        q = torch.cat((q_nope, q_pe), dim=-1)                             # (H, T, nope + P)
        # 4-D (B, H, T, D) with a causal flag or an additive float mask: PyTorch's fused CPU
        # kernel takes these; 3-D tensors or a boolean mask fall back to the unfused math path.
        masking: dict[str, Any] = {"is_causal": True} if T == S else {"attn_mask": mask}   # none for one token
        out = F.scaled_dot_product_attention(q[None], k[None], v[None], scale=self.scale,
                                             **masking)                   # (1, H, T, v)
        return out[0].transpose(0, 1).reshape(T, H * self.v_dim)
