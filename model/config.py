"""Model hyper-parameters read from a Hugging Face `config.json`.

`ModelArgs` describes the weights (what the checkpoint fixes); how we run them (dtype, device,
attention path, cache budget) is `model.params.RuntimeConfig` and travels separately.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fim import LAYOUTS

SUPPORTED_MODEL_TYPES = ("deepseek_v2", "deepseek_v3")


class ConfigError(ValueError):
    """A config.json that we cannot run; the message names the offending key."""


@dataclass
class ModelArgs:
    model_type: str = "deepseek_v2"
    vocab_size: int = 102400
    dim: int = 2048                      # hidden_size
    n_layers: int = 27
    n_heads: int = 16
    norm_eps: float = 1e-6
    max_position_embeddings: int = 163840
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    # mla
    q_lora_rank: int | None = None       # None: plain q_proj
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    # dense feed-forward (the first `first_k_dense_replace` layers)
    inter_dim: int = 10944               # intermediate_size
    # moe
    n_routed_experts: int = 64
    n_shared_experts: int = 2
    n_activated_experts: int = 6         # num_experts_per_tok
    moe_inter_dim: int = 1408            # moe_intermediate_size
    first_k_dense_replace: int = 1
    moe_layer_freq: int = 1
    topk_method: str = "greedy"          # greedy | group_limited_greedy | noaux_tc
    scoring_func: str = "softmax"        # softmax | sigmoid
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    # rope / yarn
    rope_theta: float = 10000.0
    rope_type: str = "default"           # default | yarn
    rope_factor: float = 1.0
    original_max_position_embeddings: int = 4096
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0
    rope_interleave: bool = True         # checkpoint rope dims come in adjacent pairs
    # what it was trained on, as the folder declares it (real DeepSeek checkpoints declare none)
    fim_layouts: tuple[str, ...] = ()    # of model.fim.LAYOUTS; none declared: PSM only
    languages: tuple[str, ...] = ()      # language ids; none declared: any language
    # derived in __post_init__
    qk_head_dim: int = field(init=False)
    softmax_scale: float = field(init=False)
    rope_attention_factor: float = field(init=False)

    def __post_init__(self) -> None:
        self.qk_head_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
        scale = self.qk_head_dim ** -0.5
        if self.rope_type == "yarn" and self.mscale_all_dim:
            m = yarn_mscale(self.rope_factor, self.mscale_all_dim)
            scale *= m * m
        self.softmax_scale = scale
        self.rope_attention_factor = 1.0
        if self.rope_type == "yarn":
            if self.mscale and self.mscale_all_dim:
                self.rope_attention_factor = yarn_mscale(self.rope_factor, self.mscale) / yarn_mscale(
                    self.rope_factor, self.mscale_all_dim
                )
            else:
                self.rope_attention_factor = yarn_mscale(self.rope_factor)

    def is_moe_layer(self, layer: int) -> bool:
        return (
            self.n_routed_experts > 0
            and layer >= self.first_k_dense_replace
            and layer % self.moe_layer_freq == 0
        )

    @property
    def latent_dim(self) -> int:
        """Values cached per token and layer: the normed c_KV plus the roped k_pe."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelArgs":
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config.json") -> "ModelArgs":
        return _parse(raw, source)


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


# ---------------------------------------------------------------------------------------------
# config.json parsing

_REQUIRED = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "intermediate_size",
)


def _parse(raw: dict, source: str) -> ModelArgs:
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"{source}: model_type {model_type!r} is not supported "
            f"(Latent runs {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    for key in _REQUIRED:
        if key not in raw or raw[key] is None:
            raise ConfigError(f"{source}: required key {key!r} is missing")
    v3 = model_type == "deepseek_v3"
    args: dict[str, Any] = dict(
        model_type=model_type,
        vocab_size=_int(raw, "vocab_size", source),
        dim=_int(raw, "hidden_size", source),
        n_layers=_int(raw, "num_hidden_layers", source),
        n_heads=_int(raw, "num_attention_heads", source),
        norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        bos_token_id=_first(raw.get("bos_token_id")),
        eos_token_id=_first(raw.get("eos_token_id")),
        q_lora_rank=raw.get("q_lora_rank") or None,   # 0 and null both mean "no q-LoRA"
        kv_lora_rank=_int(raw, "kv_lora_rank", source),
        qk_nope_head_dim=_int(raw, "qk_nope_head_dim", source),
        qk_rope_head_dim=_int(raw, "qk_rope_head_dim", source),
        v_head_dim=_int(raw, "v_head_dim", source),
        inter_dim=_int(raw, "intermediate_size", source),
        n_routed_experts=int(raw.get("n_routed_experts") or 0),
        n_shared_experts=int(raw.get("n_shared_experts") or 0),
        n_activated_experts=int(raw.get("num_experts_per_tok") or 0),
        moe_inter_dim=int(raw.get("moe_intermediate_size") or 0),
        first_k_dense_replace=int(raw.get("first_k_dense_replace") or 0),
        moe_layer_freq=int(raw.get("moe_layer_freq") or 1),
        topk_method=raw.get("topk_method") or ("noaux_tc" if v3 else "greedy"),
        scoring_func=raw.get("scoring_func") or ("sigmoid" if v3 else "softmax"),
        n_group=int(raw.get("n_group") or 1),
        topk_group=int(raw.get("topk_group") or 1),
        norm_topk_prob=bool(raw.get("norm_topk_prob", v3)),
        routed_scaling_factor=float(raw.get("routed_scaling_factor") or 1.0),
        rope_interleave=bool(raw.get("rope_interleave", True)) if v3 else True,
        fim_layouts=_names(raw, "fim_layouts", source, allowed=LAYOUTS),
        languages=_names(raw, "languages", source),
    )
    args.update(_rope(raw, source))
    _validate(args, source)
    return ModelArgs(**args)


