"""Optimizers and the learning-rate schedule.

The schedule is warmup–stable–decay (WSD: Hu et al. 2024, "MiniCPM", §4; Hägele et al. 2024,
"Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations"): a linear warm-up,
then a constant rate for as long as the run goes on, so a run needs no length in advance. A
model is taken out through a short decay branch from a copy of the current state, with the
rate falling as 1 − √(progress) (the cooldown shape Hägele et al. found best), while the main
run goes on from the stable phase.

Two optimizers: AdamW for everything, or `torch.optim.Muon` (Jordan et al. 2024, "Muon: An
optimizer for hidden layers in neural networks"; Liu et al. 2025, "Muon is Scalable for LLM
Training") for the 2-D hidden matrices — the attention projections, the dense and shared-expert
MLPs — with its update RMS matched to AdamW's (`adjust_lr_fn="match_rms_adamw"`, Liu et al.) so
one learning rate serves both, and AdamW for the rest: the embedding table, the head, the
norms, the routers and the routed experts (transformers keeps each MoE layer's experts as one
3-D tensor, which `torch.optim.Muon` does not take; orthogonalising them expert by expert cost
as much per step as the forward and backward passes, see docs/training.md).
"""
from __future__ import annotations

import math

import torch


def warmup_factor(step: int, start: int, warmup_steps: int) -> float:
    """The stable phase's rate factor: linear warm-up over `warmup_steps` counted from `start`
    (the step this optimizer began at: a fresh optimizer warms up again), then 1."""
    return min(1.0, (step - start + 1) / max(1, warmup_steps))


def decay_factor(done: int, steps: int) -> float:
    """The decay branch's factor after `done` of its `steps`: 1 − √(done / steps), 0 at the end."""
    return 1.0 - math.sqrt(min(1.0, done / max(1, steps)))


class Optimizers:
    """One or two optimizers stepped together, with one learning rate (`set_lr`)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    def set_lr(self, lr: float) -> None:
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr

    @property
    def lr(self) -> float:
        return self.optimizers[0].param_groups[0]["lr"]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def state_dict(self) -> list[dict]:
        return [opt.state_dict() for opt in self.optimizers]

    def load_state_dict(self, states: list[dict]) -> None:
        for opt, state in zip(self.optimizers, states, strict=True):
            opt.load_state_dict(state)


def is_hidden_matrix(name: str, p: torch.Tensor) -> bool:
    """What Muon trains: the 2-D matrices inside the layers — not the embedding table, the head,
    a router (its rows are per-expert scores, not a transform of the hidden state) or the
    3-D stacks of routed experts."""
    return p.dim() == 2 and name.startswith("model.layers.") and not name.endswith("mlp.gate.weight")


def make_optimizers(model, kind: str, lr: float, weight_decay: float, device) -> Optimizers:
    """AdamW (betas 0.9/0.95; matrices decay, norms do not), or Muon for the 2-D hidden
    matrices with AdamW for the rest."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    muon = [p for n, p in named if kind == "muon" and is_hidden_matrix(n, p)]
    taken = {id(p) for p in muon}
    rest = [p for _, p in named if id(p) not in taken]
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    fused = torch.device(device).type == "cuda"
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)]
    if muon:
        optimizers.append(torch.optim.Muon(muon, lr=lr, weight_decay=weight_decay, momentum=0.95, nesterov=True,
                                           adjust_lr_fn="match_rms_adamw"))
    return Optimizers(optimizers)
