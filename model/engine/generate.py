"""Generation over the live buffer: prefill, decode, the sampler and the text stream.

    logits = prefill(forward, live, tokens[start:end], cancel, absorbed)   # None: cancelled
    yield from decode(forward, live, tokenizer, request, logits, stats, absorbed, speculate)

`forward` is the model's forward (`Transformer.__call__`, or the engine's `Forward`, which
runs one-token steps through a compiled graph). Both write the rows they compute into the live
buffer's window in place, which then counts their tokens (`live.advance`); what the buffer
keeps when a generation ends is its own rule (`LiveBuffer.release`). Decoding may verify
prompt-lookup drafts (exact: greedy output is unchanged).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ..params import SamplingParams
from ..protocol import CancelToken, GenerationStats
from ..tokenizer import Tokenizer
from .live import LiveBuffer

PREFILL_CHUNK = 512
Absorbed = Callable[[int], bool]   # new tokens in one forward -> use the absorbed path?
Forward = Callable[..., torch.Tensor]   # (tokens (T,), cache (L, S, R + P), absorbed, all_logits) -> logits


@dataclass
class Request:
    """One generation as the engine runs it: the prompt's ids and what ends the decode."""

    tokens: list[int]
    params: SamplingParams
    max_new_tokens: int             # params.max_new_tokens, capped by the room left in the context
    stop_ids: frozenset[int]        # params.stop_token_ids and end of sequence
    cancel: CancelToken


def prefill(forward: Forward, live: LiveBuffer, tokens: list[int], cancel: CancelToken,
            absorbed: Absorbed) -> torch.Tensor | None:
    """Run `tokens` (non-empty) after those in the live buffer; last logits, None if cancelled."""
    if not tokens:
        raise ValueError("prefill needs at least one token")
    logits = None
    for lo in range(0, len(tokens), PREFILL_CHUNK):
        if cancel.cancelled:
            return None
        chunk = tokens[lo : lo + PREFILL_CHUNK]
        ids = torch.tensor(chunk, dtype=torch.long, device=live.rows.device)
        logits = forward(ids, live.window(len(chunk)), absorbed(len(chunk)))
        live.advance(chunk)
    assert logits is not None
    return logits[-1]


def decode(forward: Forward, live: LiveBuffer, tokenizer: Tokenizer, req: Request, logits: torch.Tensor,
           stats: GenerationStats, absorbed: Absorbed, speculate: int = 0) -> Iterator[str]:
    """Choose token by token from `logits` on; yield text pieces, stop strings held back.

    With `speculate` > 0 and greedy sampling, each step may also verify a draft of up to that
    many tokens found by prompt lookup (see `Drafts`) in one forward: the draft tokens that
    equal the greedy choice are taken, so the text is what plain greedy decoding writes."""
    t0 = time.perf_counter()
    sample = Sampler(req.params, tokenizer)
    out = TextStream(tokenizer, req.params.stop)
    drafts = Drafts(req.tokens, speculate) if speculate and req.params.greedy else None
    stats.extra["first_choices"] = first_choices(sample.allowed(logits))   # (before the pick moves on healing)
    chosen = [sample(logits)]                    # decided tokens not yet shown
    stats.finish_reason = "length"
    try:
        while req.max_new_tokens > 0:            # 0: the prompt is prefilled (and cached), nothing written
            token = chosen.pop(0)
            stats.generated_tokens += 1
            if token in req.stop_ids:
                stats.finish_reason = "eos" if token == tokenizer.eos_id else "stop"
                break
            piece, stopped = out.push(token)
            if piece:
                yield piece
            if stopped:
                stats.finish_reason = "stop"
                break
            if req.cancel.cancelled:
                stats.finish_reason = "cancelled"
                break
            if stats.generated_tokens == req.max_new_tokens:
                break
            if drafts is not None:
                drafts.add(token)
            if not chosen:   # a draft may take the rows left in the buffer and the tokens left to write
                room = min(live.capacity - len(live), req.max_new_tokens - stats.generated_tokens) - 1
                chosen = _step(forward, live, token, drafts, sample, stats, absorbed, room)
        if stats.finish_reason in ("length", "eos", "cancelled"):
            tail = out.flush()
            if tail:
                yield tail
    finally:  # also when the consumer stops early and closes the generation
        stats.decode_ms = (time.perf_counter() - t0) * 1e3


