"""Settings: the names users write, derived from the options they set, merged from layers.

    defaults < ~/.config/latent/config.toml < LATENT_* environment < command line
             < initializationOptions < workspace/didChangeConfiguration < latent.toggle

The user's own layers are the config file, the environment, the command line and the
initializationOptions (an editor builds them from its user settings when it starts the
server). A didChangeConfiguration push or a workspace/configuration pull may carry a
workspace's settings — a cloned repository's `.vscode/settings.json` — so it replaces the
initializationOptions' values of the settings it may set, and never sets USER_ONLY: the
settings that choose where code goes or what runs, the limits that protect the server, and
the sizes of the engine (its context, prompt budget, cache and threads: a repository's values
would grow the server by gigabytes and reload the model, with a new compiled step, per value).

`Settings` is flat: one name per setting, as users write it in config.toml
(`max_prompt_tokens`), in the environment (`LATENT_MAX_PROMPT_TOKENS`) and from a client
(`maxPromptTokens`, optionally nested under a `latent` section). Its fields are gathered from
the options (model/options.py) of the groups they configure, each declared once with its help
and limits (a type checker, which cannot see fields made at run time, reads their names, types
and defaults from a copy in the class that a test holds equal to them):

    EngineOptions    where the model comes from and which backend runs it   (here)
    RuntimeConfig    how the engine runs the weights                        (model/params.py)
    CompletionConfig what the completion pipeline is asked to do            (completion/config.py)
    SamplingParams   its temperature, top_p, top_k, seed                    (model/params.py)
    ServerOptions    what the server does with requests                     (here)

A value that does not fit its setting, that its group rejects, that breaks a limit spanning
settings (max_prompt_tokens and the new tokens must fit in max_context), or a name that is not a
setting is a one-sentence warning, and the previous value stays: a typo never stops the server.
Nor does the config file: only a regular file of at most 1 MiB of UTF-8 TOML is read.

No pygls here: `latent complete` and `latent repl` read settings too, with `from_command_line`.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, TypeVar, dataclass_transform

from completion.config import CompletionConfig
from model import options
from model.options import OptionError, check, option, specs
from model.params import RuntimeConfig, SamplingParams

ENV_PREFIX = "LATENT_"
ENGINES = ("inprocess", "daemon", "auto")   # or "openai:" followed by a server's URL
LOG_LEVELS = ("debug", "info", "warning", "error")
_T = TypeVar("_T")


@dataclass(frozen=True)
class EngineOptions:
    """Where the model comes from and which backend runs it (see engines.py)."""

    model: str | None = option(None, "a checkpoint folder, or a Hugging Face repo id already in "
                                     "the local cache (nothing is downloaded); none: the bundled model", keep_case=True)
    engine: str = option("inprocess", "where the model runs: inprocess (in the server), daemon (the "
                         "shared engine daemon, started if none runs: one model for every editor and terminal), auto "
                         "(the daemon, else in-process) or openai:URL (an OpenAI-compatible server: vLLM, SGLang, "
                         "llama.cpp)",
                         keep_case=True)
    daemon_idle_minutes: int = option(30, "a daemon Latent started exits after this many minutes without "
                                          "clients; 0: never", min=0)
    api_key_env: str | None = option(None, "openai:URL engines: the name of the environment variable "
                                     "holding the API key (the key itself never goes in settings)",
                                     keep_case=True)
    tokenizer: str | None = option(None, "openai:URL engines: a folder with the served model's "
                                   "tokenizer files, for exact prompt budgets; none: an estimate from bytes",
                                   keep_case=True)
    allow_insecure_remote: bool = option(False, "let an openai:http:// engine on another machine receive your "
                                                "code unencrypted (https and this machine need no opt-in)")
    adapted: bool = option(True, "with the bundled model: use the copy `latent adapt` fitted to the workspace, "
                                 "where there is one")
    adapt_minutes: float = option(5.0, "`latent adapt`'s time budget: minutes of training on this machine's CPU",
                                  min=0.1, max=600.0)

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
    trigger: str = option("auto", "auto: suggest while typing; manual: only when the user asks (the trigger key, "
                                  "an invoked inline completion), for battery or where ghost "
                                  "text distracts", choices=("auto", "manual"))
    debounce_ms: int = option(0, "while typing, wait this long after a keystroke before computing a suggestion; "
                                 "a newer keystroke in the meantime replaces the request unrun (0: measured best "
                                 "for a model faster than typing; raise it for a slow one)", min=0, max=2000)
    completion_items: str = option("auto", "textDocument/completion items: auto (for clients without inline "
                                           "completion), always or never", choices=("auto", "always", "never"))
    log_level: str = option("info", "log level of stderr and window/logMessage", choices=LOG_LEVELS)
    suggestions: int = option(3, "suggestions to offer when the user asks (an invoked inline completion, to "
                                 "cycle; the completion list): the first as usual, the others branching from "
                                 "the same cached prompt (each costs one token of prefill and its own decode); "
                                 "ghost text while typing computes only the first", min=1, max=4)
    max_message_mb: int = option(64, "the largest LSP message the server reads, MiB; a larger one is refused "
                                     "unread", min=1, max=4096)
    max_parse_kb: int = option(1024, "documents larger than this many KiB (of characters) are not parsed with "
                                     "tree-sitter: completions there see text only", min=0, max=1 << 20)

    def __post_init__(self) -> None:
        check(self)


GROUPS = (EngineOptions, RuntimeConfig, CompletionConfig, SamplingParams, ServerOptions)
PER_REQUEST = ("max_new_tokens", "stop", "stop_token_ids", "suppress_token_ids", "heal")   # SamplingParams' fields the pipeline sets
# Where code goes and what runs, the server's own limits and the engine's sizes: from the
# user's layers only.
USER_ONLY = frozenset({"model", "engine", "api_key_env", "tokenizer", "allow_insecure_remote", "adapted",
                       "adapt_minutes",
                       "max_message_mb", "max_parse_kb",
                       "max_context", "max_prompt_tokens", "cache_mb", "threads"})


def _fields() -> list[tuple[str, str, dataclasses.Field]]:
    """(name, type as written, field) of every setting: the options of GROUPS, less PER_REQUEST."""
    out: dict[str, tuple] = {}
    for group in GROUPS:
        for f in dataclasses.fields(group):
            if f.metadata and f.name not in PER_REQUEST:
                assert f.default is not dataclasses.MISSING, f"setting {f.name!r} has no default"
                assert f.name not in out, f"two groups declare the setting {f.name!r}"
                out[f.name] = (f.name, f.type, field(default=f.default, metadata=f.metadata))
    return list(out.values())


@dataclass_transform(frozen_default=True)
def _gathered(cls: type[_T]) -> type[_T]:
    """`cls` as a frozen dataclass whose fields are the options of GROUPS (_fields), each with
    its group's type, default, help and limits."""
    assert not cls.__dict__.get("__annotations__"), f"{cls.__name__}'s fields come from GROUPS alone"
    cls.__annotations__ = {}
    for name, kind, f in _fields():
        cls.__annotations__[name] = kind
        setattr(cls, name, f)
    return dataclass(frozen=True)(cls)


