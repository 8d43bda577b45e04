"""`latent train`: train the bundled default model, reproducibly, from one command.

The model is a tiny DeepSeek-Coder-V2 look-alike — MoE feed-forward with a shared expert,
Multi-head Latent Attention with a real q-LoRA — trained with the fill-in-the-middle (FIM)
objective on the `.py` files of the running interpreter's standard library (PSF license).
It is saved in the Hugging Face layout of a real DeepSeek-V2 checkpoint, so the engine's
ordinary loading path always runs on it.

    python -m model.train                                # ~30 CPU minutes: a weak fallback
    python -m model.train --prepare-only --out .gpu      # tokenizer + corpus cache only
    python -m model.train --corpus-cache .gpu/corpus --device cuda --minutes 6.5 \
        --seq-len 1024 --batch-size 128 --out runs/gpu   # the shipped model (H200, see its card)

Sections, top to bottom: corpus, tokenizer, corpus cache, FIM samples and packing, model
presets, evaluation, the training loop, export (HF folder + model card), command line.

A run directory (`--out`) holds `corpus/` (tokenizer files + token ids), `checkpoint.pt`
(for `--resume`), `log.jsonl` and, at the end, `model/` — the finished model folder.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import sys
import sysconfig
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
FIM_BEGIN = "<｜fim▁begin｜>"
FIM_HOLE = "<｜fim▁hole｜>"
FIM_END = "<｜fim▁end｜>"
SPECIAL_TOKENS = (BOS, EOS, FIM_BEGIN, FIM_HOLE, FIM_END)  # ids 0..4, in this order
BOS_ID, EOS_ID, FIM_BEGIN_ID, FIM_HOLE_ID, FIM_END_ID = range(len(SPECIAL_TOKENS))

HELDOUT_PER_MILLE = 20        # ≈ 2 % of files, chosen by a stable hash of the path
FIM_SLACK = 8                 # tokens lost when a window is re-tokenised in three pieces
EVAL_SEED = 1234              # held-out samples are the same whatever the training seed
MAX_POSITIONS = 4096          # so the engine can take 2k-token prompts


class TrainError(Exception):
    """A problem the user can fix; `main` prints it on one line and exits with status 2."""


# ---------------------------------------------------------------------------------------
# Corpus: the standard library's .py files, split by a stable hash of their path
# ---------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------
# Tokenizer: byte-level BPE with the DeepSeek-Coder special tokens
# ---------------------------------------------------------------------------------------

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


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


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


# ---------------------------------------------------------------------------------------
# Corpus cache: tokenizer files + token ids per file, the unit that travels to a GPU
# ---------------------------------------------------------------------------------------

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
    log(f"corpus: {_describe(meta)}; prepared in {time.time() - t0:.0f} s → {out}")
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


def _describe(meta: dict) -> str:
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


# ---------------------------------------------------------------------------------------
# FIM samples: windows of a file, half of them cut into prefix / middle / suffix (PSM)
# ---------------------------------------------------------------------------------------

# Where the hole opens. Besides uniformly random spans (Bavarian et al. 2022), the places
# an editor asks from: the rest of a line, a span inside a line, whole lines starting at
# column 0 or after the indentation, and the body of a block just opened by a colon.
HOLE_KINDS = {"random": 0.30, "line_rest": 0.20, "mid_line": 0.15, "lines": 0.25, "block": 0.10}


def _lines(text: str) -> list[tuple[int, int]]:
    """(start, end) of each line; `end` is the index of its "\\n" (or len(text))."""
    spans, start = [], 0
    while start <= len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        spans.append((start, end))
        start = end + 1
    return spans


def _indent(text: str, span: tuple[int, int]) -> int:
    """Index of the first non-blank character of the line (its end if blank)."""
    start, end = span
    line = text[start:end]
    return start + len(line) - len(line.lstrip())


def choose_hole(text: str, rng: np.random.Generator) -> tuple[int, int]:
    """Character offsets (a, b) of the middle: text[:a] prefix, text[a:b] middle, text[b:] suffix."""
    kind = rng.choice(list(HOLE_KINDS), p=list(HOLE_KINDS.values()))
    lines = _lines(text)
    content = [i for i, (s, e) in enumerate(lines) if text[s:e].strip()]
    if kind == "random" or not content:
        a, b = sorted(int(x) for x in rng.integers(0, len(text) + 1, size=2))
        return a, b
    if kind == "block":
        hole = _block_hole(text, lines, content, rng)
        if hole:
            return hole
        kind = "lines"
    i = int(content[rng.integers(len(content))])
    start, end = lines[i]
    indent = _indent(text, lines[i])
    if kind == "line_rest":
        return int(rng.integers(indent, end + 1)), end
    if kind == "mid_line":
        a = int(rng.integers(indent, end))
        return a, int(rng.integers(a + 1, end + 1))
    last = min(i + int(rng.geometric(0.5)) - 1, i + 7, len(lines) - 1)   # "lines"
    a = start if rng.random() < 0.5 else indent
    return a, min(lines[last][1] + 1, len(text))


def _block_hole(text, lines, content, rng) -> tuple[int, int] | None:
    """The body of a block: cursor after the indentation of the line that follows a colon."""
    openers = [content[k + 1] for k in range(len(content) - 1)
               if text[lines[content[k]][0]:lines[content[k]][1]].rstrip().endswith(":")]
    if not openers:
        return None
    i = int(openers[rng.integers(len(openers))])
    indent = _indent(text, lines[i]) - lines[i][0]
    last = i
    for j in range(i + 1, min(i + 16, len(lines))):
        s, e = lines[j]
        if text[s:e].strip() and _indent(text, lines[j]) - s < indent:
            break
        last = j
    return _indent(text, lines[i]), min(lines[last][1] + 1, len(text))


def _snap(data: bytes, pos: int) -> int:
    """Move a byte offset forward to the start of a UTF-8 character."""
    while pos < len(data) and (data[pos] & 0xC0) == 0x80:
        pos += 1
    return pos


def _fim_ids(prefix: list[int], suffix: list[int], middle: list[int], row_len: int) -> list[int]:
    """BOS fim_begin prefix fim_hole suffix fim_end middle EOS, trimmed to fit one row
    (the prefix loses its oldest tokens first, as a prompt builder would crop it)."""
    excess = len(prefix) + len(suffix) + len(middle) + len(SPECIAL_TOKENS) - row_len
    if excess > 0:
        cut = min(excess, len(prefix))
        prefix, excess = prefix[cut:], excess - cut
        suffix = suffix[:max(0, len(suffix) - excess)]
    return [BOS_ID, FIM_BEGIN_ID, *prefix, FIM_HOLE_ID, *suffix, FIM_END_ID, *middle, EOS_ID]


def make_samples(corpus: Corpus, files: list[int], rng: np.random.Generator,
                 row_len: int, fim_rate: float) -> list[list[int]]:
    """Cut each file into windows at a random phase; a `fim_rate` share of windows become
    PSM samples (their text split at a hole and re-tokenised piece by piece, as the engine
    tokenises a prompt), the rest plain `BOS text [EOS at the end of a file]` samples."""
    width = row_len - len(SPECIAL_TOKENS) - FIM_SLACK
    samples, pieces, fim_at = [], [], []
    for f in files:
        ids, n = corpus.ids[f], len(corpus.ids[f])
        phase = int(rng.integers(0, width)) if n > width else 0
        cuts = sorted({0, n, *range(phase, n, width)})
        ends = np.concatenate([[0], np.cumsum(corpus.nbytes[ids])])
        for a, b in zip(cuts, cuts[1:]):
            data = corpus.texts[f]
            text = data[_snap(data, int(ends[a])):_snap(data, int(ends[b]))].decode("utf-8")
            if rng.random() < fim_rate and len(text.strip()) >= 8:
                h0, h1 = choose_hole(text, rng)
                fim_at.append(len(samples))
                pieces += [text[:h0], text[h1:], text[h0:h1]]
                samples.append(None)
            else:
                samples.append([BOS_ID, *ids[a:b].tolist(), *([EOS_ID] if b == n else [])])
    encoded = corpus.tokenizer.encode_batch(pieces, add_special_tokens=False) if pieces else []
    for k, at in enumerate(fim_at):
        p, s, m = (encoded[3 * k + j].ids for j in range(3))
        samples[at] = _fim_ids(p, s, m, row_len)
    return samples


def pack_rows(samples: list[list[int]], row_len: int, open_limit: int = 64) -> np.ndarray:
    """Pack whole samples into rows of `row_len` ids, first fit; -1 marks padding.

    Samples never straddle rows, so each FIM sample keeps its prefix, suffix and middle
    together. Samples sit side by side in a row without masking, as in GPT-style packing.
    """
    rows: list[list[int]] = []
    open_rows: list[int] = []
    for sample in samples:
        sample = sample[:row_len]
        target = next((r for r in open_rows if len(rows[r]) + len(sample) <= row_len), None)
        if target is None:
            rows.append([])
            target = len(rows) - 1
            open_rows.append(target)
            if len(open_rows) > open_limit:
                open_rows.pop(0)
        rows[target].extend(sample)
        if row_len - len(rows[target]) < 16:
            open_rows.remove(target)
    out = np.full((len(rows), row_len), -1, dtype=np.int32)
    for r, row in enumerate(rows):
        out[r, :len(row)] = row
    return out


def epoch_rows(corpus: Corpus, seed: int, epoch: int, row_len: int, fim_rate: float) -> np.ndarray:
    """The shuffled training rows of one epoch; windows and holes are re-drawn every epoch."""
    rng = np.random.default_rng([seed, epoch])
    files = corpus.files(heldout=False)
    files = [files[i] for i in rng.permutation(len(files))]
    rows = pack_rows(make_samples(corpus, files, rng, row_len, fim_rate), row_len)
    return rows[rng.permutation(len(rows))]


_FEEDER_CORPUS: Corpus | None = None       # what forked epoch builders read


def _build_epoch(seed: int, row_len: int, fim_rate: float, epoch: int) -> np.ndarray:
    return epoch_rows(_FEEDER_CORPUS, seed, epoch, row_len, fim_rate)


def _quiet_worker() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"   # one core per worker, no fork warning


class EpochFeeder:
    """Builds epochs ahead of the training loop.

    With `workers` = 0, one background thread (CPU training: the cores are busy training).
    With `workers` > 0, that many forked processes, each building a whole epoch (GPU
    training: an epoch of the tiny model trains in seconds, about as long as one host core
    takes to re-tokenise its FIM samples). The workers only use numpy and tokenizers."""

    def __init__(self, corpus: Corpus, seed: int, row_len: int, fim_rate: float, workers: int):
        global _FEEDER_CORPUS
        _FEEDER_CORPUS = corpus
        if workers > 0:
            import multiprocessing
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                            initializer=_quiet_worker)
        else:
            self.pool = ThreadPoolExecutor(max_workers=1)
        self.ahead = max(1, workers)
        self.job = (seed, row_len, fim_rate)
        self.pending: dict = {}

    def get(self, epoch: int) -> np.ndarray:
        """The rows of `epoch` (built here, with every core, if not ready-made), then keeps the
        next `ahead` epochs in the making. Should a worker fail, later epochs are built by a
        background thread instead: a run is not lost to its data feeder."""
        job = self.pending.pop(epoch, None)
        try:
            rows = job.result() if job else _build_epoch(*self.job, epoch)
        except Exception as e:  # BrokenProcessPool and the like, never seen in a thread
            if isinstance(self.pool, ThreadPoolExecutor):
                raise
            print(f"latent train: epoch builder failed ({type(e).__name__}: {e}); "
                  f"building epochs in a thread", file=sys.stderr)
            self.close()
            self.pool, self.ahead, self.pending = ThreadPoolExecutor(max_workers=1), 1, {}
            rows = _build_epoch(*self.job, epoch)
        for e in range(epoch + 1, epoch + self.ahead + 1):
            if e not in self.pending:
                self.pending[e] = self.pool.submit(_build_epoch, *self.job, e)
        return rows

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------------------
# Model: presets of DeepSeek-V2 shapes, the HF config, a load-balancing loss
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    # mla
    q_lora_rank: int
    kv_lora_rank: int
    qk_nope: int
    qk_rope: int
    v_head: int
    # moe
    dense_intermediate: int
    expert_intermediate: int
    experts: int
    experts_per_token: int
    shared_experts: int = 1
    first_dense: int = 1


PRESETS = {
    # For tests: trains in seconds.
    "tiny": Shape(hidden=64, layers=2, heads=2, q_lora_rank=32, kv_lora_rank=16, qk_nope=16,
                  qk_rope=8, v_head=24, dense_intermediate=128, expert_intermediate=32,
                  experts=4, experts_per_token=2),
    # The shipped model: 3.96M parameters with an 8,192 vocabulary, fp32 file < 16 MiB.
    # v_head == qk_nope + qk_rope lets PyTorch's CPU flash-attention kernel run.
    "bundled": Shape(hidden=160, layers=4, heads=4, q_lora_rank=64, kv_lora_rank=48, qk_nope=32,
                     qk_rope=16, v_head=48, dense_intermediate=384, expert_intermediate=64,
                     experts=8, experts_per_token=2),
    # For a GPU: 37M parameters, too big to ship in the repository.
    "large": Shape(hidden=384, layers=8, heads=6, q_lora_rank=192, kv_lora_rank=128, qk_nope=48,
                   qk_rope=16, v_head=64, dense_intermediate=1024, expert_intermediate=192,
                   experts=16, experts_per_token=2, shared_experts=1),
}


def hf_config(shape: Shape, vocab_size: int) -> dict:
    """config.json in the layout of DeepSeek-Coder-V2-Lite (plus transformers 5's
    `rope_parameters`); greedy softmax routing, no top-k renormalisation, untied head."""
    return {
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        "vocab_size": vocab_size,
        "hidden_size": shape.hidden,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.heads,
        "q_lora_rank": shape.q_lora_rank,
        "kv_lora_rank": shape.kv_lora_rank,
        "qk_nope_head_dim": shape.qk_nope,
        "qk_rope_head_dim": shape.qk_rope,
        "v_head_dim": shape.v_head,
        "intermediate_size": shape.dense_intermediate,
        "moe_intermediate_size": shape.expert_intermediate,
        "n_routed_experts": shape.experts,
        "n_shared_experts": shape.shared_experts,
        "num_experts_per_tok": shape.experts_per_token,
        "first_k_dense_replace": shape.first_dense,
        "moe_layer_freq": 1,
        "topk_method": "greedy",
        "n_group": 1,
        "topk_group": 1,
        "scoring_func": "softmax",
        "norm_topk_prob": False,
        "routed_scaling_factor": 1.0,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITIONS,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": None,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def build_model(config: dict, experts: str):
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

    model = DeepseekV2ForCausalLM(DeepseekV2Config.from_dict(config)).float()
    if experts != "auto":
        if not hasattr(model, "set_experts_implementation"):
            raise TrainError(f"--experts {experts}: this transformers version cannot choose it")
        model.set_experts_implementation(experts)
    return model


class BalanceLoss:
    """DeepSeek-V2's expert-level balance loss, Σ_i f_i·P_i, summed over MoE layers.

    transformers' DeepSeek-V2 has none, so the router inputs are captured with forward
    pre-hooks and routed again here (the same greedy softmax top-k). f_i is the share of
    routed slots expert i receives times n_experts (1 when uniform), P_i its mean score.
    """

    def __init__(self, model, top_k: int):
        self.top_k = top_k
        self.captured: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.max_load = torch.zeros(())
        for layer in model.model.layers:
            if hasattr(layer.mlp, "experts"):
                layer.mlp.register_forward_pre_hook(self._capture)

    def _capture(self, moe, args) -> None:
        if torch.is_grad_enabled():                        # training passes only
            self.captured.append((args[0], moe.gate.weight))

    def pop(self) -> torch.Tensor:
        """The loss of the forward passes since the last call (mean over layers)."""
        losses, loads = [], []
        for hidden, weight in self.captured:
            scores = F.linear(hidden.reshape(-1, hidden.shape[-1]).float(), weight.float()).softmax(-1)
            n_experts = scores.shape[-1]
            chosen = scores.topk(self.top_k, dim=-1).indices
            load = torch.bincount(chosen.flatten(), minlength=n_experts).float()
            load = load * n_experts / chosen.numel()                  # (E,), 1.0 when uniform
            losses.append((load * scores.mean(0)).sum())
            loads.append(load.max())
        self.captured.clear()
        if not losses:
            return torch.zeros(())
        self.max_load = torch.stack(loads).max().detach()
        return torch.stack(losses).mean()


# ---------------------------------------------------------------------------------------
# Evaluation on the held-out files: bits per byte (plain text) and FIM middle loss
# ---------------------------------------------------------------------------------------

def _inputs_targets(rows: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (B, T+1) with -1 padding → input ids (B, T) and targets (B, T), -100 ignored."""
    rows = torch.from_numpy(rows).long()
    inputs = rows[:, :-1].clamp(min=0)           # padding reads as BOS; its targets are ignored
    targets = rows[:, 1:].masked_fill(rows[:, 1:] < 0, -100)
    return inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)


