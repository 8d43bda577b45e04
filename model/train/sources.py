"""Where the corpus comes from: the pinned manifest, pip downloads into a cache, and the
archives' metadata and `.py` files; what is held out for evaluation.

A distribution is fetched with the ordinary client, `pip download --no-deps`, preferring a
wheel (a pure-Python wheel, or for a package with compiled parts its binary wheel, of which
only the `.py` files are read; nothing is ever installed or run) and falling back to the
sdist. The archive stays in the cache, so a second run reads it again without the network.
"""
from __future__ import annotations

import email.message
import email.parser
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MANIFEST = Path(__file__).with_name("manifest.txt")

# Held out for evaluation: never trained on, nor any package that carries a copy of one.
HELDOUT = frozenset({"click", "jinja2", "attrs", "networkx", "pygments", "trio", "pyparsing",
                     "docutils", "markdown-it-py"})
HELDOUT_IMPORTS = frozenset({"click", "jinja2", "attr", "attrs", "networkx", "pygments", "trio",
                             "pyparsing", "docutils", "markdown_it"})
_VENDOR_DIRS = frozenset({"_vendor", "vendor", "vendored", "_vendored", "extern", "_extern",
                          "third_party", "thirdparty", "externals", "inline_copy", "_lib"})
ARCHIVES = (".whl", ".tar.gz", ".zip", ".tar.bz2", ".tgz")


def canonical(name: str) -> str:
    """PEP 503 normalised name: "Markdown_It.py" → "markdown-it-py"."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Pin:
    name: str          # canonical
    version: str

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"


def read_manifest(path: Path = MANIFEST) -> list[Pin]:
    """The `name==version` lines of a manifest, in order; `#` comments and blank lines skipped."""
    pins = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise ValueError(f"{path}:{number}: expected name==version, got {line!r}")
        pins.append(Pin(canonical(name.strip()), version.strip()))
    return pins


# -- downloading ---------------------------------------------------------------------------

def find_archive(folder: Path, pin: Pin) -> Path | None:
    """The archive of `pin` already in `folder`, a wheel before an sdist."""
    stem = re.sub(r"[-_.]+", "_", pin.name)
    found = [p for p in folder.glob("*") if p.name.endswith(ARCHIVES) and
             canonical(p.name[:len(stem)]) == pin.name and
             p.name[len(stem):].lstrip("-_").startswith(pin.version)]
    return min(found, key=lambda p: (not p.name.endswith(".whl"), p.name), default=None)


# A release that has dropped this interpreter's Python still has binary wheels for a newer one.
NEWER_PYTHON = ["--python-version", "3.13", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64"]


def download(pin: Pin, folder: Path, timeout: float = 600) -> tuple[Path | None, str]:
    """The archive of `pin` in `folder`, fetched by pip if not there yet; (path, pip's last
    error line if it failed). Binary only first (no build step: this interpreter's wheels, then
    a newer CPython's), the sdist as a last resort."""
    folder.mkdir(parents=True, exist_ok=True)
    if (have := find_archive(folder, pin)) is not None:
        return have, ""
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--ignore-requires-python",
            "--disable-pip-version-check", "--quiet", "--dest", str(folder), str(pin)]
    error = ""
    for extra in (["--only-binary", ":all:"], [*NEWER_PYTHON, "--only-binary", ":all:"],
                  ["--no-binary", ":all:"]):
        try:
            run = subprocess.run(base + extra, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            error = f"pip download timed out after {timeout:.0f} s"
            continue
        if (have := find_archive(folder, pin)) is not None:
            return have, ""
        lines = [line for line in run.stderr.splitlines() if line.startswith("ERROR")]
        error = (lines or run.stderr.strip().splitlines() or ["pip found nothing"])[-1][:200]
    return None, error


# -- reading an archive --------------------------------------------------------------------

@dataclass
class Archive:
    """A downloaded distribution: its core metadata and its `.py` files (relative paths)."""

    path: Path
    metadata: email.message.Message
    files: dict[str, bytes]


def read_archive(path: Path) -> Archive:
    """Metadata (wheel METADATA, sdist PKG-INFO) and every `.py` member of a wheel or sdist.

    An sdist's paths lose their top folder (`name-1.0/`); a wheel's `*.data/purelib/` prefix
    is dropped. Symlinks, absolute paths and `..` are skipped."""
    members: dict[str, bytes] = {}
    meta_text = None
    if path.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.is_dir():
                    continue
                name = info.filename
                if _is_metadata(name, wheel=path.name.endswith(".whl")):
                    if meta_text is None or name.count("/") < meta_text[0].count("/"):
                        meta_text = (name, z.read(info).decode("utf-8", "replace"))
                elif name.endswith(".py"):
                    members[name] = z.read(info)
    else:
        with tarfile.open(path) as t:
            for info in t:
                if not info.isfile():
                    continue
                name = info.name
                if _is_metadata(name, wheel=False):
                    if meta_text is None or name.count("/") < meta_text[0].count("/"):
                        meta_text = (name, _tar_bytes(t, info).decode("utf-8", "replace"))
                elif name.endswith(".py"):
                    members[name] = _tar_bytes(t, info)
    metadata = email.parser.Parser().parsestr(meta_text[1] if meta_text else "")
    files = {}
    for name, data in members.items():
        rel = _relative(name, wheel=path.name.endswith(".whl"))
        if rel is not None:
            files[rel] = data
    return Archive(path, metadata, files)


def _tar_bytes(t: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    member = t.extractfile(info)
    assert member is not None, "tarfile reads a regular file's member (None is for other kinds)"
    return member.read()


def _is_metadata(name: str, wheel: bool) -> bool:
    if wheel:
        return name.endswith(".dist-info/METADATA") and name.count("/") == 1
    return name.endswith("/PKG-INFO") and name.count("/") <= 2


def _relative(name: str, wheel: bool) -> str | None:
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or ".." in parts:
        return None
    if wheel:
        if parts[0].endswith(".data") and len(parts) > 2:
            parts = parts[2:]
    else:
        parts = parts[1:]
    return "/".join(parts) if parts else None


def vendored_heldout(paths) -> list[str]:
    """Held-out projects a package carries a copy of: a folder named like one (`pip/_vendor/
    pygments/`), or a single module of that name in a vendoring folder (`_vendor/pyparsing.py`)."""
    found = set()
    for rel in paths:
        parts = rel.split("/")
        for folder in parts[:-1]:
            if folder in HELDOUT_IMPORTS:
                found.add(folder)
        stem = parts[-1][:-3]
        if stem in HELDOUT_IMPORTS and any(p in _VENDOR_DIRS for p in parts[:-1]):
            found.add(stem)
    return sorted(found)
