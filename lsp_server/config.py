"""Settings: one dataclass of defaults, merged from five layers.

    defaults < ~/.config/latent/config.toml < LATENT_* environment < initializationOptions
             < workspace/didChangeConfiguration

Every layer is a flat mapping of setting names to values. Clients may spell names in
camelCase (`maxPromptTokens`) and may nest them under a `latent` section; the config file
and the environment use snake_case (`max_prompt_tokens`, `LATENT_MAX_PROMPT_TOKENS`).
A value that does not fit its setting, or a name that is not a setting, is reported as a
one-sentence warning and ignored — a typo never stops the server.
"""
from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

ENV_PREFIX = "LATENT_"
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Settings:
    # the model and how it runs (a change reloads the model)
    model: str | None = None          # a checkpoint folder or a cached Hugging Face repo id; None: bundled
    engine: str = "inprocess"         # inprocess | daemon | auto | openai:URL (see engines.py)
    device: str = "cpu"               # cpu | cuda | cuda:N
    dtype: str = "float32"            # float32 | bfloat16 | float16
    quantize: str | None = None       # None | int8 (weight-only)
    threads: int = 0                  # PyTorch CPU threads; 0: PyTorch's default
    max_context: int = 4096           # tokens the engine's working buffer holds
    cache_mb: int = 1024              # budget of the latent prefix cache, MiB
    reuse: str = "exact"              # exact | shift (approximate reuse of a moved suffix)
    daemon_idle_minutes: int = 30     # a daemon started by Latent exits after this long unused
    api_key_env: str | None = None    # openai:URL engines: the environment variable holding the API key
    tokenizer: str | None = None      # openai:URL engines: a folder with the model's tokenizer files
    # what is asked of it (a change applies to the next request)
    max_prompt_tokens: int = 2048     # the context budget: prompt tokens in all
    prefix_fraction: float = 0.75     # share of the file's windows before the cursor
    snippet_tokens: int = 512         # of the budget, tokens for snippets of other files
    max_new_tokens_line: int = 48
    max_new_tokens_block: int = 160
    multiline: bool = True            # False: one line at most
    temperature: float = 0.0          # 0: greedy
    top_p: float = 1.0
    fim_format: str | None = None     # None: read off the tokenizer
    # the server
    enable: bool = True               # False: every request gets an empty result (latent.toggle flips it)
    languages: tuple[str, ...] = ()   # complete only these language ids; empty: every language
    disabled_languages: tuple[str, ...] = ()  # never complete these language ids
    completion_items: str = "auto"    # auto | always | never: textDocument/completion items
    log_level: str = "info"           # debug | info | warning | error

    # -- derived -----------------------------------------------------------------------------
    def engine_key(self) -> tuple:
        """The settings a loaded engine depends on: when they change, the model reloads."""
        return (self.engine, self.model, self.device, self.dtype, self.quantize, self.threads,
                self.max_context, self.cache_mb, self.reuse, self.daemon_idle_minutes, self.api_key_env, self.tokenizer)

    def language_enabled(self, language_id: str) -> bool:
        language_id = language_id.lower()
        if not self.enable or language_id in self.disabled_languages:
            return False
        return not self.languages or language_id in self.languages

    def completion_kwargs(self) -> dict:
        """The fields of completion.CompletionConfig these settings decide."""
        return dict(
            max_prompt_tokens=self.max_prompt_tokens, prefix_fraction=self.prefix_fraction,
            snippet_tokens=self.snippet_tokens, max_new_tokens_line=self.max_new_tokens_line,
            max_new_tokens_block=self.max_new_tokens_block, temperature=self.temperature,
            top_p=self.top_p, fim_format=self.fim_format,
            disabled_languages=frozenset(self.disabled_languages), multiline=self.multiline,
        )


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Settings)}
ENGINES = ("inprocess", "daemon", "auto")   # or "openai:" followed by a server's URL
CHOICES = {
    "reuse": ("exact", "shift"),
    "dtype": ("float32", "bfloat16", "float16"),
    "quantize": (None, "int8"),
    "completion_items": ("auto", "always", "never"),
    "log_level": LOG_LEVELS,
}
KEEP_CASE = {"model", "engine", "api_key_env", "tokenizer"}
MINIMUM = {"daemon_idle_minutes": 0, "threads": 0, "max_context": 64, "cache_mb": 0, "max_prompt_tokens": 64,
           "snippet_tokens": 0, "max_new_tokens_line": 1, "max_new_tokens_block": 1,
           "temperature": 0.0, "top_p": 0.0}


