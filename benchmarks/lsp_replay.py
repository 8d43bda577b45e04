"""Typing replay through the language server: `python benchmarks/lsp_replay.py [--write docs/benchmarks.md]`.

A real file is opened in `latent lsp` (stdio) with a stretch of it cut out, and that stretch is
typed back one character at a time the way VS Code drives a server: a didChange per keystroke,
then a textDocument/inlineCompletion at the cursor. By default each request is answered before
the next key (latency per keystroke on an idle server); `--interval-ms` types at a fixed pace
instead, and `--pace human` at a person's (see `human_intervals`), cancelling a request still
pending when the next key comes, as VS Code does. After every `--invoke-every`th ghost text
(awaited mode) it also asks for several suggestions (an Invoked request, as a cycle key does) and
reports what that costs against the ghost text's answer at the same keystroke.

Per keystroke it reports p50 / p95 of the round trip the client sees, of the server's own time
(arrival to answer), of the pipeline and of the engine; the LSP overhead (server time minus
pipeline time, and minus engine time); the share answered by typing-through; and the tokens
prefilled (and reused) per keystroke. The server's figures come from its `latent/status`
notification, which names the request it describes.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled
from pygls.lsp.client import LanguageClient

from report import publish

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Language server: typing replay (benchmarks/lsp_replay.py)"
DEFAULT_FILE = ROOT / "lsp_server" / "worker.py"
NOTES = {
    "psm": "Why a keystroke prefills hundreds of tokens with exact reuse: the PSM prompt puts the suffix window "
           "after the prefix (DeepSeek's prefix–suffix–middle layout), so a character typed at the end of the "
           "prefix invalidates the cached latents of everything after it — the hole token and the whole suffix "
           "window, about `max_prompt_tokens × (1 − prefix_fraction)` tokens — while the prefix is reused.",
    "spm": "With the suffix-first layout (SPM) a character typed at the cursor only appends to the prompt, so "
           "exact reuse covers everything before the new characters and the completions are a cold engine's. "
           "The price: a cursor jump changes the suffix, which SPM puts first, so the first request after a jump "
           "prefills the whole prompt (the cold request below).",
}
TIMEOUT_S = 120  # a request unanswered this long is a bug: fail instead of waiting
COMPILE_WAIT_S = 180   # the server compiles a small model's decode step 30 s after load (once cached: at once)
PAUSE_MS = 400   # a gap this long before the next key: the person looks at the ghost text


def human_intervals(count: int, seed: int = 0) -> list[float]:
    """Milliseconds between keystrokes as a person types code: log-normal with a median of 180 ms
    (large typing studies put the mean inter-key interval near 240 ms, skilled typists near
    120 ms) and, one key in eight, a pause of 0.4–1.5 s to read or think. Synthetic, seeded."""
    rng = random.Random(seed)
    return [rng.uniform(PAUSE_MS, 1500) if rng.random() < 0.125 else 180 * rng.lognormvariate(0, 0.45)
            for _ in range(count)]


# ---------------------------------------------------------------------------------------------
# The replay

def cut(text: str, start_line: int, chars: int) -> tuple[str, str]:
    """(the text without the stretch to type, the stretch): whole lines from `start_line`, at
    least `chars` characters, without their last end of line — so while it is typed back the
    cursor ends its line and the rest of the file follows, as when one writes new code."""
    lines = text.split("\n")
    start = sum(len(line) + 1 for line in lines[:start_line])
    end = start
    for line in lines[start_line:]:
        end += len(line) + 1
        if end - start > chars:
            break
    return text[:start] + text[end - 1:], text[start:end - 1]


async def start_server(args) -> tuple[LanguageClient, dict, asyncio.Task]:
    """`latent lsp` with a client that files each completion's `latent/status` by request id."""
    statuses: dict = {}
    states: list[str] = []
    client = LanguageClient("latent-lsp-replay", "1")
    client.feature(types.WINDOW_LOG_MESSAGE)(lambda ls, params: None)   # the server log has them

    @client.feature("latent/status")
    def on_status(ls, params):
        states.append(params.state)
        last = getattr(params, "last", None)
        if last is not None:
            statuses[last.request] = last

    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENT_")}
    env.update({"PYTHONPATH": str(ROOT), "LATENT_THREADS": str(args.threads), "LATENT_LOG_LEVEL": args.log_level,
                "LATENT_REUSE": args.reuse, "LATENT_FIM_LAYOUT": args.layout})
    if args.debounce_ms is not None or not (args.pace or args.interval_ms):
        env["LATENT_DEBOUNCE_MS"] = str(args.debounce_ms or 0)   # awaited keystrokes: the compute alone
    if args.model:
        env["LATENT_MODEL"] = args.model
    await client.start_io(sys.executable, "-m", "lsp_server", "lsp", env=env, cwd=str(ROOT))
    drain = asyncio.create_task(_drain(client._server.stderr, args.server_log))  # a full pipe would stall it
    capabilities = types.ClientCapabilities(text_document=types.TextDocumentClientCapabilities(
        inline_completion=types.InlineCompletionClientCapabilities()))
    await client.initialize_async(types.InitializeParams(capabilities=capabilities))
    client.initialized(types.InitializedParams())
    while not {"ready", "error"} & set(states):
        await asyncio.sleep(0.05)
    if "error" in states:
        raise SystemExit("the server could not load the model")
    return client, statuses, drain


