"""JSON-RPC conformance on the wire (issue #12 item 4): requests before initialize and after
shutdown, malformed requests (each gets one error sentence), notifications (never answered)
and responses from the client without "jsonrpc". Raw bytes through tests/wire_helpers.py's Wire.
"""
from __future__ import annotations

from wire_helpers import INLINE, inline_params, is_sentence, message


# ---------------------------------------------------------------------------------------------
# 4. Protocol conformance

def test_requests_before_initialize_are_refused_and_initialize_still_works(wire):
    server = wire()
    assert server.answer(server.request("shutdown"))["error"]["code"] == -32002
    early = server.answer(server.request(INLINE, inline_params("file:///a.py", 0, 0)))
    assert early["error"]["code"] == -32002 and is_sentence(early["error"]["message"])
    server.open("file:///a.py", "x = 1\n")          # a notification before initialize is dropped
    result = server.initialize(ready=False)
    assert result["capabilities"]["inlineCompletionProvider"] is not None
    again = server.answer(server.request("initialize", {"capabilities": {}}))
    assert again["error"]["code"] == -32600
    assert server.stats()["documents"] == 0


def test_after_shutdown_requests_are_invalid_and_exit_ends_the_process(wire):
    server = wire()
    server.initialize(ready=False)
    assert server.call("shutdown") is None
    late = server.answer(server.request(INLINE, inline_params("file:///a.py", 0, 0)))
    assert late["error"]["code"] == -32600 and is_sentence(late["error"]["message"])
    server.open("file:///a.py", "x = 1\n")          # a notification: no answer
    server.notify("exit")
    assert server.process.wait(30) == 0
    assert [m for m in server.messages if "method" not in m and m.get("id") is None] == []


FIVE_LINES = "a\nb\nc\nd\ne\n"
BAD_REQUESTS = [   # (name, body, the id answered, the error code)
    ("jsonrpc 1.0", {"jsonrpc": "1.0", "id": "v1", "method": "shutdown"}, "v1", -32600),
    ("no jsonrpc", {"id": "v2", "method": "shutdown"}, "v2", -32600),
    ("an object id", {"jsonrpc": "2.0", "id": {"a": 1}, "method": "shutdown"}, None, -32600),
    ("an array id", {"jsonrpc": "2.0", "id": [1], "method": "shutdown"}, None, -32600),
    ("a boolean id", {"jsonrpc": "2.0", "id": True, "method": "shutdown"}, None, -32600),
    ("a fractional id", {"jsonrpc": "2.0", "id": 1.5, "method": "shutdown"}, None, -32600),
    ("a numeric method", {"jsonrpc": "2.0", "id": "m1", "method": 5}, "m1", -32600),
    ("a null method", {"jsonrpc": "2.0", "id": "m2", "method": None}, "m2", -32600),
    ("a notification sent with an id", message("workspace/didChangeConfiguration", {"settings": {}}, "n1"), "n1",
     -32600),
    ("params a string", message(INLINE, "x", "p1"), "p1", -32602),
    ("line 0.9", message(INLINE, inline_params("file:///five.py", 0.9, 0), "p2"), "p2", -32602),
    ("line '4'", message(INLINE, inline_params("file:///five.py", "4", 0), "p3"), "p3", -32602),
    ("character 9.9", message(INLINE, inline_params("file:///five.py", 2, 9.9), "p4"), "p4", -32602),
    ("line true", message(INLINE, inline_params("file:///five.py", True, 0), "p5"), "p5", -32602),
    ("line 2**31", message(INLINE, inline_params("file:///five.py", 2 ** 31, 0), "p6"), "p6", -32602),
    ("a negative character", message(INLINE, inline_params("file:///five.py", 1, -1), "p7"), "p7", -32602),
] + [
    (f"latent.accepted with {name}", message("workspace/executeCommand", {"command": "latent.accepted",
                                                                          "arguments": arguments}, f"a{i}"),
     f"a{i}", -32602)
    for i, (name, arguments) in enumerate([
        ("a span of strings", ["file:///five.py", "x", ["a", 0, 0, 0]]),
        ("a span of three", ["file:///five.py", "x", [0, 0, 0]]),
        ("a negative span", ["file:///five.py", "x", [-1, 0, 0, 0]]),
        ("a fractional span", ["file:///five.py", "x", [1.5, 0, 0, 0]]),
        ("a span that is a number", ["file:///five.py", "x", 7]),
        ("a uri that is a number", [5, "x", [0, 0, 0, 0]]),
        ("text that is a list", ["file:///five.py", ["x"], [0, 0, 0, 0]]),
    ])
] + [   # issue #20 item 9: a string was read as the list of its characters, and answered
    (f"latent.stats with arguments {name}", message("workspace/executeCommand", {"command": "latent.stats",
                                                                                "arguments": arguments}, f"s{i}"),
     f"s{i}", -32602)
    for i, (name, arguments) in enumerate([("a string", "abc"), ("an object", {"a": 1}), ("a number", 5)])
]


