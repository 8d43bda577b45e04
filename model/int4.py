"""Weight-only 4-bit quantization: blocks of 32 inputs with one float16 scale each.

Each weight is a nibble, value + 8, and w = scale * (nibble - 8): the rounding of llama.cpp's
Q4_0 — the block's weight of largest magnitude becomes -8 exactly, sign kept, and nibbles are
rounded with the float32 scale that is then kept as float16 (`quantize_q4`). A weight costs 4.5
bits: Lite in about 9 GB. The bytes are laid out for the kernel, not as Q4_0's: output rows in
tiles of 8 (padded with zero rows), a tile's block 128 bytes that one instruction multiplies 8
rows at a time with (model/int4_kernel.c describes it).

The products run in `model/int4_kernel.c`, built the first time it is needed with the system's C
compiler into ~/.cache/latent/kernels/ (a second; no PyTorch headers) and called through ctypes,
which lets other threads run meanwhile. Activations are quantized per call to 8-bit blocks of 32
(Q8_0), and each block's product is an exact integer: vpdpbusd on AVX-512 VNNI, vpmaddubsw on
AVX2, plain C elsewhere — the same integers on every CPU. Without a compiler the weights are
dequantized for each product, correct and slow, and the log says so once.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .moe import Experts

log = logging.getLogger(__name__)

GROUP = 32                        # inputs per block (Q4_0's)
TILE = 8                          # output rows the kernel multiplies at once
SOURCE = Path(__file__).with_name("int4_kernel.c")
PATHS = {"plain": 0, "avx2": 1, "vnni": 2}


def q4_shapes(out_features: int, in_features: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The shapes `quantize_q4` stores an (out, in) weight in: packed nibbles and block scales."""
    tiles, blocks = -(-out_features // TILE), in_features // GROUP
    return (tiles, blocks, TILE * GROUP // 2), (tiles, blocks, TILE)


def quantize_q4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed, scales) of a (..., N, K) weight, K a multiple of 32: packed uint8
    (..., ceil(N/8), K/32, 128) and scales float16 (..., ceil(N/8), K/32, 8)."""
    *lead, N, K = w.shape
    if K % GROUP:
        raise ValueError(f"int4 needs the input size to be a multiple of {GROUP}, not {K}.")
    w = w.float()
    if N % TILE:
        w = torch.nn.functional.pad(w, (0, 0, 0, TILE - N % TILE))
    tiles, blocks = w.shape[-2] // TILE, K // GROUP
    w = w.reshape(*lead, tiles, TILE, blocks, GROUP)
    peak = w.gather(-1, w.abs().argmax(dim=-1, keepdim=True))       # signed, largest magnitude
    scale = peak / -8.0
    inverse = torch.where(scale != 0, 1.0 / scale, torch.zeros_like(scale))
    q = torch.clamp(torch.floor(w * inverse + 8.5), 0, 15).to(torch.uint8)   # Q4_0's rounding
    q = q.transpose(-3, -2).reshape(*lead, tiles, blocks, TILE, 4, 2, 4)      # (row, chunk, half, j)
    packed = (q[..., 0, :] | (q[..., 1, :] << 4)).transpose(-3, -2)          # (chunk, row, j)
    scales = scale.squeeze(-1).transpose(-2, -1)                             # (tiles, blocks, row)
    return (packed.reshape(*lead, tiles, blocks, TILE * GROUP // 2).contiguous(),
            scales.to(torch.float16).contiguous())


def dequantize_q4(packed: torch.Tensor, scales: torch.Tensor, out_features: int) -> torch.Tensor:
    """The float32 weight (..., out_features, K) that (packed, scales) stand for."""
    *lead, tiles, blocks, _ = packed.shape
    chunks = packed.reshape(*lead, tiles, blocks, 4, TILE, 1, 4).transpose(-4, -3)   # (row, chunk, 1, j)
    q = torch.cat([chunks & 15, chunks >> 4], dim=-2).float() - 8.0               # (row, chunk, half, j)
    q = q.reshape(*lead, tiles, blocks, TILE, GROUP) * scales.float().unsqueeze(-1)
    w = q.transpose(-3, -2).reshape(*lead, tiles * TILE, blocks * GROUP)
    return w[..., :out_features, :]


def q4_matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, out_features: int,
              path: str | None = None) -> torch.Tensor:
    """x (..., K) float @ the (out_features, K) weight's transpose -> (..., out_features) float32,
    on as many threads as PyTorch uses. `path` forces a kernel ("plain", "avx2", "vnni"; a
    test's business)."""
    lib = kernel()
    *lead, K = x.shape
    N = out_features
    rows = x.reshape(-1, K).float().contiguous()
    if lib is None:
        return (rows @ dequantize_q4(packed, scales, N).t()).reshape(*lead, N)
    M = rows.shape[0]
    y = torch.empty(M, N, dtype=torch.float32)
    work = torch.empty(M * K + 8 * M * (K // GROUP) + 4, dtype=torch.uint8)
    status = lib.q4_matmul(rows.data_ptr(), M, K, packed.data_ptr(), scales.data_ptr(), N, y.data_ptr(),
                           work.data_ptr(), torch.get_num_threads(), -1 if path is None else PATHS[path])
    if status != 0:
        raise ValueError(f"int4 needs the input size to be a multiple of {GROUP}, not {K}.")
    return y.reshape(*lead, N)


def q4_heads(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, first_tile: int, head_tiles: int,
             out_features: int, path: str | None = None) -> torch.Tensor:
    """Each head's own rows of a stacked weight: x (H, M, K) -> (H, M, out_features) float32,
    head h through the out_features rows that start at tile first_tile + h * head_tiles of
    (packed, scales) — multi-head latent attention's absorbed W_UK and W_UV, one call a layer."""
    H, M, K = x.shape
    rows = x.float().contiguous()
    lib = kernel()
    if lib is None:
        tiles = out_features // TILE
        picked = torch.stack([torch.arange(first_tile + h * head_tiles, first_tile + h * head_tiles + tiles)
                              for h in range(H)])                                    # (H, tiles)
        w = dequantize_q4(packed[picked], scales[picked], out_features)            # (H, N, K)
        return torch.bmm(rows, w.transpose(1, 2))
    y = torch.empty(H, M, out_features, dtype=torch.float32)
    status = lib.q4_heads(rows.data_ptr(), H, M, K, packed.data_ptr(), scales.data_ptr(), first_tile, head_tiles,
                          out_features, y.data_ptr(), torch.get_num_threads(), -1 if path is None else PATHS[path])
    if status == -2:
        raise MemoryError("The int4 attention kernel could not allocate its working memory.")
    if status != 0:
        raise ValueError(f"int4 per-head products need {GROUP} | inputs and {TILE} | rows, not {K} and {out_features}.")
    return y


def q4_mla_decode(q: torch.Tensor, kv: torch.Tensor, norm: torch.Tensor, eps: float, cos: torch.Tensor,
                  sin: torch.Tensor, interleaved: bool, rows: torch.Tensor, uk: tuple[torch.Tensor, torch.Tensor],
                  uv: tuple[torch.Tensor, torch.Tensor], uv_first_tile: int, uv_head_tiles: int, dims: tuple[int, ...],
                  scale: float, path: str | None = None) -> torch.Tensor | None:
    """One decode token's absorbed multi-head latent attention for one layer in one kernel call
    (model/int4_kernel.c `q4_mla_decode` says what it computes): writes the token's cache row at
    rows[-1] and returns the heads' outputs (1, H * V) float32, what o_proj takes. q (H, nope + P)
    and kv (R + P) float32, rows (S, ≥ R + P) float32 with contiguous rows; dims (H, nope, P, R,
    V). None without the kernel (the caller runs the PyTorch operations)."""
    lib = kernel()
    if lib is None:
        return None
    H, nope, P, R, V = dims
    out = torch.empty(1, H * V, dtype=torch.float32)
    status = lib.q4_mla_decode(q.data_ptr(), kv.data_ptr(), norm.data_ptr(), eps, cos.data_ptr(), sin.data_ptr(),
                               int(interleaved), rows.data_ptr(), rows.shape[0], rows.stride(0), uk[0].data_ptr(),
                               uk[1].data_ptr(), uv[0].data_ptr(), uv[1].data_ptr(), uv_first_tile, uv_head_tiles,
                               H, nope, P, R, V, scale, out.data_ptr(), torch.get_num_threads(),
                               -1 if path is None else PATHS[path])
    if status == -2:
        raise MemoryError("The int4 attention kernel could not allocate its working memory.")
    if status != 0:
        raise ValueError(f"the fused int4 attention needs {GROUP} | nope and rank, {TILE} | v, not {dims}.")
    return out


def best_path() -> str:
    """The kernel this CPU runs ("plain" without a built library)."""
    lib = kernel()
    return {v: k for k, v in PATHS.items()}[lib.q4_best_path()] if lib is not None else "plain"


# ---------------------------------------------------------------------------------------------
# The library

_lock = threading.Lock()
_loaded: list = []   # [library or None], once tried


def kernel():
    """The built library (ctypes), or None where it cannot be built."""
    if _loaded:
        return _loaded[0]
    with _lock:
        if not _loaded:
            _loaded.append(_load())
            if _loaded[0] is not None:
                _tune(_loaded[0])      # its products call kernel(), which now answers
        return _loaded[0]


def _load():
    try:
        path = _build()
    except (OSError, subprocess.SubprocessError, RuntimeError) as e:
        log.warning("The int4 kernel could not be built (%s): int4 weights are widened for each product, "
                    "which is slow.", str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
        return None
    lib = ctypes.CDLL(str(path))
    lib.q4_matmul.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                              ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.q4_matmul.restype = ctypes.c_int
    lib.q4_moe.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                           ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                           ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.q4_moe.restype = ctypes.c_int
    lib.q4_moe_routed.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                  ctypes.c_int, ctypes.c_float, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                  ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int,
                                  ctypes.c_int]
    lib.q4_moe_routed.restype = ctypes.c_int
    lib.q4_heads.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                             ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                             ctypes.c_int, ctypes.c_int]
    lib.q4_heads.restype = ctypes.c_int
    lib.q4_mla_decode.argtypes = ([ctypes.c_void_p] * 3 + [ctypes.c_float] + [ctypes.c_void_p] * 2 + [ctypes.c_int]
                                  + [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 4
                                  + [ctypes.c_int64] * 7 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_int])
    lib.q4_mla_decode.restype = ctypes.c_int
    lib.q4_best_path.restype = ctypes.c_int
    lib.q4_tune.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.q4_tune.restype = None
    return lib


TUNING: dict = {}    # what tune() chose and measured (benchmarks report it)
_seconds: dict = {}  # (path, prefetch) -> the best time each choice took, over every tune()


def _tune(lib) -> None:
    """Choose by measurement which vector path one-row products (decode's, read from memory) run
    on and whether they prefetch — several rows (prefill) are bound by the arithmetic and keep
    the best path the CPU has. On one machine asking for blocks ahead made reads from memory
    faster, on another it does not matter, and AVX-512 VNNI can read slower than AVX2 (an AMD
    EPYC, two threads: 25 against 32 GB/s); the same integers and floats either way (the paths
    sum alike). A product over a weight four times the last-level cache (at least 128 MB), each
    choice in turn, 3 rounds: ~0.1 s. Each choice keeps its best time over every call — the
    kernel's load and the engine's warm-up (`tune`) — since a moment of busy memory (a model's
    gigabytes just written) slows them all and blurs the difference."""
    best = lib.q4_best_path()
    if best == 0:
        return
    cache = os.sysconf("SC_LEVEL3_CACHE_SIZE") if "SC_LEVEL3_CACHE_SIZE" in os.sysconf_names else 0
    K = 2048
    N = max(128 << 20, 4 * max(cache, 0)) // (K // 2 + K // 16) // TILE * TILE
    packed_shape, scales_shape = q4_shapes(N, K)
    packed = torch.full(packed_shape, 0x5A, dtype=torch.uint8)
    scales = torch.full(scales_shape, 0.01, dtype=torch.float16)
    x = torch.ones(1, K)
    choices = [(path, prefetch) for path in range(1, best + 1) for prefetch in (1, 0)]
    for _ in range(3):
        for choice in choices:
            lib.q4_tune(*choice)
            start = time.perf_counter()
            q4_matmul(x, packed, scales, N)
            _seconds[choice] = min(_seconds.get(choice, float("inf")), time.perf_counter() - start)
    path, prefetch = min(choices, key=_seconds.__getitem__)
    lib.q4_tune(path, prefetch)
    weight_bytes = packed.numel() + 2 * scales.numel()
    names = {v: k for k, v in PATHS.items()}
    TUNING.update(path=names[path], prefetch=bool(prefetch), threads=torch.get_num_threads(),
                  gbps={f"{names[p]}{'' if f else ' no prefetch'}": round(weight_bytes / t / 1e9, 1)
                        for (p, f), t in _seconds.items()})
    log.info("int4 kernel: the %s path, %s (read GB/s: %s)", names[path],
             "prefetching" if prefetch else "no prefetching", TUNING["gbps"])


def tune() -> None:
    """Measure the kernel's choices again (an engine calls it when its warm-up is done)."""
    lib = kernel()
    if lib is not None:
        with _lock:
            _tune(lib)


def _build() -> Path:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc) on the PATH")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + f"{version}|{platform.machine()}".encode()).hexdigest()[:24]
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "latent" / "kernels"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"q4-{key}.so"
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        built = Path(scratch) / target.name
        done = subprocess.run([compiler, "-O3", "-shared", "-fPIC", "-fopenmp", "-o", str(built), str(SOURCE)],
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {(done.stderr or done.stdout).strip()}")
        os.replace(built, target)      # another process building the same key wrote the same bytes
    return target


# ---------------------------------------------------------------------------------------------
# Modules

class Int4Linear(nn.Module):
    """A linear layer of 4-bit weights (no bias): `weight` the packed nibbles, `scale` the
    blocks' float16 scales (see `quantize_q4`), for in_features -> out_features."""

    weight: torch.Tensor
    scale: torch.Tensor

    def __init__(self, packed: torch.Tensor, scale: torch.Tensor, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", packed)
        self.register_buffer("scale", scale)

    @classmethod
    def from_weight(cls, w: torch.Tensor) -> "Int4Linear":
        packed, scale = quantize_q4(w)
        return cls(packed, scale, w.shape[1], w.shape[0])

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> "Int4Linear":
        return cls.from_weight(layer.weight.data)

    @classmethod
    def stacked(cls, layers) -> "Int4Linear":
        """The layers' rows in one (model/mla.py `stack_rows`). Quantizing the dequantized
        weights again gives back the same nibbles and scales (the largest weight of a block is
        -8 scales exactly), so the stacked layer computes what the parts did."""
        return cls.from_weight(torch.cat([layer.dequantized() for layer in layers]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return q4_matmul(x, self.weight, self.scale, self.out_features).to(x.dtype)

    def dequantized(self) -> torch.Tensor:
        return dequantize_q4(self.weight, self.scale, self.out_features)

    def values(self) -> int:
        """The weights it stands for (for parameter counts)."""
        return self.out_features * self.in_features


class Int4Experts(Experts):
    """Stacked experts in 4 bits, each run through the kernel when it is chosen; a decode step's
    token goes through all of its experts in one call (`run_chosen`, the kernel's `q4_moe`).

    The layer's shared experts can ride along (`attach_shared`): cut out of the shared MLP's
    4 bits into experts of the routed experts' shape, numbered after them, so the MoE layer
    lists them with gate 1 beside the routed ones it chose — one kernel call a token for all of
    the layer's feed-forward."""

    s13: torch.Tensor
    s2: torch.Tensor
    shared_w13: torch.Tensor   # attach_shared: (shared, ceil(2I/8), D/32, 128), and so on as the routed ones
    shared_s13: torch.Tensor
    shared_w2: torch.Tensor
    shared_s2: torch.Tensor

    def __init__(self, w13: torch.Tensor, s13: torch.Tensor, w2: torch.Tensor, s2: torch.Tensor,
                 dim: int, inter_dim: int) -> None:
        nn.Module.__init__(self)
        self.inter_dim, self.dim = inter_dim, dim
        self.register_buffer("w13", w13)                  # (E, ceil(2I/8), D/32, 128) uint8
        self.register_buffer("s13", s13)                  # (E, ceil(2I/8), D/32, 8) float16
        self.register_buffer("w2", w2)                    # (E, ceil(D/8), I/32, 128) uint8
        self.register_buffer("s2", s2)                    # (E, ceil(D/8), I/32, 8) float16
        self.batched_decode = True     # run_chosen: one kernel call for the token's k experts
        self.n_routed = w13.shape[0]
        self.n_shared = 0              # attach_shared: experts n_routed .. n_routed + n_shared - 1
        self._addresses: tuple[int, tuple[torch.Tensor, ...]] | None = None   # (w13's address, tables)

    @classmethod
    def from_experts(cls, experts: Experts) -> "Int4Experts":
        w13, s13 = quantize_q4(experts.w13.data)
        w2, s2 = quantize_q4(experts.w2.data)
        return cls(w13, s13, w2, s2, experts.w13.shape[2], experts.inter_dim)

    def attach_shared(self, gate_up: nn.Module, down: nn.Module) -> int:
        """Take a shared MLP's products (gate rows then up rows, `MLP.fuse`; and down) as
        experts of this shape: its inter_dim a multiple of ours, each expert a slice of whole
        tiles of gate and of up and of whole blocks of down — the same 4 bits, no rounding. The
        expert sum of silu(gate) * up through down is the MLP's, split over its inner units.
        The number of experts attached: 0 where the layers are not 4-bit or do not cut so."""
        if self.n_shared or not isinstance(gate_up, Int4Linear) or not isinstance(down, Int4Linear):
            return 0
        inner, tiles, blocks = gate_up.out_features // 2, self.inter_dim // TILE, self.inter_dim // GROUP
        if (gate_up.in_features != self.dim or down.out_features != self.dim or down.in_features != inner
                or inner % self.inter_dim or self.inter_dim % TILE):
            return 0
        n = inner // self.inter_dim
        gate_w, up_w = gate_up.weight[: n * tiles], gate_up.weight[n * tiles: 2 * n * tiles]
        gate_s, up_s = gate_up.scale[: n * tiles], gate_up.scale[n * tiles: 2 * n * tiles]
        pick = range(n)
        self.register_buffer("shared_w13", torch.stack([torch.cat((gate_w[h * tiles:(h + 1) * tiles],
                                                                   up_w[h * tiles:(h + 1) * tiles])) for h in pick]))
        self.register_buffer("shared_s13", torch.stack([torch.cat((gate_s[h * tiles:(h + 1) * tiles],
                                                                   up_s[h * tiles:(h + 1) * tiles])) for h in pick]))
        self.register_buffer("shared_w2", torch.stack([down.weight[:, h * blocks:(h + 1) * blocks] for h in pick]))
        self.register_buffer("shared_s2", torch.stack([down.scale[:, h * blocks:(h + 1) * blocks] for h in pick]))
        self.n_shared, self._addresses = n, None
        return n

    def expert(self, e: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Expert e's (w13, s13, w2, s2): a routed one, or from n_routed on a shared one."""
        if e < self.n_routed:
            return self.w13[e], self.s13[e], self.w2[e], self.s2[e]
        h = e - self.n_routed
        return self.shared_w13[h], self.shared_s13[h], self.shared_w2[h], self.shared_s2[h]

    def addresses(self) -> tuple[torch.Tensor, ...]:
        """Where each expert's w13, s13, w2 and s2 start (int64 tables for the kernel), made once
        (again only if the weights moved)."""
        if self._addresses is None or self._addresses[0] != self.w13.data_ptr():
            parts = [self.expert(e) for e in range(self.n_routed + self.n_shared)]
            tables = tuple(torch.tensor([p[i].data_ptr() for p in parts], dtype=torch.int64) for i in range(4))
            self._addresses = (self.w13.data_ptr(), tables)
        return self._addresses[1]

    def run(self, e: int, x: torch.Tensor) -> torch.Tensor:
        w13, s13, w2, s2 = self.expert(e)
        gate, up = q4_matmul(x, w13, s13, 2 * self.inter_dim).chunk(2, dim=-1)
        return q4_matmul(F.silu(gate) * up, w2, s2, self.dim).to(x.dtype)

    def run_chosen(self, x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor, path: str | None = None) -> torch.Tensor:
        """Tokens x (T, D), each through its k experts idx (T, k), weighted and summed -> (T, D),
        in one kernel call: a decode step's token costs one call instead of two products and
        the operations between them per expert. `path` forces a kernel (a test's business)."""
        lib = kernel()
        if lib is None:                                  # one by one, the weights widened
            return self.run_each(x, idx, weights)
        rows = x.float().contiguous()
        chosen = idx.to(torch.int64).contiguous()
        gates = weights.float().contiguous()
        y = torch.empty_like(rows)
        w13, s13, w2, s2 = self.addresses()
        status = lib.q4_moe(rows.data_ptr(), rows.shape[0], self.dim, chosen.data_ptr(), gates.data_ptr(),
                            chosen.shape[1], w13.data_ptr(), s13.data_ptr(), w2.data_ptr(), s2.data_ptr(),
                            self.inter_dim, y.data_ptr(), torch.get_num_threads(),
                            -1 if path is None else PATHS[path])
        if status != 0:
            raise MemoryError("The int4 experts kernel could not allocate its working memory.")
        return y.to(x.dtype)

    def run_routed(self, x: torch.Tensor, router: torch.Tensor, k: int, normalize: bool, scaling: float,
                   path: str | None = None) -> torch.Tensor | None:
        """One token x (1, D) through its whole feed-forward in one kernel call: the router's
        softmax scores (router (E, D) float32), its k best experts (greedy; weights summed to 1
        when `normalize`, times `scaling`), the attached shared experts with weight 1 — what
        Router and `run_chosen` do in some fifteen operations. None without the kernel."""
        lib = kernel()
        if lib is None:
            return None
        row = x.float().contiguous()
        y = torch.empty_like(row)
        w13, s13, w2, s2 = self.addresses()
        status = lib.q4_moe_routed(row.data_ptr(), self.dim, router.data_ptr(), self.n_routed, k, int(normalize),
                                   scaling, self.n_shared, w13.data_ptr(), s13.data_ptr(), w2.data_ptr(),
                                   s2.data_ptr(), self.inter_dim, y.data_ptr(), torch.get_num_threads(),
                                   -1 if path is None else PATHS[path])
        if status != 0:
            raise MemoryError("The int4 experts kernel could not allocate its working memory.")
        return y.to(x.dtype)

    def values(self) -> int:
        return (self.n_routed + self.n_shared) * 3 * self.inter_dim * self.dim


def fits_int4(in_features: int) -> bool:
    """Whether a product with this many inputs can be int4 (whole blocks of 32); others stay int8,
    as llama.cpp keeps such tensors in a wider type."""
    return in_features % GROUP == 0
