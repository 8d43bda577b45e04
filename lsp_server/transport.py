"""The stdio transport: LSP frames cut robustly from a byte stream.

pygls' reader matches `Content-Length: N\\r\\n` byte for byte and reads a body of whatever size
is claimed: one malformed frame leaves it deaf for good, and a huge claim exhausts memory. Here
a daemon thread reads stdin and a `Framer` cuts it into frames, each handed to the event loop,
where the protocol decodes and dispatches it (protocol.LatentProtocol.receive).

The Framer
- takes header names in any case, with or without blanks around the colon, on lines that end
  in CR LF or LF alone, and ignores headers other than Content-Length;
- reads a body of at most `limit()` bytes: a larger one is skipped unread, and a request whose
  id shows at its start is answered with an error (`Oversized`);
- delivers a body that is no JSON message at once, for the protocol to answer (-32700), unless
  it may be one cut short or run long by a wrong length (`_misframed`): then the next header
  decides;
- after a framing error — no Content-Length or one that is not a number, a line that is not a
  header, a body that does not end where its length says, a Content-Length header inside a
  body (its length was too large: the client's next message came first) — resynchronises on
  the next Content-Length header, and delivers the JSON message found before it, if any (a
  length one byte off, or thousands too many, a body after `Content-Length: 0`, a missing
  header). A header cannot hide inside a JSON body: its strings hold no raw line breaks;
- raises `Unreadable` after `limit()` bytes without a header (or more than a refused body
  claimed): that is no LSP client, and the server exits with a message rather than stay deaf.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from dataclasses import dataclass
from typing import BinaryIO, Callable

log = logging.getLogger(__name__)

MAX_HEADER = 8192            # bytes of header lines before a body
LOGGED_PROBLEMS = 10         # framing errors logged as warnings; later ones at debug level
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_HEADER_LINE = re.compile(_TOKEN + rb"+[ \t]*:[^\r\n]*")
_UNFINISHED_LINE = re.compile(_TOKEN + rb"*(?:[ \t]*:[^\r\n]*)?\r?")
_NEXT_HEADER = re.compile(rb"content-length[ \t]*:[ \t]*\d{1,18}[ \t]*\r?\n", re.IGNORECASE)
_OVERLAP = 64                # a header cut across two reads is still found
_BLANK = b" \t\r\n"
EAGER_BYTES = 1 << 20        # bytes without a header tried as one JSON message before the next header
_ID_AT_START = re.compile(rb'\s*\{\s*(?:"(?:jsonrpc|method)"\s*:\s*"[^"\\]{0,200}"\s*,\s*)*'
                          rb'"id"\s*:\s*(-?\d{1,18}|"[^"\\]{0,200}")')


@dataclass(frozen=True)
class Body:
    data: bytes              # one message's bytes, for the protocol to decode


@dataclass(frozen=True)
class Problem:
    sentence: str            # a framing error, to log


@dataclass(frozen=True)
class Oversized:
    size: int                # the Content-Length of a body skipped unread
    msg_id: object           # its request id when its start shows one, else None


class Unreadable(Exception):
    """The stream cannot be read as LSP messages; str(error) is one sentence."""


class Framer:
    """LSP frames from a byte stream: `feed(bytes)` returns Body, Problem and Oversized events."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self.limit = limit           # the largest body, bytes (read on each frame: settings change)
        self.buffer = bytearray()
        self.lost = False            # resynchronising: buffer[:scanned] holds no header
        self.scanned = 0
        self.dropped = 0             # bytes dropped while resynchronising
        self.claimed = 0             # the size a refused body claimed (its bytes are dropped)
        self.sniff: int | None = None   # a refused body whose id is still to be read
        self.suspect: bytes | None = None   # a body of the right length that ends wrong
        self.body_scanned = 0        # buffer[:body_scanned] of a pending body holds no header

    def feed(self, data: bytes) -> list:
        self.buffer += data
        events: list = []
        while self._resync(events) if self.lost else self._frame(events):
            pass
        return events

    # -- in step -------------------------------------------------------------------------------
    def _frame(self, events: list) -> bool:
        """Cut one frame off the buffer; False when more bytes are needed."""
        buffer = self.buffer
        blank = 0
        while blank < len(buffer) and buffer[blank] in _BLANK:
            blank += 1
        del buffer[:blank]           # blank lines between frames are harmless
        if not buffer:
            return False
        length, end, problem = _headers(buffer)
        if problem is not None:
            return self._lose(events, problem)
        if length is None:
            return False
        if length > self.limit():
            events.append(Problem(f"A message of {length} bytes is over the max_message_mb limit and is skipped "
                                  "unread."))
            del buffer[:end]
            return self._lose(events, None, claimed=length)
        if self._header_inside(end, min(len(buffer), end + length)):
            return self._lose(events, f"A body is shorter than its Content-Length of {length}: another message's "
                                      "header comes before its end.")
        if len(buffer) < end + length:
            return False
        body = bytes(buffer[end:end + length])
        if _last_visible(buffer, end + length, end) not in (ord("}"), ord("]")) and _misframed(body):
            del buffer[:end]
            self._lose(events, f"A body does not end where its Content-Length of {length} says.")
            self.suspect = body   # answered as unreadable if nothing better is found before the next header
            return True
        events.append(Body(body))
        del buffer[:end + length]
        self.body_scanned = 0
        return True

    def _header_inside(self, start: int, end: int) -> bool:
        """Whether a Content-Length header line ends in buffer[start:end], a body's bytes so far
        (only the lines not looked at before: a body arrives in many reads)."""
        buffer = self.buffer
        newline = buffer.find(b"\n", max(start, self.body_scanned), end)
        self.body_scanned = end
        while newline >= 0:
            if _NEXT_HEADER.search(buffer, max(start, newline - _OVERLAP), newline + 1):
                return True
            newline = buffer.find(b"\n", newline + 1, end)
        return False

    def _lose(self, events: list, problem: str | None, claimed: int = 0) -> bool:
        """Resynchronise from the start of the buffer (the next header search skips its first byte)."""
        if problem is not None:
            events.append(Problem(problem))
        self.lost, self.scanned, self.dropped, self.body_scanned = True, 1, 0, 0
        self.claimed, self.sniff, self.suspect = claimed, (claimed or None), None
        return True

    # -- out of step -----------------------------------------------------------------------------
    def _resync(self, events: list) -> bool:
        buffer = self.buffer
        self._sniff(events, done=False)
        found = _NEXT_HEADER.search(buffer, max(self.scanned - _OVERLAP, 1))   # byte 0 began what failed
        if found is None:
            if (not self.claimed and len(buffer) <= EAGER_BYTES and _last_visible(buffer, len(buffer)) == ord("}")
                    and self._recover(events, bytes(buffer), eager=True)):
                buffer.clear()
                self.lost = False
                return True
            self.scanned = len(buffer)
            if len(buffer) > self.limit():      # too much to be one message: keep only the tail
                self.dropped += len(buffer) - _OVERLAP
                del buffer[:-_OVERLAP]
                self.scanned = len(buffer)
                if self.dropped > max(self.limit(), self.claimed):
                    raise Unreadable(f"The client sent {self.dropped} bytes without an LSP header; this is not "
                                     "an LSP stream.")
            return False
        self._sniff(events, done=True)
        junk = bytes(buffer[:found.start()])
        del buffer[:found.start()]
        if not self.claimed and not self._recover(events, junk, eager=False) and self.suspect is not None:
            events.append(Body(self.suspect))   # the protocol answers it: not JSON
        self.lost = False
        return True

    def _recover(self, events: list, junk: bytes, eager: bool) -> bool:
        """The JSON message in the bytes before the next header, if they hold one: eagerly (no
        header yet) only once it parses; else whatever lies between braces, to be answered."""
        start = junk.find(b"{")
        candidate = junk[start:].strip() if start >= 0 else b""
        if not candidate.endswith(b"}") or len(candidate) > self.limit():
            return False
        if eager:
            try:
                json.loads(candidate)
            except (ValueError, RecursionError):
                return False
        events.append(Body(candidate))
        return True

    def _sniff(self, events: list, done: bool) -> None:
        """The id of a refused request, from its first bytes."""
        if self.sniff is None or (len(self.buffer) < 1024 and not done):
            return
        match = _ID_AT_START.match(self.buffer)
        msg_id = None
        if match is not None and b'"method"' in self.buffer[:1024]:   # a request: its id is answered
            msg_id = json.loads(match.group(1))
        events.append(Oversized(self.sniff, msg_id))
        self.sniff = None


