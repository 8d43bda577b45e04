"""Training samples: windows of a file, some cut into prefix / middle / suffix and laid out
prefix-first (PSM) or suffix-first (SPM), packed into rows; the rows of an epoch; the feeder
that builds epochs ahead of the training loop.

The two layouts are `model.fim.DEEPSEEK.fill(prefix, suffix, layout)` followed by the middle
and EOS, as ids (tokens never cross a special token, so this is the tokenizer's encoding of
that text, each piece on its own):

    psm   BOS fim_begin prefix fim_hole suffix fim_end middle EOS
    spm   BOS fim_begin fim_hole suffix fim_end prefix middle EOS
"""
from __future__ import annotations

import functools
import itertools
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from model.train.corpus import BOS_ID, EOS_ID, FIM_BEGIN_ID, FIM_END_ID, FIM_HOLE_ID, Corpus, load_corpus

PSM_IDS = 5        # BOS fim_begin fim_hole fim_end EOS: the ids a FIM sample (either layout) adds
FIM_SLACK = 8      # room for the extra tokens a window takes when re-tokenised in three pieces
PART_TOKENS = 8_000_000   # training tokens per part of an epoch (see `epoch_parts`)

# Where the hole opens. Besides uniformly random spans (Bavarian et al. 2022), the places
# an editor asks from: the rest of a line, a span inside a line, whole lines starting at
# column 0 or after the indentation, and the body of a block just opened by a colon.
HOLE_KINDS = {"random": 0.30, "line_rest": 0.20, "mid_line": 0.15, "lines": 0.25, "block": 0.10}


def trained_layouts(fim_rate: float, spm_rate: float) -> tuple[str, ...]:
    """The FIM layouts a run with these rates trains on, as config.json declares them."""
    if fim_rate <= 0:
        return ()
    return tuple(layout for layout, share in (("psm", 1 - spm_rate), ("spm", spm_rate)) if share > 0)


# -- holes --------------------------------------------------------------------------------

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


# -- samples and rows ---------------------------------------------------------------------

def _snap(data: bytes, pos: int) -> int:
    """Move a byte offset forward to the start of a UTF-8 character."""
    while pos < len(data) and (data[pos] & 0xC0) == 0x80:
        pos += 1
    return pos


def fim_ids(prefix: list[int], suffix: list[int], middle: list[int], row_len: int,
            layout: str = "psm") -> tuple[list[int], int]:
    """A FIM sample in `layout` ("psm" or "spm", see the module docstring) trimmed to fit one
    row — the prefix loses its oldest tokens first, as a prompt builder would crop it, then
    the suffix its end — and the index of its first middle id."""
    excess = len(prefix) + len(suffix) + len(middle) + PSM_IDS - row_len
    if excess > 0:
        cut = min(excess, len(prefix))
        prefix, excess = prefix[cut:], excess - cut
        suffix = suffix[:max(0, len(suffix) - excess)]
    if layout == "spm":
        head = [BOS_ID, FIM_BEGIN_ID, FIM_HOLE_ID, *suffix, FIM_END_ID, *prefix]
    else:
        head = [BOS_ID, FIM_BEGIN_ID, *prefix, FIM_HOLE_ID, *suffix, FIM_END_ID]
    return [*head, *middle, EOS_ID], len(head)


def make_samples(corpus: Corpus, files: list[int], rng: np.random.Generator,
                 row_len: int, fim_rate: float, spm_rate: float = 0.5) -> list[list[int]]:
    """Cut each file into windows at a random phase; a `fim_rate` share of windows become
    FIM samples (their text split at a hole and re-tokenised piece by piece, as the engine
    tokenises a prompt), `spm_rate` of those suffix-first, the rest prefix-first; the other
    windows are plain `BOS text [EOS at the end of a file]` samples."""
    return marked_samples(corpus, files, rng, row_len, fim_rate, spm_rate)[0]


def marked_samples(corpus: Corpus, files: list[int], rng: np.random.Generator, row_len: int,
                   fim_rate: float, spm_rate: float = 0.5) -> tuple[list[list[int]], list[int | None]]:
    """`make_samples`, and for each sample the index of its first middle id (None: plain)."""
    width = row_len - PSM_IDS - FIM_SLACK
    samples, pieces, fim_at, layouts = [], [], [], []
    for f in files:
        ids, n = corpus.ids[f], len(corpus.ids[f])
        phase = int(rng.integers(0, width)) if n > width else 0
        cuts = sorted({0, n, *range(phase, n, width)})
        ends = np.concatenate([[0], np.cumsum(corpus.nbytes[ids])])
        for a, b in itertools.pairwise(cuts):
            data = corpus.texts[f]
            text = data[_snap(data, int(ends[a])):_snap(data, int(ends[b]))].decode("utf-8")
            if rng.random() < fim_rate and len(text.strip()) >= 8:
                h0, h1 = choose_hole(text, rng)
                fim_at.append(len(samples))
                layouts.append("spm" if rng.random() < spm_rate else "psm")
                pieces += [text[:h0], text[h1:], text[h0:h1]]
                samples.append(None)
            else:
                samples.append([BOS_ID, *ids[a:b].tolist(), *([EOS_ID] if b == n else [])])
    encoded = corpus.tokenizer.encode_batch(pieces, add_special_tokens=False) if pieces else []
    middles: list[int | None] = [None] * len(samples)
    for k, at in enumerate(fim_at):
        p, s, m = (encoded[3 * k + j].ids for j in range(3))
        samples[at], middles[at] = fim_ids(p, s, m, row_len, layouts[k])
    return samples, middles


