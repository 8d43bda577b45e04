"""Load a local Hugging Face DeepSeek-V2/V3 checkpoint into our Transformer.

A model is a folder holding `config.json`, `model.safetensors` (or shards listed in
`model.safetensors.index.json`) and tokenizer files, or a repo id already present in the
local Hugging Face cache. Nothing is ever downloaded.

The model is built on the meta device; checkpoint tensors are renamed once by the table
below (per-expert tensors are stacked into w13 / w2) and assigned. With `quantize="int8"` each
weight is quantized as soon as it is complete (a layer's experts once all are in), so loading
never holds more than the int8 model and one layer's float experts: DeepSeek-Coder-V2-Lite in
int8 loads in ~17 GB, not the 63 GB of its float32 form. Every problem — missing
folder, unsupported model, missing / unexpected / mis-shaped tensor, truncated file — is one
`ModelLoadError` whose message is a sentence a user can act on.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

from .config import ConfigError, ModelArgs
from .protocol import ModelLoadError  # re-exported: the error every backend raises

# torch is imported where tensors are made: finding and checking a model folder stays light,
# so a language server attached to the engine daemon never loads PyTorch.
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
# A folder of `latent adapt`'s low-rank adapters (model/train/adapt.py) instead of weights: the
# base model's weights with W + scale · B A added as they load.
ADAPTER = "adapter.safetensors"           # "<weight name>.lora_A" (r, in) and ".lora_B" (out, r)
ADAPTER_CONFIG = "adapter_config.json"    # {"base": "bundled" or the base's folder, "scale": alpha / r}




# ---------------------------------------------------------------------------------------------
# where the model is

def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """A local folder, or a repo id ("org/name") found in the local Hugging Face cache."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    text = str(name_or_path)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", text) and not path.exists():
        found = _find_in_hf_cache(text)
        if found is not None:
            return found
        raise ModelLoadError(
            f"Model {text!r} is neither a folder nor in the local Hugging Face cache "
            f"({_hf_hub_dir()}); Latent never downloads, so fetch it first "
            f"(e.g. `hf download {text}`) or give a folder path."
        )
    if path.exists():
        raise ModelLoadError(f"Model path {path} is a file; give the folder that holds config.json.")
    raise ModelLoadError(f"Model folder {path} does not exist.")


def _hf_hub_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


def _find_in_hf_cache(repo_id: str) -> Path | None:
    repo = _hf_hub_dir() / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file():
        candidate = snapshots / ref.read_text().strip()
        if (candidate / "config.json").is_file():
            return candidate
    for candidate in sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def read_args(model_dir: Path) -> ModelArgs:
    config = model_dir / "config.json"
    if not config.is_file():
        raise ModelLoadError(f"Model folder {model_dir} has no config.json.")
    try:
        return ModelArgs.from_json(config)
    except ConfigError as e:
        raise ModelLoadError(str(e)) from None


# ---------------------------------------------------------------------------------------------
# checkpoint names -> our names (the one mapping table)

_LAYER = r"^model\.layers\.(\d+)\."
_RENAMES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^model\.embed_tokens\.weight$"), "embed.weight"),
    (re.compile(r"^model\.norm\.weight$"), "norm.weight"),
    (re.compile(r"^lm_head\.weight$"), "head.weight"),
    (re.compile(_LAYER + r"input_layernorm\.weight$"), r"layers.\1.attn_norm.weight"),
    (re.compile(_LAYER + r"post_attention_layernorm\.weight$"), r"layers.\1.ffn_norm.weight"),
    (re.compile(_LAYER + r"self_attn\.(\w+)\.weight$"), r"layers.\1.attn.\2.weight"),
    (re.compile(_LAYER + r"mlp\.gate\.weight$"), r"layers.\1.ffn.gate.weight"),
    (re.compile(_LAYER + r"mlp\.gate\.e_score_correction_bias$"), r"layers.\1.ffn.gate.bias"),
    (re.compile(_LAYER + r"mlp\.shared_experts\.(\w+)\.weight$"), r"layers.\1.ffn.shared.\2.weight"),
    (re.compile(_LAYER + r"mlp\.(gate_proj|up_proj|down_proj)\.weight$"), r"layers.\1.ffn.\2.weight"),
]
# per-expert tensors, stacked: (target, expert index, row slice selector)
_EXPERT = re.compile(_LAYER + r"mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")
# transformers-5 fused layout, should a checkpoint carry it
_FUSED = re.compile(_LAYER + r"mlp\.experts\.(gate_up_proj|down_proj)(?:\.weight)?$")
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")
_KV_B = ".kv_b_proj.weight"