def _middle_mask(rows: np.ndarray) -> np.ndarray:
    """(B, T) True where the target is a middle token (after fim_end, up to EOS inclusive)."""
    mask = np.zeros((rows.shape[0], rows.shape[1] - 1), dtype=bool)
    for r, row in enumerate(rows):
        inside = False
        for j in range(1, len(row)):
            prev = row[j - 1]
            if prev == FIM_END_ID:
                inside = True
            elif prev in (BOS_ID, EOS_ID, -1):
                inside = False
            mask[r, j - 1] = inside and row[j] >= 0
    return mask


class HeldOut:
    """Fixed held-out rows: every held-out window once as plain text, once in PSM form."""

    def __init__(self, corpus: Corpus, row_len: int, device, batch_size: int):
        files = corpus.files(heldout=True)
        self.plain = pack_rows(make_samples(corpus, files, np.random.default_rng(EVAL_SEED), row_len, 0.0), row_len)
        self.fim = pack_rows(make_samples(corpus, files, np.random.default_rng(EVAL_SEED), row_len, 1.0), row_len)
        self.middle = _middle_mask(self.fim)
        self.nbytes = torch.from_numpy(corpus.nbytes)
        self.device, self.batch_size = device, batch_size

    @property
    def tokens(self) -> int:
        return int((self.plain >= 0).sum() + (self.fim >= 0).sum())

    def rows(self, max_rows: int) -> int:
        """Rows evaluated with a `max_rows` cap per set (0 = no cap)."""
        cap = lambda n: min(n, max_rows) if max_rows > 0 else n          # noqa: E731
        return cap(len(self.plain)) + cap(len(self.fim))

    @torch.no_grad()
    def evaluate(self, model, max_rows: int = 0) -> dict:
        """Mean loss over all targets, bits per byte of the plain text, FIM middle loss.

        `max_rows` > 0 evaluates an evenly spread subset of each set (periodic checks)."""
        model.eval()
        plain_nll, plain_targets = self._nll(model, self._subset(self.plain, max_rows))
        fim_rows = self._subset(np.arange(len(self.fim)), max_rows)
        fim_nll, fim_targets = self._nll(model, self.fim[fim_rows])
        middle = torch.from_numpy(self.middle[fim_rows])
        text = self.nbytes[plain_targets.clamp(min=0)] * (plain_targets >= 0)
        valid_plain, valid_fim = plain_targets >= 0, fim_targets >= 0
        model.train()
        total = plain_nll[valid_plain].sum() + fim_nll[valid_fim].sum()
        return {
            "loss": float(total / (valid_plain.sum() + valid_fim.sum())),
            "bpb": float(plain_nll[text > 0].sum() / math.log(2) / text.sum()),
            "fim_middle_loss": float(fim_nll[middle].mean()) if middle.any() else float("nan"),
            "targets": int(valid_plain.sum() + valid_fim.sum()),
        }

    @staticmethod
    def _subset(rows: np.ndarray, max_rows: int) -> np.ndarray:
        if max_rows <= 0 or len(rows) <= max_rows:
            return rows
        return rows[np.linspace(0, len(rows) - 1, max_rows).round().astype(int)]

    def _nll(self, model, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-target negative log-likelihood in nats (B, T) on the CPU, and the targets."""
        nll, targets = [], []
        for i in range(0, len(rows), self.batch_size):
            x, y = _inputs_targets(rows[i:i + self.batch_size], self.device)
            with _autocast(self.device):
                logits = model(input_ids=x).logits
            loss = F.cross_entropy(logits.float().transpose(1, 2), y, ignore_index=-100, reduction="none")
            nll.append(loss.cpu())
            targets.append(y.cpu())
        return torch.cat(nll), torch.cat(targets)


# ---------------------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------------------

@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    row: int = 0                     # next row of the epoch
    tokens: int = 0                  # non-padding tokens trained on
    train_seconds: float = 0.0       # wall time in the loop: steps, data, periodic checks
    plan_seconds: float = 0.0        # loop time the --minutes budget allows (re-fitted at checks)
    best_loss: float = float("inf")
    best_step: int = 0
    history: list = field(default_factory=list)   # one dict per evaluation


def _autocast(device):
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(model, lr: float, weight_decay: float, device) -> torch.optim.Optimizer:
    """AdamW; matrices decay, norms do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = torch.device(device).type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)


