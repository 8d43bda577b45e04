"""HumanEval infilling: exact match and pass@1, raw (PSM or SPM prompts) or through the pipeline.

    python benchmarks/humaneval_infill.py                          # the bundled model, raw PSM
    python benchmarks/humaneval_infill.py --layout spm             # suffix-first prompts
    python benchmarks/humaneval_infill.py --backend pipeline       # the whole completion pipeline
    python benchmarks/humaneval_infill.py --model DIR --backend transformers
    python benchmarks/humaneval_infill.py --canonical              # check the harness itself

Tasks of OpenAI's HumanEval infilling (Bavarian et al. 2022, MIT), read from
`../shared/data/human-eval-infilling/` (`--data`): single-line (1033 tasks, the default) or
multi-line (`--set multi`, 5815). A raw prompt is the model's FIM part in the chosen layout
(model/fim.py), e.g. PSM `<BOS><｜fim▁begin｜>{prompt}<｜fim▁hole｜>{suffix}<｜fim▁end｜>`, decoded
greedily until a newline (single-line) or the end of the middle (multi-line). Exact match
compares the completion and the canonical lines after stripping whitespace; pass@1 runs
`prompt + completion + "\\n" + suffix`, the task's tests and `check(entry_point)` in a
subprocess with a timeout.

Each run replaces its own row (model, tasks, backend, layout) of the table in the "Bundled
model quality" section of docs/benchmarks.md, with the command; `--update-card` also writes
the figures into the model card.
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from model.fim import DEEPSEEK, LAYOUTS
from model.params import RuntimeConfig, SamplingParams
from report import write_row

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "human-eval-infilling"
DATA_FILES = {"single": "HumanEval-SingleLineInfilling.jsonl.gz", "multi": "HumanEval-MultiLineInfilling.jsonl.gz"}
BUNDLED = REPO / "model" / "bundled"
DOCS = REPO / "docs" / "benchmarks.md"
SECTION = "## Bundled model quality"


def load_tasks(data_dir: Path, which: str = "single") -> list[dict]:
    path = data_dir / DATA_FILES[which]
    if not path.is_file():
        raise SystemExit(f"humaneval_infill: {path} not found (see --data)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------------------------
# Backends: a prompt string in the model's FIM format → the greedy single-line completion
# ---------------------------------------------------------------------------------------

class EngineBackend:
    """Our in-process engine, through the engine protocol, on a raw FIM prompt."""

    def __init__(self, model_dir: Path, threads: int | None, layout: str):
        from model.engine import Engine

        self.engine = Engine.load(str(model_dir), RuntimeConfig(threads=threads or 0))
        self.engine.forward.wait()   # one decode step for the whole run (compiled where it can be)
        self.fim, self.layout = self.engine.tokenizer.require_fim(), layout

    def complete(self, prefix: str, suffix: str, max_new_tokens: int, stop: tuple[str, ...]) -> str:
        prompt = self.fim.fill(prefix, suffix, self.layout)
        return self.engine.generate(prompt, SamplingParams(max_new_tokens=max_new_tokens, stop=stop)).run()


class TransformersBackend:
    """The Hugging Face reference: AutoModelForCausalLM.generate, greedy, stop at a newline."""

    def __init__(self, model_dir: Path, threads: int | None, layout: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.layout = layout

    def complete(self, prefix: str, suffix: str, max_new_tokens: int, stop: tuple[str, ...]) -> str:
        prompt = DEEPSEEK.fill(prefix, suffix, self.layout)
        ids = self.tokenizer(prompt, return_tensors="pt").input_ids        # BOS prepended
        with self.torch.no_grad():
            out = self.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                      stop_strings=list(stop) or None, tokenizer=self.tokenizer,
                                      pad_token_id=self.tokenizer.eos_token_id)
        text = self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        return _cut(text, stop)


class PipelineBackend:
    """The whole completion pipeline (completion.CompletionService over our engine): the task
    is opened as a document and completed at the hole, as an editor would ask. The first line
    of the suggestion is scored, like the raw backends' single line."""

    def __init__(self, model_dir: Path, threads: int | None, layout: str):
        from completion import CompletionConfig, CompletionService
        from model.engine import Engine

        engine = Engine.load(str(model_dir), RuntimeConfig(threads=threads or 0))
        engine.forward.wait()   # one decode step for the whole run (compiled where it can be)
        self.service = CompletionService(engine, CompletionConfig(fim_layout=layout))
        self.count = 0

    def complete(self, prefix: str, suffix: str, max_new_tokens: int, stop: tuple[str, ...]) -> str:
        from completion.document import utf16_length
        from completion.types import Position

        self.count += 1
        uri = f"file:///humaneval/task_{self.count}.py"
        # the hole is a whole line, ending in a line break: in an editor, the cursor is on an
        # empty line that the user just opened, with the suffix on the lines below
        self.service.workspace.open(uri, "python", prefix + "\n" + suffix, 1, path=f"task_{self.count}.py")
        lines = prefix.split("\n")
        try:
            result = self.service.complete(self.service.workspace.snapshot(uri),
                                           Position(len(lines) - 1, utf16_length(lines[-1])))
        finally:
            self.service.workspace.close(uri)
            self.service.forget(uri)
        return _cut(result.suggestions[0].text, stop) if result.suggestions else ""


