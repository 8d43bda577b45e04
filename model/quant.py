"""Weight-only int8 quantization with one scale per output channel.

Every linear layer (attention projections, dense and shared MLPs, the LM head) and every
routed expert is stored as int8 plus a float scale per output row, a quarter of float32.
On CPU an engine moves the weights into fbgemm's packed layout (`pack_for_cpu`, once loaded):
its int8 GEMM quantizes the activations per call, as llama.cpp's Q8_0 does, and reads the
weights at the memory's speed — measured on a Lite-shaped slice, 3-4x the prefill and 2x the
decode of PyTorch's int8-weight kernel with bfloat16 activations (`_weight_int8pack_mm`), which
remains the path where fbgemm is missing, and where the weight is widened elsewhere. The price
is a little accuracy: on the bundled model the logits move 1.9 % from float32, and greedy picks
agree on 96 % of positions.

CPUs without AVX-512 VNNI multiply int8 with AVX2's `vpmaddubsw`, whose 16-bit pair sums would
saturate for 8-bit activations against 8-bit weights, so fbgemm then takes 7-bit activations
(`reduce_range`), which moved the logits 2.9 %. There each activation row goes in as two rows,
its positive and its negative part, each 7 bits of magnitude on [0, peak]: a sign and 7 bits,
the resolution of VNNI's 8 bits (the trick llama.cpp's AVX2 kernels play with `vpsignb`), and
no pair sum can saturate, so the products are exact and equal on every CPU. The weights are
still read once: decode costs 1.0-1.35x and prefill 1.8-2.3x (docs/benchmarks.md).
"""
from __future__ import annotations

import logging
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .mla import MLA
from .moe import Experts
from .torch_private import (
    fbgemm_available,
    fbgemm_linear,
    fbgemm_prepack,
    fbgemm_unpack,
    is_vnni_supported,
    weight_int8pack_mm,
)

log = logging.getLogger(__name__)


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row of the last-but-one dim: w ≈ q * scale[..., None]."""
    w = w.float()
    scale = w.abs().amax(dim=-1).clamp(min=1e-8) / 127.0
    q = torch.round(w / scale.unsqueeze(-1)).clamp(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    weight: torch.Tensor
    scale: torch.Tensor

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

    # fbgemm's form of the weight once `pack_for_cpu` ran (the buffer then holds no data)
    packed: torch.ScriptObject | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return dynamic_linear(x, self.packed)
        return int8_linear(x, self.weight, self.scale)

    def dequantized(self) -> torch.Tensor:
        q = self.weight if self.packed is None else fbgemm_unpack(self.packed)
        return q.to(self.scale.dtype) * self.scale[:, None]

    def values(self) -> int:
        """The weights it stands for (for parameter counts)."""
        return self.weight.numel()


class Int8Experts(Experts):
    """Stacked experts in int8; an expert's weights are widened only when it is chosen."""

    s13: torch.Tensor
    s2: torch.Tensor

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

    # per expert, fbgemm's forms of (w13, w2) once `pack_for_cpu` ran
    packed: list[tuple[torch.ScriptObject, torch.ScriptObject]] | None = None

    def run(self, e: int, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            p13, p2 = self.packed[e]
            gate, up = dynamic_linear(x, p13).chunk(2, dim=-1)
            return dynamic_linear(F.silu(gate) * up, p2)
        gate, up = int8_linear(x, self.w13[e], self.s13[e]).chunk(2, dim=-1)
        return int8_linear(F.silu(gate) * up, self.w2[e], self.s2[e])

    def values(self) -> int:
        return self.w13.numel() + self.w2.numel()


def int8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (N, in) @ (q * scale[:, None]).T for int8 q (out, in)."""
    if x.device.type == "cpu" and x.dim() == 2 and q.shape[1] % 16 == 0:   # the kernel crashes on other widths
        y = weight_int8pack_mm(x.to(torch.bfloat16).contiguous(), q, scale.to(torch.bfloat16))
        return y.to(x.dtype)
    return F.linear(x, q.to(x.dtype)) * scale


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear and Experts in `model` by its int8 form, in place."""
    for module in list(model.modules()):
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


# ---------------------------------------------------------------------------------------------
# CPU: fbgemm's int8 GEMM, the activations quantized per call

SIGN_SPLIT = not is_vnni_supported()   # without VNNI: rows split by sign, each on fbgemm's 7-bit range


def dynamic_linear(x: torch.Tensor, packed) -> torch.Tensor:
    """x (..., in) through a packed int8 weight, in x's dtype. fbgemm quantizes the activations
    with one scale for the whole matrix; each row is brought to the same range first (and its
    result scaled back), which makes that one scale per row, as llama.cpp's is per block.
    Without VNNI the rows go in split by sign (see the module's docstring)."""
    shape = x.shape
    rows = x.reshape(-1, shape[-1]).float()
    peak = rows.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12)
    rows = rows / peak                                        # (n, in) in [-1, 1]
    if SIGN_SPLIT:
        n = rows.shape[0]
        halves = torch.cat([rows.clamp(min=0), rows.neg().clamp(min=0)])   # (2n, in) in [0, 1]
        y = fbgemm_linear(halves, packed, reduce_range=True)      # 7 bits each, exact
        y = y[:n] - y[n:]
    else:
        y = fbgemm_linear(rows.contiguous(), packed, reduce_range=False)
    y = y * peak
    return y.reshape(*shape[:-1], y.shape[-1]).to(x.dtype)


def _hollow(t: torch.Tensor) -> torch.Tensor:
    """A tensor of t's shape and dtype that holds one element (the weight now lives packed), so
    shapes, parameter counts and byte counts read as before."""
    return torch.zeros(1, dtype=t.dtype).expand(t.shape)


def pack_for_cpu(model: nn.Module) -> int:
    """Move every int8 weight on the CPU into fbgemm's layout; the int8 buffers keep their
    shapes but no data, so memory does not double. Run it once the model is complete (after
    `Transformer.pack` stacks layers, which reads the int8 rows). How many matrices it packed."""
    if not fbgemm_available():
        return 0
    count = 0
    try:
        with warnings.catch_warnings():   # quantized tensors are deprecated: if they go, this falls back
            warnings.simplefilter("ignore", UserWarning)
            for module in model.modules():
                count += _pack(module)
    except (RuntimeError, AttributeError, TypeError) as e:
        log.warning("fbgemm's int8 GEMM is not available (%s); int8 runs through PyTorch's int8-weight kernel.",
                    str(e).splitlines()[0][:120] if str(e) else type(e).__name__)
    return count


def _pack(module: nn.Module) -> int:
    """Pack one module's int8 weights (if it has any on the CPU); how many matrices."""
    if isinstance(module, Int8Linear) and module.packed is None and module.weight.device.type == "cpu":
        module.packed = fbgemm_prepack(module.weight, module.scale.float())
        module.weight = _hollow(module.weight)
        return 1
    if isinstance(module, Int8Experts) and module.packed is None and module.w13.device.type == "cpu":
        module.packed = [(fbgemm_prepack(module.w13[e], module.s13[e].float()),
                          fbgemm_prepack(module.w2[e], module.s2[e].float())) for e in range(module.w13.shape[0])]
        module.w13, module.w2 = _hollow(module.w13), _hollow(module.w2)
        return 2 * len(module.packed)
    return 0