def pack_rows(samples: list[list[int]], row_len: int, open_limit: int = 64) -> np.ndarray:
    """Pack whole samples into rows of `row_len` ids, first fit over the latest `open_limit`
    rows with room; -1 marks padding.

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


def epoch_parts(corpus: Corpus) -> int:
    """How many parts an epoch is built in: one per PART_TOKENS training tokens, so the first
    rows are ready soon and worker processes build the parts of one epoch side by side."""
    tokens = sum(len(corpus.ids[f]) for f in corpus.files(heldout=False))
    return max(1, tokens // PART_TOKENS)


def epoch_rows(corpus: Corpus, seed: int, chunk: int, row_len: int, fim_rate: float,
               spm_rate: float = 0.5, parts: int = 1) -> np.ndarray:
    """The shuffled training rows of part `chunk % parts` of epoch `chunk // parts`: the files
    are shuffled once per epoch and dealt to its parts; windows, holes and layouts are re-drawn
    every epoch."""
    epoch, part = divmod(chunk, parts)
    files = corpus.files(heldout=False)
    order = np.random.default_rng([seed, epoch]).permutation(len(files))
    files = [files[i] for i in order[part::parts]]
    rng = np.random.default_rng([seed, epoch, part])
    rows = pack_rows(make_samples(corpus, files, rng, row_len, fim_rate, spm_rate), row_len)
    return rows[rng.permutation(len(rows))]


# -- the feeder ---------------------------------------------------------------------------

def _start_worker() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"   # one core per worker process
    for sig in (signal.SIGINT, signal.SIGTERM):       # a stop is the training process's to handle:
        signal.signal(sig, signal.SIG_IGN)            # it shuts the pool down


@functools.lru_cache(maxsize=1)
def _open_corpus(cache: Path) -> Corpus:
    """The corpus a worker process builds from: its cache folder, read once per process."""
    return load_corpus(cache)


def _build_epoch(cache: Path, seed: int, row_len: int, fim_rate: float, spm_rate: float, parts: int,
                 chunk: int) -> np.ndarray:
    """`epoch_rows` in a worker process, which is handed the corpus cache folder, not the corpus."""
    return epoch_rows(_open_corpus(cache), seed, chunk, row_len, fim_rate, spm_rate, parts)


class EpochFeeder:
    """Builds epochs (or their parts: `get(chunk)` with `parts` > 1) ahead of the training loop.

    With `workers` = 0, one background thread (CPU training: the cores are busy training).
    With `workers` > 0, that many forked processes, each building a whole epoch (GPU
    training: an epoch of the tiny model trains in seconds, about as long as one host core
    takes to re-tokenise its FIM samples). A worker reads the corpus from its cache folder
    and uses only numpy and tokenizers."""

    def __init__(self, corpus: Corpus, seed: int, row_len: int, fim_rate: float, workers: int,
                 spm_rate: float = 0.5, parts: int = 1):
        if workers > 0:
            import multiprocessing
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                            initializer=_start_worker)
        else:
            self.pool = ThreadPoolExecutor(max_workers=1)
        self.ahead = max(1, workers)
        self.corpus, self.seed, self.row_len, self.fim_rate = corpus, seed, row_len, fim_rate
        self.spm_rate, self.parts = spm_rate, parts
        self.pending: dict = {}

    def get(self, epoch: int) -> np.ndarray:
        """The rows of `epoch` (built here, with every core, if not ready-made), then keeps the
        next `ahead` epochs in the making. Should a worker fail, later epochs are built by a
        background thread instead: a run is not lost to its data feeder."""
        job = self.pending.pop(epoch, None)
        try:
            rows = job.result() if job else self._build(epoch)
        except Exception as e:  # BrokenProcessPool and the like, never seen in a thread
            if isinstance(self.pool, ThreadPoolExecutor):
                raise
            print(f"latent train: epoch builder failed ({type(e).__name__}: {e}); "
                  f"building epochs in a thread", file=sys.stderr)
            self.close()
            self.pool, self.ahead, self.pending = ThreadPoolExecutor(max_workers=1), 1, {}
            rows = self._build(epoch)
        for e in range(epoch + 1, epoch + self.ahead + 1):
            if e not in self.pending:
                self.pending[e] = self._submit(e)
        return rows

    def close(self) -> None:
        """Stop building: a part being built is finished first (seconds), so the pool's
        processes exit cleanly."""
        self.pool.shutdown(wait=isinstance(self.pool, ProcessPoolExecutor), cancel_futures=True)

    def _build(self, epoch: int) -> np.ndarray:
        return epoch_rows(self.corpus, self.seed, epoch, self.row_len, self.fim_rate, self.spm_rate, self.parts)

    def _submit(self, epoch: int):
        if isinstance(self.pool, ThreadPoolExecutor):
            return self.pool.submit(self._build, epoch)
        return self.pool.submit(_build_epoch, self.corpus.root, self.seed, self.row_len, self.fim_rate,
                                self.spm_rate, self.parts, epoch)