def _rope(raw: dict, source: str) -> dict:
    """Legacy `rope_theta` + `rope_scaling`, or the newer `rope_parameters` dict."""
    params = raw.get("rope_parameters") or {}
    legacy = raw.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(legacy, dict):
        raise ConfigError(f"{source}: 'rope_parameters' / 'rope_scaling' must be an object")
    merged = {**legacy, **params}
    rope_type = merged.get("rope_type") or merged.get("type") or "default"
    if rope_type not in ("default", "yarn"):
        raise ConfigError(f"{source}: rope type {rope_type!r} in 'rope_scaling' is not supported (default, yarn)")
    out = dict(
        rope_theta=float(merged.get("rope_theta", raw.get("rope_theta", 10000.0))),
        rope_type=rope_type,
    )
    if rope_type == "yarn":
        for key in ("factor", "original_max_position_embeddings"):
            if merged.get(key) is None:
                raise ConfigError(f"{source}: yarn rope scaling needs key {key!r}")
        out.update(
            rope_factor=float(merged["factor"]),
            original_max_position_embeddings=int(merged["original_max_position_embeddings"]),
            beta_fast=float(merged.get("beta_fast") or 32),
            beta_slow=float(merged.get("beta_slow") or 1),
            mscale=float(merged.get("mscale") or 0.0),
            mscale_all_dim=float(merged.get("mscale_all_dim") or 0.0),
        )
    return out


def _validate(a: dict, source: str) -> None:
    positive = ("vocab_size", "dim", "n_layers", "n_heads", "kv_lora_rank", "qk_rope_head_dim", "v_head_dim")
    for key in positive:
        if a[key] <= 0:
            raise ConfigError(f"{source}: {_HF_NAME.get(key, key)!r} must be positive, got {a[key]}")
    if a["qk_rope_head_dim"] % 2:
        raise ConfigError(f"{source}: 'qk_rope_head_dim' must be even, got {a['qk_rope_head_dim']}")
    if a["n_routed_experts"]:
        if not 0 < a["n_activated_experts"] <= a["n_routed_experts"]:
            raise ConfigError(
                f"{source}: 'num_experts_per_tok' must be between 1 and n_routed_experts "
                f"({a['n_routed_experts']}), got {a['n_activated_experts']}"
            )
        if a["moe_inter_dim"] <= 0:
            raise ConfigError(f"{source}: 'moe_intermediate_size' must be positive for a MoE model")
        if a["topk_method"] not in ("greedy", "group_limited_greedy", "noaux_tc"):
            raise ConfigError(f"{source}: 'topk_method' {a['topk_method']!r} is not supported")
        if a["scoring_func"] not in ("softmax", "sigmoid"):
            raise ConfigError(f"{source}: 'scoring_func' {a['scoring_func']!r} is not supported")
        if a["n_routed_experts"] % a["n_group"]:
            raise ConfigError(f"{source}: 'n_group' ({a['n_group']}) must divide n_routed_experts")
        if not 0 < a["topk_group"] <= a["n_group"]:
            raise ConfigError(f"{source}: 'topk_group' must be between 1 and n_group ({a['n_group']})")


_HF_NAME = {"dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads"}


def _names(raw: dict, key: str, source: str, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
    value = raw.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{source}: {key!r} must be a list of names")
    bad = [v for v in value if allowed is not None and v not in allowed]
    if bad and allowed is not None:
        raise ConfigError(f"{source}: {key!r} holds {bad[0]!r}; it takes {', '.join(allowed)}")
    return tuple(value)


def _int(raw: dict, key: str, source: str) -> int:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{source}: {key!r} must be an integer, got {value!r}")
    return value


def _first(value):
    if isinstance(value, list):
        return value[0] if value else None
    return value
