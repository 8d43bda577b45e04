"""The model loads in the background: after `initialized`, and again when settings that the
engine depends on change. Meanwhile completions get empty results; progress goes to the
client as `$/progress` (when it supports work-done progress) and as `latent/status`.
A failure is one sentence in `window/showMessage`; the server keeps running without a model.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time

from lsprotocol import types

from lsp_server import status
from lsp_server.engines import describe
from lsp_server.engines import make_engine

log = logging.getLogger(__name__)
_tokens = itertools.count(1)


async def ensure_model(ls) -> None:
    """Load the engine the settings ask for, unless the last load (or failure) was for them."""
    if ls.loading:
        return  # the running load compares the settings again when it ends
    ls.loading = True
    try:
        while ls.settings.engine_key() != ls.attempted_key:
            settings = ls.settings
            ls.attempted_key = settings.engine_key()
            await _load(ls, settings)
    finally:
        ls.loading = False


async def _load(ls, settings) -> None:
    name = settings.model or "bundled"
    ls.unload()
    ls.status.state, ls.status.model, ls.status.message = "loading", name, f"Loading the model {name}."
    status.send(ls)
    started = time.perf_counter()
    engine_future = in_thread(make_engine, settings)
    token = await _progress_begin(ls, f"Loading the model {name}")
    try:
        engine = await engine_future
        ls.install(engine, settings)
    except Exception as e:  # ModelLoadError and CompletionConfig's ValueError read as sentences
        message = one_sentence(e, name)
        log.error("%s", message)
        ls.status.state, ls.status.message = "error", message
        ls.window_show_message(types.ShowMessageParams(type=types.MessageType.Error, message=f"Latent: {message}"))
        _progress_end(ls, token, message)
        status.send(ls)
        return
    seconds = time.perf_counter() - started
    name = describe(engine)   # e.g. "bundled (daemon)" or "model @ host:port"
    ls.status.state, ls.status.model = "ready", name
    ls.status.message = f"Loaded {name} in {seconds:.1f} s."
    ls.status.refresh_cache(None)
    log.info("Loaded the model %s in %.1f s.", name, seconds)
    _progress_end(ls, token, ls.status.message)
    status.send(ls)


def one_sentence(error: Exception, name: str) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    if type(error).__name__ not in ("ModelLoadError", "ValueError"):
        text = f"The model {name} could not be loaded ({type(error).__name__}: {text})."
    return text if text.endswith((".", "!", "?")) else text + "."


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


async def _progress_begin(ls, message: str):
    window = getattr(ls.client_capabilities, "window", None)
    if not (window and window.work_done_progress):
        return None
    token = f"latent-load-{next(_tokens)}"
    try:
        await asyncio.wait_for(ls.work_done_progress.create_async(token), 10)
    except Exception as e:
        log.debug("No progress: the client did not create the token (%s).", e)
        return None
    ls.work_done_progress.begin(token, types.WorkDoneProgressBegin(title="Latent", message=message))
    return token


def _progress_end(ls, token, message: str) -> None:
    if token is not None:
        ls.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))
