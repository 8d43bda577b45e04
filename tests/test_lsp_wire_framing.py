"""The wire's framing (issue #12 item 3, issue #20 item 9): no malformed frame leaves the server
deaf, the transport's Framer reads the same messages however the bytes arrive and in bounded
memory, a stream that cannot be read ends the process with a message, a message over the size
limit is refused unread, a Content-Length past its body ends at the next header, and a body
that is no JSON is answered at once. Raw bytes through tests/wire_helpers.py's Wire.
"""
from __future__ import annotations

import json
import subprocess

import pytest

from hypothesis import given, settings, strategies as st

from lsp_server.transport import MAX_HEADER, Body, Framer, Oversized, Problem, Unreadable
from wire_helpers import FRAMINGS, frame, is_sentence, message


# ---------------------------------------------------------------------------------------------
# 3. Framing

def _echo(msg_id: str) -> bytes:
    return json.dumps(message("wire/echo", None, msg_id)).encode()


def test_no_malformed_frame_leaves_the_server_deaf(wire):
    server = wire()
    server.initialize(ready=False)
    for name, (build, code) in FRAMINGS.items():
        msg_id = f"echo: {name}"
        server.write(build(_echo(msg_id)))
        assert server.responds(), f"deaf after {name!r}; {server.tail()}"
        assert server.process.poll() is None, f"exited after {name!r}; {server.tail()}"
        got = server.answers(msg_id)
        assert [answer["error"]["code"] for answer in got] == ([code] if code else []), (name, got)
    assert len(server.logs("Framing error")) <= 10                          # once each, then quiet


@pytest.mark.parametrize("name", FRAMINGS)
def test_the_framer_reads_the_same_messages_however_the_bytes_arrive(name):
    """The transport's Framer alone (no process): one read, or a byte at a time."""
    build, code = FRAMINGS[name]
    probe = json.dumps(message("wire/probe", None, "p")).encode()
    data = build(_echo("x")) + frame(probe)

    def messages(events) -> list:
        return [e for e in events if not isinstance(e, Problem)]

    whole = messages(Framer(lambda: 64 << 20).feed(data))
    framer, piecewise = Framer(lambda: 64 << 20), []
    for i in range(0, len(data), 3):
        piecewise += messages(framer.feed(data[i:i + 3]))
    assert piecewise == whole and whole[-1] == Body(probe)
    assert len(whole) == (2 if code else 1)


def test_the_framer_delivers_a_body_that_is_no_json_message_at_once():
    """Unless a wrong length may have cut a JSON message short or run past it: then the next
    header decides (FRAMINGS)."""
    for body in (b"hello", b"{garbage", b'"x"', b"[" * 10_000):
        assert Framer(lambda: 1 << 20).feed(frame(body)) == [Body(body)]
    for cut in (b'{"jsonrpc": "2.0", "id": 1, "method": "x"', b'{"a": "b', b'{"id": tr', b'{"a": 1}C', b""):
        events = Framer(lambda: 1 << 20).feed(frame(cut))
        assert not any(isinstance(event, Body) for event in events), cut


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300) | st.sampled_from([b"Content-Length: 5\r\n\r\n", b"\r\n\r\n", b"{", b"}",
                                                           b"content-length:12\n\n", b"Content-Length: 99999999\r\n\r\n"]),
                max_size=20),
       st.integers(1, 64))
def test_the_framer_takes_any_bytes_in_bounded_memory(pieces, step):
    framer = Framer(lambda: 4096)
    data = b"".join(pieces)
    try:
        for i in range(0, len(data), step):
            for event in framer.feed(data[i:i + step]):
                assert isinstance(event, (Body, Problem, Oversized))
                assert not isinstance(event, Body) or len(event.data) <= 4096
            assert len(framer.buffer) <= 4096 + MAX_HEADER + 64
    except Unreadable as e:
        assert len(data) > 4096 and is_sentence(str(e))
    bodies = [json.dumps(message("wire/probe", None, n)).encode() for n in range(3)]
    framer = Framer(lambda: 4096)
    stream = b"".join(frame(body) for body in bodies)
    got = [e for i in range(0, len(stream), step) for e in framer.feed(stream[i:i + step])]
    assert got == [Body(body) for body in bodies]                # well-formed frames: exactly those


def test_a_stream_that_cannot_be_read_ends_the_process_with_a_message(wire):
    server = wire(max_message_mb="1")
    server.initialize(ready=False)
    server.write(b"x" * (3 << 19))                 # 1.5 MiB and no header: not an LSP client
    try:
        code = server.process.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail("the server stayed alive, reading nothing")
    assert code != 0
    assert "restart" in server.stderr()


def test_a_message_over_the_size_limit_is_refused_without_reading_it_whole(wire):
    server = wire(max_message_mb="1")
    server.initialize(ready=False)
    server.send(message("wire/echo", {"pad": "x" * (2 << 20)}, "huge"))
    refused = server.answer("huge")
    assert refused["error"]["code"] == -32600 and "max_message_mb" in refused["error"]["message"]
    assert server.responds()


# ---------------------------------------------------------------------------------------------
# Issue #20, 9. Frames whose length is wrong, bodies that are not JSON

def test_a_content_length_past_its_body_ends_at_the_next_header(wire):
    """A length 20 KB too large swallowed the next messages until that many bytes came (0 of 10
    answered); the next message's header ends the body, which is read too."""
    server = wire()
    server.initialize(ready=False)
    body = _echo("long")
    server.write(b"Content-Length: %d\r\n\r\n" % (len(body) + 20_000) + body)
    ids = [server.request("wire/echo") for _ in range(10)]
    for msg_id in ["long", *ids]:
        assert server.answer(msg_id)["error"]["code"] == -32601      # read: an unknown method
    [said] = server.logs("shorter than its Content-Length", count=1)
    assert is_sentence(said.split(": ", 1)[1])


@pytest.mark.parametrize("body", [b"hello", b"not json at all!", b"{garbage", b'"a string"', b"[" * 100_000])
def test_a_framed_body_that_is_not_json_is_answered_at_once(wire, body):
    """It was answered only once the next message came."""
    server = wire()
    server.initialize(ready=False)
    start = len(server.messages)
    server.write(frame(body))                                          # and nothing after it
    got = server.wait(lambda m: "method" not in m, 15, start)
    assert got is not None, f"not answered; {server.tail()}"
    assert got["id"] is None and got["error"]["code"] in (-32700, -32600)
    assert server.responds() and len(server.answers(None)) == 1
