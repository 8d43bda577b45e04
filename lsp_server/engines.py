"""Where the model runs: the one place an engine is built from settings.

Today there is the in-process engine; the shared daemon ("daemon" / "auto") and remote
OpenAI-compatible servers ("openai:URL") land here as further branches of `make_engine`.
PyTorch is imported on the first call, so a server answers `initialize` before it loads.
"""
from __future__ import annotations

from lsp_server.config import Settings


def make_engine(settings: Settings):
    """Load the engine the settings ask for; raises ModelLoadError with one sentence."""
    from model.loader import ModelLoadError

    if settings.engine == "inprocess":
        from model.engine import BUNDLED_DIR, Engine

        if settings.model is None and not (BUNDLED_DIR / "config.json").is_file():
            raise ModelLoadError(
                f"The bundled model is missing from {BUNDLED_DIR}; run `latent train` or set `model` "
                f"to a checkpoint folder.")
        return Engine.load(
            settings.model, dtype=settings.dtype, device=settings.device,
            threads=settings.threads or None, quantize=settings.quantize,
            cache_bytes=settings.cache_mb << 20, max_context=settings.max_context,
        )
    raise ModelLoadError(f"Engine {settings.engine!r} is not available; use 'inprocess'.")
