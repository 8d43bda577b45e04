"""The training corpus: the `.py` files, their train / held-out split, the tokenizer, the cache.

A corpus cache (a `corpus/` folder) holds the tokenizer files and the token ids of every file;
it is the unit that travels from the machine that prepares it to the one that trains on it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.fim import BOS, DEEPSEEK, EOS

SPECIAL_TOKENS = (BOS, EOS, DEEPSEEK.prefix, DEEPSEEK.suffix, DEEPSEEK.middle)  # ids 0..4, in this order
BOS_ID, EOS_ID, FIM_BEGIN_ID, FIM_HOLE_ID, FIM_END_ID = range(len(SPECIAL_TOKENS))
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

HELDOUT_PER_MILLE = 20        # ≈ 2 % of files, chosen by a stable hash of the path
MAX_POSITIONS = 4096          # the model's and the tokenizer's limit, so the engine can take 2k-token prompts


class TrainError(Exception):
    """A problem the user can fix; `main` prints it on one line and returns status 2."""


# -- the files: the standard library's .py files, split by a stable hash of their path ---

@dataclass(frozen=True)
class SourceFile:
    path: str          # relative to the corpus root, "/"-separated
    text: str
    heldout: bool


def is_heldout(relpath: str) -> bool:
    """Stable train / held-out split: the same on every machine and Python version."""
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 1000 < HELDOUT_PER_MILLE


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def read_corpus(root: Path) -> tuple[list[SourceFile], list[str]]:
    """All `.py` files under `root` (site-packages excluded), and the paths not valid UTF-8.

    A corpus too small to hash any file into the held-out split (a test's handful of
    files) holds out the file with the smallest hash instead, so evaluation always runs.
    """
    files, skipped = [], []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if "site-packages" in rel.split("/") or not path.is_file():
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            skipped.append(rel)
            continue
        files.append(SourceFile(rel, text, is_heldout(rel)))
    if len(files) < 2:
        raise TrainError(f"need at least two UTF-8 .py files under {root}, found {len(files)}")
    if not any(f.heldout for f in files):
        first = min(files, key=lambda f: hashlib.sha256(f.path.encode()).digest())
        files = [dataclasses.replace(f, heldout=f is first) for f in files]
    return files, skipped


# -- the tokenizer: byte-level BPE with the DeepSeek-Coder special tokens -----------------

def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (GPT-2 regex, no prefix space) of `vocab_size` entries, specials first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    # AutoTokenizer(text).input_ids starts with BOS, as DeepSeek's add_bos_token does.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, BOS_ID)]
    )
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i, f"special token {s} landed at {tok.token_to_id(s)}"
    return tok


def save_tokenizer_files(tok, out: Path) -> None:
    """tokenizer.json plus the two small files transformers' AutoTokenizer reads."""
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITIONS,
        "legacy": False,
    }
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2, ensure_ascii=False) + "\n")


