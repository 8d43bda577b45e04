"""A checkpoint's tokenizer (tokenizer.json + tokenizer_config.json) and its FIM tokens.

We read the files with the `tokenizers` library directly: encoding never applies the
post-processor (the engine adds BOS itself when the configuration says so), and special-token
strings in the text map to their single ids. The FIM format is found from the vocabulary by
the tokens' strings (model/fim.py), DeepSeek-Coder's first.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .fim import FimFormat, detect
from .token_reuse import Reuse

RELEASE_CHARS = 16384   # texts longer than this are encoded with the interpreter released


class TokenizerError(Exception):
    """The tokenizer files are missing or unusable; the message is one sentence."""


class Tokenizer:
    def __init__(self, backend, bos: str | None, eos: str | None, add_bos: bool) -> None:
        self._tok = backend
        self.bos_id = backend.token_to_id(bos) if bos else None
        self.eos_id = backend.token_to_id(eos) if eos else None
        self.add_bos = add_bos and self.bos_id is not None
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self.fim = detect(backend.token_to_id)
        self.special_tokens = tuple(t.content for t in backend.get_added_tokens_decoder().values())
        # no token's text is longer (a byte-level vocabulary spells each byte as one character)
        self.longest_token_chars = max(map(len, backend.get_vocab(with_added_tokens=True)), default=1)
        self.reuse = Reuse(backend, self._whole)   # a text typed into is encoded from near the change
        self._texts: dict[str, list[tuple[int, str]]] | None = None   # healing_ids': tokens by first character
        self._healing: dict[str, list[int]] = {}

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "Tokenizer":
        from tokenizers import Tokenizer as Backend

        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"Model folder {model_dir} has no tokenizer.json (Latent needs the fast-tokenizer file).")
        try:
            backend = Backend.from_file(str(path))
        except Exception as e:  # the library raises plain Exception on bad JSON
            raise TokenizerError(f"{path} cannot be read: {str(e).splitlines()[0][:160]}.") from None
        config = _read_json(model_dir / "tokenizer_config.json")
        bos = _token_string(config.get("bos_token"))
        eos = _token_string(config.get("eos_token"))
        add_bos = bool(config.get("add_bos_token", bos is not None))
        return cls(backend, bos, eos, add_bos)

    # -- the protocol -----------------------------------------------------------------------
    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        ids = self._ids(text)
        if add_bos and self.bos_id is not None:
            return [self.bos_id, *ids]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def count(self, text: str) -> int:
        return len(self._ids(text))

    def _ids(self, text: str) -> list[int]:
        return self.reuse.encode(_encodable(text))

    def _whole(self, text: str) -> list[int]:
        """The library's `encode` holds the interpreter lock throughout (a million characters:
        about a second in which no other thread of the process runs); `encode_batch` releases
        it and gives the same ids, for a little more overhead on short texts."""
        if len(text) > RELEASE_CHARS:
            return self._tok.encode_batch([text], add_special_tokens=False)[0].ids
        return self._tok.encode(text, add_special_tokens=False).ids

    def healing_ids(self, pending: str) -> list[int]:
        """Ids of the tokens an answer that must begin with `pending` may take next: those whose
        text is a beginning of it, or begins with all of it (token healing; kept per text)."""
        cached = self._healing.get(pending)
        if cached is None:
            if self._texts is None:
                texts: dict[str, list[tuple[int, str]]] = {}
                for i in range(self.vocab_size):
                    text = self.decode([i])
                    if text and "\ufffd" not in text and text not in self.special_tokens:
                        texts.setdefault(text[0], []).append((i, text))
                self._texts = texts
            cached = [i for i, text in self._texts.get(pending[:1], ())
                      if pending.startswith(text) or text.startswith(pending)]
            if len(self._healing) < 64:
                self._healing[pending] = cached
        return cached

    def require_fim(self) -> FimFormat:
        if self.fim is None:
            raise TokenizerError(
                "This model's tokenizer has no fill-in-the-middle tokens (DeepSeek-Coder, StarCoder, "
                "Qwen2.5-Coder, CodeLlama or Codestral style), so it cannot complete code in the middle of a file."
            )
        return self.fim


def _encodable(text: str) -> str:
    """Lone UTF-16 surrogates (from an editor's broken buffer) cannot be tokenized: each
    becomes U+FFFD, one character for one, so offsets are kept."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}).") from None


def _token_string(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value
