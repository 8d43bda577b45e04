"""A prompt typed into is encoded from near the change (model/token_reuse.py), and its ids are
always those of a whole encode: on every keystroke of typing traces through held-out code, in
both FIM layouts, and on random edits of awkward text, for three pre-tokenizer families."""
from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest
from hypothesis import given, settings, strategies as st
from tokenizers import Regex
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, normalizers, pre_tokenizers
from tokenizers.trainers import BpeTrainer

from model.tokenizer import Tokenizer

BUNDLED = Path(__file__).resolve().parent.parent / "model" / "bundled"
BEGIN, HOLE, END = "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"
SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", BEGIN, HOLE, END]
HELD_OUT = sorted(Path(jinja2.__file__).parent.glob("*.py"))   # jinja2 is held out of the corpus

# DeepSeek-Coder-V2's pre-tokenizer (its letter class cut to Latin, Greek and Cyrillic here)
DEEPSEEK = pre_tokenizers.Sequence([
    pre_tokenizers.Split(Regex(r"[\r\n]"), "isolated"),
    pre_tokenizers.Split(Regex(r"\s?[A-Za-zµÀ-ÖØ-öø-ƺͰ-ͳΆ-ϵЀ-ԯ]+"), "isolated"),
    pre_tokenizers.Split(Regex(r"\s?[!-/:-~！-／：-～‘-‟　-。]+"), "isolated"),
    pre_tokenizers.Split(Regex(r"\s+$"), "isolated"),
    pre_tokenizers.Split(Regex(r"[一-龥ࠀ-一가-퟿]+"), "isolated"),
    pre_tokenizers.Digits(individual_digits=True),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
])
GPT2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _trained(folder: Path, pre_tokenizer, normalizer=None) -> Tokenizer:
    """A 2,000-entry BPE tokenizer with DeepSeek's special tokens, trained on held-out code."""
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.ByteLevel()
    if normalizer is not None:
        backend.normalizer = normalizer
    trainer = BpeTrainer(vocab_size=2000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                         special_tokens=SPECIALS)
    backend.train_from_iterator([p.read_text(encoding="utf-8") for p in HELD_OUT[:6]], trainer)
    folder.mkdir(parents=True, exist_ok=True)
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": SPECIALS[0], "eos_token": SPECIALS[1]}))
    return Tokenizer.from_dir(folder)


@pytest.fixture(scope="module", params=["bundled", "deepseek", "gpt2"])
def tokenizer(request, tmp_path_factory) -> Tokenizer:
    if request.param == "bundled":
        return Tokenizer.from_dir(BUNDLED)
    folder = tmp_path_factory.mktemp(request.param)
    return _trained(folder, DEEPSEEK if request.param == "deepseek" else GPT2)


def _whole(tok: Tokenizer, text: str) -> list[int]:
    return tok._tok.encode(text, add_special_tokens=False).ids


def _prompt(text: str, cursor: int, layout: str) -> str:
    """A FIM prompt around `cursor`: whole lines within 4,000 characters before it and 1,500
    after, as the windows of a 2,048-token budget give."""
    start = text.find("\n", max(0, cursor - 4000), cursor) + 1
    end = text.rfind("\n", cursor, cursor + 1500)
    prefix, suffix = text[start:cursor], text[cursor:end if end >= 0 else len(text)]
    return f"{BEGIN}{prefix}{HOLE}{suffix}{END}" if layout == "psm" else f"{BEGIN}{HOLE}{suffix}{END}{prefix}"


def _keystrokes(text: str, line: int, chars: int):
    """(document, cursor) after each keystroke of typing `chars` characters of whole lines back
    from `line`, then deleting the last ten again with backspace."""
    start = sum(len(x) + 1 for x in text.split("\n")[:line])
    typed = text[start:start + chars]
    base = text[:start] + text[start + chars:]
    for n in range(1, len(typed) + 1):
        yield base[:start] + typed[:n] + base[start:], start + n
    for n in range(len(typed) - 1, len(typed) - 11, -1):
        yield base[:start] + typed[:n] + base[start:], start + n


@pytest.mark.parametrize("layout", ["spm", "psm"])
def test_every_keystroke_of_a_typing_trace_gets_the_ids_of_a_whole_encode(tokenizer, layout):
    reuse = tokenizer.reuse
    assert reuse.active
    before_encoded, before_reused = reuse.encoded_chars, reuse.reused_chars
    prompts = 0
    for path in HELD_OUT[6:9]:
        text = path.read_text(encoding="utf-8")
        for document, cursor in _keystrokes(text, len(text.split("\n")) // 2, 80):
            prompt = _prompt(document, cursor, layout)
            assert tokenizer.encode(prompt) == _whole(tokenizer, prompt), (path.name, cursor, layout)
            assert tokenizer.count(prompt) == len(_whole(tokenizer, prompt))
            prompts += len(prompt)
    assert reuse.active, "a splice differed from a whole encode, so reuse turned itself off"
    encoded, reused = reuse.encoded_chars - before_encoded, reuse.reused_chars - before_reused
    # per keystroke, a few hundred characters are encoded again (SPM: from the last space of the
    # prefix; PSM: from there to the hole token), not the ~5,500 of the prompt
    assert encoded < prompts / 8 and reused > prompts / 2, (encoded, reused, prompts)


AWKWARD = st.lists(st.sampled_from(
    list("abcXYZ_019 .,:;()[]{}'\"#=+-*/\\\t\n\r") + ["  ", "    ", "\u00a0", "é", "e\u0301", "注释", "🙂", "١٢",
                                                     "ß", "ǅ", HOLE, END, "\u200b"]), max_size=40).map("".join)


@settings(max_examples=150, deadline=None)
@given(base=st.lists(AWKWARD, min_size=30, max_size=80).map("".join), edit=AWKWARD,
       at=st.floats(0, 1), cut=st.integers(0, 6), layout=st.sampled_from(["spm", "psm"]))
def test_random_edits_of_awkward_text_get_the_ids_of_a_whole_encode(tokenizer, base, edit, at, cut, layout):
    cursor = int(at * len(base))
    edited = base[:cursor] + edit + base[cursor + cut:]
    for text, where in ((base, cursor), (edited, cursor + len(edit))):
        prompt = _prompt(text * 3, where + len(text), layout)    # long enough to be kept
        assert tokenizer.encode(prompt) == _whole(tokenizer, prompt)
    assert tokenizer.reuse.active


def test_a_tokenizer_that_normalizes_is_encoded_whole(tmp_path):
    """NFC moves characters, so byte counts of the ids no longer match the text: no reuse."""
    tok = _trained(tmp_path, GPT2, normalizer=normalizers.NFC())
    prompt = _prompt(HELD_OUT[6].read_text(encoding="utf-8"), 3000, "spm")
    assert not tok.reuse.active
    assert tok.encode(prompt + "x") == _whole(tok, prompt + "x") and tok.reuse.reused_chars == 0
