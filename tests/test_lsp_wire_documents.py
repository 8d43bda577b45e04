"""Documents over the wire: one bad change keeps the good ones and marks the document stale
(issue #12 item 5), lone-CR line ends complete as LF ones (issue #20 item 7), and open
documents are bounded in number and size with those within kept whole (issue #20 item 9).
Raw bytes through tests/wire_helpers.py's Wire.
"""
from __future__ import annotations

from wire_helpers import INLINE, bundled_env, digest, inline_params, is_sentence, span


# ---------------------------------------------------------------------------------------------
# 5. A bad change

def test_a_bad_change_keeps_the_good_ones_and_marks_the_document_stale(wire):
    server = wire(log_level="debug")
    server.initialize(ready=False)
    uri = "file:///wire/stale.py"
    server.open(uri, "abc\n")
    server.change(uri, 2, span(0, 0, 0, 0, "x\ny\n"), span(-1, 0, 0, 0, "zzz"))
    record = server.document(uri)
    assert (record["version"], record["sha256"], record["stale"]) == (2, digest("x\ny\nabc\n"), True)
    rejected = server.logs("Change 2 of file:///wire/stale.py", count=1)
    assert len(rejected) == 1 and is_sentence(rejected[0])
    answer = server.answer(server.request(INLINE, inline_params(uri, 3, 0)))   # line 3 exists after the insert
    assert answer.get("result") == {"items": []}
    assert any("diverged from the editor's; reopen the document" in line for line in server.logs("stale.py:4:1", count=1))

    server.change(uri, 3, {"text": "fresh\n"})       # the whole text: the copy is right again
    assert server.document(uri)["stale"] is False
    server.change(uri, 4, span(0, 0, 0, 0, "1"), span("0", 0, 0, 0, "2"), span(0, 0.5, 0, 1, "3"))
    record = server.document(uri)
    assert (record["sha256"], record["stale"]) == (digest("1fresh\n"), True)
    server.change(uri, 5, span(0, 0, 0, 0, "4"), {"text": "whole\n"}, span(0, 0, 0, 0, ">"))
    record = server.document(uri)
    assert (record["sha256"], record["stale"]) == (digest(">whole\n"), False)
    server.change(uri, 6, span(0, 0, 0, 0, 5))
    assert server.document(uri)["stale"] is True
    server.open(uri, "new\n", version=9)             # reopening trusts the editor's text again
    record = server.document(uri)
    assert (record["version"], record["sha256"], record["stale"]) == (9, digest("new\n"), False)


# ---------------------------------------------------------------------------------------------
# Issue #20, 7. Lone-CR line ends

def test_lone_cr_line_ends_complete_as_lf_ones(wire, tmp_path):
    """LSP ends lines at "\\n", "\\r\\n" and a lone "\\r". With lone CRs the model was shown raw CRs
    and tree-sitter saw one row of the whole file (a 100,000-line file: ~11 s a completion, and
    garbage); now the same code gets the same suggestion, in the document's line ends."""
    server = wire(bundled_env(tmp_path))
    server.initialize()
    code = "".join(f"def scale_{i}(values):\n    return [v * {i} for v in values]\n\n" for i in range(1500))
    code += "def total(values):\n    scaled = scale_7("
    line, character = code.count("\n"), len("    scaled = scale_7(")
    answers = {}
    for name, eol in (("lf", "\n"), ("crlf", "\r\n"), ("cr", "\r")):
        uri = f"file:///wire/{name}/scaled.py"                 # the same file name in the prompt's header
        server.open(uri, code.replace("\n", eol))
        result = server.call(INLINE, inline_params(uri, line, character), timeout=120)
        answers[name] = [(item["insertText"].replace(eol, "\n"), item["range"]) for item in result["items"]]
        assert all(eol == "\n" or "\n" not in item["insertText"].replace(eol, "") for item in result["items"])
        server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})   # no snippets of it in the next
    assert answers["lf"], "the model suggested nothing here"
    assert answers["cr"] == answers["crlf"] == answers["lf"]


# ---------------------------------------------------------------------------------------------
# Issue #20, 9. Open documents

def test_open_documents_are_bounded_and_those_within_are_kept_whole(wire):
    """30,000 small documents took 2.2 GB. At most 2,000 are kept (a large editing session has
    hundreds; each costs 10-50 KB beyond its text), and four messages of max_message_mb of text
    in all; one more is not kept (a sentence in the log, empty completions that say why)."""
    server = wire(max_message_mb="1")
    server.initialize(ready=False)
    texts = {f"file:///many/m{i}.py": f"def f{i}(x):\n    return x + {i}\n" for i in range(2000)}
    for uri, text in texts.items():
        server.open(uri, text)
    extra = "file:///many/extra.py"
    server.open(extra, "x = 1\n")
    server.change(extra, 2, span(0, 0, 0, 0, "y = 2\n"))               # ignored quietly
    assert {d["uri"]: d["sha256"] for d in server.stats()["open"]} == {u: digest(t) for u, t in texts.items()}
    [refused] = server.logs("not kept", count=1)
    assert extra in refused and "2,000" in refused and is_sentence(refused.split(": ", 1)[1])
    answer = server.answer(server.request(INLINE, inline_params(extra, 0, 0)))
    assert answer["result"] == {"items": []} and server.notifications("latent/status")[-1]["last"]["reason"] == "not-kept"
    server.notify("textDocument/didClose", {"textDocument": {"uri": "file:///many/m0.py"}})
    server.open(extra, "x = 1\n")                                      # room again
    assert server.document(extra) is not None and server.stats()["documents"] == 2000
    assert len(server.logs("is not open")) == 0

    server = wire(max_message_mb="1")                                 # 4 MiB of text in all
    server.initialize(ready=False)
    big = "padding padding padding\n" * 36_000                         # 864,000 characters a message
    kept = [f"file:///big/{name}.txt" for name in "abcd"]
    for uri in kept:
        server.open(uri, big, "plaintext")
    server.open("file:///big/e.txt", big, "plaintext")                 # over: not kept
    server.open("file:///big/small.txt", "x = 1\n", "plaintext")
    server.change("file:///big/small.txt", 2, span(1, 0, 1, 0, big))   # grows past: dropped
    assert {d["uri"]: d["sha256"] for d in server.stats()["open"]} == {uri: digest(big) for uri in kept}
    assert [line.split()[3] for line in server.logs("not kept", count=2)] == ["file:///big/e.txt",
                                                                             "file:///big/small.txt"]