def first_choices(logits: torch.Tensor, k: int = 4) -> list[list]:
    """The k most likely first tokens and their log-probabilities: where alternatives branch."""
    top = logits.float().log_softmax(-1).topk(min(k, logits.shape[-1]))
    return [[int(i), round(float(lp), 4)] for lp, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            if lp != float("-inf")]                     # out of reach (suppressed, not healing) is no choice


def _step(forward: Forward, live: LiveBuffer, token: int, drafts: "Drafts | None", sample: "Sampler",
          stats: GenerationStats, absorbed: Absorbed, room: int) -> list[int]:
    """Feed `token`, and a draft of at most `room` tokens after it if one is found; the tokens
    decided next (>= 1)."""
    draft = drafts.propose()[:max(room, 0)] if drafts is not None and not sample.pending else []
    ids = torch.tensor([token, *draft], dtype=torch.long, device=live.rows.device)
    t0 = time.perf_counter()
    logits = forward(ids, live.window(len(ids)), absorbed(len(ids)), bool(draft))
    live.advance((token,))
    if not draft:
        choice = sample(logits[-1])
        if drafts is not None:
            drafts.timed_step(time.perf_counter() - t0)
        return [choice]
    picks = sample.allowed(logits).argmax(-1).tolist()   # greedy choice after token, d1, d2, …
    taken = 0
    while taken < len(draft) and picks[taken] == draft[taken]:
        taken += 1
    live.advance(draft[:taken])                   # their rows saw an exact past
    assert drafts is not None                     # a draft comes from drafts
    drafts.record(len(draft), taken, time.perf_counter() - t0)
    stats.extra["draft_tokens"] = stats.extra.get("draft_tokens", 0) + len(draft)
    stats.extra["accepted_draft_tokens"] = stats.extra.get("accepted_draft_tokens", 0) + taken
    return [*draft[:taken], picks[taken]]


