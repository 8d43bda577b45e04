"""Tokenizer files: FIM tokens found by their strings, BOS handling, clear errors."""
from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers
from tokenizers.trainers import BpeTrainer

from model.tokenizer import RELEASE_CHARS, Tokenizer, TokenizerError

SOURCE = "def f(x):\n\treturn {'é': x}  # 注释 🙂\r\n"


def _write(folder, specials, bos=None, eos=None, add_bos=True):
    tok = Backend(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=specials)
    tok.train_from_iterator([SOURCE] * 5, trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": bos, "eos_token": eos, "add_bos_token": add_bos}, ensure_ascii=False))
    return Tokenizer.from_dir(folder)


STYLES = {
    "deepseek": ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"],
    "starcoder": ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<file_sep>"],
    "qwen": ["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|file_sep|>", "<|repo_name|>"],
    "codestral": ["<s>", "</s>", "[PREFIX]", "[SUFFIX]"],
}


@pytest.mark.parametrize("style", list(STYLES))
def test_fim_style_is_found_by_token_strings(tmp_path, style):
    tok = _write(tmp_path, STYLES[style])
    assert tok.fim is not None and tok.fim.name == style
    for text in (tok.fim.prefix, tok.fim.suffix):
        assert len(tok.encode(text)) == 1
    prompt = f"{tok.fim.prefix}a = 1{tok.fim.suffix}"
    ids = tok.encode(prompt)
    assert ids[0] == tok.encode(tok.fim.prefix)[0] and tok.encode(tok.fim.suffix)[0] in ids


def test_qwen_repository_tokens_are_reported(tmp_path):
    tok = _write(tmp_path, STYLES["qwen"])
    assert tok.fim.file_sep == "<|file_sep|>" and tok.fim.repo_name == "<|repo_name|>"


def test_no_fim_tokens_is_a_clear_error(tmp_path):
    tok = _write(tmp_path, ["<s>", "</s>"])
    assert tok.fim is None
    with pytest.raises(TokenizerError, match="no fill-in-the-middle tokens"):
        tok.require_fim()


def test_round_trip_and_bos(tmp_path):
    tok = _write(tmp_path, STYLES["deepseek"], bos=STYLES["deepseek"][0], eos=STYLES["deepseek"][1])
    assert tok.decode(tok.encode(SOURCE)) == SOURCE
    assert tok.add_bos and tok.encode("x", add_bos=True)[0] == tok.bos_id
    assert tok.encode("x")[0] != tok.bos_id
    assert tok.count(SOURCE) == len(tok.encode(SOURCE))


def test_a_long_text_is_encoded_as_a_short_one_is(tmp_path):
    """Long texts take another call of the library (one that lets other threads run): the same
    ids as its text in short pieces cut at line starts, special tokens included."""
    tok = _write(tmp_path, STYLES["deepseek"], bos=STYLES["deepseek"][0], eos=STYLES["deepseek"][1])
    piece = SOURCE.replace("\r\n", "\n") + "<｜fim▁hole｜>\n"
    text = piece * (RELEASE_CHARS // len(piece) + 2)
    assert len(text) > RELEASE_CHARS
    ids = tok.encode(text, add_bos=True)
    assert ids == [tok.bos_id, *tok.encode(piece) * (RELEASE_CHARS // len(piece) + 2)]
    assert tok.count(text) == len(ids) - 1 and tok.decode(ids[1:]) == text


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


def test_corrupt_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot be read"):
        Tokenizer.from_dir(tmp_path)


def test_lone_surrogates_are_tokenized_as_replacement_characters(tmp_path):
    tok = _write(tmp_path, STYLES["deepseek"])
    broken = "x = '\ud83d'"          # half of an emoji pair, as a broken editor buffer can hold
    assert tok.decode(tok.encode(broken)) == "x = '\ufffd'"
    assert tok.count(broken) == len(tok.encode(broken))