def lr_factor(step: int, progress: float, warmup_steps: int, floor: float = 0.1) -> float:
    """Linear warm-up over steps, then cosine from 1 to `floor` over the run's progress (0..1)."""
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    cosine = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    return warm * cosine


class Budget:
    """When to stop: after `--max-steps`, or when `--minutes` of wall time (counted from the
    start of the command) are spent, less the time kept back for the final evaluation and
    the export. The cosine schedule follows whichever comes first; its time plan is re-fitted
    at every held-out check (and so, after `--resume`, to the new command's budget)."""

    def __init__(self, minutes: float | None, max_steps: int | None, started: float):
        self.deadline = started + minutes * 60 if minutes else None
        self.max_steps = max_steps
        self.reserve = 5.0

    def plan_reserve(self, eval_seconds: float, final_ratio: float) -> None:
        """Keep back 1.5× the estimated time of the final evaluation (`final_ratio` times the
        rows of a periodic one), plus 5 s for the export."""
        self.reserve = 5.0 + 1.5 * eval_seconds * final_ratio

    def seconds_left(self) -> float:
        return self.deadline - self.reserve - time.time() if self.deadline else float("inf")

    def progress(self, state: "TrainState") -> float:
        parts = [0.0]
        if self.deadline and state.plan_seconds:
            parts.append(state.train_seconds / state.plan_seconds)
        if self.max_steps:
            parts.append(state.step / self.max_steps)
        return max(parts)

    def done(self, state: "TrainState") -> bool:
        return self.progress(state) >= 1.0 or self.seconds_left() <= 0