class Drafts:
    """Prompt-lookup drafts: code repeats its own names and lines, so the tokens that followed
    the last earlier occurrence of the sequence's final three tokens are a cheap guess of what
    comes next. A verification costs more than a plain step when it fails, so the draft starts
    short, doubles while it is taken whole, halves after a miss, and drafting stops for the rest
    of the generation once it does not pay: fewer than a third of the drafted tokens taken, or
    fewer tokens a second through verifications than through plain steps (a compiled one-token
    step costs a fraction of an eager verification; see step.py). Steps are timed for that: one
    plain step is taken after the first two verifications if none was."""

    def __init__(self, prompt: list[int], limit: int) -> None:
        self.seq = list(prompt)
        self.limit, self.size = limit, min(limit, 2)
        self.proposed = self.taken = 0
        self.verifications, self.verified, self.verify_s = 0, 0, 0.0   # tokens decided by them, time
        self.steps, self.step_s = 0, 0.0                                 # plain one-token steps, time
        self.where: dict[tuple[int, ...], int] = {}      # trigram -> the position after its last end
        for end in range(3, len(self.seq)):
            self._index(end)

    def add(self, token: int) -> None:
        self.seq.append(token)
        self._index(len(self.seq) - 1)

    def propose(self) -> list[int]:
        if not self._pays():
            return []
        at = self.where.get(tuple(self.seq[-3:])) if len(self.seq) > 3 else None
        return self.seq[at : at + self.size] if at is not None else []

    def record(self, proposed: int, taken: int, seconds: float) -> None:
        self.proposed += proposed
        self.taken += taken
        self.verifications += 1
        self.verified += taken + 1
        self.verify_s += seconds
        self.size = min(self.limit, self.size * 2) if taken == proposed else max(1, self.size // 2)

    def timed_step(self, seconds: float) -> None:
        self.steps += 1
        self.step_s += seconds

    def _pays(self) -> bool:
        if self.proposed >= 8 and self.taken * 3 < self.proposed:
            return False                                 # too few taken on this text
        if self.verifications < 2:
            return True
        if self.steps == 0:
            return False                                 # time one plain step to compare
        return self.verified / self.verify_s >= self.steps / self.step_s

    def _index(self, end: int) -> None:
        """Index the trigram ending before position `end` (so the final one never finds itself)."""
        if end >= 3:
            self.where[tuple(self.seq[end - 3 : end])] = end


class Sampler:
    """Greedy when temperature is 0, else temperature / top-k / top-p with a seeded generator.
    Until the answer holds `params.heal`, only tokens that go on spelling it are in reach."""

    def __init__(self, params: SamplingParams, tokenizer: Tokenizer | None = None) -> None:
        self.params = params
        self.suppress = torch.tensor(params.suppress_token_ids, dtype=torch.long) if params.suppress_token_ids else None
        self.tokenizer = tokenizer
        self.pending = params.heal if tokenizer is not None else ""     # what the answer must still begin with
        self.generator = None
        if not params.greedy:
            self.generator = torch.Generator()
            self.generator.manual_seed(params.seed if params.seed is not None else torch.seed())

    def allowed(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (.., V) with the suppressed tokens, and while healing those that do not spell
        on, out of reach (a copy when there are any)."""
        if self.pending:
            assert self.tokenizer is not None
            keep = torch.tensor(self.tokenizer.healing_ids(self.pending), dtype=torch.long, device=logits.device)
            if len(keep):                  # (no token spells it: the text cannot be healed; left free)
                kept = logits.new_full(logits.shape, float("-inf"))
                logits = kept.index_copy(-1, keep, logits.index_select(-1, keep))
        if self.suppress is None:
            return logits
        return logits.index_fill(-1, self.suppress.to(logits.device), float("-inf"))

    def __call__(self, logits: torch.Tensor) -> int:
        token = self._choose(logits)
        if self.pending:
            assert self.tokenizer is not None
            text = self.tokenizer.decode([token])
            self.pending = self.pending[len(text):] if self.pending.startswith(text) else ""
        return token

    def _choose(self, logits: torch.Tensor) -> int:
        p = self.params
        logits = self.allowed(logits)
        if p.greedy:
            return int(logits.argmax())
        logits = logits.float().cpu() / p.temperature
        if p.top_k > 0:
            kth = logits.topk(min(p.top_k, logits.numel()))[0][-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = logits.softmax(-1)
        if p.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > p.top_p   # keep the smallest set reaching top_p
            sorted_p[drop] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
        return int(torch.multinomial(probs / probs.sum(), 1, generator=self.generator))


class TextStream:
    """Turns token ids into text pieces, holding back what may still become a stop string
    (matched across token boundaries, never returned) or an incomplete UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...]) -> None:
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, token: int) -> tuple[str, bool]:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            piece = text[self.emitted : cut] if cut > self.emitted else ""
            self.emitted = max(self.emitted, cut)
            return piece, True
        safe = len(text) - _held_back(text, self.stop)
        piece = text[self.emitted : safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return piece, False

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids).rstrip("\ufffd")
        piece = text[self.emitted :]
        self.emitted = len(text)
        return piece


def _held_back(text: str, stop: tuple[str, ...]) -> int:
    """Characters at the end of text that could start a stop string or finish a character."""
    hold = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    if text.endswith("\ufffd"):
        hold = max(hold, len(text) - len(text.rstrip("\ufffd")))
    return hold
