"""The in-process engine: load a checkpoint, generate with latent prefix reuse.

    engine = Engine.load("path/to/DeepSeek-Coder-V2-Lite-Base")   # or Engine.load() for the bundled model
    gen = engine.generate(prompt, max_new_tokens=32, stop=["\\n"])
    print(gen.run(), gen.stats)

One computation at a time. A request takes the longest prefix of its tokens whose latent rows
are known — from the live buffer (the previous request's rows, still in place) or from the
radix cache — prefills only the rest, decodes, and files its rows in the radix cache.

With `reuse="shift"` (approximate, optional) a request may also take the longest common
*suffix* of its prompt and the live buffer's prompt — a FIM suffix window that only moved
because text was typed before it. Its rows are moved to their new positions (c_KV carries no
position; k_pe is re-rotated by the delta), only the changed middle and the last prompt token
are prefilled. Those rows saw a slightly different past, so they are never filed in the radix
tree, never taken by exact reuse, and recomputed after a bounded number of shifts.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .cache import LatentCache, Match
from .config import ModelArgs, RuntimeConfig
from .loader import BUNDLED_DIR, ModelLoadError, load_model, read_args, resolve_model_dir
from .protocol import CancelToken, Generation, GenerationStats
from .quant import quantize_int8, weight_bytes
from .rope import shift_rows
from .tokenizer import Tokenizer, TokenizerError
from .transformer import Transformer

PREFILL_CHUNK = 512
SMALL_MODEL_PARAMETERS = 100_000_000


class PromptTooLong(ValueError):
    pass


class Engine:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, runtime: RuntimeConfig, name: str,
                 model_dir: Path | None = None) -> None:
        self.model = model
        self.model_dir = model_dir
        self._parameters = model.parameter_count()   # fixed once loaded (and quantized)
        self._weight_bytes = weight_bytes(model)
        self.args: ModelArgs = model.args
        self.tokenizer = tokenizer
        self.runtime = runtime
        self.model_name = name
        self.cache = LatentCache(runtime.cache_bytes)
        self._live = model.new_cache(runtime.max_context)   # (L, S, D) rows of _live_tokens
        self._live_tokens: list[int] = []
        self._live_prompt = 0           # how many of _live_tokens were the prompt (not generated)
        self._approx_from: int | None = None   # rows from here on were shifted or saw shifted rows
        self._shift_steps = 0           # consecutive shifts the approximate span has been through
        self._shift_drift = 0           # tokens of its past changed since it was last exact
        self._lock = threading.Lock()
        self.last_stats: GenerationStats | None = None
        self.requests = 0

    # -- loading ----------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path_or_id: str | os.PathLike | None = None,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        threads: int | None = None,
        quantize: str | None = None,
        cache_bytes: int = 1 << 30,
        max_context: int = 4096,
        attention: str = "auto",
        reuse: str = "exact",
        warmup: bool = True,
    ) -> "Engine":
        """Load a local checkpoint folder or cached repo id (None: the bundled model).

        reuse: "exact" (default) or "shift", the approximate reuse of moved suffix spans."""
        runtime = RuntimeConfig(dtype=dtype, device=device, threads=threads, quantize=quantize,
                                attention=attention, max_context=max_context, cache_bytes=cache_bytes,
                                reuse=reuse)
        if reuse not in ("exact", "shift"):
            raise ModelLoadError(f"reuse must be exact or shift, got {reuse!r}.")
        if quantize not in (None, "int8"):
            raise ModelLoadError(f"quantize must be None or 'int8', got {quantize!r}.")
        if attention not in ("auto", "absorbed", "naive"):
            raise ModelLoadError(f"attention must be auto, absorbed or naive, got {attention!r}.")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} was asked for but PyTorch sees no CUDA GPU.")
        model_dir = resolve_model_dir(path_or_id if path_or_id is not None else BUNDLED_DIR)
        args = read_args(model_dir)
        try:
            tokenizer = Tokenizer.from_dir(model_dir)
        except TokenizerError as e:
            raise ModelLoadError(str(e)) from None
        model = load_model(model_dir, args, dtype=dtype, device=device)
        torch.set_num_threads(threads or _auto_threads(model))
        if quantize == "int8":
            quantize_int8(model)
        engine = cls(model, tokenizer, runtime, name="bundled" if path_or_id is None else str(path_or_id),
                     model_dir=model_dir)
        if warmup:
            engine.warmup()
        return engine

    def warmup(self) -> None:
        """Run each path once so the first keystroke does not pay for lazy initialisation."""
        scratch = self.model.new_cache(8)
        tokens = torch.zeros(4, dtype=torch.long, device=scratch.device)
        self.model(tokens, scratch, 0, absorbed=False)
        self.model(tokens[:1], scratch, 4, absorbed=True)

    # -- the protocol -----------------------------------------------------------------------
    @property
    def fim_format(self) -> str | None:
        return self.tokenizer.fim.style if self.tokenizer.fim else None

    def generate(
        self,
        prompt: str | Sequence[int],
        *,
        max_new_tokens: int = 64,
        stop: Sequence[str] = (),
        stop_token_ids: Sequence[int] = (),
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        cancel: CancelToken | None = None,
    ) -> Generation:
        if isinstance(prompt, str):
            tokens = self.tokenizer.encode(prompt, add_bos=self.tokenizer.add_bos)
        else:
            tokens = [int(t) for t in prompt]
        if not tokens:
            raise ValueError("The prompt is empty.")
        bad = [t for t in tokens if not 0 <= t < self.args.vocab_size]
        if bad:
            raise ValueError(f"Token id {bad[0]} is outside the vocabulary of {self.args.vocab_size}.")
        room = self.runtime.max_context - len(tokens)
        if room < 1:
            raise PromptTooLong(
                f"The prompt has {len(tokens)} tokens but the context holds {self.runtime.max_context}."
            )
        stats = GenerationStats(prompt_tokens=len(tokens))
        request = _Request(
            tokens=tokens, max_new_tokens=max(0, min(max_new_tokens, room)), stop=tuple(s for s in stop if s),
            stop_ids=frozenset(stop_token_ids) | ({self.tokenizer.eos_id} if self.tokenizer.eos_id is not None else set()),
            sampler=_Sampler(temperature, top_p, top_k, seed), cancel=cancel or CancelToken(),
        )
        return Generation(self._run(request, stats), stats)

    def logits(self, token_ids: Sequence[int]) -> torch.Tensor:
        """float32 logits (T, V) for every position of a prompt; the cache is not touched."""
        tokens = torch.tensor(list(token_ids), dtype=torch.long, device=self._live.device)
        scratch = self.model.new_cache(len(tokens))
        with self._lock:
            return self.model(tokens, scratch, 0, absorbed=self._absorbed(len(tokens)), all_logits=True).cpu()

    def score(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Last-position float32 logits computed the way generate() computes them: reusing
        cached rows, prefilling the rest, filing the rows in the cache. Used to check reuse."""
        tokens = [int(t) for t in token_ids]
        with self._lock:
            stats = GenerationStats(prompt_tokens=len(tokens))
            plan = self._reuse(tokens)
            self._count(plan, stats)
            self.cache.pin(plan.match)
            try:
                logits = self._fill(tokens, plan, CancelToken())
            finally:
                self.cache.unpin(plan.match)
                self._file_rows()
            self.last_stats = stats
            return logits.cpu()

    def stats(self) -> dict:
        out = {
            "model": self.model_name,
            "model_type": self.args.model_type,
            "parameters": self._parameters,
            "weight_bytes": self._weight_bytes,
            "dtype": self.runtime.dtype,
            "quantize": self.runtime.quantize,
            "device": self.runtime.device,
            "fim_format": self.fim_format,
            "latent_bytes_per_token": self.latent_bytes_per_token(),
            "max_context": self.runtime.max_context,
            "reuse": self.runtime.reuse,
            "requests": self.requests,
            **self.cache.stats(),
        }
        if self.last_stats is not None:
            out["last_request"] = self.last_stats.as_dict()
        try:
            import psutil

            out["resident_bytes"] = psutil.Process().memory_info().rss
        except ImportError:
            pass
        return out

    def latent_bytes_per_token(self) -> int:
        return self.args.latent_dim * self.args.n_layers * self._live.element_size()

    # -- keeping the cache across restarts (the daemon saves it at exit) -------------------
    def fingerprint(self) -> str:
        """Identifies the weights, dtype and quantization: saved latents are only valid for
        the same. Hashes config.json and, per weights file, its size and last megabyte."""
        import hashlib

        h = hashlib.sha256(f"{self.runtime.dtype}|{self.runtime.quantize}|{self.model_dir}".encode())
        if self.model_dir is not None:
            h.update((Path(self.model_dir) / "config.json").read_bytes())
            for f in sorted(Path(self.model_dir).glob("*.safetensors")):
                size = f.stat().st_size
                with open(f, "rb") as handle:
                    handle.seek(max(0, size - (1 << 20)))
                    h.update(f"{f.name}:{size}".encode() + handle.read())
        return h.hexdigest()

    def save_cache(self, path: Path, max_bytes: int = 256 << 20) -> int:
        """Write the most recently used cached sequences to a msgpack file; returns tokens saved."""
        import msgpack

        with self._lock:
            entries = self.cache.hottest(max_bytes)
            payload = {
                "version": 1, "fingerprint": self.fingerprint(), "dtype": str(self._live.dtype),
                "entries": [{"tokens": tokens, "shape": list(rows.shape),
                             "rows": rows.cpu().contiguous().view(torch.uint8).numpy().tobytes()}
                            for tokens, rows in entries],
            }
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_bytes(msgpack.packb(payload, use_bin_type=True))
        os.chmod(tmp, 0o600)
        tmp.replace(path)
        return sum(len(t) for t, _ in entries)

    def load_cache(self, path: Path) -> int:
        """Restore a saved cache if it was made with these weights; returns tokens restored."""
        import msgpack

        try:
            payload = msgpack.unpackb(Path(path).read_bytes(), raw=False)
        except (OSError, ValueError, msgpack.UnpackException):
            return 0
        if not isinstance(payload, dict) or payload.get("fingerprint") != self.fingerprint() \
                or payload.get("dtype") != str(self._live.dtype):
            return 0
        restored = 0
        with self._lock:
            for entry in payload.get("entries", []):
                rows = torch.frombuffer(bytearray(entry["rows"]), dtype=torch.uint8)
                rows = rows.view(self._live.dtype).reshape(entry["shape"]).to(self._live.device)
                restored += self.cache.insert(entry["tokens"], rows)
        return restored

    def clear_cache(self) -> None:
        with self._lock:
            self.cache.clear()
            self._live_tokens = []
            self._live_prompt, self._approx_from = 0, None
            self._shift_steps = self._shift_drift = 0

    # -- one request ------------------------------------------------------------------------
    def _run(self, req: "_Request", stats: GenerationStats) -> Iterator[str]:
        if req.cancel.cancelled:
            stats.finish_reason = "cancelled"
            return
        with self._lock:
            self.requests += 1
            try:
                yield from self._generate_locked(req, stats)
            finally:
                self.last_stats = stats

    def _generate_locked(self, req: "_Request", stats: GenerationStats) -> Iterator[str]:
        tokens = req.tokens
        t0 = time.perf_counter()
        plan = self._reuse(tokens)
        self._count(plan, stats)
        self.cache.pin(plan.match)
        try:
            logits = self._fill(tokens, plan, req.cancel)
            stats.prefill_ms = (time.perf_counter() - t0) * 1e3
            if logits is None:
                stats.finish_reason = "cancelled"
                return
            yield from self._decode(req, logits, stats)
        finally:
            self.cache.unpin(plan.match)
            self._file_rows()

    def _reuse(self, tokens: list[int]) -> "_Plan":
        """Rows already known for a prefix of tokens: in the live buffer, else in the tree;
        in shift mode also a moved suffix span of the live buffer (saved before it is overwritten)."""
        live = min(_common_prefix(self._live_tokens, tokens), self._exact_rows())
        match = self.cache.match_prefix(tokens)
        reused = max(live, match.length)
        reused = min(reused, len(tokens) - 1)   # the last prompt token is always run: we need its logits
        shift = self._find_shift(tokens, reused) if self.runtime.reuse == "shift" else None
        if match.length > live:
            self.cache.gather(match, self._live, live, reused)
        self._live_tokens = tokens[:reused]     # all exact: approximate rows start at or after `live`
        self._live_prompt, self._approx_from = len(tokens), None
        self._shift_steps = self._shift_drift = 0
        return _Plan(match, reused, shift)

    def _find_shift(self, tokens: list[int], reused: int) -> "_Shift | None":
        """The live prompt's longest common suffix with tokens, both starts at or after `reused`,
        as rows moved to their new positions; None when too short or too stale."""
        old = self._live_tokens[: self._live_prompt]     # generated text never counts as suffix
        span = _common_suffix(old, tokens, reused)
        rows = span - 1                                  # the last prompt token is always run
        if rows < max(1, self.runtime.shift_min_tokens):
            return None
        src, dst = len(old) - span, len(tokens) - span
        carried = src + rows > self._exact_rows()        # the span holds rows shifted before
        steps = 1 + (self._shift_steps if carried else 0)
        drift = max(src, dst) - reused + (self._shift_drift if carried else 0)
        if steps > self.runtime.shift_max_steps or drift > self.runtime.shift_max_drift:
            return None                                  # stale: recompute the span exactly
        moved = shift_rows(self._live[:, src : src + rows], dst - src, self.args, start=src)
        return _Shift(dst, moved, steps, drift)

    def _fill(self, tokens: list[int], plan: "_Plan", cancel: CancelToken) -> torch.Tensor | None:
        """Rows for the whole prompt after plan.reused; the last position's logits (None: cancelled)."""
        shift = plan.shift
        if shift is None:
            return self._prefill(tokens, plan.reused, len(tokens), cancel)
        if shift.dst > plan.reused and self._prefill(tokens, plan.reused, shift.dst, cancel) is None:
            return None
        self._place(tokens, shift)
        return self._prefill(tokens, len(tokens) - 1, len(tokens), cancel)

    def _place(self, tokens: list[int], shift: "_Shift") -> None:
        """Write the moved rows right after the fresh middle; from here on the buffer is approximate."""
        end = shift.dst + shift.rows.shape[1]
        self._live[:, shift.dst : end] = shift.rows
        self._live_tokens.extend(tokens[shift.dst : end])
        self._approx_from = shift.dst
        self._shift_steps, self._shift_drift = shift.steps, shift.drift

    def _count(self, plan: "_Plan", stats: GenerationStats) -> None:
        shifted = plan.shift.rows.shape[1] if plan.shift else 0
        stats.reused_tokens = plan.reused + shifted
        stats.prefilled_tokens = stats.prompt_tokens - stats.reused_tokens
        if self.runtime.reuse == "shift":
            stats.extra["shifted_tokens"] = shifted

    def _exact_rows(self) -> int:
        """How many leading rows of the live buffer are exact (computed from their true past)."""
        if self._approx_from is None:
            return len(self._live_tokens)
        return min(self._approx_from, len(self._live_tokens))

    def _file_rows(self) -> None:
        """File the exact rows in the radix tree; shifted rows never go there."""
        self.cache.insert(self._live_tokens[: self._exact_rows()], self._live)

    def _prefill(self, tokens: list[int], start: int, end: int, cancel: CancelToken) -> torch.Tensor | None:
        """Run tokens[start:end) (non-empty) over the rows before them; last logits, None if cancelled."""
        device = self._live.device
        logits = None
        for lo in range(start, end, PREFILL_CHUNK):
            if cancel.cancelled:
                return None
            chunk = tokens[lo : min(lo + PREFILL_CHUNK, end)]
            ids = torch.tensor(chunk, dtype=torch.long, device=device)
            logits = self.model(ids, self._live, lo, absorbed=self._absorbed(len(chunk)))
            self._live_tokens.extend(chunk)
        return logits[-1]

    def _decode(self, req: "_Request", logits: torch.Tensor, stats: GenerationStats) -> Iterator[str]:
        t0 = time.perf_counter()
        out = _TextStream(self.tokenizer, req.stop)
        device = self._live.device
        stats.finish_reason = "length"
        try:
            while stats.generated_tokens < req.max_new_tokens:
                token = req.sampler(logits)
                stats.generated_tokens += 1
                if token in req.stop_ids:
                    stats.finish_reason = "eos" if token == self.tokenizer.eos_id else "stop"
                    break
                piece, stopped = out.push(token)
                if piece:
                    yield piece
                if stopped:
                    stats.finish_reason = "stop"
                    break
                if req.cancel.cancelled:
                    stats.finish_reason = "cancelled"
                    break
                if stats.generated_tokens == req.max_new_tokens:
                    break
                ids = torch.tensor([token], dtype=torch.long, device=device)
                logits = self.model(ids, self._live, len(self._live_tokens), absorbed=self._absorbed(1))[-1]
                self._live_tokens.append(token)
            if stats.finish_reason in ("length", "eos", "cancelled"):
                tail = out.flush()
                if tail:
                    yield tail
        finally:  # also when the consumer stops early and closes the generation
            stats.decode_ms = (time.perf_counter() - t0) * 1e3

    def _absorbed(self, new_tokens: int) -> bool:
        mode = self.runtime.attention
        if mode == "auto":
            return new_tokens <= self.runtime.absorb_threshold
        return mode == "absorbed"


