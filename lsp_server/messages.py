"""What a decoded JSON-RPC message must be before pygls structures it (lsprotocol's method
table, no pygls).

pygls' converter takes `9.9` or `"4"` for a position's line (and edits the wrong place), a
boolean or an object for an id, a number for a method, and a string for a command's arguments
(as the list of its characters); and it drops a whole didChange for one bad change. These checks read the plain JSON value first:

    kind, msg_id, problem = classify(data)    # "request" | "notification" | "response" | "invalid"
    problem = bad_params(method, params)      # a Position that is not two whole numbers >= 0, …
    data, rejected, diverged = split_changes(data)   # a didChange keeps its valid changes

Every problem is one sentence. A request's problem is answered with its id (null when the id
itself is the problem); a notification's is only logged: notifications are never answered.
"""
from __future__ import annotations

from typing import Any

from lsprotocol.types import METHOD_TO_TYPES

UINTEGER_MAX = 2 ** 31 - 1   # LSP's uinteger
EXECUTE_COMMAND = "workspace/executeCommand"
NOTIFICATIONS = frozenset(method for method, (_, result, *_) in METHOD_TO_TYPES.items() if result is None)


def classify(data: Any) -> tuple[str, Any, str | None]:
    """The message's kind, its id (None when it has none or an unusable one) and its problem."""
    if not isinstance(data, dict):
        return "invalid", None, f"A message must be a JSON object, not {_kind(data)}."
    has_id, msg_id = "id" in data, data.get("id")
    if has_id and not _usable_id(msg_id):
        return "invalid", None, f"A request id must be a whole number or a string, not {_kind(msg_id)}."
    if "method" in data:
        kind = "request" if has_id else "notification"
    elif has_id and ("result" in data or "error" in data):
        kind = "response"
    else:
        return "invalid", None, "A message must have a method, or an id and a result or error."
    if data.get("jsonrpc") != "2.0":
        return kind, msg_id, 'A message must say "jsonrpc": "2.0".'
    if kind == "response":
        return kind, msg_id, None
    if not isinstance(data["method"], str):
        return kind, msg_id, f"A method must be a string, not {_kind(data['method'])}."
    if has_id and data["method"] in NOTIFICATIONS:
        return kind, msg_id, f"{data['method']} is a notification: it is sent without an id."
    return kind, msg_id, None


def bad_params(method: Any, params: Any) -> str | None:
    """What pygls' converter would misread in `params`, described; None when nothing: a position
    (bad_position), or workspace/executeCommand arguments that are not an array (a string was
    read as a list of its characters)."""
    if method == EXECUTE_COMMAND and isinstance(params, dict):
        arguments = params.get("arguments")
        if arguments is not None and not isinstance(arguments, list):
            return f"The arguments of workspace/executeCommand must be an array, not {_kind(arguments)}."
    return bad_position(params)


def bad_position(params: Any) -> str | None:
    """The first position in `params` (an object with "line" and "character") whose coordinates
    are not whole numbers from 0 to 2**31 - 1, described; None when there is none."""
    stack = [params]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            if "line" in value and "character" in value:
                problem = _coordinates(value)
                if problem:
                    return problem
            stack.extend(value.values())
    return None


def split_changes(data: dict) -> tuple[dict, list[str], bool]:
    """A didChange with only its valid content changes, in order; a sentence for each change
    left out; and whether the document has diverged: a change was left out after its last
    whole-text change. (Unreadable params are left as they are, for pygls to refuse.)"""
    params = data.get("params")
    if not isinstance(params, dict):
        return data, [], False
    changes, document = params.get("contentChanges"), params.get("textDocument")
    if not isinstance(changes, list) or not isinstance(document, dict):
        return data, [], False
    where = f"{document.get('uri')} (version {document.get('version')})"
    kept, rejected, diverged = [], [], False
    for number, change in enumerate(changes, start=1):
        problem = _change_problem(change)
        if problem is None:
            kept.append(change)
            diverged = diverged and "range" in change
        else:
            rejected.append(f"Change {number} of {where} was left out: {problem}")
            diverged = True
    return {**data, "params": {**params, "contentChanges": kept}}, rejected, diverged


def _change_problem(change: Any) -> str | None:
    if not isinstance(change, dict) or not isinstance(change.get("text"), str):
        return "a change must be an object with a text string."
    if "range" not in change:
        return None
    r = change["range"]
    if not isinstance(r, dict) or not isinstance(r.get("start"), dict) or not isinstance(r.get("end"), dict):
        return "its range must have a start and an end position."
    if "rangeLength" in change and not whole(change["rangeLength"]):
        return "its rangeLength must be a whole number."
    return _coordinates(r["start"]) or _coordinates(r["end"])


def _coordinates(position: dict) -> str | None:
    for name in ("line", "character"):
        value = position.get(name)
        if not whole(value):
            return f"a position's {name} must be a whole number from 0 to {UINTEGER_MAX}, not {value!r}."
    return None


def whole(value: Any) -> bool:
    """A uinteger: a whole number (not a boolean) from 0 to 2**31 - 1."""
    return type(value) is int and 0 <= value <= UINTEGER_MAX


def _usable_id(value: Any) -> bool:
    return isinstance(value, str) or type(value) is int


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", bool: "a boolean", float: "a fractional number",
             int: "a number", str: "a string", type(None): "null"}
    return names.get(type(value), type(value).__name__)
