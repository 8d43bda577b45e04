"""The engine protocol: what everything above `model/` may rely on.

Three backends implement it — the in-process `Engine` (model/engine/), the msgpack daemon
client (model/serve/client.py) and the OpenAI-compatible remote client (model/serve/remote.py)
— so the completion pipeline and the language server never know which one they talk to.

    with engine.generate(prompt_text, SamplingParams(max_new_tokens=64, stop=("\\n",)), cancel=token) as gen:
        for piece in gen:      # text pieces as they are decoded
            ...
    gen.text, gen.stats        # the whole text (stop string excluded) and the request's figures

A generation holds what its backend needs until it ends or is closed (the engine's pinned
cache rows, a daemon client's connection), so a consumer that may stop before the end — by
choice or by an exception — closes it in a `finally`, or uses it as a context manager as
above; `run()` does so itself.

A prompt is text in which the model family's special tokens appear as their strings (the
tokenizer maps them to single ids), or a list of token ids. The beginning-of-sequence token is
added by the engine when the tokenizer's configuration says so; prompts never carry it.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence, runtime_checkable

from .fim import FimFormat
from .params import SamplingParams


class ModelLoadError(Exception):
    """An engine could not be loaded or reached; str(error) is one readable sentence."""


class CancelToken:
    """A flag shared between the party that may cancel and the one doing the work.

    The engine checks it before prefill and between decode steps; a cancelled generation
    ends early with `stats.finish_reason == "cancelled"`.
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@runtime_checkable
class TokenizerProtocol(Protocol):
    @property
    def bos_id(self) -> int | None: ...

    @property
    def eos_id(self) -> int | None: ...

    @property
    def fim(self) -> FimFormat | None: ...

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """Strings that encode() maps to single control tokens."""
        ...

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Token ids of `text`; special-token strings map to their single ids."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, special tokens included as their strings."""
        ...

    def count(self, text: str) -> int:
        """len(encode(text)) without the beginning-of-sequence token."""
        ...


@dataclass
class GenerationStats:
    prompt_tokens: int = 0       # tokens in the prompt, BOS included
    reused_tokens: int = 0       # of those, taken from the latent cache
    prefilled_tokens: int = 0    # of those, computed by this request
    generated_tokens: int = 0    # tokens decoded (the stop token included)
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    finish_reason: str = ""      # "stop" | "eos" | "length" | "cancelled" | "error"
    extra: dict = field(default_factory=dict)  # backend-specific figures

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


class Generation:
    """An iterator of text pieces that keeps the whole text and the stats once finished.

    Backends subclass it or pass a generator of pieces; `stats` is filled in by the backend
    and final when iteration ends. `run()` drains the iterator and returns the text; `with`
    closes it on the way out, however the block ends.
    """

    def __init__(self, pieces: Iterator[str], stats: GenerationStats | None = None) -> None:
        self._pieces = pieces
        self.stats = stats if stats is not None else GenerationStats()
        self._parts: list[str] = []

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> str:
        piece = next(self._pieces)
        self._parts.append(piece)
        return piece

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def run(self) -> str:
        try:
            for _ in self:
                pass
        finally:
            self.close()
        return self.text

    def __enter__(self) -> "Generation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop early: the backend releases what it holds (locks, sockets) right away."""
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()


@runtime_checkable
class EngineProtocol(Protocol):
    @property
    def tokenizer(self) -> TokenizerProtocol: ...

    @property
    def model_name(self) -> str: ...

    @property
    def fim_format(self) -> str | None:
        """The FIM family of the model's tokenizer ("deepseek", "starcoder", …) or None."""
        ...

    @property
    def fim_layouts(self) -> tuple[str, ...]:
        """The FIM layouts the model declares it was trained on (model.fim.LAYOUTS); () for a
        model that declares none, which is taken as PSM only."""
        ...

    @property
    def languages(self) -> tuple[str, ...]:
        """The language ids the model declares it was trained on; () for any language."""
        ...

    @property
    def context_length(self) -> int | None:
        """The positions the model is made for (config.json's `max_position_embeddings`: for
        Latent's own models, the length they were trained at); None when unknown. Prompt and
        new tokens are kept within it."""
        ...

    def generate(self, prompt: str | Sequence[int], params: SamplingParams = SamplingParams(), *,
                 cancel: CancelToken | None = None) -> Generation:
        """Start a generation; work happens as the returned Generation is iterated."""
        ...

    def clear_cache(self) -> None:
        """Forget every cached latent row (what `latent.clearCache` asks for)."""
        ...

    def stats(self) -> dict:
        """Engine-wide figures: model, parameters, cache bytes / tokens / hit rate, …"""
        ...
