"""`latent adapt [FOLDER]`: fit a copy of the bundled model to a workspace, on this machine.

    latent adapt [FOLDER] [--minutes M]     fine-tune on FOLDER's source files (default: here)
    latent adapt [FOLDER] --forget          remove what was kept for FOLDER

The files are those git tracks (and untracked ones it does not ignore) in a git work tree,
else every file under FOLDER outside hidden, virtual-environment and build folders; of those,
the languages the model declares. Lines that may hold secrets are left out
(model/train/secrets.py). The run is model/train/adapt.py's, at the lowest CPU priority, for
`adapt_minutes` (a setting; --minutes wins); Ctrl-C checkpoints it and the same command goes
on. The adapted model is kept per workspace under ~/.cache/latent/adapt/ (model/adapted.py)
and used for the workspace's documents from the next model load: `latent lsp`, `latent
complete`, `latent info` say so. Nothing leaves the machine.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SKIP_DIRS = {"node_modules", "__pycache__", "venv", "env", "site-packages", "build", "dist", "target"}
MAX_FILE_BYTES = 1 << 20


def workspace_files(root: Path, extensions: set[str]) -> list[tuple[str, str]]:
    """(path relative to root, text) of the workspace's UTF-8 files with these extensions."""
    listed = _git_files(root)
    if listed is None:
        listed = []
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS)
            here = Path(folder).relative_to(root)
            listed += [(here / name).as_posix() for name in sorted(names)]
    out = []
    for rel in listed:
        path = root / rel
        if Path(rel).suffix.lower() not in extensions or path.is_symlink() or not path.is_file():
            continue
        if path.stat().st_size > MAX_FILE_BYTES:
            continue
        try:
            out.append((rel, path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):
            continue
    return out


def _git_files(root: Path) -> list[str] | None:
    """The files git lists in `root` (tracked, and untracked but not ignored), or None when
    `root` is not in a git work tree (or git is missing)."""
    try:
        done = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                              capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return sorted(set(filter(None, done.stdout.decode("utf-8", "surrogateescape").split("\0"))))


def run(args, settings) -> int:
    """The command, with its parsed arguments and the user's settings; returns the exit status."""
    from completion.languages import EXTENSIONS
    from model.adapted import workspace
    from model.loader import BUNDLED_DIR

    root = Path(args.folder or ".").expanduser()
    if not root.is_dir():
        print(f"latent adapt: error: {root} is not a folder", file=sys.stderr)
        return 2
    ws = workspace(root)
    if args.forget:
        print(f"Forgot the adapted model of {ws.root}." if ws.forget() else f"Nothing was kept for {ws.root}.")
        return 0
    if settings.model is not None:
        print("latent adapt: error: only the bundled model is adapted; your settings use "
              f"{settings.model!r}", file=sys.stderr)
        return 2
    base = BUNDLED_DIR
    try:
        languages = json.loads((base / "config.json").read_text()).get("languages") or ["python"]
    except (OSError, ValueError):
        print(f"latent adapt: error: the bundled model is missing from {base}", file=sys.stderr)
        return 2
    extensions = {ext for ext, language in EXTENSIONS.items() if language in languages}
    files = workspace_files(ws.root, extensions)
    minutes = args.minutes or settings.adapt_minutes
    print(f"Adapting the bundled model to {ws.root}: {len(files)} {'/'.join(languages)} files, "
          f"{minutes:g} minutes at the lowest CPU priority (Ctrl-C stops; the same command goes on).",
          file=sys.stderr)
    try:
        os.nice(19)
    except OSError:
        pass
    from model.train.adapt import AdaptError, adapt, summary_line

    try:
        summary = adapt(ws, files, base, minutes, log=_log(args.verbose), threads=settings.threads, train=args.train)
    except AdaptError as e:
        print(f"latent adapt: error: {e}", file=sys.stderr)
        return 2
    if "stopped" in summary:
        print(f"Stopped after {summary['minutes_done']:.1f} minutes; `latent adapt` goes on from there.",
              file=sys.stderr)
        return 130
    print(summary_line(ws, summary))
    return 0


def _log(verbose: bool):
    def log(message: str) -> None:
        if verbose:
            print(f"latent adapt: {message}", file=sys.stderr)
    return log
