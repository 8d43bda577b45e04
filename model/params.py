"""What a request asks for and how the engine runs: `SamplingParams` and `RuntimeConfig`.

Each is defined here once. Every backend takes them (`generate(prompt, params, cancel=…)`,
`Engine.load(path, runtime)`); the language server's settings, the `latent` flags and the
daemon's flags are derived from their fields (see model/options.py), so adding an option is
one field here plus its documentation. Both validate themselves when made: a bad value is an
`OptionError` whose message is one sentence. This module imports no torch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .options import OptionError, check, option

__all__ = ["OptionError", "RuntimeConfig", "SamplingParams"]


@dataclass(frozen=True)
class SamplingParams:
    """One generation's limits and sampling; greedy by default."""

    max_new_tokens: int = option(64, "tokens to generate at most", min=0, max=65536)
    stop: tuple[str, ...] = option((), "strings that end the generation (never part of the text)", keep_case=True)
    stop_token_ids: tuple[int, ...] = option((), "token ids that end the generation")
    suppress_token_ids: tuple[int, ...] = option((), "token ids never generated (a fill-in-the-middle answer "
                                                     "never writes its format's own markers)")
    heal: str = option("", "text the answer must begin with, taken off the end of the prompt so the model writes "
                           "it together with what follows, as its tokenizer would have split them (token "
                           "healing); the answer's text includes it", keep_case=True)
    temperature: float = option(0.0, "sampling temperature; 0 is greedy", min=0.0, max=100.0)
    top_p: float = option(1.0, "nucleus sampling: keep the smallest set of tokens reaching this probability",
                          min=0.0, max=1.0)
    top_k: int = option(0, "sample among the k most likely tokens; 0 keeps all", min=0)
    seed: int | None = option(None, "random seed for sampling; none draws one", min=-(1 << 63), max=(1 << 63) - 1)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(str(s) for s in self.stop if s))
        for name in ("stop_token_ids", "suppress_token_ids"):
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in getattr(self, name)):
                raise OptionError(f"Setting {name!r} takes whole numbers.")
            object.__setattr__(self, name, tuple(getattr(self, name)))
        check(self)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_dict(self) -> dict:
        """Plain values for a wire (msgpack, JSON); `SamplingParams(**d)` rebuilds it."""
        out = asdict(self)
        out["stop"], out["stop_token_ids"] = list(self.stop), list(self.stop_token_ids)
        return out


@dataclass(frozen=True)
class RuntimeConfig:
    """How to run the weights; never read from the checkpoint."""

    device: str = option("cpu", "where the model runs: cpu, cuda or cuda:N")
    dtype: str = option("float32", "weight dtype (bfloat16 is many times slower than float32 on most CPUs)",
                        choices=("float32", "bfloat16", "float16"))
    quantize: str | None = option(None, "weight-only quantization as each weight loads: int8 (a quarter of "
                                        "float32's memory; on the CPU through fbgemm's int8 GEMM) or int4 (an "
                                        "eighth, in llama.cpp's Q4_0 blocks; CPU only)",
                                  choices=(None, "int8", "int4"))
    threads: int = option(0, "PyTorch CPU threads for prefill; 0 picks them by model size (1 below 100M "
                             "parameters, else every core); a small model decodes on one", min=0, max=1024)
    attention: str = option("auto", "MLA path: absorbed (into the latent), naive (decompressed) or auto "
                                    "(absorbed when a forward adds at most absorb_threshold tokens)",
                            choices=("auto", "absorbed", "naive"))
    absorb_threshold: int = option(64, "auto attention: absorbed when a forward adds at most this many tokens",
                                   min=0)
    max_context: int = option(4096, "tokens the engine's working latent buffer holds", min=64, max=1 << 20)
    cache_mb: int = option(1024, "budget of the latent prefix cache, MiB", min=0, max=1 << 20)
    reuse: str = option("exact", "exact: a keystroke reuses the cached latents of the unchanged prefix; shift: "
                                 "also those of the text after the cursor, which merely moved (k_pe re-rotated): "
                                 "a few tokens to compute per keystroke instead of the whole suffix window, "
                                 "approximate (docs/benchmarks.md)", choices=("exact", "shift"))
    shift_min_tokens: int = option(16, "shift reuse: only spans of at least this many tokens", min=1)
    shift_max_steps: int = option(32, "shift reuse: consecutive shifts of a span before it is recomputed", min=0)
    shift_max_drift: int = option(32, "shift reuse: tokens of a span's past changed since it was exact, at most",
                                  min=0)
    speculate: int = option(8, "greedy decoding also verifies up to this many prompt-lookup draft tokens per "
                               "step (exact: the text is unchanged); 0 turns it off", min=0, max=64)
    compile: bool = option(True, "compile a small model's one-token decode step ahead of time (CPU): made once "
                                 "in the background and kept in ~/.cache/latent/compiled; eager until it is "
                                 "ready, and if compiling fails")

    def __post_init__(self) -> None:
        check(self)
        device = self.device
        if device != "cpu" and not (device == "cuda" or device.startswith("cuda:") and device[5:].isdigit()):
            raise OptionError(f"Setting 'device' cannot be {device!r}; it takes cpu, cuda or cuda:N.")
        if self.quantize == "int4" and device != "cpu":
            raise OptionError("Setting 'quantize' int4 runs on the CPU only; on a GPU use int8 or bfloat16.")

    @property
    def cache_bytes(self) -> int:
        return self.cache_mb << 20
