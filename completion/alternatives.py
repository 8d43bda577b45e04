"""Alternatives: more suggestions from the same prompt, branching on the next likely first tokens.

The greedy answer's first step already ranked the first tokens (`first_choices` in the engine's
figures). An alternative forces one of them: the prompt's token ids plus that token, decoded
greedily from there. The prompt's latent rows are in the cache, so an alternative costs one
token of prefill and its own decode. Backends that do not rank first tokens (remote servers)
give no alternatives.
"""
from __future__ import annotations

from typing import Callable, Iterator

from model.params import SamplingParams
from model.protocol import CancelToken, TokenizerProtocol

Generate = Callable[[list[int], str], "tuple[str, dict]"]   # (prompt ids, forced head) -> (text, figures)


def branches(tokenizer: TokenizerProtocol, prompt: str, params: SamplingParams, stats: dict,
             cancel: CancelToken, generate: Generate) -> Iterator[tuple[str, dict]]:
    """(raw text, figures) of each alternative, best-ranked first: `generate` runs the prompt's
    ids plus one forced first token, whose text heads the answer."""
    choices = stats.get("extra", {}).get("first_choices") or []
    if len(choices) < 2:
        return
    ids = tokenizer.encode(prompt, add_bos=bool(getattr(tokenizer, "add_bos", False)))
    for token, _ in choices[1:]:
        if cancel.cancelled:
            return
        if token in params.stop_token_ids or token == tokenizer.eos_id:
            continue
        yield generate([*ids, token], tokenizer.decode([token]))
