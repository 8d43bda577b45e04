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
from dataclasses import replace

from completion import postprocess
from completion.alternatives import branches
from completion.cache import LruCache
from completion.config import CompletionConfig
from completion.context import build_context, decide
from completion.document import MAX_PARSE_CHARS, Lines, Workspace, parse
from completion.languages import LanguageSpec, language_for
from completion.postprocess import Plan
from completion.prompt import build_prompt, overhead, resolve_format, resolve_layout
from completion.recall import Recall
from completion.related import RelatedIndex, Source
from completion.types import CompletionResult, Position, Snapshot, Suggestion
from completion.windows import Cursor, TokenCounter
from model.params import SamplingParams
from model.protocol import CancelToken, EngineProtocol


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
        self._cache = LruCache(self.config.lru_size)
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
        state = self._state_for(snapshot)
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
        result = self._run(snapshot, language, cursor, cancel, state.tree if state is not None else None, count)
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
        snapshot, offset = _after_accept(document.snapshot(), suggestion)
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
             cancel: CancelToken, tree=None, count: int = 1) -> CompletionResult:
        """Context, prompt, engine, postprocess; `tree` is the snapshot's when already known."""
        config, fmt, layout = self.config, self._format, self._layout
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        if tree is None and language is not None:
            tree = parse(language, snapshot.text, self.workspace.max_parse_chars)
        mode, why = decide(language, tree, cursor, config.multiline)
        if mode == "none":
            timings["context"] = _ms(clock)
            return self._skipped(why, timings)
        current = Source(snapshot.uri, _display_path(snapshot), language, snapshot.text,
                         snapshot.version, tree)
        comment = language.comment if language else "#"
        limit = self._prompt_limit(mode)
        budget = limit - overhead(fmt, current.path, comment, self._count, self._bos, layout, self._specials)
        context = build_context(
            mode, current, cursor, self._other_sources(snapshot.uri), self._related,
            budget=budget, snippet_budget=config.snippet_tokens,
            prefix_fraction=config.prefix_fraction, count=self._count)
        timings["context"], clock = _ms(clock), time.perf_counter()

        prompt = build_prompt(fmt, context, self._count, max_tokens=limit, bos=self._bos,
                              layout=layout, specials=self._specials)
        plan = postprocess.plan_for(mode, language, tree, cursor, self._format.special_strings)
        params = self._params(mode, plan)
        key = (prompt.text, params)   # everything the engine sees
        timings["prompt"], clock = _ms(clock), time.perf_counter()

        cached = self._cache.get(snapshot.uri, key)
        if cached is not None:
            raw, stats, source = cached[0], {**cached[1], "cached": True}, "cache"
            self._bump("cache_hits")
        else:
            raw, stats = self._generate(prompt.text, params, plan, cancel)
            if cancel.cancelled or stats.get("finish_reason") == "cancelled":
                return self._cancelled()
            self._cache.put(snapshot.uri, key, (raw, stats))
            source = "model"
            self._bump("model_calls")
        timings["engine"], clock = _ms(clock), time.perf_counter()

        suggestions, why = self._postprocess(raw, stats, plan, language, tree, cursor)
        timings["postprocess"] = _ms(clock)
        if count > 1:
            clock = time.perf_counter()
            for alt_raw, alt_stats in branches(
                    self.engine.tokenizer, prompt.text, params, stats, cancel,
                    lambda ids, head: self._generate(ids, params, plan, cancel, head)):
                more, _ = self._postprocess(alt_raw, alt_stats, plan, language, tree, cursor)
                if more and all(more[0].text != s.text for s in suggestions):
                    suggestions += more
                if len(suggestions) >= count:
                    break
            timings["alternatives"] = _ms(clock)
            why = "" if suggestions else why
        return CompletionResult(suggestions, mode, source, timings, stats, reason=why)

    def _postprocess(self, raw: str, stats: dict, plan: Plan, language, tree,
                     cursor: Cursor) -> tuple[list[Suggestion], str]:
        """The suggestions, or none and why."""
        found, why = postprocess.suggestion(raw, plan, language, tree, cursor,
                                            hit_limit=stats.get("finish_reason") == "length")
        self._bump("suggestions" if found else "dropped_syntax" if why == "syntax-error" else "dropped_empty")
        return ([found] if found else []), why

    def _prompt_limit(self, mode: str) -> int:
        """Prompt tokens at most: the configured budget, within the positions the model is made
        for less the new tokens this mode may add (a small model trained on 1,024-token rows
        never sees position 2,000)."""
        context = getattr(self.engine, "context_length", None)
        if not context:
            return self.config.max_prompt_tokens
        return max(64, min(self.config.max_prompt_tokens, context - self._max_new_tokens(mode)))

    def _max_new_tokens(self, mode: str) -> int:
        return self.config.max_new_tokens_line if mode == "line" else self.config.max_new_tokens_block

    def _params(self, mode: str, plan: Plan) -> SamplingParams:
        """The configured sampling with this mode's token limit and stop rules."""
        config = self.config
        if mode == "block":
            stop = ("\n\n\n",)
        else:
            stop = ("\n\n",) if plan.next_line_allowed else ("\n",)
        end_id = self._format.end_id
        return replace(
            config.sampling,
            max_new_tokens=self._max_new_tokens(mode),
            stop=stop + plan.specials,
            stop_token_ids=(end_id,) if end_id is not None else (),
        )

    def _generate(self, prompt: str | list[int], params: SamplingParams, plan: Plan,
                  cancel: CancelToken, head: str = "") -> tuple[str, dict]:
        """The answer to `prompt` (after `head`, text the prompt already forces), streamed and
        stopped as soon as postprocessing would cut the rest."""
        generation = self.engine.generate(prompt, params, cancel=cancel)
        stopped_early = False
        for _ in generation:
            if postprocess.finished(head + generation.text, plan):
                stopped_early = True
                break
        if stopped_early:
            generation.close()   # a backend holds its lock and pinned rows until closed
        stats = generation.stats.as_dict()
        if stopped_early:
            stats.update(finish_reason="stop", stopped_early=True)
        return head + generation.text, stats

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

    def _state_for(self, snapshot: Snapshot):
        document = self.workspace.get(snapshot.uri)
        return document.state_for(snapshot) if document is not None else None

    def _other_sources(self, uri: str) -> list[Source]:
        """The other open documents snippets may come from; one too large to parse is too large
        to scan for windows on every keystroke, so it offers none."""
        sources = []
        for document in self.workspace.documents():
            if document.uri == uri or len(document.state.text) > self.workspace.max_parse_chars:
                continue
            state = document.state
            sources.append(Source(document.uri, _display_path(document), document.language,
                                  state.text, state.version, state.tree))
        return sources

    def _language_off(self, snapshot: Snapshot, language: LanguageSpec | None) -> str:
        """Why the document's language gets no completion ("" when it does)."""
        names = _names(snapshot, language)
        if names & set(self.config.disabled_languages):
            return "language-disabled"
        trained = getattr(self.engine, "languages", ()) or ()
        if trained and not names & set(trained) and not self.config.all_languages:
            return "language-untrained"
        return ""

    def _skipped(self, why: str, timings: dict | None = None) -> CompletionResult:
        self._bump("skipped")
        return CompletionResult(mode="none", source="skipped", timings_ms=timings or {}, reason=why)

    def _bump(self, counter: str) -> None:
        with self._lock:
            self._counters[counter] += 1

    def _cancelled(self) -> CompletionResult:
        self._bump("cancelled")
        return CompletionResult(source="cancelled", reason="cancelled")


def skip_reason(snapshot: Snapshot, position: Position, config: CompletionConfig,
                max_parse_chars: int = MAX_PARSE_CHARS) -> str:
    """Why `complete` would answer nothing at `position` whatever the model, or "": a disabled
    language, or a cursor where no completion goes (inside a word, code after it, a body
    already written). Needs no engine, so a one-shot client decides before loading one."""
    language = language_for(snapshot.language_id, snapshot.path or snapshot.uri)
    if _names(snapshot, language) & set(config.disabled_languages):
        return "language-disabled"
    lines = Lines(snapshot.text)
    tree = parse(language, snapshot.text, max_parse_chars) if language is not None else None
    mode, why = decide(language, tree, Cursor(lines, lines.offset(position)), config.multiline)
    return why if mode == "none" else ""


def _names(snapshot: Snapshot, language: LanguageSpec | None) -> set[str]:
    """The names a document's language goes by: the editor's id and the grammar's."""
    return {snapshot.language_id.lower(), *((language.name,) if language is not None else ())}


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
