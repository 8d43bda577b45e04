"""The training corpus: the `.py` files, their train / held-out split, the tokenizer, the cache.

A corpus cache (a `corpus/` folder) holds the tokenizer files and the token ids of every file;
it is the unit that travels from the machine that prepares it to the one that trains on it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import lzma
import os
import platform
import shutil
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model.fim import BOS, DEEPSEEK, EOS

if TYPE_CHECKING:
    from tokenizers import Tokenizer

assert DEEPSEEK.prefix and DEEPSEEK.suffix and DEEPSEEK.middle, "DeepSeek's FIM tokens are all set"
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


def read_corpus(root: Path, held_out=is_heldout) -> tuple[list[SourceFile], list[str]]:
    """All `.py` files under `root` (site-packages excluded), and the paths not valid UTF-8;
    `held_out(relative path)` says which files are held out.

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
        files.append(SourceFile(rel, text, held_out(rel)))
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
#
# A cache folder holds the tokenizer files, `corpus.json` (paths, split, figures), `corpus.npz`
# (per file: id offsets and the held-out flag) and `ids.xz`: every file's token ids, uint16,
# compressed with LZMA in streams of about STREAM_TOKENS ids (≈0.6 byte per token). Held-out
# files come first, then the training files in a stable shuffled order (by path hash), so a
# size budget (`max_mib`) that cuts the stream leaves out a random share of training files.

IDS_FILES = ("ids.u16", "ids.xz")   # the ids, raw (mapped from disk) or LZMA-compressed (to carry)
STREAM_TOKENS = 4_000_000
ENCODE_BATCH = 512            # files tokenised at once: tokenizers' Encoding objects are large


@dataclass
class Corpus:
    """Token ids of every file and the tokenizer they were made with (a `corpus/` folder)."""

    root: Path                       # the cache folder, holding the tokenizer files
    paths: list[str]
    heldout: np.ndarray              # (files,) bool
    ids: list[np.ndarray]            # per file, uint16
    meta: dict
    tokenizer: Tokenizer
    nbytes: np.ndarray               # (vocab,) bytes per id, 0 for specials
    texts: list[bytes]               # per file, rebuilt from the ids

    def files(self, heldout: bool) -> list[int]:
        return [i for i in range(len(self.paths)) if bool(self.heldout[i]) == heldout]


def tokenizer_sample(files: list[SourceFile], max_mb: float) -> list[str]:
    """Training files for the tokenizer: all, or a stable sample (by path hash) of `max_mb` MB."""
    train = sorted((f for f in files if not f.heldout), key=lambda f: hashlib.sha256(f.path.encode()).digest())
    picked, size = [], 0
    for f in train:
        if max_mb and size > max_mb * 1e6:
            break
        picked.append(f.text)
        size += len(f.text)
    return picked


def encode_files(tok, texts: list[str]):
    """uint16 ids of each text, batch by batch (a generator: encoding stops when the caller
    does); every text must round-trip byte for byte."""
    for i in range(0, len(texts), ENCODE_BATCH):
        batch = texts[i:i + ENCODE_BATCH]
        encodings = tok.encode_batch(batch, add_special_tokens=False)
        decoded = tok.decode_batch([e.ids for e in encodings], skip_special_tokens=False)
        for k, (text, e, back) in enumerate(zip(batch, encodings, decoded, strict=True)):
            if back != text:
                raise TrainError(f"tokenizer round trip failed on file {i + k}")
            yield np.asarray(e.ids, dtype=np.uint16)


