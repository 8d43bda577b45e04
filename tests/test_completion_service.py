"""The service: wiring, typing-through, the LRU, precomputation, cancellation, errors, state."""
from __future__ import annotations

import threading
import time

import pytest

from completion import CompletionConfig, CompletionService, InvalidPosition
from completion.alternatives import distinct
from completion.types import REASONS, Position, Range, Suggestion, TextChange
from fakes import FakeEngine, FakeTokenizer, cursor_at
from model.params import SamplingParams
from model.protocol import CancelToken

URI = "file:///project/pkg/calc.py"


def _service(reply, marked: str, language: str = "python", uri: str = URI, path: str | None = "pkg/calc.py",
             **config):
    engine = FakeEngine(reply)
    service = CompletionService(engine, CompletionConfig(**config))
    text, position = cursor_at(marked)
    service.workspace.open(uri, language, text, 1, path=path)
    return service, engine, position


def _type(service: CompletionService, typed: str, at: Position, uri: str = URI) -> Position:
    """The user types `typed` at `at`; the cursor ends after it."""
    document = service.workspace.get(uri)
    document.apply([TextChange(typed, Range(at, at))], document.version + 1)
    lines = document.lines
    return lines.position(lines.offset(at) + len(typed))


def _complete(service: CompletionService, position: Position, uri: str = URI, cancel=None):
    return service.complete(service.workspace.snapshot(uri), position, cancel)


# ---------------------------------------------------------------------------------------------
# One request


