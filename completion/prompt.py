"""Fill-in-the-middle prompts, one layout per model family, within a token budget.

    fmt = resolve_format(config.fim_format, engine)      # configured, or read off the tokenizer
    layout = resolve_layout(config.fim_layout, engine)   # psm, or spm where the model declares it
    prompt = build_prompt(fmt, context, count, max_tokens=2048, bos=1, layout=layout)

The families' tokens and layouts are model/fim.py's (`FORMATS`, `FimFormat.fill`). With SPM the
prompt ends with the prefix, and its unfinished end (a word being typed, the space before the
cursor) is left for the model to write: token healing (`heal_split`, `SamplingParams.heal`).

Repository context: families with a file-separator token (StarCoder2, Qwen2.5-Coder) get
`<file_sep>{path}\\n{text}\\n` per related snippet and `<file_sep>{path}\\n` for the file, before
the FIM prefix token; the others (DeepSeek-Coder's repository format) get each snippet as
`{comment} {path}\\n{text}\\n\\n` and the file's `{comment} {path}\\n` header at the start of the
prefix. Prompts are in "\\n" line ends whatever the document uses.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from completion.context import Context
from completion.document import lf
from completion.related import Snippet
from completion.windows import Count
from model.fim import FORMATS, FimFormat
from model.protocol import EngineProtocol


def resolve_format(configured: str | None, engine: EngineProtocol) -> FimFormat:
    """The configured format, else the tokenizer's FIM tokens, else the engine's word, else a
    probe of the tokenizer for each family's prefix/suffix tokens, else plain."""
    tokenizer = engine.tokenizer
    if configured:
        if configured not in FORMATS:
            raise ValueError(f"Unknown FIM format {configured!r}; known: {', '.join(FORMATS)}.")
        fmt = FORMATS[configured]
        fim = getattr(tokenizer, "fim", None)
        return _with_tokens(fmt, fim) if fim is not None and fim.name == configured else fmt
    fim = getattr(tokenizer, "fim", None)
    if fim is not None and fim.name in FORMATS:
        return _with_tokens(FORMATS[fim.name], fim)
    style = getattr(engine, "fim_format", None)
    if style in FORMATS:
        return FORMATS[style]
    for fmt in FORMATS.values():
        if fmt.prefix and fmt.suffix and _single_token(tokenizer, fmt.prefix) and _single_token(tokenizer, fmt.suffix):
            return fmt
    return FORMATS["plain"]


def resolve_layout(configured: str, engine: EngineProtocol) -> str:
    """"psm" or "spm": as configured, or with "auto" SPM where the model declares it."""
    if configured != "auto":
        return configured
    return "spm" if "spm" in (getattr(engine, "fim_layouts", ()) or ()) else "psm"


def _with_tokens(fmt: FimFormat, fim: FimFormat) -> FimFormat:
    """The family's format as the tokenizer spells it (its end token kept when it has none)."""
    return replace(fim, end=fim.end or fmt.end)


def _single_token(tokenizer, text: str) -> bool:
    try:
        return len(tokenizer.encode(text)) == 1
    except Exception:  # a backend tokenizer that cannot encode offline counts as "no"
        return False


# ---------------------------------------------------------------------------------------------
# Rendering and the budget

@dataclass(frozen=True)
class Prompt:
    text: str
    tokens: int            # tokens of `text`, the BOS the engine adds included
    prefix: str            # the prefix and suffix windows actually used ("\n" line ends)
    suffix: str
    snippets: tuple[Snippet, ...]
    heal: str = ""         # the prefix's end, left off `text` for the model to write (heal_split)


# The end of a prefix that a byte-level BPE splits otherwise when more text follows: a word or a
# number being typed (with the space before it), or the last of the spaces before the cursor —
# "\n" + 8 spaces then code is tokenized "\n" + 7 spaces, " code". Measured on held-out line
# starts (the bundled run's weights), the greedy first token after a prefix ending in its
# indentation was " r", " -", "   " …; after one space less, " assert" (p 0.53-0.93), " G" (0.62).
_UNFINISHED = re.compile(r"(?: ?[A-Za-z]{1,24}| ?[0-9]{1,24}|[ \t])\Z")


def heal_split(prefix: str) -> tuple[str, str]:
    """(the prefix the prompt ends with, the text the answer must begin with): token healing
    for a prompt that ends with the prefix (SPM). Only whole characters of ASCII text move."""
    m = _UNFINISHED.search(prefix)
    if m is None or m.start() == 0:
        return prefix, ""
    return prefix[:m.start()], m.group(0)

