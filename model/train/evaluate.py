"""Evaluation on the held-out files: bits per byte (plain text) and the FIM middle loss of
each layout (PSM and SPM)."""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from model.train.corpus import Corpus
from model.train.samples import marked_samples, pack_rows

EVAL_SEED = 1234              # held-out samples are the same whatever the training seed


def autocast(device):
    """bf16 autocast on CUDA; nothing on the CPU (fp32)."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def inputs_targets(rows: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (B, T+1) with -1 padding → input ids (B, T) and targets (B, T), -100 ignored."""
    ids = torch.from_numpy(rows).long()
    inputs = ids[:, :-1].clamp(min=0)            # padding reads as BOS; its targets are ignored
    targets = ids[:, 1:].masked_fill(ids[:, 1:] < 0, -100)
    return inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)


def _middle_mask(samples: list[list[int]], middles: list[int | None], row_len: int) -> np.ndarray:
    """(B, T) True where the target is a middle token or the EOS closing it, in the rows that
    `pack_rows(samples)` makes (packing depends on the lengths only, so a mask packs alike)."""
    marks = [[1 if m is not None and j >= m else 0 for j in range(len(s))]
             for s, m in zip(samples, middles, strict=True)]
    packed = pack_rows(marks, row_len)
    return packed[:, 1:] == 1


class HeldOut:
    """Fixed held-out rows: the held-out files (or the first of them, up to `max_tokens`) cut
    into windows three times, with a seed of their own — as plain text, as PSM samples and as
    SPM samples (the same windows and holes in both layouts)."""

    def __init__(self, corpus: Corpus, row_len: int, device, batch_size: int, max_tokens: int = 0):
        files = corpus.files(heldout=True)
        if max_tokens > 0:                  # the first files (a random share: the cache's order is by hash)
            ends = np.cumsum([len(corpus.ids[f]) for f in files])
            files = files[:max(1, int(np.searchsorted(ends, max_tokens)) + 1)]
        rng = lambda: np.random.default_rng(EVAL_SEED)                    # noqa: E731
        self.plain = pack_rows(marked_samples(corpus, files, rng(), row_len, 0.0)[0], row_len)
        self.fim, self.middle = {}, {}
        for layout, spm_rate in (("psm", 0.0), ("spm", 1.0)):
            samples, middles = marked_samples(corpus, files, rng(), row_len, 1.0, spm_rate)
            self.fim[layout] = pack_rows(samples, row_len)
            self.middle[layout] = _middle_mask(samples, middles, row_len)
        self.nbytes = torch.from_numpy(corpus.nbytes)
        self.device, self.batch_size = device, batch_size

    @property
    def tokens(self) -> int:
        return int((self.plain >= 0).sum() + sum((rows >= 0).sum() for rows in self.fim.values()))

    def rows(self, max_rows: int) -> int:
        """Rows evaluated with a `max_rows` cap per set (0 = no cap)."""
        cap = lambda n: min(n, max_rows) if max_rows > 0 else n          # noqa: E731
        return cap(len(self.plain)) + sum(cap(len(rows)) for rows in self.fim.values())

    @torch.no_grad()
    def evaluate(self, model, max_rows: int = 0) -> dict:
        """Mean loss over all targets, bits per byte of the plain text, the FIM middle loss of
        each layout and of both together, and how often the greedy pick of each layout's first
        middle token is right (what a suggestion starts with).

        `max_rows` > 0 evaluates an evenly spread subset of each set."""
        model.eval()
        plain_nll, plain_targets, _ = self._nll(model, self._subset(self.plain, max_rows))
        text = self.nbytes[plain_targets.clamp(min=0)] * (plain_targets >= 0)
        valid = plain_targets >= 0
        total, count = plain_nll[valid].sum(), valid.sum()
        middles, figures = [], {}
        for layout, rows in self.fim.items():
            picked = self._subset(np.arange(len(rows)), max_rows)
            nll, targets, hits = self._nll(model, rows[picked])
            middle = torch.from_numpy(self.middle[layout][picked])
            total, count = total + nll[targets >= 0].sum(), count + (targets >= 0).sum()
            middles.append(nll[middle])
            first = middle.clone()
            first[:, 1:] &= ~middle[:, :-1]         # a middle's first target (samples never abut)
            figures[f"fim_middle_loss_{layout}"] = float(nll[middle].mean()) if middle.any() else float("nan")
            figures[f"fim_first_token_acc_{layout}"] = float(hits[first].float().mean()) if first.any() else float("nan")
        model.train()
        both = torch.cat(middles)
        return {
            "loss": float(total / count),
            "bpb": float(plain_nll[text > 0].sum() / math.log(2) / text.sum()),
            "fim_middle_loss": float(both.mean()) if len(both) else float("nan"),
            **figures,
            "targets": int(count),
        }

    @staticmethod
    def _subset(rows: np.ndarray, max_rows: int) -> np.ndarray:
        if max_rows <= 0 or len(rows) <= max_rows:
            return rows
        return rows[np.linspace(0, len(rows) - 1, max_rows).round().astype(int)]

    def _nll(self, model, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-target negative log-likelihood in nats (B, T) on the CPU, the targets, and
        whether the greedy pick was the target."""
        nll, targets, hits = [], [], []
        for i in range(0, len(rows), self.batch_size):
            x, y = inputs_targets(rows[i:i + self.batch_size], self.device)
            with autocast(self.device):
                logits = model(input_ids=x).logits
            loss = F.cross_entropy(logits.float().transpose(1, 2), y, ignore_index=-100, reduction="none")
            nll.append(loss.cpu())
            targets.append(y.cpu())
            hits.append((logits.argmax(-1) == y).cpu())
        return torch.cat(nll), torch.cat(targets), torch.cat(hits)