@_gathered
class Settings:
    """Every setting, flat, in the order of GROUPS; valid when made."""

    if TYPE_CHECKING:
        # What type checkers read; at run time the fields are GROUPS' own (_gathered), and
        # tests/test_lsp_settings.py fails when these names, types or defaults differ from them.
        # EngineOptions
        model: str | None = None
        engine: str = "inprocess"
        daemon_idle_minutes: int = 30
        api_key_env: str | None = None
        tokenizer: str | None = None
        allow_insecure_remote: bool = False
        adapted: bool = True
        adapt_minutes: float = 5.0
        # RuntimeConfig
        device: str = "cpu"
        dtype: str = "float32"
        quantize: str | None = None
        threads: int = 0
        attention: str = "auto"
        absorb_threshold: int = 64
        max_context: int = 4096
        cache_mb: int = 1024
        reuse: str = "exact"
        shift_min_tokens: int = 16
        shift_max_steps: int = 32
        shift_max_drift: int = 32
        speculate: int = 8
        compile: bool = True
        # CompletionConfig
        max_prompt_tokens: int = 2048
        prefix_fraction: float = 0.75
        snippet_tokens: int = 512
        max_new_tokens_line: int = 48
        max_new_tokens_block: int = 160
        multiline: bool = True
        fim_format: str | None = None
        fim_layout: str = "auto"
        token_healing: bool = True
        disabled_languages: tuple[str, ...] = ()
        all_languages: bool = False
        lru_size: int = 64
        # SamplingParams
        temperature: float = 0.0
        top_p: float = 1.0
        top_k: int = 0
        seed: int | None = None
        # ServerOptions
        enable: bool = True
        languages: tuple[str, ...] = ()
        trigger: str = "auto"
        debounce_ms: int = 0
        completion_items: str = "auto"
        log_level: str = "info"
        suggestions: int = 3
        max_message_mb: int = 64
        max_parse_kb: int = 1024

    def __post_init__(self) -> None:
        check(self)
        for build in (self.engine_options, self.runtime, self.completion_config, self.server_options):
            build()   # each group checks what spans its fields (e.g. device: cpu, cuda or cuda:N)
        name, tokens = max(("max_new_tokens_line", self.max_new_tokens_line),
                           ("max_new_tokens_block", self.max_new_tokens_block), key=lambda pair: pair[1])
        if self.max_prompt_tokens + tokens > self.max_context:
            raise OptionError(f"Setting 'max_prompt_tokens' ({self.max_prompt_tokens}) plus {name!r} ({tokens}) "
                              f"would not fit in 'max_context' ({self.max_context}); raise max_context or "
                              "lower the others.")

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

    def _group(self, cls: type[_T], **extra: Any) -> _T:
        return cls(**{s.name: getattr(self, s.name) for s in specs(cls) if s.name not in PER_REQUEST}, **extra)


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


