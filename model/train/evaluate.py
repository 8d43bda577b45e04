"""Evaluation on the held-out files: bits per byte (plain text) and FIM middle loss."""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from model.train.corpus import BOS_ID, EOS_ID, FIM_END_ID, Corpus
from model.train.samples import make_samples, pack_rows

EVAL_SEED = 1234              # held-out samples are the same whatever the training seed


def autocast(device):
    """bf16 autocast on CUDA; nothing on the CPU (fp32)."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def inputs_targets(rows: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (B, T+1) with -1 padding → input ids (B, T) and targets (B, T), -100 ignored."""
    rows = torch.from_numpy(rows).long()
    inputs = rows[:, :-1].clamp(min=0)           # padding reads as BOS; its targets are ignored
    targets = rows[:, 1:].masked_fill(rows[:, 1:] < 0, -100)
    return inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)


def _middle_mask(rows: np.ndarray) -> np.ndarray:
    """(B, T) True where the target is a middle token (after fim_end, up to EOS inclusive)."""
    mask = np.zeros((rows.shape[0], rows.shape[1] - 1), dtype=bool)
    for r, row in enumerate(rows):
        inside = False
        for j in range(1, len(row)):
            prev = row[j - 1]
            if prev == FIM_END_ID:
                inside = True
            elif prev in (BOS_ID, EOS_ID, -1):
                inside = False
            mask[r, j - 1] = inside and row[j] >= 0
    return mask


class HeldOut:
    """Fixed held-out rows: the held-out files cut into windows once as plain text and once
    in PSM form, with a seed of their own."""

    def __init__(self, corpus: Corpus, row_len: int, device, batch_size: int):
        files = corpus.files(heldout=True)
        self.plain = pack_rows(make_samples(corpus, files, np.random.default_rng(EVAL_SEED), row_len, 0.0), row_len)
        self.fim = pack_rows(make_samples(corpus, files, np.random.default_rng(EVAL_SEED), row_len, 1.0), row_len)
        self.middle = _middle_mask(self.fim)
        self.nbytes = torch.from_numpy(corpus.nbytes)
        self.device, self.batch_size = device, batch_size

    @property
    def tokens(self) -> int:
        return int((self.plain >= 0).sum() + (self.fim >= 0).sum())

    def rows(self, max_rows: int) -> int:
        """Rows evaluated with a `max_rows` cap per set (0 = no cap)."""
        cap = lambda n: min(n, max_rows) if max_rows > 0 else n          # noqa: E731
        return cap(len(self.plain)) + cap(len(self.fim))

    @torch.no_grad()
    def evaluate(self, model, max_rows: int = 0) -> dict:
        """Mean loss over all targets, bits per byte of the plain text, FIM middle loss.

        `max_rows` > 0 evaluates an evenly spread subset of each set."""
        model.eval()
        plain_nll, plain_targets = self._nll(model, self._subset(self.plain, max_rows))
        fim_rows = self._subset(np.arange(len(self.fim)), max_rows)
        fim_nll, fim_targets = self._nll(model, self.fim[fim_rows])
        middle = torch.from_numpy(self.middle[fim_rows])
        text = self.nbytes[plain_targets.clamp(min=0)] * (plain_targets >= 0)
        valid_plain, valid_fim = plain_targets >= 0, fim_targets >= 0
        model.train()
        total = plain_nll[valid_plain].sum() + fim_nll[valid_fim].sum()
        return {
            "loss": float(total / (valid_plain.sum() + valid_fim.sum())),
            "bpb": float(plain_nll[text > 0].sum() / math.log(2) / text.sum()),
            "fim_middle_loss": float(fim_nll[middle].mean()) if middle.any() else float("nan"),
            "targets": int(valid_plain.sum() + valid_fim.sum()),
        }

    @staticmethod
    def _subset(rows: np.ndarray, max_rows: int) -> np.ndarray:
        if max_rows <= 0 or len(rows) <= max_rows:
            return rows
        return rows[np.linspace(0, len(rows) - 1, max_rows).round().astype(int)]

    def _nll(self, model, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-target negative log-likelihood in nats (B, T) on the CPU, and the targets."""
        nll, targets = [], []
        for i in range(0, len(rows), self.batch_size):
            x, y = inputs_targets(rows[i:i + self.batch_size], self.device)
            with autocast(self.device):
                logits = model(input_ids=x).logits
            loss = F.cross_entropy(logits.float().transpose(1, 2), y, ignore_index=-100, reduction="none")
            nll.append(loss.cpu())
            targets.append(y.cpu())
        return torch.cat(nll), torch.cat(targets)
