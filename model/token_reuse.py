"""Encoding a text that differs little from one encoded a moment ago: only the part that changed.

Typing at the cursor changes a completion prompt by a few characters: at its end (suffix-first
layout, SPM) or before the suffix (PSM). `Reuse.encode` keeps the last few long texts with their
ids, finds the one sharing the longest start with the new text, and re-encodes only from a
*restart point* before the first changed character up to a *special token* after the last one;
the ids before and after are taken over. The result equals a full encode, token for token.

Why it is exact. A byte-level BPE tokenizer splits the text at its special tokens first, then
each piece with its pre-tokenizer's regular expressions, and merges bytes only within one
pre-token. So a position that is a pre-token boundary whatever follows can start a fresh
encode, and the tokens before it stand. The restart point is a space (U+0020) right after a
printable ASCII character other than a space:

- GPT-2's expression (the bundled model's tokenizer, StarCoder's) has no match that goes on
  past a non-space into a space: words, numbers and punctuation runs stop at whitespace, and a
  whitespace match may begin with the space but never takes a character before it;
- DeepSeek-Coder's sequence of splits (each line apart; letters, punctuation runs, trailing
  whitespace, CJK runs and single digits, each with at most one whitespace *before* it) has
  none either, in any of its passes;
- Qwen2's and Llama 3's expression glues newlines to punctuation (`):\\n`), not a space, so the
  rule holds there too — but those tokenizers normalize (NFC), and a normalizer moves
  characters, so they are encoded whole.

None of these expressions looks behind a position, so from a boundary on the matches are the
same whether the encode starts there or earlier. The end of the re-encoded part is the start
of a special token the two texts share after the change (the hole or end token of a FIM
prompt): the library splits the text there before anything else. Where a tokenizer's files say
otherwise (a normalizer, a pre-tokenizer without byte-level bytes, special tokens that strip
whitespace, BPE dropout) every text is encoded whole. And the first few splices of each
tokenizer are checked against a full encode: a difference turns reuse off for good, with a
warning in the log.
"""
from __future__ import annotations

import bisect
import itertools
import json
import logging
import threading
from typing import Callable, NamedTuple

log = logging.getLogger(__name__)

MIN_CHARS = 1024        # shorter texts are encoded whole (a line, a window's piece)
MAX_CHARS = 1 << 20     # longer ones are not kept
KEPT = 8                # texts kept: the prompt, its windows, an alternative's
CHECKED = 8             # splices compared with a full encode before they are trusted


class _Encoded(NamedTuple):
    text: str
    ids: list[int]
    ends: list[int]     # UTF-8 bytes of the text up to the end of each token


