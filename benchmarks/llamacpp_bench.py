"""Latent against llama.cpp's C++ server on the same weights (`make bench-llamacpp`).

    python benchmarks/llamacpp_bench.py --server .remote/llama.cpp/build/bin/llama-server \\
        --gguf .remote/bundled-f32.gguf --write docs/benchmarks.md

The bundled model runs in Latent (in process, `threads` T, its decode step compiled before
anything is timed) and, converted to an f32 GGUF, in `llama-server` (`-c 4096 -np 1 -t T -tb T
-ctk f32 -ctv f32`, `/completion` with `cache_prompt: true`), at T = 1 and 2 threads; one server
per thread count, both up for the whole run, and a third with `-fa off` (llama.cpp's CPU flash
attention is not f32-exact) for the same-model check.

- speed: prefill tokens/s of a ~1,000-token prompt and decode tokens/s after it, also at 2
  threads with one core kept busy by another process;
- FIM typing replay: a ~1,500-token PSM prompt cut from a file of an installed third-party
  package, cursor ~3/4 through, one character typed per keystroke, 16 greedy tokens each:
  Latent exact reuse, shift reuse, recomputing, and llama-server's `cache_prompt`;
- same model: `/tokenize` against our tokenizer, identical completions (Latent exact against
  llama-server), next-token log-probabilities against ours, and where completions differ from
  the `-fa off` server's, the top-2 logit gap at the first differing token.

The machine is shared and noisy, so the backends take turns keystroke by keystroke (and run by
run for prefill and decode), and the figures pool several rounds. Latencies are wall time seen by
the caller (llama-server: a localhost HTTP request, keep-alive). `--only speed` or `--only typing`
runs one part and prints it (a quick check; the file is written by full runs only).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from engine_bench import _p95, fim_keystrokes
from llamacpp.server import LlamaServer
from model.engine import Engine
from model.params import RuntimeConfig, SamplingParams
from report import publish

SECTION = "## Against llama.cpp (make bench-llamacpp)"
THREADS = (1, 2)
NEW_TOKENS = 16
TIE = 1e-3
LATENT_MODES = ("exact", "shift", "recompute")
BACKENDS = (*LATENT_MODES, "llama")


def third_party_source() -> tuple[str, str]:
    """A long file of an installed package that is not this project: pygments' Python lexer,
    or the standard library's argparse (part of the bundled model's training data) without it."""
    try:
        import pygments
        import pygments.lexers.python as module
        label = f"pygments {pygments.__version__}, `pygments/lexers/python.py`"
    except ImportError:
        import argparse as module
        label = "the standard library's `argparse.py` (in the bundled model's training data)"
    return Path(module.__file__).read_text(), label


def latent_engines() -> dict[str, Engine]:
    """One engine per mode, so each keeps its own cache: exact and shift reuse, and one whose
    cache is cleared before every request. Their decode step is compiled (or has failed to
    compile) before this returns: the timed figures are the steady state."""
    engines = {mode: Engine.load(None, RuntimeConfig(threads=1, reuse="shift" if mode == "shift" else "exact",
                                                     compile=True))
               for mode in LATENT_MODES}
    for engine in engines.values():
        engine.forward.wait()
    return engines


def use_threads(engine: Engine, threads: int) -> None:
    """Run `engine` as if loaded with `threads` (prefill takes them; see Engine.threads)."""
    engine.runtime = replace(engine.runtime, threads=threads)


# ---------------------------------------------------------------------------------------------
# one request, either backend: (wall ms, tokens prefilled, completion text, generated ids)

def ask_latent(engine: Engine, prompt: str, clear: bool) -> tuple[float, int, str, list[int]]:
    if clear:
        engine.clear_cache()
    t = time.perf_counter()
    gen = engine.generate(prompt, SamplingParams(max_new_tokens=NEW_TOKENS, stop_token_ids=()))
    text = gen.run()
    ms = (time.perf_counter() - t) * 1e3
    ids = list(engine.live.tokens[gen.stats.prompt_tokens:])   # the last generated id is never fed
    return ms, gen.stats.prefilled_tokens, text, ids


def ask_llama(server: LlamaServer, prompt: str) -> tuple[float, int, str, list[int]]:
    t = time.perf_counter()
    out = server.complete(prompt, NEW_TOKENS)
    ms = (time.perf_counter() - t) * 1e3
    return ms, out["timings"]["prompt_n"], out["content"], out["tokens"]


def replay(ask, prompts: list[str]) -> list[tuple[float, int, str, list[int]]]:
    """The file opened (prompts[0], untimed), then one request per keystroke."""
    ask(prompts[0])
    return [ask(prompt) for prompt in prompts[1:]]


# ---------------------------------------------------------------------------------------------

def bench_typing(engines: dict[str, Engine], servers: dict[int, LlamaServer], prompts: list[str],
                 rounds: int) -> dict:
    """results[threads][backend]: lists "ms", "prefilled", "text", "ids", pooled over rounds, in
    keystroke order. Each round opens the file on every backend, then the backends take turns
    keystroke by keystroke (the order rotated at each keystroke)."""
    fields = ("ms", "prefilled", "text", "ids")
    results = {t: {b: {f: [] for f in fields} for b in BACKENDS} for t in THREADS}
    for r in range(rounds):
        for threads in THREADS if r % 2 == 0 else THREADS[::-1]:
            for engine in engines.values():
                use_threads(engine, threads)
            ask = askers(engines, servers[threads])
            for backend in BACKENDS:
                ask[backend](prompts[0])   # the file opened, untimed
            for k, prompt in enumerate(prompts[1:]):
                first = (k + r) % len(BACKENDS)
                for backend in BACKENDS[first:] + BACKENDS[:first]:
                    for field, value in zip(fields, ask[backend](prompt)):
                        results[threads][backend][field].append(value)
            print(f"round {r + 1}/{rounds}, {threads} thread(s): done", flush=True)
    return results


def askers(engines: dict[str, Engine], server: LlamaServer) -> dict:
    """backend -> ask(prompt); Latent's caches cleared first."""
    ask = {"llama": partial(ask_llama, server)}
    for mode in LATENT_MODES:
        engines[mode].clear_cache()
        ask[mode] = partial(ask_latent, engines[mode], clear=mode == "recompute")
    return ask


