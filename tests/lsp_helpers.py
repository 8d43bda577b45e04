"""Helpers for the language-server tests: a model to serve, a real server over stdio driven by
pytest-lsp's client, and the completion pipeline run in-process for the expected answers.

The model is the bundled one (model/bundled/, in the repository); a checkout without it gets a
tiny random checkpoint (tests/tiny_models.py) as the `model` setting instead. Either way the
tests compare the server's answers with what the pipeline returns in-process for the same
snapshot, so they hold whatever the model writes.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import os
import sys
import tempfile
from pathlib import Path

from lsprotocol import types
from pytest_lsp.client import LanguageClient, make_test_lsp_client

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "model" / "bundled"
THREADS = 1  # two shared cores: one torch thread each for the server and the test process

# A document the bundled model completes at its end (it declares Python, so a plaintext document
# gets nothing): the tests that compare a suggestion open this one, so the comparison is never
# between two empty answers.
SUGGESTS = "def total(data):\n    result = 0\n    for key, value in data.items():\n        "
SUGGESTS_LANGUAGE = "python"


def end_of(text: str) -> tuple[int, int]:
    """The (line, character) of the end of `text` (ASCII text: characters are UTF-16 units)."""
    lines = text.split("\n")
    return len(lines) - 1, len(lines[-1])


SUGGESTS_END = end_of(SUGGESTS)


# ---------------------------------------------------------------------------------------------
# The model

def has_bundled() -> bool:
    return (BUNDLED / "config.json").is_file()


@functools.cache
def model_path() -> str | None:
    """None for the bundled model, else the folder of a tiny random checkpoint (made once)."""
    if has_bundled():
        return None
    from tiny_models import save_checkpoint

    folder = Path(tempfile.mkdtemp(prefix="latent-lsp-model-"))
    save_checkpoint("v2-greedy-yarn", folder)
    return str(folder)


def server_env(tmp: Path, **settings: str) -> dict[str, str]:
    """The server's environment: no inherited LATENT_* settings, XDG folders in `tmp`, the
    test model, one thread, and `settings` as LATENT_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENT_")}
    for name in ("CONFIG", "CACHE", "DATA", "STATE"):
        folder = tmp / f"xdg-{name.lower()}"
        folder.mkdir(parents=True, exist_ok=True)
        env[f"XDG_{name}_HOME"] = str(folder)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["LATENT_THREADS"] = str(THREADS)
    # eager decode steps, as the in-process engines the answers are compared with (and no
    # compile child per server with its own cache folder): tests/test_engine.py tests compiling
    env["LATENT_COMPILE"] = "false"
    if model_path() is not None:
        env["LATENT_MODEL"] = model_path()
    env.update({f"LATENT_{k.upper()}": v for k, v in settings.items()})
    return env


@functools.cache
def engine():
    from model.engine import Engine
    from model.params import RuntimeConfig

    return Engine.load(model_path(), RuntimeConfig(compile=False))   # as the servers under test


def expected(documents: list[tuple[str, str, str]], uri: str, line: int, character: int, **config):
    """The pipeline's suggestions for `uri` with `documents` (uri, language, text) open, as
    (text, ((line, char), (line, char))) pairs; computed with the server's thread count, and
    leaving this process's as it was."""
    import torch

    from completion import CompletionConfig, CompletionService
    from completion.types import Position

    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        service = CompletionService(engine(), CompletionConfig(**config))
        for doc_uri, language, text in documents:
            service.workspace.open(doc_uri, language, text, 1)
        result = service.complete(service.workspace.snapshot(uri), Position(line, character))
    finally:
        torch.set_num_threads(threads)
    return [(s.text, ((s.range.start.line, s.range.start.character), (s.range.end.line, s.range.end.character)))
            for s in result.suggestions]


def pairs(items) -> list:
    """(text, range) pairs of InlineCompletionItems or CompletionItems, to compare with expected()."""
    out = []
    for item in items:
        if isinstance(item, types.CompletionItem):
            text, r = item.text_edit.new_text, item.text_edit.range
        else:
            text, r = item.insert_text, item.range
        out.append((text, ((r.start.line, r.start.character), (r.end.line, r.end.character))))
    return out


# ---------------------------------------------------------------------------------------------
# A server session

CAPABILITIES = types.ClientCapabilities(
    general=types.GeneralClientCapabilities(position_encodings=["utf-8", "utf-16"]),  # we must get utf-16
    text_document=types.TextDocumentClientCapabilities(
        inline_completion=types.InlineCompletionClientCapabilities(),
        completion=types.CompletionClientCapabilities(),
        synchronization=types.TextDocumentSyncClientCapabilities()),
    window=types.WindowClientCapabilities(work_done_progress=True),
    workspace=types.WorkspaceClientCapabilities(configuration=True, workspace_folders=True),
)