def _layer_of(name: str) -> int | None:
    m = re.match(_LAYER, name)
    return int(m.group(1)) if m else None


def map_name(name: str) -> str | None:
    for pattern, target in _RENAMES:
        if pattern.match(name):
            return pattern.sub(target, name)
    return None


# ---------------------------------------------------------------------------------------------
# reading tensors

def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ModelLoadError(f"{index} is not a valid safetensors index ({e}).") from None
        files = sorted({model_dir / f for f in weight_map.values()})
        for f in files:
            if not f.is_file():
                raise ModelLoadError(f"Shard {f.name} listed in {index.name} is missing from {model_dir}.")
        return files
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    files = sorted(model_dir.glob("*.safetensors"))
    if files:
        return files
    if list(model_dir.glob("*.bin")) or list(model_dir.glob("*.pt")):
        raise ModelLoadError(f"{model_dir} holds PyTorch pickle weights; Latent reads only .safetensors files.")
    raise ModelLoadError(f"Model folder {model_dir} has no .safetensors weights.")


def _iter_tensors(files: list[Path]):
    from safetensors import SafetensorError, safe_open

    for f in files:
        try:
            handle = safe_open(str(f), framework="pt")
            keys = list(handle.keys())
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelLoadError(f"Weights file {f.name} is truncated or corrupt ({_short(e)}).") from None
        for key in keys:
            try:
                yield key, handle.get_tensor(key)
            except (SafetensorError, OSError, ValueError, RuntimeError) as e:
                raise ModelLoadError(f"Tensor {key} in {f.name} cannot be read: the file is truncated or corrupt ({_short(e)}).") from None


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__


# ---------------------------------------------------------------------------------------------
# building the model

def load_model(model_dir: Path, args: ModelArgs, dtype: str = "float32", device: str = "cpu",
               quantize: str | None = None):
    """The Transformer with the checkpoint's weights, on `device` in `dtype` (int8 weights and
    `dtype` scales with quantize="int8")."""
    if (model_dir / ADAPTER_CONFIG).is_file():
        return build_model(_adapted(model_dir), args, dtype, device, quantize)
    return build_model(_iter_tensors(_weight_files(model_dir)), args, dtype, device, quantize)


