"""Generated frames and params against one `latent lsp` (tests/test_lsp_wire_fuzz.py runs it
for about 30 s; benchmarks/fuzz_lsp.py for minutes)."""
from __future__ import annotations

import collections
import itertools
import json
import random

from wire_helpers import FRAMINGS, INLINE, Wire, digest, frame, message, span


OTHER_URIS = ("file:///fuzz/other.py", "file:///fuzz/b.rs", "untitled:Untitled-1", "", "not a uri", "file:///")
METHODS = (INLINE, "textDocument/completion", "workspace/executeCommand", "initialize", "wire/unknown",
           "textDocument/didOpen", "textDocument/didChange", "textDocument/didClose", "$/cancelRequest",
           "workspace/didChangeConfiguration", "$/setTrace", "initialized")
COMMANDS = ("latent.accepted", "latent.stats", "latent.clearCache", "latent.toggle", "latent.nothing")
ALPHABET = "abc xyz_(){}:é中\t\n\n"


class Fuzz:
    """Generated cases of frames and params against one server, and what must hold after each:
    the server is alive and answers, every well-formed request is answered exactly once, no
    notification is answered, and the server's copy of a document edited in well-formed frames
    (valid and invalid changes) is what the edits make of it. Used here and by
    benchmarks/fuzz_lsp.py; `counts` tallies cases and findings."""

    TRACKED = "file:///fuzz/doc.py"
    CLAIM = 4096     # the largest Content-Length a malformed frame claims below the size limit

    def __init__(self, server: Wire, seed: int) -> None:
        self.server, self.random = server, random.Random(seed)
        self.text, self.stale, self.version = "hello\nworld\n", False, 1
        self.counts: collections.Counter = collections.Counter()
        self.findings: list[str] = []
        self._ids = itertools.count()
        server.open(self.TRACKED, self.text, "python")     # a language the bundled model completes

    # -- values --------------------------------------------------------------------------------
    def value(self, depth: int = 0):
        r = self.random
        kind = r.randrange(9 if depth < 3 else 6)
        if kind == 0:
            return None
        if kind == 1:
            return r.random() < 0.5
        if kind == 2:
            return r.choice([0, 1, -1, 2 ** 31 - 1, 2 ** 31, 2 ** 63, r.randrange(-100, 100)])
        if kind == 3:
            return r.choice([0.5, -0.0, 1e300, 9.9, r.uniform(-10, 10)])
        if kind in (4, 5):
            return "".join(r.choice(ALPHABET + "\ud800\x00\"\\") for _ in range(r.randrange(12)))
        if kind in (6, 7):
            return {r.choice(["line", "character", "uri", "text", "id", "range", "x", "latent"]): self.value(depth + 1)
                    for _ in range(r.randrange(4))}
        return [self.value(depth + 1) for _ in range(r.randrange(4))]

    def coordinate(self):
        return self.random.randrange(0, 5) if self.random.random() < 0.7 else self.value(2)

    def params(self, method: str):
        r = self.random
        if r.random() < 0.2:
            return self.value()
        uri = r.choice(OTHER_URIS)
        position = {"line": self.coordinate(), "character": self.coordinate()}
        if method in (INLINE, "textDocument/completion"):
            return {"textDocument": {"uri": r.choice([uri, self.TRACKED])}, "position": position,
                    "context": {"triggerKind": r.choice([1, 2, 9, "x"])}}
        if method == "workspace/executeCommand":
            return {"command": r.choice(COMMANDS), "arguments": [self.value() for _ in range(r.randrange(4))]}
        if method == "textDocument/didOpen":
            return {"textDocument": {"uri": uri, "languageId": r.choice(["python", "rust", "x", 5]),
                                     "version": self.coordinate(), "text": self.value()}}
        if method == "textDocument/didChange":
            return {"textDocument": {"uri": uri, "version": self.coordinate()},
                    "contentChanges": [{"range": {"start": position, "end": position}, "text": self.value()}]}
        if method == "workspace/didChangeConfiguration":
            return {"settings": {"latent": {r.choice(["enable", "maxNewTokensLine", "x", "languages"]): self.value()}}}
        return {"textDocument": {"uri": uri}, "id": self.value()}

    # -- the tracked document --------------------------------------------------------------------
    def offset(self, text: str, line: int, character: int) -> int:
        """LSP's lenient rule (the text is BMP-only and "\\n"-separated: one UTF-16 unit a character)."""
        lines = text.split("\n")
        if line >= len(lines):
            return len(text)
        return sum(len(x) + 1 for x in lines[:line]) + min(character, len(lines[line]))

    def edit(self) -> bytes:
        r = self.random
        changes = []
        for _ in range(r.randrange(1, 4)):
            choice = r.random()
            if choice < 0.15:
                new = "".join(r.choice(ALPHABET) for _ in range(r.randrange(30)))
                changes.append({"text": new})
                self.text, self.stale = new, False
            elif choice < 0.35:
                coordinates = [0, 0, 0, 0]
                coordinates[r.randrange(4)] = r.choice([-1, 0.5, "1", True, None, 2 ** 31, {"x": 1}])
                changes.append(span(*coordinates, "!"))
                self.stale = True
            else:
                count = self.text.count("\n") + 1
                l1, l2 = sorted(r.randrange(count + 1) for _ in range(2))
                c1, c2 = r.randrange(8), r.choice([r.randrange(8), 2 ** 31 - 1])
                if l1 == l2 and c2 < c1:
                    c1, c2 = c2, c1
                start, end = self.offset(self.text, l1, c1), self.offset(self.text, l2, c2)
                inserted = "".join(r.choice(ALPHABET) for _ in range(r.randrange(6)))
                changes.append(span(l1, c1, l2, c2, inserted))
                self.text = self.text[:start] + inserted + self.text[max(start, end):]
        self.version += 1
        return frame(message("textDocument/didChange", {"textDocument": {"uri": self.TRACKED, "version": self.version},
                                                       "contentChanges": changes}))

    # -- frames ----------------------------------------------------------------------------------
    def bad(self) -> bytes:
        r = self.random
        body = json.dumps(message(r.choice(METHODS), self.params(r.choice(METHODS)), r.choice([None, "b"]))).encode()
        kind = r.randrange(6)
        if kind == 0:
            build, _ = r.choice(list(FRAMINGS.values()))
            return build(body)
        if kind == 1:
            return bytes(r.randrange(256) for _ in range(r.randrange(200)))
        if kind == 2:
            return b"Content-Length: %d\r\n\r\n" % r.randrange(self.CLAIM) + body[: r.randrange(len(body) + 1)]
        if kind == 3:
            weird = r.choice([b"[1, 2]", b"5", b'"x"', b"null", b"{}", b'{"jsonrpc": "2.0"}', b"{\xff}",
                              b'{"jsonrpc": "2.0", "id": {"a": 1}, "method": "x"}', b"[" * 100_000])
            return frame(weird)
        if kind == 4:
            return frame(body)[: r.randrange(len(body))]
        return frame(body.replace(b"2.0", b"1.0"))

    def case(self) -> tuple[list[tuple[str, bytes, object]], int]:
        """Well-formed frames (requests, notifications, edits), then at most one malformed one."""
        r = self.random
        items = []
        for _ in range(r.randrange(1, 6)):
            choice = r.random()
            method = r.choice(METHODS)
            if choice < 0.3:
                items.append(("edit", self.edit(), None))
            elif choice < 0.65 and method not in ("initialized", "$/setTrace") and not method.startswith("textDocument/did"):
                msg_id = r.choice([f"f{next(self._ids)}", next(self._ids)])
                items.append(("request", frame(message(method, self.params(method), msg_id)), msg_id))
            else:
                items.append(("notification", frame(message(method, self.params(method))), None))
        bad = r.random() < 0.5
        if bad:
            items.append(("bad", self.bad(), None))
        return items, bad

    # -- one case --------------------------------------------------------------------------------
    def run(self) -> None:
        server, counts = self.server, self.counts
        items, bad = self.case()
        start = len(server.messages)
        counts["cases"] += 1
        for kind, data, _ in items:
            counts[kind + "s"] += 1
            server.write(data)
        for timeout in (2, 5, 15) if bad else (15,):   # a malformed frame may claim a probe's bytes
            if server.responds(timeout=timeout):
                break
            server.write(b" " * self.CLAIM)
        else:
            return self.finding("hangs" if server.process.poll() is None else "crashes", items)
        if server.process.poll() is not None:
            return self.finding("crashes", items)
        for kind, data, msg_id in items:
            if kind != "request":
                continue
            if server.wait(lambda m: "method" not in m and m.get("id") == msg_id, 15, start) is None:
                self.finding("missing responses", items, msg_id)
            elif len(server.answers(msg_id)) > 1:
                self.finding("duplicate responses", items, msg_id)
        nulls = [m for m in server.messages[start:] if "method" not in m and m.get("id") is None]
        if nulls and not bad:
            self.finding("answered notifications", items, nulls)
        record = server.document(self.TRACKED)
        if record is None or (record["sha256"], record["stale"]) != (digest(self.text), self.stale):
            self.finding("lost edits", items, record)
            self.version += 1
            self.text, self.stale = "reset\n", False
            server.change(self.TRACKED, self.version, {"text": self.text})

    def finding(self, kind: str, items, detail=None) -> None:
        self.counts[kind] += 1
        self.findings.append(f"{kind}: {detail!r} after {[data[:300] for _, data, _ in items]!r}")
