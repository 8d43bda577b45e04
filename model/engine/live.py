"""The live buffer: the latent rows of the sequence the engine ran last, and reuse planning.

The buffer holds (L, S, R + P) rows for `tokens` — the last request's prompt and what it
generated — in place, so the next request starts from whatever prefix it shares with them
(or a longer one found in the radix tree). With shift reuse it may also take a moved suffix:

    plan = live.plan(tokens, cache, shift=runtime.reuse == "shift", runtime=runtime)
    ... prefill tokens[plan.reused:], placing plan.shift's rows when there is one ...
    live.file_rows(cache)          # the exact rows go to the radix tree
    live.restore(tokens, cache, prompt)   # a paused generation's rows back in place (core.py)

Shifted rows saw a slightly different past, so they are never filed in the radix tree, never
taken by exact reuse, and recomputed after a bounded number of shifts (`shift_max_steps`) or
once too much of their past changed (`shift_max_drift`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ModelArgs
from ..params import RuntimeConfig
from ..rope import shift_rows
from .radix import LatentCache, Match, common_prefix


@dataclass
class Shift:
    """A moved span: rows (L, n, R + P), already re-rotated, for positions [dst, dst + n)."""

    dst: int
    rows: torch.Tensor
    steps: int          # consecutive shifts of this span, this one included
    drift: int          # tokens of its past changed since it was exact


@dataclass
class Plan:
    """How a prompt's rows are obtained: [0, reused) exact from the live buffer or the tree,
    then prefilled — up to shift.dst, shifted rows, and the last token fresh when shift is set."""

    match: Match
    reused: int
    shift: Shift | None = None

    @property
    def shifted(self) -> int:
        return self.shift.rows.shape[1] if self.shift else 0


class LiveBuffer:
    def __init__(self, rows: torch.Tensor, args: ModelArgs) -> None:
        self.rows = rows                 # (L, S, R + P), allocated once
        self.args = args
        self.tokens: list[int] = []      # the ids whose rows are in place, in order
        self.prompt = 0                  # how many of `tokens` were the prompt (not generated)
        self.approx_from: int | None = None   # rows from here on were shifted or saw shifted rows
        self.shift_steps = 0             # consecutive shifts the approximate span has been through
        self.shift_drift = 0             # tokens of its past changed since it was last exact

    @property
    def capacity(self) -> int:
        return self.rows.shape[1]

    def clear(self) -> None:
        self.tokens = []
        self.prompt, self.approx_from = 0, None
        self.shift_steps = self.shift_drift = 0

    def exact_rows(self) -> int:
        """How many leading rows are exact (computed from their true past)."""
        if self.approx_from is None:
            return len(self.tokens)
        return min(self.approx_from, len(self.tokens))

    def plan(self, tokens: list[int], cache: LatentCache, runtime: RuntimeConfig) -> Plan:
        """Rows already known for a prefix of tokens — in the buffer, else in the tree — copied
        into place; in shift mode also a moved suffix span (taken before it is overwritten)."""
        live = min(common_prefix(self.tokens, tokens), self.exact_rows())
        match = cache.match_prefix(tokens)
        reused = max(live, match.length)
        reused = min(reused, len(tokens) - 1)   # the last prompt token is always run: we need its logits
        shift = self._find_shift(tokens, reused, runtime) if runtime.reuse == "shift" else None
        if match.length > live:
            cache.gather(match, self.rows, live, reused)
        self.tokens = tokens[:reused]           # all exact: approximate rows start at or after `live`
        self.prompt, self.approx_from = len(tokens), None
        self.shift_steps = self.shift_drift = 0
        return Plan(match, reused, shift)

    def restore(self, tokens: list[int], cache: LatentCache, prompt: int) -> int:
        """Put back the rows of a paused sequence (`prompt` of its tokens the prompt) — those
        still in place, else from the tree — as far as either holds them; returns how many
        (the rest is the caller's to prefill)."""
        live = min(common_prefix(self.tokens, tokens), self.exact_rows())
        match = cache.match_prefix(tokens)
        known = max(live, match.length)
        if match.length > live:
            cache.gather(match, self.rows, live, known)
        self.tokens = tokens[:known]
        self.prompt, self.approx_from = prompt, None
        self.shift_steps = self.shift_drift = 0
        return known

    def place(self, tokens: list[int], shift: Shift) -> None:
        """Write the moved rows right after the fresh middle; from here on the buffer is approximate."""
        end = shift.dst + shift.rows.shape[1]
        self.rows[:, shift.dst : end] = shift.rows
        self.tokens.extend(tokens[shift.dst : end])
        self.approx_from = shift.dst
        self.shift_steps, self.shift_drift = shift.steps, shift.drift

    def file_rows(self, cache: LatentCache) -> None:
        """File the exact rows in the radix tree; shifted rows never go there."""
        cache.insert(self.tokens[: self.exact_rows()], self.rows)

    def _find_shift(self, tokens: list[int], reused: int, runtime: RuntimeConfig) -> Shift | None:
        """The live prompt's longest common suffix with tokens, both starts at or after `reused`,
        as rows moved to their new positions; None when too short or too stale."""
        old = self.tokens[: self.prompt]                 # generated text never counts as suffix
        span = _common_suffix(old, tokens, reused)
        rows = span - 1                                  # the last prompt token is always run
        if rows < max(1, runtime.shift_min_tokens):
            return None
        src, dst = len(old) - span, len(tokens) - span
        carried = src + rows > self.exact_rows()         # the span holds rows shifted before
        steps = 1 + (self.shift_steps if carried else 0)
        drift = max(src, dst) - reused + (self.shift_drift if carried else 0)
        if steps > runtime.shift_max_steps or drift > runtime.shift_max_drift:
            return None                                  # stale: recompute the span exactly
        moved = shift_rows(self.rows[:, src : src + rows], dst - src, self.args, start=src)
        return Shift(dst, moved, steps, drift)


def _common_suffix(a: list[int], b: list[int], floor: int) -> int:
    """Length of the longest common suffix of a and b that starts at or after `floor` in both."""
    n = min(len(a), len(b)) - floor
    i = 0
    while i < n and a[-1 - i] == b[-1 - i]:
        i += 1
    return max(i, 0)
