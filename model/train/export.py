"""Export: the Hugging Face model folder (config, per-expert tensor names in bf16, shards of at
most 16 MiB, tokenizer files) and its model card."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from model.fim import BOS, DEEPSEEK, EOS
from model.train.corpus import BOS_ID, EOS_ID, TOKENIZER_FILES, Corpus
from model.train.loop import H200_BF16_FLOPS, Trainer, active_params

SHARD_MIB = 16                # the largest file a GPU machine hands back; also fine for git


def export_state_dict(state: dict[str, torch.Tensor], config: dict,
                      dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """Tensors under DeepSeek's on-disk names in `dtype`, whatever layout transformers uses in
    memory: fused `experts.gate_up_proj` (E, 2I, d) / `experts.down_proj` (E, d, I) are split
    into `experts.{e}.{gate,up,down}_proj.weight`. The engine widens bf16 to float32 on load."""
    out, inter = {}, config["moe_intermediate_size"]
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu", dtype).contiguous()
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


def import_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `export_state_dict`: DeepSeek's per-expert tensors stacked back into
    transformers' fused `experts.gate_up_proj` / `experts.down_proj`, everything in float32."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for name, tensor in tensors.items():
        head, sep, tail = name.partition(".experts.")
        if sep and tail.split(".", 1)[0].isdigit():
            e, kind = tail.split(".", 2)[:2]
            experts.setdefault(head, {}).setdefault(int(e), {})[kind] = tensor.float()
        else:
            out[name] = tensor.float()
    for head, per in experts.items():
        order = [per[e] for e in sorted(per)]
        out[f"{head}.experts.gate_up_proj"] = torch.stack([torch.cat([x["gate_proj"], x["up_proj"]]) for x in order])
        out[f"{head}.experts.down_proj"] = torch.stack([x["down_proj"] for x in order])
    return out


def shard(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Consecutive groups of tensors of at most `max_bytes` each (a bigger tensor alone)."""
    groups, size = [{}], 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        if groups[-1] and size + n > max_bytes - 64 * 1024:          # room for the header
            groups.append({})
            size = 0
        groups[-1][name] = t
        size += n
    return groups


