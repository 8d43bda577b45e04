"""Single-line HumanEval infilling: exact match and pass@1 of a raw model, plain PSM prompts.

    python -m benchmarks.humaneval_infill                       # the bundled model, our engine
    python -m benchmarks.humaneval_infill --model DIR --backend transformers
    python -m benchmarks.humaneval_infill --canonical           # check the harness itself

All 1033 tasks of OpenAI's HumanEval-SingleLineInfilling (Bavarian et al. 2022, MIT), read
from `../shared/data/human-eval-infilling/` (`--data`). Each prompt is
`<BOS><｜fim▁begin｜>{prompt}<｜fim▁hole｜>{suffix}<｜fim▁end｜>` in the model's FIM format,
decoded greedily until a newline or end of sequence. Exact match compares the completion
and the canonical line after stripping whitespace; pass@1 runs `prompt + completion + "\\n"
+ suffix`, the task's tests and `check(entry_point)` in a subprocess with a timeout.

This is the raw-model baseline the completion pipeline must beat. The figures, with the
command, go to the "Bundled model quality" section of docs/benchmarks.md; `--update-card`
also writes them into the model card.
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

from model.fim import DEEPSEEK
from model.params import RuntimeConfig, SamplingParams

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "human-eval-infilling"
DATA_FILE = "HumanEval-SingleLineInfilling.jsonl.gz"
BUNDLED = REPO / "model" / "bundled"
DOCS = REPO / "docs" / "benchmarks.md"
SECTION = "## Bundled model quality"
DEEPSEEK_FIM = (DEEPSEEK.prefix, DEEPSEEK.suffix, DEEPSEEK.middle)


def load_tasks(data_dir: Path) -> list[dict]:
    path = data_dir / DATA_FILE
    if not path.is_file():
        raise SystemExit(f"humaneval_infill: {path} not found (see --data)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------------------------
# Backends: a prompt string in the model's FIM format → the greedy single-line completion
# ---------------------------------------------------------------------------------------

class EngineBackend:
    """Our in-process engine, through the engine protocol."""

    def __init__(self, model_dir: Path, threads: int | None):
        from model.engine import Engine

        self.engine = Engine.load(str(model_dir), RuntimeConfig(threads=threads or 0))
        fim = self.engine.tokenizer.require_fim()
        self.fim = (fim.prefix, fim.suffix, fim.middle)

    def complete(self, prompt: str, max_new_tokens: int) -> str:
        return self.engine.generate(prompt, SamplingParams(max_new_tokens=max_new_tokens, stop=("\n",))).run()


class TransformersBackend:
    """The Hugging Face reference: AutoModelForCausalLM.generate, greedy, stop at a newline."""

    def __init__(self, model_dir: Path, threads: int | None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.fim = DEEPSEEK_FIM

    def complete(self, prompt: str, max_new_tokens: int) -> str:
        ids = self.tokenizer(prompt, return_tensors="pt").input_ids        # BOS prepended
        with self.torch.no_grad():
            out = self.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                      stop_strings=["\n"], tokenizer=self.tokenizer,
                                      pad_token_id=self.tokenizer.eos_token_id)
        text = self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        return text.split("\n", 1)[0]


class PipelineBackend:
    """The whole completion pipeline (completion.CompletionService over our engine): the task
    is opened as a document and completed at the hole, as an editor would ask. The first line
    of the suggestion is scored, like the raw backends' single line."""

    def __init__(self, model_dir: Path, threads: int | None):
        from completion.service import CompletionService
        from model.engine import Engine

        self.service = CompletionService(Engine.load(str(model_dir), RuntimeConfig(threads=threads or 0)))
        self.fim = DEEPSEEK_FIM
        self.count = 0

    def complete(self, prompt: str, max_new_tokens: int) -> str:
        from completion.document import utf16_length
        from completion.types import Position

        begin, hole, end = self.fim
        prefix, suffix = prompt[len(begin):-len(end)].split(hole, 1)
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
        return result.suggestions[0].text.split("\n", 1)[0] if result.suggestions else ""


BACKENDS = {"engine": EngineBackend, "transformers": TransformersBackend, "pipeline": PipelineBackend}


# ---------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------

def psm_prompt(task: dict, fim: tuple[str, str, str]) -> str:
    begin, hole, end = fim
    return f"{begin}{task['prompt']}{hole}{task['suffix']}{end}"


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


