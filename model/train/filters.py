"""Which `.py` files the corpus keeps: per-file checks, exact and near duplicates, and overlap
with the evaluation set.

Per file, in this order (the first that fails names the reason a file is dropped):

    not_utf8        the bytes do not decode as UTF-8
    too_small       under MIN_BYTES bytes or MIN_LINES non-blank lines (empty __init__.py …)
    too_large       over MAX_BYTES bytes
    generated       a "generated" / "do not edit" marker in the first HEADER_LINES lines
    long_lines      a line over MAX_LINE characters, or a mean line length over MAX_MEAN_LINE
    literal_table   under MIN_ALNUM letters and digits per character, or (from 100 lines on)
                    more than MAX_DATA_LINES of the non-blank lines made only of literals
    exact_duplicate the same bytes as a file kept before (sha256)
    humaneval       ≥ OVERLAP_LINES consecutive non-trivial normalised lines in common with a
                    HumanEval prompt or solution (the benchmark must not be in the training data)
    near_duplicate  estimated Jaccard similarity ≥ NEAR_DUP_JACCARD with a file kept before,
                    over the sets of SHINGLE_LINES-line shingles of normalised lines (MinHash,
                    NUM_PERM permutations, LSH in BANDS bands; see `NearDuplicates`)

Files are seen in a fixed order, so the first copy of a duplicate is the one kept.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

import numpy as np

MIN_BYTES, MIN_LINES = 64, 3
MAX_BYTES = 1_000_000
HEADER_LINES = 30
MAX_LINE, MAX_MEAN_LINE = 1000, 100
MIN_ALNUM, MAX_DATA_LINES = 0.25, 0.5
OVERLAP_LINES = 4
SHINGLE_LINES, NUM_PERM, BANDS, NEAR_DUP_JACCARD = 3, 128, 16, 0.85

REASONS = ("not_utf8", "too_small", "too_large", "generated", "long_lines", "literal_table",
           "exact_duplicate", "humaneval", "near_duplicate")

_GENERATED = re.compile(
    r"auto-?generated|generated (by|from|with|using)|do not (edit|modify)|@generated|"
    r"code generated|this file (is|was) generated|generated file|automatically generated",
    re.IGNORECASE)
# A line of data: numbers, string literals, and the punctuation between them.
_DATA_LINE = re.compile(r"""^[\s\[\](){},:;+\-.\deExXa-fA-FjJLlUu]*$|^\s*(?:[rbuRBU]?(?:"[^"]*"|'[^']*')\s*[,:]?\s*)+[\])}]*,?\s*$""")


def file_problem(data: bytes) -> str | None:
    """The first per-file reason to drop `data`, or None to keep it (duplicates aside)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "not_utf8"
    lines = text.splitlines()
    content = [line for line in lines if line.strip()]
    if len(data) < MIN_BYTES or len(content) < MIN_LINES:
        return "too_small"
    if len(data) > MAX_BYTES:
        return "too_large"
    if _GENERATED.search("\n".join(lines[:HEADER_LINES])):
        return "generated"
    if max(map(len, lines)) > MAX_LINE or len(text) / max(len(lines), 1) > MAX_MEAN_LINE:
        return "long_lines"
    alnum = sum(c.isalnum() for c in text) / len(text)
    if alnum < MIN_ALNUM:
        return "literal_table"
    if len(content) >= 100 and sum(bool(_DATA_LINE.match(line)) for line in content) > MAX_DATA_LINES * len(content):
        return "literal_table"
    return None


# -- overlap with HumanEval -------------------------------------------------------------

def normalised_lines(text: str) -> list[str]:
    """Lines with their whitespace collapsed, blank lines dropped."""
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def _trivial(line: str) -> bool:
    """Lines any program has: too short, a lone keyword, a bracket, a docstring quote."""
    return len(line) < 8 or line in ("else:", "try:", "finally:", "pass", "return", "break",
                                     "continue", '"""', "'''", "return True", "return False",
                                     "return None", "return result", "return 0")


def line_windows(text: str, n: int = OVERLAP_LINES) -> set[bytes]:
    """Hashes of every run of `n` consecutive non-trivial normalised lines."""
    lines = [line for line in normalised_lines(text) if not _trivial(line)]
    return {hashlib.blake2b("\n".join(lines[i:i + n]).encode(), digest_size=8).digest()
            for i in range(len(lines) - n + 1)}