class Trainer:
    """One training run: data, model, optimizer, the loop, checkpoints and the export."""

    def __init__(self, args: argparse.Namespace, corpus: Corpus, run_dir: Path, log):
        self.args, self.corpus, self.run_dir, self.log = args, corpus, run_dir, log
        self.device = torch.device(args.device)
        self.row_len = args.seq_len + 1
        self.config = hf_config(PRESETS[args.preset], corpus.tokenizer.get_vocab_size())
        torch.manual_seed(args.seed)
        self.model = build_model(self.config, args.experts).to(self.device)
        self.optimizer = make_optimizer(self.model, args.lr, args.weight_decay, self.device)
        self.balance = BalanceLoss(self.model, PRESETS[args.preset].experts_per_token)
        self.state = TrainState()
        self.best = None                       # state dict (CPU) of the best held-out loss
        self.heldout = HeldOut(corpus, self.row_len, self.device, args.batch_size)
        self.step_fn = torch.compile(self._loss) if args.compile else self._loss
        self.feeder = EpochFeeder(corpus, args.seed, self.row_len, args.fim_rate, args.data_workers)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # -- checkpoints -----------------------------------------------------------------
    def _resume_key(self) -> dict:
        keys = ("preset", "seq_len", "batch_size", "seed", "fim_rate", "vocab_size")
        return {k: getattr(self.args, k) for k in keys}

    def save_checkpoint(self) -> None:
        path = self.run_dir / "checkpoint.pt"
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "state": dataclasses.asdict(self.state), "best": self.best,
                    "key": self._resume_key()}, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)

    def load_checkpoint(self) -> None:
        path = self.run_dir / "checkpoint.pt"
        if not path.is_file():
            raise TrainError(f"--resume: no checkpoint at {path}")
        ckpt = torch.load(path, map_location=self.device, weights_only=False)
        if ckpt["key"] != self._resume_key():
            raise TrainError(f"--resume: the checkpoint was made with {ckpt['key']}, "
                             f"this command asks for {self._resume_key()}")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = TrainState(**ckpt["state"])
        self.best = ckpt["best"]
        self.log(f"resumed at step {self.state.step}, {self.state.tokens / 1e6:.2f}M tokens")

    # -- the loop ----------------------------------------------------------------------
    def _loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(objective, language-model loss): cross-entropy plus the expert balance term."""
        with _autocast(self.device):
            logits = self.model(input_ids=inputs).logits           # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        return loss + self.args.balance_coef * self.balance.pop().to(loss.device), loss.detach()

    def _batches(self):
        """Batches of rows from the current epoch and row on; `_step` advances the row."""
        B = self.args.batch_size
        while True:
            rows = self.feeder.get(self.state.epoch)
            if len(rows) < B:
                raise TrainError(f"the corpus gives {len(rows)} rows per epoch, fewer than "
                                 f"--batch-size {B}")
            while self.state.row + B <= len(rows):
                yield rows[self.state.row:self.state.row + B]
            self.state.epoch, self.state.row = self.state.epoch + 1, 0

    def run(self, budget: Budget) -> dict:
        """Train until the budget is spent, checking the held-out loss on the way; returns the
        figures of the best weights on every held-out row."""
        from tqdm import tqdm

        args = self.args
        if self.state.step == 0 or budget.deadline:
            self._evaluate(budget)              # also measures what the final check will cost
        bar = tqdm(total=args.max_steps, initial=self.state.step, unit="step", dynamic_ncols=True,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr)
        meter = {"tokens": 0, "steps": 0, "start": time.time(), "loss": None}
        last_eval, tick = self.state.train_seconds, time.time()
        for rows in self._batches():
            if budget.done(self.state):
                break
            self._step(rows, budget, meter)
            bar.update(1)
            if self.state.step % args.log_every == 0:
                bar.set_postfix(self._log_train(meter), refresh=False)
            self.state.train_seconds += time.time() - tick
            tick = time.time()
            if self.state.train_seconds - last_eval >= args.eval_every * 60:
                self._evaluate(budget)
                last_eval = self.state.train_seconds
                self.state.train_seconds += time.time() - tick
                tick = time.time()
        bar.close()
        self.feeder.close()
        if self.state.history[-1]["step"] != self.state.step:
            self._evaluate(budget)
        return self._finish()

    def _step(self, rows: np.ndarray, budget: Budget, meter: dict) -> None:
        """One optimizer step on a batch of rows (B, T+1)."""
        self._set_lr(budget)
        inputs, targets = _inputs_targets(rows, self.device)
        objective, loss = self.step_fn(inputs, targets)
        objective.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        n_tokens = int((rows[:, :-1] >= 0).sum())
        self.state.step += 1
        self.state.row += len(rows)
        self.state.tokens += n_tokens
        meter["tokens"] += n_tokens
        meter["steps"] += 1
        meter["loss"] = loss if meter["loss"] is None else meter["loss"] + loss

    def _log_train(self, meter: dict) -> dict:
        """Write a training record (the only host sync of the loop) and reset the meter."""
        now = time.time()
        record = {"step": self.state.step, "loss": round(float(meter["loss"]) / meter["steps"], 4),
                  "tok_s": round(meter["tokens"] / (now - meter["start"])),
                  "lr": round(self.optimizer.param_groups[0]["lr"], 6),
                  "max_expert_load": round(float(self.balance.max_load), 2),
                  "epoch": self.state.epoch, "tokens": self.state.tokens}
        self._write_log({"train": record})
        meter.update(tokens=0, steps=0, start=now, loss=None)
        return {k: record[k] for k in ("loss", "tok_s", "epoch")}

    def _set_lr(self, budget: Budget) -> None:
        lr = self.args.lr * lr_factor(self.state.step, budget.progress(self.state), self.args.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _evaluate(self, budget: Budget) -> None:
        """Periodic held-out check on a subset of rows; keeps the best model; checkpoints."""
        t0 = time.time()
        figures = self.heldout.evaluate(self.model, self.args.eval_rows)
        budget.plan_reserve(time.time() - t0, self.heldout.rows(self.args.final_eval_rows)
                            / self.heldout.rows(self.args.eval_rows))
        if budget.deadline:                     # the cosine ends where the time budget does
            self.state.plan_seconds = self.state.train_seconds + max(1.0, budget.seconds_left())
        record = {"step": self.state.step, "tokens": self.state.tokens,
                  "minutes": round(self.state.train_seconds / 60, 2), **figures}
        self.state.history.append(record)
        if figures["loss"] < self.state.best_loss:
            self.state.best_loss, self.state.best_step = figures["loss"], self.state.step
            self.best = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        self._write_log({"eval": record})
        left = budget.seconds_left()
        self.log(f"step {self.state.step}: held-out loss {figures['loss']:.3f}, "
                 f"{figures['bpb']:.3f} bits/byte, FIM middle loss {figures['fim_middle_loss']:.3f}"
                 + (f" ({left / 60:.1f} min left to train)" if math.isfinite(left) else ""))
        self.save_checkpoint()

    def _finish(self) -> dict:
        """Load the best weights and evaluate them on every held-out row."""
        self.model.load_state_dict(self.best)
        final = self.heldout.evaluate(self.model, self.args.final_eval_rows)
        self.log(f"best step {self.state.best_step}: held-out ({final['targets']} targets) "
                 f"{final['bpb']:.3f} bits/byte, loss {final['loss']:.3f}, "
                 f"FIM middle loss {final['fim_middle_loss']:.3f}")
        self._write_log({"final": {"step": self.state.best_step, **final}})
        return final

    def _write_log(self, record: dict) -> None:
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------------------
# Export: the Hugging Face folder (per-expert tensor names) and its model card
# ---------------------------------------------------------------------------------------

def export_state_dict(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """Tensors under DeepSeek's on-disk names, whatever layout transformers uses in memory:
    fused `experts.gate_up_proj` (E, 2I, d) / `experts.down_proj` (E, d, I) are split into
    `experts.{e}.{gate,up,down}_proj.weight`."""
    out, inter = {}, config["moe_intermediate_size"]
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu", torch.float32).contiguous()
        if name.endswith("experts.gate_up_proj"):
            base = name[: -len("gate_up_proj")]
            for e in range(tensor.shape[0]):
                out[f"{base}{e}.gate_proj.weight"] = tensor[e, :inter].clone()
                out[f"{base}{e}.up_proj.weight"] = tensor[e, inter:].clone()
        elif name.endswith("experts.down_proj"):
            base = name[: -len("down_proj")]
            for e in range(tensor.shape[0]):
                out[f"{base}{e}.down_proj.weight"] = tensor[e].clone()
        else:
            out[name] = tensor
    return dict(sorted(out.items()))


def export_model(state: dict, config: dict, corpus: Corpus, out: Path, card: str) -> None:
    """Write config.json, generation_config.json, model.safetensors, the tokenizer files and
    README.md (7 files) into `out`, replacing what was there."""
    from safetensors.torch import save_file

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "do_sample": False}
    (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    save_file(export_state_dict(state, config), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    for name in TOKENIZER_FILES:
        shutil.copyfile(corpus.root / name, tmp / name)
    (tmp / "README.md").write_text(card)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def model_card(trainer: Trainer, final: dict, command: str) -> str:
    """README.md of the model folder: data, license, command, tokens seen, curve, figures."""
    meta, args, cfg, state = trainer.corpus.meta, trainer.args, trainer.config, trainer.state
    tr, ho = meta["train"], meta["heldout"]
    data = (f"The `.py` files of the CPython {meta['python']} standard library (PSF License 2.0)"
            if meta.get("python") else f"The `.py` files under `{meta['source']}`")
    curve = "\n".join(
        f"| {h['step']} | {h['tokens'] / 1e6:.2f} | {h['minutes']:.1f} | {h['loss']:.3f} | "
        f"{h['bpb']:.3f} | {h['fim_middle_loss']:.3f} |" for h in _thin(state.history, 12))
    return f"""---