def file_layer(path: Path, named: bool = False) -> tuple[dict, list[str]]:
    """The settings in a TOML file (a missing file is an empty layer, and a warning when the user
    `named` it in LATENT_CONFIG). Only a regular file of at most MAX_CONFIG_BYTES is read;
    anything else is one warning and an empty layer."""
    try:
        data = _read_config(path)
    except FileNotFoundError:
        return {}, [f"The config file {path} named by LATENT_CONFIG does not exist."] if named else []
    except (OSError, ValueError) as e:   # UnicodeDecodeError and TOMLDecodeError are ValueErrors
        return {}, [f"The config file {path} was not read: {str(e).rstrip('.')}."]
    return client_layer(data)[0], []


MAX_CONFIG_BYTES = 1 << 20


def _read_config(path: Path) -> dict:
    # O_NONBLOCK: opening a FIFO must not wait for a writer; its type is checked before any read
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("it is not a regular file")
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ValueError(f"it is larger than {MAX_CONFIG_BYTES >> 20} MiB")
    return tomllib.loads(data.decode("utf-8"))


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


def _did_you_mean(name: str) -> str:
    """The end of a sentence about an unknown setting: the closest name, if one is close."""
    close = difflib.get_close_matches(name, SPECS, n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else "."


def merge(*layers: Mapping[str, Any], base=None) -> tuple[Settings, list[str]]:
    """Settings from `base` (the defaults) with each layer applied in turn, and the warnings.

    A layer's values are applied one by one, then those refused once are tried again: settings
    whose limits span each other (max_context, max_prompt_tokens) may come in either order."""
    settings, warnings = base or Settings(), []
    for layer in layers:
        values = {}
        for name, raw in layer.items():
            if name not in SPECS:
                warnings.append(f"Unknown setting {name!r} is ignored{_did_you_mean(name)}")
                continue
            try:
                values[name] = options.coerce(SPECS[name], raw)
            except ValueError as e:   # OptionError: one sentence naming the setting
                warnings.append(str(e))
        settings, refused = _apply(settings, values, values)
        settings, refused = _apply(settings, values, refused)   # again: limits that span settings
        warnings += refused.values()
    return settings, warnings


def _apply(settings, values: dict, names) -> tuple[Settings, dict[str, str]]:
    """`settings` with values[name] for each of `names` that fits, and the refusals."""
    refused = {}
    for name in names:
        try:
            settings = dataclasses.replace(settings, **{name: values[name]})
        except ValueError as e:   # OptionError: one sentence
            refused[name] = str(e)
    return settings, refused


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
        layer, warnings = file_layer(config_path(env), named=bool((os.environ if env is None else env).get("LATENT_CONFIG")))
        return cls(file=layer, env=env_layer(env)), warnings

    def settings(self) -> tuple[Settings, list[str]]:
        return merge(self.file, self.env, self.command_line, self.init, self.client, self.toggled)

    def reread_file(self, env: Mapping[str, str] | None = None) -> list[str]:
        """The config file again (the server does so when the client's settings change)."""
        self.file, warnings = file_layer(config_path(env), named=bool((os.environ if env is None else env).get("LATENT_CONFIG")))
        return warnings

    def set_client(self, layer: dict) -> list[str]:
        """A didChangeConfiguration push or a workspace/configuration pull: the client's whole
        settings now, so they replace the initializationOptions' values too, except USER_ONLY
        ones, which they cannot set. Returns the USER_ONLY names they tried to change."""
        current, _ = self.settings()
        refused = sorted(name for name in layer if name in USER_ONLY and _differs(current, name, layer[name]))
        self.client = {name: value for name, value in layer.items() if name not in USER_ONLY}
        self.init = {name: value for name, value in self.init.items() if name in USER_ONLY}
        return refused


def _differs(settings, name: str, raw: Any) -> bool:
    try:
        return options.coerce(SPECS[name], raw) != getattr(settings, name)
    except ValueError:
        return True


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
        if not sep:
            raise OptionError(f"--set takes NAME=VALUE with a setting's name, not {item!r}.")
        if name not in SPECS:
            raise OptionError(f"--set names no setting {name!r}{_did_you_mean(name)}")
        layer[name] = value
    _, problems = merge(layer)
    if problems:
        raise OptionError(problems[0])
    store.command_line = layer
    settings, more = store.settings()
    return settings, store, warnings + more