class SettingError(ValueError):
    """A value that does not fit its setting; the message is one sentence."""


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
        if name in FIELDS:
            out[name] = value
    return out


def client_layer(options: Any) -> tuple[dict, list[str]]:
    """initializationOptions / didChangeConfiguration settings: the `latent` section if there
    is one, else the object itself; names in snake_case or camelCase."""
    if not isinstance(options, Mapping):
        return {}, ([] if options is None else [f"Settings must be an object, not {type(options).__name__}."])
    if isinstance(options.get("latent"), Mapping):
        options = options["latent"]
    return {_snake(str(k)): v for k, v in options.items()}, []


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).replace("-", "_").lower()


# ---------------------------------------------------------------------------------------------
# Merging

def merge(*layers: Mapping[str, Any], base: Settings | None = None) -> tuple[Settings, list[str]]:
    """Settings from `base` (the defaults) with each layer applied in turn, and the warnings."""
    values: dict[str, Any] = {}
    warnings: list[str] = []
    for layer in layers:
        for name, raw in layer.items():
            if name not in FIELDS:
                warnings.append(f"Unknown setting {name!r} is ignored.")
                continue
            try:
                values[name] = coerce(name, raw)
            except SettingError as e:
                warnings.append(str(e))
    return dataclasses.replace(base or Settings(), **values), warnings


def parse_overrides(items: list[str]) -> dict:
    """Command-line `--set NAME=VALUE` items as one settings layer."""
    layer = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in FIELDS:
            raise SettingError(f"--set takes NAME=VALUE with a setting's name, not {item!r}")
        layer[name] = value
    return layer


def coerce(name: str, raw: Any) -> Any:
    """`raw` (a TOML / JSON value or an environment string) as the type of setting `name`."""
    kind = FIELDS[name].type
    try:
        if kind == "bool":
            value = _bool(raw)
        elif kind == "int":
            value = _int(raw)
        elif kind == "float":
            value = _float(raw)
        elif kind == "tuple[str, ...]":
            value = _names(raw)
        else:  # str, or str | None
            value = _text(raw, optional=kind.endswith("None"), keep_case=name in KEEP_CASE)
    except (TypeError, ValueError):
        raise SettingError(f"Setting {name!r} cannot be {raw!r}; it takes {_describe(kind)}.") from None
    if name == "engine" and value not in ENGINES and not re.match(r"openai:https?://\S+$", value):
        raise SettingError(f"Setting 'engine' cannot be {raw!r}; it takes inprocess, daemon, auto "
                           "or openai: followed by a server's http(s) URL.")
    choices = CHOICES.get(name)
    if choices is not None and value not in choices:
        shown = ", ".join("none" if c is None else c for c in choices)
        raise SettingError(f"Setting {name!r} cannot be {raw!r}; it takes one of {shown}.")
    if name in MINIMUM and value < MINIMUM[name]:
        raise SettingError(f"Setting {name!r} cannot be {raw!r}; it takes at least {MINIMUM[name]}.")
    return value


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(raw, str) and raw.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _int(raw: Any) -> int:
    if isinstance(raw, bool) or isinstance(raw, float) and not raw.is_integer():
        raise ValueError(raw)
    return int(raw.strip()) if isinstance(raw, str) else int(raw)


def _float(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError(raw)
    return float(raw)


def _names(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = raw.split(",")
    if not isinstance(raw, (list, tuple)) or not all(isinstance(x, str) for x in raw):
        raise TypeError(raw)
    return tuple(x.strip().lower() for x in raw if x.strip())


def _text(raw: Any, optional: bool, keep_case: bool) -> str | None:
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "null")):
        if optional:
            return None
        raise ValueError(raw)
    if not isinstance(raw, str):
        raise TypeError(raw)
    return raw.strip() if keep_case else raw.strip().lower()


def _describe(kind: str) -> str:
    return {"bool": "true or false", "int": "a whole number", "float": "a number",
            "tuple[str, ...]": "a list of language ids"}.get(kind, "a string")


# ---------------------------------------------------------------------------------------------
# The layers of one server

@dataclass
class SettingsStore:
    """The layers a server has seen, and the settings they make."""

    file: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    init: dict = field(default_factory=dict)
    client: dict = field(default_factory=dict)
    runtime: dict = field(default_factory=dict)   # latent.toggle

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> tuple["SettingsStore", list[str]]:
        layer, warnings = file_layer(config_path(env))
        return cls(file=layer, env=env_layer(env)), warnings

    def settings(self) -> tuple[Settings, list[str]]:
        return merge(self.file, self.env, self.init, self.client, self.runtime)
