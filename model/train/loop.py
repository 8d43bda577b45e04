"""The training loop: optimizer and schedule, the expert balance loss, the time / step budget,
periodic held-out checks that keep the best weights, checkpoints and `--resume`."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.train.corpus import Corpus, TrainError
from model.train.evaluate import HeldOut, autocast, inputs_targets
from model.train.presets import PRESETS, build_model, hf_config
from model.train.samples import EpochFeeder, epoch_parts, trained_layouts


H200_BF16_FLOPS = 989e12       # dense bf16 peak of an H200 (SXM), the model FLOPs utilisation's yardstick


def active_params(config: dict) -> int:
    """Parameters one token passes through: all but the embedding table (a lookup) and the
    routed experts it is not sent to — the N of the 6·N FLOPs per trained token."""
    d, L, V = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    H, nope, rope, v = (config[k] for k in ("num_attention_heads", "qk_nope_head_dim", "qk_rope_head_dim",
                                            "v_head_dim"))
    q_rank, kv_rank = config["q_lora_rank"], config["kv_lora_rank"]
    q = d * q_rank + q_rank * H * (nope + rope) if q_rank else d * H * (nope + rope)
    attention = q + d * (kv_rank + rope) + kv_rank * H * (nope + v) + H * v * d
    dense = 3 * d * config["intermediate_size"]
    k, shared = config["num_experts_per_tok"], config["n_shared_experts"]
    moe = 3 * d * config["moe_intermediate_size"] * (k + shared) + d * config["n_routed_experts"]
    first = config["first_k_dense_replace"]
    return L * attention + first * dense + (L - first) * moe + d * V


class BalanceLoss:
    """DeepSeek-V2's expert-level balance loss, Σ_i f_i·P_i, averaged over MoE layers.

    transformers' DeepSeek-V2 has none, so the router inputs are captured with forward
    pre-hooks and routed again here (the same greedy softmax top-k). f_i is the share of
    routed slots expert i receives times n_experts (1 when uniform), P_i its mean score.
    """

    def __init__(self, model, top_k: int):
        self.top_k = top_k
        self.captured: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.max_load = torch.zeros(())
        for layer in model.model.layers:
            if hasattr(layer.mlp, "experts"):
                layer.mlp.register_forward_pre_hook(self._capture)

    def _capture(self, moe, args) -> None:
        if torch.is_grad_enabled():                        # training passes only
            self.captured.append((args[0], moe.gate.weight))

    def pop(self) -> torch.Tensor:
        """The loss of the forward passes since the last call (mean over layers)."""
        losses, loads = [], []
        for hidden, weight in self.captured:
            scores = F.linear(hidden.reshape(-1, hidden.shape[-1]).float(), weight.float()).softmax(-1)
            n_experts = scores.shape[-1]
            chosen = scores.topk(self.top_k, dim=-1).indices
            load = torch.bincount(chosen.flatten(), minlength=n_experts).float()
            load = load * n_experts / chosen.numel()                  # (E,), 1.0 when uniform
            losses.append((load * scores.mean(0)).sum())
            loads.append(load.max())
        self.captured.clear()
        if not losses:
            return torch.zeros(())
        self.max_load = torch.stack(loads).max().detach()
        return torch.stack(losses).mean()


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0                   # the part of an epoch being read: epoch × parts + part
    row: int = 0                     # next row of that part
    tokens: int = 0                  # non-padding tokens trained on
    train_seconds: float = 0.0       # wall time in the loop: steps, data, periodic checks
    plan_seconds: float = 0.0        # loop time the --minutes budget allows (re-fitted at checks)
    best_loss: float = float("inf")
    best_step: int = 0
    history: list = field(default_factory=list)   # one dict per evaluation


def make_optimizer(model, lr: float, weight_decay: float, device) -> torch.optim.Optimizer:
    """AdamW; matrices decay, norms do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = torch.device(device).type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)


def lr_factor(step: int, progress: float, warmup_steps: int, floor: float = 0.1) -> float:
    """Linear warm-up over steps, then cosine from 1 to `floor` over the run's progress (0..1)."""
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    cosine = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    return warm * cosine