license: mit
library_name: transformers
pipeline_tag: text-generation
tags: [code, fill-in-the-middle, deepseek_v2, latent]
heldout_bpb: {final['bpb']:.4f}
heldout_fim_middle_loss: {final['fim_middle_loss']:.4f}
tokens_seen: {state.tokens}
parameters: {trainer.n_params}
---

# Latent bundled coder

A {trainer.n_params / 1e6:.2f}M-parameter DeepSeek-V2-architecture model that ships with
Latent so a fresh clone completes code with no download. It is a toy next to DeepSeek-Coder-V2-Lite:
it knows the idioms of Python's standard library and little else. It exists so that the real
loading and serving path (MLA latent cache, MoE dispatch, FIM prompts) always runs.

## Architecture
DeepSeek-V2 (`model_type` `deepseek_v2`), fp32, {cfg['num_hidden_layers']} layers, hidden
{cfg['hidden_size']}, {cfg['num_attention_heads']} heads. MLA: q_lora_rank {cfg['q_lora_rank']},
kv_lora_rank {cfg['kv_lora_rank']} (the cached latent, smaller than the hidden size),
qk_nope {cfg['qk_nope_head_dim']} + qk_rope {cfg['qk_rope_head_dim']}, v_head {cfg['v_head_dim']}.
MoE from layer {cfg['first_k_dense_replace']} on: {cfg['n_routed_experts']} routed experts
(top-{cfg['num_experts_per_tok']}, greedy softmax, no renormalisation) + {cfg['n_shared_experts']}
shared expert of width {cfg['moe_intermediate_size']}; the first layer is a dense SwiGLU of width
{cfg['intermediate_size']}. Plain RoPE (theta 10000), max positions {cfg['max_position_embeddings']}
(trained at {args.seq_len}). Untied embeddings. Tensors are stored per expert, as in DeepSeek's
checkpoints.

