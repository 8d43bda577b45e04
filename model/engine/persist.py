"""Keeping the latent cache across restarts: the daemon saves its hottest entries at exit.

A saved file is only valid for the same weights, dtype and quantization: `fingerprint` hashes
them, and `load` ignores a file whose fingerprint or row dtype differs (or that cannot be
read) — a stale cache is never an error, just an empty start. A cache is kept only where no
other user can plant or read it (private_files.py): `save` and `load` raise PermissionError, one
sentence, for a folder others can write, and `load` for a file that is not this user's alone.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import msgpack
import torch

from ..private_files import read_private, unsafe_folder, write_private
from .radix import LatentCache

VERSION = 1


def fingerprint(model_dir: Path | None, dtype: str, quantize: str | None) -> str:
    """Hashes config.json and, per weights file, its size and last megabyte."""
    h = hashlib.sha256(f"{dtype}|{quantize}|{model_dir}".encode())
    if model_dir is not None:
        h.update((Path(model_dir) / "config.json").read_bytes())
        for f in sorted(Path(model_dir).glob("*.safetensors")):
            size = f.stat().st_size
            with open(f, "rb") as handle:
                handle.seek(max(0, size - (1 << 20)))
                h.update(f"{f.name}:{size}".encode() + handle.read())
    return h.hexdigest()


def save(cache: LatentCache, path: Path, stamp: str, row_dtype: torch.dtype, max_bytes: int) -> int:
    """Write the most recently used cached sequences (0600, atomically); returns the tokens
    saved, a shared prefix counted once (as `load` counts what it restores)."""
    _check_folder(path)
    entries = cache.hottest(max_bytes)
    payload = {
        "version": VERSION, "fingerprint": stamp, "dtype": str(row_dtype),
        "entries": [{"tokens": tokens, "shape": list(rows.shape),
                     "rows": rows.cpu().contiguous().view(torch.uint8).numpy().tobytes()}
                    for tokens, rows in entries],
    }
    data = msgpack.packb(payload, use_bin_type=True)
    assert isinstance(data, bytes), "packb returns the bytes (its Packer resets after each object)"
    write_private(Path(path), data)
    return _distinct_tokens(tokens for tokens, _ in entries)


def _distinct_tokens(sequences) -> int:
    """Tokens of the sequences with shared prefixes counted once, as the cache holds them."""
    root: dict = {}
    count = 0
    for tokens in sequences:
        node = root
        for token in tokens:
            if token not in node:
                node[token] = {}
                count += 1
            node = node[token]
    return count


def load(cache: LatentCache, path: Path, stamp: str, row_dtype: torch.dtype, device: torch.device) -> int:
    """Restore a saved cache made with the same weights; returns tokens restored (0: none)."""
    _check_folder(path)
    try:
        payload = msgpack.unpackb(read_private(Path(path)), raw=False)
    except PermissionError:
        raise
    except (OSError, ValueError, msgpack.UnpackException):
        return 0
    if not isinstance(payload, dict) or payload.get("fingerprint") != stamp \
            or payload.get("dtype") != str(row_dtype):
        return 0
    restored = 0
    for entry in payload.get("entries", []):
        rows = torch.frombuffer(bytearray(entry["rows"]), dtype=torch.uint8)
        rows = rows.view(row_dtype).reshape(entry["shape"]).to(device)
        restored += cache.insert(entry["tokens"], rows)
    return restored


def _check_folder(path: Path) -> None:
    problem = unsafe_folder(Path(path).parent)
    if problem:
        raise PermissionError(problem)