WINDOWS_FILE = Path(__file__).with_name("humaneval_windows.bin")   # Overlap.humaneval(...).save()


class Overlap:
    """The line windows of an evaluation set; `hits(text)` tells whether a file shares one."""

    def __init__(self, texts):
        self.windows: set[bytes] = set()
        for text in texts:
            self.windows |= line_windows(text)

    @classmethod
    def humaneval(cls, folder: Path) -> "Overlap":
        """Every prompt, suffix and solution of the HumanEval infilling files in `folder`, each
        problem also rebuilt whole (prompt + solution + suffix)."""
        texts = []
        for path in sorted(folder.glob("*.jsonl.gz")):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                for line in f:
                    item = json.loads(line)
                    parts = [item.get(k, "") for k in ("prompt", "canonical_solution", "suffix")]
                    texts += [*parts, "".join(parts)]
        return cls(texts)

    @classmethod
    def load(cls, path: Path = WINDOWS_FILE) -> "Overlap":
        """Windows saved by `save`: the committed ones of HumanEval infilling by default, so a
        checkout builds the same corpus without the benchmark's files."""
        overlap, data = cls([]), path.read_bytes()
        overlap.windows = {data[i:i + 8] for i in range(0, len(data), 8)}
        return overlap

    def save(self, path: Path = WINDOWS_FILE) -> None:
        path.write_bytes(b"".join(sorted(self.windows)))

    def hits(self, text: str) -> bool:
        return not self.windows.isdisjoint(line_windows(text))


# -- near duplicates: MinHash + LSH -------------------------------------------------------

_PRIME = (1 << 31) - 1          # hashes and permutation coefficients stay below 2^31: a·h + b < 2^62


def shingles(text: str, k: int = SHINGLE_LINES) -> np.ndarray:
    """31-bit hashes of the distinct runs of `k` consecutive normalised lines."""
    lines = normalised_lines(text)
    runs = {"\n".join(lines[i:i + k]) for i in range(max(1, len(lines) - k + 1))}
    return np.array([int.from_bytes(hashlib.blake2b(r.encode(), digest_size=4).digest(), "little") % _PRIME
                     for r in runs], dtype=np.uint64)


class NearDuplicates:
    """MinHash signatures of the files kept so far, bucketed by LSH bands.

    A signature holds, for NUM_PERM random hash functions h → (a·h + b) mod p, the minimum over
    a file's shingles; two files agree on one value with probability equal to the Jaccard
    similarity of their shingle sets. Files whose signatures agree on every row of at least
    one of BANDS bands (NUM_PERM / BANDS rows each) are candidates — at 16 × 8 a pair at
    Jaccard 0.85 becomes one with probability 0.994, a pair at 0.5 with 0.06 — and a candidate
    is a duplicate when the share of equal values (the Jaccard estimate) is ≥ `threshold`.
    """

    def __init__(self, threshold: float = NEAR_DUP_JACCARD, num_perm: int = NUM_PERM,
                 bands: int = BANDS, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, _PRIME, size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, _PRIME, size=num_perm, dtype=np.uint64)
        self.threshold, self.bands, self.rows = threshold, bands, num_perm // bands
        self.buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
        self.signatures: list[np.ndarray] = []

    def signature(self, text: str) -> np.ndarray:
        h = shingles(text)
        return ((h[None, :] * self.a[:, None] + self.b[:, None]) % _PRIME).min(axis=1)   # (num_perm,)

    def similar(self, sig: np.ndarray) -> float:
        """The highest estimated Jaccard similarity with a candidate among the kept files."""
        best = 0.0
        for band, key in enumerate(self._keys(sig)):
            for other in self.buckets[band].get(key, ()):
                best = max(best, float((self.signatures[other] == sig).mean()))
        return best

    def check_and_add(self, text: str) -> bool:
        """True if `text` nearly duplicates a kept file; otherwise keep it and return False."""
        sig = self.signature(text)
        if self.similar(sig) >= self.threshold:
            return True
        index = len(self.signatures)
        self.signatures.append(sig)
        for band, key in enumerate(self._keys(sig)):
            self.buckets[band].setdefault(key, []).append(index)
        return False

    def _keys(self, sig: np.ndarray):
        for band in range(self.bands):
            yield sig[band * self.rows:(band + 1) * self.rows].tobytes()