def _byte_decoder() -> dict[str, int]:
    """Inverse of byte-level BPE's byte → printable-character table (GPT-2's layout)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def token_bytes(tok) -> list[bytes]:
    """The UTF-8 bytes each id stands for; special tokens stand for none (b"")."""
    decoder = _byte_decoder()
    table = [b""] * tok.get_vocab_size()
    for piece, i in tok.get_vocab().items():
        if i >= len(SPECIAL_TOKENS):
            table[i] = bytes(decoder[c] for c in piece)
    return table


# -- the corpus cache: tokenizer files + token ids per file -------------------------------

@dataclass
class Corpus:
    """Token ids of every file and the tokenizer they were made with (a `corpus/` folder)."""

    root: Path                       # the cache folder, holding the tokenizer files
    paths: list[str]
    heldout: np.ndarray              # (files,) bool
    ids: list[np.ndarray]            # per file, uint16
    meta: dict
    tokenizer: object = None         # tokenizers.Tokenizer
    nbytes: np.ndarray = None        # (vocab,) bytes per id, 0 for specials
    texts: list[bytes] = None        # per file, rebuilt from the ids

    def files(self, heldout: bool) -> list[int]:
        return [i for i in range(len(self.paths)) if bool(self.heldout[i]) == heldout]


def prepare_corpus(source: Path, out: Path, vocab_size: int, log=print) -> Corpus:
    """Read the sources, train the tokenizer on the train split, check the byte-for-byte
    round trip of every file, tokenise, and write the cache folder `out`."""
    t0 = time.time()
    files, skipped = read_corpus(source)
    train_texts = [f.text for f in files if not f.heldout]
    tok = train_tokenizer(train_texts, vocab_size)
    encodings = tok.encode_batch([f.text for f in files], add_special_tokens=False)
    ids = [np.asarray(e.ids, dtype=np.uint16) for e in encodings]
    for f, e in zip(files, encodings):
        if tok.decode(e.ids, skip_special_tokens=False) != f.text:
            raise TrainError(f"tokenizer round trip failed on {f.path}")
    meta = _corpus_meta(source, files, skipped, ids, tok.get_vocab_size())
    out.mkdir(parents=True, exist_ok=True)
    save_tokenizer_files(tok, out)
    offsets = np.cumsum([0] + [len(x) for x in ids])
    np.savez_compressed(out / "corpus.npz", ids=np.concatenate(ids), offsets=offsets,
                        heldout=np.array([f.heldout for f in files]))
    (out / "corpus.json").write_text(json.dumps({**meta, "paths": [f.path for f in files]}, indent=1) + "\n")
    log(f"corpus: {describe(meta)}; prepared in {time.time() - t0:.0f} s → {out}")
    return load_corpus(out)


def _corpus_meta(source: Path, files, skipped, ids, vocab_size: int) -> dict:
    def split(held: bool) -> dict:
        chosen = [(f, x) for f, x in zip(files, ids) if f.heldout == held]
        return {"files": len(chosen), "bytes": sum(len(f.text.encode()) for f, _ in chosen),
                "tokens": int(sum(len(x) for _, x in chosen))}
    is_stdlib = source.resolve() == stdlib_root().resolve()
    return {
        "source": "CPython standard library" if is_stdlib else str(source),
        "python": platform.python_version() if is_stdlib else None,
        "license": "PSF-2.0" if is_stdlib else "see source",
        "skipped_not_utf8": skipped,
        "vocab_size": vocab_size,
        "train": split(False),
        "heldout": split(True),
        "created": time.strftime("%Y-%m-%d"),
    }


def describe(meta: dict) -> str:
    """One line on a corpus cache: its source and the size of both splits."""
    tr, ho = meta["train"], meta["heldout"]
    return (f"{meta['source']} {meta.get('python') or ''} — train {tr['files']} files, "
            f"{tr['bytes'] / 1e6:.1f} MB, {tr['tokens'] / 1e6:.2f}M tokens; held-out {ho['files']} "
            f"files, {ho['bytes'] / 1e6:.2f} MB, {ho['tokens'] / 1e6:.3f}M tokens "
            f"({ho['bytes'] / max(ho['tokens'], 1):.2f} bytes/token); "
            f"{len(meta['skipped_not_utf8'])} files skipped (not UTF-8)")


def load_corpus(folder: Path) -> Corpus:
    from tokenizers import Tokenizer

    for name in (*TOKENIZER_FILES, "corpus.npz", "corpus.json"):
        if not (folder / name).is_file():
            raise TrainError(f"{folder} is not a corpus cache: {name} is missing "
                             f"(make one with --prepare-only)")
    info = json.loads((folder / "corpus.json").read_text())
    arrays = np.load(folder / "corpus.npz")
    offsets = arrays["offsets"]
    flat = arrays["ids"]
    ids = [flat[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    table = token_bytes(tok)
    texts = [b"".join([table[i] for i in x.tolist()]) for x in ids]
    paths = info.pop("paths")
    return Corpus(folder, paths, arrays["heldout"], ids, info, tok,
                  np.array([len(b) for b in table], dtype=np.int64), texts)
