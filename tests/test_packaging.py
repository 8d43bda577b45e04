"""What pyproject.toml promises holds for the code it ships."""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "completion", "lsp_server")


def _imported_modules() -> set[str]:
    names = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names.add(node.module.split(".")[0])
    return names


def test_requires_python_admits_only_versions_that_have_every_stdlib_module_we_import():
    """requires-python once said >= 3.10 while the settings import tomllib (new in 3.11)."""
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(x) for x in re.fullmatch(r">=\s*(\d+)\.(\d+)", spec).groups())
    added_in = {"tomllib": (3, 11)}       # stdlib modules newer than 3.10
    for module in _imported_modules() & set(sys.stdlib_module_names):
        assert minimum >= added_in.get(module, (3, 0)), f"{module} needs Python {added_in[module]}"
    assert "tomllib" in _imported_modules()   # the check above has something to check