def bench_speed(engine: Engine, servers: dict[int, LlamaServer], prompt: str, rounds: int) -> dict:
    """speed[threads] = speed_medians(...) at each thread count, and speed["busy"] at 2 threads
    while another process keeps one core busy (what a build or a browser does to an editor's
    machine; llama.cpp's threads wait for each other at every operation)."""
    speed = {}
    for threads in THREADS:
        use_threads(engine, threads)
        speed[threads] = speed_medians(engine, servers[threads], prompt, rounds)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        speed["busy"] = speed_medians(engine, servers[2], prompt, rounds)
    finally:
        hog.kill()
        hog.wait()
    return speed


def speed_medians(engine: Engine, server: LlamaServer, prompt: str, rounds: int, new_tokens: int = 128) -> dict:
    """backend -> (prefill tok/s, decode tok/s), medians of `rounds` runs taken in turn: "latent"
    (prompt-lookup drafts as configured), "latent-nodraft" (speculate 0) and "llama"."""
    default = engine.runtime
    runs = {"latent": partial(latent_speed, engine, default, prompt, new_tokens),
            "latent-nodraft": partial(latent_speed, engine, replace(default, speculate=0), prompt, new_tokens),
            "llama": partial(llama_speed, server, prompt, new_tokens)}
    samples = {name: [] for name in runs}
    for r in range(rounds):
        for name in list(runs)[r % 3:] + list(runs)[: r % 3]:
            samples[name].append(runs[name]())
    engine.runtime = default
    return {name: tuple(statistics.median(v) for v in zip(*pairs)) for name, pairs in samples.items()}


def latent_speed(engine: Engine, runtime: RuntimeConfig, prompt: str, new_tokens: int) -> tuple[float, float]:
    engine.runtime = runtime
    engine.clear_cache()
    gen = engine.generate(prompt, SamplingParams(max_new_tokens=new_tokens, stop_token_ids=()))
    gen.run()
    s = gen.stats
    return s.prefilled_tokens / s.prefill_ms * 1e3, (s.generated_tokens - 1) / s.decode_ms * 1e3


