"""The engine on a GPU: DeepSeek-Coder-V2-Lite's shape with random bf16 weights made on the GPU.

    python benchmarks/gpu_engine_bench.py --out $OUT            # on the GPU machine (< 5 minutes)
    python benchmarks/gpu_engine_bench.py --tiny --device cpu   # the same code paths, here

One set of weights serves both engines: transformers' `DeepseekV2ForCausalLM` is built on the
device, and Latent's engine is built from its state_dict (no copy of the experts). Interleaved,
in one run:

- decode tokens/s at batch 1 after a 512-token prompt, 128 greedy tokens: Latent against
  transformers' `generate` with its own cache;
- a per-keystroke replay: a 1,500-token prompt grows by one token per keystroke, 16 new tokens
  each — Latent with exact reuse against transformers recomputing (it keeps no cache across
  requests);
- the memory-bandwidth bound: active bytes per token (attention, dense and shared layers, the
  k routed experts of each MoE layer, one embedding row, the head) over ~4.8 TB/s (H200 HBM3e).

The decode step does not synchronise with the host inside a layer: MLA decode is tensor-only and
the MoE takes the chosen experts in one batched product on the GPU (`Experts.batched_decode`).
Writes `gpu_engine.md` (a docs/benchmarks.md section) and `gpu_engine.json` to --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from model.config import ModelArgs
from model.engine import Engine
from model.loader import build_model
from model.params import RuntimeConfig, SamplingParams

HBM_BYTES_PER_S = 4.8e12
LITE = dict(vocab_size=102400, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
            num_hidden_layers=27, num_attention_heads=16, num_key_value_heads=16, kv_lora_rank=512,
            q_lora_rank=None, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=64,
            n_shared_experts=2, num_experts_per_tok=6, first_k_dense_replace=1, topk_method="greedy",
            n_group=1, topk_group=1, norm_topk_prob=False, routed_scaling_factor=1.0, rms_norm_eps=1e-6,
            max_position_embeddings=8192, bos_token_id=100000, eos_token_id=100001)
TINY = dict(LITE, vocab_size=4096, hidden_size=128, intermediate_size=256, moe_intermediate_size=32,
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32,
            qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=8, num_experts_per_tok=2,
            bos_token_id=0, eos_token_id=1)


class IdTokenizer:
    """The benchmark feeds token ids; text only for the protocol's sake."""

    bos_id, eos_id, fim, add_bos, special_tokens = None, None, None, False, ()

    def encode(self, text, *, add_bos=False):
        return list(text.encode())

    def decode(self, ids):
        return bytes(i % 256 for i in ids).decode(errors="replace")

    def count(self, text):
        return len(text.encode())


def build(shape: dict, device: str, dtype: torch.dtype):
    """transformers' model with random weights made on the device, and our engine on the same."""
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

    config = DeepseekV2Config(**shape)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            reference = DeepseekV2ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    for p in reference.parameters():          # random init of this size is not the point; keep logits finite
        p.data.normal_(0, 0.02)
    args = ModelArgs.from_dict(config.to_dict())
    model = build_model(reference.state_dict().items(), args, str(dtype).removeprefix("torch."), device)
    runtime = RuntimeConfig(device=device, dtype=str(dtype).removeprefix("torch."), max_context=4096, speculate=0)
    engine = Engine(model, IdTokenizer(), runtime, name="random Coder-V2-Lite shape")
    return reference, engine, args


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def decode_rates(reference, engine, device: str, prompt: list[int], new: int, rounds: int) -> dict:
    ours, theirs = [], []
    ids = torch.tensor([prompt], device=device)
    for _ in range(rounds):
        engine.clear_cache()
        engine.generate(prompt, SamplingParams(max_new_tokens=1, stop_token_ids=())).run()   # prompt in place
        gen = engine.generate(prompt, SamplingParams(max_new_tokens=new, stop_token_ids=()))
        sync(device)
        t0 = time.perf_counter()
        gen.run()
        sync(device)
        ours.append(gen.stats.generated_tokens / (time.perf_counter() - t0 - gen.stats.prefill_ms / 1e3))
        with torch.no_grad():
            reference.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=0)        # warm
            sync(device)
            t0 = time.perf_counter()
            out = reference.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
            sync(device)
        theirs.append((out.shape[1] - ids.shape[1]) / (time.perf_counter() - t0))
    return {"ours": statistics.median(ours), "theirs": statistics.median(theirs)}


