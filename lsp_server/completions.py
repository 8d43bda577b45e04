"""What inlineCompletion and completion share: a snapshot taken as the request arrives, a job
on the worker, and one log line (and status) per answered completion.

    pending = arrive(ls, request_id, uri, position)   # event loop, before any later message
    result = await finish(ls, pending)                # None: answer with an empty result

A request is answered with an empty result when the model is not ready, completion is off for
the document's language, a newer request for the document superseded it, or the pipeline
failed (logged). A position outside the document or an unknown document is an InvalidParams
error. The snapshot is taken when the request arrives (see `LatentProtocol`), so edits that
follow it can never shift the position it names.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from completion.errors import InvalidPosition
from completion.types import CompletionResult, Position, Suggestion
from lsp_server import status
from lsp_server.worker import Job

log = logging.getLogger(__name__)
METHODS = ("inline", "completion")


@dataclass
class Pending:
    request_id: object
    method: str                # "inline" | "completion"
    uri: str
    position: Position
    arrived: float = field(default_factory=time.perf_counter)
    job: Job | None = None
    error: str | None = None   # an InvalidParams message
    skipped: str = ""          # why no job runs: loading, error, disabled


def skipped(request_id, method: str, uri: str, position: types.Position, reason: str) -> Pending:
    return Pending(request_id, method, uri, Position(position.line, position.character), skipped=reason)


def arrive(ls, request_id, method: str, uri: str, position: types.Position) -> Pending:
    """Snapshot the document and queue the completion, superseding the older request of the
    same method for the document (an inline request and a completion request coexist)."""
    pending = Pending(request_id, method, uri, Position(position.line, position.character))
    document = ls.documents.get(uri)
    if document is None:
        pending.error = f"The document {uri} is not open."
        return pending
    try:
        document.lines.offset(pending.position)
    except InvalidPosition as e:
        pending.error = str(e)
        return pending
    service, engine = ls.service, ls.engine
    if service is None:
        pending.skipped = ls.status.state
        return pending
    if not ls.settings.language_enabled(document.language_id):
        pending.skipped = "disabled"
        return pending
    snapshot = document.snapshot()

    def run(cancel) -> tuple[CompletionResult, float]:
        started = time.perf_counter()
        result = service.complete(snapshot, pending.position, cancel)
        ls.status.refresh_cache(engine)
        return result, started

    pending.job = ls.worker.submit((uri, method), run)
    return pending


async def finish(ls, pending: Pending) -> list[Suggestion]:
    """The suggestions to answer with (none: an empty result)."""
    method = pending.method
    if pending.error is not None:
        log.warning("%s %s: %s", method, _where(pending), pending.error)
        raise JsonRpcInvalidParams(pending.error)
    if pending.job is None:
        log.debug("%s %s: no completion (%s)", method, _where(pending), pending.skipped)
        return []
    try:
        outcome = await asyncio.wrap_future(pending.job.future)
    except asyncio.CancelledError:       # $/cancelRequest, or shutdown
        pending.job.cancel.cancel()
        log.debug("%s %s: cancelled by the client", method, _where(pending))
        raise
    except InvalidPosition as e:
        log.warning("%s %s: %s", method, _where(pending), e)
        raise JsonRpcInvalidParams(str(e)) from None
    except Exception:
        log.exception("%s %s failed; answering with no suggestion", method, _where(pending))
        return []
    if outcome is None or outcome[0].source == "cancelled":
        log.debug("%s %s: superseded by a newer request", method, _where(pending))
        return []
    result, started = outcome
    record(ls, pending, result, started)
    return result.suggestions


def record(ls, pending: Pending, result: CompletionResult, started: float) -> None:
    """Log the completion's stage timings and token figures, and send the status."""
    now = time.perf_counter()
    stats = result.engine_stats or {}
    last = {
        "request": pending.request_id, "method": pending.method, "source": result.source, "mode": result.mode,
        "suggestions": len(result.suggestions),
        "latencyMs": round((now - pending.arrived) * 1e3, 3),
        "queueMs": round((started - pending.arrived) * 1e3, 3),
        "timingsMs": result.timings_ms,
        "pipelineMs": round(result.timings_ms.get("total") or sum(result.timings_ms.values()), 3),
        "engineMs": result.timings_ms.get("engine", 0.0),
        "reusedTokens": stats.get("reused_tokens", 0) if result.source == "model" else 0,
        "prefilledTokens": stats.get("prefilled_tokens", 0) if result.source == "model" else 0,
        "generatedTokens": stats.get("generated_tokens", 0) if result.source == "model" else 0,
        "typingThrough": result.source == "typing-through",
    }
    stages = ", ".join(f"{k} {v:.1f}" for k, v in result.timings_ms.items() if k != "total")
    log.info("%s %s: %s/%s in %.1f ms (queue %.1f%s) reused %d prefilled %d generated %d%s -> %d suggestion(s)",
             pending.method, _where(pending), result.source, result.mode, last["latencyMs"], last["queueMs"],
             f", {stages}" if stages else "", last["reusedTokens"], last["prefilledTokens"],
             last["generatedTokens"], ", typing-through" if last["typingThrough"] else "",
             len(result.suggestions))
    ls.status.last = last
    status.send(ls)


def to_range(suggestion: Suggestion) -> types.Range:
    start, end = suggestion.range.start, suggestion.range.end
    return types.Range(types.Position(start.line, start.character), types.Position(end.line, end.character))


def accept_command(uri: str, suggestion: Suggestion) -> types.Command:
    """The command a client runs once the user accepted `suggestion` (see commands.accepted)."""
    r = suggestion.range
    return types.Command(
        title="Latent: suggestion accepted", command="latent.accepted",
        arguments=[uri, suggestion.text, [r.start.line, r.start.character, r.end.line, r.end.character]])


def forget(ls, uri: str) -> None:
    """A document closed: cancel its completions."""
    for method in METHODS:
        ls.worker.forget((uri, method))


def _where(pending: Pending) -> str:
    name = pending.uri.rsplit("/", 1)[-1]
    return f"{name}:{pending.position.line + 1}:{pending.position.character + 1}"
