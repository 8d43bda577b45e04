"""Settings: the names users write, derived from the options they set, merged from layers.

    defaults < ~/.config/latent/config.toml < LATENT_* environment < command line
             < initializationOptions < workspace/didChangeConfiguration < latent.toggle

`Settings` is flat: one name per setting, as users write it in config.toml
(`max_prompt_tokens`), in the environment (`LATENT_MAX_PROMPT_TOKENS`) and from a client
(`maxPromptTokens`, optionally nested under a `latent` section). Its fields are not declared
here but gathered from the options (model/options.py) of the groups they configure, each
declared once with its help and limits:

    EngineOptions    where the model comes from and which backend runs it   (here)
    RuntimeConfig    how the engine runs the weights                        (model/params.py)
    CompletionConfig what the completion pipeline is asked to do            (completion/config.py)
    SamplingParams   its temperature, top_p, top_k, seed                    (model/params.py)
    ServerOptions    what the server does with requests                     (here)

A value that does not fit its setting, that its group rejects, or a name that is not a setting
is a one-sentence warning, and the previous value stays: a typo never stops the server.

No pygls here: `latent complete` and `latent repl` read settings too, with `from_command_line`.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from completion.config import CompletionConfig
from model import options
from model.options import OptionError, check, option, specs
from model.params import RuntimeConfig, SamplingParams

ENV_PREFIX = "LATENT_"
ENGINES = ("inprocess", "daemon", "auto")   # or "openai:" followed by a server's URL
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class EngineOptions:
    """Where the model comes from and which backend runs it (see engines.py)."""

    model: str | None = option(None, "a checkpoint folder or a Hugging Face repo id in the local cache; "
                                     "none: the bundled model", keep_case=True)
    engine: str = option("inprocess", "where the model runs: inprocess, daemon, auto or openai:URL",
                         keep_case=True)
    daemon_idle_minutes: int = option(30, "a daemon Latent started exits after this many minutes without "
                                          "clients; 0: never", min=0)
    api_key_env: str | None = option(None, "openai:URL engines: the environment variable holding the API key",
                                     keep_case=True)
    tokenizer: str | None = option(None, "openai:URL engines: a folder with the served model's tokenizer files",
                                   keep_case=True)

    def __post_init__(self) -> None:
        check(self)
        if self.engine not in ENGINES and not re.match(r"openai:https?://\S+$", self.engine):
            raise OptionError(f"Setting 'engine' cannot be {self.engine!r}; it takes inprocess, daemon, auto "
                              "or openai: followed by a server's http(s) URL.")


@dataclass(frozen=True)
class ServerOptions:
    """What the language server does with requests."""

    enable: bool = option(True, "false: every request gets an empty result (latent.toggle flips it)")
    languages: tuple[str, ...] = option((), "complete only these language ids; empty: every language")
    completion_items: str = option("auto", "textDocument/completion items: auto (for clients without inline "
                                           "completion), always or never", choices=("auto", "always", "never"))
    log_level: str = option("info", "log level of stderr and window/logMessage", choices=LOG_LEVELS)

    def __post_init__(self) -> None:
        check(self)


GROUPS = (EngineOptions, RuntimeConfig, CompletionConfig, SamplingParams, ServerOptions)
PER_REQUEST = ("max_new_tokens", "stop", "stop_token_ids")   # SamplingParams' fields the pipeline sets


class _Derived:
    """What Settings does with its fields; the fields themselves come from GROUPS."""

    def __post_init__(self) -> None:
        check(self)
        for build in (self.engine_options, self.runtime, self.completion_config, self.server_options):
            build()   # each group checks what spans its fields (e.g. device: cpu, cuda or cuda:N)

    def engine_options(self) -> EngineOptions:
        return self._group(EngineOptions)

    def runtime(self) -> RuntimeConfig:
        return self._group(RuntimeConfig)

    def sampling(self) -> SamplingParams:
        return self._group(SamplingParams)

    def completion_config(self) -> CompletionConfig:
        return self._group(CompletionConfig, sampling=self.sampling())

    def server_options(self) -> ServerOptions:
        return self._group(ServerOptions)

    def engine_key(self) -> tuple:
        """What a loaded engine depends on: when it changes, the model reloads."""
        return self.engine_options(), self.runtime()

    def language_enabled(self, language_id: str) -> bool:
        language_id = language_id.lower()
        if not self.enable or language_id in self.disabled_languages:
            return False
        return not self.languages or language_id in self.languages

    def _group(self, cls, **extra):
        return cls(**{s.name: getattr(self, s.name) for s in specs(cls) if s.name not in PER_REQUEST}, **extra)


def _fields() -> list[tuple[str, str, dataclasses.Field]]:
    out: dict[str, tuple] = {}
    for group in GROUPS:
        for f in dataclasses.fields(group):
            if f.metadata and f.name not in PER_REQUEST:
                assert f.default is not dataclasses.MISSING, f"setting {f.name!r} has no default"
                assert f.name not in out, f"two groups declare the setting {f.name!r}"
                out[f.name] = (f.name, f.type, field(default=f.default, metadata=f.metadata))
    return list(out.values())


Settings = dataclasses.make_dataclass("Settings", _fields(), bases=(_Derived,), frozen=True)
Settings.__module__, Settings.__doc__ = __name__, "Every setting, flat, in the order of GROUPS; valid when made."
SPECS: dict[str, options.Spec] = {s.name: s for s in specs(Settings)}


# ---------------------------------------------------------------------------------------------
# Layers

def config_path(env: Mapping[str, str] | None = None) -> Path:
    """$LATENT_CONFIG, else $XDG_CONFIG_HOME/latent/config.toml, else ~/.config/latent/config.toml."""
    env = os.environ if env is None else env
    if env.get("LATENT_CONFIG"):
        return Path(env["LATENT_CONFIG"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "latent" / "config.toml"


def file_layer(path: Path) -> tuple[dict, list[str]]:
    """The settings in a TOML file (a missing file is an empty layer)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}, []
    except (OSError, tomllib.TOMLDecodeError) as e:
        return {}, [f"The config file {path} was not read: {e}."]
    return client_layer(data)[0], []