class Budget:
    """When to stop: after `--max-steps`, or when `--minutes` of wall time (counted from the
    start of the command) are spent, less the time kept back for the final evaluation and
    the export. The cosine schedule follows whichever comes first; its time plan is re-fitted
    at every held-out check (and so, after `--resume`, to the new command's budget)."""

    def __init__(self, minutes: float | None, max_steps: int | None, started: float):
        self.deadline = started + minutes * 60 if minutes else None
        self.max_steps = max_steps
        self.reserve = 5.0

    def plan_reserve(self, eval_seconds: float, final_ratio: float) -> None:
        """Keep back 1.5× the estimated time of the final evaluation (`final_ratio` times the
        rows of a periodic one), plus 5 s for the export."""
        self.reserve = 5.0 + 1.5 * eval_seconds * final_ratio

    def seconds_left(self) -> float:
        return self.deadline - self.reserve - time.time() if self.deadline else float("inf")

    def progress(self, state: "TrainState") -> float:
        parts = [0.0]
        if self.deadline and state.plan_seconds:
            parts.append(state.train_seconds / state.plan_seconds)
        if self.max_steps:
            parts.append(state.step / self.max_steps)
        return max(parts)

    def done(self, state: "TrainState") -> bool:
        return self.progress(state) >= 1.0 or self.seconds_left() <= 0


