"""workspace/executeCommand: latent.toggle, latent.stats, latent.clearCache, latent.accepted.

Commands that touch the engine run on the worker, in turn with completions, so they never
race a generation and never block the event loop. An accepted suggestion's precomputation is
a job there too, under (uri, "precompute"): a newer accept or the document's close cancels it.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from collections import Counter

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from completion.types import Position, Range, Suggestion
from lsp_server import messages, status
from model.serve.framing import plain

log = logging.getLogger(__name__)
ACCEPTED = "latent.accepted"
SNOOZE_MAX_MINUTES = 24 * 60


def accept_command(uri: str, suggestion: Suggestion) -> types.Command:
    """The command a client runs once the user accepted `suggestion` (see `accepted` below)."""
    r = suggestion.range
    span = [r.start.line, r.start.character, r.end.line, r.end.character]
    return types.Command(title="Latent: suggestion accepted", command=ACCEPTED, arguments=[uri, suggestion.text, span])


def register(server, session) -> None:
    def on_worker(fn) -> asyncio.Future:
        return asyncio.wrap_future(session.worker.submit(None, fn).future)

    @server.command("latent.toggle")
    def toggle(*args) -> dict:
        """Turn completion off or on: no argument flips it, true / false sets it, and false with a
        number of minutes snoozes it: off, and on again by itself after that long."""
        if len(args) > 2 or (args and args[0] is not None and not isinstance(args[0], bool)) or (
                len(args) == 2 and not _minutes(args[1])):
            raise JsonRpcInvalidParams("latent.toggle takes nothing, true or false, or false and a number of minutes "
                                       f"from 1 to {SNOOZE_MAX_MINUTES} (a snooze).")
        enabled = not session.settings.enable if not args or args[0] is None else args[0]
        minutes = args[1] if len(args) == 2 and not enabled else None
        session.toggle(enabled, minutes)
        log.info("Completion is %s.", "on" if enabled else f"snoozed for {minutes:g} minutes" if minutes else "off")
        out = {"enabled": enabled}
        if session.status.snoozed_until:
            out["snoozedUntil"] = session.status.snoozed_until
        return out

    @server.command("latent.stats")
    async def stats(*args) -> dict:
        """The server's, the pipeline's and the engine's figures; `reasons` counts why answers were
        empty, from the pipeline and from the server's skips (loading, off, manual…)."""
        service, engine = session.service, session.engine

        def read(cancel) -> dict:
            return {"service": service.stats() if service else {}, "engine": engine.stats() if engine else {}}

        figures = await on_worker(read) or {}
        reasons = Counter(figures.get("service", {}).get("reasons", {})) + session.requests.skips
        figures["reasons"] = dict(reasons)   # the pipeline's and the server's, counted together
        return plain({"status": session.status.params(), "documents": len(session.documents),
                      "open": [describe(document) for document in session.documents.documents()],
                      "settings": dataclasses.asdict(session.settings), **figures})

    def describe(document) -> dict:
        """An open document as the server holds it (what a client can compare with its own)."""
        text = document.text
        return {"uri": document.uri, "version": document.version, "chars": len(text),
                "sha256": hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
                "parsed": document.parseable, "stale": document.uri in session.stale}

    @server.command("latent.clearCache")
    async def clear_cache(*args) -> dict:
        """Forget cached suggestions and the engine's latent prefix cache."""
        service, engine = session.service, session.engine

        def clear(cancel) -> None:
            if service is not None:
                service.clear_cache()
                engine.clear_cache()
                session.status.refresh_cache(engine, force=True)

        await on_worker(clear)
        status.send(session)
        log.info("Caches cleared.")
        return {"cleared": service is not None}

    @server.command(ACCEPTED)
    def accepted(uri: str, text: str, span: list) -> None:
        """A client accepted a suggestion (the items' command): precompute the next one."""
        if not isinstance(uri, str) or not isinstance(text, str):
            raise JsonRpcInvalidParams(f"{ACCEPTED} takes a document URI and the suggestion's text (strings).")
        if not isinstance(span, list) or len(span) != 4 or not all(messages.whole(n) for n in span):
            raise JsonRpcInvalidParams(f"{ACCEPTED} takes the suggestion's range as four whole numbers from 0 to "
                                       f"{messages.UINTEGER_MAX}: start line, character, end line, character.")
        service = session.service
        if service is None:
            return None
        suggestion = Suggestion(text, Range(Position(span[0], span[1]), Position(span[2], span[3])))
        session.worker.submit((uri, "precompute"), lambda cancel: service.precompute(uri, suggestion, cancel))
        return None


def _minutes(value) -> bool:
    """A snooze's length: a number of minutes, more than 0 and at most a day."""
    return type(value) in (int, float) and 0 < value <= SNOOZE_MAX_MINUTES