def prepare_corpus(source: Path, out: Path, vocab_size: int, log=print, max_mib: float = 0,
                   tokenizer_mb: float = 0, tokenizer: Path | None = None, held_out=is_heldout) -> Corpus:
    """Read the sources, train the tokenizer on the train split (or `tokenizer_mb` MB of it) or
    take `tokenizer` (a tokenizer.json), check the byte-for-byte round trip of every file,
    tokenise, and write the cache folder `out`: raw ids, or ids.xz within `max_mib` MiB."""
    from tokenizers import Tokenizer

    t0 = time.time()
    files, skipped = read_corpus(source, held_out)
    if tokenizer:
        tok = Tokenizer.from_file(str(tokenizer))
        log(f"corpus: {len(files):,} files read; tokenizer {tokenizer}")
    else:
        tok = train_tokenizer(tokenizer_sample(files, tokenizer_mb), vocab_size)
        log(f"corpus: {len(files):,} files read, tokenizer trained ({time.time() - t0:.0f} s)")
    order = sorted(range(len(files)), key=lambda i: (not files[i].heldout,
                                                     hashlib.sha256(files[i].path.encode()).digest()))
    files = [files[i] for i in order]
    out.mkdir(parents=True, exist_ok=True)
    save_tokenizer_files(tok, out)
    texts = [f.text for f in files]
    for stale in IDS_FILES:
        (out / stale).unlink(missing_ok=True)
    if max_mib:
        ids = write_ids(out / "ids.xz", encode_files(tok, texts), sum(map(len, texts)), max_mib * 2**20,
                        sum(f.heldout for f in files))
    else:
        ids = write_raw_ids(out / "ids.u16", encode_files(tok, texts))
    left_out = files[len(ids):]
    files = files[:len(ids)]
    meta = _corpus_meta(source, files, skipped, ids, tok.get_vocab_size())
    meta["left_out_for_size"] = {"files": len(left_out), "bytes": sum(len(f.text.encode()) for f in left_out),
                                 "max_mib": max_mib}
    meta["ids_bytes"] = sum((out / name).stat().st_size for name in IDS_FILES if (out / name).is_file())
    offsets = np.cumsum([0] + [len(x) for x in ids])
    np.savez(out / "corpus.npz", offsets=offsets, heldout=np.array([f.heldout for f in files]))
    (out / "corpus.json").write_text(json.dumps({**meta, "paths": [f.path for f in files]}, indent=1) + "\n")
    for name in ("report.json", "report.md"):             # `latent train corpus` wrote them beside files/
        if (source.parent / name).is_file() and (source.parent / "files") == source:
            shutil.copyfile(source.parent / name, out / name)
    log(f"corpus: {describe(meta)}; prepared in {time.time() - t0:.0f} s → {out}")
    return load_corpus(out)


def write_raw_ids(path: Path, ids) -> list[np.ndarray]:
    """Write every file's ids (an iterable) as one little-endian uint16 array, which loading
    maps from disk instead of reading into memory; returns the ids."""
    kept: list[np.ndarray] = []
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for x in ids:
            f.write(x.astype("<u2").tobytes())
            kept.append(x)
    os.replace(tmp, path)
    return kept


