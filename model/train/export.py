"""Export: the Hugging Face model folder (config, per-expert tensor names, tokenizer files)
and its model card."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from model.fim import BOS, DEEPSEEK, EOS
from model.train.corpus import BOS_ID, EOS_ID, TOKENIZER_FILES, Corpus
from model.train.loop import Trainer


def export_state_dict(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """Tensors under DeepSeek's on-disk names, whatever layout transformers uses in memory:
    fused `experts.gate_up_proj` (E, 2I, d) / `experts.down_proj` (E, d, I) are split into
    `experts.{e}.{gate,up,down}_proj.weight`."""
    out, inter = {}, config["moe_intermediate_size"]
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu", torch.float32).contiguous()
        if name.endswith("experts.gate_up_proj"):
            base = name[: -len("gate_up_proj")]
            for e in range(tensor.shape[0]):
                out[f"{base}{e}.gate_proj.weight"] = tensor[e, :inter].clone()
                out[f"{base}{e}.up_proj.weight"] = tensor[e, inter:].clone()
        elif name.endswith("experts.down_proj"):
            base = name[: -len("down_proj")]
            for e in range(tensor.shape[0]):
                out[f"{base}{e}.down_proj.weight"] = tensor[e].clone()
        else:
            out[name] = tensor
    return dict(sorted(out.items()))


def export_model(state: dict, config: dict, corpus: Corpus, out: Path, card: str) -> None:
    """Write config.json, generation_config.json, model.safetensors, the tokenizer files and
    README.md (7 files) into `out`, replacing what was there."""
    from safetensors.torch import save_file

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "do_sample": False}
    (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    save_file(export_state_dict(state, config), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    for name in TOKENIZER_FILES:
        shutil.copyfile(corpus.root / name, tmp / name)
    (tmp / "README.md").write_text(card)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def model_card(trainer: Trainer, final: dict, command: str) -> str:
    """README.md of the model folder: data, license, command, tokens seen, curve, figures."""
    meta, args, cfg, state = trainer.corpus.meta, trainer.args, trainer.config, trainer.state
    tr, ho = meta["train"], meta["heldout"]
    data = (f"The `.py` files of the CPython {meta['python']} standard library (PSF License 2.0)"
            if meta.get("python") else f"The `.py` files under `{meta['source']}`")
    curve = "\n".join(
        f"| {h['step']} | {h['tokens'] / 1e6:.2f} | {h['minutes']:.1f} | {h['loss']:.3f} | "
        f"{h['bpb']:.3f} | {h['fim_middle_loss']:.3f} |" for h in _thin(state.history, 12))
    return f"""---
license: mit
library_name: transformers
pipeline_tag: text-generation
tags: [code, fill-in-the-middle, deepseek_v2, latent]
heldout_bpb: {final['bpb']:.4f}
heldout_fim_middle_loss: {final['fim_middle_loss']:.4f}
tokens_seen: {state.tokens}
parameters: {trainer.n_params}
---

# Latent bundled coder

A {trainer.n_params / 1e6:.2f}M-parameter DeepSeek-V2-architecture model that ships with
Latent so a fresh clone completes code with no download. It is a toy next to DeepSeek-Coder-V2-Lite:
it knows the idioms of Python's standard library and little else. It exists so that the real
loading and serving path (MLA latent cache, MoE dispatch, FIM prompts) always runs.

## Architecture
DeepSeek-V2 (`model_type` `deepseek_v2`), fp32, {cfg['num_hidden_layers']} layers, hidden
{cfg['hidden_size']}, {cfg['num_attention_heads']} heads. MLA: q_lora_rank {cfg['q_lora_rank']},
kv_lora_rank {cfg['kv_lora_rank']} (the cached latent, smaller than the hidden size),
qk_nope {cfg['qk_nope_head_dim']} + qk_rope {cfg['qk_rope_head_dim']}, v_head {cfg['v_head_dim']}.
MoE from layer {cfg['first_k_dense_replace']} on: {cfg['n_routed_experts']} routed experts
(top-{cfg['num_experts_per_tok']}, greedy softmax, no renormalisation) + {cfg['n_shared_experts']}
shared expert of width {cfg['moe_intermediate_size']}; the first layer is a dense SwiGLU of width
{cfg['intermediate_size']}. Plain RoPE (theta 10000), max positions {cfg['max_position_embeddings']}
(trained at {args.seq_len}). Untied embeddings. Tensors are stored per expert, as in DeepSeek's
checkpoints.

