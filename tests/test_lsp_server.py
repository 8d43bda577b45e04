"""The language server end to end: `latent lsp` over stdio, driven by pytest-lsp's client.

One server serves the module; each test opens its own documents and closes them, so the
pipeline run in-process for the expected answer sees the same open documents.
"""
from __future__ import annotations

import asyncio
import json
import time

import pytest
import pytest_asyncio
from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled

from lsp_helpers import SUGGESTS, SUGGESTS_END as END, SUGGESTS_LANGUAGE, Session, end_of, expected, pairs, server_env

pytestmark = pytest.mark.asyncio(loop_scope="module")

PLAIN = "hello world\nthe quick brown fox "        # a random model (no bundled one) completes plain text
CODE = "x = [1, 2, 3]\nprint(x)\n"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def session(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lsp")
    s = await Session.start(server_env(tmp), init_options={"completionItems": "always"})
    yield s
    assert s.answered_once(), s.responses
    await s.kill()


async def suggestion_case(session, uri: str):
    """A document, cursor and expected suggestion for which the model suggests something."""
    for language, text in ((SUGGESTS_LANGUAGE, SUGGESTS), ("plaintext", PLAIN)):
        lines = text.split("\n")
        line, character = len(lines) - 1, len(lines[-1])
        want = expected([(uri, language, text)], uri, line, character)
        if want:
            return language, text, line, character, want
    pytest.fail("the model suggests nothing for any candidate text")


async def test_initialize_advertises_what_editors_need(session):
    caps = session.result.capabilities
    assert caps.inline_completion_provider is not None
    assert caps.completion_provider is not None
    assert caps.position_encoding == types.PositionEncodingKind.Utf16   # though the client preferred utf-8
    assert caps.text_document_sync.change == types.TextDocumentSyncKind.Incremental
    assert caps.workspace.workspace_folders.supported
    assert {"latent.toggle", "latent.stats", "latent.clearCache"} <= set(caps.execute_command_provider.commands)


async def test_load_reports_progress_and_status(session):
    states = [s.state for s in session.statuses]
    assert states[0] == "loading" and "ready" in states
    [token] = session.client.progress_reports
    kinds = [p.kind for p in session.client.progress_reports[token]]
    assert kinds[0] == "begin" and kinds[-1] == "end"


async def test_inline_and_completion_answer_the_pipeline_suggestion_after_incremental_edits(session):
    uri = "file:///work/edits.txt"
    language, text, line, character, want = await suggestion_case(session, uri)
    # type the text in pieces: open empty, insert, replace a span, delete, insert again
    session.open(uri, "", language)
    session.change(uri, 2, ((0, 0, 0, 0), text[:5] + "XYZ" + text[5:]))
    session.change(uri, 3, ((0, 5, 0, 8), ""), ((0, 0, 0, 0), "!"))     # two changes in one notification
    session.change(uri, 4, ((0, 0, 0, 1), ""))
    got = await session.inline(uri, line, character)
    assert pairs(got) == want
    assert got[0].command.command == "latent.accepted"
    status = session.statuses[-1]                       # what a status bar shows
    assert status.state == "ready" and status.last.source == "model" and status.lastLatencyMs > 0
    assert status.cache.budgetBytes == 1024 << 20 and status.last.prefilledTokens > 0
    logged = session.client.log_messages[-1].message    # one line per completion, with its figures
    assert "edits.txt" in logged and "engine" in logged and "prefilled" in logged and "reused" in logged

    result = await session.completion(uri, line, character)
    assert pairs(result.items[:1]) == want                # the best first; alternatives follow
    first_line = next((line for line in want[0][0].splitlines() if line.strip()), want[0][0].strip())
    assert result.items[0].label == first_line
    session.close(uri)


async def test_completion_before_open_and_after_close_is_an_error_not_a_crash(session):
    with pytest.raises(Exception, match="not open"):
        await session.inline("file:///never/opened.py", 0, 0)
    session.open("file:///closed.py", CODE)
    session.close("file:///closed.py")
    with pytest.raises(Exception, match="not open"):
        await session.inline("file:///closed.py", 0, 0)
    stats = await session.command("latent.stats")
    assert stats["documents"] == 0   # per-document state is gone


async def test_a_burst_of_edits_supersedes_older_requests(session):
    uri = "file:///work/burst.txt"
    language, text, line, character, want = await suggestion_case(session, uri)
    session.open(uri, "", language)
    futures = []
    for version, char in enumerate(text, start=2):   # type it: one didChange and one request per key
        lines = "".join(text[: version - 2]).split("\n")
        session.change(uri, version, ((len(lines) - 1, len(lines[-1]), len(lines) - 1, len(lines[-1])), char))
        lines = text[: version - 1].split("\n")
        futures.append(session.send_inline(uri, len(lines) - 1, len(lines[-1]))[1])
    answers = await asyncio.wait_for(asyncio.gather(*futures), 120)
    assert pairs(answers[-1].items) == want                          # the newest is the pipeline's answer
    assert sum(1 for a in answers[1:-1] if not a.items) >= len(answers) // 2   # older ones: empty
    session.close(uri)


async def test_a_request_sees_the_text_as_it_arrived_not_the_edits_read_with_it(session):
    """The snapshot is taken as the request is read, even when the edit after it came in the
    same read (three frames in one write): the edit empties the document."""
    uri = "file:///work/arrival.txt"
    language, text, line, character, want = await suggestion_case(session, uri)
    frames = [
        {"method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": uri, "languageId": language, "version": 1, "text": text}}},
        {"id": "arrival", "method": "textDocument/inlineCompletion", "params": {
            "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
            "context": {"triggerKind": 2}}},
        {"method": "textDocument/didChange", "params": {"textDocument": {"uri": uri, "version": 2},
                                                        "contentChanges": [{"text": ""}]}},
    ]
    session.write_raw(*(json.dumps({"jsonrpc": "2.0", **frame}).encode() for frame in frames))
    answer = await session.answer("arrival")
    assert getattr(answer, "error", None) is None, answer.error
    spans = [(i.insertText, ((i.range.start.line, i.range.start.character), (i.range.end.line, i.range.end.character)))
             for i in answer.result.items]                  # the client reads an unknown id's answer as plain objects
    assert spans == want
    session.close(uri)


