"""Test doubles for the engine protocol: a scripted engine and a deterministic tokenizer.

    engine = FakeEngine("return a + b")                 # always answers this
    engine = FakeEngine(lambda prompt: "...")           # answers from the prompt
    engine = FakeEngine(["first", "second"])            # answers in turn (the last one repeats)
    service = CompletionService(engine)
    ...
    engine.requests[-1]["prompt"], engine.requests[-1]["stop"]

The engine behaves like a real one where the pipeline can tell: it streams the answer token by
token (as the tokenizer splits it), honours `max_new_tokens` ("length"), stop strings ("stop",
the stop string excluded), end-of-sequence / `stop_token_ids` ("eos") and cancellation checked
before prefill and between decode steps ("cancelled"), and fills GenerationStats.
"""
from __future__ import annotations

import re
import threading
from typing import Callable, Sequence

from completion.types import Position
from dataclasses import asdict, replace

from model.fim import BOS, EOS, FORMATS
from model.params import SamplingParams
from model.protocol import CancelToken, Generation, GenerationStats


class FakeTokenizer:
    """Word-level and deterministic: each special string, run of word characters, and other
    single character is one token. Ids are handed out in order of first sight."""

    def __init__(self, style: str | None = "deepseek", *, bos: bool = True,
                 declare_fim: bool = True) -> None:
        fmt = FORMATS.get(style) if style else None
        self._specials = list(dict.fromkeys([BOS, EOS, *(fmt.tokens if fmt else ())]))
        self.special_tokens = tuple(self._specials)
        self._lock = threading.Lock()
        self._ids: dict[str, int] = {}
        self._strings: list[str] = []
        for special in self._specials:
            self._id(special)
        self.bos_id = self._ids[BOS] if bos else None
        self.eos_id = self._ids[EOS]
        markers = (fmt.prefix, fmt.suffix, fmt.middle, fmt.file_sep, fmt.repo_name) if fmt else ()
        self.fim = replace(fmt, end_id=self._ids[fmt.end], marker_ids=tuple(self._ids[t] for t in markers if t)) \
            if (fmt and declare_fim) else None
        alternatives = [re.escape(s) for s in sorted(self._specials, key=len, reverse=True)]
        self._pattern = re.compile("|".join(alternatives + [r"\w+", r"\s", r"[^\w\s]"]))

    def split(self, text: str) -> list[str]:
        """The token strings of `text`."""
        return self._pattern.findall(text)

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        ids = [self._id(piece) for piece in self.split(text)]
        return ([self.bos_id] if add_bos and self.bos_id is not None else []) + ids

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self._strings[i] for i in ids)

    def count(self, text: str) -> int:
        return len(self.split(text))

    def _id(self, piece: str) -> int:
        with self._lock:
            if piece not in self._ids:
                self._ids[piece] = len(self._strings)
                self._strings.append(piece)
            return self._ids[piece]


Reply = str | Callable[[str], str] | Sequence[str]


class FakeEngine:
    """A scripted engine implementing EngineProtocol."""

    model_name = "fake"

    def __init__(self, reply: Reply = "", *, tokenizer=None, on_token: Callable[[int], None] | None = None,
                 fim_layouts: tuple[str, ...] = (), languages: tuple[str, ...] = (),
                 context_length: int | None = None, first_choices: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer if tokenizer is not None else FakeTokenizer()
        self.fim_layouts, self.languages = fim_layouts, languages   # what the model declares
        self.context_length = context_length
        self.requests: list[dict] = []
        self.on_token = on_token   # called before decode step i (tests cancel or block in it)
        self._reply = list(reply) if isinstance(reply, (list, tuple)) else reply
        # the first tokens it ranks at the first step, best first (token strings), as the local
        # engine reports them for alternatives; none: a backend that does not rank them
        self.first_choices = tuple(first_choices)
        self._lock = threading.Lock()

    @property
    def fim_format(self) -> str | None:
        return self.tokenizer.fim.name if self.tokenizer.fim else None

    @property
    def calls(self) -> int:
        return len(self.requests)

    def stats(self) -> dict:
        return {"model": self.model_name, "calls": self.calls}

    def clear_cache(self) -> None:
        """The fake keeps no latent cache."""

    def generate(self, prompt, params: SamplingParams = SamplingParams(), *,
                 cancel: CancelToken | None = None) -> Generation:
        if not isinstance(prompt, str):
            prompt = self.tokenizer.decode(prompt)
        with self._lock:
            self.requests.append(dict(prompt=prompt, **asdict(params), cancel=cancel))
        stats = GenerationStats()
        if self.first_choices:
            stats.extra["first_choices"] = [[self.tokenizer.encode(token)[0], 1 / (rank + 2)]
                                            for rank, token in enumerate(self.first_choices)]
        # a real engine writes what heals first (SamplingParams.heal), then the answer
        pieces = self._decode(prompt, params.heal + self._answer(prompt), params.max_new_tokens, params.stop,
                              params.stop_token_ids, cancel, stats)
        return Generation(pieces, stats)

    def _answer(self, prompt: str) -> str:
        with self._lock:
            if callable(self._reply):
                return self._reply(prompt)
            if isinstance(self._reply, list):
                return self._reply.pop(0) if len(self._reply) > 1 else (self._reply or [""])[0]
            return self._reply

    def _decode(self, prompt, answer, max_new_tokens, stop, stop_token_ids, cancel, stats):
        stats.prompt_tokens = stats.prefilled_tokens = self.tokenizer.count(prompt) + (
            self.tokenizer.bos_id is not None)
        if cancel is not None and cancel.cancelled:  # checked before prefill
            stats.finish_reason = "cancelled"
            return
        text, stats.finish_reason = self._truncate(answer, max_new_tokens, stop, stop_token_ids)
        for step, token in enumerate(self._split(text)):
            if self.on_token is not None:
                self.on_token(step)
            if cancel is not None and cancel.cancelled:  # checked between decode steps
                stats.finish_reason = "cancelled"
                return
            stats.generated_tokens += 1
            yield token
        stats.generated_tokens += stats.finish_reason in ("stop", "eos")

    def _split(self, text: str) -> list[str]:
        """Token strings of `text` (any TokenizerProtocol tokenizer will do)."""
        split = getattr(self.tokenizer, "split", None)
        if split is not None:
            return split(text)
        return [self.tokenizer.decode([token]) for token in self.tokenizer.encode(text)]

    def _truncate(self, answer: str, max_new_tokens: int, stop: Sequence[str],
                  stop_token_ids: Sequence[int]) -> tuple[str, str]:
        """What a real engine would emit of `answer`, and why it would stop."""
        tokens = self._split(answer)
        reason = "eos"
        if len(tokens) > max_new_tokens:
            tokens, reason = tokens[:max_new_tokens], "length"
        enders = {self.tokenizer.eos_id, *stop_token_ids}
        for index, token in enumerate(tokens):
            if self.tokenizer.encode(token) and self.tokenizer.encode(token)[0] in enders:
                tokens, reason = tokens[:index], "eos"
                break
        text = "".join(tokens)
        hits = [text.find(s) for s in stop if s and s in text]
        if hits:
            return text[:min(hits)], "stop"
        return text, reason


CURSOR = "█"


def cursor_at(marked: str) -> tuple[str, Position]:
    """Split a text with one █ marking the cursor into (text, LSP position in UTF-16 units)."""
    offset = marked.index(CURSOR)
    text = marked[:offset] + marked[offset + 1:]
    before = re.split(r"\r\n|\r|\n", marked[:offset])
    return text, Position(len(before) - 1, len(before[-1].encode("utf-16-le")) // 2)
