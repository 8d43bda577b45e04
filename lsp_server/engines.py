"""Where the model runs: the one place an engine is built from settings.

- "inprocess": the engine lives in this process;
- "daemon": the shared engine daemon of this user (`latent engine serve`), started detached if
  none runs, so every editor window and terminal shares one model and one warm latent cache;
- "auto": the daemon when it can be reached or started, else in-process;
- "openai:URL": an OpenAI-compatible completions server (vLLM, SGLang, llama.cpp, or the
  daemon's own `--http` face). Plain http to a host other than this machine needs the user's
  `allow_insecure_remote = true`: the code around the cursor would cross the network in clear.
"""
from __future__ import annotations

import ipaddress
import logging
import urllib.parse
from pathlib import Path

from lsp_server.settings import Settings
from model.protocol import EngineProtocol, ModelLoadError

log = logging.getLogger(__name__)


def adapted_model(settings: Settings, where: str | Path | None):
    """The workspace whose model `latent adapt` fitted (model/adapted.py) a document or folder
    at `where` gets, when the settings use the bundled model on this machine and `adapted` is
    on; else None."""
    if where is None or settings.model is not None or not settings.adapted or settings.engine.startswith("openai:"):
        return None
    from model.adapted import adapted_for
    from model.loader import BUNDLED_DIR

    try:
        return adapted_for(where, BUNDLED_DIR)
    except OSError as e:
        log.warning("The adapted model of %s cannot be read (%s); using the bundled model.", where, e)
        return None


def make_engine(settings: Settings, adapted=None) -> EngineProtocol:
    """Load the engine the settings ask for — the adapted model of the workspace `adapted`
    (adapted_model's answer) in place of the bundled one; raises ModelLoadError with one
    sentence."""
    if settings.engine.startswith("openai:"):
        return _remote(settings)
    model = str(adapted.model_dir) if adapted is not None else settings.model
    if settings.engine in ("daemon", "auto"):
        try:   # an adapted model has a daemon of its own: each keeps its rows, and stays warm
            return _daemon(settings, model, adapted.home.name if adapted is not None else None)
        except ModelLoadError as e:
            if settings.engine == "daemon":
                raise
            log.warning("%s Running the model in-process instead.", e)
    return _inprocess(settings, model)


def _inprocess(settings: Settings, model: str | None) -> EngineProtocol:
    from model.engine import Engine
    from model.loader import BUNDLED_DIR

    if model is None and not (BUNDLED_DIR / "config.json").is_file():
        raise ModelLoadError(
            f"The bundled model is missing from {BUNDLED_DIR}; run `latent train` or set `model` "
            f"to a checkpoint folder.")
    return Engine.load(model, settings.runtime())


def _daemon(settings: Settings, model: str | None, key: str | None = None) -> EngineProtocol:
    from model.serve.client import EngineClient, RPCError, daemon_argv
    from model.serve.framing import model_socket_path

    socket_path = model_socket_path(key) if key else None
    argv = daemon_argv(model, settings.runtime(), socket_path=socket_path,
                       persist=socket_path.with_name(f"{socket_path.stem}-cache.msgpack") if socket_path else None,
                       idle_exit=settings.daemon_idle_minutes * 60 if settings.daemon_idle_minutes else None)
    try:
        client = EngineClient(socket_path, spawn=argv)
    except RPCError as e:
        raise ModelLoadError(f"The shared engine daemon is not available: {str(e).rstrip('.')}.") from None
    if not _same_model(client.info.get("model_dir"), model):
        client.close()
        raise ModelLoadError(
            f"The running engine daemon serves {client.info.get('model')!r}, not "
            f"{model or 'bundled'!r}; stop it with `latent engine stop` or use engine = \"inprocess\".")
    return client


def _same_model(served_dir: str | None, wanted: str | None) -> bool:
    from pathlib import Path

    from model.loader import BUNDLED_DIR, resolve_model_dir

    if not served_dir:
        return False
    try:
        wanted_dir = resolve_model_dir(wanted if wanted is not None else BUNDLED_DIR)
    except ModelLoadError:
        return False
    return Path(served_dir).resolve() == wanted_dir.resolve()


def _remote(settings: Settings) -> EngineProtocol:
    from model.fim import FORMATS
    from model.serve.remote import RemoteEngine, RemoteError
    from model.tokenizer import TokenizerError

    url = settings.engine[len("openai:"):]
    if plain_http_elsewhere(url) and not settings.allow_insecure_remote:
        raise ModelLoadError(f"The engine {url} would receive your code unencrypted on another machine; use https, "
                             "or set allow_insecure_remote = true in your config file if you trust that network.")
    try:
        return RemoteEngine(url, model=settings.model, api_key_env=settings.api_key_env,
                            tokenizer_dir=settings.tokenizer,
                            fim_format=settings.fim_format if settings.fim_format in FORMATS else "deepseek")
    except (RemoteError, TokenizerError) as e:
        raise ModelLoadError(str(e)) from None


def plain_http_elsewhere(url: str) -> bool:
    """An http:// URL whose host is not this machine (by name or loopback address; names are not
    resolved, so only `localhost` counts)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "http":
        return False
    host = (parsed.hostname or "").rstrip(".").lower()
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def describe(engine: EngineProtocol) -> str:
    """A short name for status lines: the model and where it runs."""
    return getattr(engine, "model_name", None) or type(engine).__name__


def one_sentence(error: Exception, name: str) -> str:
    """A failed load as one sentence for a status line or a message (LSP, repl)."""
    text = " ".join(str(error).split()) or type(error).__name__
    if type(error) not in (ModelLoadError, ValueError):   # others: name the model and the error type
        text = f"The model {name} could not be loaded ({type(error).__name__}: {text})."
    return text if text.endswith((".", "!", "?")) else text + "."