def llama_speed(server: LlamaServer, prompt: str, new_tokens: int) -> tuple[float, float]:
    timings = server.complete(prompt, new_tokens, cache_prompt=False)["timings"]
    return timings["prompt_per_second"], timings["predicted_per_second"]


def tokenizer_agrees(engine: Engine, server: LlamaServer, prompts: list[str]) -> bool:
    """llama-server's /tokenize (BOS added, special tokens parsed) equals our encoding."""
    ours = engine.tokenizer
    return all(server.post("/tokenize", {"content": p, "add_special": True})["tokens"]
               == ours.encode(p, add_bos=ours.add_bos) for p in prompts)


def same_completions(typing: dict) -> tuple[int, int]:
    """(identical, pairs): Latent exact's completions against the timed llama-server's, every
    round and thread count."""
    pairs = [(a, b) for by in typing.values() for a, b in zip(by["exact"]["text"], by["llama"]["text"])]
    return sum(a == b for a, b in pairs), len(pairs)


def logprob_error(engine: Engine, server: LlamaServer, prompt: str) -> float:
    """Largest |difference| between llama-server's top-8 next-token log-probabilities and Latent's."""
    ours = torch.log_softmax(engine.logits(engine.tokenizer.encode(prompt, add_bos=engine.tokenizer.add_bos))[-1], -1)
    top = server.complete(prompt, 1, n_probs=8, cache_prompt=False)["completion_probabilities"][0]["top_logprobs"]
    return max(abs(float(ours[t["id"]]) - t["logprob"]) for t in top)


def parity(engine: Engine, server: LlamaServer, prompts: list[str], typing: dict) -> dict:
    """Latent exact's completions (first round, one thread) against `server`'s, keystroke by
    keystroke; for those that differ, whether the first differing token was a near-tie."""
    ours, keys = typing[THREADS[0]]["exact"], len(prompts) - 1
    theirs = replay(partial(ask_llama, server), prompts)
    differing = [k for k in range(keys) if ours["text"][k] != theirs[k][2]]
    ties = [near_tie(engine, server, prompts[k + 1], ours["ids"][k], theirs[k][3]) for k in differing]
    return {"same": keys - len(differing), "keys": keys, "p50_ms": statistics.median(t[0] for t in theirs),
            "llama_ties": sum(t[0] for t in ties), "latent_ties": sum(t[1] for t in ties)}


def near_tie(engine: Engine, server: LlamaServer, prompt: str, ids: list[int],
             llama_ids: list[int]) -> tuple[bool, bool]:
    """Whether the top-2 logits at the first differing token are within TIE: by llama's n_probs
    (log-probabilities differ by the logits' difference), and by Latent's own logits."""
    at = next((i for i, (a, b) in enumerate(zip(ids, llama_ids)) if a != b), len(ids))
    probs = server.complete(prompt, at + 1, n_probs=2, cache_prompt=False)["completion_probabilities"]
    top = probs[min(at, len(probs) - 1)]["top_logprobs"]
    llama_tie = len(top) > 1 and top[0]["logprob"] - top[1]["logprob"] < TIE
    context = engine.tokenizer.encode(prompt, add_bos=engine.tokenizer.add_bos) + ids[:at]
    best = engine.logits(context)[-1].topk(2).values
    return llama_tie, float(best[0] - best[1]) < TIE


# ---------------------------------------------------------------------------------------------

def speed_rows(speed: dict, prompt_tokens: int) -> list[str]:
    rows = ["| figure | threads | Latent | llama-server | Latent / llama.cpp |", "|---|---|---|---|---|"]
    figures = ((f"prefill tokens/s ({prompt_tokens:,}-token prompt)", "latent", 0),
               ("decode tokens/s after it (Latent: its default, `speculate 8`; no drafts while the step runs "
                "compiled)", "latent", 1),
               ("decode tokens/s after it (Latent: `speculate 0`)", "latent-nodraft", 1))
    for label, ours, i in figures:
        for t in (*THREADS, "busy"):
            a, b = speed[t][ours][i], speed[t]["llama"][i]
            threads = "2, one core busy" if t == "busy" else t
            rows.append(f"| {label} | {threads} | {a:,.0f} | {b:,.0f} | {a / b:.2f}× |")
    return rows