def run(tasks: list[dict], complete, fim, max_new_tokens: int, workers: int, timeout: float) -> dict:
    """Complete every task (serially: the model has the cores), then test them in parallel."""
    started = time.time()
    completions = []
    for i, task in enumerate(tasks):
        completions.append(complete(psm_prompt(task, fim), max_new_tokens))
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


def section_text(figures: dict, card: dict, args, command: str) -> str:
    model = "bundled (`model/bundled/`)" if args.model.resolve() == BUNDLED.resolve() else f"`{args.model}`"
    bpb = f"{float(card['heldout_bpb']):.3f}" if "heldout_bpb" in card else "n/a"
    tokens, params = card.get("tokens_seen", ""), card.get("parameters", "")
    trained = f"{int(tokens) / 1e6:.1f}M tokens" if tokens.isdigit() else "n/a"
    params = f"{int(params) / 1e6:.2f}M" if params.isdigit() else "n/a"
    return f"""{SECTION}

Raw-model quality of the default model, the baseline the completion pipeline must beat.
Held-out figures come from training (`latent train`, model card); HumanEval from
`benchmarks/humaneval_infill.py`: all single-line infilling tasks, plain PSM prompts
(`<｜fim▁begin｜>prompt<｜fim▁hole｜>suffix<｜fim▁end｜>`), greedy, stop at a newline.
Exact match compares stripped lines; pass@1 runs the task's tests.

| model | params | trained on | held-out bits/byte | HumanEval-SL exact match | pass@1 | tasks |
|---|---|---|---|---|---|---|
| {model} | {params} | {trained} | {bpb} | {figures['exact_match']:.1f} % | {figures['pass_at_1']:.1f} % | {figures['tasks']} |
| DeepSeek-Coder-V2-Lite-Base (published) | 15.7B | 10.2T tokens | — | 78.7 % | — | 1033 |

{figures['empty']} completions were empty. Backend `{args.backend}`, {figures['generate_seconds']:.0f} s
to generate on this machine ({time.strftime('%Y-%m-%d')}).

```
{command}
```
"""


def replace_section(document: str, section: str) -> str:
    """Swap this benchmark's `## ` section in a Markdown document, or append it."""
    start = document.find(SECTION)
    if start < 0:
        return document.rstrip("\n") + ("\n\n" if document.strip() else "# Benchmarks\n\n") + section
    following = document.find("\n## ", start + len(SECTION))
    end = len(document) if following < 0 else following + 1
    return document[:start] + section + ("\n" + document[end:] if following >= 0 else "")


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
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the HumanEval infilling files")
    p.add_argument("--limit", type=int, help="only the first N tasks (a quick look; not written to the docs)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, help="torch threads for the model")
    p.add_argument("--workers", type=int, default=2, help="test processes in parallel")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per test run")
    p.add_argument("--canonical", action="store_true", help="score the canonical solutions (harness check)")
    p.add_argument("--samples", type=Path, help="write every completion and verdict to this JSONL file")
    p.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    p.add_argument("--update-card", action="store_true", help="write the figures into the model card")
    args = p.parse_args(argv)

    tasks = load_tasks(args.data)[: args.limit]
    if args.canonical:
        fim = DEEPSEEK_FIM
        answers = {psm_prompt(t, fim): t["canonical_solution"].rstrip("\n") for t in tasks}
        complete = lambda prompt, max_new_tokens: answers[prompt]          # noqa: E731
    else:
        backend = BACKENDS[args.backend](args.model, args.threads)
        complete, fim = backend.complete, backend.fim
    figures = run(tasks, complete, fim, args.max_new_tokens, args.workers, args.timeout)
    print(f"{figures['tasks']} tasks: exact match {figures['exact_match']:.1f} %, "
          f"pass@1 {figures['pass_at_1']:.1f} %, {figures['empty']} empty, "
          f"{figures['generate_seconds']:.0f} s generating")
    if args.samples:
        args.samples.write_text("".join(json.dumps(s) + "\n" for s in figures["samples"]))
    if args.canonical or args.limit:
        return 0
    command = "python -m benchmarks.humaneval_infill " + shlex.join(argv if argv is not None else sys.argv[1:])
    if not args.no_docs:
        DOCS.parent.mkdir(parents=True, exist_ok=True)
        current = DOCS.read_text() if DOCS.is_file() else ""
        DOCS.write_text(replace_section(current, section_text(figures, card_figures(args.model), args, command.strip())))
    if args.update_card:
        update_card(args.model, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
