"""Rotary position embedding for the rope part of MLA (qk_rope_head_dim), with YaRN.

DeepSeek checkpoints lay the rope dimensions out in interleaved pairs (x0, x1), (x2, x3), …,
each pair rotated by one frequency. We rotate them in place, keeping that layout, so a cached
k_pe can later be re-rotated by a position delta (shift reuse) with the same function.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelArgs


def inv_frequencies(args: ModelArgs) -> torch.Tensor:
    """(D/2,) inverse frequencies, YaRN-blended when the config asks for it."""
    d, base = args.qk_rope_head_dim, args.rope_theta
    extra = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    if args.rope_type != "yarn":
        return extra
    inter = extra / args.rope_factor
    low, high = _correction_range(args.beta_fast, args.beta_slow, d, base, args.original_max_position_embeddings)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep_extra = 1.0 - ramp
    return inter * (1.0 - keep_extra) + extra * keep_extra


def _correction_range(beta_fast: float, beta_slow: float, dim: int, base: float, orig: int) -> tuple[float, float]:
    def dim_for(rotations: float) -> float:
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = math.floor(dim_for(beta_fast))
    high = math.ceil(dim_for(beta_slow))
    return max(low, 0), min(high, dim - 1)


class RotaryTable(nn.Module):
    """cos / sin for every position up to `length`, computed once (buffers, not weights: a
    compiled step reads them by name, like the weights)."""

    inv_freq: torch.Tensor      # (D/2,)
    cos: torch.Tensor           # (length, D/2), times the attention factor
    sin: torch.Tensor

    def __init__(self, args: ModelArgs, length: int, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.register_buffer("inv_freq", inv_frequencies(args).to(device), persistent=False)
        self.factor = args.rope_attention_factor
        self._build(length)

    def _build(self, length: int) -> None:
        pos = torch.arange(length, dtype=torch.float32, device=self.inv_freq.device)
        angles = torch.outer(pos, self.inv_freq)                  # (T, D/2)
        self.register_buffer("cos", angles.cos() * self.factor, persistent=False)
        self.register_buffer("sin", angles.sin() * self.factor, persistent=False)
        self.length = length

    def span(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        if end > self.length:
            self._build(max(end, 2 * self.length))
        return self.cos[start:end], self.sin[start:end]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = True) -> torch.Tensor:
    """Rotate the last dim of x (..., T, D) by per-position angles cos/sin (T, D/2).

    interleaved: pairs are (x[2i], x[2i+1]) — the DeepSeek checkpoint layout; otherwise the
    halves (x[i], x[i + D/2]) as in Llama's rotate_half.
    """
    dtype = x.dtype
    x = x.float()
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    else:
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(dtype)


def rotate_by(x: torch.Tensor, delta: int, args: ModelArgs, start: int | None = None) -> torch.Tensor:
    """Re-rotate already-roped vectors (..., T, D) by `delta` positions (shift reuse of k_pe).

    The attention factor is already in x, so this rotation is pure (no factor applied).
    start: the position of x's first row. Given, each row turns by the difference of the
    float32 angles the rotary table uses at p + delta and at p, so a row computed at p comes
    out as the table would have made it at p + delta (to float32 rounding of x, even where
    the table's large angles are themselves rounded). Without it, every row turns by delta.
    """
    inv_freq = inv_frequencies(args).to(x.device)
    if start is None:
        angle = (delta * inv_freq.double()).float()                       # (D/2,)
    else:
        pos = torch.arange(start, start + x.shape[-2], dtype=torch.float32, device=x.device)
        before = torch.outer(pos, inv_freq)                               # (T, D/2), as RotaryTable
        after = torch.outer(pos + delta, inv_freq)
        angle = after.double() - before.double()
    cos, sin = angle.cos().float(), angle.sin().float()
    return apply_rotary(x, cos, sin, args.rope_interleave)


def shift_rows(rows: torch.Tensor, delta: int, args: ModelArgs, start: int) -> torch.Tensor:
    """A copy of cached latent rows (L, T, R + P) taken at positions [start, start + T), moved
    by `delta` positions: c_KV (position-free) kept, k_pe re-rotated."""
    out = rows.clone()
    if delta:
        rank = args.kv_lora_rank
        out[..., rank:] = rotate_by(rows[..., rank:], delta, args, start)   # (L, T, P)
    return out
