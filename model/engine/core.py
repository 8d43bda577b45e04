"""The in-process engine: load a checkpoint, generate with latent prefix reuse.

    engine = Engine.load("path/to/DeepSeek-Coder-V2-Lite-Base")   # or Engine.load() for the bundled model
    gen = engine.generate(prompt, SamplingParams(max_new_tokens=32, stop=("\\n",)))
    print(gen.run(), gen.stats)

One computation at a time. A request takes the longest prefix of its tokens whose latent rows
are known — from the live buffer (the previous request's rows, still in place) or from the
radix cache — prefills only the rest, decodes, and files its rows in the radix cache. With
`reuse = "shift"` (approximate, optional) it may also take a moved suffix span (see live.py).

A generation holds the engine only while it computes, not while its consumer holds a piece:
between two pieces another generation may run (the daemon takes turns so), which first parks
the paused one — files its rows in the radix cache and keeps its token list — and the paused
one, when it goes on, copies its rows back (recomputing any evicted meanwhile) and continues
exactly where it stopped: the same sampler, stop strings and text. Each computation's claim on
the live buffer is a `Lease`, and the buffer's state — rows, parking, pins, filing — changes
only through LiveBuffer's methods (live.py).

Between two pieces a generation holds no lock; what it keeps — its lease's pinned match, and
the buffer's rows until another computation parks them — its close releases, so consumers
close it in a `finally` (or use `with engine.generate(...) as gen:`).

At interpreter exit (atexit) every engine is closed: the piece in progress is waited for, and
the engine stays locked. A thread still inside PyTorch when Python finalizes — computing, or
only freeing a tensor — is ended as it retakes the GIL, through a noexcept C++ destructor, and
the process dies of SIGABRT ("terminate called without an active exception", see step.py):
the daemon's worker, an editor's completion thread, any thread that was generating would be
one. After close() such a thread waits on the lock instead, and what its generation holds is
left to the exiting process.
"""
from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import threading
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Generator, Iterator, Sequence

import torch

from ..config import ModelArgs
from ..loader import BUNDLED_DIR, ModelLoadError, load_model, read_args, resolve_model_dir
from ..moe import Experts
from ..params import RuntimeConfig, SamplingParams
from ..protocol import CancelToken, Generation, GenerationStats
from ..quant import pack_for_cpu, weight_bytes
from ..tokenizer import Tokenizer, TokenizerError
from ..transformer import Transformer
from . import persist
from .generate import Request, decode, prefill
from .live import Lease, LiveBuffer, Plan
from .radix import LatentCache
from .step import Forward

SMALL_MODEL_PARAMETERS = 100_000_000
log = logging.getLogger(__name__)


class PromptTooLong(ValueError):
    pass


class EngineClosed(RuntimeError):
    """The engine was closed (the process is exiting): it computes nothing more."""


_open_engines: weakref.WeakSet["Engine"] = weakref.WeakSet()
_left_at_exit: list = []   # generations' steps that ended after close(): never freed on their thread


