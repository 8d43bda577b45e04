"""The completion service: `complete(snapshot, position, cancel)` → suggestions with ranges.

A document whose language is disabled, or not one the model was trained on, gets nothing
(gate). Otherwise one request, in order (each stage timed into `CompletionResult.timings_ms`):

1. typing-through: the user typed the start of the suggestion shown last → the rest, at once;
   a suggestion precomputed after an accept for exactly this text → that suggestion (recall);
2. context: tree-sitter decides the mode ("none" ends here), windows and related snippets;
3. prompt: the FIM prompt in the model family's format, within the token budget;
4. engine (generation): a small LRU of recent answers, else `engine.generate` with stop
   strings derived from the mode, streamed and stopped as soon as postprocessing would cut
   the rest; when more than one suggestion is asked for, `alternatives`;
5. postprocess: cut, de-duplicate, check the syntax, work out the range; a greedy answer
   dropped there (a syntax error, a loop, an echo) is followed by up to RETRIES alternatives.

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

import dataclasses
import itertools
import threading
import time
from collections import Counter

from completion import postprocess
from completion.alternatives import branches, distinct
from completion.cache import LruCache
from completion.config import CompletionConfig
from completion.context import build_context, decide, editor_indent
from completion.document import Lines, Workspace, edit_tree, parse
from completion.gate import language_off
from completion.generation import answer, generate, prompt_limit, sampling_for
from completion.languages import LanguageSpec, language_for
from completion.postprocess import Plan
from completion.prompt import build_prompt, overhead, resolve_format, resolve_layout
from completion.recall import Recall, after_accept
from completion.related import RelatedIndex, Source, display_path, other_sources
from completion.types import CompletionResult, Position, Range, Snapshot, Suggestion
from completion.windows import Cursor, TokenCounter
from model.protocol import CancelToken, EngineProtocol

# A greedy answer dropped for one of these reasons is not the last word: the answers that begin
# with the next likely first tokens are tried (RETRIES at most; an engine that does not rank its
# first tokens has none), and the first that passes is shown. An empty answer ("nothing") stands.
RETRIED = frozenset({"syntax-error", "repetition", "echo", "suffix-repeat"})
RETRIES = 2


class CompletionService:
    """The completion pipeline over one engine, with the open documents it completes in."""

    def __init__(self, engine: EngineProtocol, config: CompletionConfig | None = None,
                 workspace: Workspace | None = None) -> None:
        """`workspace`: the open documents (with their parsed trees), owned by the caller, who
        calls `forget(uri)` when one closes; by default an empty one."""
        self.engine = engine
        self.config = config or CompletionConfig()
        self.workspace = workspace if workspace is not None else Workspace()
        self._format = resolve_format(self.config.fim_format, engine)
        self._layout = resolve_layout(self.config.fim_layout, engine)
        self._count = TokenCounter(engine.tokenizer.count)
        self._bos = 0 if engine.tokenizer.bos_id is None else 1
        self._specials = tuple(getattr(engine.tokenizer, "special_tokens", ()))
        self._related = RelatedIndex()
        self._lock = threading.Lock()
        self._recall = Recall()
        self._cache: LruCache[tuple[str, dict]] = LruCache(self.config.lru_size)   # (raw answer, figures)
        self._counters: Counter = Counter()
        self._reasons: Counter = Counter()     # why answers had no suggestion

    # -----------------------------------------------------------------------------------------
    # Public API

    def update_config(self, config: CompletionConfig) -> None:
        fmt, layout = resolve_format(config.fim_format, self.engine), resolve_layout(config.fim_layout, self.engine)
        with self._lock:
            self.config, self._format, self._layout = config, fmt, layout
        self._cache.resize(config.lru_size)
        self.clear_cache()

    def complete(self, snapshot: Snapshot, position: Position, cancel: CancelToken | None = None,
                 count: int = 1) -> CompletionResult:
        """Suggestions for `position` in `snapshot`, up to `count` distinct ones, best first
        (raises InvalidPosition outside the text). The first is ready before alternatives
        are computed; asking for more than one skips the typing-through shortcuts."""
        started = time.perf_counter()
        cancel = cancel or CancelToken()
        state = self.workspace.state_for(snapshot)
        lines = state.lines if state is not None else Lines(snapshot.text)
        cursor = Cursor(lines, lines.offset(position))
        self._bump("requests")
        if cancel.cancelled:
            return self._answer(self._cancelled())
        language = language_for(snapshot.language_id, snapshot.path or snapshot.uri)
        off = self._language_off(snapshot, language)
        if off:
            return self._answer(self._skipped(off))
        result = self._recall.type_through(snapshot.uri, cursor) if count == 1 else None
        if result is not None:
            self._bump("typing_through" if result.source == "typing-through" else "cache_hits")
        elif count == 1 and (result := self._recall.take(snapshot.uri, cursor)) is not None:
            self._bump("precompute_hits")
        if result is not None:
            result.timings_ms.setdefault("context", _ms(started))  # answered without the model
            return self._answer(result)
        clock = time.perf_counter()
        tree = state.tree if state is not None else None   # parsed here when this version is first read
        result = self._run(snapshot, language, cursor, cancel, tree, count, parse_ms=_ms(clock))
        self._recall.remember(snapshot.uri, cursor, result)
        return self._answer(result)

    def _answer(self, result: CompletionResult) -> CompletionResult:
        """Count an answer without a suggestion under its reason (once per request: not per
        alternative tried, nor for precomputation)."""
        if not result.suggestions and result.reason:
            with self._lock:
                self._reasons[result.reason] += 1
        return result

    def precompute(self, uri: str, suggestion: Suggestion, cancel: CancelToken | None = None) -> None:
        """The user accepted `suggestion` in `uri`: compute the next suggestion now (on the
        caller's thread — a server runs this as a job on its one worker), so the request that
        follows at the end of the accepted text is answered at once."""
        self._bump("accepted")
        document = self.workspace.get(uri)
        if document is None:
            return
        snapshot, offset = after_accept(document.snapshot(), suggestion)
        self._recall.forget(uri)
        result = self._precompute(snapshot, offset, cancel or CancelToken())
        if result is None or result.source in ("cancelled", "skipped") or not result.suggestions:
            return
        self._recall.store(uri, snapshot.text[:offset], snapshot.text[offset:], result)

    def clear_cache(self) -> None:
        self._cache.clear()
        self._recall.clear()
        self._related.clear()

    def stats(self) -> dict:
        with self._lock:
            return {
                **self._counters,
                "fim_format": self._format.name,
                "fim_layout": self._layout,
                "documents": len(self.workspace),
                "cache_entries": len(self._cache),
                "typing_through_documents": len(self._recall),
                "reasons": dict(self._reasons),
                "tokenized_chars": self._count.chars,   # the work of sizing windows and prompts
            }

    def forget(self, uri: str) -> None:
        """A document closed: drop every piece of state kept for it."""
        self._recall.forget(uri)
        self._cache.forget(uri)
        self._related.forget(uri)

    # -----------------------------------------------------------------------------------------
    # One completion through the pipeline

    def _run(self, snapshot: Snapshot, language: LanguageSpec | None, cursor: Cursor,
             cancel: CancelToken, tree=None, count: int = 1, parse_ms: float = 0.0) -> CompletionResult:
        """Context, prompt, engine, postprocess; `tree` is the snapshot's when already known
        (parsing it took `parse_ms`)."""
        config, fmt, layout = self.config, self._format, self._layout
        timings: dict[str, float] = {"parse": parse_ms}
        clock = time.perf_counter()
        if tree is None and language is not None:
            tree = parse(language, snapshot.text, self.workspace.max_parse_chars)
            timings["parse"] += _ms(clock)
            clock = time.perf_counter()
        missing = editor_indent(language, tree, cursor)
        if missing:
            return self._indented(snapshot, language, tree, cursor, missing, cancel, count, timings["parse"])
        tokenize_s, query_s = self._count.seconds, self._related.query_seconds
        mode, why = decide(language, tree, cursor, config.multiline)
        if mode == "none":
            timings["context"] = _ms(clock)
            return self._skipped(why, timings)
        current = Source(snapshot.uri, display_path(snapshot), language, snapshot.text,
                         snapshot.version, tree)
        comment = language.comment if language else "#"
        limit = prompt_limit(config, self.engine, mode)
        budget = limit - overhead(fmt, current.path, comment, self._count, self._bos, layout, self._specials)
        context = build_context(
            mode, current, cursor, other_sources(self.workspace, snapshot.uri), self._related,
            budget=budget, snippet_budget=config.snippet_tokens,
            prefix_fraction=config.prefix_fraction, count=self._count)
        timings["context"], clock = _ms(clock), time.perf_counter()

        prompt = build_prompt(fmt, context, self._count, max_tokens=limit, bos=self._bos,
                              layout=layout, specials=self._specials, heal=config.token_healing)
        plan = postprocess.plan_for(mode, language, tree, cursor, self._format.special_strings, config.multiline)
        params = sampling_for(config, fmt, mode, plan, prompt.heal)
        timings["prompt"], clock = _ms(clock), time.perf_counter()
        parts = {"tokenize": (self._count.seconds - tokenize_s) * 1e3,
                 "queries": (self._related.query_seconds - query_s) * 1e3}

        answered = answer(self.engine, self._cache, snapshot.uri, prompt.text, params, plan, cancel)
        if answered is None:
            return self._cancelled()
        raw, stats, source = answered
        self._bump("cache_hits" if source == "cache" else "model_calls")
        timings["engine"], clock = _ms(clock), time.perf_counter()

        suggestions, why = self._postprocess(raw, stats, plan, language, tree, cursor)
        timings["postprocess"] = _ms(clock)
        retry = not suggestions and why in RETRIED and count == 1
        if count > 1 or retry:
            clock = time.perf_counter()
            answers = branches(self.engine.tokenizer, prompt.text, params, stats, cancel,
                               lambda ids, head: generate(self.engine, ids, params, plan, cancel, head))
            if retry:                      # the greedy answer was dropped: the next likely first tokens
                answers = itertools.islice(answers, RETRIES)
                self._bump("retries")
            found = (self._postprocess(text, figures, plan, language, tree, cursor)[0] for text, figures in answers)
            suggestions = distinct(suggestions, found, count)
            timings["alternatives"] = _ms(clock)
            why = "" if suggestions else why
        return CompletionResult(suggestions, mode, source, timings, stats, reason=why, parts_ms=parts)

    def _indented(self, snapshot: Snapshot, language: LanguageSpec | None, tree, cursor: Cursor, missing: str,
                  cancel: CancelToken, count: int, parse_ms: float) -> CompletionResult:
        """Complete as if the indentation an editor would have put there (`missing`) were typed
        (context.editor_indent), and show it as the start of each suggestion: an insertion at
        the cursor, which ends its line (nothing follows it to replace). The indented text's
        tree is the current one edited and parsed again incrementally, not from scratch."""
        offset = cursor.offset
        text = snapshot.text[:offset] + missing + snapshot.text[offset:]
        indented = Cursor(cursor.lines.edited(text, offset, offset, len(missing)), offset + len(missing))
        clock = time.perf_counter()
        if tree is not None and language is not None:
            tree = tree.copy()
            edit_tree(tree, snapshot.text, offset, offset, missing)
            tree = parse(language, text, self.workspace.max_parse_chars, edited=tree)
        result = self._run(dataclasses.replace(snapshot, text=text), language, indented, cancel, tree, count,
                           parse_ms + _ms(clock))
        at = cursor.lines.position(offset)
        return dataclasses.replace(result, suggestions=[Suggestion(missing + s.text, Range(at, at))
                                                        for s in result.suggestions])

    def _postprocess(self, raw: str, stats: dict, plan: Plan, language, tree,
                     cursor: Cursor) -> tuple[list[Suggestion], str]:
        """The suggestions, or none and why."""
        found, why = postprocess.suggestion(raw, plan, language, tree, cursor,
                                            hit_limit=stats.get("finish_reason") == "length")
        self._bump("suggestions" if found else "dropped_syntax" if why == "syntax-error" else "dropped_empty")
        return ([found] if found else []), why

    def _precompute(self, snapshot: Snapshot, offset: int, cancel: CancelToken) -> CompletionResult | None:
        try:
            self._bump("precomputes")
            language = language_for(snapshot.language_id, snapshot.path or snapshot.uri)
            if self._language_off(snapshot, language):
                return None
            return self._run(snapshot, language, Cursor(Lines(snapshot.text), offset), cancel)
        except Exception:  # a failed precomputation only means the next request computes
            self._bump("precompute_errors")
            return None

    # -----------------------------------------------------------------------------------------
    # Small helpers

    def _language_off(self, snapshot: Snapshot, language: LanguageSpec | None) -> str:
        """Why the document's language gets no completion ("" when it does)."""
        return language_off(snapshot, language, self.config, getattr(self.engine, "languages", ()) or ())

    def _skipped(self, why: str, timings: dict | None = None) -> CompletionResult:
        self._bump("skipped")
        return CompletionResult(mode="none", source="skipped", timings_ms=timings or {}, reason=why)

    def _bump(self, counter: str) -> None:
        with self._lock:
            self._counters[counter] += 1

    def _cancelled(self) -> CompletionResult:
        self._bump("cancelled")
        return CompletionResult(source="cancelled", reason="cancelled")


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000.0, 3)