def write_model_folder(tensors: dict[str, torch.Tensor], config: dict, tokenizer_dir: Path, out: Path,
                       card: str, shard_mib: float = SHARD_MIB) -> None:
    """config.json, generation_config.json, the weights (model.safetensors, or shards of at most
    `shard_mib` MiB with model.safetensors.index.json), the tokenizer files and README.md,
    replacing whatever `out` held."""
    from safetensors.torch import save_file

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "do_sample": False}
    (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    groups = shard(tensors, int(shard_mib * 2**20))
    if len(groups) == 1:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, group in enumerate(groups, 1):
            name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
            save_file(group, str(tmp / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(group, name))
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, tmp / name)
    (tmp / "README.md").write_text(card)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def export_model(state: dict, config: dict, corpus: Corpus, out: Path, card: str,
                 shard_mib: float = SHARD_MIB) -> None:
    """The finished model folder: bf16 weights under DeepSeek's names, the corpus's tokenizer."""
    write_model_folder(export_state_dict(state, config), config, corpus.root, out, card, shard_mib)


def model_card(trainer: Trainer, final: dict, command: str) -> str:
    """README.md of the model folder: data, license, command, tokens seen, curve, figures."""
    meta, args, cfg, state = trainer.corpus.meta, trainer.args, trainer.config, trainer.state
    tr = meta["train"]
    curve = "\n".join(
        f"| {h['step']} | {h['tokens'] / 1e6:.2f} | {h['minutes']:.1f} | {h['loss']:.3f} | {h['bpb']:.3f} | "
        f"{h['fim_middle_loss_psm']:.3f} | {h['fim_middle_loss_spm']:.3f} |" for h in _thin(state.history, 12))
    tok_s = (state.tokens - state.start_tokens) / max(state.train_seconds, 1)
    speed = f"{tok_s:,.0f} tokens/s on average, checks included"
    if args.device.startswith("cuda"):
        speed += (f"; model FLOPs utilisation {6 * active_params(cfg) * tok_s / H200_BF16_FLOPS:.1%} "
                  f"(6 · {active_params(cfg) / 1e6:.1f}M active parameters · tokens/s over 989 TFLOP/s)")
    layouts = " and ".join(x.upper() for x in cfg["fim_layouts"])
    return f"""---
license: mit
library_name: transformers
pipeline_tag: text-generation
tags: [code, fill-in-the-middle, deepseek_v2, latent]
fim_layouts: {json.dumps(cfg['fim_layouts'])}
languages: {json.dumps(cfg['languages'])}
heldout_bpb: {final['bpb']:.4f}
heldout_fim_middle_loss_psm: {final['fim_middle_loss_psm']:.4f}
heldout_fim_middle_loss_spm: {final['fim_middle_loss_spm']:.4f}
tokens_seen: {state.tokens}
parameters: {trainer.n_params}
corpus_manifest_sha256: {meta.get('manifest_sha256') or 'none'}
---

# Latent bundled coder

A {trainer.n_params / 1e6:.2f}M-parameter DeepSeek-V2-architecture model that ships with
Latent so a fresh clone completes Python with no download. It is small next to
DeepSeek-Coder-V2-Lite; it exists so that completions work out of the box and the real
loading and serving path (MLA latent cache, MoE dispatch, FIM prompts) always runs.

## Architecture
DeepSeek-V2 (`model_type` `deepseek_v2`), weights stored in bfloat16 (the engine widens them to
float32 on the CPU), {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']},
{cfg['num_attention_heads']} heads. MLA: q_lora_rank {cfg['q_lora_rank']}, kv_lora_rank
{cfg['kv_lora_rank']} (the cached latent), qk_nope {cfg['qk_nope_head_dim']} + qk_rope
{cfg['qk_rope_head_dim']}, v_head {cfg['v_head_dim']}. MoE from layer {cfg['first_k_dense_replace']} on:
{cfg['n_routed_experts']} routed experts (top-{cfg['num_experts_per_tok']}, greedy softmax, no
renormalisation) + {cfg['n_shared_experts']} shared expert of width {cfg['moe_intermediate_size']};
the first layer is a dense SwiGLU of width {cfg['intermediate_size']}. Plain RoPE (theta 10000),
max positions {cfg['max_position_embeddings']} (trained at {args.seq_len}). Untied embeddings.
Tensors are stored per expert, as in DeepSeek's checkpoints. `config.json` declares
`"fim_layouts": {json.dumps(cfg['fim_layouts'])}` and `"languages": {json.dumps(cfg['languages'])}`.

## Tokenizer
Byte-level BPE, {cfg['vocab_size']:,} entries (trained with `tokenizers` on the training split; the
size was chosen by measurement, see `docs/training.md`), GPT-2 pre-tokenizer regex, no prefix
space; every file round-trips byte for byte. The DeepSeek-Coder special tokens are single
tokens: `{BOS}` 0, `{EOS}` 1, `{DEEPSEEK.prefix}` 2, `{DEEPSEEK.suffix}` 3, `{DEEPSEEK.middle}` 4.
`AutoTokenizer` prepends BOS (`add_bos_token`).

## Data
{_data_section(meta)}

## Objective
Windows of {args.seq_len} tokens at a phase re-drawn every epoch. {args.fim_rate:.0%} of them are
fill-in-the-middle samples, {args.spm_rate:.0%} of those suffix-first, the rest prefix-first
({layouts}):

    PSM  BOS {DEEPSEEK.prefix} prefix {DEEPSEEK.suffix} suffix {DEEPSEEK.middle} middle EOS
    SPM  BOS {DEEPSEEK.prefix}{DEEPSEEK.suffix} suffix {DEEPSEEK.middle} prefix middle EOS

with the three pieces tokenised separately, as a prompt is. Holes open uniformly at random
(30 %), at the rest of a line (20 %), inside a line (15 %), over whole lines from column 0 or
the indentation (25 %), and over the body of a block just opened by a colon (10 %). The other
windows are plain left-to-right text. Packed into rows without splitting a sample. Loss on
every token, plus a {args.balance_coef} × expert balance loss.

## Training
```
{_commands(state, command)}
```
Device {args.device}, seed {args.seed}, batch {args.batch_size} × {args.seq_len}, {_optimizer_note(args)},
gradient clipping {args.clip}. The schedule is warmup–stable–decay: {args.warmup_steps} warm-up steps
(again after each fresh optimizer), a constant rate, and {_branch_note(state)}
Started from {state.origin}. {state.step} steps in all,
**{state.tokens / 1e6:.1f}M tokens seen** ({state.epoch / trainer.parts:.2f} epochs of {tr['tokens'] / 1e6:.1f}M
training tokens); {speed}. The curve's held-out figures come from
{_rows_note(args.eval_rows)}; FIM columns are nats per middle token.

| step | tokens (M) | minutes | held-out loss | bits/byte | FIM middle PSM | FIM middle SPM |
|---|---|---|---|---|---|---|
{curve}

## Held-out figures ({_rows_note(args.final_eval_rows)}: {final['targets']:,} targets)
The held-out files up to {int((trainer.heldout.plain >= 0).sum()):,} tokens{' (all of them)' if not args.heldout_tokens else ''}, cut
into windows as plain text, as PSM and as SPM samples:
- **{final['bpb']:.3f} bits per byte** on plain text (text tokens only),
- FIM middle loss: **{final['fim_middle_loss_psm']:.3f}** nats per middle token in PSM,
  **{final['fim_middle_loss_spm']:.3f}** in SPM (the same held-out windows and holes),
- {final['loss']:.3f} nats per token over all three sets.

Single-line HumanEval infilling: see `docs/benchmarks.md` (`benchmarks/humaneval_infill.py`).
{_report_appendix(trainer.corpus.root)}"""


def _branch_note(state) -> str:
    if not state.decay_steps:
        return ("these are the stable phase's weights, with no decay branch: what a run goes on from, not "
                "a model to complete code with.")
    return (f"these weights come out of a decay branch of {state.decay_steps} steps (the rate falling as "
            f"1 − √progress to 0) taken from the stable run at step {state.step - state.decay_steps}.")


def _commands(state, command: str) -> str:
    """The commands that trained the run (from the step each began at), then the export's."""
    lines = [f"{cmd}    # from step {step}" for step, cmd in state.commands]
    return "\n".join([*lines, command] if command not in (c for _, c in state.commands) else lines)


def _optimizer_note(args) -> str:
    adamw = f"AdamW (lr {args.lr}, betas 0.9/0.95, weight decay {args.weight_decay})"
    if args.optimizer == "muon":
        return (f"Muon (momentum 0.95, Nesterov, 5 Newton–Schulz steps, update RMS matched to AdamW's) for the "
                f"hidden matrices and {adamw} for the embeddings, head, norms and routers")
    return adamw


def _data_section(meta: dict) -> str:
    tr, ho = meta["train"], meta["heldout"]
    split = (f"{tr['files']:,} training files ({tr['bytes'] / 1e6:.1f} MB, {tr['tokens'] / 1e6:.2f}M tokens) "
             f"and {ho['files']:,} held-out files ({ho['bytes'] / 1e6:.2f} MB, {ho['tokens'] / 1e6:.2f}M "
             f"tokens), split by a stable hash of each file's path (sha256, ≈2 %)")
    left = meta.get("left_out_for_size") or {}
    if left.get("files"):
        split += (f"; {left['files']:,} training files ({left['bytes'] / 1e6:.1f} MB) were left out so the "
                  f"pre-tokenized corpus fits {left['max_mib']} MiB")
    collected = meta.get("collected")
    if not collected:
        source = (f"The `.py` files of the CPython {meta['python']} standard library (PSF License 2.0)"
                  if meta.get("python") else f"The `.py` files under `{meta['source']}`")
        return f"{source}: {split}. The weights are released under the MIT license, like Latent."
    t = collected["totals"]
    licenses = "\n".join(f"| {name} | {row['kept_packages']} | {row['kept_files']:,} | {row['kept_bytes'] / 1e6:.1f} |"
                         for name, row in collected["by_license"].items() if row["kept_packages"])
    return f"""Permissively licensed Python from PyPI and the CPython standard library, built by
`latent train corpus` from the committed manifest `model/train/manifest.txt` (sha256
`{meta['manifest_sha256']}`): {t['packages_kept']} of {t['packages']} sources kept, {t['kept_files']:,}
files, {t['kept_bytes'] / 1e6:.1f} MB. Licenses are read from each package's own metadata and only
an allowlist is kept (MIT, BSD, Apache-2.0, PSF, ISC, Unlicense, Zlib, …); files are filtered
for encoding, size, generated code, long lines and literal tables; exact duplicates (sha256)
and near duplicates ({collected['filters']['near_duplicate']}) are dropped, and so is every file
with {collected['filters']['humaneval']} ({t['dropped'].get('humaneval', 0):,} dropped). Held out
for evaluation, never trained on: {', '.join(collected['heldout_packages'])} (and any package
that vendors one), and this project's own code. Of that corpus: {split}.

| license | packages kept | files | MB |
|---|---|---|---|
{licenses}

Each file keeps its own license; the per-package table is in the appendix. The weights are
released under the MIT license, like Latent."""


def _report_appendix(corpus_root: Path) -> str:
    report = corpus_root / "report.md"
    if not report.is_file():
        return ""
    body = report.read_text().split("\n", 1)[1]
    return "\n## Appendix: the corpus report (`latent train corpus`)\n" + body.replace("\n## ", "\n### ")


def _rows_note(max_rows: int) -> str:
    return f"{max_rows} evenly spread rows of each held-out set" if max_rows else "every held-out row"


def _thin(history: list[dict], n: int) -> list[dict]:
    if len(history) <= n:
        return history
    picks = np.linspace(0, len(history) - 1, n).round().astype(int)
    return [history[i] for i in sorted(set(picks.tolist()))]
