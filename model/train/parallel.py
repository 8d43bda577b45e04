"""Data parallelism on one machine: the run's processes each take a share of every batch and
of the cores, and add their gradients together before each optimizer step.

On this project's 2-core CPUs two processes of one thread each train faster than one process
of two threads (`benchmarks/train_throughput.py`, docs/training.md): at this model's size
many of a step's operations are too small to spread over threads. Rank 0 is the command the
user started: it prepares the corpus, starts ranks 1…N−1 as children that die with it, logs,
evaluates, checkpoints and exports; the others only train. They meet through a file store in
the run folder (gloo over the loopback interface).
"""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Sequence

import torch

from model.engine.step import die_with_parent

RANK_ENV, WORLD_ENV, STORE_ENV = "LATENT_TRAIN_RANK", "LATENT_TRAIN_WORLD", "LATENT_TRAIN_STORE"


class Group:
    """This process's place in the run: rank, world size, and the sum across processes."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world
        self.flat: torch.Tensor | None = None

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def share(self, batch: int) -> slice:
        """This process's rows of a batch of `batch` rows."""
        per = batch // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def sum_gradients(self, params: Sequence[torch.Tensor], extra: list[float]) -> list[float]:
        """Add every process's gradients of `params` (the same list in every process) into each
        one's, in one exchange per step, and the `extra` numbers (a stop wanted, the loss)
        alike; returns the summed extras."""
        if self.world == 1:
            return extra
        sizes = [p.numel() for p in params]
        if self.flat is None:
            self.flat = torch.empty(sum(sizes) + len(extra))
        flat, offset = self.flat, 0
        for p, n in zip(params, sizes, strict=True):
            if p.grad is None:                  # no token of this process reached it
                flat[offset:offset + n].zero_()
            else:
                flat[offset:offset + n].copy_(p.grad.reshape(-1))
            offset += n
        flat[offset:] = torch.tensor(extra)
        torch.distributed.all_reduce(flat)
        offset = 0
        for p, n in zip(params, sizes, strict=True):
            summed = flat[offset:offset + n].view_as(p)
            if p.grad is None:
                p.grad = summed.clone()
            else:
                p.grad.copy_(summed)
            offset += n
        return flat[offset:].tolist()

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def joined() -> Group:
    """The group this process was started into (a child: from its environment), else a
    group of one."""
    if RANK_ENV not in os.environ:
        return Group()
    return connect(int(os.environ[RANK_ENV]), int(os.environ[WORLD_ENV]), Path(os.environ[STORE_ENV]))


def connect(rank: int, world: int, store: Path) -> Group:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")      # the processes talk over loopback only
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                                         timeout=timedelta(minutes=30))
    return Group(rank, world)


def launch(argv: list[str], world: int, run_dir: Path, threads: int) -> tuple[Group, list[subprocess.Popen]]:
    """From rank 0: start ranks 1…world−1 as `python -m model.train ARGV` with `threads`
    threads each, and join them. The children die with this process."""
    store = run_dir / "rendezvous"
    store.unlink(missing_ok=True)
    children = []
    for rank in range(1, world):
        env = {**os.environ, RANK_ENV: str(rank), WORLD_ENV: str(world), STORE_ENV: str(store),
               "OMP_NUM_THREADS": str(threads)}
        children.append(subprocess.Popen([sys.executable, "-m", "model.train", *argv], env=env,
                                         stdout=subprocess.DEVNULL, preexec_fn=die_with_parent))
    return connect(0, world, store), children