class Session:
    """A `latent lsp` process and a pytest-lsp client, with what the server sent."""

    def __init__(self, client: LanguageClient) -> None:
        self.client = client
        self.statuses: list = []
        self.responses: collections.Counter = collections.Counter()   # request id -> answers
        self.errors: dict = {}                                           # request id -> ResponseError
        self.answers: dict = {}                                          # request id -> the last answer
        self.result: types.InitializeResult | None = None
        self._ids = 0

    @classmethod
    async def start(cls, env: dict[str, str], init_options: dict | None = None,
                    capabilities: types.ClientCapabilities = CAPABILITIES, args: tuple = (),
                    root: Path | None = None, wait: bool = True) -> "Session":
        client = make_test_lsp_client()
        session = cls(client)
        client.feature("latent/status")(lambda ls, params: session.statuses.append(params))
        original = client.protocol.handle_message

        def count(message):
            if hasattr(message, "id") and not hasattr(message, "method"):   # an answer: a result or an error
                session.responses[message.id] += 1
                session.answers[message.id] = message
                if getattr(message, "error", None) is not None:
                    session.errors[message.id] = message.error
            return original(message)

        client.protocol.handle_message = count
        await client.start_io(sys.executable, "-m", "lsp_server", "lsp", *args, env=env, cwd=str(ROOT))
        folders = [types.WorkspaceFolder(root.as_uri(), root.name)] if root else None
        session.result = await client.initialize_session(types.InitializeParams(
            capabilities=capabilities, initialization_options=init_options, workspace_folders=folders,
            root_uri=root.as_uri() if root else None))
        if wait:
            await session.ready()
        return session

    async def ready(self, timeout: float = 120.0, after: int = 0) -> object:
        """The first `ready` or `error` status after the first `after` statuses."""
        async def poll():
            while True:
                for status in self.statuses[after:]:
                    if status.state in ("ready", "error"):
                        return status
                await asyncio.sleep(0.05)
        return await asyncio.wait_for(poll(), timeout)

    # -- notifications -------------------------------------------------------------------------
    def open(self, uri: str, text: str, language: str = "python", version: int = 1) -> None:
        self.client.text_document_did_open(types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=uri, language_id=language, version=version, text=text)))

    def change(self, uri: str, version: int, *edits: tuple) -> None:
        """Edits as ((line, char, line, char), text), or (None, text) for the whole text."""
        changes = []
        for span, text in edits:
            if span is None:
                changes.append(types.TextDocumentContentChangeWholeDocument(text=text))
            else:
                r = types.Range(types.Position(span[0], span[1]), types.Position(span[2], span[3]))
                changes.append(types.TextDocumentContentChangePartial(range=r, text=text))
        self.client.text_document_did_change(types.DidChangeTextDocumentParams(
            types.VersionedTextDocumentIdentifier(uri=uri, version=version), changes))

    def close(self, uri: str) -> None:
        self.client.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri)))

    def configure(self, settings) -> None:
        self.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=settings))

    # -- requests --------------------------------------------------------------------------------
    def send(self, method: str, params, msg_id: str | None = None) -> tuple[str, asyncio.Future]:
        """Send a request with a known id (for $/cancelRequest); returns (id, future)."""
        self._ids += 1
        msg_id = msg_id or f"test-{self._ids}"
        future = self.client.protocol.send_request(method, params, msg_id=msg_id)
        return msg_id, asyncio.wrap_future(future)

    def inline_params(self, uri: str, line: int, character: int,
                      invoked: bool = False) -> types.InlineCompletionParams:
        kind = types.InlineCompletionTriggerKind.Invoked if invoked else types.InlineCompletionTriggerKind.Automatic
        return types.InlineCompletionParams(
            context=types.InlineCompletionContext(trigger_kind=kind),
            text_document=types.TextDocumentIdentifier(uri), position=types.Position(line, character))

    def send_inline(self, uri: str, line: int, character: int) -> tuple[str, asyncio.Future]:
        return self.send(types.TEXT_DOCUMENT_INLINE_COMPLETION, self.inline_params(uri, line, character))

    async def inline(self, uri: str, line: int, character: int, invoked: bool = False) -> list:
        params = self.inline_params(uri, line, character, invoked)
        result = await self.client.text_document_inline_completion_async(params)
        return list(result.items) if isinstance(result, types.InlineCompletionList) else list(result or [])

    async def completion(self, uri: str, line: int, character: int) -> types.CompletionList:
        return await self.client.text_document_completion_async(types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri), position=types.Position(line, character)))

    async def command(self, name: str, *arguments):
        return await self.client.workspace_execute_command_async(
            types.ExecuteCommandParams(command=name, arguments=list(arguments) or None))

    def write_raw(self, *bodies: bytes) -> None:
        """Write frames as they are (for malformed messages), in one write."""
        self.client._server.stdin.write(b"".join(b"Content-Length: %d\r\n\r\n" % len(b) + b for b in bodies))

    async def answer(self, msg_id, timeout: float = 60.0):
        """The answer to a request written with write_raw (its result or error, as sent)."""
        async def poll():
            while msg_id not in self.answers:
                await asyncio.sleep(0.02)
            return self.answers[msg_id]
        return await asyncio.wait_for(poll(), timeout)

    # -- the end -------------------------------------------------------------------------------
    def answered_once(self) -> bool:
        """Every request got exactly one answer (id null: errors for unreadable bodies)."""
        return all(n == 1 for msg_id, n in self.responses.items() if msg_id is not None)

    async def stop(self, timeout: float = 30.0) -> int:
        """shutdown + exit; the server's exit status."""
        await asyncio.wait_for(self.client.shutdown_session(), timeout)
        code = self.client._server.returncode
        await self.client.stop()
        return code

    async def kill(self) -> None:
        if self.client._server is not None and self.client._server.returncode is None:
            self.client._server.kill()
        if not self.client.stopped:
            await self.client.stop()
