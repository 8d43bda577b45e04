"""FIM prompts: the family's layout, chosen from the tokenizer, within the token budget."""
from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from completion.context import Context
from completion.related import Snippet
from completion.windows import TokenCounter
from completion import CompletionConfig, CompletionService
from completion.prompt import build_prompt, render, resolve_format, resolve_layout
from completion.types import Position, Range, TextChange
from fakes import FakeEngine, FakeTokenizer, cursor_at
from model.fim import FORMATS

CONTEXT = Context(mode="line", path="pkg/app.py", comment="#", prefix="def f():\n    return ",
                  suffix="\n\nprint(f())\n", snippets=())


@pytest.mark.parametrize("style, expected", [
    ("deepseek", "<｜fim▁begin｜># pkg/app.py\ndef f():\n    return <｜fim▁hole｜>\n\nprint(f())\n<｜fim▁end｜>"),
    ("starcoder", "<file_sep>pkg/app.py\n<fim_prefix>def f():\n    return <fim_suffix>\n\nprint(f())\n<fim_middle>"),
    ("qwen", "<|file_sep|>pkg/app.py\n<|fim_prefix|>def f():\n    return <|fim_suffix|>\n\nprint(f())\n<|fim_middle|>"),
    ("codellama", "<PRE> # pkg/app.py\ndef f():\n    return  <SUF>\n\nprint(f())\n <MID>"),
    ("codestral", "[SUFFIX]\n\nprint(f())\n[PREFIX]# pkg/app.py\ndef f():\n    return "),
])
def test_each_family_is_chosen_from_the_tokenizer_and_laid_out(style, expected):
    engine = FakeEngine(tokenizer=FakeTokenizer(style))
    fmt = resolve_format(None, engine)
    assert fmt.name == style
    prompt = build_prompt(fmt, CONTEXT, engine.tokenizer.count, max_tokens=2048, bos=1)
    assert prompt.text == expected
    assert prompt.tokens == engine.tokenizer.count(expected) + 1


def test_special_tokens_are_found_by_probing_when_the_tokenizer_does_not_declare_them():
    engine = FakeEngine(tokenizer=FakeTokenizer("qwen", declare_fim=False))
    assert engine.fim_format is None
    assert resolve_format(None, engine).name == "qwen"


def test_a_tokenizer_without_fim_tokens_gets_a_plain_prompt():
    engine = FakeEngine(tokenizer=FakeTokenizer(None))
    fmt = resolve_format(None, engine)
    assert fmt.name == "plain"
    assert build_prompt(fmt, CONTEXT, engine.tokenizer.count, max_tokens=2048, bos=1).text == (
        "# pkg/app.py\ndef f():\n    return ")


def test_the_configured_format_wins_and_unknown_names_are_refused():
    engine = FakeEngine(tokenizer=FakeTokenizer("deepseek"))
    assert resolve_format("starcoder", engine).name == "starcoder"
    with pytest.raises(ValueError, match="Unknown FIM format 'gpt'"):
        resolve_format("gpt", engine)


@pytest.mark.parametrize("style, expected", [
    ("deepseek", "<｜fim▁begin｜><｜fim▁hole｜>\n\nprint(f())\n<｜fim▁end｜># pkg/app.py\ndef f():\n    return "),
    ("starcoder", "<file_sep>pkg/app.py\n<fim_prefix><fim_suffix>\n\nprint(f())\n<fim_middle>def f():\n    return "),
    ("codestral", "[SUFFIX]\n\nprint(f())\n[PREFIX]# pkg/app.py\ndef f():\n    return "),
])
def test_suffix_first_puts_the_prefix_right_before_the_middle(style, expected):
    engine = FakeEngine(tokenizer=FakeTokenizer(style))
    prompt = build_prompt(resolve_format(None, engine), CONTEXT, engine.tokenizer.count, max_tokens=2048, bos=1,
                          layout="spm")
    assert prompt.text == expected


def test_auto_layout_is_spm_only_where_the_model_declares_it():
    assert resolve_layout("auto", FakeEngine(fim_layouts=("psm", "spm"))) == "spm"
    assert resolve_layout("auto", FakeEngine()) == "psm"               # a real DeepSeek checkpoint
    assert resolve_layout("psm", FakeEngine(fim_layouts=("psm", "spm"))) == "psm"
    assert resolve_layout("spm", FakeEngine()) == "spm"                # the user's word wins


def test_with_spm_typing_only_appends_to_the_prompt():
    """What makes exact reuse cover everything before the new characters: within a word the
    prompt stays as it was (the word is healed: the model writes it), after it the prompt grows."""
    engine = FakeEngine(["x", "y", "z"], fim_layouts=("psm", "spm"))
    service = CompletionService(engine)
    text, position = cursor_at("def f(a):\n    ret█\n\nprint(f(1))\n")
    service.workspace.open("file:///p/a.py", "python", text, 1, path="a.py")
    uri = "file:///p/a.py"
    for version, typed in enumerate(("u", "rn "), start=2):
        service.complete(service.workspace.snapshot(uri), position)
        service.workspace.get(uri).apply([TextChange(typed, Range(position, position))], version)
        position = Position(position.line, position.character + len(typed))
    service.complete(service.workspace.snapshot(uri), position)
    first, second, third = engine.requests
    assert first["prompt"].endswith("def f(a):\n   ") and first["heal"] == " ret"
    assert second["prompt"] == first["prompt"] and second["heal"] == " retu"
    assert third["prompt"] == first["prompt"] + " return" and third["heal"] == " "