def _adapted(model_dir: Path):
    """(name, tensor) of the base model's weights with the folder's adapters added."""
    try:
        config = json.loads((model_dir / ADAPTER_CONFIG).read_text())
        base = BUNDLED_DIR if config["base"] == "bundled" else Path(config["base"])
        scale = float(config["scale"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"{model_dir / ADAPTER_CONFIG} cannot be read ({_short(e)}).") from None
    adapters = dict(_iter_tensors([model_dir / ADAPTER]))
    for key, tensor in _iter_tensors(_weight_files(base)):
        a, b = adapters.get(f"{key}.lora_A"), adapters.get(f"{key}.lora_B")
        if a is not None and b is not None:
            tensor = (tensor.float() + scale * (b.float() @ a.float())).to(tensor.dtype)
        yield key, tensor


def build_model(tensors, args: ModelArgs, dtype: str = "float32", device: str = "cpu",
                quantize: str | None = None):
    """The Transformer from (checkpoint name, tensor) pairs — a folder's files, or a
    transformers model's state_dict() items (its fused experts are taken as they are)."""
    import torch

    from .int4 import quantize_q4
    from .mla import MLA
    from .quant import quantize_rows
    from .transformer import Transformer

    torch_dtype = getattr(torch, dtype)
    with torch.device("meta"), _skip_init():
        model = Transformer(args)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    filled: dict[str, set] = {}
    unexpected: list[str] = []
    quantized = _quantized_keys(model, quantize)   # weight key -> (its scale's key, "int8" | "int4")
    absorbed: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {}   # attention -> int4 W_UK transposed (mla.py)

    def settle(target: str) -> None:
        """A weight is complete: quantize it now, if asked, so its float form is dropped."""
        if target in quantized and state[target].is_floating_point():
            scale_key, scheme = quantized[target]
            if scheme == "int4":
                if target.endswith(_KV_B):   # absorbed attention's W_UK, from the float weight
                    name = target[: -len(_KV_B)]
                    attention = model.get_submodule(name)
                    assert isinstance(attention, MLA), target
                    absorbed[name] = attention.int4_query_weight(state[target])
                state[target], state[scale_key] = quantize_q4(state[target])
            else:
                q, scale = quantize_rows(state[target])
                state[target], state[scale_key] = q, scale.to(torch_dtype)

    def put(target: str, source: str, tensor: torch.Tensor) -> None:
        if target not in expected:
            unexpected.append(source)
            return
        if tuple(tensor.shape) != tuple(expected[target]):
            raise ModelLoadError(
                f"Tensor {source} has shape {list(tensor.shape)} but config.json implies "
                f"{list(expected[target])}; the weights do not match the config."
            )
        keep_fp32 = target.endswith("gate.bias")
        state[target] = tensor.to(device=device, dtype=torch.float32 if keep_fp32 else torch_dtype)
        settle(target)

    for name, tensor in tensors:
        layer = _layer_of(name)
        if _IGNORED.search(name) or (layer is not None and layer >= args.n_layers):
            continue  # rope buffers of old exports; multi-token-prediction layers
        if m := _EXPERT.match(name):
            target = _put_expert(m, name, tensor, args, expected, state, filled, torch_dtype, device, unexpected)
            if target is not None and len(filled[target]) == args.n_routed_experts * (1 if target.endswith("w2") else 2):
                settle(target)
        elif m := _FUSED.match(name):
            target = f"layers.{m.group(1)}.ffn.experts.{'w13' if m.group(2) == 'gate_up_proj' else 'w2'}"
            put(target, name, tensor)
        elif (target := map_name(name)) is not None:
            put(target, name, tensor)
        else:
            unexpected.append(name)

    if args.tie_word_embeddings and "head.weight" not in state and "embed.weight" in state:
        state["head.weight"] = state["embed.weight"]
        settle("head.weight")
    _check_complete(expected, state, filled, unexpected, args)
    if quantized:
        _as_quantized(model, torch_dtype, quantized)
    model.load_state_dict(state, assign=True, strict=True)
    model.init_rope(min(args.max_position_embeddings, 8192))
    if quantized:
        for name, module in model.named_modules():   # the absorbed-attention weights
            if isinstance(module, MLA):
                module.refresh_weights(absorbed.get(name))
    return model.eval()


def _quantized_keys(model, quantize: str | None) -> dict[str, tuple[str, str]]:
    """The weights quantization replaces (every Linear's and the experts'), each with the key of
    its scale in the quantized modules and its scheme: `quantize`, except that with int4 the
    output head stays int8 (llama.cpp's Q4_0 files keep it at 6 bits; on the bundled model it
    moves greedy agreement with float32 from 78 % to 81 % for 4 % more bytes) and so does a
    product whose inputs do not come in whole blocks of 32."""
    from torch import nn

    from .int4 import fits_int4
    from .moe import Experts

    if quantize is None:
        return {}

    def scheme(*inputs: int) -> str:
        return "int4" if quantize == "int4" and all(fits_int4(n) for n in inputs) else "int8"

    out = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Linear):
            out[f"{prefix}weight"] = (f"{prefix}scale", "int8" if name == "head" else scheme(module.weight.shape[1]))
        elif isinstance(module, Experts):
            kind = scheme(module.w13.shape[2], module.w2.shape[2])
            out.update({f"{prefix}w13": (f"{prefix}s13", kind), f"{prefix}w2": (f"{prefix}s2", kind)})
    return out


