"""The completion service: `complete(snapshot, position, cancel)` → suggestions with ranges.

One request, in order (each stage timed into `CompletionResult.timings_ms`):

1. typing-through: the user typed the start of the suggestion shown last → the rest, at once;
   a suggestion precomputed after an accept for exactly this text → that suggestion;
2. context: tree-sitter decides the mode ("none" ends here), windows and related snippets;
3. prompt: the FIM prompt in the model family's format, within the token budget;
4. engine: a small LRU of recent answers, else `engine.generate` with stop strings derived
   from the mode, streamed and stopped as soon as postprocessing would cut the rest;
5. postprocess: cut, de-duplicate, check the syntax, work out the range.

The range of a suggestion is empty (an insertion at the cursor) unless the suggestion closes a
bracket or quote opened before the cursor and the cursor's line goes on with that same closing
text — an auto-inserted `)`, `"`, `}` or `});` — in which case the range covers those
characters, so accepting never leaves them twice (postprocess.covered_length). Suggestions use
the document's line ending; prompts always use "\n".

Thread safety: `complete` runs on a worker thread while the event loop mutates the Workspace.
It reads only the immutable Snapshot and documents' immutable states; the small maps here are
guarded by one lock that is never held across the engine call.
"""
from __future__ import annotations

import posixpath
import threading
import time
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import NamedTuple

from completion import postprocess
from completion.cache import LruCache
from completion.context import (
    Cursor, RelatedIndex, Source, TokenCounter, block_opener, build_context, decide_mode,
)
from completion.document import Lines, Workspace, line_ending, parse
from completion.languages import LanguageSpec, language_for
from completion.postprocess import Plan
from completion.prompt import build_prompt, overhead, resolve_format
from completion.types import CompletionResult, Position, Range, Snapshot, Suggestion
from model.protocol import CancelToken, EngineProtocol

BEFORE_LINES = 10  # lines before the cursor scanned for open brackets (the range rule)


@dataclass(frozen=True)
class CompletionConfig:
    max_prompt_tokens: int = 2048        # the whole prompt, BOS included
    prefix_fraction: float = 0.75        # share of the file's windows before the cursor
    snippet_tokens: int = 512            # share of the budget for related snippets
    max_new_tokens_line: int = 48
    max_new_tokens_block: int = 160
    temperature: float = 0.0
    top_p: float = 1.0
    fim_format: str | None = None        # None: read off the tokenizer
    disabled_languages: frozenset = frozenset()  # LSP language ids or language names
    multiline: bool = True               # False: never "block" mode
    lru_size: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "disabled_languages", frozenset(self.disabled_languages))
        if self.max_prompt_tokens < 64:
            raise ValueError("max_prompt_tokens must be at least 64.")
        if not 0.0 < self.prefix_fraction <= 1.0:
            raise ValueError("prefix_fraction must be in (0, 1].")
        if self.snippet_tokens < 0 or self.lru_size < 0:
            raise ValueError("snippet_tokens and lru_size must not be negative.")
        if self.max_new_tokens_line < 1 or self.max_new_tokens_block < 1:
            raise ValueError("max_new_tokens_line and max_new_tokens_block must be positive.")


class _Shown(NamedTuple):
    """The suggestion last shown in a document, for typing-through."""

    before: str    # the document's text before the cursor then …
    after: str     # … and after it
    text: str      # the suggestion
    covered: int   # characters of `after` its range replaces
    mode: str


class _Precompute(NamedTuple):
    before: str
    after: str
    future: object
    cancel: CancelToken


class _Request(NamedTuple):
    prompt: str
    max_new_tokens: int
    stop: tuple[str, ...]
    stop_token_ids: tuple[int, ...]
    temperature: float
    top_p: float


