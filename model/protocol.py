"""The engine protocol: what everything above `model/` may rely on.

Three backends implement it — the in-process `Engine` (model/engine.py), the msgpack daemon
client (model/rpc.py) and the OpenAI-compatible remote client (model/remote.py) — so the
completion pipeline and the language server never know which one they talk to.

    gen = engine.generate(prompt_text, max_new_tokens=64, stop=["\\n"], cancel=token)
    for piece in gen:          # text pieces as they are decoded
        ...
    gen.text, gen.stats        # the whole text (stop string excluded) and the request's figures

A prompt is text in which the model family's special tokens appear as their strings (the
tokenizer maps them to single ids), or a list of token ids. The beginning-of-sequence token is
added by the engine when the tokenizer's configuration says so; prompts never carry it.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence, runtime_checkable


class ModelLoadError(Exception):
    """An engine could not be loaded or reached; str(error) is one readable sentence."""


class Cancelled(Exception):
    """Raised inside a backend when its request's CancelToken fires; never escapes generate()."""


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

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()


@dataclass(frozen=True)
class FimTokens:
    """Special-token strings and ids of a fill-in-the-middle format.

    `style` names the family's layout: "deepseek" (<｜fim▁begin｜>prefix<｜fim▁hole｜>suffix
    <｜fim▁end｜>), "starcoder", "qwen", "codellama" or "codestral".
    `prefix` / `suffix` / `middle` are the strings that open the prefix, the suffix and the
    middle in that family's vocabulary (for DeepSeek: fim▁begin, fim▁hole, fim▁end).
    `end` is the token that closes a middle (end of sentence, <|endoftext|>, <EOT>…).
    `file_sep` / `repo_name` are the repository-level tokens where the family has them.
    """

    style: str
    prefix: str
    suffix: str
    middle: str | None
    end: str | None
    prefix_id: int
    suffix_id: int
    middle_id: int | None
    end_id: int | None
    file_sep: str | None = None
    repo_name: str | None = None


@runtime_checkable
class TokenizerProtocol(Protocol):
    bos_id: int | None
    eos_id: int | None
    fim: FimTokens | None

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Token ids of `text`; special-token strings map to their single ids."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, special tokens included as their strings."""

    def count(self, text: str) -> int:
        """len(encode(text)) without the beginning-of-sequence token."""


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
    and final when iteration ends. `run()` drains the iterator and returns the text.
    """

    def __init__(self, pieces: Iterator[str], stats: GenerationStats | None = None) -> None:
        self._pieces = pieces
        self.stats = stats if stats is not None else GenerationStats()
        self._parts: list[str] = []
        self.done = False

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> str:
        try:
            piece = next(self._pieces)
        except StopIteration:
            self.done = True
            raise
        self._parts.append(piece)
        return piece

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def run(self) -> str:
        for _ in self:
            pass
        return self.text

    def close(self) -> None:
        """Stop early: the backend releases what it holds (locks, sockets) right away."""
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()
        self.done = True


@runtime_checkable
class EngineProtocol(Protocol):
    tokenizer: TokenizerProtocol
    model_name: str

    @property
    def fim_format(self) -> str | None:
        """The FIM style of the model's tokenizer ("deepseek", "starcoder", …) or None."""

    def generate(
        self,
        prompt: str | Sequence[int],
        *,
        max_new_tokens: int = 64,
        stop: Sequence[str] = (),
        stop_token_ids: Sequence[int] = (),
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        cancel: CancelToken | None = None,
    ) -> Generation:
        """Start a generation; work happens as the returned Generation is iterated."""

    def stats(self) -> dict:
        """Engine-wide figures: model, parameters, cache bytes / tokens / hit rate, …"""