class Engine:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, runtime: RuntimeConfig, name: str,
                 model_dir: Path | None = None) -> None:
        model.pack()
        if runtime.device == "cpu" and runtime.quantize in ("int8", "int4"):
            pack_for_cpu(model)   # fbgemm's int8 GEMM (model/quant.py) for int8 layers, int4's too
        self.model = model
        self.forward = Forward(model)   # what requests call: the model, one-token steps compiled once built
        self.model_dir = model_dir
        self.parameters = model.parameter_count()   # fixed once loaded (int8 weights count as weights)
        self.weight_bytes = weight_bytes(model)
        self.args: ModelArgs = model.args
        self.tokenizer = tokenizer
        self.runtime = runtime
        self.model_name = name
        self.cache = LatentCache(runtime.cache_bytes)
        self.context = min(runtime.max_context, model.args.max_position_embeddings)   # tokens the buffer holds
        if self.context < runtime.max_context:   # a warning only where the user asked for more than the default
            log.log(logging.WARNING if runtime.max_context != RuntimeConfig().max_context else logging.INFO,
                    "max_context is %d but %s was trained on %d positions: the engine holds %d tokens.",
                    runtime.max_context, name, model.args.max_position_embeddings, self.context)
        self.live = LiveBuffer(model.new_cache(self.context), model.args)
        # a GPU decodes float experts without host syncs (see moe.py); quantized experts
        # (int8, int4) decide for themselves
        for experts in model.modules():
            if type(experts) is Experts:
                experts.batched_decode = runtime.device != "cpu"
        self._lock = threading.Lock()       # one computation at a time, each its lease on self.live
        self._closed = False                # set by close(), which keeps the lock: nothing computes after it
        self.last_stats: GenerationStats | None = None
        self.requests = 0
        _open_engines.add(self)

    # -- loading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, path_or_id: str | os.PathLike | None = None, runtime: RuntimeConfig = RuntimeConfig(), *,
             warmup: bool = True) -> "Engine":
        """Load a local checkpoint folder or cached repo id (None: the bundled model)."""
        if runtime.device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelLoadError(f"device {runtime.device!r} was asked for but PyTorch sees no CUDA GPU.")
        model_dir = resolve_model_dir(path_or_id if path_or_id is not None else BUNDLED_DIR)
        args = read_args(model_dir)
        try:
            tokenizer = Tokenizer.from_dir(model_dir)
        except TokenizerError as e:
            raise ModelLoadError(str(e)) from None
        model = load_model(model_dir, args, dtype=runtime.dtype, device=runtime.device, quantize=runtime.quantize)
        engine = cls(model, tokenizer, runtime, name="bundled" if path_or_id is None else str(path_or_id),
                     model_dir=model_dir)
        if warmup:
            engine.warmup()
        return engine

    def warmup(self) -> None:
        """Run each path once so the first keystroke does not pay for lazy initialisation, and
        start compiling the decode step in the background where that pays (see step.py)."""
        with self._computing():   # a loading thread may still be here at exit
            scratch = self.model.new_cache(8)
            tokens = torch.zeros(4, dtype=torch.long, device=scratch.device)
            self.model(tokens, scratch[:, :4], absorbed=False)
            self.model(tokens[:1], scratch[:, :5], absorbed=True)
            if self.runtime.quantize == "int4" and self.runtime.device == "cpu":
                from ..int4 import tune

                tune()   # the kernel's choice measured again, now that the weights are in place
        if self.runtime.compile and self.model_dir is not None and self._compiles():
            held = dataclasses.replace(self.runtime, max_context=self.context)   # the buffer the step reads
            self.forward.compile_in_background(self.model_dir, held, self.threads[1])

    @property
    def threads(self) -> tuple[int, int]:
        """(prefill, decode) threads for this runtime and model."""
        return _threads(self.runtime.threads, self.parameters)

    # -- the protocol -----------------------------------------------------------------------
    @property
    def fim_format(self) -> str | None:
        return self.tokenizer.fim.name if self.tokenizer.fim else None

    @property
    def fim_layouts(self) -> tuple[str, ...]:
        return self.args.fim_layouts

    @property
    def languages(self) -> tuple[str, ...]:
        return self.args.languages

    @property
    def context_length(self) -> int | None:
        return self.args.max_position_embeddings

    def generate(self, prompt: str | Sequence[int], params: SamplingParams = SamplingParams(), *,
                 cancel: CancelToken | None = None) -> Generation:
        tokens = self._tokens(prompt)
        room = self.context - len(tokens)
        if room < 1:
            raise PromptTooLong(
                f"The prompt has {len(tokens)} tokens but the context holds {self.context}."
            )
        eos = {self.tokenizer.eos_id} if self.tokenizer.eos_id is not None else set()
        request = Request(tokens, params, min(params.max_new_tokens, room),
                          frozenset(params.stop_token_ids) | eos, cancel or CancelToken())
        stats = GenerationStats(prompt_tokens=len(tokens))
        return Generation(self._run(request, stats), stats)

    def clear_cache(self) -> None:
        with self._computing():
            self.live.clear()
            self.cache.clear()

    def stats(self) -> dict:
        out = {
            "model": self.model_name,
            "model_type": self.args.model_type,
            "parameters": self.parameters,
            "weight_bytes": self.weight_bytes,
            "dtype": self.runtime.dtype,
            "quantize": self.runtime.quantize,
            "device": self.runtime.device,
            "threads": {"prefill": self.threads[0], "decode": self.threads[1]},
            "decode_step": {"state": self.forward.state, "compiled_calls": self.forward.compiled_calls},
            "fim_format": self.fim_format,
            "fim_layouts": list(self.fim_layouts),
            "languages": list(self.languages),
            "latent_bytes_per_token": self.latent_bytes_per_token(),
            "max_context": self.context,
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

    # -- beyond the protocol ----------------------------------------------------------------
    def logits(self, token_ids: Sequence[int]) -> torch.Tensor:
        """float32 logits (T, V) for every position of a prompt; the cache is not touched."""
        tokens = torch.tensor(list(token_ids), dtype=torch.long, device=self.live.rows.device)
        scratch = self.model.new_cache(len(tokens))
        with self._computing():
            torch.set_num_threads(self.threads[0])
            return self.model(tokens, scratch, absorbed=self._absorbed(len(tokens)), all_logits=True).cpu()

    def score(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Last-position float32 logits computed the way generate() computes them: reusing
        cached rows, prefilling the rest, filing the rows in the cache. Used to check reuse."""
        tokens = [int(t) for t in token_ids]
        with self._computing():
            lease = Lease()
            self.live.hold(lease, self.cache)
            try:
                stats = GenerationStats(prompt_tokens=len(tokens))
                plan = self.live.plan(lease, tokens, self.cache, self.runtime)
                self._count(plan, stats)
                torch.set_num_threads(self.threads[0])
                logits = self._fill(tokens, plan, CancelToken())
            finally:
                self.live.release(lease, self.cache)
            assert logits is not None, "an uncancellable fill returns logits"
            self.last_stats = stats
            return logits.cpu()

    def latent_bytes_per_token(self) -> int:
        return self.args.latent_dim * self.args.n_layers * self.live.rows.element_size()

    def save_cache(self, path: Path, max_bytes: int = 256 << 20) -> int:
        """Write the most recently used cached sequences to a file; returns tokens saved."""
        with self._computing():
            return persist.save(self.cache, path, self._fingerprint(), self.live.rows.dtype, max_bytes)

    def load_cache(self, path: Path) -> int:
        """Restore a saved cache if it was made with these weights; returns tokens restored."""
        with self._computing():
            return persist.load(self.cache, path, self._fingerprint(), self.live.rows.dtype,
                                self.live.rows.device)

    def close(self, timeout: float = 60.0) -> bool:
        """Close the engine for good, as the process exits (atexit does, for every engine): calls
        from now on are refused (EngineClosed; a generation ends as cancelled), the computation
        in progress — at most a piece of a generation: a decode step or a prefill — is waited
        for, and the lock is kept, so a thread going on with a generation waits on it rather
        than compute. False when the computation in progress outlasted `timeout`."""
        if self._closed:
            return True
        self._closed = True
        self.forward.close()
        return self._lock.acquire(timeout=timeout)

    @contextmanager
    def _computing(self) -> Generator[None, None, None]:
        """The lock, for a computation; EngineClosed once the engine is closed."""
        if self._closed:
            raise EngineClosed("The engine is closed: the process is exiting.")
        with self._lock:
            yield

    # -- one request ------------------------------------------------------------------------
    def _tokens(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            tokens = self.tokenizer.encode(prompt, add_bos=self.tokenizer.add_bos)
        else:
            tokens = [int(t) for t in prompt]
        if not tokens:
            raise ValueError("The prompt is empty.")
        bad = [t for t in tokens if not 0 <= t < self.args.vocab_size]
        if bad:
            raise ValueError(f"Token id {bad[0]} is outside the vocabulary of {self.args.vocab_size}.")
        return tokens

    def _run(self, req: Request, stats: GenerationStats) -> Iterator[str]:
        """The pieces, each computed under the lock; while one is out, the engine is free."""
        if req.cancel.cancelled or self._closed:
            stats.finish_reason = "cancelled"
            return
        lease = Lease()
        steps = self._steps(req, stats, lease)
        with self._lock:
            self.requests += 1
        try:
            while True:
                with self._lock:
                    if not self._hold(lease, req.cancel):
                        stats.finish_reason = "cancelled"
                        return
                    piece = next(steps, None)
                if piece is None:
                    return
                yield piece
        finally:
            if self._closed:   # the process is exiting: its tensors must not be freed on this thread
                _left_at_exit.append((steps, lease))
            else:
                with self._lock:
                    steps.close()   # touches neither the buffer nor the cache: the release does
                    self.live.release(lease, self.cache, stats.generated_tokens)
                    self.last_stats = stats

    def _hold(self, lease: Lease, cancel: CancelToken) -> bool:
        """Give `lease` the live buffer (parking the paused generation that holds it), its rows
        recomputed where they were evicted while it was parked; False for a parked one
        cancelled meanwhile, which ends as it is."""
        if self.live.holder is lease:
            return True
        if lease.parked and cancel.cancelled:
            return False
        fed = self.live.hold(lease, self.cache)
        if fed:                                   # it was parked: it goes on decoding
            if len(self.live) < len(fed):
                torch.set_num_threads(self.threads[0])
                prefill(self._forward(), self.live, fed[len(self.live):], CancelToken(), self._absorbed)
            torch.set_num_threads(self.threads[1])
        return True

    def _steps(self, req: Request, stats: GenerationStats, lease: Lease) -> Generator[str, None, None]:
        """Plan, prefill and decode `req` as the holder of `lease`; each piece is computed while
        the caller holds the lock and the lease holds the buffer."""
        t0 = time.perf_counter()
        plan = self.live.plan(lease, req.tokens, self.cache, self.runtime)
        self._count(plan, stats)
        torch.set_num_threads(self.threads[0])
        logits = self._fill(req.tokens, plan, req.cancel)
        stats.prefill_ms = (time.perf_counter() - t0) * 1e3
        if logits is None:
            stats.finish_reason = "cancelled"
            return
        torch.set_num_threads(self.threads[1])
        yield from decode(self._forward(), self.live, self.tokenizer, req, logits, stats, self._absorbed,
                          self._speculate())

    def _fill(self, tokens: list[int], plan: Plan, cancel: CancelToken) -> torch.Tensor | None:
        """Rows for the whole prompt after plan.reused; the last position's logits (None: cancelled)."""
        shift, live = plan.shift, self.live
        if shift is None:
            return prefill(self._forward(), live, tokens[plan.reused :], cancel, self._absorbed)
        if shift.dst > plan.reused and prefill(self._forward(), live, tokens[plan.reused : shift.dst], cancel,
                                               self._absorbed) is None:
            return None
        live.place(tokens, shift)
        return prefill(self._forward(), live, tokens[-1:], cancel, self._absorbed)

    def _count(self, plan: Plan, stats: GenerationStats) -> None:
        stats.reused_tokens = plan.reused + plan.shifted
        stats.prefilled_tokens = stats.prompt_tokens - stats.reused_tokens
        if self.runtime.reuse == "shift":
            stats.extra["shifted_tokens"] = plan.shifted

    def _absorbed(self, new_tokens: int) -> bool:
        mode = self.runtime.attention
        if mode == "auto":
            return new_tokens <= self.runtime.absorb_threshold
        return mode == "absorbed"

    def _forward(self):
        """The model as requests call it: with the compiled step while `compile` is on."""
        return self.forward if self.runtime.compile else self.model

    def _speculate(self) -> int:
        """Draft tokens verified per step. None while one-token steps run compiled: verifying a
        draft (several tokens, eager) then costs ~8 steps, more than the drafts ever save
        (simulated on the llama.cpp benchmark's prompts: 1.16× with a compiled verification
        too, 1.00× on the typing replay — not worth a second compiled graph)."""
        compiled = self.runtime.compile and self.forward.state == "compiled"
        return 0 if compiled else self.runtime.speculate

    def _compiles(self) -> bool:
        """Whether compiling the decode step pays: a small float model on CPU, whose step is
        per-operation overhead. (A large model's step is bound by reading its weights, and the
        compiled step gathers the chosen experts' weights, megabytes each.) The compiler, a
        child process, loads the checkpoint from its folder: warmup() asks for one too."""
        return (self.runtime.device == "cpu" and self.runtime.quantize is None
                and self.parameters < SMALL_MODEL_PARAMETERS)

    def _fingerprint(self) -> str:
        return persist.fingerprint(self.model_dir, self.runtime.dtype, self.runtime.quantize)


@atexit.register
def _close_at_exit() -> None:
    """No thread computes through an engine once Python finalizes (see the module's notes)."""
    for engine in list(_open_engines):
        engine.close()


def _threads(asked: int, parameters: int) -> tuple[int, int]:
    """Threads for prefill and for decode. A small model's decode is bound by per-operation
    overhead, where a second thread only adds synchronisation (measured on the bundled model:
    eager slower with 2 threads than with 1, the compiled step no faster, 0.44 against 0.43 ms —
    and on a busy machine, stalls of many milliseconds): one thread, whatever was asked. Prefill runs large products and takes the threads asked for (0: one for small
    models, else every core); large models are bound by memory bandwidth in both phases."""
    cores = os.cpu_count() or 1
    small = parameters < SMALL_MODEL_PARAMETERS
    prefill = asked or (1 if small else cores)
    return prefill, 1 if small else prefill
