"""The PyTorch calls that carry no stability promise (model/torch_private.py) are there and do
what Latent relies on; when an upgrade removes or changes one, the test names it. And the
compiled decode step's cache key covers every file the step is built from."""
from __future__ import annotations

import inspect
import subprocess
import sys
import warnings
from pathlib import Path

import torch

from model import torch_private as tp
from model.engine.step import step_sources

ROOT = Path(__file__).resolve().parents[1]


def _rows(out: int = 8, inp: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random int8 rows, their scales and the float weight they stand for."""
    q = torch.randint(-127, 128, (out, inp), dtype=torch.int8, generator=torch.Generator().manual_seed(0))
    scale = torch.rand(out, generator=torch.Generator().manual_seed(1)) / 100 + 1e-3
    return q, scale, q.float() * scale[:, None]


def test_the_int8_weight_kernel_multiplies_as_float_would():
    q, scale, w = _rows()
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(tp.weight_int8pack_mm(x, q, scale), x @ w.T, rtol=1e-4, atol=1e-4)


def test_fbgemm_packs_unpacks_and_multiplies_int8_rows():
    assert tp.fbgemm_available(), "fbgemm's int8 GEMM is gone: int8 on the CPU falls back to a slower kernel"
    q, scale, w = _rows()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # quantized tensors are deprecated, not yet gone
        packed = tp.fbgemm_prepack(q, scale)
    assert torch.equal(tp.fbgemm_unpack(packed), q)
    x = torch.rand(3, 32, generator=torch.Generator().manual_seed(3))   # in [0, 1]: one quantization step
    for reduce_range in (False, True):
        got, want = tp.fbgemm_linear(x, packed, reduce_range=reduce_range), x @ w.T
        assert ((got - want).norm() / want.norm()).item() < 0.02, reduce_range


def test_the_cpu_probe_answers():
    assert isinstance(tp.is_vnni_supported(), bool)
    assert hasattr(torch.cpu, "_is_vnni_supported"), "without the probe every CPU counts as one without VNNI"


def test_aotinductors_compiler_and_loader_have_the_calls_the_step_makes():
    """(The compiled-step tests in test_engine.py run them end to end.)"""
    import torch._inductor

    params = inspect.signature(torch._inductor.aoti_compile_and_package).parameters
    assert {"package_path", "inductor_configs"} <= set(params)
    loader = torch._C._aoti.AOTIModelPackageLoader
    assert all(hasattr(loader, name) for name in ("boxed_run", "load_constants", "get_constant_fqns"))


def test_the_compiled_steps_cache_key_covers_every_module_the_model_imports():
    """A file missing from the key would serve a stale compiled library after it changed."""
    code = "import sys, model.transformer; print('\\n'.join(m.__file__ for n, m in sys.modules.items() " \
           "if n.startswith('model.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    imported = {Path(line).resolve() for line in loaded.stdout.split()}
    keyed = set(step_sources())
    assert imported and imported <= keyed, sorted(str(p) for p in imported - keyed)
    assert (ROOT / "model" / "engine" / "step.py").resolve() in keyed
