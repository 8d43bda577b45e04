"""The training loop: the expert balance loss, the stopping rule, periodic held-out checks,
checkpoints that let the same command go on where the last one stopped, and the decay branch
a model is exported from (the schedule and the optimizers are `model/train/optim.py`)."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.train.config import RUN_DEFINING, TrainConfig
from model.train.corpus import Corpus, TrainError
from model.train.evaluate import HeldOut, autocast, inputs_targets
from model.train.optim import decay_factor, make_optimizers, warmup_factor
from model.train.parallel import Group
from model.train.presets import PRESETS, build_model, hf_config
from model.train.samples import EpochFeeder, epoch_parts, trained_layouts
from model.train.start import corpus_identity

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
    tokens: int = 0                  # non-padding tokens trained on, over every session of the run
    train_seconds: float = 0.0       # wall time in the loop: steps, data, periodic checks
    warmup_from: int = 0             # the step this optimizer started at (warm-up counts from it)
    decay_steps: int = 0             # > 0 in a decay branch: its length
    decay_done: int = 0              # steps of the decay branch taken
    origin: str = "random weights"   # where the weights came from before step 0 of this run
    start_tokens: int = 0            # tokens seen before this run (by the model it started from)
    history: list = field(default_factory=list)   # one dict per evaluation
    commands: list = field(default_factory=list)  # [step, command] of each command that trained the run


# The arguments that define a run: a checkpoint made with others cannot be resumed by this command.


class Budget:
    """When the main run stops: after `--minutes` of this command's wall time, at `--max-steps`
    or `--max-tokens` of the run (over all its sessions), or when a stop is asked for (SIGTERM,
    SIGINT); with none of these, it goes on until stopped."""

    def __init__(self, minutes: float | None = None, max_steps: int | None = None,
                 max_tokens: float | None = None, started: float | None = None):
        self.deadline = (started or time.time()) + minutes * 60 if minutes else None
        self.max_steps, self.max_tokens = max_steps, max_tokens
        self.stop_asked: str | None = None      # the signal's name

    def ask_stop(self, signum, _frame=None) -> None:
        self.stop_asked = signal.Signals(signum).name

    def reached(self, state: TrainState) -> bool:
        """The budget is spent (a stop asked for is not a budget)."""
        return bool(self.deadline and time.time() >= self.deadline
                    or self.max_steps and state.step >= self.max_steps
                    or self.max_tokens and state.tokens >= self.max_tokens)


class Trainer:
    """One training run: data, model, optimizer, the loop and its checkpoints."""

    def __init__(self, args: TrainConfig, corpus: Corpus, run_dir: Path, log, group: Group | None = None,
                 trainable=None):
        """`trainable(parameter name)` says which weights train (default: all; `latent adapt`
        compares subsets)."""
        self.args, self.corpus, self.run_dir = args, corpus, run_dir
        self.group = group or Group()
        self.log = log if self.group.leader else (lambda *_: None)
        self.device = torch.device(args.device)
        self.row_len = args.seq_len + 1
        self.config = hf_config(PRESETS[args.preset], corpus.tokenizer.get_vocab_size(),
                                trained_layouts(args.fim_rate, args.spm_rate), context=args.seq_len)
        torch.manual_seed(args.seed)
        # the ignore: transformers wraps `to` in functools.wraps, whose typeshed type does not bind self
        self.model = build_model(self.config, args.experts).to(self.device)  # pyright: ignore[reportArgumentType]
        if trainable is not None:
            for name, parameter in self.model.named_parameters():
                parameter.requires_grad_(bool(trainable(name)))
        self.optimizer = make_optimizers(self.model, args.optimizer, args.lr, args.weight_decay, self.device)
        self.balance = BalanceLoss(self.model, PRESETS[args.preset].experts_per_token)
        self.state = TrainState()
        self.heldout = HeldOut(corpus, self.row_len, self.device, args.batch_size // self.group.world,
                               args.heldout_tokens)
        if args.compile:          # RoPE's complex multiply stays eager inside the compiled step
            warnings.filterwarnings("ignore", message="Torchinductor does not support code generation for complex")
        self.step_fn = torch.compile(self._loss) if args.compile else self._loss
        self.parts = epoch_parts(corpus)
        self.feeder = EpochFeeder(corpus, args.seed, self.row_len, args.fim_rate, args.data_workers,
                                  args.spm_rate, self.parts)
        self.flops_per_token = 6 * active_params(self.config)    # forward + backward, attention aside
        self.last_checkpoint = time.time()
        self.params = [p for p in self.model.parameters() if p.requires_grad]   # the same list in every process
        self.corpus_id = corpus_identity(corpus)       # hashed once, not at every checkpoint

    def parameters_changed(self) -> None:
        """Weights were frozen or added after the Trainer was made (a low-rank adapter, before
        any step): the list of trained parameters and the optimizer are made again."""
        args = self.args
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizers(self.model, args.optimizer, args.lr, args.weight_decay, self.device)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # -- checkpoints -----------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def run_key(self) -> dict:
        return {k: getattr(self.args, k) for k in RUN_DEFINING}

    def save_checkpoint(self) -> None:
        """Everything the run needs to go on as if never stopped — model, optimizer, schedule and
        data cursor (the state), random state, the run's arguments — written atomically (by
        rank 0: every process holds the same)."""
        if not self.group.leader:
            return
        if self.state.decay_steps:
            raise RuntimeError("a decay branch is never checkpointed: the run goes on from the stable phase")
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "state": dataclasses.asdict(self.state), "rng": torch.get_rng_state(),
                    "key": self.run_key(), "corpus": self.corpus_id,
                    "args": self.args.saved()}, tmp)
        os.replace(tmp, self.checkpoint_path)
        self.last_checkpoint = time.time()

    def load_checkpoint(self) -> None:
        try:
            ckpt = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
            model, optimizer, state, rng, key = (ckpt[k] for k in ("model", "optimizer", "state", "rng", "key"))
        except Exception as e:                      # truncated, not a checkpoint, another version
            raise TrainError(f"the checkpoint {self.checkpoint_path} cannot be read ({type(e).__name__}: {e}); "
                             f"move it away to start the run again") from None
        if {k: key.get(k) for k in RUN_DEFINING} != self.run_key():
            changed = ", ".join(f"{k} {key.get(k)!r} (asked: {v!r})" for k, v in self.run_key().items()
                                if key.get(k) != v)
            raise TrainError(f"the run in {self.run_dir} was started with other settings: {changed}; "
                             f"give the same ones, or another --out to start a new run")
        if ckpt.get("corpus", self.corpus_id) != self.corpus_id:
            raise TrainError(f"the run in {self.run_dir} was trained on another corpus cache or tokenizer than "
                             f"{self.corpus.root}; give it its own (--corpus-cache)")
        self.model.load_state_dict(model)
        self.optimizer.load_state_dict(optimizer)
        self.state = TrainState(**state)
        torch.set_rng_state(rng)
        self.log(f"resumed {self.run_dir} at step {self.state.step}, {self.state.tokens / 1e6:.2f}M tokens seen")

    def start_from(self, weights: dict, note: str, cursor: dict | None = None) -> None:
        """Begin the run (step 0 of this optimizer) from other weights, e.g. the bundled model's,
        and where given from its data cursor and token count."""
        self.model.load_state_dict(weights)
        self.state.origin = note
        if cursor:                                   # the run goes on where that model's stopped
            self.state.epoch, self.state.row = cursor["epoch"], cursor["row"]
            self.state.tokens, self.state.step = cursor["tokens"], cursor["steps"]
            self.state.start_tokens = self.state.tokens
            self.state.warmup_from = self.state.step
            self.state.history = list(cursor["history"])
            self.state.commands = list(cursor["commands"])

    # -- the loop ----------------------------------------------------------------------
    def _loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed cross-entropy over the targets, expert balance loss) of this process's rows."""
        with autocast(self.device):
            logits = self.model(input_ids=inputs).logits           # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
        return loss, self.balance.pop().to(loss.device)

    def _batches(self):
        """Batches of rows from the current epoch part and row on; `_step` advances the row."""
        B = self.args.batch_size
        while True:
            rows = self.feeder.get(self.state.epoch)
            if len(rows) < B:
                raise TrainError(f"the corpus gives {len(rows)} rows per epoch part, fewer than "
                                 f"--batch-size {B}")
            while self.state.row + B <= len(rows):
                yield rows[self.state.row:self.state.row + B]
            self.state.epoch, self.state.row = self.state.epoch + 1, 0

    def run(self, budget: Budget) -> str:
        """The main run (stable phase) until the budget is spent or a stop is asked for;
        checkpoints every `--checkpoint-minutes` and at the end. Returns why it stopped."""
        self._evaluate()
        asked = self._train(lambda: (budget.reached(self.state), budget.stop_asked is not None))
        self.save_checkpoint()
        return (budget.stop_asked or "a stop asked for in another process") if asked else "budget"

    def decay(self, steps: int) -> dict:
        """The decay branch: `steps` more steps with the rate falling to 0, in this process's
        copy of the state (never checkpointed), then the held-out figures of the result."""
        self.state.decay_steps, self.state.decay_done = max(1, steps), 0
        self.log(f"decay branch: {self.state.decay_steps} steps from step {self.state.step}")
        self._train(lambda: (False, False))
        if not self.group.leader:
            return {}
        if self.group.world > 1:          # the others are done: the evaluation takes every core
            torch.set_num_threads(torch.get_num_threads() * self.group.world)
        final = self.heldout.evaluate(self.model, self.args.final_eval_rows)
        self.log(f"after the decay branch (step {self.state.step}, {self.state.tokens / 1e6:.2f}M tokens): held-out "
                 f"{final['bpb']:.3f} bits/byte, loss {final['loss']:.3f}, FIM middle loss "
                 f"PSM {final['fim_middle_loss_psm']:.3f} SPM {final['fim_middle_loss_spm']:.3f}")
        self._write_log({"final": {"step": self.state.step, "tokens": self.state.tokens,
                                   "decay_steps": self.state.decay_steps, **final}})
        return final

    def _train(self, wants) -> bool:
        """Steps until the step or token budget is spent, or `wants()` — (the time budget is
        spent, a stop is asked for) — holds in any process: all stop at the same step. True
        when a stop was asked for."""
        from tqdm import tqdm

        args = self.args
        bar = tqdm(initial=self.state.step, unit="step", dynamic_ncols=True, disable=not self.group.leader,
                   mininterval=1.0 if sys.stderr.isatty() else 60.0, file=sys.stderr)
        meter = self._new_meter()
        last_eval, tick = self.state.train_seconds, time.time()
        stop, asked = self._counted_out(), False
        for rows in self._batches():
            if stop:
                break
            stop, asked = self._step(rows, meter, wants())
            bar.update(1)
            if self.state.step % args.log_every == 0:
                bar.set_postfix(self._log_train(meter), refresh=False)
            self.state.train_seconds += time.time() - tick
            tick = time.time()
            if self.state.decay_steps or not self.group.leader:
                continue
            if self.state.train_seconds - last_eval >= args.eval_every * 60:
                self._evaluate()
                last_eval = self.state.train_seconds
            if time.time() - self.last_checkpoint >= args.checkpoint_minutes * 60:
                self.save_checkpoint()
            self.state.train_seconds += time.time() - tick
            tick = time.time()
        bar.close()
        return asked

    def _counted_out(self) -> bool:
        """The run's step or token budget, or the decay branch, is spent: the same in every
        process (a time budget or a signal is not, so those travel with the gradients)."""
        if self.state.decay_steps:
            return self.state.decay_done >= self.state.decay_steps
        a = self.args
        return bool(a.max_steps and self.state.step >= a.max_steps
                    or a.max_tokens and self.state.tokens >= a.max_tokens)

    def close(self) -> None:
        self.feeder.close()

    def _lr(self) -> float:
        if self.state.decay_steps:
            return self.args.lr * decay_factor(self.state.decay_done, self.state.decay_steps)
        return self.args.lr * warmup_factor(self.state.step, self.state.warmup_from, self.args.warmup_steps)

    def _step(self, rows: np.ndarray, meter: dict, wants: tuple[bool, bool]) -> tuple[bool, bool]:
        """One optimizer step on a batch of rows (B, T+1), this process's share of them; the
        loss is the mean over the whole batch's targets. `wants`: this process's (time budget
        spent, stop asked for). Returns (stop after this step, a stop was asked for), the same
        in every process."""
        self.optimizer.set_lr(self._lr())
        inputs, targets = inputs_targets(rows[self.group.share(len(rows))], self.device)
        n_targets = max(1, int((rows[:, 1:] >= 0).sum()))
        loss_sum, balance = self.step_fn(inputs, targets)
        (loss_sum / n_targets + self.args.balance_coef * balance / self.group.world).backward()
        params = self.params
        extra = [*map(float, wants), float(loss_sum.detach()) / n_targets]
        spent, asked, loss = self.group.sum_gradients(params, extra)
        torch.nn.utils.clip_grad_norm_(params, self.args.clip)
        self.optimizer.step()
        self.optimizer.zero_grad()
        n_tokens = int((rows[:, :-1] >= 0).sum())
        self.state.step += 1
        self.state.decay_done += bool(self.state.decay_steps)
        self.state.row += len(rows)
        self.state.tokens += n_tokens
        meter["tokens"] += n_tokens
        meter["steps"] += 1
        meter["loss"] = loss if meter["loss"] is None else meter["loss"] + loss
        return spent > 0 or asked > 0 or self._counted_out(), asked > 0

    @staticmethod
    def _new_meter() -> dict:
        cpu = os.times()
        return {"tokens": 0, "steps": 0, "start": time.time(), "cpu": cpu.user + cpu.system, "loss": None}

    def _log_train(self, meter: dict) -> dict:
        """Write a training record and reset the meter; reading the loss back from the device
        waits for the queued steps, so it happens every `--log-every` steps only. `cpu` is the
        share of the machine's cores this process got (1.0: all of them)."""
        now, times = time.time(), os.times()
        tok_s = meter["tokens"] / (now - meter["start"])
        cpu = (times.user + times.system - meter["cpu"]) / (now - meter["start"]) / (os.cpu_count() or 1)
        record = {"step": self.state.step, "loss": round(float(meter["loss"]) / meter["steps"], 4),
                  "tok_s": round(tok_s), "cpu": round(cpu, 2), "lr": round(self.optimizer.lr, 6),
                  "max_expert_load": round(float(self.balance.max_load), 2),
                  "epoch": round(self.state.epoch / self.parts, 3), "tokens": self.state.tokens}
        if self.state.decay_steps:
            record["decay"] = f"{self.state.decay_done}/{self.state.decay_steps}"
        if self.device.type == "cuda":
            record["mfu"] = round(self.flops_per_token * tok_s / H200_BF16_FLOPS, 4)
        self._write_log({"train": record})
        meter.update(self._new_meter())
        return {k: record[k] for k in ("loss", "tok_s", "cpu", "epoch", "mfu") if k in record}

    def _evaluate(self) -> None:
        """Periodic held-out check on a subset of rows, by rank 0 (the others wait for it at
        the next gradient exchange)."""
        if not self.group.leader:
            return
        figures = self.heldout.evaluate(self.model, self.args.eval_rows)
        record = {"step": self.state.step, "tokens": self.state.tokens,
                  "minutes": round(self.state.train_seconds / 60, 2), **figures}
        self.state.history.append(record)
        self._write_log({"eval": record})
        self.log(f"step {self.state.step}, {self.state.tokens / 1e6:.2f}M tokens: held-out loss {figures['loss']:.3f}, "
                 f"{figures['bpb']:.3f} bits/byte, FIM middle loss PSM {figures['fim_middle_loss_psm']:.3f} "
                 f"SPM {figures['fim_middle_loss_spm']:.3f}, first middle token right PSM "
                 f"{figures['fim_first_token_acc_psm']:.1%} SPM {figures['fim_first_token_acc_spm']:.1%}")

    def _write_log(self, record: dict) -> None:
        if not self.group.leader:
            return
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps({"time": round(time.time()), **record}) + "\n")
