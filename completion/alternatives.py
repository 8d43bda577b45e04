"""Alternatives: more suggestions from the same prompt, branching on the next likely first tokens.

The greedy answer's first step already ranked the first tokens (`first_choices` in the engine's
figures). An alternative forces one of them: the prompt's token ids plus that token, decoded
greedily from there. The prompt's latent rows are in the cache, so an alternative costs one
token of prefill and its own decode. Backends that do not rank first tokens (remote servers)
give no alternatives. `distinct` keeps those whose suggestion is new, computing no more
alternatives than it needs.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

from completion.types import Suggestion
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


def distinct(first: list[Suggestion], alternatives: Iterable[list[Suggestion]], count: int) -> list[Suggestion]:
    """`first`, then the suggestion of each alternative whose text is not there yet, until there
    are `count`: the alternatives are drawn one at a time, and no more once there are enough."""
    suggestions = list(first)
    for more in alternatives:
        if more and all(more[0].text != s.text for s in suggestions):
            suggestions += more
        if len(suggestions) >= count:
            break
    return suggestions