async def replay(args) -> dict:
    load_before = os.getloadavg()[0]
    text = args.file.read_text(encoding="utf-8")
    start_line = args.start_line if args.start_line is not None else len(text.split("\n")) // 2
    base, typed = cut(text, start_line, args.chars)
    client, statuses, drain = await start_server(args)
    step = await decode_step(client, COMPILE_WAIT_S if args.compiled else 0)
    uri = args.file.resolve().as_uri()
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        types.TextDocumentItem(uri, "python" if args.file.suffix == ".py" else "plaintext", 1, base)))
    ids = iter(range(1, 1 << 30))
    answered_at: dict[str, float] = {}

    def request(line: int, character: int, invoked: bool = False) -> tuple[str, asyncio.Future, float]:
        msg_id = f"k{next(ids)}"
        kind = types.InlineCompletionTriggerKind.Invoked if invoked else types.InlineCompletionTriggerKind.Automatic
        params = types.InlineCompletionParams(
            context=types.InlineCompletionContext(kind),
            text_document=types.TextDocumentIdentifier(uri), position=types.Position(line, character))
        sent = time.perf_counter()
        future = client.protocol.send_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id=msg_id)
        future.add_done_callback(lambda f: answered_at.setdefault(msg_id, time.perf_counter()))
        return msg_id, asyncio.wrap_future(future), sent

    # the first request computes the whole prompt: reported apart from the keystrokes
    first_id, first, t0 = request(start_line, 0)
    await asyncio.wait_for(first, TIMEOUT_S)
    cold = {"client_ms": (answered_at[first_id] - t0) * 1e3, **_server_figures(statuses.get(first_id))}

    intervals = (human_intervals(len(typed), args.seed) if args.pace == "human"
                 else [args.interval_ms] * len(typed) if args.interval_ms else None)
    before = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="latent.stats"))
    rows, invoked = await type_back(client, uri, typed, start_line, request, intervals,
                                    0 if intervals else args.invoke_every)
    results, cancelled, paused_rows = [], 0, []   # paused_rows: the requests the client cancelled
    for index, (msg_id, future, sent) in enumerate(rows):
        paused = intervals is not None and (index == len(rows) - 1 or intervals[index + 1] >= PAUSE_MS)
        try:
            answer = await asyncio.wait_for(future, TIMEOUT_S)
        except JsonRpcRequestCancelled:
            cancelled += 1
            paused_rows.append({"paused": paused, "shown": False})
            continue
        results.append({"client_ms": (answered_at[msg_id] - sent) * 1e3, "paused": paused,
                        "shown": bool(answer and answer.items) and (
                            intervals is None or index == len(rows) - 1
                            or (answered_at[msg_id] - sent) * 1e3 < intervals[index + 1]),
                        **_server_figures(statuses.get(msg_id))})
    asked = []
    for keystroke, (msg_id, future, sent) in invoked:
        answer = await future
        ghost_id, _, ghost_sent = rows[keystroke]
        asked.append({"client_ms": (answered_at[msg_id] - sent) * 1e3, "items": len(answer.items) if answer else 0,
                      "typed_ms": (answered_at[ghost_id] - ghost_sent) * 1e3})

    stats = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="latent.stats"))
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    drain.cancel()
    model_runs = _get(_get(stats, "engine"), "requests", 0) - _get(_get(before, "engine"), "requests", 0)
    return {"load": (load_before, os.getloadavg()[0]), "keystrokes": len(typed), "results": results,
            "cancelled": cancelled, "cold": cold, "engine": _get(stats, "engine"), "start_line": start_line,
            "asked": asked, "model_runs": model_runs - len(asked), "cancelled_rows": paused_rows, "step": step}


