"""Recording benchmark figures: each benchmark writes one Markdown section of docs/benchmarks.md."""
from __future__ import annotations

from pathlib import Path


def write_section(section: str, path: Path) -> None:
    """Put `section` (Markdown opening with its "## " heading) into the file at `path`, in place
    of the section with the same heading; the other sections stay as they are."""
    heading = section.split("\n", 1)[0]
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    section = section.rstrip("\n") + "\n"
    start = text.find(heading + "\n")
    if start >= 0:
        end = text.find("\n## ", start + len(heading))
        rest = text[end + 1:] if end >= 0 else ""
        text = text[:start] + section + ("\n" + rest if rest else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