def keystroke_latencies(reference, engine, device: str, base: list[int], keys: int, new: int) -> dict:
    ours, theirs, prefilled = [], [], []
    engine.clear_cache()
    engine.generate(base, SamplingParams(max_new_tokens=new, stop_token_ids=())).run()        # file opened
    for k in range(1, keys + 1):
        prompt = base + [7 + k % 50] * k
        sync(device)
        t0 = time.perf_counter()
        gen = engine.generate(prompt, SamplingParams(max_new_tokens=new, stop_token_ids=()))
        gen.run()
        sync(device)
        ours.append((time.perf_counter() - t0) * 1e3)
        prefilled.append(gen.stats.prefilled_tokens)
        with torch.no_grad():
            ids = torch.tensor([prompt], device=device)
            sync(device)
            t0 = time.perf_counter()
            reference.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
            sync(device)
            theirs.append((time.perf_counter() - t0) * 1e3)
    return {"ours_p50_ms": statistics.median(ours), "theirs_p50_ms": statistics.median(theirs),
            "prefilled_p50": statistics.median(prefilled)}


def active_bytes(args: ModelArgs, element: int) -> int:
    """Weights read to decode one token: everything but the routed experts not chosen."""
    d, layers = args.dim, args.n_layers
    qk = args.qk_nope_head_dim + args.qk_rope_head_dim
    attention = (d * args.n_heads * qk + d * (args.kv_lora_rank + args.qk_rope_head_dim)
                 + args.kv_lora_rank * args.n_heads * (args.qk_nope_head_dim + args.v_head_dim)
                 + args.n_heads * args.v_head_dim * d)
    dense = 3 * d * args.inter_dim
    expert = 3 * d * args.moe_inter_dim
    moe_layers = sum(args.is_moe_layer(i) for i in range(layers))
    per_token = (layers * attention + (layers - moe_layers) * dense
                 + moe_layers * (args.n_shared_experts + args.n_activated_experts) * expert
                 + moe_layers * args.n_routed_experts * d      # the routers
                 + d + d * args.vocab_size)                   # one embedding row, the head
    return per_token * element


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_engine_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="a tiny model of the same architecture (CPU checks)")
    p.add_argument("--layers", type=int, default=None, help="layers of the Lite shape (default 27)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--keys", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("."))
    args = p.parse_args(argv)
    shape = dict(TINY if args.tiny else LITE)
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    started = time.perf_counter()
    reference, engine, margs = build(shape, args.device, dtype)
    built_s = time.perf_counter() - started
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(10, shape["vocab_size"] - 10, (1500,), generator=g).tolist()
    decode = decode_rates(reference, engine, args.device, prompt[:512], 128 if not args.tiny else 16, args.rounds)
    keys = keystroke_latencies(reference, engine, args.device, prompt, args.keys, 16)
    bound = HBM_BYTES_PER_S / active_bytes(margs, torch.finfo(dtype).bits // 8)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    figures = {"device": name, "date": time.strftime("%Y-%m-%d"), "layers": margs.n_layers,
               "parameters": engine.parameters, "built_s": built_s, "decode": decode, "keystroke": keys,
               "bandwidth_bound_tok_s": bound}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_engine.json").write_text(json.dumps(figures, indent=2))
    (args.out / "gpu_engine.md").write_text(section(figures, " ".join(sys.argv[1:])))
    print(section(figures, " ".join(sys.argv[1:])))
    return 0


def section(f: dict, flags: str) -> str:
    d, k = f["decode"], f["keystroke"]
    return f"""## Engine on a GPU (benchmarks/gpu_engine_bench.py)

{f['device']}, {f['date']}: DeepSeek-Coder-V2-Lite shape, {f['layers']} layers, {f['parameters'] / 1e9:.2f}B random
bf16 parameters made on the GPU; transformers' DeepseekV2ForCausalLM on the same weights, interleaved.
`python benchmarks/gpu_engine_bench.py {flags}`

| figure | Latent | transformers | ratio |
|---|---|---|---|
| decode tokens/s, batch 1, after 512 tokens | {d['ours']:.1f} | {d['theirs']:.1f} | {d['ours'] / d['theirs']:.2f}× |
| per keystroke, 1,500-token prompt + 1 token, 16 new, p50 ms | {k['ours_p50_ms']:.1f} (exact reuse, {k['prefilled_p50']:.0f} prefilled) | {k['theirs_p50_ms']:.1f} (recompute) | {k['ours_p50_ms'] / k['theirs_p50_ms']:.2f}× |

Memory-bandwidth bound for decode: {f['bandwidth_bound_tok_s']:.0f} tokens/s (active bytes per token over
4.8 TB/s); Latent reaches {100 * d['ours'] / f['bandwidth_bound_tok_s']:.1f} % of it.
"""


if __name__ == "__main__":
    raise SystemExit(main())
