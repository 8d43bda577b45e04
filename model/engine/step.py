"""The model's forward as the engine calls it, with one-token steps compiled ahead of time.

    forward = Forward(model)
    forward.compile_in_background(model_dir, runtime, threads=1)   # returns at once
    logits = forward(tokens, cache, absorbed, all_logits)          # eager until compiled

A small model's decode step is bound by per-operation overhead: ~150 small operations per
token at a few microseconds each, against well under a millisecond of arithmetic. The step is
exported (`torch.export`) and compiled by AOTInductor into a shared library of C++ kernels
(gcc): everything between the matrix products fuses into a few loops, and a call runs no
Python and checks no guards. Only the one-token call on the absorbed path is compiled — decode
steps, and the one-token prefill of a keystroke whose prompt was all reused; longer calls
(prefill, draft verification) stay eager. The attention length is a dynamic dimension, so one
library serves every position from 2 to max_context - 1. It reads the engine's own weights in
place (nothing is copied, so they must not change after load) and is checked against the
eager step on a sample before it is used.

Compiling costs ~20 s of one core (more on a busy machine). It is paid once per model shape,
code and PyTorch version: the library is kept in ~/.cache/latent/compiled (XDG_CACHE_HOME),
and a later load takes it from there in milliseconds. Otherwise a child process compiles it
(`python -m model.engine.step`, which loads the same checkpoint the same way) at low priority,
`COMPILE_DELAY` seconds after load — short-lived processes (tests, one-off commands) never pay
for it, and `wait()` starts it at once — while the eager forward serves requests: the first
keystroke never waits for it. One compile runs at a time on a machine (a lock file: servers
started together share one), and the child dies with its parent. If anything fails, one log
line says so and eager stays. While the step runs compiled the engine does not draft
(core.py `_speculate`): an eager verification of several tokens costs ~8 compiled steps.

At exit (atexit, before the interpreter finalizes) every Forward is closed: a pending compile
is dropped, the child killed, a load in progress waited for, and then the loader thread itself,
woken, until it has ended. A daemon thread still inside a PyTorch call when Python finalizes is
ended by pthread_exit as it retakes the GIL, and that unwinding through pybind11's noexcept
gil_scoped_release destructor calls std::terminate: a process exiting while the step loads (a
`latent complete` that skips) died of SIGABRT, "terminate called without an active exception".
The loader thread's own end counts too: it holds the Forward, and with it the model, and when
the engine is gone its last reference goes with the thread — the model's tensors then freed on
that thread, racing the finalizing interpreter the same way (test_rpc's engines, whose waiting
compiles the hook woke, aborted 11 of 35 short test runs so).
"""
from __future__ import annotations

import argparse
import ast
import atexit
import ctypes
import fcntl
import hashlib
import logging
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import torch
from torch import nn

from ..params import RuntimeConfig
from ..torch_private import aoti_bind, aoti_compile, aoti_loader
from ..transformer import Transformer

log = logging.getLogger(__name__)
COMPILE_DELAY = 30.0            # seconds after load before a compile starts (wait() skips it)
CHECK_TOLERANCE = 1e-4          # compiled against eager logits and rows on the sample
KEEP_DAYS = 30                  # cached libraries unused this long are deleted
CLOSE_WAIT = 10.0               # seconds close() waits for the woken loader thread to end
_pending: weakref.WeakSet = weakref.WeakSet()   # Forwards whose compile or load may still run


