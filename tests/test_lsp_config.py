"""Settings: defaults < config file < LATENT_* environment < initializationOptions <
didChangeConfiguration, with bad values reported and ignored. Pure, no server."""
from __future__ import annotations

import dataclasses

from lsp_server.config import Settings, SettingsStore, client_layer, config_path, env_layer, merge


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
