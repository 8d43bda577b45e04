"""DeepSeek Mixture-of-Experts feed-forward: router, routed experts, shared experts.

Routed experts are stored stacked — w13 (E, 2I, D) with the gate rows first, w2 (E, D, I) —
so one expert is one slice. Two dispatch paths, held equal by the tests:
- grouped (prefill): tokens are sorted by expert and each chosen expert runs one matrix
  product over all of its tokens;
- gathered (decode, one token): only the k chosen experts are touched — one by one, or, on a
  GPU and in a compiled step (model/engine/step.py), gathered into one batched product with no
  host round trip (for a compiled step's few tokens too).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelArgs
from .mla import linear, stack_rows


class MLP(nn.Module):
    """SwiGLU feed-forward; the dense layers and the shared experts."""

    def __init__(self, dim: int, inter_dim: int) -> None:
        super().__init__()
        self.gate_proj = linear(dim, inter_dim)
        self.up_proj = linear(dim, inter_dim)
        self.down_proj = linear(inter_dim, dim)
        self.gate_up_proj: nn.Module | None = None   # after fuse(): gate rows, then up rows

    def fuse(self) -> None:
        """Stack gate_proj and up_proj into one product (once, after loading; int8 layers too)."""
        if self.gate_up_proj is None:
            self.gate_up_proj = stack_rows(self.gate_proj, self.up_proj)
            del self.gate_proj, self.up_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class Router(nn.Module):
    """Chooses k experts per token and their weights (computed in float32)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.weight = nn.Parameter(torch.empty(args.n_routed_experts, args.dim))
        if args.topk_method == "noaux_tc":
            self.bias = nn.Parameter(torch.zeros(args.n_routed_experts), requires_grad=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.args
        logits = F.linear(x.float(), self.weight.float())                # (T, E)
        scores = logits.softmax(-1) if a.scoring_func == "softmax" else logits.sigmoid()
        if a.topk_method == "greedy":
            weights, idx = scores.topk(a.n_activated_experts, dim=-1)
        elif a.topk_method == "group_limited_greedy":
            group = scores.view(-1, a.n_group, a.n_routed_experts // a.n_group).amax(-1)   # (T, G)
            masked = scores.masked_fill(~self._group_mask(group), 0.0)
            weights, idx = masked.topk(a.n_activated_experts, dim=-1)
        else:  # noaux_tc: choose on biased scores, weigh with unbiased ones
            choice = scores + self.bias.float()
            group = choice.view(-1, a.n_group, a.n_routed_experts // a.n_group).topk(2, dim=-1)[0].sum(-1)
            choice = choice.masked_fill(~self._group_mask(group), float("-inf"))
            idx = choice.topk(a.n_activated_experts, dim=-1)[1]
            weights = scores.gather(1, idx)
        if a.norm_topk_prob and a.n_activated_experts > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return weights * a.routed_scaling_factor, idx

    def _group_mask(self, group_scores: torch.Tensor) -> torch.Tensor:
        """(T, E) True for experts in the topk_group best groups."""
        a = self.args
        keep = group_scores.topk(a.topk_group, dim=-1)[1]
        mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
        return mask.repeat_interleave(a.n_routed_experts // a.n_group, dim=-1)


class Experts(nn.Module):
    w13: torch.Tensor   # parameters here; int8 buffers in model/quant.py's Int8Experts
    w2: torch.Tensor

    def __init__(self, n: int, dim: int, inter_dim: int) -> None:
        super().__init__()
        self.inter_dim = inter_dim
        self.w13 = nn.Parameter(torch.empty(n, 2 * inter_dim, dim))   # gate rows, then up rows
        self.w2 = nn.Parameter(torch.empty(n, dim, inter_dim))
        # decode: the k experts gathered into one batched product (no host sync: what a GPU
        # wants, set by the engine on CUDA, and what a compiled step needs), or one by one
        # (eager on CPU, where gathering a large model's experts copies megabytes)
        self.batched_decode = False

    def expert_weights(self, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.w13[e], self.w2[e]

    def run(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e on tokens x (N, D) -> (N, D)."""
        w13, w2 = self.expert_weights(e)
        gate, up = F.linear(x, w13).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, w2)

    def run_each(self, x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Per token x (T, D), only its k experts idx (T, k), one by one, weighted and summed ->
        (T, D) (eager decode on CPU)."""
        y = torch.zeros_like(x)
        for t, (experts, w) in enumerate(zip(idx.tolist(), weights, strict=True)):
            xt = x[t : t + 1]
            for j, e in enumerate(experts):
                y[t : t + 1] += w[j] * self.run(e, xt)
        return y

    def run_chosen(self, x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """A few tokens x (T, D), each through its k experts idx (T, k), weighted and summed ->
        (T, D): batched products over the gathered experts, no host round trip."""
        T, k = idx.shape
        pairs = idx.reshape(T * k)
        xs = x.repeat_interleave(k, dim=0).unsqueeze(-1)                    # (T*k, D, 1)
        gate, up = torch.bmm(self.w13[pairs], xs).squeeze(-1).chunk(2, dim=-1)   # (T*k, I) each
        out = torch.bmm(self.w2[pairs], (F.silu(gate) * up).unsqueeze(-1)).squeeze(-1)  # (T*k, D)
        return (weights.reshape(T * k, 1) * out).view(T, k, -1).sum(1)


class MoE(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_experts = args.n_routed_experts
        self.k = args.n_activated_experts
        self.gate = Router(args)
        self.experts = Experts(args.n_routed_experts, args.dim, args.moe_inter_dim)
        self.shared = MLP(args.dim, args.moe_inter_dim * args.n_shared_experts) if args.n_shared_experts else None
        self.grouped_min_tokens = 2   # runtime may set a higher value; tests force each path
        self._shared_ids: torch.Tensor | None = None   # fold_shared: (1, n) the shared experts' numbers

    @property
    def folded(self) -> int:
        """Shared experts that run as experts n_experts.. (fold_shared)."""
        return 0 if self._shared_ids is None else self._shared_ids.shape[1]

    def fold_shared(self) -> None:
        """Once, after fuse(): where the experts can take the shared MLP as experts of their own
        (4 bits: model/int4.py `attach_shared`), every token lists them with gate 1 beside its
        chosen ones — a decode step's whole feed-forward is then one kernel call."""
        shared = self.shared
        attach = getattr(self.experts, "attach_shared", None)
        if shared is None or attach is None or shared.gate_up_proj is None:
            return
        n: int = attach(shared.gate_up_proj, shared.down_proj)
        if n:
            self.shared = None
            self._shared_ids = torch.arange(self.n_experts, self.n_experts + n,
                                            device=self.gate.weight.device).unsqueeze(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1:
            y = self._decode_routed(x)
            if y is not None:
                return y
        weights, idx = self.gate(x)                                       # (T, k) each
        weights = weights.to(x.dtype)
        if self._shared_ids is not None:                                  # (T, k + shared)
            idx = torch.cat((idx, self._shared_ids.expand(x.shape[0], -1)), dim=1)
            weights = torch.cat((weights, weights.new_ones(x.shape[0], self.folded)), dim=1)
        if torch.compiler.is_compiling() or (x.shape[0] == 1 and self.experts.batched_decode):
            y = self.experts.run_chosen(x, idx, weights)                  # a graph: no host round trip
        elif x.shape[0] >= self.grouped_min_tokens:
            y = self._grouped(x, weights, idx)
        else:
            y = self.experts.run_each(x, idx, weights)
        if self.shared is not None:
            y = y + self.shared(x)
        return y

    def _decode_routed(self, x: torch.Tensor) -> torch.Tensor | None:
        """One token, experts that take their router into the same kernel call (4 bits: model/int4.py
        `run_routed`) and the shared experts folded among them: the whole feed-forward in one call.
        None where it does not apply (another router, a compiled step, no kernel)."""
        run_routed = getattr(self.experts, "run_routed", None)
        a, router = self.gate.args, self.gate.weight
        if (run_routed is None or self.shared is not None or a.scoring_func != "softmax" or a.topk_method != "greedy"
                or router.dtype != torch.float32 or torch.compiler.is_compiling()):
            return None
        return run_routed(x, router.detach(), self.k, a.norm_topk_prob, a.routed_scaling_factor)

    def _grouped(self, x, weights, idx) -> torch.Tensor:
        """Sort (token, expert) pairs by expert; one matrix product per chosen expert."""
        flat = idx.flatten()                                              # (T*k,)
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.n_experts + self.folded).tolist()
        token_of = order // idx.shape[1]                                  # token of each sorted pair
        w_sorted = weights.flatten()[order]
        y = torch.zeros_like(x)
        begin = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            tokens = token_of[begin : begin + n]
            out = self.experts.run(e, x[tokens]) * w_sorted[begin : begin + n, None]
            y.index_add_(0, tokens, out)
            begin += n
        return y
