"""Settings: derived from the options they set; defaults < config file < LATENT_* environment
< command line < initializationOptions < didChangeConfiguration, with bad values reported and
ignored. Pure, no server."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from completion.config import CompletionConfig
from lsp_server.settings import (PER_REQUEST, USER_ONLY, EngineOptions, ServerOptions, Settings, SettingsStore, add_arguments,
                                 client_layer, config_path, env_layer, from_command_line, merge)
from model.options import OptionError, specs
from model.params import RuntimeConfig, SamplingParams

ROOT = Path(__file__).resolve().parents[1]


def test_layers_merge_in_order(tmp_path):
    (tmp_path / "latent").mkdir()
    (tmp_path / "latent" / "config.toml").write_text(
        'model = "/models/from-file"\ntemperature = 0.5\nmax_prompt_tokens = 1000\nthreads = 3\n')
    env = {"XDG_CONFIG_HOME": str(tmp_path), "LATENT_TEMPERATURE": "0.25", "LATENT_MAX_PROMPT_TOKENS": "900",
           "LATENT_SOCKET": "belongs to another tool"}
    store, warnings = SettingsStore.from_environment(env)
    assert warnings == []
    store.init, _ = client_layer({"maxPromptTokens": 800, "multiline": False})
    store.client, _ = client_layer({"latent": {"max_prompt_tokens": 700}})
    settings, warnings = store.settings()
    assert warnings == []
    assert settings.model == "/models/from-file"      # file only
    assert settings.threads == 3                      # file only
    assert settings.temperature == 0.25               # env over file
    assert settings.multiline is False                # initializationOptions
    assert settings.max_prompt_tokens == 700          # didChangeConfiguration over all
    assert settings.max_new_tokens_line == Settings().max_new_tokens_line   # default


def test_config_file_location_follows_xdg_and_latent_config(tmp_path):
    assert config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "latent" / "config.toml"
    assert config_path({"LATENT_CONFIG": str(tmp_path / "x.toml")}) == tmp_path / "x.toml"
    assert config_path({}).parts[-3:] == (".config", "latent", "config.toml")


def test_environment_strings_are_parsed_by_type():
    layer = env_layer({"LATENT_MULTILINE": "off", "LATENT_DISABLED_LANGUAGES": "Markdown, plaintext",
                       "LATENT_QUANTIZE": "INT8", "LATENT_MODEL": "Org/Model-Name", "LATENT_FIM_FORMAT": "none"})
    settings, warnings = merge(layer)
    assert warnings == []
    assert settings.multiline is False
    assert settings.disabled_languages == ("markdown", "plaintext")
    assert settings.quantize == "int8"
    assert settings.model == "Org/Model-Name"          # paths and repo ids keep their case
    assert settings.fim_format is None


def test_bad_values_and_unknown_names_warn_and_keep_the_previous_value():
    settings, warnings = merge({"temperature": "hot", "dtype": "float8", "threads": -1, "max_new_tokens_line": 1.5,
                                "enable": "maybe", "colour": "blue", "top_p": 0.9})
    assert settings.top_p == 0.9
    assert (settings.temperature, settings.dtype, settings.threads, settings.enable) == (0.0, "float32", 0, True)
    assert len(warnings) == 6
    assert all(w.endswith(".") and "\n" not in w for w in warnings)
    assert any("'colour'" in w for w in warnings) and any("float8" in w for w in warnings)


def test_client_settings_may_be_nested_camel_case_or_absent():
    assert client_layer({"latent": {"maxNewTokensBlock": 3}})[0] == {"max_new_tokens_block": 3}
    assert client_layer({"completionItems": "never"})[0] == {"completion_items": "never"}
    assert client_layer(None) == ({}, [])
    layer, warnings = client_layer(["not", "an", "object"])
    assert layer == {} and warnings


def test_per_language_enable():
    s = Settings(disabled_languages=("markdown",))
    assert s.language_enabled("python") and not s.language_enabled("Markdown")
    s = Settings(languages=("python", "rust"))
    assert s.language_enabled("python") and not s.language_enabled("go")
    assert not dataclasses.replace(s, enable=False).language_enabled("python")


def test_engine_key_changes_only_with_what_the_engine_depends_on():
    base = Settings()
    assert dataclasses.replace(base, temperature=0.7).engine_key() == base.engine_key()
    assert dataclasses.replace(base, model="/m").engine_key() != base.engine_key()
    assert dataclasses.replace(base, quantize="int8").engine_key() != base.engine_key()


def test_a_broken_config_file_is_one_warning(tmp_path):
    (tmp_path / "latent").mkdir()
    (tmp_path / "latent" / "config.toml").write_text("model = [unclosed\n")
    store, warnings = SettingsStore.from_environment({"XDG_CONFIG_HOME": str(tmp_path)})
    assert store.file == {} and len(warnings) == 1 and "config.toml" in warnings[0]


def test_every_option_of_the_groups_is_a_setting_with_its_default_and_limits():
    names = [f.name for f in dataclasses.fields(Settings)]
    sampling = [s.name for s in specs(SamplingParams) if s.name not in PER_REQUEST]
    groups = [*(s.name for cls in (EngineOptions, RuntimeConfig, CompletionConfig) for s in specs(cls)),
              *sampling, *(s.name for s in specs(ServerOptions))]
    assert names == groups
    defaults = Settings()
    assert defaults.runtime() == RuntimeConfig()
    assert defaults.completion_config() == CompletionConfig()
    threads = next(s for s in specs(Settings) if s.name == "threads")
    assert threads.min == 0 and "model size" in threads.help     # 0: automatic, by model size


def _declared_for_type_checkers() -> list[tuple[str, str, object]]:
    """(name, type, default) of each field Settings declares under `if TYPE_CHECKING:`."""
    tree = ast.parse((ROOT / "lsp_server" / "settings.py").read_text())
    cls = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Settings")
    block = next(node for node in cls.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    return [(node.target.id, ast.unparse(node.annotation), ast.literal_eval(node.value))
            for node in block.body if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            and node.value is not None]


def test_what_type_checkers_read_of_settings_is_what_runs():
    """Settings' fields are made at run time from the groups' options; the copy pyright reads
    must name the same fields, in the same order, with the same types and defaults."""
    def typed(value):   # 0, 0.0 and False are equal; a default of the wrong type is not
        return type(value), value

    declared = [(name, kind, typed(default)) for name, kind, default in _declared_for_type_checkers()]
    running = [(f.name, ast.unparse(ast.parse(str(f.type), mode="eval")), typed(f.default))
               for f in dataclasses.fields(Settings)]
    assert declared == running


def test_groups_are_built_from_the_settings():
    settings, warnings = merge({"threads": "3", "reuse": "shift", "temperature": "0.5", "top_k": 5,
                                "max_prompt_tokens": 900, "model": "/m"})
    assert warnings == []
    assert settings.runtime() == RuntimeConfig(threads=3, reuse="shift")
    config = settings.completion_config()
    assert config.max_prompt_tokens == 900
    assert config.sampling == SamplingParams(temperature=0.5, top_k=5)
    assert settings.engine_options() == EngineOptions(model="/m")


def test_a_value_its_group_rejects_is_a_warning_and_the_previous_value_stays():
    settings, warnings = merge({"device": "cuda:1"}, {"device": "gpu", "engine": "openai:nowhere"})
    assert settings.device == "cuda:1" and settings.engine == "inprocess"
    assert len(warnings) == 2 and all(w.endswith(".") and "\n" not in w for w in warnings)
    assert "'device'" in warnings[0] and "'engine'" in warnings[1]
    with pytest.raises(OptionError, match="device"):
        Settings(device="gpu")                        # never made invalid


def _command_line(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_the_command_line_is_a_layer_over_the_file_and_environment(tmp_path):
    (tmp_path / "latent").mkdir()
    (tmp_path / "latent" / "config.toml").write_text('threads = 3\ndtype = "bfloat16"\n')
    env = {"XDG_CONFIG_HOME": str(tmp_path), "LATENT_TEMPERATURE": "0.25", "LATENT_CACHE_MB": "10"}
    args = _command_line("--threads", "2", "--max-context", "512", "--model", "Org/M", "--set", "cache_mb=20",
                         "--set", "max_prompt_tokens=300")
    settings, store, warnings = from_command_line(args, env)
    assert warnings == []
    assert (settings.threads, settings.max_context, settings.model) == (2, 512, "Org/M")
    assert (settings.dtype, settings.temperature, settings.cache_mb) == ("bfloat16", 0.25, 20)
    assert store.command_line == {"threads": "2", "max_context": "512", "model": "Org/M", "cache_mb": "20",
                                  "max_prompt_tokens": "300"}
    for argv, message in ((("--dtype", "float8"), "'dtype'"), (("--set", "colour=blue"), "--set"),
                          (("--device", "gpu"), "'device'"), (("--max-context", "512"), "'max_context'")):
        with pytest.raises(OptionError, match=message):
            from_command_line(_command_line(*argv), {})


def test_settings_are_read_without_pygls():
    """`latent repl` and `latent complete` read settings the server's way, without pygls."""
    code = ("import sys\n"
            "from lsp_server import repl\n"
            "repl.settings_from(repl.make_parser().parse_args(['--threads', '1']))\n"
            "from lsp_server import cli\n"
            "assert cli.main(['complete', '--help']) == 0\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pygls', 'lsprotocol')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "HOME": "/nonexistent", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "--threads" in done.stdout and done.stdout.splitlines()[-1] == "[]"


@pytest.mark.parametrize("kind", ["invalid UTF-8", "a FIFO", "/dev/zero", "a directory", "two megabytes"])
def test_a_config_file_is_read_only_when_it_is_a_small_regular_file(tmp_path, kind):
    path = tmp_path / "config.toml"
    if kind == "invalid UTF-8":
        path.write_bytes(b'model = "\xff"\n')
    elif kind == "a FIFO":
        os.mkfifo(path)                  # no writer: a plain open() would wait for ever
    elif kind == "/dev/zero":
        path = Path("/dev/zero")         # a plain read() would never end
    elif kind == "a directory":
        path.mkdir()
    else:
        path.write_text("# padding\n" * (2 << 17))
    done: list = []
    reader = threading.Thread(target=lambda: done.append(SettingsStore.from_environment({"LATENT_CONFIG": str(path)})),
                              daemon=True)
    reader.start()
    reader.join(10)
    assert done, "reading the config file did not return"
    store, warnings = done[0]
    assert store.file == {} and len(warnings) == 1
    assert str(path) in warnings[0] and warnings[0].count(". ") == 0 and warnings[0].endswith(".")


def test_limits_that_span_settings_hold_whatever_order_they_come_in():
    for layer in ({"max_prompt_tokens": 6000, "max_context": 8192}, {"max_context": 8192, "max_prompt_tokens": 6000}):
        settings, warnings = merge(layer)
        assert warnings == [] and (settings.max_prompt_tokens, settings.max_context) == (6000, 8192)
    settings, warnings = merge({"max_context": 8192}, {"max_prompt_tokens": 5000}, {"max_context": 4096})
    assert (settings.max_prompt_tokens, settings.max_context) == (5000, 8192)   # the previous value stays
    [warning] = warnings
    assert "'max_prompt_tokens' (5000)" in warning and "'max_context' (4096)" in warning
    _, warnings = merge({"max_context": 10 ** 9})
    assert len(warnings) == 1 and "'max_context'" in warnings[0]


def test_the_client_cannot_set_user_only_settings_and_replaces_the_initialization_options():
    store = SettingsStore(file={"engine": "daemon"})
    store.init, _ = client_layer({"latent": {"model": "/mine", "maxNewTokensLine": 5, "temperature": 0.5}})
    refused = store.set_client(client_layer({"latent": {
        "model": "/mine", "engine": "openai:https://elsewhere/v1", "apiKeyEnv": "HOME", "temperature": 0.25}})[0])
    assert refused == ["api_key_env", "engine"]          # the same model as now is not a change
    settings, warnings = store.settings()
    assert warnings == []
    assert (settings.model, settings.engine, settings.api_key_env) == ("/mine", "daemon", None)
    assert settings.temperature == 0.25
    assert settings.max_new_tokens_line == 48            # removed by the client: back to the default
    assert USER_ONLY >= {"model", "engine", "api_key_env", "tokenizer", "allow_insecure_remote",
                         "max_context", "max_prompt_tokens", "cache_mb", "threads"}