async def test_cancel_request_answers_cancelled_and_skips_the_work(session):
    uri = "file:///work/cancel.txt"
    session.open(uri, SUGGESTS, SUGGESTS_LANGUAGE)
    other, busy_text = "file:///work/busy.py", CODE * 50 + SUGGESTS
    session.open(other, busy_text, SUGGESTS_LANGUAGE)
    before = (await session.command("latent.stats"))["service"].get("requests", 0)
    _, busy = session.send_inline(other, *end_of(busy_text))   # keeps the worker busy …
    msg_id, queued = session.send_inline(uri, *END)            # … while this one waits in the queue
    session.client.cancel_request(types.CancelParams(id=msg_id))
    with pytest.raises(JsonRpcRequestCancelled):
        await asyncio.wait_for(queued, 60)
    await asyncio.wait_for(busy, 60)
    after = (await session.command("latent.stats"))["service"].get("requests", 0)
    assert after - before == 1                            # the cancelled one never ran
    want = expected([(other, SUGGESTS_LANGUAGE, busy_text), (uri, SUGGESTS_LANGUAGE, SUGGESTS)], uri, *END)
    assert want and pairs(await session.inline(uri, *END)) == want
    session.close(uri)
    session.close(other)


async def test_configuration_changes_take_effect(session):
    uri = "file:///work/config.txt"
    language, text, line, character, want = await suggestion_case(session, uri)
    session.open(uri, text, language)
    assert pairs(await session.inline(uri, line, character)) == want

    session.configure({"latent": {"enable": False}})
    assert await session.inline(uri, line, character) == []
    session.configure({"latent": {"enable": True, "disabledLanguages": [language]}})
    assert await session.inline(uri, line, character) == []
    session.configure({"latent": {"maxNewTokensLine": 1, "prefixFraction": 0.5}})
    stats = await session.command("latent.stats")
    assert stats["settings"]["max_new_tokens_line"] == 1 and stats["settings"]["prefix_fraction"] == 0.5
    assert pairs(await session.inline(uri, line, character)) == expected(
        [(uri, language, text)], uri, line, character, max_new_tokens_line=1, prefix_fraction=0.5)

    assert await session.command("latent.toggle") == {"enabled": False}
    assert await session.inline(uri, line, character) == []
    assert session.statuses[-1].enabled is False
    assert await session.command("latent.toggle") == {"enabled": True}
    session.configure({})  # back to the defaults (the client pulls an empty section)
    await asyncio.sleep(0.3)
    assert pairs(await session.inline(uri, line, character)) == want
    assert await session.command("latent.clearCache") == {"cleared": True}
    session.close(uri)


