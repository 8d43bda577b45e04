"""Every way a model folder can be wrong gets one readable ModelLoadError."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.config import ModelArgs
from model.engine import Engine
from model.loader import ModelLoadError
from model.params import OptionError, RuntimeConfig
from tiny_models import save_checkpoint


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    save_checkpoint("v2-qlora-group", folder)
    return folder


@pytest.fixture
def copy(good, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(good, target)
    return target


def _edit_weights(folder, edit):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _error(path, **kw) -> str:
    with pytest.raises(ModelLoadError) as info:
        Engine.load(path, RuntimeConfig(**kw), warmup=False)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400
    return message


def test_missing_folder(tmp_path):
    assert "does not exist" in _error(tmp_path / "nowhere")


def test_unknown_repo_id_is_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    message = _error("deepseek-ai/DeepSeek-Coder-V2-Lite-Base")
    assert "never downloads" in message


def test_repo_id_found_in_local_hf_cache(good, tmp_path, monkeypatch):
    snapshot = tmp_path / "models--acme--tiny" / "snapshots" / "abc123"
    shutil.copytree(good, snapshot)
    (tmp_path / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "models--acme--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    engine = Engine.load("acme/tiny", warmup=False)
    assert engine.args.n_layers == 3


def test_missing_config(copy):
    (copy / "config.json").unlink()
    assert "no config.json" in _error(copy)


def test_unsupported_model_type(copy):
    config = json.loads((copy / "config.json").read_text())
    config["model_type"] = "llama"
    (copy / "config.json").write_text(json.dumps(config))
    message = _error(copy)
    assert "'llama'" in message and "not supported" in message


def test_config_key_errors_name_the_key(copy):
    config = json.loads((copy / "config.json").read_text())
    del config["kv_lora_rank"]
    (copy / "config.json").write_text(json.dumps(config))
    assert "'kv_lora_rank'" in _error(copy)


def test_missing_tensor_is_named(copy):
    _edit_weights(copy, lambda t: t.pop("model.layers.1.mlp.experts.3.up_proj.weight"))
    assert "model.layers.1.mlp.experts.3.up_proj.weight" in _error(copy)


def test_missing_attention_tensor_is_named_in_checkpoint_terms(copy):
    _edit_weights(copy, lambda t: t.pop("model.layers.2.self_attn.kv_b_proj.weight"))
    assert "model.layers.2.self_attn.kv_b_proj.weight" in _error(copy)


def test_unexpected_tensor_is_named(copy):
    _edit_weights(copy, lambda t: t.update({"model.layers.0.self_attn.surprise.weight": torch.zeros(2)}))
    assert "model.layers.0.self_attn.surprise.weight" in _error(copy)


def test_misshaped_tensor_is_named_with_shapes(copy):
    def shrink(t):
        t["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"] = torch.zeros(7, 64)
    _edit_weights(copy, shrink)
    message = _error(copy)
    assert "kv_a_proj_with_mqa" in message and "[7, 64]" in message


def test_truncated_safetensors(copy):
    path = copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in _error(copy)


def test_no_weights(copy):
    (copy / "model.safetensors").unlink()
    assert "no .safetensors" in _error(copy)


def test_sharded_checkpoint_loads(copy):
    tensors = load_file(copy / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, copy / file, metadata={"format": "pt"})
    (copy / "model.safetensors").unlink()
    (copy / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}))
    engine = Engine.load(copy, warmup=False)
    assert engine.model.parameter_count() > 0


def test_missing_tokenizer(copy):
    (copy / "tokenizer.json").unlink()
    assert "tokenizer.json" in _error(copy)


def test_bad_dtype_is_one_sentence():
    with pytest.raises(OptionError) as info:
        RuntimeConfig(dtype="float8")
    assert str(info.value) == ("Setting 'dtype' cannot be 'float8'; it takes one of float32, bfloat16, "
                               "float16.")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_loads_and_stays_close(good, dtype):
    ref = Engine.load(good, warmup=False)
    half = Engine.load(good, RuntimeConfig(dtype=dtype), warmup=False)
    ids = list(range(5, 37))
    assert half.model.embed.weight.dtype == getattr(torch, dtype)
    diff = (half.logits(ids) - ref.logits(ids)).abs().max().item()
    assert diff < 0.25 * ref.logits(ids).abs().max().item()


def test_legacy_rope_scaling_and_rope_parameters_agree(good):
    config = json.loads((good / "config.json").read_text())
    yarn = {"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "beta_fast": 32,
            "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}
    legacy = {**config, "rope_scaling": yarn, "rope_theta": 10000.0}
    legacy.pop("rope_parameters", None)
    modern = {**config, "rope_parameters": {**{k: v for k, v in yarn.items() if k != "type"}, "rope_type": "yarn",
                                            "rope_theta": 10000.0}}
    a, b = ModelArgs.from_dict(legacy), ModelArgs.from_dict(modern)
    assert a.rope_type == b.rope_type == "yarn"
    assert a.softmax_scale == pytest.approx(b.softmax_scale)
    # Coder-V2-Lite's documented scale: (128 + 64)^-0.5 * m^2 with m = 0.1 * 0.707 * ln 40 + 1
    m = 0.1 * 0.707 * torch.log(torch.tensor(40.0)).item() + 1
    assert a.softmax_scale == pytest.approx((config["qk_nope_head_dim"] + config["qk_rope_head_dim"]) ** -0.5 * m * m)


def test_the_folder_declares_its_fim_layouts_and_languages(copy):
    assert Engine.load(copy, warmup=False).fim_layouts == ()          # a real checkpoint: PSM only
    config = json.loads((copy / "config.json").read_text())
    config.update(fim_layouts=["psm", "spm"], languages=["python"])
    (copy / "config.json").write_text(json.dumps(config))
    engine = Engine.load(copy, warmup=False)
    assert (engine.fim_layouts, engine.languages) == (("psm", "spm"), ("python",))
    config["fim_layouts"] = ["middle-out"]
    (copy / "config.json").write_text(json.dumps(config))
    assert "'fim_layouts' holds 'middle-out'; it takes psm, spm" in _error(copy)


@pytest.mark.parametrize("kind", ["v2-qlora-group", "v2-greedy-yarn"])
def test_int8_quantized_while_loading_equals_quantizing_the_float_model(tmp_path, kind):
    """Loading with quantize=int8 quantizes each weight as it completes (so a Lite-sized model
    never exists in float32): the result is the float model quantized afterwards, exactly."""
    from model.config import ModelArgs as Args
    from model.loader import load_model
    from model.quant import Int8Experts, Int8Linear, quantize_int8

    save_checkpoint(kind, tmp_path)
    args = Args.from_dict(json.loads((tmp_path / "config.json").read_text()))
    streamed = load_model(tmp_path, args, quantize="int8")
    after = quantize_int8(load_model(tmp_path, args))
    assert any(isinstance(m, Int8Experts) for m in streamed.modules())
    assert not any(isinstance(m, torch.nn.Linear) for m in streamed.modules())
    a, b = streamed.state_dict(), after.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert sum(isinstance(m, Int8Linear) for m in streamed.modules()) == sum(
        isinstance(m, Int8Linear) for m in after.modules())
    engine = Engine.load(tmp_path, RuntimeConfig(quantize="int8"))
    post = Engine(after, engine.tokenizer, engine.runtime, name="quantized after loading")
    assert torch.equal(engine.logits(list(range(3, 40))), post.logits(list(range(3, 40))))