def _as_quantized(model, dtype, quantized: dict[str, tuple[str, str]]) -> None:
    """Swap the meta model's Linear and Experts modules for their quantized forms (still on
    meta), for the quantized state to be assigned to."""
    import torch
    from torch import nn

    from .int4 import Int4Experts, Int4Linear, q4_shapes
    from .moe import Experts
    from .quant import Int8Experts, Int8Linear

    def empty(shape, kind=torch.int8):
        return torch.empty(shape, dtype=kind, device="meta")

    def int4(out: int, inp: int, *lead: int) -> tuple[torch.Tensor, torch.Tensor]:
        packed, scales = q4_shapes(out, inp)
        return empty((*lead, *packed), torch.uint8), empty((*lead, *scales), torch.float16)

    for name, module in list(model.named_modules()):
        prefix = f"{name}." if name else ""
        for child_name, child in list(module.named_children()):
            key = f"{prefix}{child_name}."
            if isinstance(child, nn.Linear):
                out, inp = child.weight.shape
                if quantized[f"{key}weight"][1] == "int4":
                    packed, scale = int4(out, inp)
                    setattr(module, child_name, Int4Linear(packed, scale, inp, out))
                else:
                    setattr(module, child_name, Int8Linear(empty((out, inp)), empty((out,), dtype), dtype))
            elif isinstance(child, Experts) and not isinstance(child, (Int8Experts, Int4Experts)):
                e, two_i, d = child.w13.shape
                if quantized[f"{key}w13"][1] == "int4":
                    (w13, s13), (w2, s2) = int4(two_i, d, e), int4(d, two_i // 2, e)
                    setattr(module, child_name, Int4Experts(w13, s13, w2, s2, d, two_i // 2))
                else:
                    setattr(module, child_name, Int8Experts(empty((e, two_i, d)), empty((e, two_i), dtype),
                                                            empty((e, d, two_i // 2)), empty((e, d), dtype), dtype))


@contextlib.contextmanager
def _skip_init():
    """Random initialisation is wasted on a model whose weights are assigned next; on the meta
    device it would also pull in PyTorch's meta kernels, seconds of imports at start-up."""
    import torch

    names = ("normal_", "uniform_", "kaiming_uniform_", "trunc_normal_", "zeros_", "ones_")
    saved = {name: getattr(torch.nn.init, name) for name in names}
    for name in names:
        setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def _put_expert(m, name, tensor, args, expected, state, filled, dtype, device, unexpected) -> str | None:
    import torch

    layer, e, kind = int(m.group(1)), int(m.group(2)), m.group(3)
    target = f"layers.{layer}.ffn.experts.{'w2' if kind == 'down' else 'w13'}"
    if target not in expected or e >= args.n_routed_experts:
        unexpected.append(name)
        return
    inter, dim = args.moe_inter_dim, args.dim
    want = (dim, inter) if kind == "down" else (inter, dim)
    if tuple(tensor.shape) != want:
        raise ModelLoadError(
            f"Tensor {name} has shape {list(tensor.shape)} but config.json implies {list(want)}; "
            f"the weights do not match the config."
        )
    if target not in state:
        state[target] = torch.empty(expected[target], dtype=dtype, device=device)
    rows = {"gate": slice(0, inter), "up": slice(inter, 2 * inter), "down": slice(None)}[kind]
    state[target][e, rows] = tensor.to(dtype)
    filled.setdefault(target, set()).add((e, kind))
    return target


def _check_complete(expected, state, filled, unexpected, args) -> None:
    if unexpected:
        more = f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else ""
        raise ModelLoadError(
            f"The checkpoint has tensors this {args.model_type} config does not use: "
            f"{', '.join(unexpected[:3])}{more}."
        )
    missing = [_hf_name(k) for k in expected if k not in state]
    for target, parts in filled.items():
        kinds = ("down",) if target.endswith("w2") else ("gate", "up")
        layer = target.split(".")[1]
        missing += [
            f"model.layers.{layer}.mlp.experts.{e}.{k}_proj.weight"
            for e in range(args.n_routed_experts) for k in kinds if (e, k) not in parts
        ]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ModelLoadError(f"The checkpoint is missing tensor {', '.join(missing[:3])}{more}.")


_REVERSE = [
    (r"^embed\.weight$", "model.embed_tokens.weight"),
    (r"^norm\.weight$", "model.norm.weight"),
    (r"^head\.weight$", "lm_head.weight"),
    (r"^layers\.(\d+)\.attn_norm\.", r"model.layers.\1.input_layernorm."),
    (r"^layers\.(\d+)\.ffn_norm\.", r"model.layers.\1.post_attention_layernorm."),
    (r"^layers\.(\d+)\.attn\.", r"model.layers.\1.self_attn."),
    (r"^layers\.(\d+)\.ffn\.gate\.bias$", r"model.layers.\1.mlp.gate.e_score_correction_bias"),
    (r"^layers\.(\d+)\.ffn\.shared\.", r"model.layers.\1.mlp.shared_experts."),
    (r"^layers\.(\d+)\.ffn\.experts\.w13$", r"model.layers.\1.mlp.experts.*.gate_proj.weight"),
    (r"^layers\.(\d+)\.ffn\.experts\.w2$", r"model.layers.\1.mlp.experts.*.down_proj.weight"),
    (r"^layers\.(\d+)\.ffn\.", r"model.layers.\1.mlp."),
]


def _hf_name(ours: str) -> str:
    """Our parameter name as the checkpoint would spell it, for error messages."""
    for pattern, repl in _REVERSE:
        if re.match(pattern, ours):
            return re.sub(pattern, repl, ours)
    return ours
