"""Engine benchmarks (`make bench`, or `python benchmarks/engine_bench.py`): figures as ratios within one run.

- decode: tokens/s of our engine against transformers' `generate` with its own cache, same
  weights, same prompt, greedy;
- typing replay: a ~1,500-token prompt grows by one character per keystroke, 16 new tokens
  each; per-keystroke latency with prefix reuse against recomputing the whole prompt;
- FIM typing replay: the same with the cursor inside a ~1,500-token FIM prompt (prefix ~3/4,
  suffix ~1/4): shift reuse against exact reuse and recomputing, and how often shift reuse's
  greedy completion equals the exact one (on the benchmark model and the bundled model);
- cache bytes per token against per-head K/V of the same shape;
- with --lite: a DeepSeek-Coder-V2-Lite-shaped model (27 layers, 64 experts) with random int8
  weights made without materialising float32: peak RSS and decode tokens/s.

Results print as a Markdown section; --write appends/replaces it in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from model.engine import Engine
from model.loader import BUNDLED_DIR
from model.params import RuntimeConfig, SamplingParams
from report import publish

SECTION = "## Engine (make bench)"

# a 20-50M parameter V2-shaped model: Coder-V2-Lite's proportions, scaled down
MEDIUM = dict(
    hidden_size=512, intermediate_size=1536, moe_intermediate_size=256, num_hidden_layers=6,
    num_attention_heads=8, num_key_value_heads=8, kv_lora_rank=128, qk_nope_head_dim=32, qk_rope_head_dim=16,
    v_head_dim=32, n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4, first_k_dense_replace=1,
    q_lora_rank=None, max_position_embeddings=163840, initializer_range=0.02,
    rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "mscale": 0.707,
                     "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096,
                     "beta_fast": 32, "beta_slow": 1},
)

LITE = dict(
    vocab_size=102400, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408, num_hidden_layers=27,
    num_attention_heads=16, num_key_value_heads=16, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
    v_head_dim=128, n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6, first_k_dense_replace=1,
    q_lora_rank=None, max_position_embeddings=163840, model_type="deepseek_v2", topk_method="greedy",
    rope_scaling={"type": "yarn", "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                  "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1},
)


def build_medium(folder: Path) -> tuple[object, Path]:
    """Random V2-shaped checkpoint with the bundled tokenizer (so prompts are real text)."""
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

    torch.manual_seed(0)
    config = DeepseekV2Config(vocab_size=_vocab_size(BUNDLED_DIR), bos_token_id=0, eos_token_id=1, **MEDIUM)
    model = DeepseekV2ForCausalLM(config).float().eval()
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).write_bytes((BUNDLED_DIR / name).read_bytes())
    return model, folder


def _vocab_size(folder: Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size(with_added_tokens=True)


def sample_source(min_chars: int = 8000) -> str:
    """Real Python source to type: a standard-library module."""
    import inspect
    import json.decoder as module

    text = inspect.getsource(module)
    while len(text) < min_chars:
        text += text
    return text


# ---------------------------------------------------------------------------------------------

def bench_decode(engine: Engine, reference, prompt_ids: list[int], new_tokens: int = 64) -> dict:
    """Decode tokens/s: time(prompt + N tokens) - time(prompt + 1 token), both sides."""
    def ours(n):
        engine.clear_cache()
        gen = engine.generate(prompt_ids, SamplingParams(max_new_tokens=n, stop_token_ids=()))
        gen.run()
        return gen.stats.decode_ms / 1e3, gen.stats.generated_tokens

    def theirs(n):
        ids = torch.tensor([prompt_ids])
        t = time.perf_counter()
        with torch.inference_mode():
            out = reference.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        return time.perf_counter() - t, out.shape[1] - len(prompt_ids)

    ours(4), theirs(4)  # warm
    o_time, o_tokens = min((ours(new_tokens) for _ in range(2)), key=lambda r: r[0])
    t_full, t_tokens = min((theirs(new_tokens) for _ in range(2)), key=lambda r: r[0])
    t_one, _ = min((theirs(1) for _ in range(2)), key=lambda r: r[0])
    ours_tps = (o_tokens - 1) / o_time
    theirs_tps = (t_tokens - 1) / (t_full - t_one)
    return {"ours_tok_s": ours_tps, "transformers_tok_s": theirs_tps, "ratio": ours_tps / theirs_tps}


def bench_typing(engine: Engine, text: str, prompt_tokens: int = 1500, keystrokes: int = 24,
                 new_tokens: int = 16) -> dict:
    """Grow a prompt one character per keystroke; latency with reuse vs recomputing."""
    tok = engine.tokenizer
    # find a prefix of about `prompt_tokens` tokens
    cut = len(text)
    while tok.count(text[:cut]) > prompt_tokens:
        cut = int(cut * 0.9)
    base, typed = text[:cut], text[cut : cut + keystrokes]
    results = {}
    for mode in ("reuse", "recompute"):
        engine.clear_cache()
        latencies, prefilled = [], []
        engine.generate(base, SamplingParams(max_new_tokens=new_tokens, stop_token_ids=())).run()  # file opened
        for k in range(1, keystrokes + 1):
            if mode == "recompute":
                engine.clear_cache()
            t = time.perf_counter()
            gen = engine.generate(base + typed[:k], SamplingParams(max_new_tokens=new_tokens, stop_token_ids=()))
            gen.run()
            latencies.append((time.perf_counter() - t) * 1e3)
            prefilled.append(gen.stats.prefilled_tokens)
        results[mode] = {
            "p50_ms": statistics.median(latencies),
            "p95_ms": _p95(latencies),
            "prefilled_per_key": statistics.mean(prefilled),
        }
    results["prompt_tokens"] = tok.count(base) + 1
    results["ratio_p50"] = results["reuse"]["p50_ms"] / results["recompute"]["p50_ms"]
    return results


def fim_keystrokes(engine: Engine, text: str, prompt_tokens: int = 1500, cursor: float = 0.75,
                   keystrokes: int = 40) -> list[str]:
    """FIM prompts of about `prompt_tokens` tokens with the cursor at `cursor` of them, one per
    keystroke: the characters after the cursor are typed back one at a time before the suffix."""
    tok, fim = engine.tokenizer, engine.tokenizer.fim
    start = len(text) // 8
    cut = start + _chars_for(tok, text[start:], int(prompt_tokens * cursor))
    typed = text[cut : cut + keystrokes]
    after = cut + keystrokes
    suffix = text[after : after + _chars_for(tok, text[after:], prompt_tokens - int(prompt_tokens * cursor))]
    prefix = text[start:cut]
    return [f"{fim.prefix}{prefix}{typed[:k]}{fim.suffix}{suffix}{fim.middle}" for k in range(keystrokes + 1)]


def _chars_for(tok, text: str, tokens: int) -> int:
    """Characters of text that hold about `tokens` tokens (a line boundary when one is near)."""
    cut = len(text)
    while tok.count(text[:cut]) > tokens:
        cut = int(cut * 0.97)
    return text.rfind("\n", 0, cut) + 1 or cut


def bench_fim_typing(engine: Engine, prompts: list[str], new_tokens: int = 16) -> dict:
    """Per keystroke: latency, tokens prefilled and shifted with shift reuse, exact reuse and
    recomputing; how often shift's greedy completion (and its first token) equals exact's."""
    results, outputs = {}, {}
    for mode in ("shift", "exact", "recompute"):
        engine.runtime = replace(engine.runtime, reuse="shift" if mode == "shift" else "exact")
        engine.clear_cache()
        engine.generate(prompts[0], SamplingParams(max_new_tokens=new_tokens, stop_token_ids=())).run()  # file opened
        latencies, prefilled, shifted, outputs[mode] = [], [], [], []
        for prompt in prompts[1:]:
            if mode == "recompute":
                engine.clear_cache()
            t = time.perf_counter()
            gen = engine.generate(prompt, SamplingParams(max_new_tokens=new_tokens, stop_token_ids=()))
            gen.run()
            latencies.append((time.perf_counter() - t) * 1e3)
            prefilled.append(gen.stats.prefilled_tokens)
            shifted.append(gen.stats.extra.get("shifted_tokens", 0))
            outputs[mode].append(engine.live.tokens[gen.stats.prompt_tokens :])   # generated ids
        results[mode] = {
            "p50_ms": statistics.median(latencies),
            "p95_ms": _p95(latencies),
            "mean_ms": statistics.mean(latencies),
            "prefilled_per_key": statistics.mean(prefilled),
            "shifted_per_key": statistics.mean(shifted),
            "recomputed_keys": sum(1 for n in shifted if n == 0),
        }
    engine.runtime = replace(engine.runtime, reuse="exact")
    engine.clear_cache()
    pairs = list(zip(outputs["shift"], outputs["exact"]))
    results["same_completion"] = sum(a == b for a, b in pairs) / len(pairs)
    results["same_first_token"] = sum(a[:1] == b[:1] for a, b in pairs) / len(pairs)
    results["keystrokes"] = len(pairs)
    results["prompt_tokens"] = engine.tokenizer.count(prompts[-1]) + 1
    return results


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def cache_bytes(engine: Engine) -> dict:
    a = engine.args
    element = engine.live.rows.element_size()
    latent = engine.latent_bytes_per_token()
    per_head = a.n_layers * a.n_heads * (a.qk_head_dim + a.v_head_dim) * element
    return {"latent_bytes_per_token": latent, "per_head_kv_bytes_per_token": per_head, "ratio": per_head / latent}


# ---------------------------------------------------------------------------------------------
# DeepSeek-Coder-V2-Lite shape, int8, random

def lite_engine(layers: int | None = None, quantize: str = "int8") -> Engine:
    """A Lite-shaped engine whose weights are random int8 + per-row scales, or random 4-bit
    blocks with float16 scales (the head then int8, as quantize = "int4" keeps it), made directly
    in that form: a 15.7B-parameter float32 model would need 63 GB, more than this machine has."""
    from model.config import ModelArgs
    from model.int4 import Int4Experts, Int4Linear, q4_shapes
    from model.moe import Experts
    from model.quant import Int8Experts, Int8Linear
    from model.transformer import Transformer

    cfg = dict(LITE, bos_token_id=100000, eos_token_id=100001)
    if layers:
        cfg["num_hidden_layers"] = layers
    args = ModelArgs.from_dict(cfg)
    with torch.device("meta"):
        model = Transformer(args)
    g = torch.Generator().manual_seed(0)

    def rand_int8(shape):
        q = torch.randint(-127, 128, tuple(shape), dtype=torch.int8, generator=g)
        return q, torch.full(tuple(shape[:-1]), 1.0 / (127 * shape[-1] ** 0.5))

    def rand_int4(shape):   # (..., out, in) -> the kernel's packed nibbles and block scales
        *lead, out, inp = shape
        packed, scales = q4_shapes(out, inp)
        return (torch.randint(0, 256, (*lead, *packed), dtype=torch.uint8, generator=g),
                torch.full((*lead, *scales), 1.0 / (8 * inp ** 0.5), dtype=torch.float16))

    for prefix, module in list(model.named_modules()):
        for name, child in list(module.named_children()):
            int4 = quantize == "int4" and f"{prefix}.{name}".strip(".") != "head"
            if isinstance(child, torch.nn.Linear):
                out, inp = child.weight.shape
                if int4:
                    setattr(module, name, Int4Linear(*rand_int4((out, inp)), inp, out))
                else:
                    q, s = rand_int8(child.weight.shape)
                    setattr(module, name, Int8Linear(q, s, torch.float32))
            elif isinstance(child, Experts):
                if int4:
                    e, two_i, d = child.w13.shape
                    setattr(module, name, Int4Experts(*rand_int4(child.w13.shape), *rand_int4(child.w2.shape),
                                                      d, two_i // 2))
                else:
                    (a, sa), (b, sb) = rand_int8(child.w13.shape), rand_int8(child.w2.shape)
                    setattr(module, name, Int8Experts(a, sa, b, sb, torch.float32))
    model.embed = _Int8Embedding(*rand_int8((args.vocab_size, args.dim)))
    for name, p in list(model.named_parameters()):
        if p.device.type == "meta":   # norms (ones) and routers (small, float)
            value = torch.ones(p.shape) if p.dim() == 1 else torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5
            _assign(model, name, value)
    model.init_rope(8192)
    for module in model.modules():
        if hasattr(module, "refresh_weights"):
            module.refresh_weights()
    # no prompt-lookup drafts: random weights fall into loops that drafts predict, and a verified
    # draft reads the weights once for several tokens — tokens/s beyond the memory-read bound
    runtime = RuntimeConfig(quantize=quantize, max_context=2048, speculate=0)
    return Engine(model.eval(), _ByteTokenizer(), runtime, name=f"random Coder-V2-Lite shape ({quantize})")


class _Int8Embedding(torch.nn.Module):
    def __init__(self, q, scale):
        super().__init__()
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)
        self.weight = torch.empty(0)  # device / dtype probe for Transformer.new_cache

    def forward(self, ids):
        return self.q[ids].float() * self.scale[ids, None]


def _assign(model, name, value):
    *path, leaf = name.split(".")
    module = model
    for p in path:
        module = getattr(module, p)
    setattr(module, leaf, torch.nn.Parameter(value, requires_grad=False))


class _ByteTokenizer:
    """Stands in for the 100k-entry tokenizer: the benchmark feeds token ids directly."""

    bos_id, eos_id, fim, add_bos = 100000, 100001, None, False

    def encode(self, text, *, add_bos=False):
        return list(text.encode())

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode(errors="replace")

    def count(self, text):
        return len(text.encode())


def bench_lite(layers: int | None, new_tokens: int = 16, quantize: str = "int8") -> dict:
    import psutil

    from model import int4

    engine = lite_engine(layers, quantize)
    params = engine.model.parameter_count()
    prompt = list(range(100, 612))
    # warm: the first steps touch memory the freshly made weights have not been read from yet
    engine.generate(prompt[:64], SamplingParams(max_new_tokens=4, stop_token_ids=())).run()
    if quantize == "int4":
        int4.tune()   # as Engine.warmup does (the bench builds its engine without it)
    gen = engine.generate(prompt, SamplingParams(max_new_tokens=new_tokens, stop_token_ids=()))
    gen.run()
    rss = max(psutil.Process().memory_info().rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {
        "layers": engine.args.n_layers,
        "parameters": params,
        "weight_bytes": engine.weight_bytes,
        "resident_bytes": rss,
        "prefill_tok_s": gen.stats.prefilled_tokens / (gen.stats.prefill_ms / 1e3),
        "decode_tok_s": (gen.stats.generated_tokens - 1) / (gen.stats.decode_ms / 1e3),
        **({"int4_kernel": dict(int4.TUNING)} if quantize == "int4" else {}),
    }


# ---------------------------------------------------------------------------------------------

def run(lite: bool, lite_layers: int | None) -> str:
    with tempfile.TemporaryDirectory() as d:
        reference, folder = build_medium(Path(d))
        # one thread for both engines; no prompt-lookup drafts: random weights never repeat the
        # prompt, so drafts would only cost (speculation is measured on real code by make bench-llamacpp)
        engine = Engine.load(folder, RuntimeConfig(threads=1, speculate=0))
        engine.forward.wait()   # its decode step compiled (from the folder) before anything is timed
    torch.set_num_threads(1)
    cmd = "python benchmarks/engine_bench.py --lite" if lite else "make bench"
    lines = [SECTION, "", f"Command: `{cmd}`. One run on this machine ({torch.get_num_threads()} torch "
             f"thread(s) for both engines), float32, our decode step {engine.forward.state}; ratios are within "
             "the run.", ""]
    n_params = engine.model.parameter_count()
    text = sample_source()
    prompt_ids = engine.tokenizer.encode(text, add_bos=True)[:1024]
    decode = bench_decode(engine, reference, prompt_ids)
    lines += [
        f"Model: random DeepSeek-V2-shaped, {n_params / 1e6:.1f}M parameters "
        f"({engine.args.n_layers} layers, {engine.args.n_routed_experts} experts top-{engine.args.n_activated_experts}, "
        f"kv_lora_rank {engine.args.kv_lora_rank}).",
        "",
        "| figure | ours | transformers | ratio |",
        "|---|---|---|---|",
        f"| decode tokens/s after a 1,024-token prompt | {decode['ours_tok_s']:.1f} | "
        f"{decode['transformers_tok_s']:.1f} | {decode['ratio']:.2f}× (goal ≥ 2×) |",
    ]
    del reference
    gc.collect()
    typing = bench_typing(engine, text)
    r, c = typing["reuse"], typing["recompute"]
    lines += [
        "",
        f"Typing replay: a {typing['prompt_tokens']}-token prompt grows by one character per keystroke, "
        "16 new tokens each.",
        "",
        "| per keystroke | with prefix reuse | recomputing the prompt |",
        "|---|---|---|",
        f"| p50 latency | {r['p50_ms']:.1f} ms | {c['p50_ms']:.1f} ms |",
        f"| p95 latency | {r['p95_ms']:.1f} ms | {c['p95_ms']:.1f} ms |",
        f"| tokens prefilled | {r['prefilled_per_key']:.1f} | {c['prefilled_per_key']:.1f} |",
        "",
        f"Latency ratio (reuse / recompute, p50): **{typing['ratio_p50']:.3f}** (goal ≤ 0.25).",
    ]
    lines += fim_typing_lines(engine, text)
    cb = cache_bytes(engine)
    lines += [
        "",
        f"Cache bytes per token: latent {cb['latent_bytes_per_token']} B "
        f"(= (kv_lora_rank + qk_rope_head_dim) × layers × 4 B) against {cb['per_head_kv_bytes_per_token']} B "
        f"for per-head K/V of the same shape: {cb['ratio']:.1f}× smaller.",
    ]
    if lite:
        lines += ["", *lite_lines(lite_layers)]
    return "\n".join(lines) + "\n"


def lite_lines(layers: int | None) -> list[str]:
    """The Lite-shaped model in int8 and in int4, each loaded and served in a process of its own
    (so that each peak resident size is its own)."""
    lines = []
    for quantize in ("int8", "int4"):
        child = [sys.executable, str(Path(__file__).resolve()), "--lite-child", quantize]
        if layers:
            child += ["--lite-layers", str(layers)]
        res = json.loads(subprocess.run(child, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        lines.append(
            f"DeepSeek-Coder-V2-Lite shape, random {quantize} weights ({res['layers']} layers, "
            f"{res['parameters'] / 1e9:.2f}B parameters, {res['weight_bytes'] / 2**30:.2f} GiB of weights): peak RSS "
            f"{res['resident_bytes'] / 2**30:.1f} GiB loading and serving, prefill {res['prefill_tok_s']:.1f} "
            f"tokens/s, decode {res['decode_tok_s']:.2f} tokens/s (a 512-token prompt, then 16 tokens).")
    return lines


def fim_typing_lines(engine: Engine, text: str) -> list[str]:
    fim = bench_fim_typing(engine, fim_keystrokes(engine, text))
    s, e, c = fim["shift"], fim["exact"], fim["recompute"]
    bundled = Engine.load()
    bundled.forward.wait()
    b = bench_fim_typing(bundled, fim_keystrokes(bundled, text))
    return [
        "",
        f"FIM typing replay: a {fim['prompt_tokens']}-token FIM prompt, cursor after ~¾ of it "
        f"(prefix ~¾, suffix ~¼); {fim['keystrokes']} characters typed at the cursor, 16 new tokens each.",
        "",
        "| per keystroke | shift reuse (approximate) | exact reuse | recomputing the prompt |",
        "|---|---|---|---|",
        f"| p50 latency | {s['p50_ms']:.1f} ms | {e['p50_ms']:.1f} ms | {c['p50_ms']:.1f} ms |",
        f"| p95 latency | {s['p95_ms']:.1f} ms | {e['p95_ms']:.1f} ms | {c['p95_ms']:.1f} ms |",
        f"| mean latency | {s['mean_ms']:.1f} ms | {e['mean_ms']:.1f} ms | {c['mean_ms']:.1f} ms |",
        f"| tokens prefilled | {s['prefilled_per_key']:.1f} | {e['prefilled_per_key']:.1f} | {c['prefilled_per_key']:.1f} |",
        f"| tokens shifted | {s['shifted_per_key']:.1f} | 0 | 0 |",
        "",
        f"Shift against exact, greedy: the same 16-token completion on {fim['same_completion']:.0%} of the "
        f"keystrokes, the same first token on {fim['same_first_token']:.0%}; {s['recomputed_keys']} keystroke(s) "
        "recomputed the suffix (too short a common suffix, or the staleness bound). This model's weights are random.",
        f"Bundled model (trained, {bundled.model.parameter_count() / 1e6:.1f}M), same replay "
        f"({b['prompt_tokens']} tokens): p50 {b['shift']['p50_ms']:.1f} ms shift / {b['exact']['p50_ms']:.1f} ms exact / "
        f"{b['recompute']['p50_ms']:.1f} ms recompute, {b['shift']['prefilled_per_key']:.1f} / "
        f"{b['exact']['prefilled_per_key']:.1f} / {b['recompute']['prefilled_per_key']:.1f} tokens prefilled; "
        f"same completion {b['same_completion']:.0%}, same first token {b['same_first_token']:.0%}.",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="engine_bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lite", action="store_true", help="also run the Coder-V2-Lite-shaped model, int8 and int4")
    parser.add_argument("--lite-layers", type=int, default=None, help="layers of the Lite-shaped model (default 27)")
    parser.add_argument("--lite-child", choices=("int8", "int4"), default=None,
                        help="only the Lite-shaped model in this form; its figures as one JSON line")
    parser.add_argument("--write", type=Path, default=None, help="replace this section in a Markdown file")
    args = parser.parse_args(argv)
    if args.lite_child:
        print(json.dumps(bench_lite(args.lite_layers, quantize=args.lite_child)))
        return 0
    section = run(args.lite, args.lite_layers)
    publish(section, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
