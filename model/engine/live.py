"""The live buffer: the latent rows of the sequence the engine ran last, and reuse planning.

The buffer holds (L, S, R + P) rows for its tokens — the last request's prompt and what it
generated — in place, so the next request starts from whatever prefix it shares with them
(or a longer one found in the radix tree). With shift reuse it may also take a moved suffix.
One computation holds it at a time, through a `Lease` (core.py):

    lease = Lease()
    live.hold(lease, cache)                           # the lease's now (the holder before is parked)
    plan = live.plan(lease, tokens, cache, runtime)   # known rows of a prefix in place, its match pinned
    ... prefill tokens[plan.reused:], placing plan.shift's rows (live.place) when there is one;
        each forward writes into live.window(n), then live.advance(its n tokens) ...
    live.release(lease, cache, generated)   # trimmed as plain decoding leaves it, exact rows filed, unpinned

Between two pieces of a generation another lease may take the buffer: `hold` parks the
holder — files its exact rows in the radix tree and keeps its token list in its lease. The
parked lease's next `hold` copies its rows back from the tree and returns its token list
`fed`; the rows of fed[len(live):], evicted meanwhile, are the caller's to recompute.

Shifted rows saw a slightly different past, so they are never filed in the radix tree, never
taken by exact reuse, and recomputed after a bounded number of shifts (`shift_max_steps`) or
once too much of their past changed (`shift_max_drift`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

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

    reused: int
    shift: Shift | None = None

    @property
    def shifted(self) -> int:
        return self.shift.rows.shape[1] if self.shift else 0


class Lease:
    """One computation's claim on the live buffer, from its first `hold` to its `release`: how
    many of its tokens are the prompt, the cached prefix its prompt matched (pinned until the
    release) and, while it is parked (another lease holds the buffer), the token list whose
    rows it had in place. Only LiveBuffer changes it."""

    __slots__ = ("prompt", "match", "fed")

    def __init__(self) -> None:
        self.prompt = 0
        self.match: Match | None = None
        self.fed: list[int] | None = None

    @property
    def parked(self) -> bool:
        return self.fed is not None


class LiveBuffer:
    """The rows of one sequence in place, and who they belong to.

    Invariant (this class alone changes its state; the engine calls it under its lock):
    - rows[:, :len(self)] are the rows of `tokens`, in order, each computed over the ones
      before it; rows beyond are scratch a forward writes before `advance` counts them.
    - rows [exact_rows(), len(self)) are approximate (shifted, or computed over shifted rows);
      only the exact ones are filed in the radix tree or taken by exact reuse.
    - `holder` is the lease whose sequence the rows are, None once it is released or parked.
      A parked lease keeps its token list and has its exact rows in the tree; the buffer holds
      one lease's rows at a time, and a lease that is not the holder never changes them.
    - a lease's match is pinned from its plan to its release, whether it holds the buffer or
      is parked.
    """

    def __init__(self, rows: torch.Tensor, args: ModelArgs) -> None:
        self.rows = rows                 # (L, S, R + P), allocated once
        self.args = args
        self._tokens: list[int] = []     # the ids whose rows are in place, in order
        self.prompt = 0                  # how many of them were the prompt (not generated)
        self.approx_from: int | None = None   # rows from here on were shifted or saw shifted rows
        self.shift_steps = 0             # consecutive shifts the approximate span has been through
        self.shift_drift = 0             # tokens of its past changed since it was last exact
        self.holder: Lease | None = None

    # -- reading ----------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.rows.shape[1]

    @property
    def tokens(self) -> tuple[int, ...]:
        """The ids whose rows are in place (a copy)."""
        return tuple(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def window(self, new: int) -> torch.Tensor:
        """The rows a forward of `new` tokens after those in place attends over and writes its
        own into: (L, len(self) + new, R + P), a view."""
        return self.rows[:, : len(self._tokens) + new]

    def exact_rows(self) -> int:
        """How many leading rows are exact (computed from their true past)."""
        if self.approx_from is None:
            return len(self._tokens)
        return min(self.approx_from, len(self._tokens))

    # -- a lease's life ---------------------------------------------------------------------
    def hold(self, lease: Lease, cache: LatentCache) -> list[int]:
        """Give `lease` the buffer, parking the holder. A parked lease gets its rows back — those
        still in place, else from the tree, as far as either holds them — and its token list is
        returned: the rows of fed[len(self):] (evicted meanwhile) are the caller's to compute.
        [] for a lease that was not parked."""
        if self.holder is lease:
            return []
        self._park(cache)
        self.holder = lease
        fed, lease.fed = lease.fed, None
        if fed is None:
            return []
        live = min(common_prefix(self._tokens, fed), self.exact_rows())
        match = cache.match_prefix(fed)
        known = max(live, match.length)
        if match.length > live:
            cache.gather(match, self.rows, live, known)
        self._tokens = fed[:known]
        self.prompt, self.approx_from = lease.prompt, None
        self.shift_steps = self.shift_drift = 0
        return fed

    def plan(self, lease: Lease, tokens: list[int], cache: LatentCache, runtime: RuntimeConfig) -> Plan:
        """Rows already known for a prefix of the holder's prompt `tokens` — in the buffer, else
        in the tree (that match pinned until the release) — copied into place; in shift mode
        also a moved suffix span (taken before it is overwritten)."""
        assert self.holder is lease and lease.match is None, "plan() is for the holder's one prompt"
        live = min(common_prefix(self._tokens, tokens), self.exact_rows())
        match = cache.match_prefix(tokens)
        reused = max(live, match.length)
        reused = min(reused, len(tokens) - 1)   # the last prompt token is always run: we need its logits
        shift = self._find_shift(tokens, reused, runtime) if runtime.reuse == "shift" else None
        if match.length > live:
            cache.gather(match, self.rows, live, reused)
        self._tokens = tokens[:reused]          # all exact: approximate rows start at or after `live`
        self.prompt, self.approx_from = len(tokens), None
        self.shift_steps = self.shift_drift = 0
        lease.prompt, lease.match = len(tokens), match
        cache.pin(match)
        return Plan(reused, shift)

    def advance(self, tokens: Sequence[int]) -> None:
        """Count the rows a forward just wrote after those in place (into `window`) as `tokens`'."""
        if len(self._tokens) + len(tokens) > self.capacity:
            raise ValueError(f"{len(self._tokens) + len(tokens)} rows do not fit a buffer of {self.capacity}.")
        self._tokens.extend(tokens)

    def place(self, tokens: list[int], shift: Shift) -> None:
        """Write the moved rows right after the fresh middle; from here on the buffer is approximate."""
        end = shift.dst + shift.rows.shape[1]
        self.rows[:, shift.dst : end] = shift.rows
        self._tokens.extend(tokens[shift.dst : end])
        self.approx_from = shift.dst
        self.shift_steps, self.shift_drift = shift.steps, shift.drift

    def truncate(self, length: int) -> None:
        """Keep the rows of the first `length` tokens (all there are, if fewer)."""
        del self._tokens[length:]

    def release(self, lease: Lease, cache: LatentCache, generated: int = 0) -> None:
        """End `lease`: its match unpinned; as the holder, the rows kept are those plain
        decoding feeds — the prompt and all but the last of `generated` tokens (drafts verified
        beyond them go) — and the exact ones filed in the tree. A parked lease leaves the buffer
        as it is (another's now). Safe to call twice."""
        if lease.match is not None:
            cache.unpin(lease.match)
            lease.match = None
        if self.holder is lease:
            self.truncate(self.prompt + max(generated - 1, 0))
            self._file(cache)
            self.holder = None
        lease.fed = None

    def clear(self) -> None:
        """Forget the rows in place (the radix tree is the caller's): the holder is parked
        with its token list and recomputes its rows when it goes on."""
        if self.holder is not None:
            self.holder.fed, self.holder = list(self._tokens), None
        self._tokens = []
        self.prompt, self.approx_from = 0, None
        self.shift_steps = self.shift_drift = 0

    # -- internal helpers -------------------------------------------------------------------
    def _park(self, cache: LatentCache) -> None:
        """The holder leaves the buffer: its exact rows go to the radix tree, its token list to
        its lease. The rows stay in place (the next plan may reuse them)."""
        holder, self.holder = self.holder, None
        if holder is not None:
            holder.fed = list(self._tokens)
            self._file(cache)

    def _file(self, cache: LatentCache) -> None:
        """File the exact rows in the radix tree; shifted rows never go there."""
        cache.insert(self._tokens[: self.exact_rows()], self.rows)

    def _find_shift(self, tokens: list[int], reused: int, runtime: RuntimeConfig) -> Shift | None:
        """The live prompt's longest common suffix with tokens, both starts at or after `reused`,
        as rows moved to their new positions; None when too short or too stale."""
        old = self._tokens[: self.prompt]                # generated text never counts as suffix
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