## Tokenizer
Byte-level BPE, {cfg['vocab_size']} entries (trained with `tokenizers` on the training split),
GPT-2 pre-tokenizer regex, no prefix space; every file round-trips byte for byte. The
DeepSeek-Coder special tokens are single tokens: `{BOS}` 0, `{EOS}` 1, `{FIM_BEGIN}` 2,
`{FIM_HOLE}` 3, `{FIM_END}` 4. `AutoTokenizer` prepends BOS (`add_bos_token`).

## Data
{data}: {tr['files']} training files ({tr['bytes'] / 1e6:.1f} MB, {tr['tokens'] / 1e6:.2f}M
tokens) and {ho['files']} held-out files ({ho['bytes'] / 1e6:.2f} MB, {ho['tokens'] / 1e3:.0f}k tokens),
split by a stable hash of each file's path (sha256, ≈2 %); {len(meta['skipped_not_utf8'])} files
that are not UTF-8 are skipped. The weights are released under the MIT license, like Latent;
the training data is © Python Software Foundation, PSF License 2.0.

## Objective
Windows of {args.seq_len} tokens at a phase re-drawn every epoch. {args.fim_rate:.0%} of them in
PSM form, `BOS fim_begin prefix fim_hole suffix fim_end middle EOS`, with the three pieces
tokenised separately as a prompt is; holes open uniformly at random (30 %), at the rest of a
line (20 %), inside a line (15 %), over whole lines from column 0 or the indentation (25 %),
and over the body of a block just opened by a colon (10 %). The others are plain text.
Packed into rows without splitting a sample. Loss on every token, plus a 0.01 × expert balance
loss.

