"""PyTorch's private and deprecated calls, in one place.

Latent leans on a few PyTorch entry points that carry no stability promise: fbgemm's int8
GEMM through quantized tensors (deprecated since 2.10), the int8-weight matrix product, the CPU
feature probe, and AOTInductor's compiler and C++ package loader. Each is wrapped here, called
with its schema's argument names, so that one file says what the project depends on and a
PyTorch upgrade is checked in one place: tests/test_torch_private.py calls every wrapper and
fails, naming it, when one is gone or changed. All were checked against PyTorch 2.13.0
(`CHECKED_WITH`). Callers keep their fallbacks: int8 runs without fbgemm
(model/quant.py), the decode step stays eager when a compile or load fails (engine/step.py).
"""
from __future__ import annotations

from pathlib import Path

import torch

CHECKED_WITH = "2.13.0"


# -- int8 ------------------------------------------------------------------------------------

def weight_int8pack_mm(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (N, in) @ (weight * scales[:, None]).T for int8 `weight` (out, in): the CPU kernel for
    int8 weights and float activations (aten::_weight_int8pack_mm(self, mat2, scales))."""
    op = torch._weight_int8pack_mm   # pyright: ignore[reportPrivateImportUsage]  # private ATen op
    return op(x, weight, scales=scales)


def is_vnni_supported() -> bool:
    """Whether this CPU has AVX-512 VNNI (fbgemm's int8 kernels then take 8-bit activations)."""
    probe = getattr(torch.cpu, "_is_vnni_supported", None)
    return bool(probe()) if probe is not None else False


def fbgemm_available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(torch.ops.quantized, "linear_dynamic")


def fbgemm_prepack(q: torch.Tensor, scale: torch.Tensor):
    """fbgemm's packed form of int8 rows `q` (out, in) with a float scale per row."""
    make = torch._make_per_channel_quantized_tensor   # pyright: ignore[reportPrivateImportUsage]  # deprecated
    weight = make(q.contiguous(), scale=scale.double(), zero_point=torch.zeros(q.shape[0], dtype=torch.long),
                  axis=0)
    return torch.ops.quantized.linear_prepack(weight, B=None)


def fbgemm_unpack(packed) -> torch.Tensor:
    """The int8 rows of a packed weight."""
    return torch.ops.quantized.linear_unpack(packed)[0].int_repr()


def fbgemm_linear(x: torch.Tensor, packed, reduce_range: bool) -> torch.Tensor:
    """x (N, in) float32 through a packed int8 weight; the activations are quantized per call,
    with one scale for the whole matrix (7 bits with `reduce_range`)."""
    return torch.ops.quantized.linear_dynamic(x, packed, reduce_range=reduce_range)


# -- AOTInductor ------------------------------------------------------------------------------

def aoti_compile(program, package: Path) -> None:
    """Compile an exported program into a package that holds no weights (bound at load)."""
    import torch._inductor  # only the compiler process needs it

    torch._inductor.aoti_compile_and_package(program, package_path=str(package),
                                             inductor_configs={"aot_inductor.package_constants_in_so": False})


def aoti_loader(package: Path):
    """The C++ loader that `torch._inductor.aoti_load_package` wraps, used directly: through the
    wrapper a load costs ~2 s of imports and each call ~30 µs of pytree work; here a load takes
    milliseconds and a call (`boxed_run`) runs no Python. Arguments: the package, the model's
    name in it, run single-threaded (False), one runner, on device index -1 (the CPU)."""
    aoti = torch._C._aoti   # pyright: ignore[reportAttributeAccessIssue]  # a C extension without stubs
    return aoti.AOTIModelPackageLoader(str(package), "model", False, 1, -1)


def aoti_bind(loader, tensors: dict[str, torch.Tensor]) -> None:
    """Give a loaded package the caller's weights, read in place: (constants, use the inactive
    buffer: no, check every constant is given: yes, user-managed: yes, copy host to device: no)."""
    loader.load_constants(tensors, False, True, True, False)
