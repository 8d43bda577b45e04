"""Weight-only int8 quantization with one scale per output channel.

Every linear layer (attention projections, dense and shared MLPs, the LM head) and every
routed expert is stored as int8 plus a float scale per output row, a quarter of float32.
On CPU the product runs in PyTorch's int8-weight kernel with bfloat16 activations
(`_weight_int8pack_mm`), which reads the int8 bytes directly: for a matrix-vector product it
is many times faster than widening the weight first. Elsewhere the weight is widened.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .mla import MLA
from .moe import Experts


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row of the last-but-one dim: w ≈ q * scale[..., None]."""
    w = w.float()
    scale = w.abs().amax(dim=-1).clamp(min=1e-8) / 127.0
    q = torch.round(w / scale.unsqueeze(-1)).clamp(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    def __init__(self, q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("weight", q)                 # (out, in) int8
        self.register_buffer("scale", scale.to(dtype))    # (out,)

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> "Int8Linear":
        q, scale = quantize_rows(layer.weight.data)
        return cls(q, scale, layer.weight.dtype)

    @classmethod
    def stacked(cls, layers) -> "Int8Linear":
        """The layers' rows in one (model/mla.py `stack_rows`): with a scale per row, exact."""
        weights, scales = torch.cat([l.weight for l in layers]), torch.cat([l.scale for l in layers])
        return cls(weights, scales, scales.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.weight, self.scale)

    def dequantized(self) -> torch.Tensor:
        return self.weight.to(self.scale.dtype) * self.scale[:, None]


class Int8Experts(Experts):
    """Stacked experts in int8; an expert's weights are widened only when it is chosen."""

    def __init__(self, w13: torch.Tensor, s13: torch.Tensor, w2: torch.Tensor, s2: torch.Tensor, dtype) -> None:
        nn.Module.__init__(self)
        self.inter_dim = w13.shape[1] // 2
        self.register_buffer("w13", w13)                  # (E, 2I, D) int8
        self.register_buffer("s13", s13.to(dtype))        # (E, 2I)
        self.register_buffer("w2", w2)                    # (E, D, I) int8
        self.register_buffer("s2", s2.to(dtype))          # (E, D)
        self.batched_decode = False   # one expert at a time, through the int8 kernel

    @classmethod
    def from_experts(cls, experts: Experts) -> "Int8Experts":
        dtype = experts.w13.dtype
        w13, s13 = quantize_rows(experts.w13.data)
        w2, s2 = quantize_rows(experts.w2.data)
        return cls(w13, s13, w2, s2, dtype)

    def run(self, e: int, x: torch.Tensor) -> torch.Tensor:
        gate, up = int8_linear(x, self.w13[e], self.s13[e]).chunk(2, dim=-1)
        return int8_linear(F.silu(gate) * up, self.w2[e], self.s2[e])


def int8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (N, in) @ (q * scale[:, None]).T for int8 q (out, in)."""
    if x.device.type == "cpu" and x.dim() == 2 and q.shape[1] % 16 == 0:   # the kernel crashes on other widths
        y = torch._weight_int8pack_mm(x.to(torch.bfloat16).contiguous(), q, scale.to(torch.bfloat16))
        return y.to(x.dtype)
    return F.linear(x, q.to(x.dtype)) * scale


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear and Experts in `model` by its int8 form, in place."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, Int8Linear.from_linear(child))
            elif isinstance(child, Experts) and not isinstance(child, Int8Experts):
                setattr(module, child_name, Int8Experts.from_experts(child))
    for module in model.modules():  # absorbed-attention weights must be re-derived
        if isinstance(module, MLA):
            module.refresh_weights()
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights: parameters and int8 buffers (not derived tables such as rope's)."""
    seen, total = set(), 0
    for t in model.state_dict().values():
        if t.data_ptr() in seen or t.device.type == "meta":
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total