# ---------------------------------------------------------------------------------------------

@dataclass
class _Shift:
    """A moved span: rows (L, n, R + P), already re-rotated, for positions [dst, dst + n)."""

    dst: int
    rows: torch.Tensor
    steps: int          # consecutive shifts of this span, this one included
    drift: int          # tokens of its past changed since it was exact


@dataclass
class _Plan:
    """How a prompt's rows are obtained: [0, reused) exact from the live buffer or the tree,
    then prefilled — up to shift.dst, shifted rows, and the last token fresh when shift is set."""

    match: Match
    reused: int
    shift: _Shift | None = None


class _Request:
    __slots__ = ("tokens", "max_new_tokens", "stop", "stop_ids", "sampler", "cancel")

    def __init__(self, **kw) -> None:
        for k, v in kw.items():
            setattr(self, k, v)


class _Sampler:
    """Greedy when temperature is 0, else temperature / top-k / top-p with a seeded generator."""

    def __init__(self, temperature: float, top_p: float, top_k: int, seed: int | None) -> None:
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.generator = None
        if temperature > 0:
            self.generator = torch.Generator()
            self.generator.manual_seed(seed if seed is not None else torch.seed())

    def __call__(self, logits: torch.Tensor) -> int:
        if self.temperature <= 0:
            return int(logits.argmax())
        logits = logits.float().cpu() / self.temperature
        if self.top_k > 0:
            kth = logits.topk(min(self.top_k, logits.numel()))[0][-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = logits.softmax(-1)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > self.top_p   # keep the smallest set reaching top_p
            sorted_p[drop] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
        return int(torch.multinomial(probs / probs.sum(), 1, generator=self.generator))


class _TextStream:
    """Turns token ids into text pieces, holding back what may still become a stop string
    (matched across token boundaries, never returned) or an incomplete UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...]) -> None:
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, token: int) -> tuple[str, bool]:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            piece = text[self.emitted : cut] if cut > self.emitted else ""
            self.emitted = max(self.emitted, cut)
            return piece, True
        safe = len(text) - _held_back(text, self.stop)
        piece = text[self.emitted : safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return piece, False

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids).rstrip("\ufffd")
        piece = text[self.emitted :]
        self.emitted = len(text)
        return piece


def _held_back(text: str, stop: tuple[str, ...]) -> int:
    """Characters at the end of text that could start a stop string or finish a character."""
    hold = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    if text.endswith("\ufffd"):
        hold = max(hold, len(text) - len(text.rstrip("\ufffd")))
    return hold


def _auto_threads(model: Transformer) -> int:
    """Small models are bound by per-operation overhead, where a second thread only adds
    synchronisation (and, on a busy machine, stalls of many milliseconds): use one. Large
    models are bound by memory bandwidth: use the cores torch found."""
    if model.parameter_count() < SMALL_MODEL_PARAMETERS:
        return 1
    return torch.get_num_threads()


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _common_suffix(a: Sequence[int], b: Sequence[int], floor: int) -> int:
    """Length of the longest common suffix of a and b that starts at or after `floor` in both."""
    n = min(len(a), len(b)) - floor
    i = 0
    while i < n and a[-1 - i] == b[-1 - i]:
        i += 1
    return max(i, 0)
