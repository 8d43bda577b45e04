"""workspace/executeCommand: latent.toggle, latent.stats, latent.clearCache, latent.accepted.

Commands that touch the engine run on the completion worker, in turn with completions, so
they never race a generation and never block the event loop.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging

from completion.types import Position, Range, Suggestion
from lsp_server import status

log = logging.getLogger(__name__)


def register(server) -> None:
    @server.command("latent.toggle")
    def toggle(ls, *args) -> dict:
        """Turn completion off or on (an argument true / false sets it)."""
        enabled = bool(args[0]) if args else not ls.settings.enable
        ls.store.runtime["enable"] = enabled
        ls.apply_settings()
        log.info("Completion is %s.", "on" if enabled else "off")
        return {"enabled": enabled}

    @server.command("latent.stats")
    async def stats(ls, *args) -> dict:
        """The server's, the pipeline's and the engine's figures."""
        service, engine = ls.service, ls.engine

        def read(cancel) -> dict:
            return {"service": service.stats() if service else {}, "engine": engine.stats() if engine else {}}

        figures = await asyncio.wrap_future(ls.worker.submit(None, read).future) or {}
        return plain({
            "status": ls.status.params(),
            "documents": len(ls.documents),
            "settings": dataclasses.asdict(ls.settings),
            **figures,
        })

    @server.command("latent.clearCache")
    async def clear_cache(ls, *args) -> dict:
        """Forget cached suggestions and the engine's latent prefix cache."""
        service, engine = ls.service, ls.engine

        def clear(cancel) -> None:
            if service is not None:
                service.clear_cache()
            if engine is not None and hasattr(engine, "clear_cache"):
                engine.clear_cache()

        await asyncio.wrap_future(ls.worker.submit(None, clear).future)
        ls.status.refresh_cache(None)
        status.send(ls)
        log.info("Caches cleared.")
        return {"cleared": ls.service is not None}

    @server.command("latent.accepted")
    def accepted(ls, uri: str, text: str, span: list) -> None:
        """A client accepted a suggestion (the items' command): precompute the next one."""
        service = ls.service
        if service is None or not isinstance(text, str) or len(span) != 4:
            return None
        r = Range(Position(int(span[0]), int(span[1])), Position(int(span[2]), int(span[3])))
        ls.worker.submit(None, lambda cancel: service.accepted(uri, Suggestion(text, r)))
        return None


def plain(value):
    """`value` with anything JSON cannot carry turned into a string."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
