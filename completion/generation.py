"""The engine's part of one request: its limits, its stop rules and its streamed answer.

    limit = prompt_limit(config, engine, mode)               # prompt tokens at most
    params = sampling_for(config, fmt, mode, plan)           # new tokens, stops, sampling
    raw, figures, source = answer(engine, answers, uri, prompt, params, plan, cancel)

A mode's new tokens are `max_new_tokens_line` or `max_new_tokens_block`; a line stops at its
line break (or the one after, where the next line may be offered; or at the line that closes a
bracket it opened), a block at two blank lines, and both at the family's special tokens. The
answer is a recent one when the engine would see exactly the same prompt and parameters again
(cache.py), else streamed from the engine and stopped as soon as postprocessing would cut the
rest, so it decodes no token thrown away.
"""
from __future__ import annotations

from dataclasses import replace

from completion import postprocess
from completion.cache import LruCache
from completion.config import CompletionConfig
from completion.postprocess import Plan
from model.fim import FimFormat
from model.params import SamplingParams
from model.protocol import CancelToken, EngineProtocol


def max_new_tokens(config: CompletionConfig, mode: str) -> int:
    return config.max_new_tokens_line if mode == "line" else config.max_new_tokens_block


def prompt_limit(config: CompletionConfig, engine: EngineProtocol, mode: str) -> int:
    """Prompt tokens at most: the configured budget, within the positions the model is made
    for less the new tokens this mode may add (a small model trained on 1,024-token rows
    never sees position 2,000)."""
    context = getattr(engine, "context_length", None)
    if not context:
        return config.max_prompt_tokens
    return max(64, min(config.max_prompt_tokens, context - max_new_tokens(config, mode)))


def sampling_for(config: CompletionConfig, fmt: FimFormat, mode: str, plan: Plan, heal: str = "") -> SamplingParams:
    """The configured sampling with this mode's token limit and stop rules, healing `heal`."""
    # a line ends at its line break, or runs on to close a bracket it opened: postprocess.finished
    # stops the stream there; a blank line ends it in any case
    stop = ("\n\n\n",) if mode == "block" else ("\n\n",)
    return replace(
        config.sampling,
        max_new_tokens=max_new_tokens(config, mode),
        stop=stop + plan.specials,
        stop_token_ids=(fmt.end_id,) if fmt.end_id is not None else (),
        suppress_token_ids=fmt.marker_ids,   # a middle never holds a marker (a model that mixes up
                                             # the layouts writes <fim_hole> after an SPM prefix)
        heal=heal,
    )


def answer(engine: EngineProtocol, answers: LruCache[tuple[str, dict]], uri: str, prompt: str,
           params: SamplingParams, plan: Plan, cancel: CancelToken) -> tuple[str, dict, str] | None:
    """The raw answer to `prompt` in document `uri`, its figures and where it comes from ("cache":
    `answers`, which keeps the engine's; "model"), or None when the request was cancelled."""
    key = (prompt, params)   # everything the engine sees
    cached = answers.get(uri, key)
    if cached is not None:
        return cached[0], {**cached[1], "cached": True}, "cache"
    raw, stats = generate(engine, prompt, params, plan, cancel)
    if cancel.cancelled or stats.get("finish_reason") == "cancelled":
        return None
    answers.put(uri, key, (raw, stats))
    return raw, stats, "model"


def generate(engine: EngineProtocol, prompt: str | list[int], params: SamplingParams, plan: Plan,
             cancel: CancelToken, head: str = "") -> tuple[str, dict]:
    """The answer to `prompt` (after `head`, text the prompt already forces) and the engine's
    figures, streamed and stopped as soon as postprocessing would cut the rest. The answer
    begins after `params.heal`, which the engine writes first (the document already has it)."""
    heal = params.heal
    if head:   # a forced first token spells part of what heals, or all of it and more
        params = replace(params, heal=heal[len(head):] if heal.startswith(head) else "")
    stopped_early = False
    with engine.generate(prompt, params, cancel=cancel) as generation:   # closed on any exit: a backend
        for _ in generation:                                             # holds its lock and pinned rows
            if postprocess.finished(healed(head + generation.text, heal), plan):
                stopped_early = True
                break
    stats = generation.stats.as_dict()
    if stopped_early:
        stats.update(finish_reason="stop", stopped_early=True)
    return healed(head + generation.text, heal), stats


def healed(text: str, heal: str) -> str:
    """An answer without the healed text it begins with ("" while it has not written all of it)."""
    if text.startswith(heal):
        return text[len(heal):]
    return "" if heal.startswith(text) else text