async def test_clear_cache_empties_the_engines_latent_cache(session):
    uri = "file:///work/clear.txt"
    session.open(uri, SUGGESTS, SUGGESTS_LANGUAGE)
    await session.inline(uri, *END)
    assert (await session.command("latent.stats"))["engine"]["cache_tokens"] > 0
    assert await session.command("latent.clearCache") == {"cleared": True}
    assert (await session.command("latent.stats"))["engine"]["cache_tokens"] == 0
    assert session.statuses[-1].cache.tokens == 0          # the status bar sees it at once
    session.close(uri)


async def test_an_accepted_suggestion_precomputes_the_next_one_on_the_worker(session):
    uri = "file:///work/accept.py"
    for text in (SUGGESTS, "def hello(name):\n    print(", "import os\n\n\ndef main():\n    path = "):
        line, character = end_of(text)
        want = expected([(uri, "python", text)], uri, line, character)
        if want and expected([(uri, "python", text + want[0][0])], uri, *end_of(text + want[0][0])):
            break                                        # a suggestion, and one after it
    else:
        pytest.fail("the model suggests nothing after accepting any candidate's suggestion")
    session.open(uri, text, "python")
    [item] = await session.inline(uri, line, character)
    before = (await session.command("latent.stats"))["service"]
    await session.command(item.command.command, *item.command.arguments)
    lines = (text + item.insert_text).split("\n")
    session.change(uri, 2, ((line, character, line, character), item.insert_text))
    await session.inline(uri, len(lines) - 1, len(lines[-1]))
    after = (await session.command("latent.stats"))["service"]
    assert after.get("accepted", 0) == before.get("accepted", 0) + 1
    assert after.get("precompute_hits", 0) == before.get("precompute_hits", 0) + 1   # answered from it
    session.close(uri)


async def test_commands_check_their_arguments(session):
    with pytest.raises(Exception, match="other arguments"):
        await session.command("latent.accepted", "file:///x.py")
    with pytest.raises(Exception, match="not defined"):
        await session.command("latent.nothing")
    assert await session.command("latent.accepted", "file:///not/open.py", "x", [0, 0, 0, 0]) is None


async def test_positions_outside_the_document_are_invalid_params(session):
    uri = "file:///work/bad.py"
    session.open(uri, CODE)
    for line, character in ((2, 1), (9, 0), (0, 99)):
        with pytest.raises(Exception, match="past the end"):
            await session.inline(uri, line, character)
    assert pairs(await session.inline(uri, 2, 0)) == expected([(uri, "python", CODE)], uri, 2, 0)
    session.close(uri)


async def test_utf16_positions_around_surrogate_pairs(session):
    uri = "file:///work/emoji.py"
    text = 'print("naïve 😀 日本", '                # 😀 is two UTF-16 code units
    session.open(uri, text, "python")
    emoji = text.index("😀")                      # no character before it is outside the BMP
    with pytest.raises(Exception, match="surrogate pair"):
        await session.inline(uri, 0, emoji + 1)          # between the two halves of 😀
    end = len(text.encode("utf-16-le")) // 2
    got = await session.inline(uri, 0, end)
    assert got and pairs(got) == expected([(uri, "python", text)], uri, 0, end)
    for item in got:
        assert item.range.start == types.Position(0, end)
    session.change(uri, 2, ((0, emoji, 0, emoji + 2), "🎉🎉"))   # replace 😀 by two emoji, in UTF-16 units
    new = text.replace("😀", "🎉🎉")
    assert pairs(await session.inline(uri, 0, end + 2)) == expected([(uri, "python", new)], uri, 0, end + 2)
    session.close(uri)