class Forward:
    def __init__(self, model: Transformer) -> None:
        self.model = model
        self.state = "eager"                  # eager | waiting | compiling | compiled | failed
        self.compile_seconds: float | None = None
        self.compiled_calls = 0               # one-token steps that ran compiled
        self._compiled = None                 # the compiled one-token step, once it works
        self._lengths = range(0)              # the cache views it takes: their lengths and strides
        self._strides = ()
        self._done = threading.Event()
        self._done.set()                      # nothing to wait for until a compile is asked for
        self._hurry = threading.Event()       # set by wait(): skip the delay
        self._closed = threading.Event()      # set by close(): start no compile, no load
        self._in_torch = threading.Lock()     # held while the loader thread calls into PyTorch
        self._thread: threading.Thread | None = None            # the loader thread, once started
        self._children: set[subprocess.Popen] = set()           # its compiler process, while it runs

    def __call__(self, tokens: torch.Tensor, cache: torch.Tensor, absorbed: bool,
                 all_logits: bool = False) -> torch.Tensor:
        step = self._compiled
        if step is not None and tokens.shape[0] == 1 and absorbed and not all_logits \
                and cache.shape[1] in self._lengths and cache.stride() == self._strides:
            self.compiled_calls += 1
            return step(tokens, cache)
        return self.model(tokens, cache, absorbed, all_logits)

    def compile_in_background(self, model_dir: Path, runtime: RuntimeConfig, threads: int) -> None:
        """Take the compiled step for views of a (L, max_context, R + P) buffer from the cache
        folder, else compile it in a child process after COMPILE_DELAY; returns at once."""
        self.state = "waiting"
        self._done.clear()
        _pending.add(self)
        self._thread = threading.Thread(target=self._get, args=(Path(model_dir), runtime, threads),
                                        name="latent-compile", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Start a pending compile now and wait for it (at most `timeout` seconds); whether
        one-token steps now run compiled."""
        self._hurry.set()
        self._done.wait(timeout)
        return self._compiled is not None

    def close(self, timeout: float = CLOSE_WAIT) -> None:
        """Drop a compile not yet started, kill one in progress, wait for a load in progress
        (milliseconds) and for the loader thread to end (at most `timeout` seconds): after this
        it makes no PyTorch call and holds no reference to the model. A compiled step already
        taken stays."""
        self._closed.set()
        self._hurry.set()
        for child in list(self._children):
            _kill(child)
        with self._in_torch:
            pass
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _get(self, model_dir: Path, runtime: RuntimeConfig, threads: int) -> None:
        t0 = time.perf_counter()
        length = runtime.max_context
        package = None
        try:
            package = cache_folder() / f"{_key(model_dir, runtime, threads)}.pt2"
            if not package.is_file():
                self._hurry.wait(COMPILE_DELAY)
                if self._closed.is_set():
                    self.state = "eager"
                    return
                self.state = "compiling"
                with _locked(package.parent / "compile.lock", self._closed) as held:   # one compile at a time here
                    if held and not package.is_file() and not self._closed.is_set():
                        _compile_in_child(model_dir, runtime, threads, package, self._closed, self._children)
                        _prune(package.parent)
            with self._in_torch:
                if self._closed.is_set():
                    self.state = "eager"
                    return
                step = load_step(self.model, package)
                check_step(self.model, step, length)
                os.utime(package)                              # recently used: kept by _prune
            self.compile_seconds = time.perf_counter() - t0
            row = self.model.args.latent_dim
            self._lengths, self._strides = range(2, length), (length * row, row, 1)   # views of the live buffer
            self._compiled, self.state = step, "compiled"
            log.info("The decode step runs compiled (%.1f s to get it).", self.compile_seconds)
        except Exception as e:   # no compiler, an unsupported operation, a mismatch: eager it is
            if self._closed.is_set():                          # the child was killed at exit
                self.state = "eager"
                return
            self.state = "failed"
            if package is not None:
                package.unlink(missing_ok=True)                # never reuse a library that failed
            log.warning("The decode step runs eager: compiling it failed (%s).", _first_line(e))
        finally:
            self._done.set()


class _OneToken(nn.Module):
    """What is compiled: one new token at the end of the cache view, absorbed attention."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
        return self.model(tokens, cache, True)


def compile_step(model: Transformer, length: int, package: Path) -> None:
    """Export and compile the one-token step for views buffer[:, :S] of a buffer of `length`
    rows, 2 <= S < length (a view of the whole buffer has other strides), into `package`,
    without the weights: `load_step` binds the caller's."""
    one = _OneToken(model)
    scratch = model.new_cache(length)
    token = torch.zeros(1, dtype=torch.long, device=scratch.device)
    rows = torch.export.Dim("rows", min=2, max=length - 1)
    program = torch.export.export(one, (token, scratch[:, : min(length - 1, 33)]),
                                  dynamic_shapes={"tokens": None, "cache": {1: rows}}, strict=True)
    aoti_compile(program, package)


class _Loaded:
    """A compiled package, called as step(tokens, cache) -> logits, through AOTInductor's C++
    loader (torch_private.aoti_loader). Should it change in another PyTorch, loading fails and
    eager stays; the cache key holds the PyTorch version."""

    def __init__(self, model: Transformer, package: Path) -> None:
        self.loader = aoti_loader(package)
        one = _OneToken(model)
        tensors = {**dict(one.named_parameters()), **dict(one.named_buffers())}
        names = self.loader.get_constant_fqns()
        missing = [name for name in names if name not in tensors]
        if missing:
            raise RuntimeError(f"the compiled step reads {missing[0]}, which this model does not have")
        aoti_bind(self.loader, {name: tensors[name] for name in names})

    def __call__(self, tokens: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
        return self.loader.boxed_run([tokens, cache])[0]


def load_step(model: Transformer, package: Path) -> _Loaded:
    """The compiled step in `package`, reading `model`'s weights and tables in place."""
    return _Loaded(model, package)


def check_step(model: Transformer, step, length: int) -> None:
    """The compiled step writes the same row and gives the same logits as eager, on a sample."""
    generator = torch.Generator().manual_seed(0)
    cache = torch.randn(model.new_cache(length).shape, generator=generator).to(model.embed.weight)
    twin = cache.clone()
    token = torch.tensor([5], device=cache.device)
    want = model(token, cache[:, :40], True)
    got = step(token, twin[:, :40])
    error = max((want - got).abs().max().item(), (cache - twin).abs().max().item())
    if not error <= CHECK_TOLERANCE:
        raise RuntimeError(f"the compiled step differs from the eager one by {error:.1e}")


# ---------------------------------------------------------------------------------------------
# the cache folder

def cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    folder = Path(base) / "latent" / "compiled"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _key(model_dir: Path, runtime: RuntimeConfig, threads: int) -> str:
    """What the library depends on: the model's shapes (config.json, not its weights, which
    are bound at load), the code that builds the step, PyTorch, this CPU, and how it runs."""
    h = hashlib.sha256((model_dir / "config.json").read_bytes())
    for path in step_sources():
        h.update(path.read_bytes())
    h.update(f"{torch.__version__}|{sys.version}|{platform.machine()}|{_cpu()}|{runtime.dtype}|"
             f"{runtime.max_context}|{threads}".encode())
    return h.hexdigest()[:32]


def step_sources() -> list[Path]:
    """The files of this package that the compiled step is built from: this module and every
    module of `model` it imports, directly or through others (read off their import
    statements), so that editing any of them compiles the step again."""
    root = Path(__file__).resolve().parents[1]   # model/
    todo, seen = [Path(__file__).resolve()], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                todo += _package_files(root, path, node)
    return sorted(seen)


def _package_files(root: Path, importer: Path, node: ast.ImportFrom) -> list[Path]:
    """The files of `root`'s package that `from … import …` in `importer` names."""
    if node.level:                                             # from ..params import …
        base = importer.parents[node.level - 1]
    elif (node.module or "").split(".")[0] == root.name:        # from model.params import …
        base = root.parent
    else:
        return []
    return _module_files(base, node.module or "", [a.name for a in node.names])


def _module_files(base: Path, module: str, names: list[str]) -> list[Path]:
    target = base.joinpath(*module.split(".")) if module else base
    out = [target.with_suffix(".py")] if target.with_suffix(".py").is_file() else []
    if target.is_dir():   # a package: its __init__ and any of the names that are modules
        out += [f for f in [target / "__init__.py", *(target / f"{n}.py" for n in names)] if f.is_file()]
    return out


def _cpu() -> str:
    """The CPU's model and flags (the kernels are compiled for them)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return "|".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))


class _locked:
    """An exclusive lock on a file, held across processes (released if the holder dies). Waiting
    for it (another process compiles) gives up once `give_up` is set: then `held` is False."""

    def __init__(self, path: Path, give_up: threading.Event) -> None:
        self.path, self.give_up, self.held = path, give_up, False

    def __enter__(self) -> bool:
        self.handle = open(self.path, "a")
        while not self.held:
            try:
                fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.held = True
            except BlockingIOError:
                if self.give_up.wait(0.2):
                    break
        return self.held

    def __exit__(self, *exc) -> None:
        if self.held:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _prune(folder: Path) -> None:
    old = time.time() - KEEP_DAYS * 86400
    for f in folder.glob("*.pt2"):
        if f.stat().st_mtime < old:
            f.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# the child process

def _compile_in_child(model_dir: Path, runtime: RuntimeConfig, threads: int, package: Path,
                      closed: threading.Event, children: set[subprocess.Popen]) -> None:
    """Run the child to write `package` (atomically: under another name, then renamed); it is
    in `children` while it runs, for close() to kill, and killed at once if `closed` is set."""
    root = Path(__file__).resolve().parents[2]            # the folder holding the `model` package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(root), os.environ.get("PYTHONPATH"))))}
    partial = package.parent / f"{package.stem}.{os.getpid()}.part.pt2"
    argv = [sys.executable, "-m", "model.engine.step", str(model_dir), str(partial),
            "--dtype", runtime.dtype, "--length", str(runtime.max_context), "--threads", str(threads)]
    child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True)   # its own group: killed whole
    children.add(child)
    try:
        if closed.is_set():              # closed as it started: close() may have missed it
            _kill(child)
        _, err = child.communicate()
    finally:
        children.discard(child)
    if child.returncode != 0:
        partial.unlink(missing_ok=True)
        lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"the compiler process exited with {child.returncode}")
    partial.replace(package)


def _kill(child: subprocess.Popen) -> None:
    """Kill a compiler process and its own children (its process group)."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@atexit.register
def _stop_at_exit() -> None:
    """Close every Forward that may still compile or load (see the module's notes): none starts
    anything new while the others are closed."""
    for forward in list(_pending):
        forward._closed.set()
    for forward in list(_pending):
        forward.close()


def die_with_parent() -> None:
    """Linux: the kernel kills this process when the thread that started it ends (the parent
    exiting, or being killed, included)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    from ..loader import load_model, read_args

    parser = argparse.ArgumentParser(prog="python -m model.engine.step", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("package", type=Path)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--length", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    die_with_parent()
    os.nice(10)                                  # the editor and the engine come first
    torch.set_num_threads(args.threads)          # the kernels are generated for this many threads
    model = load_model(args.model_dir, read_args(args.model_dir), dtype=args.dtype)
    model.pack()                                 # as the engine does: the same weights, the same names
    compile_step(model, args.length, args.package)
    return 0


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


if __name__ == "__main__":
    raise SystemExit(main())