class Reuse:
    """Splices encodes of similar texts; `encode(text)` is the whole text's ids."""

    def __init__(self, backend, encode: Callable[[str], list[int]]) -> None:
        """`encode`: the whole-text encode (no special tokens added) this one must equal."""
        self._encode = encode
        self._bytes = _token_bytes(backend) if _splices_safely(backend) else None
        self._specials = tuple(t.content for t in backend.get_added_tokens_decoder().values() if t.content)
        self._kept: tuple[_Encoded, ...] = ()
        self._unchecked = CHECKED
        self._lock = threading.Lock()   # for the bookkeeping only; encodes run outside it
        self.encoded_chars = 0          # characters handed to the library (figures)
        self.reused_chars = 0           # … and those the splices took over instead

    @property
    def active(self) -> bool:
        return self._bytes is not None

    def encode(self, text: str) -> list[int]:
        if self._bytes is None or not MIN_CHARS <= len(text) <= MAX_CHARS:
            self.encoded_chars += len(text)
            return self._encode(text)
        kept, start = self._closest(text)
        if kept is not None and kept.text == text:
            return list(kept.ids)
        encoded = self._splice(kept, text, start) if kept is not None else None
        if encoded is None:
            self.encoded_chars += len(text)
            ids = self._encode(text)
            encoded = _Encoded(text, ids, self._ends(ids, 0))
        self._keep(encoded)
        return list(encoded.ids)

    # -- internal helpers --------------------------------------------------------------------
    def _closest(self, text: str) -> tuple[_Encoded | None, int]:
        """The kept text sharing the longest start with `text`, and how long that start is."""
        best, length = None, 0
        for kept in self._kept:
            shared = _common_prefix(kept.text, text)
            if shared > length or kept.text == text:
                best, length = kept, shared
        return best, length

    def _splice(self, old: _Encoded, text: str, shared: int) -> _Encoded | None:
        restart = _restart_point(text, shared)
        if restart == 0:
            return None
        restart_bytes = len(text[:restart].encode("utf-8"))
        left = bisect.bisect_left(old.ends, restart_bytes) + 1   # tokens that end at or before it
        if left > len(old.ids) or old.ends[left - 1] != restart_bytes:
            return None                                          # not a token boundary after all
        stop, right = self._shared_special(old, text, shared)
        self.encoded_chars += stop - restart
        middle = self._encode(text[restart:stop])
        ids = old.ids[:left] + middle + old.ids[right:]
        shift = len(text.encode("utf-8")) - (old.ends[-1] if old.ends else 0)
        ends = old.ends[:left] + self._ends(middle, restart_bytes) + [end + shift for end in old.ends[right:]]
        encoded = _Encoded(text, ids, ends)
        self.reused_chars += len(text) - (stop - restart)
        return encoded if self._trusted(encoded) else None

    def _shared_special(self, old: _Encoded, text: str, shared: int) -> tuple[int, int]:
        """Where the re-encoded part ends: (its end in `text`, the index in old.ids from which
        the ids are taken over) — at the first special token after the change that both texts
        end with, else (len(text), len(old.ids))."""
        whole = (len(text), len(old.ids))
        suffix = _common_suffix(old.text, text, max(0, min(len(old.text), len(text)) - shared))
        if suffix == 0:
            return whole
        starts = [at for at in (text.find(special, len(text) - suffix) for special in self._specials) if at >= 0]
        if not starts:
            return whole
        stop = min(starts)
        stop_bytes_old = len(old.text[:stop - len(text) + len(old.text)].encode("utf-8"))
        right = bisect.bisect_left(old.ends, stop_bytes_old) + 1
        if right > len(old.ends) or old.ends[right - 1] != stop_bytes_old:
            return whole
        return stop, right

    def _ends(self, ids: list[int], start: int) -> list[int]:
        assert self._bytes is not None
        sizes = self._bytes
        return list(itertools.accumulate((sizes[i] for i in ids), initial=start))[1:]

    def _trusted(self, encoded: _Encoded) -> bool:
        if self._unchecked <= 0:
            return True
        with self._lock:
            self._unchecked -= 1
        if self._encode(encoded.text) == encoded.ids:
            return True
        log.warning("This tokenizer's ids for a text edited in place differ from a whole encode: "
                    "every prompt is encoded whole from now on.")
        self._bytes = None
        return False

    def _keep(self, encoded: _Encoded) -> None:
        with self._lock:
            self._kept = (encoded, *(k for k in self._kept if k.text != encoded.text))[:KEPT]


def _restart_point(text: str, before: int) -> int:
    """The last position < `before` holding a space that follows a printable ASCII character
    other than a space (a pre-token boundary whatever comes after it); 0 if none."""
    at = text.rfind(" ", 0, before)
    while at > 0:
        if "!" <= text[at - 1] <= "~":
            return at
        at = text.rfind(" ", 0, at)
    return 0


def _common_prefix(a: str, b: str) -> int:
    """Length of the longest common start of `a` and `b` (compared in halving slices)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _common_suffix(a: str, b: str, limit: int) -> int:
    """Length of the longest common end of `a` and `b`, at most `limit`."""
    low, high = 0, limit
    while low < high:
        middle = (low + high + 1) // 2
        if a[len(a) - middle:len(a) - low] == b[len(b) - middle:len(b) - low]:
            low = middle
        else:
            high = middle - 1
    return low


def _splices_safely(backend) -> bool:
    """Whether the tokenizer's files promise what the module docstring relies on."""
    config = json.loads(backend.to_str())
    model, pre = config.get("model") or {}, config.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
    return (config.get("normalizer") is None and model.get("type") == "BPE" and not model.get("dropout")
            and len(byte_level) == 1 and not byte_level[0].get("add_prefix_space")
            and all(p.get("type") in ("ByteLevel", "Split", "Digits") for p in parts)
            and all(p.get("behavior", "Isolated") == "Isolated" and not p.get("invert") for p in parts)
            and not any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") or t.get("normalized")
                        for t in config.get("added_tokens", [])))


def _token_bytes(backend) -> list[int]:
    """UTF-8 bytes each id stands for: a byte-level token's string has one character per byte;
    a special token stands for its own text."""
    sizes = [0] * backend.get_vocab_size(with_added_tokens=True)
    for token, index in backend.get_vocab(with_added_tokens=False).items():
        sizes[index] = len(token)
    for index, added in backend.get_added_tokens_decoder().items():
        sizes[index] = len(added.content.encode("utf-8"))
    return sizes
