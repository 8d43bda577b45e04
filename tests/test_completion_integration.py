"""The real pipeline on the real engine: a tiny random checkpoint (always), the bundled model
(once it is there). Budgets are measured with the real tokenizer, BOS included."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from completion import CompletionConfig, CompletionService
from completion.types import Position
from fakes import FakeEngine, cursor_at
from model.params import SamplingParams

BUNDLED = Path(__file__).resolve().parent.parent / "model" / "bundled"

SOURCE = '''\
import math


class Circle:
    def __init__(self, radius):
        self.radius = radius

    def area(self):
        return math.pi * self.radius ** 2

    def perimeter(self):
        █
'''


def _big_file(lines: int) -> str:
    return "".join(f"def helper_{i}(value):\n    return value * {i} + len(str(value))\n\n" for i in range(lines))


@pytest.mark.skipif(not (BUNDLED / "tokenizer.json").is_file(), reason="model/bundled is not there yet")
@settings(max_examples=25, deadline=None)
@given(budget=st.integers(64, 1024), line=st.integers(0, 119), snippets=st.integers(0, 400))
def test_budgets_hold_with_the_bundled_tokenizer(budget, line, snippets):
    tokenizer = _bundled_tokenizer()
    engine = FakeEngine("x", tokenizer=tokenizer)
    service = CompletionService(engine, CompletionConfig(max_prompt_tokens=budget, snippet_tokens=snippets))
    lines = _big_file(40).split("\n")
    lines[line] += "  # 😀 中文 █"
    text, position = cursor_at("\n".join(lines))
    service.workspace.open("file:///p/other.py", "python", _big_file(12), 1, path="other.py")
    service.workspace.open("file:///p/big.py", "python", text, 1, path="big.py")
    result = service.complete(service.workspace.snapshot("file:///p/big.py"), position)
    assert result.source == "model"
    prompt = engine.requests[0]["prompt"]
    assert tokenizer.count(prompt) + (tokenizer.bos_id is not None) <= budget
    assert len(tokenizer.encode(prompt, add_bos=tokenizer.add_bos)) <= budget


@pytest.mark.skipif(not (BUNDLED / "tokenizer.json").is_file(), reason="model/bundled is not there yet")
@pytest.mark.parametrize("context", [None, 1024, 400])
def test_prompts_stay_within_the_positions_the_model_was_trained_for(context):
    """A model trained on 1,024-token rows declares 1,024 positions: the prompt and the new
    tokens of a line suggestion fit in them, whatever the configured budget."""
    tokenizer = _bundled_tokenizer()
    engine = FakeEngine("x", tokenizer=tokenizer, context_length=context)
    config = CompletionConfig(max_prompt_tokens=2048, max_new_tokens_line=48)
    service = CompletionService(engine, config)
    text, position = cursor_at(_big_file(200) + "def last(value):\n    return █\n" + _big_file(100))
    service.workspace.open("file:///p/big.py", "python", text, 1, path="big.py")
    assert service.complete(service.workspace.snapshot("file:///p/big.py"), position).source == "model"
    request = engine.requests[0]
    used = len(tokenizer.encode(request["prompt"], add_bos=tokenizer.add_bos))
    if context is None:
        assert 1900 < used <= 2048                     # the configured budget, filled
    else:
        assert context - 48 - 40 < used <= context - request["max_new_tokens"]


_TOKENIZER = []


def _bundled_tokenizer():
    from model.tokenizer import Tokenizer

    if not _TOKENIZER:
        _TOKENIZER.append(Tokenizer.from_dir(BUNDLED))
    return _TOKENIZER[0]


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory):
    pytest.importorskip("transformers")
    from model.engine import Engine
    from tiny_models import save_checkpoint

    folder = tmp_path_factory.mktemp("tiny")
    save_checkpoint("v2-greedy-yarn", folder)
    return Engine.load(folder, warmup=False)


@pytest.mark.slow
@pytest.mark.parametrize("budget", [64, 400])
def test_prompts_fit_the_budget_with_the_real_tokenizer(tiny_engine, budget):
    service = CompletionService(tiny_engine, CompletionConfig(
        max_prompt_tokens=budget, snippet_tokens=budget // 4, max_new_tokens_block=8, max_new_tokens_line=8))
    text, position = cursor_at(_big_file(40) + "def area(r):\n    █\n" + _big_file(40))
    service.workspace.open("file:///p/big.py", "python", text, 1, path="big.py")
    service.workspace.open("file:///p/other.py", "python", _big_file(10), 1, path="other.py")
    result = service.complete(service.workspace.snapshot("file:///p/big.py"), position)
    assert result.source == "model" and result.mode == "block"
    assert 0 < result.engine_stats["prompt_tokens"] <= budget  # counted by the engine, BOS included
    assert budget - result.engine_stats["prompt_tokens"] < 40   # and the budget is used
    for suggestion in result.suggestions:
        assert suggestion.text.strip()


@pytest.mark.slow
def test_the_real_engine_answers_then_the_cache(tiny_engine):
    service = CompletionService(tiny_engine, CompletionConfig(max_new_tokens_line=16))
    text, position = cursor_at("x = █\n")
    service.workspace.open("file:///p/a.py", "python", text, 1, path="a.py")
    first = service.complete(service.workspace.snapshot("file:///p/a.py"), position)
    assert first.source == "model" and first.engine_stats["generated_tokens"] <= 16
    second = service.complete(service.workspace.snapshot("file:///p/a.py"), position)
    assert second.source == "cache"


@pytest.mark.slow
def test_a_generation_stopped_early_releases_the_engine(tiny_engine):
    generation = tiny_engine.generate("def f", SamplingParams(max_new_tokens=8))
    next(generation, None)
    generation.close()  # what the service does when postprocessing has seen enough
    other = threading.Thread(target=lambda: tiny_engine.generate("x", SamplingParams(max_new_tokens=1)).run(), daemon=True)
    other.start()
    other.join(timeout=20)
    assert not other.is_alive()


@pytest.mark.slow
@pytest.mark.skipif(not (BUNDLED / "config.json").is_file(), reason="model/bundled is not there yet")
def test_the_bundled_model_completes_a_python_file():
    from model.engine import Engine

    engine = Engine.load()
    answers = []
    generate = engine.generate

    def recording(*args, **kwargs):
        answers.append(generate(*args, **kwargs))
        return answers[-1]

    engine.generate = recording
    # the bundled model was trained on 512-token windows
    service = CompletionService(engine, CompletionConfig(max_prompt_tokens=512, max_new_tokens_block=64))
    text, position = cursor_at(SOURCE)
    service.workspace.open("file:///p/shapes.py", "python", text, 1, path="shapes.py")
    result = service.complete(service.workspace.snapshot("file:///p/shapes.py"), position)
    assert result.source == "model" and result.mode == "block"
    assert result.engine_stats["prompt_tokens"] <= 512
    if not result.suggestions and not any(c.isalpha() for c in answers[0].text):
        pytest.skip(f"the bundled model answered {answers[0].text[:40]!r}: nothing to keep")
    assert result.suggestions and result.suggestions[0].text.strip()


@pytest.mark.slow
@pytest.mark.skipif(not (BUNDLED / "config.json").is_file(), reason="model/bundled is not there yet")
def test_alternatives_branch_from_the_same_prompt_and_keep_the_greedy_answer_first():
    from model.engine import Engine

    service = CompletionService(Engine.load())
    text = "import os\n\ndef main():\n    path = "
    service.workspace.open("file:///p/a.py", "python", text + "\n", 1, path="a.py")
    snapshot = service.workspace.snapshot("file:///p/a.py")
    one = service.complete(snapshot, Position(3, 11))
    three = service.complete(snapshot, Position(3, 11), count=3)
    texts = [s.text for s in three.suggestions]
    assert texts[0] == one.suggestions[0].text and 2 <= len(texts) <= 3
    assert len(set(texts)) == len(texts)                       # distinct, all through postprocessing
    assert "alternatives" in three.timings_ms and "alternatives" not in one.timings_ms
    assert service.stats()["reasons"] == {}   # alternatives that failed postprocessing are no empty answer
