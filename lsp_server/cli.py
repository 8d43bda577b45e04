"""The `latent` command.

    latent lsp [--tcp HOST:PORT]                  the language server (stdio by default)
    latent complete FILE:LINE:COL                 print the suggestion at a position (1-based)
    latent complete --stdin --language L [--at LINE:COL]
    latent info                                   the model, its parameters, the cache budget
    latent adapt [FOLDER] [--minutes M | --forget]  fit the bundled model to a workspace (lsp_server/adapt.py)
    latent repl …                                 a Python prompt with ghost text (lsp_server/repl.py)
    latent engine serve | stop | status           the shared engine daemon (model/serve/)
    latent train …                                train the bundled model (model/train/)

`complete` prints the suggestion and nothing else on stdout (nothing when there is none).
Settings come from the config file and LATENT_* variables, then from the flags here (the
flags and their help come from the settings' own declarations: settings.add_arguments).
Every error is one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)
EXIT_ERROR = 2
COMMANDS = ("lsp", "complete", "info", "adapt", "repl", "engine", "train")
DELEGATED = {"repl": "lsp_server.repl", "engine": "model.serve", "train": "model.train"}  # own parsers


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        return _delegate(argv[0], argv[1:])
    try:
        args = _parser().parse_args(argv)
        if args.command is None:
            raise UsageError(f"a command is required: {', '.join(COMMANDS)} (see `latent --help`)")
        return args.run(args)
    except UsageError as e:
        return _fail(str(e))
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        return 130


# ---------------------------------------------------------------------------------------------
# Arguments

def _parser() -> argparse.ArgumentParser:
    from lsp_server import VERSION, settings

    parser = _Parser(prog="latent", description="Local fill-in-the-middle code completion: "
                     "a language server and a command line around one DeepSeek-architecture model.")
    parser.add_argument("--version", action="version", version=f"latent {VERSION}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    lsp = sub.add_parser("lsp", help="run the language server", description=(
        "Run the language server on stdio (or on a TCP port). Editors start this."))
    lsp.add_argument("--tcp", metavar="HOST:PORT", help="listen on a TCP port instead of stdio")
    lsp.add_argument("--stdio", action="store_true",
                     help="stdio, the default (accepted because some clients, e.g. vscode-languageclient, pass it)")
    settings.add_arguments(lsp)
    lsp.set_defaults(run=_lsp)

    complete = sub.add_parser("complete", help="print the suggestion at a position", description=(
        "Print the suggestion at a position and nothing else on stdout (nothing when there is none). "
        "Positions are 1-based, as compilers print them; COL counts characters."))
    complete.add_argument("location", nargs="?", metavar="FILE:LINE:COL", help="the file and the cursor in it")
    complete.add_argument("--stdin", action="store_true", help="read the text from stdin")
    complete.add_argument("--language", metavar="L",
                          help="language id (python, rust, …); from the file name by default")
    complete.add_argument("--at", metavar="LINE:COL", help="with --stdin: the cursor (default: the end of the text)")
    complete.add_argument("-v", "--explain", action="store_true",
                          help="on stderr: where the answer came from, why it is empty, and the timings in ms")
    settings.add_arguments(complete)
    complete.set_defaults(run=_complete)

    info = sub.add_parser("info", help="describe the model", description=(
        "Load the model and print its name, parameters, memory and cache budget."))
    info.add_argument("--json", action="store_true", help="print the figures as JSON")
    settings.add_arguments(info)
    info.set_defaults(run=_info)

    adapt = sub.add_parser("adapt", help="fit a copy of the bundled model to a workspace's code", description=(
        "Fine-tune a copy of the bundled model on a workspace's source files, on this machine's CPU at the "
        "lowest priority, for adapt_minutes; lines that may hold secrets are left out. The copy is kept under "
        "~/.cache/latent/adapt/ and used for that workspace's documents. Nothing leaves the machine."))
    adapt.add_argument("folder", nargs="?", metavar="FOLDER", help="the workspace (default: the current folder)")
    adapt.add_argument("--minutes", type=float, metavar="M", help="time budget (default: the adapt_minutes setting)")
    adapt.add_argument("--forget", action="store_true", help="remove the adapted model and all kept for FOLDER")
    from model.adapted import TRAINED

    adapt.add_argument("--train", default=TRAINED[0], choices=TRAINED,
                       help="which weights learn: all (the default: the most learnt, general code kept; a 30 MB "
                            "copy), low-rank adapters (lora: 4 MB), the blocks without embedding and head, the "
                            "attention, the upper half")
    adapt.add_argument("-v", "--verbose", action="store_true", help="the run's log on stderr")
    settings.add_arguments(adapt)
    adapt.set_defaults(run=_adapt)

    for name, text in (("repl", "a Python prompt with ghost text (see `latent repl --help`)"),
                       ("engine", "the shared engine daemon: serve | stop | status (see `latent engine --help`)"),
                       ("train", "train the bundled model (see `latent train --help`)")):
        sub.add_parser(name, help=text, add_help=False)
    return parser


def _settings(args, report: bool = True):
    """Settings from the config file, the environment and the command line, the store of
    their layers, and the warnings — each said on stderr (`latent lsp` sends them to the
    client instead: report=False)."""
    from lsp_server.settings import from_command_line

    try:
        settings, store, warnings = from_command_line(args)
    except ValueError as e:
        raise UsageError(str(e).rstrip(".")) from None
    for warning in dict.fromkeys(warnings) if report else ():
        print(f"latent: warning: {warning}", file=sys.stderr)
    return settings, store, warnings


# ---------------------------------------------------------------------------------------------
# Commands

def _lsp(args) -> int:
    from lsp_server import logs
    from lsp_server.server import create
    from lsp_server.session import Session

    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--tcp takes HOST:PORT, not {args.tcp!r}")
    settings, store, warnings = _settings(args, report=False)
    logs.setup(settings.log_level)
    session = Session(store, warnings)
    server = create(session)
    if args.tcp:
        with contextlib.suppress(SystemExit):
            server.start_tcp(host, int(port))
    else:
        # The protocol owns the real stdout; anything else written to fd 1 goes to stderr.
        protocol_out = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        server.serve_stdio(sys.stdin.buffer, protocol_out)
    session.close()
    code = session.exit_code if session.exit_code is not None else (0 if session.shut_down else 1)
    sys.stderr.flush()
    os._exit(code)  # never wait on a stdin read the client left open


def _complete(args) -> int:
    from completion.document import Lines

    if args.stdin == bool(args.location):
        raise UsageError("give either FILE:LINE:COL or --stdin")
    if args.at and not args.stdin:
        raise UsageError("--at goes with --stdin; a file's position is FILE:LINE:COL")
    if args.stdin:
        if not args.language:
            raise UsageError("--stdin needs --language")
        text = sys.stdin.read()
        uri, path, language, where = "untitled:stdin", None, args.language, Path.cwd()
        lines = Lines(text)
        position = _position(lines, *_line_col(args.at)) if args.at else lines.position(len(text))
    else:
        file, line, col = _location(args.location)
        text = _read(file)
        uri, path, where = file.resolve().as_uri(), _display_path(file), file.resolve()
        language = args.language or _language_of(file)
        position = _position(Lines(text), line, col)
    settings, _, _ = _settings(args)
    with _quiet(args.log_level):
        suggestion = _suggest(settings, uri, path, language, text, position, args.explain, where)
    sys.stdout.write(suggestion)
    if suggestion and sys.stdout.isatty() and not suggestion.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


def _suggest(settings, uri: str, path, language: str, text: str, position, explain: bool = False,
             where: Path | None = None) -> str:
    import time

    from completion import CompletionService, skip_reason
    from completion.types import REASONS, Snapshot

    started = time.perf_counter()
    config = settings.completion_config()
    why = skip_reason(Snapshot(uri, language, text, 1, path), position, config)
    if why:   # decided before the model loads: the shell bindings ask on every key press
        if explain:
            print(f"latent: no suggestion — {REASONS.get(why, why)} (the model was not loaded)", file=sys.stderr)
        else:
            _say_language_off(why)
        return ""
    engine = _load(settings, where)
    loaded = time.perf_counter()
    try:
        service = CompletionService(engine, config)
    except ValueError as e:
        raise UsageError(str(e).rstrip(".")) from None
    service.workspace.open(uri, language, text, 1, path)
    result = service.complete(service.workspace.snapshot(uri), position)
    log.info("%s/%s, %s ms, engine %s", result.source, result.mode, result.timings_ms, result.engine_stats)
    if explain:
        print(explanation(result, (loaded - started) * 1e3, engine), file=sys.stderr)
    else:
        _say_language_off(result.reason)
    return result.suggestions[0].text if result.suggestions else ""


def _say_language_off(why: str) -> None:
    """A whole file gets nothing: say why, once (other reasons are per position: silence)."""
    from completion.types import REASONS

    if why.startswith("language-"):
        print(f"latent: no suggestion: {REASONS[why]}", file=sys.stderr)


def explanation(result, load_ms: float, engine) -> str:
    """What `latent complete -v` prints: the outcome, the reason when empty, and the timings."""
    from completion.types import REASONS

    stats = result.engine_stats or {}
    timings = ", ".join(f"{stage} {ms:.1f}" for stage, ms in result.timings_ms.items() if stage != "total")
    lines = [f"latent: {result.mode} completion, answered by {result.source}: "
             + (f"{len(result.suggestions[0].text)} characters" if result.suggestions
                else f"no suggestion — {REASONS.get(result.reason, result.reason or 'none')}")]
    lines.append(f"latent: model {getattr(engine, 'model_name', '?')} loaded in {load_ms:.0f} ms; "
                 f"pipeline {sum(result.timings_ms.values()):.1f} ms ({timings or 'no stages'})")
    if stats:
        lines.append(f"latent: prompt {stats.get('prompt_tokens', 0)} tokens, {stats.get('reused_tokens', 0)} "
                     f"reused, {stats.get('prefilled_tokens', 0)} prefilled in {stats.get('prefill_ms', 0):.1f} ms; "
                     f"{stats.get('generated_tokens', 0)} generated in {stats.get('decode_ms', 0):.1f} ms "
                     f"({stats.get('finish_reason') or 'done'})")
    return "\n".join(lines)


def _info(args) -> int:
    from lsp_server.engines import adapted_model

    settings, _, _ = _settings(args)
    adapted = adapted_model(settings, Path.cwd())
    with _quiet(args.log_level):
        engine = _load(settings, Path.cwd())
        stats = engine.stats()
    from model.serve.framing import plain

    stats = plain({k: v for k, v in stats.items() if k not in ("last_request", "requests", "lookups")})
    if adapted is not None:
        stats["adapted_to"] = str(adapted.root)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    per_token = stats.get("latent_bytes_per_token") or 0
    budget = stats.get("cache_budget_bytes", settings.cache_mb << 20)
    model = f"{stats.get('model')} ({stats.get('model_type', '?')})"
    if adapted is not None:
        model = f"bundled, adapted to {adapted.root} by `latent adapt` ({stats.get('model_type', '?')})"
    rows = [
        ("model", model),
        ("parameters", _count(stats.get("parameters"))),
        ("weights", f"{_bytes(stats.get('weight_bytes'))} ({stats.get('quantize') or stats.get('dtype')})"),
        ("device", f"{stats.get('device')}, {_threads(stats.get('threads'))}"),
        ("fim format", f"{stats.get('fim_format') or 'none'}, {_layouts(stats.get('fim_layouts'))}"
                       f" (setting fim_layout = {settings.fim_layout})"),
        ("context", f"{stats.get('max_context')} tokens"),
        ("latent cache", f"{per_token} bytes per token; budget {_bytes(budget)}"
                         + (f" ≈ {_count(budget // per_token)} tokens" if per_token else "")),
    ]
    if "resident_bytes" in stats:
        rows.append(("memory", f"{_bytes(stats['resident_bytes'])} resident"))
    rows.append(("prompt", f"{settings.max_prompt_tokens} tokens, {settings.prefix_fraction:.0%} before the cursor, "
                           f"{settings.snippet_tokens} for snippets; up to {settings.max_new_tokens_line} / "
                           f"{settings.max_new_tokens_block} new tokens (line / block)"))
    rows.append(("config", _config_files()))
    for name, value in rows:
        print(f"{name:<13} {value}")
    return 0


def _adapt(args) -> int:
    from lsp_server import adapt

    if args.minutes is not None and not 0 < args.minutes <= 600:
        raise UsageError(f"--minutes takes a number of minutes from 0 to 600, not {args.minutes:g}")
    settings, _, _ = _settings(args)
    return adapt.run(args, settings)


def _layouts(declared) -> str:
    """What `latent info` says of the FIM layouts the model was trained on (`--json`: the list)."""
    if not declared:
        return "layouts not declared (psm is used)"
    return f"layouts {', '.join(declared)} declared"


def _delegate(command: str, argv: list[str]) -> int:
    """`latent repl` / `engine` / `train`: command lines with parsers of their own."""
    module_name = DELEGATED[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        return _fail(f"`latent {command}` is not available: {module_name} is not installed")
    try:
        return int(module.main(argv) or 0)
    except SystemExit as e:  # argparse inside: --help (0) or a usage error (already printed)
        return e.code if isinstance(e.code, int) else EXIT_ERROR


# ---------------------------------------------------------------------------------------------
# Helpers

def _load(settings, where=None):
    """The engine of the settings; for a document or folder `where`, its workspace's adapted
    model where there is one (`latent adapt`)."""
    from lsp_server.engines import adapted_model, make_engine
    from model.loader import ModelLoadError

    try:
        return make_engine(settings, adapted_model(settings, where))
    except ModelLoadError as e:
        raise UsageError(str(e).rstrip(".")) from None


def _location(text: str) -> tuple[Path, int, int]:
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not parts[0]:
        raise UsageError(f"expected FILE:LINE:COL, got {text!r}")
    return Path(parts[0]), *_line_col(f"{parts[1]}:{parts[2]}")


def _line_col(text: str) -> tuple[int, int]:
    line, sep, col = text.partition(":")
    if not sep or not line.isdigit() or not col.isdigit() or int(line) < 1 or int(col) < 1:
        raise UsageError(f"expected LINE:COL as positive whole numbers, got {text!r}")
    return int(line), int(col)


def _position(lines, line: int, col: int):
    """The LSP position (0-based, UTF-16) of a 1-based line and character column."""
    from completion.document import utf16_length
    from completion.types import Position

    if line > lines.count:
        raise UsageError(f"line {line} is past the end of the text, which has {lines.count} lines")
    text = lines.line_text(line - 1)
    if col - 1 > len(text):
        raise UsageError(f"column {col} is past the end of line {line}, which has {len(text)} characters")
    return Position(line - 1, utf16_length(text[:col - 1]))


def _read(file: Path) -> str:
    try:
        with open(file, encoding="utf-8", newline="") as f:
            return f.read()
    except UnicodeDecodeError:
        raise UsageError(f"{file} is not UTF-8 text") from None
    except OSError as e:
        raise UsageError(f"cannot read {file}: {e.strerror or e}") from None


def _language_of(file: Path) -> str:
    from completion.languages import EXTENSIONS

    return EXTENSIONS.get(file.suffix.lower(), "plaintext")


def _display_path(file: Path) -> str:
    try:
        return file.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return file.name


@contextlib.contextmanager
def _quiet(level: str | None):
    """Logs at `level` (default: warning) to stderr; stray prints go to stderr too."""
    from lsp_server import logs

    saved = logs.levels()
    logs.setup(level or "warning")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        logs.restore(saved)


def _config_files() -> str:
    """The config file the settings were read from, as `latent info` names it."""
    from lsp_server.settings import config_path

    path = config_path()
    return f"{path} (read)" if path.is_file() else f"{path} (none; defaults and LATENT_* variables)"


def _threads(threads) -> str:
    if isinstance(threads, dict):
        return f"{threads.get('prefill')} threads for prefill, {threads.get('decode')} for decode"
    return f"{threads or '?'} threads"


def _count(n) -> str:
    if not isinstance(n, (int, float)):
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


def _bytes(n) -> str:
    if not isinstance(n, (int, float)):
        return "?"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _fail(message: str) -> int:
    print(f"latent: error: {message}", file=sys.stderr)
    return EXIT_ERROR