BACKENDS = {"engine": EngineBackend, "transformers": TransformersBackend, "pipeline": PipelineBackend}


def _cut(text: str, stop: tuple[str, ...]) -> str:
    """`text` up to its first stop string (a single line, for single-line tasks)."""
    cuts = [text.index(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text


# ---------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------

def exact_match(completion: str, task: dict) -> bool:
    return completion.strip() == task["canonical_solution"].strip()


def passes(completion: str, task: dict, timeout: float) -> bool:
    """Run the filled-in function against the task's tests in a fresh interpreter."""
    program = (task["prompt"] + completion + "\n" + task["suffix"] + "\n\n" + task["test"]
               + f"\n\ncheck({task['entry_point']})\n")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "candidate.py"
        path.write_text(program)
        try:
            result = subprocess.run([sys.executable, "-I", str(path)], cwd=tmp, timeout=timeout,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return False
    return result.returncode == 0


def run(tasks: list[dict], complete, stop: tuple[str, ...], max_new_tokens: int, workers: int,
        timeout: float) -> dict:
    """Complete every task (serially: the model has the cores), then test them in parallel."""
    started = time.time()
    completions = []
    for i, task in enumerate(tasks):
        completions.append(complete(task["prompt"], task["suffix"], max_new_tokens, stop))
        if (i + 1) % 100 == 0:
            print(f"  {i + 1}/{len(tasks)} completed, {time.time() - started:.0f} s", file=sys.stderr)
    generate_s = time.time() - started
    with ThreadPoolExecutor(max_workers=workers) as pool:
        passed = list(pool.map(lambda pair: passes(pair[0], pair[1], timeout), zip(completions, tasks)))
    exact = [exact_match(c, t) for c, t in zip(completions, tasks)]
    return {
        "tasks": len(tasks),
        "exact_match": 100.0 * sum(exact) / len(tasks),
        "pass_at_1": 100.0 * sum(passed) / len(tasks),
        "empty": sum(not c.strip() for c in completions),
        "generate_seconds": round(generate_s, 1),
        "samples": [{"task_id": t["task_id"], "completion": c, "exact": e, "passed": p}
                    for t, c, e, p in zip(tasks, completions, exact, passed)],
    }


# ---------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------

def card_figures(model_dir: Path) -> dict:
    """The `key: value` lines of the model card's front matter (held-out bits per byte …)."""
    card = model_dir / "README.md"
    if not card.is_file():
        return {}
    match = re.match(r"---\n(.*?)\n---\n", card.read_text(), re.S)
    pairs = (line.split(":", 1) for line in (match.group(1).splitlines() if match else []) if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


HEADER = """{section}

Raw-model quality of the default model and what the completion pipeline makes of it, one row
per model, task set, backend and layout (`benchmarks/humaneval_infill.py`; each run replaces
its own row). Raw rows give the model the FIM prompt in the layout named (PSM
`<｜fim▁begin｜>prompt<｜fim▁hole｜>suffix<｜fim▁end｜>`, SPM suffix first), greedy, stopped at a
newline for single-line tasks; pipeline rows open each task as a document and score the
suggestion at the hole (the cursor at column 0 of the empty hole line). Exact match compares
stripped lines; pass@1 runs the task's tests. Held-out bits per byte come from training (model
card).

| model | params | trained on | held-out bits/byte | tasks | backend | layout | exact match | pass@1 | empty | date | command |
|---|---|---|---|---|---|---|---|---|---|---|---|
| DeepSeek-Coder-V2-Lite-Base (published) | 15.7B | 10.2T tokens | — | single 1033 | raw | PSM | 78.7 % | — | — | — | Qwen2.5-Coder report, Table 7 |
"""


def row(figures: dict, card: dict, args, command: str) -> list[str]:
    model = "bundled" if args.model.resolve() == BUNDLED.resolve() else args.model.name
    bpb = f"{float(card['heldout_bpb']):.3f}" if "heldout_bpb" in card else "n/a"
    tokens, params = card.get("tokens_seen", ""), card.get("parameters", "")
    trained = f"{int(tokens) / 1e6:.1f}M tokens" if tokens.isdigit() else "n/a"
    params = f"{int(params) / 1e6:.2f}M" if params.isdigit() else "n/a"
    backend = "pipeline" if args.backend == "pipeline" else f"raw ({args.backend})"
    return [model, params, trained, bpb, f"{args.set} {figures['tasks']}", backend, args.layout.upper(),
            f"{figures['exact_match']:.1f} %", f"{figures['pass_at_1']:.1f} %", str(figures["empty"]),
            time.strftime("%Y-%m-%d"), f"`{command}`"]


ROW_KEY = (0, 4, 5, 6)   # model, tasks, backend, layout


def update_card(model_dir: Path, figures: dict) -> None:
    card = model_dir / "README.md"
    line = (f"Single-line HumanEval infilling ({figures['tasks']} tasks, plain PSM, greedy): "
            f"**{figures['exact_match']:.1f} % exact match, {figures['pass_at_1']:.1f} % pass@1** "
            f"(`benchmarks/humaneval_infill.py`).")
    text = re.sub(r"^Single-line HumanEval infilling.*$", line, card.read_text(), flags=re.M)
    card.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="humaneval_infill", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=BUNDLED, help="model folder (default: the bundled model)")
    p.add_argument("--backend", choices=sorted(BACKENDS), default="engine")
    p.add_argument("--layout", choices=LAYOUTS, default="psm", help="FIM layout of the prompts")
    p.add_argument("--set", choices=sorted(DATA_FILES), default="single", help="single-line or multi-line tasks")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the HumanEval infilling files")
    p.add_argument("--limit", type=int, help="only the first N tasks (a quick look; not written to the docs)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: 64 single-line, 256 multi-line")
    p.add_argument("--threads", type=int, help="torch threads for the model")
    p.add_argument("--workers", type=int, default=2, help="test processes in parallel")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per test run")
    p.add_argument("--canonical", action="store_true", help="score the canonical solutions (harness check)")
    p.add_argument("--samples", type=Path, help="write every completion and verdict to this JSONL file")
    p.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    p.add_argument("--update-card", action="store_true", help="write the figures into the model card")
    args = p.parse_args(argv)

    tasks = load_tasks(args.data, args.set)[: args.limit]
    stop = ("\n",) if args.set == "single" else ()
    max_new_tokens = args.max_new_tokens or (64 if args.set == "single" else 256)
    if args.canonical:
        answers = {(t["prompt"], t["suffix"]): t["canonical_solution"].rstrip("\n") for t in tasks}
        complete = lambda prefix, suffix, n, stop: answers[prefix, suffix]  # noqa: E731
    else:
        complete = BACKENDS[args.backend](args.model, args.threads, args.layout).complete
    figures = run(tasks, complete, stop, max_new_tokens, args.workers, args.timeout)
    print(f"{figures['tasks']} tasks: exact match {figures['exact_match']:.1f} %, "
          f"pass@1 {figures['pass_at_1']:.1f} %, {figures['empty']} empty, "
          f"{figures['generate_seconds']:.0f} s generating")
    if args.samples:
        args.samples.write_text("".join(json.dumps(s) + "\n" for s in figures["samples"]))
    if args.canonical or args.limit:
        return 0
    command = "python benchmarks/humaneval_infill.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    if not args.no_docs:
        DOCS.parent.mkdir(parents=True, exist_ok=True)
        write_row(DOCS, HEADER.format(section=SECTION), row(figures, card_figures(args.model), args, command.strip()),
                  ROW_KEY)
    if args.update_card:
        update_card(args.model, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