def typing_rows(typing: dict) -> list[str]:
    names = {"exact": "Latent exact", "shift": "Latent shift", "recompute": "Latent recompute",
             "llama": "llama-server `cache_prompt`"}
    rows = ["| per keystroke | threads | " + " | ".join(names[b] for b in BACKENDS)
            + " | exact / llama | shift / llama | recompute / llama |", "|---" * (3 + 2 * len(LATENT_MODES)) + "|"]
    figures = (("p50 ms", lambda v: statistics.median(v["ms"]), "{:.1f}"),
               ("p95 ms", lambda v: _p95(v["ms"]), "{:.1f}"),
               ("tokens prefilled (mean)", lambda v: statistics.mean(v["prefilled"]), "{:.1f}"))
    for label, figure, fmt in figures:
        for t in THREADS:
            values = {b: figure(typing[t][b]) for b in BACKENDS}
            ratios = [f"{values[m] / values['llama']:.2f}" if values["llama"] else "–" for m in LATENT_MODES]
            rows.append(f"| {label} | {t} | " + " | ".join(fmt.format(values[b]) for b in BACKENDS)
                        + " | " + " | ".join(ratios) + " |")
    return rows


def same_model_lines(check: dict, tokenize_ok: bool) -> list[str]:
    same, pairs = check["timed"]
    off = check["fa_off"]
    return [
        f"Same model: llama-server's `/tokenize` {'equals' if tokenize_ok else 'DIFFERS from'} our tokenizer on "
        f"every prompt. Latent exact and the timed llama-server wrote the same {NEW_TOKENS}-token completion on "
        f"{same} of {pairs} keystrokes ({same / pairs:.0%}). That server runs llama.cpp's default `-fa auto`, "
        f"which turns flash attention on in this CPU build, and it is not f32-exact: at the last FIM prompt its "
        f"top-8 next-token log-probabilities differ from Latent's by up to {check['error']:.1e}. The same server "
        f"with `-fa off` differs by {check['error_fa_off']:.1e} and wrote the same completion on {off['same']} of "
        f"{off['keys']} keystrokes (one replay, 1 thread, p50 {off['p50_ms']:.1f} ms, not interleaved); of the "
        f"{off['keys'] - off['same']} that differ, {off['llama_ties']} had a top-2 logit gap under {TIE:g} at the "
        f"first differing token by llama's `n_probs` ({off['latent_ties']} by Latent's own logits).",
    ]


def render_part(speed: dict | None, typing: dict | None, info: dict) -> str:
    """A quick run's figures (--only): printed, never written."""
    lines = [f"Partial run (not written), Latent's decode step {info['step']}, load average "
             f"{info['load'][0]:.1f} → {info['load'][1]:.1f}.", ""]
    if speed is not None:
        lines += [*speed_rows(speed, info["plain_tokens"]), ""]
    if typing is not None:
        lines += typing_rows(typing)
    return "\n".join(lines) + "\n"


def step_words(state: str) -> str:
    if state == "compiled":
        return "compiled ahead of time (model/engine/step.py) before anything was timed"
    return f"EAGER (its compile state: {state})"