def env_layer(env: Mapping[str, str] | None = None) -> dict:
    """LATENT_<SETTING> variables (other LATENT_* variables belong to other tools)."""
    env = os.environ if env is None else env
    out = {}
    for key, value in env.items():
        name = key[len(ENV_PREFIX):].lower() if key.startswith(ENV_PREFIX) else None
        if name in SPECS:
            out[name] = value
    return out


def client_layer(settings: Any) -> tuple[dict, list[str]]:
    """initializationOptions / didChangeConfiguration settings: the `latent` section if there
    is one, else the object itself; names in snake_case or camelCase."""
    if not isinstance(settings, Mapping):
        return {}, ([] if settings is None else [f"Settings must be an object, not {type(settings).__name__}."])
    if isinstance(settings.get("latent"), Mapping):
        settings = settings["latent"]
    return {_snake(str(k)): v for k, v in settings.items()}, []


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).replace("-", "_").lower()


def merge(*layers: Mapping[str, Any], base=None) -> tuple[Settings, list[str]]:
    """Settings from `base` (the defaults) with each layer applied in turn, and the warnings."""
    settings, warnings = base or Settings(), []
    for layer in layers:
        for name, raw in layer.items():
            if name not in SPECS:
                warnings.append(f"Unknown setting {name!r} is ignored.")
                continue
            try:
                settings = dataclasses.replace(settings, **{name: options.coerce(SPECS[name], raw)})
            except ValueError as e:   # OptionError: one sentence naming the setting
                warnings.append(str(e))
    return settings, warnings


@dataclass
class SettingsStore:
    """The layers a server has seen, and the settings they make."""

    file: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    command_line: dict = field(default_factory=dict)
    init: dict = field(default_factory=dict)
    client: dict = field(default_factory=dict)
    toggled: dict = field(default_factory=dict)   # latent.toggle

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> tuple["SettingsStore", list[str]]:
        layer, warnings = file_layer(config_path(env))
        return cls(file=layer, env=env_layer(env)), warnings

    def settings(self) -> tuple[Settings, list[str]]:
        return merge(self.file, self.env, self.command_line, self.init, self.client, self.toggled)


# ---------------------------------------------------------------------------------------------
# The command line: `latent lsp | complete | info` and `latent repl` read settings alike

FLAGS = ("model", *(s.name for s in specs(RuntimeConfig)), "log_level")   # --model, --device, …


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """A flag per setting of FLAGS, and --set NAME=VALUE for the others."""
    group = parser.add_argument_group("settings (override the config file and LATENT_* variables)")
    for cls in (EngineOptions, RuntimeConfig, ServerOptions):
        options.add_arguments(group, cls, skip=tuple(s.name for s in specs(cls) if s.name not in FLAGS))
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                       help="any other setting (repeatable), e.g. --set temperature=0.2")


def from_command_line(args: argparse.Namespace, env: Mapping[str, str] | None = None
                      ) -> tuple[Settings, SettingsStore, list[str]]:
    """Settings from the config file, the environment and a command line made by
    add_arguments, the store of their layers, and the warnings. A bad value on the command line
    is an OptionError (one sentence), not a warning: the user is there to fix it."""
    store, warnings = SettingsStore.from_environment(env)
    layer = {name: getattr(args, name) for name in FLAGS if getattr(args, name, None) is not None}
    for item in getattr(args, "overrides", None) or ():
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in SPECS:
            raise OptionError(f"--set takes NAME=VALUE with a setting's name, not {item!r}.")
        layer[name] = value
    _, problems = merge(layer)
    if problems:
        raise OptionError(problems[0])
    store.command_line = layer
    settings, more = store.settings()
    return settings, store, warnings + more