async def decode_step(client, wait_s: float) -> str:
    """The server's decode step once it is settled (a small model's is compiled in the
    background; waits up to `wait_s` seconds): "compiled", "eager" or "failed"."""
    deadline = time.monotonic() + wait_s
    while True:
        stats = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="latent.stats"))
        state = _get(_get(_get(stats, "engine"), "decode_step", {}), "state", "eager")
        if state not in ("waiting", "compiling") or time.monotonic() > deadline:
            return state
        await asyncio.sleep(1.0)


async def type_back(client, uri: str, typed: str, line: int, request, intervals: list[float] | None,
                    invoke_every: int = 0) -> tuple[list, list]:
    """One didChange and one inline request per character; with intervals, a request still
    pending when the next key comes is cancelled (as VS Code does), else each is awaited, and
    after every `invoke_every`th answer with ghost text an Invoked request follows (rows:
    (keystroke, request))."""
    rows, invoked, character, shown = [], [], 0, 0
    for version, char in enumerate(typed, start=2):
        here = types.Position(line, character)
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            types.VersionedTextDocumentIdentifier(version=version, uri=uri),
            [types.TextDocumentContentChangePartial(range=types.Range(here, here), text=char)]))
        line, character = (line + 1, 0) if char == "\n" else (line, character + len(char.encode("utf-16-le")) // 2)
        if rows and not rows[-1][1].done():
            client.cancel_request(types.CancelParams(id=rows[-1][0]))
        rows.append(request(line, character))
        if intervals:
            await asyncio.sleep(intervals[version - 2] / 1e3)
            continue
        [answer] = await asyncio.wait_for(asyncio.gather(rows[-1][1], return_exceptions=True), TIMEOUT_S)
        shown += bool(getattr(answer, "items", None))
        if invoke_every and getattr(answer, "items", None) and shown % invoke_every == 0:
            invoked.append((len(rows) - 1, request(line, character, invoked=True)))
            await asyncio.wait_for(asyncio.gather(invoked[-1][1][1], return_exceptions=True), TIMEOUT_S)
    return rows, invoked


async def _drain(stream, path: Path | None) -> None:
    """Read the server's stderr to the end, into `path` if given."""
    with open(path, "wb") if path else open(os.devnull, "wb") as out:
        while chunk := await stream.read(1 << 16):
            out.write(chunk)
            out.flush()


def _get(obj, key: str, default=None):
    """A field of a JSON object, which pygls hands over as a dict or as an object."""
    return obj.get(key, default) if isinstance(obj, dict) else getattr(obj, key, default)


def _fields(obj) -> dict:
    """A JSON object's fields as a dict (pygls hands them over as a dict or a named tuple)."""
    if obj is None:
        return {}
    return obj if isinstance(obj, dict) else obj._asdict() if hasattr(obj, "_asdict") else dict(vars(obj))


def _server_figures(last) -> dict:
    if last is None:
        return {"source": "superseded"}
    return {
        "source": _get(last, "source"), "server_ms": _get(last, "latencyMs"), "queue_ms": _get(last, "queueMs"),
        "pipeline_ms": _get(last, "pipelineMs"), "engine_ms": _get(last, "engineMs"),
        "prefilled": _get(last, "prefilledTokens"), "reused": _get(last, "reusedTokens"),
        **{f"{stage}_ms": ms for stage, ms in _fields(_get(last, "timingsMs")).items() if stage != "engine"},
        **{f"{part}_ms": ms for part, ms in _fields(_get(last, "partsMs")).items()},
    }


# ---------------------------------------------------------------------------------------------
# The report

def report(args, run: dict) -> str:
    results = run["results"]
    answered = [r for r in results if r["source"] != "superseded"]
    by_model = [r for r in answered if r["source"] == "model"]
    n = len(results)
    by_source = {s: sum(1 for r in answered if r["source"] == s)
                 for s in ("model", "typing-through", "cache", "skipped")}

    def row(name, values, digits=1):
        values = [v for v in values if v is not None]
        if not values:
            return f"| {name} | – | – | – |"
        return (f"| {name} | {_percentile(values, 50):.{digits}f} | {_percentile(values, 95):.{digits}f} "
                f"| {statistics.fmean(values):.{digits}f} |")

    engine = run["engine"]
    command = "python benchmarks/lsp_replay.py" + "".join(
        f" {flag} {value}" for flag, value in (("--file", _shown(args.file)), ("--chars", args.chars),
                                               ("--threads", args.threads), ("--model", args.model),
                                               ("--layout", None if args.layout == "psm" else args.layout),
                                               ("--reuse", None if args.reuse == "exact" else args.reuse),
                                               ("--interval-ms", args.interval_ms or None), ("--pace", args.pace),
                                               ("--debounce-ms", args.debounce_ms)) if value is not None)
    lines = [
        section_heading(args),
        "",
        f"`{command}` — {time.strftime('%Y-%m-%d')}, {platform.machine()} with {os.cpu_count()} CPUs "
        f"(load average {run['load'][0]:.1f} before, {run['load'][1]:.1f} after: the cores are shared), "
        f"PyTorch threads {args.threads}, decode step {run['step']}; model `{_get(engine, 'model')}` "
        f"({_get(engine, 'parameters', 0) / 1e6:.2f}M parameters, {_get(engine, 'dtype')}).",
        "",
        f"`{_shown(args.file)}` typed back from line {run['start_line'] + 1}: {run['keystrokes']} keystrokes, "
        f"each a didChange and an inlineCompletion"
        + (f" at a person's pace (`human_intervals`, seed {args.seed}; pending requests cancelled: "
           f"{run['cancelled']})." if args.pace else
           f" every {args.interval_ms} ms (pending requests cancelled: {run['cancelled']})." if args.interval_ms
           else ", the next key once the answer is in (the server's debounce_ms 0: the compute alone)."),
        "",
        "| per keystroke | p50 | p95 | mean |",
        "|---|---:|---:|---:|",
        row("round trip seen by the client, ms", [r.get("client_ms") for r in results]),
        row("server: arrival → answer, ms", [r.get("server_ms") for r in answered]),
        row("pipeline (context, prompt, engine, postprocess), ms", [r.get("pipeline_ms") for r in answered]),
        row("engine, ms", [r.get("engine_ms") for r in answered]),
        row("outside the engine: server − engine, ms", [_minus(r, "server_ms", "engine_ms") for r in answered], 2),
        row("… parse (tree-sitter, the edits since the last read), ms", [r.get("parse_ms") for r in answered], 2),
        row("… context (windows, definitions, snippets), ms", [r.get("context_ms") for r in answered], 2),
        row("…… of which definition queries, ms", [r.get("queries_ms") for r in answered], 2),
        row("… prompt, ms", [r.get("prompt_ms") for r in answered], 2),
        row("…… of which tokenizing (context and prompt), ms", [r.get("tokenize_ms") for r in answered], 2),
        row("… postprocess (syntax check included), ms", [r.get("postprocess_ms") for r in answered], 2),
        row("LSP overhead: server − pipeline, ms", [_minus(r, "server_ms", "pipeline_ms") for r in answered], 2),
        row("transport and JSON: client − server, ms", [_minus(r, "client_ms", "server_ms") for r in answered], 2),
        row("model answers: tokens prefilled", [r.get("prefilled") for r in by_model], 0),
        row("model answers: tokens reused from the latent cache", [r.get("reused") for r in by_model], 0),
        row("model answers: engine, ms", [r.get("engine_ms") for r in by_model]),
        "",
        f"Answered by typing-through: {_share(by_source['typing-through'], n)}; by the model: "
        f"{_share(by_source['model'], n)}; from the suggestion cache: {_share(by_source['cache'], n)}; "
        f"skipped (no completion there): {_share(by_source['skipped'], n)}. "
        f"The first request (the whole prompt, before typing) took {run['cold']['client_ms']:.0f} ms and prefilled "
        f"{run['cold'].get('prefilled', 0)} tokens. Engine cache after the replay: hit rate "
        f"{_get(engine, 'hit_rate', 0):.0%}, {_get(engine, 'cache_tokens')} tokens held.",
        "",
        *asking(args, run),
        *paced(args, run),
        NOTES["spm" if args.layout == "spm" else "psm"],
        "",
    ]
    return "\n".join(lines)


def asking(args, run: dict) -> list[str]:
    """What asking for several suggestions costs (an Invoked request after the ghost text)."""
    asked = run["asked"]
    if not asked:
        return []
    extra = [a["client_ms"] for a in asked]
    return [f"Asking for several suggestions (an Invoked request, as a cycle key sends; `suggestions` = 3) after "
            f"every {args.invoke_every}th ghost text: {len(asked)} requests, p50 "
            f"{_percentile(extra, 50):.0f} ms (p95 {_percentile(extra, 95):.0f} ms) for "
            f"{statistics.fmean(a['items'] for a in asked):.1f} suggestions on average, against "
            f"{_percentile([a['typed_ms'] for a in asked], 50):.0f} ms p50 for the ghost text's one at the same "
            "keystrokes. The ghost text itself never waits for the others: they are computed only when asked.", ""]


def paced(args, run: dict) -> list[str]:
    """At a typing pace: the model's work per keystroke and what the person sees at pauses."""
    if not (args.pace or args.interval_ms):
        return []
    figures = paced_figures(run)
    return [f"Paced: {figures['runs']} model runs for {run['keystrokes']} keystrokes ({figures['runs_per_key']:.2f} "
            f"per keystroke); {figures['superseded']} requests superseded before or while they ran. At "
            f"{figures['pauses']} pauses (the next key ≥ {PAUSE_MS} ms away) ghost text came at "
            f"{figures['shown_at_pauses']}, p50 {figures['pause_p50']:.0f} ms and p95 {figures['pause_p95']:.0f} ms "
            "after the key.", ""]


def paced_figures(run: dict) -> dict:
    """A paced replay's figures: the model's work, and the ghost text a person waits for at pauses."""
    results = run["results"]
    pauses = [r for r in results + run["cancelled_rows"] if r.get("paused")]
    waited = [r["client_ms"] for r in pauses if r.get("shown")]
    return {"runs": run["model_runs"], "runs_per_key": run["model_runs"] / run["keystrokes"],
            "superseded": run["keystrokes"] - sum(1 for r in results if r["source"] != "superseded"),
            "pauses": len(pauses), "shown_at_pauses": len(waited),
            "pause_p50": _percentile(waited, 50) if waited else float("nan"),
            "pause_p95": _percentile(waited, 95) if waited else float("nan")}


def section_heading(args) -> str:
    """One section per layout and reuse mode, so each variant keeps its figures."""
    variant = [f"{args.layout.upper()} layout"] if args.layout != "psm" else []
    variant += [f"{args.reuse} reuse"] if args.reuse != "exact" else []
    return SECTION + (f" — {', '.join(variant)}" if variant else "")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _minus(row: dict, a: str, b: str):
    return row[a] - row[b] if row.get(a) is not None and row.get(b) is not None else None


def _share(count: int, total: int) -> str:
    return f"{count / total:.0%} ({count})" if total else "–"


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/lsp_replay.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE, help="the file to type (default: %(default)s)")
    parser.add_argument("--start-line", type=int, default=None, help="0-based line to type from (default: the middle)")
    parser.add_argument("--chars", type=int, default=300,
                        help="characters to type, rounded up to whole lines (default: %(default)s)")
    parser.add_argument("--model", default=None, help="model setting (default: bundled)")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads in the server (default: %(default)s)")
    parser.add_argument("--reuse", default="exact", choices=["exact", "shift"], help="the server's reuse setting")
    parser.add_argument("--layout", default="psm", choices=["auto", "psm", "spm"],
                        help="the server's fim_layout setting (default: %(default)s, what a real DeepSeek model needs)")
    parser.add_argument("--interval-ms", type=float, default=0, help="type at this pace instead of waiting")
    parser.add_argument("--pace", choices=["human"], default=None,
                        help="type at a person's pace (human_intervals) instead of waiting")
    parser.add_argument("--seed", type=int, default=0, help="the seed of --pace human (default: %(default)s)")
    parser.add_argument("--debounce-ms", type=int, default=None,
                        help="the server's debounce_ms (default: 0 when each answer is awaited, else the server's)")
    parser.add_argument("--eager", dest="compiled", action="store_false",
                        help="do not wait for the server's compiled decode step (a small model's, made in the "
                             "background after load) before typing")
    parser.add_argument("--invoke-every", type=int, default=5,
                        help="awaited mode: ask for several suggestions after every Nth ghost text; 0: never "
                             "(default: %(default)s)")
    parser.add_argument("--log-level", default="warning", help="the server's log level (default: %(default)s)")
    parser.add_argument("--server-log", type=Path, default=None, help="write the server's stderr here")
    parser.add_argument("--write", type=Path, default=None, help="replace this section in a Markdown file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    run = asyncio.run(replay(args))
    section = report(args, run)
    publish(section, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