def write_ids(path: Path, ids, chars: int, max_bytes: float, always: int = 1) -> list[np.ndarray]:
    """Write the files' ids (an iterable) as LZMA streams until `max_bytes` (0: all); returns
    the ids of the files that went in. The first `always` files (the held-out ones, which
    lead the order) always go in. Streams hold STREAM_TOKENS ids, or about a hundredth of a
    smaller corpus (`chars` characters in all), so the cut falls near the budget."""
    size = max(1000, min(STREAM_TOKENS, chars // 300))
    ids = iter(ids)
    kept: list[np.ndarray] = []
    written = 0
    with open(path, "wb") as f:
        while True:
            batch, count = [], 0
            for x in ids:
                batch.append(x)
                count += len(x)
                if count >= size:
                    break
            if not batch:
                break
            stream = lzma.compress(np.concatenate(batch).astype("<u2").tobytes(), preset=6)
            if max_bytes and written + len(stream) > max_bytes and len(kept) >= always:
                break
            f.write(stream)
            written += len(stream)
            kept += batch
    return kept


def _corpus_meta(source: Path, files, skipped, ids, vocab_size: int) -> dict:
    def split(held: bool) -> dict:
        chosen = [(f, x) for f, x in zip(files, ids, strict=True) if f.heldout == held]
        return {"files": len(chosen), "bytes": sum(len(f.text.encode()) for f, _ in chosen),
                "tokens": int(sum(len(x) for _, x in chosen))}
    is_stdlib = source.resolve() == stdlib_root().resolve()
    report = source.parent / "report.json"
    collected = json.loads(report.read_text()) if (source.parent / "files") == source and report.is_file() else None
    if collected:
        described = f"latent train corpus ({collected['manifest']}, sha256 {collected['manifest_sha256'][:12]}…)"
    else:
        described = "CPython standard library" if is_stdlib else str(source)
    return {
        "source": described,
        "python": platform.python_version() if is_stdlib else None,
        "license": "PSF-2.0" if is_stdlib else "per package, see report.md" if collected else "see source",
        "manifest_sha256": collected["manifest_sha256"] if collected else None,
        "collected": {k: collected[k] for k in ("totals", "by_license", "filters", "heldout_packages", "humaneval")}
        if collected else None,
        "skipped_not_utf8": skipped,
        "vocab_size": vocab_size,
        "train": split(False),
        "heldout": split(True),
        "created": time.strftime("%Y-%m-%d"),
    }


def describe(meta: dict) -> str:
    """One line on a corpus cache: its source and the size of both splits."""
    tr, ho = meta["train"], meta["heldout"]
    left = meta.get("left_out_for_size") or {}
    return (f"{meta['source']} {meta.get('python') or ''} — train {tr['files']} files, "
            f"{tr['bytes'] / 1e6:.1f} MB, {tr['tokens'] / 1e6:.2f}M tokens; held-out {ho['files']} "
            f"files, {ho['bytes'] / 1e6:.2f} MB, {ho['tokens'] / 1e6:.3f}M tokens "
            f"({ho['bytes'] / max(ho['tokens'], 1):.2f} bytes/token); "
            f"{len(meta['skipped_not_utf8'])} files skipped (not UTF-8)"
            + (f"; {left['files']} training files ({left['bytes'] / 1e6:.1f} MB) left out to fit "
               f"{left['max_mib']} MiB" if left.get("files") else ""))


def load_corpus(folder: Path) -> Corpus:
    from tokenizers import Tokenizer

    for name in (*TOKENIZER_FILES, "corpus.npz", "corpus.json"):
        if not (folder / name).is_file():
            raise TrainError(f"{folder} is not a corpus cache: {name} is missing "
                             f"(make one with --prepare-only)")
    ids_file = next((folder / name for name in IDS_FILES if (folder / name).is_file()), None)
    if ids_file is None:
        raise TrainError(f"{folder} is not a corpus cache: it holds no token ids ({' or '.join(IDS_FILES)})")
    info = json.loads((folder / "corpus.json").read_text())
    arrays = np.load(folder / "corpus.npz")
    offsets = arrays["offsets"]
    if ids_file.suffix == ".u16":
        flat = np.memmap(ids_file, dtype="<u2", mode="r")
    else:
        flat = np.frombuffer(lzma.decompress(ids_file.read_bytes()), dtype="<u2")
    if len(flat) != offsets[-1]:
        raise TrainError(f"{ids_file} holds {len(flat)} ids, corpus.npz expects {offsets[-1]}")
    ids = [flat[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    table = token_bytes(tok)
    nbytes = np.array([len(b) for b in table], dtype=np.int64)
    paths = info.pop("paths")
    return Corpus(folder, paths, arrays["heldout"], ids, info, tok, nbytes, rebuild_texts(ids, table))


def rebuild_texts(ids: list[np.ndarray], table: list[bytes]) -> list[bytes]:
    """Each file's bytes from its ids: one gather from the concatenated token table per file."""
    blob = np.frombuffer(b"".join(table), dtype=np.uint8)
    lengths = np.array([len(b) for b in table], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    texts = []
    for x in ids:
        n = lengths[x]
        first = np.cumsum(n) - n                                    # where each token lands
        index = np.repeat(starts[x] - first, n) + np.arange(int(n.sum()))
        texts.append(blob[index].tobytes())
    return texts