async def test_binary_content_and_lone_surrogates_do_not_break_the_server(session):
    uri = "file:///work/blob.bin"
    errors_before = _errors_logged(session)
    text = "\x00\x01\x02\xff\ufffe\ud800 abc\x00\n\x7f"      # JSON carries the lone surrogate
    session.open(uri, text, "python")                         # parsed and given to the model
    seen = text.replace("\ud800", "\ufffd")                   # the server reads it as U+FFFD
    assert pairs(await session.inline(uri, 1, 1)) == expected([(uri, "python", seen)], uri, 1, 1)
    session.change(uri, 2, (None, "\x00" * 1000), ((0, 10, 0, 10), "\udfff"))
    await session.inline(uri, 0, 1001)
    session.close(uri)
    await _still_answers(session)
    assert _errors_logged(session) == errors_before


async def test_a_five_megabyte_document(session):
    uri = "file:///work/big.py"
    text = ("def f(x):\n    return x * 2  # padding padding padding\n\n" * 100_000)[: 5 * 1024 * 1024]
    text = text[: text.rfind("\n") + 1]
    session.open(uri, text)
    line = text.count("\n")
    session.change(uri, 2, ((line, 0, line, 0), "y = f(1)\n"))
    got = await asyncio.wait_for(session.inline(uri, line + 1, 0), 120)
    assert isinstance(got, list)
    session.close(uri)
    await _still_answers(session)


async def test_malformed_frames_get_errors_and_the_server_goes_on(session):
    session.write_raw(b"{this is not json")
    session.write_raw(json.dumps({"jsonrpc": "2.0", "id": "bad-params", "method": "textDocument/inlineCompletion",
                                  "params": {"textDocument": 3}}).encode())
    session.write_raw(b"[1, 2, 3]")
    session.write_raw(json.dumps({"jsonrpc": "2.0", "id": "no-method", "method": "latent/nothing"}).encode())
    await _still_answers(session)
    assert session.errors["bad-params"].code == -32602
    assert session.errors["no-method"].code == -32601
    assert session.errors[None].code in (-32700, -32600)   # the unreadable bodies, id null


def _errors_logged(session) -> int:
    return sum(1 for m in session.client.log_messages if m.type == types.MessageType.Error)


async def _still_answers(session):
    uri = "file:///work/after.py"
    session.open(uri, SUGGESTS, SUGGESTS_LANGUAGE)
    want = expected([(uri, SUGGESTS_LANGUAGE, SUGGESTS)], uri, *END)
    assert want and pairs(await session.inline(uri, *END)) == want
    session.close(uri)


async def test_an_empty_answer_carries_its_reason_in_the_status(session):
    uri = "file:///work/reason.py"
    session.open(uri, "value = abc\n", "python")
    got = await session.inline(uri, 0, 9)                 # inside the word `abc`
    assert got == []
    last = session.statuses[-1].last
    assert last.source == "skipped" and last.reason == "inside-word"
    assert last.reasonText == "The cursor is inside a word."
    session.close(uri)


async def test_invoking_inline_completion_offers_several_suggestions_best_first(session):
    """Typing gets one suggestion as fast as ever; asking (Invoked: the key to trigger or to
    cycle) gets up to `suggestions`, the first unchanged, all distinct."""
    uri = "file:///work/several.py"
    text = "import os\n\ndef main():\n    path = "
    session.open(uri, text + "\n", "python")
    typed = await session.inline(uri, 3, 11)
    asked = await session.inline(uri, 3, 11, invoked=True)
    assert len(typed) <= 1 and 2 <= len(asked) <= 3
    if typed:
        assert asked[0].insert_text == typed[0].insert_text
    assert len({item.insert_text for item in asked}) == len(asked)
    listed = await session.completion(uri, 3, 11)
    assert [i.text_edit.new_text for i in listed.items] == [item.insert_text for item in asked]
    assert [i.preselect for i in listed.items] == [True] + [False] * (len(listed.items) - 1)
    session.close(uri)


