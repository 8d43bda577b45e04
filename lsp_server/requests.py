"""Background requests: a completion request's whole life in one place (the shape of
ruff_server's background document requests).

    arrive   as the message is dispatched, before any later message is read (the protocol's
             handle_message calls it): check the position, take the document's snapshot and
             queue the job on the worker under (uri, kind), which cancels the previous request
             of the same kind for the document — it is answered with an empty result;
    answer   the pygls handler registered for the method awaits the job and returns exactly one
             result or raises one error; pygls sends it;
    cancel   $/cancelRequest sets the job's CancelToken (a queued job then never runs) and pygls
             answers the request with RequestCancelled; so does any end of the handler's task
             (shutdown).

A request is answered with an empty result when the model is not ready, completion is off
(latent.toggle, a snooze, the language, or `trigger = manual` for ghost text while typing), the
server's copy of the document diverged from the editor's (documents.diverged) or the document is
past the bound on open documents (documents.refuse), a newer request
superseded it, or the pipeline failed (logged). Each such skip has its reason (a key of
completion.types.REASONS), which the status carries. A position outside the document or an
unknown document is an InvalidParams error. Ghost text while typing waits `debounce_ms` on the
worker first, so a keystroke that follows soon replaces it unrun. Each answered completion is
one log line with its figures, and a `latent/status`; so is model work whose request the client
cancelled once the model had answered (its figures become the status's `lastModel`).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from pygls.exceptions import JsonRpcInvalidParams

from completion.errors import InvalidPosition
from completion.types import REASONS, CompletionResult, Position, Suggestion
from lsp_server import status
from lsp_server.worker import Job

log = logging.getLogger(__name__)


@dataclass
class Request:
    id: object
    kind: str                  # "inline" | "completion": the worker key is (uri, kind)
    uri: str
    position: Position
    arrived: float = field(default_factory=time.perf_counter)
    job: Job | None = None
    error: str | None = None   # an InvalidParams message
    skipped: str = ""          # why no job runs: a key of REASONS, or the method is off

    def where(self) -> str:
        name = self.uri.rsplit("/", 1)[-1]
        return f"{name}:{self.position.line + 1}:{self.position.character + 1}"


@dataclass(frozen=True)
class Ask:
    """What a request asks of the pipeline, from its params and the settings."""

    count: int = 1            # suggestions to compute
    delay: float = 0.0        # seconds to wait on the worker first (the debounce while typing)
    skip: str | None = None   # answer empty without running: a key of REASONS, or why the method is off


@dataclass(frozen=True)
class Kind:
    name: str
    respond: Callable[[str, list[Suggestion]], Any]   # (uri, suggestions) -> the LSP result
    ask: Callable[[Any], Ask]                         # params -> what to compute


class Requests:
    """The background requests of one session: their kinds and those in flight."""

    def __init__(self, session) -> None:
        self.session = session
        self.kinds: dict[str, Kind] = {}          # LSP method -> its kind
        self.inflight: dict[object, Request] = {}  # request id -> the request, until answered
        self.skips: Counter = Counter()            # why requests were answered before the pipeline ran

    def register(self, server, method: str, options, name: str, respond, ask=lambda params: Ask()) -> None:
        """Serve `method` as a background request; `respond` builds its result."""
        kind = self.kinds[method] = Kind(name, respond, ask)

        @server.feature(method, options)
        async def handle(params):
            msg_id = server.protocol.msg_id
            request = self.inflight.get(msg_id) or self._prepare(msg_id, kind, params)
            try:
                suggestions = await self._answer(request)
            finally:
                self.inflight.pop(msg_id, None)
            return kind.respond(request.uri, suggestions)

    # -- the protocol's hooks (event loop) ----------------------------------------------------
    def arrive(self, msg_id, method: str, params) -> None:
        """A request was read: for a background method, snapshot and queue it now."""
        kind = self.kinds.get(method)
        if kind is None or self.session.shut_down:
            return
        try:
            self.inflight[msg_id] = self._prepare(msg_id, kind, params)
        except Exception:   # the handler will try again, and answer with the error
            log.exception("Could not take the snapshot for request %s", msg_id)

    def cancel(self, msg_id) -> None:
        """$/cancelRequest: stop the job (pygls answers the request)."""
        request = self.inflight.pop(msg_id, None)
        if request is not None and request.job is not None:
            request.job.cancel.cancel()

    # -- one request ---------------------------------------------------------------------------
    def _prepare(self, msg_id, kind: Kind, params) -> Request:
        session = self.session
        uri, p = params.text_document.uri, params.position
        ask = kind.ask(params)
        request = Request(msg_id, kind.name, uri, Position(p.line, p.character), skipped=ask.skip or "")
        if request.skipped:
            return request
        document = session.documents.get(uri)
        if document is None and uri in session.refused:
            request.skipped = "not-kept"
            return request
        if document is None:
            request.error = f"The document {uri} is not open."
            return request
        try:
            document.lines.offset(request.position)
        except InvalidPosition as e:
            request.error = str(e)
            return request
        service, engine = session.service, session.engine
        if uri in session.stale:
            request.skipped = "diverged"
        elif service is None:
            request.skipped = "load-failed" if session.status.state == "error" else "loading"
        elif not session.settings.enable:
            request.skipped = "snoozed" if session.status.snoozed_until else "off"
        elif not session.settings.language_enabled(document.language_id):
            request.skipped = "language-disabled"
        if request.skipped:
            return request
        assert service is not None, "without a service the request was skipped (loading, load-failed)"
        snapshot = document.snapshot()
        count = ask.count

        def run(cancel) -> tuple[CompletionResult, float]:
            started = time.perf_counter()
            result = service.complete(snapshot, request.position, cancel, count=count)
            session.status.refresh_cache(engine)
            return result, started

        request.job = session.worker.submit((uri, kind.name), run, delay=ask.delay)
        return request

    async def _answer(self, request: Request) -> list[Suggestion]:
        """The suggestions to answer with (none: an empty result)."""
        kind, where = request.kind, request.where()
        if request.error is not None:
            log.warning("%s %s: %s", kind, where, request.error)
            raise JsonRpcInvalidParams(request.error)
        if request.job is None:
            reason = request.skipped
            log.debug("%s %s: no completion (%s)", kind, where, REASONS.get(reason, reason))
            if reason in REASONS:
                self.skips[reason] += 1
                self._record(request, CompletionResult(source="skipped", reason=reason), request.arrived)
            return []
        try:
            outcome = await asyncio.wrap_future(request.job.future)
        except asyncio.CancelledError:       # $/cancelRequest, or shutdown
            request.job.cancel.cancel()
            log.debug("%s %s: cancelled by the client", kind, where)
            self._keep_model_figures(request)
            raise
        except InvalidPosition as e:
            log.warning("%s %s: %s", kind, where, e)
            raise JsonRpcInvalidParams(str(e)) from None
        except Exception:
            log.exception("%s %s failed; answering with no suggestion", kind, where)
            return []
        if outcome is None or outcome[0].source == "cancelled":
            log.debug("%s %s: superseded by a newer request", kind, where)
            if outcome is None:   # replaced before it ran (the pipeline counts those it stopped)
                self.skips["cancelled"] += 1
            return []   # no status: the newer request's answer is the one to show
        result, started = outcome
        self._record(request, result, started)
        return result.suggestions

    def _keep_model_figures(self, request: Request) -> None:
        """A request the client cancelled may still have run the model to the end (the job had
        finished, or was past the engine): the next keystrokes are then answered from it by
        typing-through, so its figures are the model's latest for the status (`lastModel`)."""
        assert request.job is not None
        loop = asyncio.get_running_loop()

        def done(future) -> None:   # the worker thread, or at once where the job had finished
            outcome = None if future.cancelled() or future.exception() is not None else future.result()
            if outcome is not None and outcome[0].source == "model":
                result, started = outcome
                loop.call_soon_threadsafe(self._record_model, request, result, started)

        request.job.future.add_done_callback(done)

    def _record_model(self, request: Request, result: CompletionResult, started: float) -> None:
        if self.session.shut_down:
            return
        self.session.status.last_model = self._figures(request, result, started)
        log.debug("%s %s: the model had answered (%.1f ms in the engine) before the client cancelled",
                  request.kind, request.where(), result.timings_ms.get("engine", 0.0))
        status.send(self.session)

    def _record(self, request: Request, result: CompletionResult, started: float) -> None:
        """Log the completion's stage timings and token figures, and send the status."""
        last = self._figures(request, result, started)
        stages = ", ".join(f"{k} {v:.1f}" for k, v in result.timings_ms.items() if k != "total")
        log.info("%s %s: %s/%s in %.1f ms (queue %.1f%s) reused %d prefilled %d generated %d%s -> %d suggestion(s)%s",
                 request.kind, request.where(), result.source, result.mode, last["latencyMs"], last["queueMs"],
                 f", {stages}" if stages else "", last["reusedTokens"], last["prefilledTokens"],
                 last["generatedTokens"], ", typing-through" if last["typingThrough"] else "",
                 len(result.suggestions), f" ({result.reason})" if result.reason else "")
        self.session.status.last = last
        if result.source == "model":
            self.session.status.last_model = last
        status.send(self.session)

    def _figures(self, request: Request, result: CompletionResult, started: float) -> dict:
        """A completion's figures, as the status carries them (`last`, `lastModel`)."""
        now = time.perf_counter()
        stats = result.engine_stats or {}
        model = result.source == "model"
        return {
            "request": request.id, "method": request.kind, "source": result.source, "mode": result.mode,
            "suggestions": len(result.suggestions),
            "latencyMs": round((now - request.arrived) * 1e3, 3),
            "queueMs": round((started - request.arrived) * 1e3, 3),
            "timingsMs": result.timings_ms,
            "partsMs": result.parts_ms,                   # within the stages (tokenize, queries)
            "pipelineMs": round(result.timings_ms.get("total") or sum(result.timings_ms.values()), 3),
            "engineMs": result.timings_ms.get("engine", 0.0),
            "reusedTokens": stats.get("reused_tokens", 0) if model else 0,
            "prefilledTokens": stats.get("prefilled_tokens", 0) if model else 0,
            "generatedTokens": stats.get("generated_tokens", 0) if model else 0,
            "typingThrough": result.source == "typing-through",
            "reason": result.reason,                      # no suggestion: why (completion.types.REASONS)
            "reasonText": REASONS.get(result.reason, ""),
        }
