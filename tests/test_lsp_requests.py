"""A request the editor cancels after the model has answered it: the model's figures still reach
the status bar (`lastModel`), since typing-through answers the next keystrokes from that answer.
The request object and the worker are the server's own; the session around them is a stand-in
that records the notifications the client would get."""
from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest

from completion.types import CompletionResult, Position, Range, Suggestion
from lsp_server.requests import Request, Requests
from lsp_server.status import METHOD, Status
from lsp_server.worker import Worker


class Protocol:
    writer = object()

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def notify(self, method: str, params: dict) -> None:
        assert method == METHOD
        self.sent.append(params)


def model_answer(cancel) -> CompletionResult:
    if cancel.cancelled:   # what the pipeline says when it stopped in the engine
        return CompletionResult(source="cancelled", reason="cancelled")
    return CompletionResult([Suggestion("(path)", Range(Position(4, 18), Position(4, 18)))], "line", "model", {"engine": 42.0, "total": 43.0},
                            {"generated_tokens": 3, "prefilled_tokens": 1, "reused_tokens": 20})


def cancelled_by_the_client(stops_in_the_engine: bool) -> list[dict]:
    """Run one request whose job blocks until the client has cancelled it, then finishes (the
    model had answered) or stops in the engine; the status notifications sent."""
    protocol, worker = Protocol(), Worker()
    session = SimpleNamespace(status=Status(state="ready"), server=SimpleNamespace(protocol=protocol),
                              shut_down=False)
    requests, cancelled = Requests(session), threading.Event()

    def run(cancel):
        started = time.perf_counter()
        assert cancelled.wait(5)
        if not stops_in_the_engine:
            cancel = type(cancel)()   # past the engine: the token is no longer read
        return model_answer(cancel), started

    async def client() -> None:
        request = Request("r1", "inline", "file:///demo.py", Position(4, 18))
        request.job = worker.submit(("file:///demo.py", "inline"), run)
        task = asyncio.create_task(requests._answer(request))
        await asyncio.sleep(0.05)
        task.cancel()                     # $/cancelRequest: pygls cancels the handler's task
        with pytest.raises(asyncio.CancelledError):
            await task
        cancelled.set()
        request.job.future.result(5)
        await asyncio.sleep(0.05)         # the event loop sends what the worker's answer causes

    try:
        asyncio.run(client())
    finally:
        worker.stop()
    return protocol.sent


def test_a_cancelled_request_the_model_answered_gives_the_status_its_figures():
    sent = cancelled_by_the_client(stops_in_the_engine=False)
    assert len(sent) == 1
    model = sent[0]["lastModel"]
    assert (model["source"], model["engineMs"], model["generatedTokens"]) == ("model", 42.0, 3)
    assert "last" not in sent[0]          # the request was not answered: `last` is the previous answer


def test_a_request_cancelled_in_the_engine_says_nothing():
    assert cancelled_by_the_client(stops_in_the_engine=True) == []
