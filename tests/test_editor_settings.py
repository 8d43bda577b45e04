"""The editor clients offer exactly the server's settings (lsp_server/settings.py), under the
same names (VS Code in camelCase, which the server accepts), with the same defaults and
choices."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from pathlib import Path

from lsp_server.settings import SPECS, USER_ONLY, Settings, client_layer, merge

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = json.loads((ROOT / "editors" / "vscode" / "package.json").read_text())
SERVER_ONLY = {"server.path", "server.pythonPath", "server.args", "server.env"}


def vscode_settings() -> dict:
    props = {}
    for block in PACKAGE["contributes"]["configuration"]:
        for key, spec in block["properties"].items():
            assert key.startswith("latent."), key
            if key[len("latent."):] not in SERVER_ONLY:
                props[key[len("latent."):]] = spec
    return props


def test_the_generated_editor_settings_are_current():
    """VS Code's configuration, the Neovim plugin's list and help, and the README's table are
    written from the server's declarations by editors/generate_settings.py."""
    spec = importlib.util.spec_from_file_location("generate_settings", ROOT / "editors" / "generate_settings.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    stale = [str(path.relative_to(ROOT)) for path in generate.stale()]
    assert not stale, f"stale: {stale}; run python editors/generate_settings.py"


def test_vscode_configuration_mirrors_the_server_settings():
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    props = vscode_settings()
    snake = {re.sub(r"([A-Z])", r"_\1", k).lower(): k for k in props}
    assert set(snake) == set(fields), "VS Code settings and lsp_server/settings.py differ"
    for name, key in snake.items():
        spec, default = props[key], fields[name].default
        assert spec["default"] == (list(default) if isinstance(default, tuple) else default), name
        assert spec.get("markdownDescription") or spec.get("description"), f"{key} has no description"
        if SPECS[name].choices is not None:
            assert spec["enum"] == list(SPECS[name].choices), name
        # the server takes every value the editor offers as a default, under its camelCase name
        _, warnings = merge(client_layer({"latent": {key: spec["default"]}})[0])
        assert not warnings, warnings


def test_vscode_reads_where_code_goes_and_what_runs_from_user_settings_only():
    """A cloned repository's .vscode/settings.json must not choose the server command, its
    environment, the model or the engine: those settings are machine-scoped (user settings
    only), restricted in untrusted workspaces, and exactly the server's USER_ONLY settings."""
    scoped = {key[len("latent."):] for block in PACKAGE["contributes"]["configuration"]
              for key, spec in block["properties"].items() if spec.get("scope") in ("machine", "application")}
    assert scoped == SERVER_ONLY | {re.sub(r"_([a-z])", lambda m: m.group(1).upper(), n) for n in USER_ONLY}
    trust = PACKAGE["capabilities"]["untrustedWorkspaces"]
    assert trust["supported"] == "limited"
    assert set(trust["restrictedConfigurations"]) == {f"latent.{key}" for key in scoped}


def test_vscode_commands_do_not_collide_with_the_servers():
    """vscode-languageclient registers the server's executeCommand ids as VS Code commands."""
    ours = {c["command"] for c in PACKAGE["contributes"]["commands"]}
    assert not ours & {"latent.toggle", "latent.stats", "latent.clearCache", "latent.accepted"}


def test_neovim_plugin_lists_the_server_settings():
    lua = (ROOT / "editors" / "nvim" / "lua" / "latent" / "init.lua").read_text()
    block = re.search(r"M\.server_settings = \{(.*?)\n\}", lua, re.S).group(1)
    names = set(re.findall(r"'([a-z_]+)'", block))
    assert names == {f.name for f in dataclasses.fields(Settings)}
    doc = (ROOT / "editors" / "nvim" / "doc" / "latent.txt").read_text()
    missing = [n for n in names if n not in doc]
    assert not missing, f"doc/latent.txt does not describe {missing}"