def test_a_block_completion_end_to_end():
    service, engine, position = _service(
        "\n    return a + b\n\ndef other():\n    pass\n", "import os\n\ndef add(a, b):█\n\nprint(add(1, 2))\n")
    result = _complete(service, position)
    assert result.source == "model" and result.mode == "block"
    assert result.suggestions == [Suggestion("\n    return a + b", Range(position, position))]
    request = engine.requests[0]
    assert request["prompt"] == (
        "<｜fim▁begin｜># pkg/calc.py\nimport os\n\ndef add(a, b):<｜fim▁hole｜>\n\nprint(add(1, 2))\n<｜fim▁end｜>")
    assert request["max_new_tokens"] == 160 and "\n\n\n" in request["stop"]
    assert request["stop_token_ids"] == (engine.tokenizer.fim.end_id,)
    markers = {engine.tokenizer.encode(t)[0] for t in ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>")}
    assert markers <= set(request["suppress_token_ids"])     # a middle never writes the format's markers
    assert set(result.timings_ms) == {"parse", "context", "prompt", "engine", "postprocess"}
    assert set(result.parts_ms) == {"tokenize", "queries"}
    assert result.engine_stats["prompt_tokens"] > 0


def test_line_mode_asks_for_one_line():
    service, engine, position = _service("compute(1))\nnext()", "print(█)\n")
    result = _complete(service, position)
    assert result.mode == "line" and result.suggestions[0].text == "compute(1))"
    assert engine.requests[0]["max_new_tokens"] == 48
    assert result.engine_stats.get("stopped_early")          # the stream ended at the line break


def test_a_dropped_answer_is_followed_by_the_next_likely_first_tokens():
    """The greedy answer breaks the syntax: the answers that begin with the first tokens ranked
    next are tried (at most RETRIES), and the first that passes is shown."""
    marked = "def f(x):\n    y = x\n    █\n"
    engine = FakeEngine(["print(y))", "(y))", " y"], first_choices=("print", "len", "return"))
    service = CompletionService(engine)
    text, position = cursor_at(marked)
    service.workspace.open(URI, "python", text, 1, path="pkg/calc.py")
    result = _complete(service, position)
    assert [s.text for s in result.suggestions] == ["return y"] and engine.calls == 3
    assert service.stats()["retries"] == 1

    engine = FakeEngine(["print(y)", " y"], first_choices=("print", "return"))   # it passes: no other
    service = CompletionService(engine)
    service.workspace.open(URI, "python", text, 1, path="pkg/calc.py")
    assert [s.text for s in _complete(service, position).suggestions] == ["print(y)"] and engine.calls == 1

    engine = FakeEngine(["", " y"], first_choices=("\n", "return"))             # nothing to write stands
    service = CompletionService(engine)
    service.workspace.open(URI, "python", text, 1, path="pkg/calc.py")
    assert _complete(service, position).reason == "nothing" and engine.calls == 1


@pytest.mark.parametrize("multiline", [True, False])
def test_line_mode_runs_on_to_the_line_that_closes_what_it_opened(multiline):
    service, engine, position = _service("total = sum(\n        xs,\n    )\n    return total\n",
                                         "def f(xs):\n    n = len(xs)\n    █\n", multiline=multiline)
    result = _complete(service, position)
    if not multiline:                                        # "never more than one line": `total = sum(`
        assert result.suggestions == [] and result.reason == "syntax-error"   # alone is broken
        return
    assert result.mode == "line" and result.suggestions[0].text == "total = sum(\n        xs,\n    )"
    assert result.engine_stats.get("stopped_early")          # … and ended there


def test_line_mode_at_the_end_of_a_written_line_may_write_the_next_line():
    service, engine, position = _service("\nprint(total)\nmore()", "total = 1█\n")
    result = _complete(service, position)
    assert result.mode == "line" and result.suggestions[0].text == "\nprint(total)"
    assert engine.requests[0]["stop"][0] == "\n\n"


def test_decoding_stops_once_the_block_is_over():
    long_tail = "\n".join(f"def f{i}():\n    pass" for i in range(30))
    service, engine, position = _service("\n    return 1\nx = 2\n" + long_tail, "def one():█\n", max_new_tokens_block=400)
    result = _complete(service, position)
    assert result.suggestions[0].text == "\n    return 1"
    assert result.engine_stats["stopped_early"] is True
    assert result.engine_stats["generated_tokens"] < 20


def test_mode_none_skips_the_model():
    service, engine, position = _service("x", "pri█nt(1)\n")
    result = _complete(service, position)
    assert (result.source, result.mode, result.suggestions, engine.calls) == ("skipped", "none", [], 0)
    assert "context" in result.timings_ms


def test_a_blank_line_at_the_first_column_is_completed_at_the_indentation_an_editor_would_give_it():
    """A trimmed blank line inside a function, the cursor at its first column: the model is
    asked as if the body's indentation were typed (at the first column it mostly ends the
    middle at once), and the suggestion brings that indentation; typing it types through."""
    service, engine, position = _service("return a + b\n", "def add(a, b):\n    x = a\n█\n    return x\n")
    result = _complete(service, position)
    assert result.suggestions == [Suggestion("    return a + b", Range(position, position))]
    assert "    x = a\n    <｜fim▁hole｜>\n    return x\n" in engine.requests[0]["prompt"]
    position = _type(service, "  ", position)
    again = _complete(service, position)
    assert again.source == "typing-through" and again.suggestions[0].text == "  return a + b"
    assert len(engine.requests) == 1


def test_disabled_languages_skip_the_model():
    service, engine, position = _service("x", "x = █\n", disabled_languages={"python"})
    assert _complete(service, position).source == "skipped" and engine.calls == 0


def test_unknown_languages_complete_as_plain_text():
    service, engine, position = _service("world\nmore", "hello █\n", language="plaintext",
                                         uri="file:///notes.txt", path="notes.txt")
    result = _complete(service, position, uri="file:///notes.txt")
    assert result.mode == "line" and result.suggestions[0].text == "world"
    assert engine.requests[0]["prompt"].startswith("<｜fim▁begin｜># notes.txt\nhello ")


@pytest.mark.parametrize("position, message", [
    (Position(5, 0), "Line 5 is past the end of the document, which has 2 lines."),
    (Position(0, 40), "Character 40 is past the end of line 0, which is 4 UTF-16 code units long."),
])
def test_positions_outside_the_document_raise_invalid_position(position, message):
    service, engine, _ = _service("x", "x = █\n")
    with pytest.raises(InvalidPosition, match=message):
        _complete(service, position)
    assert engine.calls == 0


def test_a_snapshot_of_an_older_version_is_completed_as_it_was():
    service, engine, position = _service("1", "x = █\n")
    old = service.workspace.snapshot(URI)
    service.workspace.change(URI, 2, [TextChange("y = 2\n", Range(Position(0, 0), Position(0, 0)))])
    result = service.complete(old, position)
    assert result.suggestions[0].text == "1" and "y = 2" not in engine.requests[0]["prompt"]


def test_related_snippets_from_other_open_documents_reach_the_prompt():
    service, engine, position = _service("order.items, 0.2)", "from cart import compute_total\n\ntotal = compute_total(█\n")
    service.workspace.open("file:///project/cart.py", "python",
                           "def compute_total(items, tax_rate):\n    return sum(items) * (1 + tax_rate)\n", 1, path="cart.py")
    _complete(service, position)
    assert engine.requests[0]["prompt"].startswith(
        "<｜fim▁begin｜># cart.py\ndef compute_total(items, tax_rate):\n    return sum(items) * (1 + tax_rate)\n\n# pkg/calc.py\n")


def test_crlf_documents_get_crlf_suggestions_and_lf_prompts():
    service, engine, position = _service("\n    return 1", "def f():█\r\n\r\nx = 1\r\n")
    result = _complete(service, position)
    assert result.suggestions[0].text == "\r\n    return 1"
    assert "\r" not in engine.requests[0]["prompt"]


def test_another_fim_family_from_the_configuration():
    engine = FakeEngine("1", tokenizer=FakeTokenizer("starcoder"))
    service = CompletionService(engine)
    text, position = cursor_at("x = █\n")
    service.workspace.open(URI, "python", text, 1, path="calc.py")
    _complete(service, position)
    assert engine.requests[0]["prompt"] == "<file_sep>calc.py\n<fim_prefix>x = <fim_suffix>\n<fim_middle>"
    service.update_config(CompletionConfig(fim_format="deepseek"))
    _complete(service, position)
    assert engine.requests[1]["prompt"].startswith("<｜fim▁begin｜>")
    assert service.stats()["fim_format"] == "deepseek"


# ---------------------------------------------------------------------------------------------
# Typing-through and the LRU


def test_typing_the_start_of_the_suggestion_answers_the_rest_without_the_model():
    service, engine, position = _service("\n    return a + b", "def add(a, b):█\n")
    _complete(service, position)
    position = _type(service, "\n    ret", position)
    result = _complete(service, position)
    assert result.source == "typing-through" and engine.calls == 1
    assert result.suggestions == [Suggestion("urn a + b", Range(position, position))]
    position = _type(service, "urn a", position)
    assert _complete(service, position).suggestions[0].text == " + b" and engine.calls == 1


def test_typing_through_keeps_the_replaced_closer_in_the_range():
    service, engine, position = _service("width, height)", "area = rect(█)\n")
    first = _complete(service, position).suggestions[0]
    assert first.range.end == Position(0, position.character + 1)
    position = _type(service, "wid", position)
    result = _complete(service, position)
    assert result.source == "typing-through"
    assert result.suggestions == [Suggestion("th, height)", Range(position, Position(0, position.character + 1)))]


def test_typing_something_else_asks_the_model_again():
    service, engine, position = _service(["\n    return a + b", "\n    print(a)"], "def add(a, b):█\n")
    _complete(service, position)
    position = _type(service, "\n    pri", position)
    result = _complete(service, position)
    assert result.source == "model" and engine.calls == 2


def test_typing_the_whole_suggestion_asks_for_the_next():
    service, engine, position = _service(["1", "2"], "x = █\n")
    _complete(service, position)
    position = _type(service, "1", position)
    assert _complete(service, position).source in ("model", "skipped")


def test_the_same_request_again_is_answered_from_memory():
    service, engine, position = _service("compute(1)", "x = █\n")
    first = _complete(service, position)
    again = _complete(service, position)
    assert again.source == "cache" and again.suggestions == first.suggestions and engine.calls == 1


def test_returning_to_an_earlier_place_hits_the_lru():
    service, engine, position = _service(["1", "2"], "a = █\nb = \n")
    first = _complete(service, position)
    _complete(service, Position(1, 4))
    back = _complete(service, position)
    assert back.source == "cache" and back.suggestions == first.suggestions and engine.calls == 2


def test_an_lru_of_size_zero_remembers_nothing():
    service, engine, position = _service(["1", "2", "3"], "a = █\nb = \n", lru_size=0)
    _complete(service, position)
    _complete(service, Position(1, 4))
    assert _complete(service, position).source == "model" and engine.calls == 3


# ---------------------------------------------------------------------------------------------
# Precomputation after an accept


def _wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("editor_applies_first", [True, False])
def test_an_accept_precomputes_the_next_suggestion(editor_applies_first):
    service, engine, position = _service(["total = 0", "\nfor x in xs:"], "def f(xs):\n    █\n")
    suggestion = _complete(service, position).suggestions[0]
    assert suggestion.text == "total = 0"
    if editor_applies_first:
        end = _type(service, suggestion.text, position)
        service.precompute(URI, suggestion)
    else:
        service.precompute(URI, suggestion)
        end = _type(service, suggestion.text, position)
    _wait_for(lambda: engine.calls == 2)
    assert engine.requests[1]["prompt"].endswith("    total = 0<｜fim▁hole｜>\n<｜fim▁end｜>")
    result = _complete(service, end)
    assert result.source == "cache" and engine.calls == 2
    assert result.suggestions[0].text == "\nfor x in xs:"


def test_a_precomputation_for_another_place_is_dropped():
    service, engine, position = _service(["total = 0", "\nlater", "other"], "def f(xs):\n    █\n")
    suggestion = _complete(service, position).suggestions[0]
    end = _type(service, suggestion.text, position)
    service.precompute(URI, suggestion)
    _wait_for(lambda: engine.calls == 2)
    moved = _type(service, " + 1", end)
    result = _complete(service, moved)
    assert result.source == "model" and engine.calls == 3


# ---------------------------------------------------------------------------------------------
# Cancellation


def test_a_request_cancelled_before_it_starts_never_reaches_the_model():
    service, engine, position = _service("1", "x = █\n")
    cancel = CancelToken()
    cancel.cancel()
    result = _complete(service, position, cancel=cancel)
    assert (result.source, result.suggestions, engine.calls) == ("cancelled", [], 0)


def test_a_request_cancelled_while_decoding_returns_nothing_and_is_not_cached():
    cancel = CancelToken()
    service, engine, position = _service("compute(1, 2, 3)", "x = █\n")
    engine.on_token = lambda step: cancel.cancel() if step == 2 else None
    result = _complete(service, position, cancel=cancel)
    assert (result.source, result.suggestions) == ("cancelled", [])
    engine.on_token = None
    assert _complete(service, position).source == "model" and engine.calls == 2


# ---------------------------------------------------------------------------------------------
# State and threads


def test_closing_a_document_frees_its_state():
    service, engine, position = _service("1", "x = █\n")
    _complete(service, position)
    stats = service.stats()
    assert stats["typing_through_documents"] == 1 and stats["cache_entries"] == 1
    service.workspace.close(URI)
    service.forget(URI)                      # what the workspace's owner does on didClose
    stats = service.stats()
    assert stats["typing_through_documents"] == 0 and stats["cache_entries"] == 0 and stats["documents"] == 0


def test_clear_cache_forgets_answers():
    service, engine, position = _service(["1", "2"], "x = █\n")
    _complete(service, position)
    service.clear_cache()
    assert _complete(service, position).source == "model" and engine.calls == 2


def test_stats_count_what_happened():
    service, engine, position = _service("1", "x = █\n")
    _complete(service, position)
    _complete(service, position)
    _complete(service, Position(0, 1))
    stats = service.stats()
    assert (stats["requests"], stats["model_calls"], stats["cache_hits"], stats["skipped"]) == (3, 1, 1, 1)


def test_completing_on_a_worker_while_the_event_loop_edits():
    service, engine, _ = _service(lambda prompt: "value", "x = █\n")
    stop = threading.Event()
    failures = []

    def edit():
        version = 2
        while not stop.is_set():
            service.workspace.change(URI, version, [TextChange("y = 1\n", Range(Position(0, 0), Position(0, 0)))])
            version += 1

    editor = threading.Thread(target=edit)
    editor.start()
    try:
        for _ in range(50):
            snapshot = service.workspace.snapshot(URI)
            last = snapshot.text.count("\n")
            try:
                result = service.complete(snapshot, Position(last - 1, 4) if last else Position(0, 0))
                assert result.source in ("model", "cache", "skipped", "typing-through")
            except Exception as error:  # noqa: BLE001 - collected for the assertion below
                failures.append(error)
    finally:
        stop.set()
        editor.join()
    assert failures == []


def test_configuration_is_validated():
    with pytest.raises(ValueError):
        CompletionConfig(max_prompt_tokens=10)
    with pytest.raises(ValueError):
        CompletionConfig(prefix_fraction=0)
    assert CompletionConfig(disabled_languages=["go"]).disabled_languages == ("go",)
    with pytest.raises(ValueError, match="temperature"):
        CompletionConfig(sampling=SamplingParams(temperature=float("nan")))


# ---------------------------------------------------------------------------------------------
# Per language: snippets from other open documents, typing-through, the header and budget

LANGUAGE_CASES = {
    "python": dict(
        path="app/main.py", other_path="app/geometry.py",
        other="import math\n\n\ndef circle_area(radius):\n    return math.pi * radius ** 2\n",
        marked="from geometry import circle_area\n\ndef report(r):\n    area = circle_area(█\n",
        definition="def circle_area(radius):\n    return math.pi * radius ** 2",
        header="# app/main.py\n",
        block="def report(r):█\n", answer="\n    area = circle_area(r)\n    return area", typed="\n    area = circle",
    ),
    "typescript": dict(
        path="src/view.ts", other_path="src/dates.ts",
        other="export function formatDate(date: Date): string {\n  return date.toISOString();\n}\n",
        marked="import { formatDate } from './dates';\n\nconst label = formatDate(█);\n",
        definition="export function formatDate(date: Date): string {\n  return date.toISOString();\n}",
        header="// src/view.ts\n",
        block="function show(d: Date): void {█}\n", answer="\n  console.log(formatDate(d));\n}", typed="\n  console.",
    ),
    "go": dict(
        path="cmd/main.go", other_path="stats/sum.go",
        other="package stats\n\nfunc Sum(xs []int) int {\n\ttotal := 0\n\treturn total\n}\n",
        marked="package main\n\nfunc main() {\n\ttotal := Sum(█)\n}\n",
        definition="func Sum(xs []int) int {\n\ttotal := 0\n\treturn total\n}",
        header="// cmd/main.go\n",
        block="package main\n\nfunc main() {█\n}\n", answer='\n\tfmt.Println("hello")', typed="\n\tfmt.Pr",
    ),
    "rust": dict(
        path="src/main.rs", other_path="src/shapes.rs",
        other="pub fn area(width: f64, height: f64) -> f64 {\n    width * height\n}\n",
        marked="fn main() {\n    let a = area(█);\n}\n",
        definition="pub fn area(width: f64, height: f64) -> f64 {\n    width * height\n}",
        header="// src/main.rs\n",
        block="fn main() {█}\n", answer='\n    println!("{}", area(2.0, 3.0));\n}', typed="\n    println!(",
    ),
}


@pytest.mark.parametrize("language", list(LANGUAGE_CASES))
def test_definitions_from_other_open_files_reach_the_prompt(language):
    case = LANGUAGE_CASES[language]
    uri = f"file:///p/{case['path']}"
    service, engine, position = _service("x", case["marked"], language, uri=uri, path=case["path"])
    service.workspace.open(f"file:///p/{case['other_path']}", language, case["other"], 1, path=case["other_path"])
    service.complete(service.workspace.snapshot(uri), position)
    prompt = engine.requests[0]["prompt"]
    comment = case["header"].split()[0]
    assert prompt.startswith(f"<｜fim▁begin｜>{comment} {case['other_path']}\n{case['definition']}\n\n{case['header']}")


@pytest.mark.parametrize("language", list(LANGUAGE_CASES))
def test_typing_through_per_language(language):
    case = LANGUAGE_CASES[language]
    uri = f"file:///p/{case['path']}"
    service, engine, position = _service(case["answer"], case["block"], language, uri=uri, path=case["path"])
    first = service.complete(service.workspace.snapshot(uri), position)
    assert first.mode == "block" and first.suggestions[0].text == case["answer"]
    covered = first.suggestions[0].range.end.character - position.character
    position = _type(service, case["typed"], position, uri=uri)
    result = service.complete(service.workspace.snapshot(uri), position)
    assert result.source == "typing-through" and engine.calls == 1
    [suggestion] = result.suggestions
    assert suggestion.text == case["answer"][len(case["typed"]):]
    assert suggestion.range.end == Position(position.line, position.character + covered)


@pytest.mark.parametrize("language", list(LANGUAGE_CASES))
@pytest.mark.parametrize("budget", [64, 150])
def test_the_header_and_the_budget_per_language(language, budget):
    case = LANGUAGE_CASES[language]
    uri = f"file:///p/{case['path']}"
    padding = "\n".join(f"{case['header'].split()[0]} filler line {i} with several words" for i in range(60))
    service, engine, position = _service("x", padding + "\n" + case["marked"], language, uri=uri,
                                         path=case["path"], max_prompt_tokens=budget)
    service.complete(service.workspace.snapshot(uri), position)
    prompt = engine.requests[0]["prompt"]
    assert prompt.startswith("<｜fim▁begin｜>" + case["header"])
    assert engine.tokenizer.count(prompt) + 1 <= budget


def test_special_token_strings_in_the_document_stay_plain_text():
    """A file that spells a FIM token (this project's own model/fim.py does) must not hand the
    model a second fim▁end or an end of sentence: only the prompt's own are control tokens."""
    fim, tokenizer = FakeTokenizer().fim, FakeTokenizer()
    engine = FakeEngine("1", tokenizer=tokenizer)
    service = CompletionService(engine)
    text, position = cursor_at(f'END = "{fim.middle}"\nEOS = "<｜end▁of▁sentence｜>"\nx = █\n')
    service.workspace.open(URI, "python", text, 1, path="pkg/calc.py")
    _complete(service, position)
    ids = tokenizer.encode(engine.requests[0]["prompt"])
    controls = {tokenizer.encode(s)[0]: s for s in tokenizer.special_tokens}
    assert [controls[i] for i in ids if i in controls] == [fim.prefix, fim.suffix, fim.middle]


@pytest.mark.parametrize("reply, marked, reason", [
    ("1", "x = ab█c\n", "inside-word"),
    ("1", "x = █foo(1)\n", "code-follows"),
    ("", "x = █\n", "nothing"),
    ("print(x)", "x = 1\n█\nprint(x)\n", "suffix-repeat"),
    ("'hello'))", "print(█)\n", "syntax-error"),
])
def test_every_empty_answer_says_why(reply, marked, reason):
    service, _, position = _service(reply, marked)
    result = _complete(service, position)
    assert not result.suggestions and result.reason == reason
    assert REASONS[reason].endswith(".")
    assert service.stats()["reasons"] == {reason: 1}


def test_a_language_the_model_was_not_trained_on_gets_nothing_unless_forced():
    engine = FakeEngine("1", languages=("python",))
    for config, expected in ((CompletionConfig(), "language-untrained"),
                             (CompletionConfig(all_languages=True), "")):
        service = CompletionService(engine, config)
        text, position = cursor_at("let x = █\n")
        service.workspace.open("file:///p/a.js", "javascript", text, 1, path="a.js")
        result = service.complete(service.workspace.snapshot("file:///p/a.js"), position)
        assert result.reason == expected and bool(result.suggestions) == (not expected)
    service = CompletionService(engine)
    text, position = cursor_at("x = █\n")
    service.workspace.open("file:///p/a.py", "python", text, 1, path="a.py")
    assert service.complete(service.workspace.snapshot("file:///p/a.py"), position).suggestions


def test_alternatives_add_only_new_texts_and_are_drawn_only_while_more_are_wanted():
    at = Range(Position(0, 0), Position(0, 0))
    drawn: list[str] = []

    def alternatives():
        for text in ("first", "", "second", "third", "fourth"):   # "" failed postprocessing
            drawn.append(text)
            yield [Suggestion(text, at)] if text else []

    kept = distinct([Suggestion("first", at)], alternatives(), count=3)
    assert [s.text for s in kept] == ["first", "second", "third"]
    assert drawn == ["first", "", "second", "third"]   # the fourth is never computed
