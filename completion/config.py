"""What the completion pipeline is asked to do: budgets, limits, format and sampling.

Each field is an option (model/options.py): it validates itself, and the language server's
settings and the `latent` flags are derived from it. The sampling fields (temperature, top-p,
…) are `model.params.SamplingParams`'s own, carried whole in `sampling`.
"""
from __future__ import annotations

from dataclasses import dataclass

from model.fim import FORMATS, LAYOUTS
from model.options import check, option
from model.params import SamplingParams


@dataclass(frozen=True)
class CompletionConfig:
    max_prompt_tokens: int = option(2048, "the context budget: prompt tokens in all, BOS included",
                                    min=64, max=1 << 20)
    prefix_fraction: float = option(0.75, "share of the file's context windows taken before the cursor",
                                    min=0.01, max=1.0)
    snippet_tokens: int = option(512, "of the budget, tokens for definitions and snippets from other open files",
                                 min=0)
    max_new_tokens_line: int = option(48, "tokens generated at most for a single-line suggestion", min=1,
                                      max=4096)
    max_new_tokens_block: int = option(160, "tokens generated at most for a block suggestion", min=1, max=4096)
    multiline: bool = option(True, "false: never suggest more than one line")
    fim_format: str | None = option(None, "the model family's fill-in-the-middle format; none reads it off the "
                                          "tokenizer", choices=(None, *FORMATS))
    fim_layout: str = option("auto", "prompt layout: psm, spm (suffix first, so typing only appends to the "
                                     "prompt and the exact cache covers it) or auto (spm where the model declares it)",
                             choices=("auto", *LAYOUTS))
    token_healing: bool = option(True, "with spm prompts, leave the word or space just before the cursor for the "
                                       "model to write, split into tokens as its training saw such text")
    disabled_languages: tuple[str, ...] = option((), "never complete these language ids")
    all_languages: bool = option(False, "also complete languages the model does not declare it was "
                                                   "trained on (a model folder may list its languages in config.json; "
                                                   "elsewhere the answer is empty and the status says why)")
    lru_size: int = option(64, "recent answers remembered per server", min=0)
    sampling: SamplingParams = SamplingParams()   # temperature, top_p, top_k, seed; greedy by default

    def __post_init__(self) -> None:
        check(self)