def render(speed: dict, typing: dict, check: dict, info: dict) -> str:
    keys = len(typing[THREADS[0]]["exact"]["ms"])
    lines = [
        SECTION, "",
        f"Command: `make bench-llamacpp`. llama-server built here from the llama.cpp vendored in "
        f"llama-cpp-python 0.3.36 (ggml-org/llama.cpp@0c1e57098), Release, `GGML_NATIVE=ON`; the bundled "
        f"model converted to an f32 GGUF by `tests/remote/convert.py`; served with `-c 4096 -np 1 -t T -tb T "
        f"-ctk f32 -ctv f32`, asked `/completion` with `cache_prompt: true`, greedy. Latent in process, float32, "
        f"its defaults with `threads` T (a small model decodes on one thread), its one-token decode step "
        f"{step_words(info['step'])}. One run on a shared {os.cpu_count()}-core machine; the backends take turns "
        f"keystroke by "
        f"keystroke (order rotated), {info['rounds']} rounds pooled; latency is wall time seen by the caller "
        "(llama-server: a localhost HTTP request). 1-minute load average "
        f"{info['load'][0]:.1f} at the start, {info['load'][1]:.1f} at the end.", "",
        f"Speed (medians of {info['speed_rounds']} runs, the backends in turn, 128 new tokens; \"one core busy\": "
        "another process spins on one of the two cores during those runs, as other work on a shared machine "
        "may, and the 2-thread rows of the typing replay ran beside whatever else this machine was doing):", "",
        *speed_rows(speed, info["plain_tokens"]), "",
        f"FIM typing replay: {info['source']}; a {info['fim_tokens']:,}-token PSM prompt, cursor after ~¾ of it, "
        f"{len(info['prompts']) - 1} characters typed one per keystroke, {NEW_TOKENS} greedy tokens each; "
        f"{keys} keystrokes per backend and thread count. Ratios are Latent / llama.cpp (below 1: Latent faster).",
        "",
        *typing_rows(typing), "",
        *same_model_lines(check, info["tokenize_ok"]),
    ]
    return "\n".join(lines) + "\n"


def run(server_bin: Path, gguf: Path, rounds: int, speed_rounds: int, keystrokes: int,
        only: str | None = None) -> str:
    engines = latent_engines()
    exact = engines["exact"]
    text, source = third_party_source()
    prompts = fim_keystrokes(exact, text, keystrokes=keystrokes)
    plain = exact.tokenizer.decode(exact.tokenizer.encode(text)[:1000])
    load = os.getloadavg()[0]
    servers = {t: LlamaServer(server_bin, gguf, t, gguf.parent / f"llama-server-t{t}.log") for t in THREADS}
    if only is None:
        servers["fa-off"] = LlamaServer(server_bin, gguf, 1, gguf.parent / "llama-server-fa-off.log", ("-fa", "off"))
    try:
        for server in servers.values():
            server.wait_ready()
        info = {"rounds": rounds, "speed_rounds": speed_rounds, "source": source, "prompts": prompts,
                "fim_tokens": exact.tokenizer.count(prompts[-1]) + 1, "plain_tokens": exact.tokenizer.count(plain) + 1,
                "tokenize_ok": tokenizer_agrees(exact, servers[1], prompts), "step": exact.forward.state}
        speed = bench_speed(engines["recompute"], servers, plain, speed_rounds) if only != "typing" else None
        typing = bench_typing(engines, servers, prompts, rounds) if only != "speed" else None
        if only is not None:
            info["load"] = (load, os.getloadavg()[0])
            return render_part(speed, typing, info)
        torch.set_num_threads(1)
        check = {"timed": same_completions(typing), "error": logprob_error(exact, servers[1], prompts[-1]),
                 "error_fa_off": logprob_error(exact, servers["fa-off"], prompts[-1]),
                 "fa_off": parity(exact, servers["fa-off"], prompts, typing)}
        info["load"] = (load, os.getloadavg()[0])
    finally:
        for server in servers.values():
            server.close()
    return render(speed, typing, check, info)


def main(argv: list[str] | None = None) -> int:
    root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(prog="llamacpp_bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", type=Path, default=root / ".remote/llama.cpp/build/bin/llama-server")
    parser.add_argument("--gguf", type=Path, default=root / ".remote/bundled-f32.gguf")
    parser.add_argument("--rounds", type=int, default=4, help="typing replay rounds per backend and thread count")
    parser.add_argument("--speed-rounds", type=int, default=5, help="alternating prefill/decode runs")
    parser.add_argument("--keystrokes", type=int, default=40, help="characters typed per replay")
    parser.add_argument("--only", choices=("speed", "typing"), default=None,
                        help="run only prefill/decode speed or only the typing replay, and print it")
    parser.add_argument("--write", type=Path, default=None, help="replace this section in a Markdown file")
    args = parser.parse_args(argv)
    if args.only and args.write:
        parser.error("--only runs part of the benchmark; the file takes full runs only")
    section = run(args.server, args.gguf, args.rounds, args.speed_rounds, args.keystrokes, args.only)
    publish(section, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