class CompletionService:
    """The completion pipeline over one engine, with the open documents it completes in."""

    def __init__(self, engine: EngineProtocol, config: CompletionConfig | None = None,
                 workspace: Workspace | None = None) -> None:
        """`workspace`: documents already open (with their parsed trees), e.g. kept across a
        model reload; by default an empty one."""
        self.engine = engine
        self.config = config or CompletionConfig()
        self.workspace = workspace if workspace is not None else Workspace()
        self.workspace.on_close = self._forget
        self._format = resolve_format(self.config.fim_format, engine)
        self._count = TokenCounter(engine.tokenizer.count)
        self._bos = 0 if engine.tokenizer.bos_id is None else 1
        self._related = RelatedIndex()
        self._lock = threading.Lock()
        self._shown: dict[str, _Shown] = {}
        self._cache = LruCache(self.config.lru_size)
        self._precomputes: dict[str, _Precompute] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._counters: Counter = Counter()

    # -----------------------------------------------------------------------------------------
    # Public API

    def update_config(self, config: CompletionConfig) -> None:
        fmt = resolve_format(config.fim_format, self.engine)
        with self._lock:
            self.config, self._format = config, fmt
        self._cache.resize(config.lru_size)
        self.clear_cache()

    def complete(self, snapshot: Snapshot, position: Position,
                 cancel: CancelToken | None = None) -> CompletionResult:
        """Suggestions for `position` in `snapshot` (raises InvalidPosition outside the text)."""
        started = time.perf_counter()
        cancel = cancel or CancelToken()
        state = self._state_for(snapshot)
        lines = state.lines if state is not None else Lines(snapshot.text)
        cursor = Cursor(lines, lines.offset(position))
        self._bump("requests")
        if cancel.cancelled:
            return self._cancelled()
        language = language_for(snapshot.language_id, snapshot.path or snapshot.uri)
        if self._disabled(snapshot, language):
            self._bump("skipped")
            return CompletionResult(source="skipped")
        for shortcut in (self._type_through, self._precomputed):
            result = shortcut(snapshot.uri, cursor, cancel)
            if result is not None:
                result.timings_ms.setdefault("context", _ms(started))  # answered without the model
                return result
        result = self._run(snapshot, language, cursor, cancel, state.tree if state is not None else None)
        self._remember(snapshot.uri, cursor, result)
        return result

    def accepted(self, uri: str, suggestion: Suggestion) -> None:
        """The user accepted `suggestion` in `uri`: precompute the next one in the background."""
        self._bump("accepted")
        document = self.workspace.get(uri)
        if document is None:
            return
        snapshot, offset = _after_accept(document.snapshot(), suggestion)
        cancel = CancelToken()
        future = self._pool().submit(self._precompute, snapshot, offset, cancel)
        with self._lock:
            previous = self._precomputes.pop(uri, None)
            self._precomputes[uri] = _Precompute(
                snapshot.text[:offset], snapshot.text[offset:], future, cancel)
        if previous is not None:
            previous.cancel.cancel()

    def clear_cache(self) -> None:
        self._cache.clear()
        with self._lock:
            self._shown.clear()
            precomputes, self._precomputes = list(self._precomputes.values()), {}
        for pending in precomputes:
            pending.cancel.cancel()
        self._related.clear()

    def stats(self) -> dict:
        with self._lock:
            return {
                **self._counters,
                "fim_format": self._format.name,
                "documents": len(self.workspace),
                "cache_entries": len(self._cache),
                "typing_through_documents": len(self._shown),
            }

    def close(self) -> None:
        """Stop background precomputation (the service stays usable for `complete`)."""
        self.clear_cache()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # -----------------------------------------------------------------------------------------
    # One completion through the pipeline

    def _run(self, snapshot: Snapshot, language: LanguageSpec | None, cursor: Cursor,
             cancel: CancelToken, tree=None) -> CompletionResult:
        """Context, prompt, engine, postprocess; `tree` is the snapshot's when already known."""
        config, fmt = self.config, self._format
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        if tree is None and language is not None:
            tree = parse(language, snapshot.text)
        mode = decide_mode(language, tree, cursor, config.multiline)
        if mode == "none":
            self._bump("skipped")
            timings["context"] = _ms(clock)
            return CompletionResult(mode="none", source="skipped", timings_ms=timings)
        current = Source(snapshot.uri, _display_path(snapshot), language, snapshot.text,
                         snapshot.version, tree)
        comment = language.comment if language else "#"
        budget = config.max_prompt_tokens - overhead(fmt, current.path, comment, self._count, self._bos)
        context = build_context(
            mode, current, cursor, self._other_sources(snapshot.uri), self._related,
            budget=budget, snippet_budget=config.snippet_tokens,
            prefix_fraction=config.prefix_fraction, count=self._count)
        timings["context"], clock = _ms(clock), time.perf_counter()

        prompt = build_prompt(fmt, context, self._count, max_tokens=config.max_prompt_tokens, bos=self._bos)
        plan = self._plan(mode, language, tree, cursor)
        request = self._request(prompt.text, mode, plan)
        timings["prompt"], clock = _ms(clock), time.perf_counter()

        cached = self._cache.get(snapshot.uri, request)
        if cached is not None:
            raw, stats, source = cached[0], {**cached[1], "cached": True}, "cache"
            self._bump("cache_hits")
        else:
            raw, stats = self._generate(request, plan, cancel)
            if cancel.cancelled or stats.get("finish_reason") == "cancelled":
                return self._cancelled()
            self._cache.put(snapshot.uri, request, (raw, stats))
            source = "model"
            self._bump("model_calls")
        timings["engine"], clock = _ms(clock), time.perf_counter()

        suggestions = self._postprocess(raw, stats, plan, language, tree, cursor)
        timings["postprocess"] = _ms(clock)
        return CompletionResult(suggestions, mode, source, timings, stats)

    def _plan(self, mode: str, language, tree, cursor: Cursor) -> Plan:
        lines = cursor.lines
        opener_indent = ""
        if mode == "block":
            opener = block_opener(language, tree, cursor)
            text = lines.line_text(opener if opener is not None else cursor.line)
            opener_indent = text[:len(text) - len(text.lstrip(" \t"))]
        first = lines.starts[max(cursor.line - BEFORE_LINES, 0)]
        return Plan(mode, cursor.head, cursor.tail,
                    before=cursor.text[first:cursor.line_start].replace("\r\n", "\n"),
                    next_line=cursor.next_line(), opener_indent=opener_indent,
                    specials=self._format.special_strings)

    def _request(self, prompt: str, mode: str, plan: Plan) -> _Request:
        config = self.config
        if mode == "block":
            stop = ("\n\n\n",)
        else:
            stop = ("\n\n",) if plan.next_line_allowed else ("\n",)
        end_id = self._format.end_id
        return _Request(
            prompt,
            config.max_new_tokens_line if mode == "line" else config.max_new_tokens_block,
            stop + plan.specials,
            (end_id,) if end_id is not None else (),
            config.temperature,
            config.top_p,
        )

    def _generate(self, request: _Request, plan: Plan, cancel: CancelToken) -> tuple[str, dict]:
        generation = self.engine.generate(
            request.prompt, max_new_tokens=request.max_new_tokens, stop=request.stop,
            stop_token_ids=request.stop_token_ids, temperature=request.temperature,
            top_p=request.top_p, cancel=cancel)
        stopped_early = False
        for _ in generation:
            if postprocess.finished(generation.text, plan):
                stopped_early = True
                break
        if stopped_early:
            _close(generation)
        stats = generation.stats.as_dict()
        if stopped_early:
            stats.update(finish_reason="stop", stopped_early=True)
        return generation.text, stats

    def _postprocess(self, raw: str, stats: dict, plan: Plan, language, tree,
                     cursor: Cursor) -> list[Suggestion]:
        text = postprocess.clean(raw, plan, hit_limit=stats.get("finish_reason") == "length")
        if not text:
            self._bump("dropped_empty")
            return []
        covered = postprocess.covered_length(text, plan)
        eol = line_ending(cursor.text)
        if eol != "\n":
            text = text.replace("\n", eol)
        start, end = cursor.offset, cursor.offset + covered
        if tree is not None and postprocess.adds_errors(language, tree, cursor.text, start, end, text):
            self._bump("dropped_syntax")
            return []
        self._bump("suggestions")
        lines = cursor.lines
        return [Suggestion(text, Range(lines.position(start), lines.position(end)))]

    # -----------------------------------------------------------------------------------------
    # Typing-through and precomputation

    def _type_through(self, uri: str, cursor: Cursor, cancel: CancelToken) -> CompletionResult | None:
        """The rest of the last suggestion when the user typed its start (or nothing) since."""
        with self._lock:
            shown = self._shown.get(uri)
        if shown is None:
            return None
        before, after = cursor.text[:cursor.offset], cursor.text[cursor.offset:]
        if after != shown.after or not before.startswith(shown.before):
            return None
        typed = before[len(shown.before):]
        rest = shown.text[len(typed):]
        if not shown.text.startswith(typed) or not rest.strip() or rest == after[:shown.covered]:
            return None
        end = cursor.lines.position(cursor.offset + shown.covered)
        suggestion = Suggestion(rest, Range(cursor.lines.position(cursor.offset), end))
        with self._lock:
            self._shown[uri] = _Shown(before, after, rest, shown.covered, shown.mode)
        self._bump("typing_through" if typed else "cache_hits")
        return CompletionResult([suggestion], shown.mode, "typing-through" if typed else "cache")

    def _precomputed(self, uri: str, cursor: Cursor, cancel: CancelToken) -> CompletionResult | None:
        """The suggestion precomputed after an accept, when this request is at its position."""
        with self._lock:
            pending = self._precomputes.pop(uri, None)
        if pending is None:
            return None
        if (pending.before, pending.after) != (cursor.text[:cursor.offset], cursor.text[cursor.offset:]):
            pending.cancel.cancel()
            return None
        while not pending.future.done():
            if cancel.cancelled:
                pending.cancel.cancel()
                return self._cancelled()
            wait([pending.future], timeout=0.02)
        result = None if pending.future.cancelled() else pending.future.result()
        if result is None or result.source in ("cancelled", "skipped") or not result.suggestions:
            return None
        self._bump("precompute_hits")
        self._remember(uri, cursor, result)
        return replace(result, source="cache", timings_ms={},
                       engine_stats={**result.engine_stats, "cached": True})

    def _precompute(self, snapshot: Snapshot, offset: int, cancel: CancelToken) -> CompletionResult | None:
        try:
            self._bump("precomputes")
            language = language_for(snapshot.language_id, snapshot.path or snapshot.uri)
            if self._disabled(snapshot, language):
                return None
            return self._run(snapshot, language, Cursor(Lines(snapshot.text), offset), cancel)
        except Exception:  # a failed precomputation only means the next request computes
            self._bump("precompute_errors")
            return None

    def _remember(self, uri: str, cursor: Cursor, result: CompletionResult) -> None:
        with self._lock:
            if not result.suggestions:
                self._shown.pop(uri, None)
                return
            suggestion = result.suggestions[0]
            covered = len(cursor.lines.text[cursor.offset:cursor.lines.offset(suggestion.range.end)])
            self._shown[uri] = _Shown(cursor.text[:cursor.offset], cursor.text[cursor.offset:],
                                      suggestion.text, covered, result.mode)

    # -----------------------------------------------------------------------------------------
    # Small helpers

    def _state_for(self, snapshot: Snapshot):
        document = self.workspace.get(snapshot.uri)
        return document.state_for(snapshot) if document is not None else None

    def _other_sources(self, uri: str) -> list[Source]:
        sources = []
        for document in self.workspace.documents():
            if document.uri == uri:
                continue
            state = document.state
            sources.append(Source(document.uri, _display_path(document), document.language,
                                  state.text, state.version, state.tree))
        return sources

    def _disabled(self, snapshot: Snapshot, language: LanguageSpec | None) -> bool:
        disabled = self.config.disabled_languages
        return snapshot.language_id in disabled or (language is not None and language.name in disabled)

    def _forget(self, uri: str) -> None:
        """Drop every piece of state kept for a closed document."""
        with self._lock:
            self._shown.pop(uri, None)
            pending = self._precomputes.pop(uri, None)
        if pending is not None:
            pending.cancel.cancel()
        self._cache.forget(uri)
        self._related.forget(uri)

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="latent-precompute")
            return self._executor

    def _bump(self, counter: str) -> None:
        with self._lock:
            self._counters[counter] += 1

    def _cancelled(self) -> CompletionResult:
        self._bump("cancelled")
        return CompletionResult(source="cancelled")


def _close(generation) -> None:
    """Stop a generation we no longer iterate: a backend may hold its lock or pinned cache rows
    until the iterator of pieces is closed."""
    generation.close()


def _after_accept(snapshot: Snapshot, suggestion: Suggestion) -> tuple[Snapshot, int]:
    """The snapshot once `suggestion` is in, and the offset just after it.

    The editor may or may not have sent the change yet: if the text is already there, the
    snapshot is used as it is.
    """
    lines = Lines(snapshot.text)
    start = lines.offset(suggestion.range.start, strict=False)
    end = lines.offset(suggestion.range.end, strict=False)
    text, inserted = snapshot.text, suggestion.text
    if text[start:start + len(inserted)] == inserted:
        return snapshot, start + len(inserted)
    return replace(snapshot, text=text[:start] + inserted + text[end:]), start + len(inserted)


def _display_path(document) -> str:
    """The relative path for a file's header; the URI's last segment when there is none."""
    if document.path:
        return document.path
    return posixpath.basename(urllib.parse.urlparse(document.uri).path) or document.uri


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000.0, 3)
