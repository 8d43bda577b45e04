"""Fill-in-the-middle: each model family's special tokens and layouts, and the one renderer.

    fmt = FORMATS["deepseek"]
    fmt.fill(prefix, suffix)            # <｜fim▁begin｜>{prefix}<｜fim▁hole｜>{suffix}<｜fim▁end｜>
    fmt.fill(prefix, suffix, "spm")     # <｜fim▁begin｜><｜fim▁hole｜>{suffix}<｜fim▁end｜>{prefix}

Families (the token strings; a tokenizer may carry SentencePiece's "▁" before CodeLlama's):

    deepseek   <｜fim▁begin｜>{prefix}<｜fim▁hole｜>{suffix}<｜fim▁end｜>    ends with <｜end▁of▁sentence｜>
    starcoder  <fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>         <|endoftext|>, <file_sep>
    qwen       <|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>   <|endoftext|>, <|file_sep|>
    codellama  <PRE> {prefix} <SUF>{suffix} <MID>                           <EOT>
    codestral  [SUFFIX]{suffix}[PREFIX]{prefix}                             </s> (suffix first, always)
    plain      {prefix}                                                     (no FIM: left to right)

Layouts: "psm" (prefix, suffix, middle: what DeepSeek-Coder was trained on) and "spm"
(suffix first, the prefix right before the middle: typing at the cursor only appends to the
prompt, so an exact prefix cache covers everything before the new characters). A model folder
declares the layouts it was trained on; a real DeepSeek checkpoint declares none and is PSM.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

LAYOUTS = ("psm", "spm")


@dataclass(frozen=True)
class FimFormat:
    """A family's FIM token strings and, once read off a tokenizer, the id of its end token."""

    name: str
    prefix: str | None          # opens the prefix (DeepSeek: fim▁begin); None: plain
    suffix: str | None          # opens the suffix (DeepSeek: fim▁hole)
    middle: str | None          # opens the middle (DeepSeek: fim▁end); Codestral has none
    end: str | None             # closes a middle (end of sentence, <|endoftext|>, <EOT>, …)
    file_sep: str | None = None
    repo_name: str | None = None
    end_id: int | None = None
    marker_ids: tuple[int, ...] = ()   # ids of the prefix, suffix, middle and file tokens: never in a middle

    def fill(self, prefix: str, suffix: str, layout: str = "psm") -> str:
        """The FIM part of a prompt; the model writes the middle after it."""
        if self.name == "plain":
            return prefix
        if self.name == "codestral":
            return f"{self.suffix}{suffix}{self.prefix}{prefix}"
        if self.name == "codellama":  # spaces as in "<PRE> {prefix} <SUF>{suffix} <MID>", unless
            assert self.prefix is not None, "every family but plain has a prefix token"
            space = "" if self.prefix.startswith("\u2581") else " "  # the tokens carry SentencePiece's ▁
            if layout == "spm":
                return f"{self.prefix}{space}{self.suffix}{suffix}{space}{self.middle}{space}{prefix}"
            return f"{self.prefix}{space}{prefix}{space}{self.suffix}{suffix}{space}{self.middle}"
        if layout == "spm":
            return f"{self.prefix}{self.suffix}{suffix}{self.middle}{prefix}"
        return f"{self.prefix}{prefix}{self.suffix}{suffix}{self.middle}"

    @property
    def special_strings(self) -> tuple[str, ...]:
        """Strings that must never appear in a suggestion (the model ran past the middle)."""
        tokens = (self.end, self.prefix, self.suffix, self.middle, self.file_sep)
        return tuple(token for token in tokens if token)

    @property
    def tokens(self) -> tuple[str, ...]:
        """Every special string of the family, the repository tokens included."""
        return tuple(t for t in (self.prefix, self.suffix, self.middle, self.end, self.file_sep,
                                 self.repo_name) if t)


FORMATS: dict[str, FimFormat] = {fmt.name: fmt for fmt in (
    FimFormat("deepseek", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<｜end▁of▁sentence｜>"),
    FimFormat("qwen", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|endoftext|>",
              file_sep="<|file_sep|>", repo_name="<|repo_name|>"),
    FimFormat("starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<|endoftext|>",
              file_sep="<file_sep>", repo_name="<reponame>"),
    FimFormat("codellama", "<PRE>", "<SUF>", "<MID>", "<EOT>"),
    FimFormat("codestral", "[PREFIX]", "[SUFFIX]", None, "</s>"),
    FimFormat("plain", None, None, None, None),
)}
DEEPSEEK = FORMATS["deepseek"]
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"   # DeepSeek-Coder's sequence tokens


def detect(token_to_id: Callable[[str], int | None]) -> FimFormat | None:
    """The first family whose prefix, suffix (and middle) tokens the vocabulary holds, with
    the strings as the vocabulary spells them and the end token's id; None: no FIM tokens."""
    for fmt in FORMATS.values():
        if fmt.prefix is None:
            continue
        for spelled in _spellings(fmt):
            main = (spelled.prefix, spelled.suffix, spelled.middle)
            if any(t is not None and token_to_id(t) is None for t in main):
                continue
            known: dict[str | None, int | None] = {t: token_to_id(t) for t in spelled.tokens}  # None: not held
            markers = (spelled.prefix, spelled.suffix, spelled.middle, spelled.file_sep, spelled.repo_name)
            return replace(spelled, end=spelled.end if known.get(spelled.end) is not None else None,
                           end_id=known.get(spelled.end),
                           marker_ids=tuple(i for t in markers if (i := known.get(t)) is not None),
                           file_sep=spelled.file_sep if known.get(spelled.file_sep) is not None else None,
                           repo_name=spelled.repo_name if known.get(spelled.repo_name) is not None else None)
    return None


def _spellings(fmt: FimFormat):
    yield fmt
    if fmt.name == "codellama":  # Llama's SentencePiece vocabulary spells them "▁<PRE>" …
        yield replace(fmt, **{k: "\u2581" + getattr(fmt, k) for k in ("prefix", "suffix", "middle", "end")})
