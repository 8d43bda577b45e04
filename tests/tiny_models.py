"""Tiny random DeepSeek-V2/V3 checkpoints written with transformers, for parity tests."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from model.fim import BOS, DEEPSEEK, EOS

SPECIALS = [BOS, EOS, DEEPSEEK.prefix, DEEPSEEK.suffix, DEEPSEEK.middle]

YARN = {
    "rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "mscale": 0.707, "mscale_all_dim": 0.707,
    "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1,
}

COMMON = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
    v_head_dim=16, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1,
    max_position_embeddings=163840, initializer_range=0.2, bos_token_id=0, eos_token_id=1,
)

VARIANTS = {
    # DeepSeek-Coder-V2-Lite's choices: no q-LoRA, greedy softmax routing, YaRN
    "v2-greedy-yarn": ("v2", dict(q_lora_rank=None, rope_parameters=YARN)),
    # DeepSeek-V2's: q-LoRA, group-limited routing
    "v2-qlora-group": ("v2", dict(q_lora_rank=24, topk_method="group_limited_greedy", n_group=4, topk_group=2)),
    # V3: sigmoid + correction bias (noaux_tc), normalised weights, scaling factor, YaRN
    "v3-noaux-yarn": ("v3", dict(q_lora_rank=24, n_group=4, topk_group=2, norm_topk_prob=True,
                                 routed_scaling_factor=2.5, num_mtp_layers=0, rope_parameters=YARN)),
}


def build_reference(variant: str, seed: int = 0):
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM

    family, extra = VARIANTS[variant]
    config_cls, model_cls = (DeepseekV2Config, DeepseekV2ForCausalLM) if family == "v2" else (DeepseekV3Config, DeepseekV3ForCausalLM)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**COMMON, **extra)).float().eval()
    for module in model.modules():  # a non-zero correction bias, so noaux_tc really uses it
        if hasattr(module, "e_score_correction_bias"):
            module.e_score_correction_bias.data = torch.randn_like(module.e_score_correction_bias) * 0.1
    return model


def write_tokenizer(folder: Path, corpus: list[str] | None = None) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = corpus or ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i)\n"] * 20
    trainer = BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=SPECIALS)
    tok.train_from_iterator(corpus, trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": SPECIALS[0], "eos_token": SPECIALS[1], "add_bos_token": True,
         "tokenizer_class": "PreTrainedTokenizerFast"}, ensure_ascii=False))


def save_checkpoint(variant: str, folder: Path, seed: int = 0):
    model = build_reference(variant, seed)
    model.save_pretrained(folder)
    write_tokenizer(folder)
    return model
