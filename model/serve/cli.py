"""`latent engine serve | stop | status` (also `python -m model.serve …`).

The runtime flags of `serve` (device, dtype, quantize, threads, cache size, …) are derived
from RuntimeConfig's fields (model/options.py); every error is one line and exit status 2.
The socket path and the `--http` address are checked, and the HTTP port bound, before the
model loads; once serving, one line on stdout says where the face listens and where its key is.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from model import options
from model.params import OptionError, RuntimeConfig
from model.protocol import ModelLoadError

from . import keys
from .client import EngineClient
from .framing import RPCError, check_socket_path, default_socket_path, sentence
from .openai_http import LOOPBACK, FaceServer

EXIT_ERROR = 2
PERSIST_FILE = "cache.msgpack"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    socket_path = args.socket or default_socket_path()
    try:
        if args.command == "serve":
            runtime = options.build(RuntimeConfig, options.from_arguments(RuntimeConfig, args))
            return _serve(args, runtime, socket_path)
        client = EngineClient(socket_path)
        if args.command == "status":
            stats = client.stats()
            print(f"serving {stats.get('model')} (pid {client.info.get('pid')}) at {socket_path}; "
                  f"{stats.get('requests', 0)} requests, {stats.get('cache_tokens', 0)} cached tokens")
        else:
            client.call("shutdown")
            print(f"stopped the daemon at {socket_path}")
        return 0
    except (OptionError, ModelLoadError, RPCError, OSError) as e:
        print(f"latent: error: {sentence(e)}", file=sys.stderr)
        return EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latent engine", description="The shared engine daemon.")
    sub = parser.add_subparsers(dest="command", required=True)
    socket_help = "the daemon's socket (default: $XDG_RUNTIME_DIR/latent/engine.sock)"
    serve = sub.add_parser("serve", help="load the model and serve it on a Unix socket")
    serve.add_argument("--model", default=None, help="checkpoint folder or cached repo id (default: the bundled model)")
    serve.add_argument("--socket", type=Path, default=None, help=socket_help)
    serve.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS",
                       help="exit after this many seconds without clients (default: never)")
    serve.add_argument("--persist", default=None, metavar="FILE",
                       help=f"keep the hottest cache entries in this file across restarts "
                            f"(default: {PERSIST_FILE} beside the socket; 'none' to disable)")
    serve.add_argument("--http", default=None, metavar="HOST:PORT",
                       help="also serve OpenAI-compatible /v1/completions on this loopback address "
                            "(127.0.0.1:PORT or [::1]:PORT; port 0 picks a free one)")
    serve.add_argument("--api-key-file", type=Path, default=None, metavar="FILE",
                       help="with --http: a file only you can read (mode 0600) whose first line is the key clients must "
                            "send as 'Authorization: Bearer KEY' (default: a new random key, written to "
                            "engine.key beside the socket)")
    serve.add_argument("--api-key", default=None, metavar="KEY",
                       help="with --http: the key itself (other users can see it in the process list; "
                            "prefer --api-key-file)")
    options.add_arguments(serve, RuntimeConfig)
    for name, text in (("stop", "stop the daemon"), ("status", "show the daemon's model, pid and cache")):
        sub.add_parser(name, help=text).add_argument("--socket", type=Path, default=None, help=socket_help)
    return parser


def persist_path(raw: str | None, socket_path: Path) -> Path | None:
    """The cache file: `raw`, else cache.msgpack beside the socket; None when raw is "none"."""
    if raw is None:
        return socket_path.with_name(PERSIST_FILE)
    return None if raw.strip().lower() == "none" else Path(raw).expanduser()


def _serve(args: argparse.Namespace, runtime: RuntimeConfig, socket_path: Path) -> int:
    from model.engine import Engine  # torch: only the serving process loads it

    from .daemon import EngineDaemon

    check_socket_path(socket_path)
    key = _api_key(args) if args.http else None
    face = _bind_http(args.http) if args.http else None   # a bad address or a taken port costs no model load
    published = False
    try:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        engine = Engine.load(args.model, runtime)
        daemon = EngineDaemon(engine, socket_path, idle_exit_s=args.idle_exit,
                              persist=persist_path(args.persist, socket_path))
        daemon.bind()
        keys.withdraw(socket_path)   # left by a daemon that was killed
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: daemon.stop())   # `kill` saves the cache too
        if face is not None:
            assert key is not None, "--http gives both the face and its key"
            face.start(daemon, key)
            key_file = keys.publish(socket_path, key, face.address)
            published = True
            daemon.http = face
            print(f"latent engine: HTTP on {face.address} (API key in {key_file})", flush=True)
        daemon.serve_forever()
    finally:
        if face is not None:
            face.close()
        if published:
            keys.withdraw(socket_path)
    return 0


def _api_key(args: argparse.Namespace) -> str:
    if args.api_key_file is not None:
        try:
            return keys.read_key_file(args.api_key_file)
        except keys.ExposedKey as e:
            raise OptionError(f"--api-key-file is refused: {sentence(e)}") from None
        except (OSError, ValueError) as e:
            raise OptionError(f"--api-key-file cannot be read: {sentence(e)}") from None
    if args.api_key is not None:
        if not args.api_key.strip():
            raise OptionError("--api-key cannot be empty.")
        return args.api_key.strip()
    return keys.new_key()


def _bind_http(raw: str) -> FaceServer:
    host, port = _http_address(raw)
    try:
        return FaceServer(host, port)
    except OSError as e:
        raise OptionError(f"--http cannot listen on {raw}: {e.strerror or e}.") from None


def _http_address(raw: str) -> tuple[str, int]:
    host, _, port = raw.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host or "127.0.0.1"
    if not (port.isascii() and port.isdigit()) or int(port) > 65535 or host not in LOOPBACK:
        raise OptionError(f"--http takes a loopback HOST:PORT such as 127.0.0.1:8012 or [::1]:8012, not {raw!r}; "
                          f"the HTTP face is never served beyond this machine.")
    return host, int(port)