## Tokenizer
Byte-level BPE, {cfg['vocab_size']} entries (trained with `tokenizers` on the training split),
GPT-2 pre-tokenizer regex, no prefix space; every file round-trips byte for byte. The
DeepSeek-Coder special tokens are single tokens: `{BOS}` 0, `{EOS}` 1, `{DEEPSEEK.prefix}` 2,
`{DEEPSEEK.suffix}` 3, `{DEEPSEEK.middle}` 4. `AutoTokenizer` prepends BOS (`add_bos_token`).

## Data
{data}: {tr['files']} training files ({tr['bytes'] / 1e6:.1f} MB, {tr['tokens'] / 1e6:.2f}M
tokens) and {ho['files']} held-out files ({ho['bytes'] / 1e6:.2f} MB, {ho['tokens'] / 1e3:.0f}k tokens),
split by a stable hash of each file's path (sha256, ≈2 %); {len(meta['skipped_not_utf8'])} files
that are not UTF-8 are skipped. The weights are released under the MIT license, like Latent;
the training data is © Python Software Foundation, PSF License 2.0.

## Objective
Windows of {args.seq_len} tokens at a phase re-drawn every epoch. {args.fim_rate:.0%} of them in
PSM form, `BOS fim_begin prefix fim_hole suffix fim_end middle EOS`, with the three pieces
tokenised separately as a prompt is; holes open uniformly at random (30 %), at the rest of a
line (20 %), inside a line (15 %), over whole lines from column 0 or the indentation (25 %),
and over the body of a block just opened by a colon (10 %). The others are plain text.
Packed into rows without splitting a sample. Loss on every token, plus a {args.balance_coef} × expert balance
loss.

## Training
```
{command}
```
Device {args.device}, seed {args.seed}, batch {args.batch_size} × {args.seq_len}, AdamW
(lr {args.lr}, betas 0.9/0.95, weight decay {args.weight_decay}), {args.warmup_steps} warm-up
steps then cosine to 10 %, gradient clipping {args.clip}. {state.step} steps,
**{state.tokens / 1e6:.1f}M tokens seen** ({state.epoch} full epochs), {state.train_seconds / 60:.1f}
minutes ({state.tokens / max(state.train_seconds, 1):,.0f} tokens/s on average, checks included).
The weights are those of step {state.best_step}, the best held-out loss. The curve's held-out
figures come from {_rows_note(args.eval_rows)}.

| step | tokens (M) | minutes | held-out loss | bits/byte | FIM middle loss |
|---|---|---|---|---|---|
{curve}

## Held-out figures ({_rows_note(args.final_eval_rows)}: {final['targets']:,} targets)
- **{final['bpb']:.3f} bits per byte** on plain text (text tokens only),
- {final['fim_middle_loss']:.3f} nats per middle token on PSM samples,
- {final['loss']:.3f} nats per token over both.

Single-line HumanEval infilling: see `docs/benchmarks.md` (`benchmarks/humaneval_infill.py`).
"""


def _rows_note(max_rows: int) -> str:
    return f"{max_rows} evenly spread rows of each held-out set" if max_rows else "every held-out row"


def _thin(history: list[dict], n: int) -> list[dict]:
    if len(history) <= n:
        return history
    picks = np.linspace(0, len(history) - 1, n).round().astype(int)
    return [history[i] for i in sorted(set(picks.tolist()))]
