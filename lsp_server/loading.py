"""The model loads in the background: after `initialized`, and again when settings that the
engine depends on change. Meanwhile completions get empty results; progress goes to the
client as `$/progress` (when it supports work-done progress) and as `latent/status`.
A failure is one sentence in `window/showMessage`; the server keeps running without a model.
A remote engine is named once in `window/showMessage` (info): the user learns where code goes.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time

from lsprotocol import types

from lsp_server import status
from lsp_server.engines import adapted_model, describe, make_engine, one_sentence

log = logging.getLogger(__name__)
_tokens = itertools.count(1)


async def ensure_model(session) -> None:
    """Load the engine the settings ask for, unless the last load (or failure) was for them."""
    if session.loading:
        return  # the running load compares the settings again when it ends
    session.loading = True
    try:
        while _key(session) != session.attempted_key:
            settings = session.settings
            session.attempted_key = key = _key(session)
            await _load(session, settings, key[1])
    finally:
        session.loading = False


def _key(session) -> tuple:
    """What the engine depends on: the settings', and the workspace's adapted model (`latent
    adapt`) where the settings take it."""
    return session.settings.engine_key(), adapted_model(session.settings, session.workspace_root())


async def _load(session, settings, adapted) -> None:
    name, server, state = settings.model or "bundled", session.server, session.status
    if adapted is not None:
        name = f"bundled, adapted to {adapted.root.name}"
    session.unload()
    state.state, state.model, state.message = "loading", name, f"Loading the model {name}."
    status.send(session)
    started = time.perf_counter()
    engine_future = in_thread(make_engine, settings, adapted)
    token = await _progress_begin(server, f"Loading the model {name}")
    try:
        engine = await engine_future
        session.install(engine, settings)
    except Exception as e:  # ModelLoadError and the pipeline's ValueError read as sentences
        message = one_sentence(e, name)
        log.error("%s", message)
        state.state, state.message = "error", message
        server.window_show_message(types.ShowMessageParams(type=types.MessageType.Error, message=f"Latent: {message}"))
        _progress_end(server, token, message)
        status.send(session)
        return
    seconds = time.perf_counter() - started
    if adapted is None:
        name = describe(engine)   # e.g. "bundled (daemon)" or "model @ host:port"
    state.state, state.model, state.message = "ready", name, f"Loaded {name} in {seconds:.1f} s."
    log.info("Loaded the model %s in %.1f s.", name, seconds)
    _tell_where_code_goes(session, settings, name)
    _progress_end(server, token, state.message)
    status.send(session)


def _tell_where_code_goes(session, settings, name: str) -> None:
    if not settings.engine.startswith("openai:"):
        return
    url = settings.engine[len("openai:"):]
    if url not in session.told_remote:
        session.told_remote.add(url)
        session.server.window_show_message(types.ShowMessageParams(
            type=types.MessageType.Info,
            message=f"Latent: completions come from {url} ({name}), which receives the code around your cursor."))


def in_thread(fn, *args) -> asyncio.Future:
    """Run fn(*args) on a daemon thread (an exiting server never waits for a load)."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(ok: bool, value) -> None:
        if not future.done():
            future.set_result(value) if ok else future.set_exception(value)

    def target() -> None:
        try:
            outcome = (True, fn(*args))
        except BaseException as e:
            outcome = (False, e)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop closed while we loaded
            pass

    threading.Thread(target=target, name="latent-load", daemon=True).start()
    return future


async def _progress_begin(server, message: str):
    window = getattr(server.client_capabilities, "window", None)
    if not (window and window.work_done_progress):
        return None
    token = f"latent-load-{next(_tokens)}"
    try:
        await asyncio.wait_for(server.work_done_progress.create_async(token), 10)
    except Exception as e:
        log.debug("No progress: the client did not create the token (%s).", e)
        return None
    server.work_done_progress.begin(token, types.WorkDoneProgressBegin(title="Latent", message=message))
    return token


def _progress_end(server, token, message: str) -> None:
    if token is not None:
        server.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))
