"""Where `latent adapt` keeps a workspace's adapted model, and which one a file gets.

Each workspace (a folder, by its resolved path) has its own folder under
`~/.cache/latent/adapt/` (XDG_CACHE_HOME; or `$LATENT_ADAPT_DIR`), named by a hash of the path and readable by
its user only:

    workspace.json    the workspace's path, the base model it was adapted from, the summary
    model/            the adapted model (a Hugging Face folder like the bundled one)
    run/, files/      while adapting: the run's checkpoint and corpus, the cleaned files

A document gets the adapted model of the nearest workspace above it whose base is the model
the user would otherwise get (an adapted copy of another model is never swapped in). Light:
no torch, so the server can ask for every document.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

NOTE = "workspace.json"
# Which weights `latent adapt --train` may teach (model/train/adapt.py's TRAINABLE), the default first
TRAINED = ("all", "lora", "blocks", "attention", "top")


def adapt_root() -> Path:
    if os.environ.get("LATENT_ADAPT_DIR"):
        return Path(os.environ["LATENT_ADAPT_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "latent" / "adapt"


@dataclass(frozen=True)
class Workspace:
    root: Path            # the workspace folder, resolved

    @property
    def home(self) -> Path:
        return adapt_root() / hashlib.sha256(str(self.root).encode()).hexdigest()[:16]

    @property
    def model_dir(self) -> Path:
        return self.home / "model"

    def note(self) -> dict:
        try:
            note = json.loads((self.home / NOTE).read_text())
        except (OSError, ValueError):
            return {}
        return note if isinstance(note, dict) and note.get("workspace") == str(self.root) else {}

    def adapted(self) -> bool:
        """A finished adapted model is there (and the folder is this workspace's)."""
        return (self.model_dir / "config.json").is_file() and bool(self.note().get("summary"))

    def forget(self) -> bool:
        """Remove everything kept for this workspace; whether there was anything."""
        if not self.home.exists():
            return False
        shutil.rmtree(self.home)
        return True


def workspace(folder: str | Path) -> Workspace:
    return Workspace(Path(folder).expanduser().resolve())


def base_identity(model_dir: Path) -> str:
    """What names a base model: a hash of its config and weights (read once per process while
    the files stay as they are)."""
    files = sorted(p for p in Path(model_dir).glob("*") if p.name == "config.json" or p.suffix == ".safetensors")
    return _content_hash(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


@functools.lru_cache(maxsize=8)
def _content_hash(files: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for name, _size, _mtime in files:
        h.update(Path(name).name.encode())
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def adapted_for(path: str | Path, base_dir: Path) -> Workspace | None:
    """The workspace whose adapted model a document at `path` (a file or folder) gets when the
    user's model is `base_dir`: the nearest folder above it with one adapted from that base."""
    start = Path(path).expanduser()
    try:
        start = start.resolve()
    except OSError:
        return None
    if not adapt_root().is_dir():
        return None
    identity = None
    for folder in (start, *start.parents):
        candidate = Workspace(folder)
        if not candidate.adapted():
            continue
        identity = identity or base_identity(base_dir)
        if candidate.note().get("base_identity") == identity:
            return candidate
    return None