def _misframed(body: bytes) -> bool:
    """Whether a body that does not end like a JSON message may be one that a wrong
    Content-Length cut short or ran past (the next header tells), rather than no JSON message
    whatever its length (then it is answered at once)."""
    text = body.decode("utf-8", "surrogateescape").strip()
    if not text:
        return True                  # a length of 0 before a body
    if text[0] not in "{[":
        return False
    try:
        json.loads(text)
    except json.JSONDecodeError as e:   # cut short: the error is at its end, or in a string it opened
        return e.pos >= len(text) - 5 or e.msg.startswith("Unterminated string") or e.msg == "Extra data"
    except RecursionError:
        return False
    return False


def _last_visible(data: bytearray, end: int, start: int = 0) -> int | None:
    """The last byte of data[start:end] that is not blank, or None."""
    while end > start and data[end - 1] in _BLANK:
        end -= 1
    return data[end - 1] if end > start else None


def _headers(buffer: bytearray) -> tuple[int | None, int, str | None]:
    """(Content-Length, end of the header block, None), (None, 0, None) while unfinished, or
    (None, 0, the problem)."""
    position, length = 0, None
    while True:
        newline = buffer.find(b"\n", position, MAX_HEADER)
        if newline < 0:
            line = bytes(buffer[position:MAX_HEADER])
            if len(buffer) >= MAX_HEADER:
                return None, 0, f"The headers run past {MAX_HEADER} bytes."
            if not _UNFINISHED_LINE.fullmatch(line):
                return None, 0, "A message does not start with a Content-Length header."
            return None, 0, None
        line = bytes(buffer[position:newline]).removesuffix(b"\r")
        position = newline + 1
        if not line:
            if length is None:
                return None, 0, "A message has no Content-Length header."
            return length, position, None
        if not _HEADER_LINE.fullmatch(line):
            return None, 0, "A message does not start with a Content-Length header."
        name, _, value = line.partition(b":")
        if name.rstrip(b" \t").lower() != b"content-length":
            continue
        value = value.strip(b" \t")
        if not value.isdigit() or len(value) > 18:
            return None, 0, f"The Content-Length {value[:40].decode('latin-1')!r} is not a number of bytes."
        if length is not None and int(value) != length:
            return None, 0, "A message has two Content-Length headers that disagree."
        length = int(value)