async def test_manual_trigger_answers_only_when_asked_and_says_why(session):
    uri = "file:///work/manual.txt"
    language, text, line, character, want = await suggestion_case(session, uri)
    session.open(uri, text, language)
    session.configure({"latent": {"trigger": "manual"}})
    await asyncio.sleep(0.3)
    assert await session.inline(uri, line, character) == []       # typing: nothing
    last = session.statuses[-1].last
    assert (last.source, last.reason) == ("skipped", "manual") and "when you ask" in last.reasonText
    asked = await session.inline(uri, line, character, invoked=True)
    assert pairs(asked[:1]) == want                                 # the key: the same first suggestion
    session.configure({})
    await asyncio.sleep(0.3)
    assert pairs(await session.inline(uri, line, character)) == want
    session.close(uri)


async def test_every_server_side_skip_carries_its_reason(session):
    uri = "file:///work/skips.txt"
    language, text, line, character, want = await suggestion_case(session, uri)
    session.open(uri, text, language)
    assert await session.command("latent.toggle", False) == {"enabled": False}
    assert await session.inline(uri, line, character) == []
    assert session.statuses[-1].last.reason == "off"
    assert await session.command("latent.toggle", True) == {"enabled": True}
    session.configure({"latent": {"disabledLanguages": [language]}})
    await asyncio.sleep(0.3)
    assert await session.inline(uri, line, character) == []
    assert session.statuses[-1].last.reason == "language-disabled"
    reasons = (await session.command("latent.stats"))["reasons"]
    assert reasons["off"] >= 1 and reasons["language-disabled"] >= 1
    session.configure({})
    await asyncio.sleep(0.3)
    session.close(uri)


async def test_a_snooze_turns_completion_off_and_back_on_by_itself(session):
    uri = "file:///work/snooze.txt"
    language, text, line, character, want = await suggestion_case(session, uri)
    session.open(uri, text, language)
    answer = await session.command("latent.toggle", False, 0.02)    # 1.2 seconds
    assert answer["enabled"] is False and answer["snoozedUntil"] > 0
    status = session.statuses[-1]
    assert status.enabled is False and status.snoozedUntil == answer["snoozedUntil"]
    assert await session.inline(uri, line, character) == []
    assert session.statuses[-1].last.reason == "snoozed"

    async def woken():
        while not session.statuses[-1].enabled:
            await asyncio.sleep(0.05)
    await asyncio.wait_for(woken(), 60)                             # on again by itself (60 s: against a hang) …
    assert time.time() >= answer["snoozedUntil"]                    # … not before the time it said
    status = session.statuses[-1]
    assert status.enabled is True and getattr(status, "snoozedUntil", None) is None
    assert pairs(await session.inline(uri, line, character)) == want
    for bad in ((False, 0), (False, 10_000), ("off",), (False, 5, 1)):
        with pytest.raises(Exception, match="minutes"):
            await session.command("latent.toggle", *bad)
    session.close(uri)


async def test_keystrokes_within_the_debounce_never_reach_the_model(session):
    uri = "file:///work/debounce.txt"
    session.open(uri, SUGGESTS, SUGGESTS_LANGUAGE)
    session.configure({"latent": {"debounceMs": 400}})
    await asyncio.sleep(0.3)
    before = (await session.command("latent.stats"))["service"]["requests"]
    burst = [session.send_inline(uri, *END)[1] for _ in range(3)]
    answers = await asyncio.gather(*burst)
    assert [list(a.items) for a in answers[:2]] == [[], []]          # replaced while waiting
    want = expected([(uri, SUGGESTS_LANGUAGE, SUGGESTS)], uri, *END)
    assert want and pairs(answers[2].items) == want
    stats = await session.command("latent.stats")
    assert stats["service"]["requests"] == before + 1
    assert stats["reasons"]["cancelled"] >= 2                       # counted, though no status was sent
    session.configure({})
    await asyncio.sleep(0.3)
    session.close(uri)
