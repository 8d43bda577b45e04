"""Large documents and long lines over the wire (issue #12 item 6, issue #20 item 6): a 10 MB
document holds up neither the others nor typing elsewhere, a document over max_parse_kb is not
parsed, and a line of megabytes costs what the prompt budget allows. Raw bytes through
tests/wire_helpers.py's Wire.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from lsp_helpers import SUGGESTS, SUGGESTS_END as END, SUGGESTS_LANGUAGE
from wire_helpers import INLINE, bundled_env, digest, inline_params, span


# ---------------------------------------------------------------------------------------------
# 6. Large documents

def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.slow
def test_a_ten_megabyte_document_does_not_hold_up_the_others(wire, tmp_path):
    """A 10 MB Python file opened and typed in, another document's completion asked after each
    step. Tree-sitter parsed the whole file on open and incrementally on every keystroke (and a
    completion in it parsed it again from scratch): on the 2-core test machine open took
    2.38–3.10 s, a keystroke 0.44–0.77 s, with 802 MB resident. Over max_parse_kb (1024) it is
    not parsed at all (open 0.28–0.54 s, keystrokes 0.14–0.29 s, 348–369 MB resident). What
    a keystroke still costs is completion.Document.apply rebuilding the line starts of the
    whole text (Lines, 0.16 s for 10 MB); the context builder reads windows around the cursor.

    The test holds what made those figures, not the figures: the file stays unparsed through
    every edit while the edits land, the other document's answer is reused as it was (no model
    call), and the server's resident memory stays well under what parsing took.
    """
    server = wire(bundled_env(tmp_path))
    server.initialize()
    small = "file:///wire/small.py"
    server.open(small, SUGGESTS, SUGGESTS_LANGUAGE)
    server.call(INLINE, inline_params(small, *END), timeout=60)            # the answer is cached now
    asked = server.stats()["service"].get("model_calls", 0)
    assert asked >= 1                                                      # the model wrote it
    text = ("def f(x):\n    return x * 2  # padding padding padding\n\n" * 200_000)[: 10 << 20]
    text = text[: text.rfind("\n") + 1]
    line = text.count("\n")
    big = "file:///wire/big.py"
    server.open(big, text)
    server.call(INLINE, inline_params(small, *END), timeout=120)
    assert server.document(big)["parsed"] is False                        # not parsed on open …
    for i in range(5):
        server.change(big, 2 + i, span(line, i, line, i, "x"))
        server.call(INLINE, inline_params(small, *END), timeout=120)
        record = server.document(big)
        assert (record["sha256"], record["parsed"]) == (digest(text + "x" * (i + 1)), False)   # … nor per keystroke
    assert server.stats()["service"].get("model_calls", 0) == asked       # the other document's answer, as it was
    assert _rss_mb(server.process.pid) < 650
    said = [line for line in server.logs("big.py") if "max_parse_kb" in line]
    assert len(said) == 1                                                  # said once, not per keystroke


@pytest.mark.slow
def test_typing_in_a_ten_megabyte_document_does_not_slow_completions_elsewhere(wire, tmp_path):
    """A fresh completion in a small document after each keystroke in a 10 MB one took
    0.86–0.96 s, nearly all of it RelatedIndex re-reading the big document's windows for
    snippets (0.29–0.64 s once a document over max_parse_kb offered none).

    The small document here uses the big one's names, so the big one's windows would be chosen
    as snippets: each prompt with the big document open and typed in must be the prompt without
    it, which the pipeline's answer cache shows (answered from it, no model call)."""
    server = wire(bundled_env(tmp_path))
    server.initialize()
    small, cursor = "file:///wire/small.py", "    return f(padding) + "
    texts = [f"# step {i}\ndef g(padding):\n{cursor}" for i in range(4)]
    server.open(small, "")
    version = iter(range(2, 100))

    def complete(text: str) -> None:
        server.change(small, next(version), {"text": text})
        server.call(INLINE, inline_params(small, 2, len(cursor)), timeout=120)

    for text in texts:                                                     # no other document: the model answers
        complete(text)
    before = server.stats()["service"]
    big_text = ("def f(x):\n    return x * 2  # padding padding padding\n\n" * 200_000)[: 10 << 20]
    line = big_text.count("\n")
    big = "file:///wire/big.py"
    server.open(big, big_text)
    for i, text in enumerate(texts):
        server.change(big, 2 + i, span(line, 0, line, 0, "x"))
        complete(text)
    after = server.stats()["service"]
    assert after.get("model_calls", 0) == before.get("model_calls", 0), "a prompt changed with the big document open"
    assert after.get("cache_hits", 0) - before.get("cache_hits", 0) == len(texts)


def test_a_document_over_max_parse_kb_is_not_parsed_and_said_so_once(wire):
    server = wire(max_parse_kb="1")
    server.initialize(ready=False)
    uri = "file:///wire/grows.py"
    server.open(uri, "def f():\n    return 1\n")
    assert server.document(uri)["parsed"] is True
    server.change(uri, 2, span(2, 0, 2, 0, "# padding\n" * 120))          # 1.2 KiB: over the limit
    server.change(uri, 3, span(0, 0, 0, 0, "x"))
    assert server.document(uri)["parsed"] is False
    server.change(uri, 4, {"text": "def g():\n    pass\n"})               # small again: parsed again
    assert server.document(uri)["parsed"] is True
    assert len(server.logs("max_parse_kb")) == 1


# ---------------------------------------------------------------------------------------------
# Issue #20, 6. One long line

def test_a_line_of_megabytes_costs_what_the_budget_allows(wire, tmp_path):
    """A completion whose window ends in a line of several MB tokenized all of it, many times
    (~1.25 s a MB, holding the interpreter lock: every other document and the reading of stdin
    waited). Now windows are cut by characters first: the work is bounded by the prompt budget
    (2,048 tokens, at most 16 characters a token), not by the line."""
    server = wire(bundled_env(tmp_path))
    server.initialize()
    line = "values = [" + "1, " * ((4 << 20) // 3)
    big, small = "file:///wire/long_line.py", "file:///wire/small.py"
    server.open(big, "import os\n" + line)
    server.open(small, "def g(y):\n    return ")
    before = server.stats()["service"]["tokenized_chars"]
    long_id = server.request(INLINE, inline_params(big, 1, len(line)))
    small_id = server.request(INLINE, inline_params(small, 1, 11))
    assert server.responds(timeout=120)                               # stdin is read meanwhile
    for msg_id in (long_id, small_id):
        assert "result" in server.answer(msg_id, timeout=300)
    work = server.stats()["service"]["tokenized_chars"] - before
    assert work < 1 << 20, f"{work} characters tokenized for a 4 MiB line"   # before: 8,443,024