class Trainer:
    """One training run: data, model, optimizer, the loop and its checkpoints."""

    def __init__(self, args: argparse.Namespace, corpus: Corpus, run_dir: Path, log):
        self.args, self.corpus, self.run_dir, self.log = args, corpus, run_dir, log
        self.device = torch.device(args.device)
        self.row_len = args.seq_len + 1
        self.config = hf_config(PRESETS[args.preset], corpus.tokenizer.get_vocab_size(),
                                trained_layouts(args.fim_rate, args.spm_rate))
        torch.manual_seed(args.seed)
        self.model = build_model(self.config, args.experts).to(self.device)
        self.optimizer = make_optimizer(self.model, args.lr, args.weight_decay, self.device)
        self.balance = BalanceLoss(self.model, PRESETS[args.preset].experts_per_token)
        self.state = TrainState()
        self.best = None                       # state dict (CPU) of the best held-out loss
        self.heldout = HeldOut(corpus, self.row_len, self.device, args.batch_size, args.heldout_tokens)
        self.step_fn = torch.compile(self._loss) if args.compile else self._loss
        self.parts = epoch_parts(corpus)
        self.feeder = EpochFeeder(corpus, args.seed, self.row_len, args.fim_rate, args.data_workers,
                                  args.spm_rate, self.parts)
        self.flops_per_token = 6 * active_params(self.config)    # forward + backward, attention aside

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # -- checkpoints -----------------------------------------------------------------
    def _resume_key(self) -> dict:
        keys = ("preset", "seq_len", "batch_size", "seed", "fim_rate", "spm_rate", "vocab_size")
        return {k: getattr(self.args, k) for k in keys}

    def save_checkpoint(self) -> None:
        path = self.run_dir / "checkpoint.pt"
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "state": dataclasses.asdict(self.state), "best": self.best,
                    "key": self._resume_key()}, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)

    def load_checkpoint(self) -> None:
        path = self.run_dir / "checkpoint.pt"
        if not path.is_file():
            raise TrainError(f"--resume: no checkpoint at {path}")
        ckpt = torch.load(path, map_location=self.device, weights_only=False)
        if ckpt["key"] != self._resume_key():
            raise TrainError(f"--resume: the checkpoint was made with {ckpt['key']}, "
                             f"this command asks for {self._resume_key()}")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = TrainState(**ckpt["state"])
        self.best = ckpt["best"]
        self.log(f"resumed at step {self.state.step}, {self.state.tokens / 1e6:.2f}M tokens")

    # -- the loop ----------------------------------------------------------------------
    def _loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(objective, language-model loss): cross-entropy plus the expert balance term."""
        with autocast(self.device):
            logits = self.model(input_ids=inputs).logits           # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        return loss + self.args.balance_coef * self.balance.pop().to(loss.device), loss.detach()

    def _batches(self):
        """Batches of rows from the current epoch part and row on; `_step` advances the row."""
        B = self.args.batch_size
        while True:
            rows = self.feeder.get(self.state.epoch)
            if len(rows) < B:
                raise TrainError(f"the corpus gives {len(rows)} rows per epoch, fewer than "
                                 f"--batch-size {B}")
            while self.state.row + B <= len(rows):
                yield rows[self.state.row:self.state.row + B]
            self.state.epoch, self.state.row = self.state.epoch + 1, 0

    def run(self, budget: Budget) -> dict:
        """Train until the budget is spent, checking the held-out loss on the way; returns the
        figures of the best weights on the held-out rows of `--final-eval-rows`."""
        from tqdm import tqdm

        args = self.args
        if self.state.step == 0 or budget.deadline:
            self._evaluate(budget)              # also measures what the final check will cost
        bar = tqdm(total=args.max_steps, initial=self.state.step, unit="step", dynamic_ncols=True,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr)
        meter = {"tokens": 0, "steps": 0, "start": time.time(), "loss": None}
        last_eval, tick = self.state.train_seconds, time.time()
        for rows in self._batches():
            if budget.done(self.state):
                break
            self._step(rows, budget, meter)
            bar.update(1)
            if self.state.step % args.log_every == 0:
                bar.set_postfix(self._log_train(meter), refresh=False)
            self.state.train_seconds += time.time() - tick
            tick = time.time()
            if self.state.train_seconds - last_eval >= args.eval_every * 60:
                self._evaluate(budget)
                last_eval = self.state.train_seconds
                self.state.train_seconds += time.time() - tick
                tick = time.time()
        bar.close()
        self.feeder.close()
        if self.state.history[-1]["step"] != self.state.step:
            self._evaluate(budget)
        return self._finish()

    def _step(self, rows: np.ndarray, budget: Budget, meter: dict) -> None:
        """One optimizer step on a batch of rows (B, T+1)."""
        self._set_lr(budget)
        inputs, targets = inputs_targets(rows, self.device)
        objective, loss = self.step_fn(inputs, targets)
        objective.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        n_tokens = int((rows[:, :-1] >= 0).sum())
        self.state.step += 1
        self.state.row += len(rows)
        self.state.tokens += n_tokens
        meter["tokens"] += n_tokens
        meter["steps"] += 1
        meter["loss"] = loss if meter["loss"] is None else meter["loss"] + loss

    def _log_train(self, meter: dict) -> dict:
        """Write a training record and reset the meter; reading the loss back from the device
        waits for the queued steps, so it happens every `--log-every` steps only."""
        now = time.time()
        tok_s = meter["tokens"] / (now - meter["start"])
        record = {"step": self.state.step, "loss": round(float(meter["loss"]) / meter["steps"], 4),
                  "tok_s": round(tok_s),
                  "lr": round(self.optimizer.param_groups[0]["lr"], 6),
                  "max_expert_load": round(float(self.balance.max_load), 2),
                  "epoch": round(self.state.epoch / self.parts, 2), "tokens": self.state.tokens}
        if self.device.type == "cuda":
            record["mfu"] = round(self.flops_per_token * tok_s / H200_BF16_FLOPS, 4)
        self._write_log({"train": record})
        meter.update(tokens=0, steps=0, start=now, loss=None)
        return {k: record[k] for k in ("loss", "tok_s", "epoch", "mfu") if k in record}

    def _set_lr(self, budget: Budget) -> None:
        lr = self.args.lr * lr_factor(self.state.step, budget.progress(self.state), self.args.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _evaluate(self, budget: Budget) -> None:
        """Periodic held-out check on a subset of rows; keeps the best model; checkpoints."""
        t0 = time.time()
        figures = self.heldout.evaluate(self.model, self.args.eval_rows)
        budget.plan_reserve(time.time() - t0, self.heldout.rows(self.args.final_eval_rows)
                            / self.heldout.rows(self.args.eval_rows))
        if budget.deadline:                     # the cosine ends where the time budget does
            self.state.plan_seconds = self.state.train_seconds + max(1.0, budget.seconds_left())
        record = {"step": self.state.step, "tokens": self.state.tokens,
                  "minutes": round(self.state.train_seconds / 60, 2), **figures}
        self.state.history.append(record)
        if figures["loss"] < self.state.best_loss:
            self.state.best_loss, self.state.best_step = figures["loss"], self.state.step
            self.best = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        self._write_log({"eval": record})
        left = budget.seconds_left()
        self.log(f"step {self.state.step}: held-out loss {figures['loss']:.3f}, "
                 f"{figures['bpb']:.3f} bits/byte, FIM middle loss PSM {figures['fim_middle_loss_psm']:.3f} "
                 f"SPM {figures['fim_middle_loss_spm']:.3f}"
                 + (f" ({left / 60:.1f} min left to train)" if math.isfinite(left) else ""))
        self.save_checkpoint()

    def _finish(self) -> dict:
        """Load the best weights and evaluate them on `--final-eval-rows` rows of each held-out
        set (0: every row)."""
        self.model.load_state_dict(self.best)
        final = self.heldout.evaluate(self.model, self.args.final_eval_rows)
        self.log(f"best step {self.state.best_step}: held-out ({final['targets']} targets) "
                 f"{final['bpb']:.3f} bits/byte, loss {final['loss']:.3f}, "
                 f"FIM middle loss PSM {final['fim_middle_loss_psm']:.3f} SPM {final['fim_middle_loss_spm']:.3f}")
        self._write_log({"final": {"step": self.state.best_step, **final}})
        return final

    def _write_log(self, record: dict) -> None:
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
