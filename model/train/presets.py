"""The model being trained: presets of DeepSeek-V2 shapes, their HF config.json, the model."""
from __future__ import annotations

from dataclasses import dataclass

from model.train.corpus import BOS_ID, EOS_ID, MAX_POSITIONS, TrainError


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    # mla
    q_lora_rank: int
    kv_lora_rank: int
    dense_intermediate: int
    expert_intermediate: int
    experts: int
    # mla heads: v_head == qk_nope + qk_rope lets PyTorch's CPU flash-attention kernel run
    qk_nope: int = 32
    qk_rope: int = 16
    v_head: int = 48
    experts_per_token: int = 2       # routed; plus one shared expert, and the first layer dense


PRESETS = {
    # For tests: trains in seconds.
    "tiny": Shape(hidden=64, layers=2, heads=2, q_lora_rank=32, kv_lora_rank=16, qk_nope=16,
                  qk_rope=8, v_head=24, dense_intermediate=128, expert_intermediate=32, experts=4),
    # The model shipped until now: 3.96M parameters with an 8,192 vocabulary.
    "bundled": Shape(hidden=160, layers=4, heads=4, q_lora_rank=64, kv_lora_rank=48,
                     dense_intermediate=384, expert_intermediate=64, experts=8),
    # GPU-trained candidates of 15–40M parameters at the 8,192 vocabulary; sizes, bytes per
    # token and per-keystroke latency measured by `python -m model.train.sizing` (see
    # docs/training.md). At one CPU thread a decode step costs about the same per layer
    # whatever its width, and routed experts add parameters without adding work per token:
    # "small" is shallow with many experts, the one that answers a keystroke in ≤ 80 ms.
    "small": Shape(hidden=224, layers=4, heads=4, q_lora_rank=112, kv_lora_rank=64,
                   dense_intermediate=672, expert_intermediate=128, experts=40),
    "medium": Shape(hidden=320, layers=6, heads=5, q_lora_rank=160, kv_lora_rank=80,
                    dense_intermediate=960, expert_intermediate=160, experts=16),
    "large": Shape(hidden=384, layers=6, heads=6, q_lora_rank=192, kv_lora_rank=96,
                   dense_intermediate=1152, expert_intermediate=160, experts=16),
}


def hf_config(shape: Shape, vocab_size: int, fim_layouts: tuple[str, ...] = ("psm", "spm"),
              languages: tuple[str, ...] = ("python",), context: int = MAX_POSITIONS) -> dict:
    """config.json in the layout of DeepSeek-Coder-V2-Lite (plus transformers 5's
    `rope_parameters`); greedy softmax routing, no top-k renormalisation, untied head; the FIM
    layouts and languages it is trained on, which the engine reads (model/config.py), and as
    `max_position_embeddings` the `context` it is trained at: the completion pipeline keeps
    prompt and new tokens within it."""
    return {
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        "vocab_size": vocab_size,
        "hidden_size": shape.hidden,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.heads,
        "q_lora_rank": shape.q_lora_rank,
        "kv_lora_rank": shape.kv_lora_rank,
        "qk_nope_head_dim": shape.qk_nope,
        "qk_rope_head_dim": shape.qk_rope,
        "v_head_dim": shape.v_head,
        "intermediate_size": shape.dense_intermediate,
        "moe_intermediate_size": shape.expert_intermediate,
        "n_routed_experts": shape.experts,
        "n_shared_experts": 1,
        "num_experts_per_tok": shape.experts_per_token,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "topk_method": "greedy",
        "n_group": 1,
        "topk_group": 1,
        "scoring_func": "softmax",
        "norm_topk_prob": False,
        "routed_scaling_factor": 1.0,
        "hidden_act": "silu",
        "max_position_embeddings": context,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": None,
        "use_cache": True,
        "torch_dtype": "bfloat16",
        "fim_layouts": list(fim_layouts),
        "languages": list(languages),
    }


def build_model(config: dict, experts: str):
    """transformers' DeepseekV2ForCausalLM in fp32; `experts` picks its experts kernel
    ("auto": transformers' own choice)."""
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

    model = DeepseekV2ForCausalLM(DeepseekV2Config.from_dict(config)).float()
    if experts != "auto":
        if not hasattr(model, "set_experts_implementation"):
            raise TrainError(f"--experts {experts}: this transformers version cannot choose it")
        model.set_experts_implementation(experts)
    return model