def test_sentencepiece_codellama_tokens_take_no_extra_spaces():
    fmt = replace(FORMATS["codellama"], prefix="▁<PRE>", suffix="▁<SUF>", middle="▁<MID>")
    assert fmt.fill("a", "b") == "▁<PRE>a▁<SUF>b▁<MID>"


def test_snippets_come_before_the_file_in_the_repository_format():
    snippet = Snippet("lib/util.py", "def helper():\n    pass", "#", "definition", 1.0)
    deepseek = render(FORMATS["deepseek"], prefix="x = ", suffix="", snippets=(snippet,),
                      path="app.py", comment="#")
    assert deepseek == "<｜fim▁begin｜># lib/util.py\ndef helper():\n    pass\n\n# app.py\nx = <｜fim▁hole｜><｜fim▁end｜>"
    qwen = render(FORMATS["qwen"], prefix="x = ", suffix="", snippets=(snippet,), path="app.py")
    assert qwen == ("<|file_sep|>lib/util.py\ndef helper():\n    pass\n<|file_sep|>app.py\n"
                    "<|fim_prefix|>x = <|fim_suffix|><|fim_middle|>")


def test_prompts_use_lf_line_ends_whatever_the_document_uses():
    context = replace(CONTEXT, prefix="a = 1\r\nb = ", suffix="\r\nc = 3\r\n")
    text = build_prompt(FORMATS["deepseek"], context, len, max_tokens=2048, bos=0).text
    assert "\r" not in text


def test_an_over_budget_context_is_trimmed_far_from_the_cursor_first():
    count = FakeTokenizer().count
    snippet = Snippet("u.py", "def helper():\n    pass", "#", "window", 0.5)
    context = replace(CONTEXT, prefix="".join(f"line_{i} = {i}\n" for i in range(50)) + "x = ",
                      suffix="".join(f"\nafter_{i}()" for i in range(10)), snippets=(snippet,))
    prompt = build_prompt(FORMATS["deepseek"], context, count, max_tokens=100, bos=1)
    assert prompt.tokens <= 100 and prompt.tokens == count(prompt.text) + 1
    assert prompt.snippets == ()                      # the snippet went first
    assert prompt.prefix.endswith("line_49 = 49\nx = ")  # the lines nearest the cursor stayed
    assert prompt.suffix.startswith("\nafter_0()")


# ---------------------------------------------------------------------------------------------
# The budget, through the whole service, is never exceeded

_LINES = st.sampled_from([
    "def compute(a, b):", "    return a + b", "", "x = compute(1, 2)", "    # 😀 中文 comment",
    "class Point:", "        self.x = x", "print(x)", "items = [1, 2, 3]", "if x:", "\tpass",
    "y = 'a very long string literal with many words in it to eat tokens quickly'",
])


@settings(max_examples=40, deadline=None)
@given(lines=st.lists(_LINES, min_size=1, max_size=80), other=st.lists(_LINES, max_size=40),
       budget=st.integers(64, 400), where=st.floats(0, 1), style=st.sampled_from(["deepseek", "qwen", "codestral"]))
def test_the_prompt_never_exceeds_the_budget(lines, other, budget, where, style):
    engine = FakeEngine("x", tokenizer=FakeTokenizer(style))
    config = CompletionConfig(max_prompt_tokens=budget, snippet_tokens=budget // 3)
    service = CompletionService(engine, config)
    line = int(where * (len(lines) - 1))
    lines = lines[:line] + [lines[line] + " = █"] + lines[line + 1:]
    text, position = cursor_at("\n".join(lines))
    service.workspace.open("file:///other.py", "python", "\n".join(other), 1, path="other.py")
    service.workspace.open("file:///a.py", "python", text, 1, path="pkg/a.py")
    service.complete(service.workspace.snapshot("file:///a.py"), position)
    for request in engine.requests:
        assert engine.tokenizer.count(request["prompt"]) + 1 <= budget


def test_token_counter_memoises_and_counts_crlf_as_lf():
    calls = []

    def count(text):
        calls.append(text)
        return len(text)

    counter = TokenCounter(count)
    assert counter("ab\r\n") == 3 and counter("ab\r\n") == 3 and calls == ["ab\n"]


def test_token_healing_can_be_turned_off_and_psm_prompts_never_heal():
    text, position = cursor_at("def f(a):\n    ret█\n\nprint(f(1))\n")
    for config, layouts, ends in ((CompletionConfig(token_healing=False), ("spm",), "def f(a):\n    ret"),
                                  (CompletionConfig(), (), "<｜fim▁hole｜>\n\nprint(f(1))\n<｜fim▁end｜>")):
        engine = FakeEngine(["urn a"], fim_layouts=layouts)
        service = CompletionService(engine, config)
        service.workspace.open("file:///p/a.py", "python", text, 1, path="a.py")
        result = service.complete(service.workspace.snapshot("file:///p/a.py"), position)
        assert engine.requests[0]["prompt"].endswith(ends) and engine.requests[0]["heal"] == ""
        assert result.suggestions[0].text == "urn a"
