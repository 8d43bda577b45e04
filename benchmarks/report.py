"""Recording benchmark figures in docs/benchmarks.md: each benchmark owns one "## " section.

    publish(section_text, path_or_None)          # print it, and replace it in the file if given
    write_section(section_text, path)            # the whole section, replaced
    write_row(path, empty_section, cells, key)   # one row of the section's table, replaced by key
    seconds_per_call(fn, reps)                   # a product's time, for the kernel benchmarks

Everything outside the section stays as it is.
"""
from __future__ import annotations

import time
from pathlib import Path


def seconds_per_call(fn, reps: int) -> float:
    """Mean seconds of `fn()` over `reps` calls, after one call that warms it up."""
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def publish(section: str, path: Path | None) -> None:
    """What every benchmark's command line ends with: the section on stdout, and in `path`."""
    print(section)
    if path is not None:
        write_section(section, path)


def write_section(section: str, path: Path) -> None:
    """Put `section` (Markdown opening with its "## " heading) into the file at `path`, in place
    of the section with the same heading."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    start, end = _bounds(text, section.split("\n", 1)[0])
    path.write_text(_put(text, start, end, section))


def write_row(path: Path, empty_section: str, cells: list[str], key: tuple[int, ...]) -> None:
    """Put a row into the table of the section that `empty_section` opens (written as it is
    when the file has no such section); a row whose cells at `key` equal these is replaced."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    start, end = _bounds(text, empty_section.split("\n", 1)[0])
    section = text[start:end] if end > start else empty_section
    new = "| " + " | ".join(cells) + " |"
    lines = [line for line in section.rstrip("\n").split("\n") if not _same(line, cells, key)]
    last = max(i for i, line in enumerate(lines) if line.startswith("|"))
    lines.insert(last + 1, new)
    path.write_text(_put(text, start, end, "\n".join(lines)))


def _bounds(text: str, heading: str) -> tuple[int, int]:
    """Where the section with `heading` starts and ends (both at the end when there is none)."""
    start = text.find(heading + "\n")
    if start < 0:
        return len(text), len(text)
    end = text.find("\n## ", start + len(heading))
    return start, len(text) if end < 0 else end + 1


def _put(text: str, start: int, end: int, section: str) -> str:
    """`text` with [start, end) replaced by `section`, a blank line on each side."""
    before = text[:start] if start < len(text) else text.rstrip("\n") + "\n\n"
    after = text[end:]
    return before + section.strip("\n") + "\n" + ("\n" + after if after else "")


def _same(line: str, cells: list[str], key: tuple[int, ...]) -> bool:
    if not line.startswith("| "):
        return False
    have = [c.strip() for c in line.strip().strip("|").split("|")]
    return len(have) == len(cells) and all(have[i] == cells[i].strip() for i in key)