## Training
```
{command}
```
Device {args.device}, seed {args.seed}, batch {args.batch_size} × {args.seq_len}, AdamW
(lr {args.lr}, betas 0.9/0.95, weight decay {args.weight_decay}), {args.warmup_steps} warm-up
steps then cosine to 10 %, gradient clipping {args.clip}. {state.step} steps,
**{state.tokens / 1e6:.1f}M tokens seen** ({state.epoch} full epochs), {state.train_seconds / 60:.1f}
minutes ({state.tokens / max(state.train_seconds, 1):,.0f} tokens/s on average, checks included).
The weights are those of step {state.best_step}, the best held-out loss. The curve's held-out
figures come from {_rows_note(args.eval_rows)}.

| step | tokens (M) | minutes | held-out loss | bits/byte | FIM middle loss |
|---|---|---|---|---|---|
{curve}

## Held-out figures ({_rows_note(args.final_eval_rows)}: {final['targets']:,} targets)
- **{final['bpb']:.3f} bits per byte** on plain text (text tokens only),
- {final['fim_middle_loss']:.3f} nats per middle token on PSM samples,
- {final['loss']:.3f} nats per token over both.

Single-line HumanEval infilling: see `docs/benchmarks.md` (`benchmarks/humaneval_infill.py`).
"""


def _rows_note(max_rows: int) -> str:
    return f"{max_rows} evenly spread rows of each held-out set" if max_rows else "every held-out row"


def _thin(history: list[dict], n: int) -> list[dict]:
    if len(history) <= n:
        return history
    picks = np.linspace(0, len(history) - 1, n).round().astype(int)
    return [history[i] for i in sorted(set(picks.tolist()))]


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="latent train",
        description="Train Latent's bundled DeepSeek-V2-architecture coder on the standard library.")
    p.add_argument("--out", type=Path, default=Path("runs/bundled"),
                   help="run directory: corpus/, checkpoint.pt, log.jsonl, model/ (default %(default)s)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="bundled", help="model shape")
    p.add_argument("--minutes", type=float, help="time budget of the run, evaluation and export included "
                   "(default 30 when --max-steps is not given)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast)")
    p.add_argument("--batch-size", type=int, help="rows per step (default 8 on CPU, 128 on CUDA)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per row (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, help="peak learning rate (default 2e-3 on CPU, 3e-3 on CUDA)")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping")
    p.add_argument("--fim-rate", type=float, default=0.5, help="share of samples in PSM form")
    p.add_argument("--balance-coef", type=float, default=0.01, help="expert balance loss weight")
    p.add_argument("--eval-every", type=float, help="minutes between held-out checks "
                   "(default: a tenth of --minutes, 0.5–5)")
    p.add_argument("--eval-rows", type=int, help="rows of each held-out set in periodic checks, "
                   "0 = all (default 24 on CPU, all on CUDA)")
    p.add_argument("--final-eval-rows", type=int, help="rows of each held-out set in the final "
                   "check of the best weights, 0 = all (default 96 on CPU, all on CUDA)")
    p.add_argument("--log-every", type=int, default=10, help="steps between log lines")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--data-workers", type=int, help="processes building epochs ahead, 0 = one "
                   "background thread (default 0 on CPU, up to 8 on CUDA)")
    p.add_argument("--experts", default="auto", choices=["auto", "eager", "grouped_mm"],
                   help="transformers' experts implementation (default: its own choice)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    corpus = p.add_argument_group("corpus")
    corpus.add_argument("--corpus-dir", type=Path, help="train on the .py files under this folder "
                        "instead of the running interpreter's standard library")
    corpus.add_argument("--corpus-cache", type=Path, help="a prepared corpus folder (tokenizer + ids), "
                        "e.g. made on another machine with --prepare-only")
    corpus.add_argument("--vocab-size", type=int, default=8192, help="BPE entries, specials included")
    corpus.add_argument("--prepare-only", action="store_true",
                        help="write OUT/corpus (tokenizer + token ids) and stop")
    args = p.parse_args(argv)
    _fill_defaults(args)
    return args


def _fill_defaults(args: argparse.Namespace) -> None:
    cuda = args.device.startswith("cuda")
    if args.minutes is None and args.max_steps is None:
        args.minutes = 30.0
    if args.batch_size is None:
        args.batch_size = 128 if cuda else 8
    if args.lr is None:
        args.lr = 3e-3 if cuda else 2e-3
    if args.eval_rows is None:
        args.eval_rows = 0 if cuda else 24
    if args.final_eval_rows is None:
        args.final_eval_rows = 0 if cuda else 96
    if args.data_workers is None:
        args.data_workers = min(8, max(1, (os.cpu_count() or 2) - 4)) if cuda else 0
    if args.eval_every is None:
        args.eval_every = min(5.0, max(0.5, (args.minutes or 30.0) / 10))


def _check_args(args: argparse.Namespace) -> None:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device is available to this torch")
    if not args.device.startswith(("cpu", "cuda")):
        raise TrainError(f"--device {args.device}: use cpu or cuda")
    if args.vocab_size > 65535 or args.vocab_size < 300:
        raise TrainError("--vocab-size must lie between 300 and 65535")
    if args.seq_len + 1 > MAX_POSITIONS or args.seq_len < 32:
        raise TrainError(f"--seq-len must lie between 32 and {MAX_POSITIONS - 1}")
    if args.minutes is not None and args.minutes <= 0 or args.max_steps is not None and args.max_steps <= 0:
        raise TrainError("--minutes and --max-steps must be positive")


def get_corpus(args: argparse.Namespace, log) -> Corpus:
    """The corpus cache to train on: --corpus-cache, else OUT/corpus (made if missing)."""
    if args.corpus_cache:
        corpus = load_corpus(args.corpus_cache)
    elif (args.out / "corpus" / "corpus.npz").is_file() and not args.prepare_only:
        corpus = load_corpus(args.out / "corpus")
    else:
        source = args.corpus_dir or stdlib_root()
        if not source.is_dir():
            raise TrainError(f"corpus folder {source} does not exist")
        return prepare_corpus(source, args.out / "corpus", args.vocab_size, log)
    if corpus.tokenizer.get_vocab_size() != args.vocab_size:
        args.vocab_size = corpus.tokenizer.get_vocab_size()
    log(f"corpus: {_describe(corpus.meta)} (cache {corpus.root})")
    return corpus


def train(args: argparse.Namespace, command: str, log=print) -> int:
    _check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    corpus = get_corpus(args, log)
    if args.prepare_only:
        return 0
    trainer = Trainer(args, corpus, args.out, log)
    if args.resume:
        trainer.load_checkpoint()
    log(f"model: preset {args.preset}, {trainer.n_params:,} parameters; device {args.device}; "
        f"batch {args.batch_size} × {args.seq_len}; held-out {trainer.heldout.tokens:,} tokens; "
        f"start-up {time.time() - started:.0f} s")
    final = trainer.run(Budget(args.minutes, args.max_steps, started))
    model_dir = args.out / "model"
    export_model(trainer.best, trainer.config, corpus, model_dir, model_card(trainer, final, command))
    log(f"wrote {model_dir} ({trainer.state.tokens / 1e6:.2f}M tokens seen, "
        f"{trainer.state.step} steps, {(time.time() - started) / 60:.1f} min)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`latent train` / `python -m model.train`; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(argv)
    except SystemExit as e:                      # --help, or a usage error already printed
        return int(e.code or 0)
    command = "latent train " + shlex.join(argv) if argv else "latent train"
    try:
        return train(args, command.strip())
    except TrainError as e:
        print(f"latent train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("latent train: interrupted (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