# ---------------------------------------------------------------------------------------------
# Serving

async def serve(reader: asyncio.StreamReader, receive: Callable[[bytes], None], refuse: Callable[[Oversized], None],
                limit: Callable[[], int]) -> str | None:
    """Cut `reader`'s bytes into frames and hand each to `receive` (or `refuse`, too large), in
    order, until the stream ends (None) or cannot be read (why, one sentence)."""
    framer, problems = Framer(limit), 0
    while chunk := await reader.read(1 << 16):
        try:
            events = framer.feed(chunk)
        except Unreadable as e:
            return str(e)
        for event in events:
            if isinstance(event, Body):
                receive(event.data)
            elif isinstance(event, Oversized):
                refuse(event)
            else:
                problems += 1
                level = logging.WARNING if problems <= LOGGED_PROBLEMS else logging.DEBUG
                log.log(level, "Framing error: %s The server reads on from the next Content-Length header%s",
                        event.sentence, "; later framing errors are logged at debug level." if problems ==
                        LOGGED_PROBLEMS else ".")
            await asyncio.sleep(0)   # the handlers this message started run before the next message
    return None


def stdin_reader(stream: BinaryIO) -> asyncio.StreamReader:
    """An asyncio stream fed from `stream` by a daemon thread (call on the running loop): an
    exiting server never waits on a read that the client left open."""
    reader, loop = asyncio.StreamReader(), asyncio.get_running_loop()

    def pump() -> None:
        read = getattr(stream, "read1", stream.read)
        try:
            while chunk := read(1 << 16):
                loop.call_soon_threadsafe(reader.feed_data, chunk)
            loop.call_soon_threadsafe(reader.feed_eof)
        except (OSError, ValueError, RuntimeError):   # stdin closed, or the loop is gone
            pass

    threading.Thread(target=pump, name="latent-stdin", daemon=True).start()
    return reader
