"""Real scale on CPU: a DeepSeek-Coder-V2-Lite-shaped slice in int8 against llama.cpp's Q8_0 of
the same weights, and in int4 against llama.cpp's Q4_0 (`make bench-lite`).

    python benchmarks/lite_slice_bench.py --layers 4 [--quantize int4] --write docs/benchmarks.md

The slice has Lite's real dimensions (hidden 2048, 16 heads, kv_lora_rank 512, a dense first
layer, then MoE layers of 64 routed experts, 6 chosen, and 2 shared) and vocabulary (102,400),
but `--layers` layers, with random bfloat16 weights written once as a Hugging Face checkpoint
into the git-ignored `.remote/lite-slice/` (the bundled model's tokenizer; the vocabulary is
padded). llama.cpp's own converter makes its Q8_0 GGUF (one scale per 32 weights); Latent loads
the same checkpoint with quantize = "int8" (one scale per output row). For int4, the converter
writes a bfloat16 GGUF and llama.cpp's quantizer (`llama-quantize … Q4_0`) makes the Q4_0 one
(blocks of 32, its output head kept at 6 bits); Latent loads the checkpoint with quantize =
"int4" (the same blocks and rounding, its head in int8).

Both are fed the same token ids (random ids of the tokenizer's range: a random model has no
meaningful text): prefill tokens/s of a `--prompt`-token prompt from an empty cache, and decode
tokens/s of `--new` greedy tokens after it — Latent's own stage timings, llama-server's reported
`timings` (neither includes HTTP) — at 1 and 2 threads, the backends alternating run by run.

The bound: decoding reads every weight a token uses once — the attention, dense and shared
weights, the chosen 6 of 64 routed experts per MoE layer, the LM head — so tokens/s can not
exceed the machine's memory read bandwidth (measured here: the best of several passes summing
a buffer much larger than the caches) divided by those active bytes. The full-depth figure
(27 layers) is that bound for the whole Lite model, beside `benchmarks/engine_bench.py --lite`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from engine_bench import LITE
from llamacpp.server import LlamaServer
from model.engine import Engine
from model.loader import BUNDLED_DIR
from model.params import RuntimeConfig, SamplingParams
from report import publish

ROOT = Path(__file__).resolve().parent.parent
REMOTE = ROOT / ".remote"
SECTIONS = {"int8": "## DeepSeek-Coder-V2-Lite-shaped slice: int8 against llama.cpp Q8_0 (make bench-lite)",
            "int4": "## DeepSeek-Coder-V2-Lite-shaped slice: int4 against llama.cpp Q4_0 (make bench-lite)"}
LLAMA_TYPE = {"int8": "Q8_0", "int4": "Q4_0"}
BYTES_PER_WEIGHT = {"int8": 1.0, "int4": 4.5 / 8}
THREADS = (1, 2)


# ---------------------------------------------------------------------------------------------
# the checkpoint and its GGUF

def config(layers: int) -> dict:
    return dict(LITE, num_hidden_layers=layers, bos_token_id=0, eos_token_id=1, architectures=["DeepseekV2ForCausalLM"],
                torch_dtype="bfloat16", rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu",
                routed_scaling_factor=1.0, scoring_func="softmax", norm_topk_prob=False, n_group=1, topk_group=1,
                aux_loss_alpha=0.001, seq_aux=True, moe_layer_freq=1, ep_size=1, attention_bias=False,
                rope_theta=10000, initializer_range=0.02, use_cache=True, pretraining_tp=1)


def tensor_shapes(cfg: dict):
    """(name, shape) of every tensor of a DeepseekV2 checkpoint with this config, layer by layer."""
    d, heads, v = cfg["hidden_size"], cfg["num_attention_heads"], cfg["vocab_size"]
    nope, rope, vh, kv = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"], cfg["kv_lora_rank"]
    yield 0, "model.embed_tokens.weight", (v, d)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield i, p + "input_layernorm.weight", (d,)
        yield i, p + "post_attention_layernorm.weight", (d,)
        yield i, p + "self_attn.q_proj.weight", (heads * (nope + rope), d)
        yield i, p + "self_attn.kv_a_proj_with_mqa.weight", (kv + rope, d)
        yield i, p + "self_attn.kv_a_layernorm.weight", (kv,)
        yield i, p + "self_attn.kv_b_proj.weight", (heads * (nope + vh), kv)
        yield i, p + "self_attn.o_proj.weight", (d, heads * vh)
        if i < cfg["first_k_dense_replace"]:
            mlps = [(p + "mlp.", cfg["intermediate_size"])]
        else:
            inter = cfg["moe_intermediate_size"]
            yield i, p + "mlp.gate.weight", (cfg["n_routed_experts"], d)
            mlps = [(p + f"mlp.experts.{e}.", inter) for e in range(cfg["n_routed_experts"])]
            mlps.append((p + "mlp.shared_experts.", inter * cfg["n_shared_experts"]))
        for prefix, inter in mlps:
            yield i, prefix + "gate_proj.weight", (inter, d)
            yield i, prefix + "up_proj.weight", (inter, d)
            yield i, prefix + "down_proj.weight", (d, inter)
    last = cfg["num_hidden_layers"] - 1
    yield last, "model.norm.weight", (d,)
    yield last, "lm_head.weight", (v, d)


def make_checkpoint(folder: Path, layers: int) -> None:
    """Random bf16 weights (seeded), one safetensors shard per layer, and the bundled tokenizer."""
    from safetensors.torch import save_file

    cfg = config(layers)
    if (folder / "config.json").is_file() and json.loads((folder / "config.json").read_text()) == cfg:
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    shards: dict[int, dict] = {}
    for layer, name, shape in tensor_shapes(cfg):
        if len(shape) == 1:
            value = torch.ones(shape)
        else:
            value = torch.randn(shape, generator=g) * shape[-1] ** -0.5
        shards.setdefault(layer, {})[name] = value.to(torch.bfloat16)
    index = {}
    for layer, tensors in shards.items():
        file = f"model-{layer + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, folder / file, metadata={"format": "pt"})
        index.update({name: file for name in tensors})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (BUNDLED_DIR / name).is_file():
            shutil.copy(BUNDLED_DIR / name, folder / name)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))


def make_gguf(folder: Path, gguf: Path, llama_dir: Path, quantize: str = "int8") -> None:
    """The GGUF of the checkpoint: Q8_0 straight from llama.cpp's converter; Q4_0 through its
    quantizer from a bfloat16 conversion."""
    if gguf.is_file() and gguf.stat().st_mtime > (folder / "config.json").stat().st_mtime:
        return
    log = REMOTE / "lite-convert.log"
    converted = gguf if quantize == "int8" else gguf.with_suffix(".bf16.gguf")
    with log.open("w") as out:
        done = subprocess.run([sys.executable, str(ROOT / "tests" / "remote" / "convert.py"), str(llama_dir),
                               str(folder), str(converted), "q8_0" if quantize == "int8" else "bf16"],
                              stdout=out, stderr=subprocess.STDOUT)
        if done.returncode == 0 and quantize == "int4":
            done = subprocess.run([str(llama_dir / "build" / "bin" / "llama-quantize"), str(converted), str(gguf),
                                   "Q4_0"], stdout=out, stderr=subprocess.STDOUT)
            converted.unlink(missing_ok=True)
    if done.returncode:
        raise SystemExit(f"llama.cpp's converter or quantizer failed; see {log}")


# ---------------------------------------------------------------------------------------------
# the machine's bound

def read_bandwidth(threads: int, mib: int = 1024, passes: int = 5) -> float:
    """Bytes per second that summing a `mib` MiB float32 buffer reads (a vectorised sum is bound
    by memory, not arithmetic), the best of `passes`."""
    torch.set_num_threads(threads)
    buffer = torch.ones((mib << 20) // 4)
    buffer.sum()   # pages in
    best = float("inf")
    for _ in range(passes):
        t = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - t)
    return buffer.numel() * 4 / best


def parameters(cfg: dict) -> int:
    total = 0
    for _, _, shape in tensor_shapes(cfg):
        total += shape[0] * (shape[1] if len(shape) > 1 else 1)
    return total


def active_bytes(cfg: dict, bytes_per_weight: float = 1.0) -> float:
    """Weight bytes one decoded token reads: all but the routed experts, and the chosen share of those."""
    routed = chosen = total = 0
    for _, name, shape in tensor_shapes(cfg):
        if name == "model.embed_tokens.weight":
            continue   # one row
        n = shape[0] * (shape[1] if len(shape) > 1 else 1)
        total += n
        if ".mlp.experts." in name:
            routed += n
    chosen = routed * cfg["num_experts_per_tok"] / cfg["n_routed_experts"]
    return (total - routed + chosen) * bytes_per_weight


# ---------------------------------------------------------------------------------------------
# the runs

def run_latent(engine: Engine, prompt: list[int], new: int) -> tuple[float, float, list[int]]:
    engine.clear_cache()
    gen = engine.generate(prompt, SamplingParams(max_new_tokens=new, stop_token_ids=()))
    gen.run()
    s = gen.stats
    ids = list(engine.live.tokens[len(prompt):])
    return s.prefilled_tokens / (s.prefill_ms / 1e3), (s.generated_tokens - 1) / (s.decode_ms / 1e3), ids


def run_llama(server: LlamaServer, prompt: list[int], new: int) -> tuple[float, float, list[int]]:
    out = server.complete(prompt, new, cache_prompt=False, ignore_eos=True)
    t = out["timings"]
    return t["prompt_per_second"], t["predicted_per_second"], out["tokens"]


def bench(args) -> dict:
    folder = REMOTE / "lite-slice"
    gguf = REMOTE / f"lite-slice-{args.layers}-{LLAMA_TYPE[args.quantize].lower()}.gguf"
    t = time.perf_counter()
    make_checkpoint(folder, args.layers)
    make_gguf(folder, gguf, args.llama_dir, args.quantize)
    made_s = time.perf_counter() - t
    t = time.perf_counter()
    engines = {n: Engine.load(folder, RuntimeConfig(quantize=args.quantize, threads=n, max_context=4096, speculate=0))
               for n in THREADS}   # the engine sets its own threads per phase from its runtime
    load_s = (time.perf_counter() - t) / len(THREADS)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # the loads' peak, before any buffer
    bandwidth = {n: read_bandwidth(n) for n in THREADS}
    engine = engines[THREADS[0]]
    servers = {n: LlamaServer(args.server, gguf, n, REMOTE / f"llama-lite-t{n}.log") for n in THREADS}
    for server in servers.values():
        server.wait_ready(600)
    g = torch.Generator().manual_seed(1)
    vocab = engine.tokenizer.vocab_size if hasattr(engine.tokenizer, "vocab_size") else 8000
    figures = {n: {b: {"prefill": [], "decode": [], "ids": []} for b in ("latent", "llama")} for n in THREADS}
    try:
        for r in range(args.rounds):
            prompt = torch.randint(100, min(vocab, 8000), (args.prompt,), generator=g).tolist()
            for n in THREADS if r % 2 == 0 else THREADS[::-1]:
                order = ("latent", "llama") if (r + n) % 2 == 0 else ("llama", "latent")
                for backend in order:
                    got = (run_latent(engines[n], prompt, args.new) if backend == "latent"
                           else run_llama(servers[n], prompt, args.new))
                    for key, value in zip(("prefill", "decode", "ids"), got):
                        figures[n][backend][key].append(value)
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    finally:
        for server in servers.values():
            server.close()
    return {"figures": figures, "bandwidth": bandwidth, "load_s": load_s, "made_s": made_s, "peak": peak,
            "gguf_bytes": gguf.stat().st_size, "weight_bytes": engine.weight_bytes,
            "cfg": config(args.layers), "full": config(LITE["num_hidden_layers"])}


def report(args, run: dict) -> str:
    figures, bandwidth = run["figures"], run["bandwidth"]
    per_weight, llama_type = BYTES_PER_WEIGHT[args.quantize], LLAMA_TYPE[args.quantize]
    active, active_full = active_bytes(run["cfg"], per_weight), active_bytes(run["full"], per_weight)
    median = statistics.median
    rows = []
    for n in THREADS:
        lat, lla = figures[n]["latent"], figures[n]["llama"]
        same = sum(a[:1] == b[:1] for a, b in zip(lat["ids"], lla["ids"]))
        bound = bandwidth[n] / active
        rows.append(f"| {n} | {median(lat['prefill']):.1f} | {median(lla['prefill']):.1f} | "
                    f"{median(lat['prefill']) / median(lla['prefill']):.2f}× | {median(lat['decode']):.2f} | "
                    f"{median(lla['decode']):.2f} | {median(lat['decode']) / median(lla['decode']):.2f}× | "
                    f"{bound:.1f} | {median(lat['decode']) / bound:.0%} | {same}/{len(lat['ids'])} |")
    quantize_flag = f" --quantize {args.quantize}" if args.quantize != "int8" else ""
    return "\n".join([
        SECTIONS[args.quantize], "",
        f"`python benchmarks/lite_slice_bench.py --layers {args.layers} --prompt {args.prompt} --new {args.new} "
        f"--rounds {args.rounds}{quantize_flag}` — {time.strftime('%Y-%m-%d')}, {platform.machine()} with {os.cpu_count()} CPUs "
        f"(load average {os.getloadavg()[0]:.1f}: the cores are shared). Lite's dimensions, {args.layers} layers "
        f"(a dense one, then MoE: 64 experts, 6 chosen, 2 shared), random weights: Latent {args.quantize} "
        f"{run['weight_bytes'] / 2**30:.2f} GiB with its float32 embedding (loaded in {run['load_s']:.0f} s; the "
        f"process peaked at {run['peak'] / 2**30:.1f} GiB with two copies loaded, one per thread count: each is "
        f"quantized while loading, never the {parameters(run['cfg']) * 4 / 2**30:.1f} GiB float32 model), "
        f"llama.cpp {llama_type} GGUF "
        f"{run['gguf_bytes'] / 2**30:.2f} GiB. Medians of {args.rounds} rounds, a {args.prompt}-token prompt "
        f"from an empty cache, then {args.new} greedy tokens.", "",
        "| threads | prefill tok/s, Latent | llama.cpp | ratio | decode tok/s, Latent | llama.cpp | ratio | "
        "bandwidth bound, tok/s | Latent / bound | same first token |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows, "",
        f"Memory read bandwidth (summing a 1 GiB buffer, best of 5): {bandwidth[1] / 1e9:.1f} GB/s with 1 thread, "
        f"{bandwidth[2] / 1e9:.1f} GB/s with 2. A token of this slice reads {active / 1e6:.0f} MB of {args.quantize} "
        f"weights (the LM head alone {run['cfg']['vocab_size'] * run['cfg']['hidden_size'] / 1e6:.0f} MB in int8); the whole "
        f"27-layer Lite reads {active_full / 1e9:.2f} GB, so its decode bound here is "
        f"{bandwidth[1] / active_full:.1f} tokens/s on 1 thread and {bandwidth[2] / active_full:.1f} on 2 "
        "(`python benchmarks/engine_bench.py --lite` measures the engine at full depth). Random weights make "
        "near-ties common, so \"same first token\" is a weak same-model check"
        + ("; the two quantizations differ (per row against per 32 weights)." if args.quantize == "int8" else
           "; the two quantizations round alike (Q4_0's blocks), the activations both in 8-bit blocks of 32."), ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/lite_slice_bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=256, help="prompt tokens (default: %(default)s)")
    parser.add_argument("--new", type=int, default=32, help="tokens decoded (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--quantize", choices=("int8", "int4"), default="int8",
                        help="Latent's weights, against llama.cpp's Q8_0 or Q4_0 (default: %(default)s)")
    parser.add_argument("--server", type=Path, default=REMOTE / "llama.cpp" / "build" / "bin" / "llama-server")
    parser.add_argument("--llama-dir", type=Path, default=REMOTE / "llama.cpp")
    parser.add_argument("--write", type=Path, default=None, help="replace this section in a Markdown file")
    args = parser.parse_args(argv)
    publish(report(args, bench(args)), args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