def test_every_malformed_request_gets_one_error_sentence(wire):
    server = wire()
    server.initialize(ready=False)
    server.open("file:///five.py", FIVE_LINES)
    for name, body, msg_id, code in BAD_REQUESTS:
        start = len(server.messages)
        server.send(body)
        got = server.wait(lambda m: "method" not in m and m.get("id") == msg_id, 15, start)
        assert got is not None, f"{name}: no answer; {server.tail()}"
        error = got.get("error")
        assert error is not None and error["code"] == code, (name, got)
        assert is_sentence(error["message"]) and "data" not in error, (name, error)
    start = len(server.messages)
    server.send(b'{"jsonrpc": "2.0", "id": "u", "method": "wire/echo", "params": "\xff\xfe"}')
    got = server.wait(lambda m: "method" not in m, 15, start)
    assert got["id"] is None and got["error"]["code"] == -32700        # invalid UTF-8
    assert server.responds()


MALFORMED_NOTIFICATIONS = [
    message("textDocument/didOpen"),
    message("textDocument/didOpen", {"textDocument": 3}),
    message("textDocument/didOpen", {"textDocument": {"uri": 5, "languageId": "python", "version": 1, "text": ""}}),
    message("textDocument/didOpen", {"textDocument": {"uri": "file:///n.py", "languageId": "python",
                                                      "version": "one", "text": "x"}}),
    message("textDocument/didChange"),
    message("textDocument/didChange", {"textDocument": {"uri": "file:///n.py", "version": 2}, "contentChanges": "x"}),
    message("textDocument/didChange", {"textDocument": {"uri": "file:///never.py", "version": 2},
                                       "contentChanges": [{"text": "x"}]}),
    message("textDocument/didChange", {"textDocument": {"uri": "file:///n.py", "version": 2},
                                       "contentChanges": [{"range": 5, "text": "x"}]}),
    message("textDocument/didClose", {"textDocument": None}),
    message("textDocument/didClose", [1, 2]),
    message("textDocument/didSave", {"textDocument": 1}),
    message("$/cancelRequest", {"id": {"a": 1}}),
    message("$/cancelRequest"),
    message("$/setTrace", {"value": 7}),
    message("$/unknown"),
    message("workspace/didChangeConfiguration", {"settings": 5}),
    message("workspace/didChangeConfiguration", "x"),
    message("workspace/didChangeConfiguration"),
    message("workspace/didChangeWorkspaceFolders", {"event": 1}),
    message("initialized", [1, 2]),
    message("wire/unknown", {"x": 1}),
    {"jsonrpc": "1.0", "method": "textDocument/didOpen", "params": {}},
    {"method": "textDocument/didOpen"},
    {"jsonrpc": "2.0", "method": 5},
    {"jsonrpc": "2.0", "method": None},
]


def test_a_notification_is_never_answered(wire):
    server = wire()
    server.initialize(ready=False)
    start = len(server.messages)
    for body in MALFORMED_NOTIFICATIONS:
        server.send(body)
    assert server.responds()
    answers = [m for m in server.messages[start:] if "method" not in m]
    assert [m["id"] for m in answers] == [answers[-1]["id"]], answers   # the probe's, nothing else


def test_a_response_without_jsonrpc_is_a_warning_not_a_failure(wire):
    server = wire()
    server.initialize(ready=False)
    server.send({"id": 99, "result": None})
    assert server.responds()
    assert 'The response 99 is ignored: A message must say "jsonrpc": "2.0".' in server.stderr()
    assert "Traceback" not in server.stderr(), server.tail()