def render(fmt: FimFormat, *, prefix: str, suffix: str, snippets: tuple[Snippet, ...] = (),
           path: str | None = None, comment: str = "#", layout: str = "psm",
           specials: tuple[str, ...] = ()) -> str:
    """The prompt text: related snippets, the file's header, then the FIM part in `layout`
    (with SPM the snippets and the header still come right before the file's prefix).

    The user's text never becomes control tokens: a special-token string in it (`specials`,
    the family's FIM tokens always) is broken by a zero-width space after its first character."""
    user = _Neutraliser(specials + fmt.tokens)
    prefix, suffix = user(prefix), user(suffix)
    if fmt.file_sep:
        files = "".join(f"{fmt.file_sep}{user(s.path)}\n{user(s.text)}\n" for s in snippets)
        current = f"{fmt.file_sep}{user(path)}\n" if path else ""
        return files + current + fmt.fill(prefix, suffix, layout)
    files = "".join(f"{s.comment} {user(s.path)}\n{user(s.text)}\n\n" for s in snippets)
    current = f"{comment} {user(path)}\n" if path else ""
    return fmt.fill(files + current + prefix, suffix, layout)


class _Neutraliser:
    """Text in "\\n" line ends with every special-token string broken (U+200B after its first
    character), so a tokenizer reads it as the plain characters it is."""

    def __init__(self, specials: tuple[str, ...]) -> None:
        self.specials = tuple(sorted({s for s in specials if s}, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        text = lf(text)
        for special in self.specials:
            if special in text:
                text = text.replace(special, special[0] + "\u200b" + special[1:])
        return text


def overhead(fmt: FimFormat, path: str | None, comment: str, count: Count, bos: int,
             layout: str = "psm", specials: tuple[str, ...] = ()) -> int:
    """Tokens of a prompt with empty windows and no snippets: what the windows cannot use."""
    return count(render(fmt, prefix="", suffix="", path=path, comment=comment, layout=layout,
                        specials=specials)) + bos


def build_prompt(fmt: FimFormat, context: Context, count: Count, *, max_tokens: int,
                 bos: int, layout: str = "psm", specials: tuple[str, ...] = (), heal: bool = False) -> Prompt:
    """Render `context`, trimming until the whole prompt fits in `max_tokens`; with `heal` and
    SPM, the prefix's unfinished end is left for the model to write (`heal_split`).

    The context's windows were sized by summing per-line counts, which can differ a little from
    the count of the joined text; here the real tokenizer has the last word. Trimming drops the
    least relevant snippet first, then the farthest line of the larger window, then characters.
    """
    prefix, suffix, snippets = lf(context.prefix), lf(context.suffix), context.snippets
    header = True
    while True:
        kept, healed = heal_split(prefix) if heal and layout == "spm" else (prefix, "")
        text = render(fmt, prefix=kept, suffix=suffix, snippets=snippets,
                      path=context.path if header else None, comment=context.comment, layout=layout,
                      specials=specials)
        tokens = count(text) + bos
        excess = tokens - max_tokens
        if excess <= 0:
            return Prompt(text, tokens, prefix, suffix, snippets, healed)
        if snippets:
            snippets = snippets[1:]
        elif prefix or suffix:
            prefix, suffix = _trim(prefix, suffix, excess, count)
        elif header and context.path:
            header = False
        else:
            raise ValueError(f"The FIM tokens alone take {tokens} tokens, over the budget of {max_tokens}.")


def _trim(prefix: str, suffix: str, excess: int, count: Count) -> tuple[str, str]:
    """Drop about `excess` tokens from the larger window, farthest from the cursor first."""
    if count(prefix) >= count(suffix):
        return _drop_leading(prefix, excess, count), suffix
    return prefix, _drop_trailing(suffix, excess, count)


def _drop_leading(text: str, excess: int, count: Count) -> str:
    lines = _lines(text)
    if len(lines) <= 1:
        return text[max(1, len(text) // 8):] if len(text) > 1 else ""
    dropped = 0
    while len(lines) > 1 and dropped < excess:
        dropped += max(count(lines.pop(0)), 1)
    return "".join(lines)


def _drop_trailing(text: str, excess: int, count: Count) -> str:
    lines = _lines(text)
    if len(lines) <= 1:
        return text[:len(text) - max(1, len(text) // 8)] if len(text) > 1 else ""
    dropped = 0
    while len(lines) > 1 and dropped < excess:
        dropped += max(count(lines.pop()), 1)
    return "".join(lines).rstrip("\n") if lines else ""


def _lines(text: str) -> list[str]:
    """The lines of a text in "\\n" line ends, each with its end (not `str.splitlines`, which
    also breaks at \\v, \\f, U+2028 …)."""
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
