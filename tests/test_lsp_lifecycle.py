"""Server lifecycle end to end: settings from every layer, a failed model load, reloading,
requests while no model is ready, shutdown / exit, and the TCP transport."""
from __future__ import annotations

import asyncio
import socket
import sys
import threading

import pytest
from lsprotocol import types
from pygls.lsp.client import LanguageClient

from lsp_helpers import ROOT, SUGGESTS, SUGGESTS_END as END, SUGGESTS_LANGUAGE, Session, expected, model_path, pairs
from lsp_helpers import server_env


async def test_failed_load_is_one_message_then_settings_reload_the_model(tmp_path):
    config = tmp_path / "xdg-config" / "latent" / "config.toml"
    config.parent.mkdir(parents=True)
    lines = "max_new_tokens_line = 7\nsnippet_tokens = 100\ntemperature = 0.5\n"
    config.write_text(lines + f'model = "{tmp_path / "no-such-model"}"\n')   # the model is the user's to choose
    env = server_env(tmp_path, snippet_tokens="200", temperature="0.3")
    env.pop("LATENT_MODEL", None)
    capabilities = types.ClientCapabilities(window=types.WindowClientCapabilities(work_done_progress=True))
    s = await Session.start(env, init_options={"latent": {"temperature": 0}}, capabilities=capabilities)
    try:
        assert s.statuses[-1].state == "error"
        [message] = s.client.messages
        assert message.type == types.MessageType.Error
        assert "no-such-model" in message.message and message.message.count(". ") == 0   # one sentence
        # the server stays up: completions are empty, not errors
        s.open("file:///a.txt", SUGGESTS, SUGGESTS_LANGUAGE)
        assert not (await s.completion("file:///a.txt", *END)).items
        # settings from each layer: file < env < initializationOptions
        settings = (await s.command("latent.stats"))["settings"]
        assert (settings["max_new_tokens_line"], settings["snippet_tokens"], settings["temperature"]) == (7, 200, 0.0)
        # a client without inline completion gets completion items ("auto")
        assert s.result.capabilities.completion_provider is not None

        before = len(s.statuses)
        config.write_text(lines + (f'model = "{model_path()}"\n' if model_path() else ""))   # none: the bundled model
        s.configure({"latent": {"temperature": 0, "maxNewTokensLine": 48}})   # a client sends all its settings
        assert (await s.ready(after=before)).state == "ready"
        assert s.client.messages == [message]
        want = expected([("file:///a.txt", SUGGESTS_LANGUAGE, SUGGESTS)], "file:///a.txt", *END, snippet_tokens=200)
        assert want and pairs((await s.completion("file:///a.txt", *END)).items[:1]) == want   # the document survived
        assert await s.stop() == 0
    finally:
        await s.kill()


class HeldRemote:
    """An OpenAI-compatible engine that never finishes answering: it reads a request, then sends
    one more byte of a header line every 0.2 s (so no read of its client times out) until the
    client hangs up. A load that asks it for its models lasts as long as the server process."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/v1"
        self.asked = threading.Event()       # a request arrived
        self.hung_up = threading.Event()     # its client went away while it was answering
        self._closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:                      # closed before anyone asked
            return
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            self.asked.set()
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Wait: ")
                while not self._closed.wait(0.2):
                    conn.sendall(b"a")
            except OSError:
                self.hung_up.set()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()


async def test_requests_while_loading_are_empty_and_exit_without_shutdown_is_status_1(tmp_path):
    """The model comes from a remote engine that never finishes answering (HeldRemote), so the
    load is under way for as long as the process lives: exit must end it all the same."""
    remote = HeldRemote()
    env = server_env(tmp_path, engine=f"openai:{remote.url}")
    env.pop("LATENT_MODEL", None)                                 # no model named: the load asks for the list
    s = await Session.start(env, wait=False)
    try:
        assert await asyncio.to_thread(remote.asked.wait, 60)    # the load is under way …
        s.open("file:///b.txt", SUGGESTS, SUGGESTS_LANGUAGE)
        assert await s.inline("file:///b.txt", *END) == []      # … so completions are empty
        assert s.result.capabilities.completion_provider is None  # inline-capable client, "auto"
        s.client.exit(None)
        code = await asyncio.wait_for(s.client._server.wait(), 60)   # against a hang: a load that held exit up never ends
        assert code == 1
        assert {status.state for status in s.statuses} == {"loading"}   # the process ended with the load unfinished
        assert await asyncio.to_thread(remote.hung_up.wait, 60)  # and its request went with it
    finally:
        await s.kill()
        remote.close()


async def test_tcp_transport(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lsp_server", "lsp", "--tcp", f"127.0.0.1:{port}",
        env=server_env(tmp_path), cwd=str(ROOT), stderr=asyncio.subprocess.DEVNULL)
    client = LanguageClient("test", "1")
    statuses = []
    client.feature("latent/status")(lambda ls, params: statuses.append(params.state))
    try:
        for _ in range(200):
            try:
                await client.start_tcp("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("the server did not listen")
        await client.initialize_async(types.InitializeParams(capabilities=types.ClientCapabilities()))
        client.initialized(types.InitializedParams())
        while "ready" not in statuses:
            assert "error" not in statuses
            await asyncio.sleep(0.05)
        uri = "file:///c.txt"
        client.text_document_did_open(
            types.DidOpenTextDocumentParams(types.TextDocumentItem(uri, SUGGESTS_LANGUAGE, 1, SUGGESTS)))
        result = await client.text_document_inline_completion_async(types.InlineCompletionParams(
            context=types.InlineCompletionContext(types.InlineCompletionTriggerKind.Invoked),
            text_document=types.TextDocumentIdentifier(uri), position=types.Position(*END)))
        want = expected([(uri, SUGGESTS_LANGUAGE, SUGGESTS)], uri, *END)
        assert want and pairs(result.items[:1]) == want   # best first
        await client.shutdown_async(None)
        client.exit(None)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
        await client.stop()


async def test_a_settings_problem_at_start_is_shown_to_the_user(tmp_path):
    """A typo in the config file or initializationOptions is a warning the editor shows, with
    a did-you-mean, not only a log line."""
    config = tmp_path / "xdg-config" / "latent" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("max_promt_tokens = 100\n")
    s = await Session.start(server_env(tmp_path), init_options={"temperture": 0.5})
    try:
        await s.ready()
        shown = [m.message for m in s.client.messages if m.type == types.MessageType.Warning]
        assert "Latent: Unknown setting 'max_promt_tokens' is ignored; did you mean 'max_prompt_tokens'?" in shown
        assert "Latent: Unknown setting 'temperture' is ignored; did you mean 'temperature'?" in shown
    finally:
        await s.kill()
