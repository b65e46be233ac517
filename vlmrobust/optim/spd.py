"""SPD: selective projection decay towards θ₀, applied after the optimizer step to some tensors only."""

from __future__ import annotations

import torch
from torch import Tensor

from .hooks import WEIGHT_SPACE, PostStepConstraint


class SPD(PostStepConstraint):
    """SPD, Selective Projection Decay (Tian et al., NeurIPS 2024, arXiv 2411.01713; AdamSPD), as a post-step
    constraint on any optimizer.

    Per trainable tensor, with g_t the gradient the optimizer steps on, θ_{t−1} the weights before the step, θ̃ the
    weights after it and θ₀ the pretrained weights (0 for LoRA adapters):

    1. Before the step (`observe`): the condition `c_t = −g_t·(θ_{t−1} − θ₀)` and `p = ‖θ_{t−1} − θ₀‖₂`.
    2. After the step, only if `c_t < 0`: `r = clip((‖θ̃ − θ₀‖₂ − p) / ‖θ̃ − θ₀‖₂, 0, 1)` and
       `θ ← θ̃ − λ·r·(θ̃ − θ₀)`; otherwise θ̃ is kept.

    So a tensor is decayed only when its descent direction −g_t disagrees with its current deviation (c_t < 0: the
    gradient points back towards θ₀, the paper's "inconsistent" layers), *and* the optimizer's step (momentum, Adam's
    scaling) still moved it further from θ₀ (r > 0); the decay is proportional to the relative growth of the
    deviation. Tensors whose descent direction keeps extending their deviation (consistent progress) move freely.
    This is the authors' AdamSPD rule (the condition's sign as in their public code); the brief's paraphrase
    "decays layers whose update is consistent with moving away from θ₀" matches the r > 0 half only.

    In AdamSPD λ is the optimizer's `weight_decay` and replaces AdamW's decay towards 0: set `weight_decay` 0 for the
    paper's method. State: none across steps (the condition is recomputed each step).

    Args:
        lam (`float`, *optional*, defaults to 1.0): decay strength λ ≥ 0 (AdamSPD's `weight_decay`).
    """

    needs_reference = True
    observes_gradient = True
    state_key = "spd"

    def __init__(self, lam: float = 1.0):
        super().__init__()
        if not lam >= 0:
            raise ValueError(f"SPD lambda must be >= 0, got {lam}.")
        self.lam = float(lam)
        self._pending: dict[str, float] = {}
        self.decayed = 0  # tensors decayed so far (for logs and tests)

    def __repr__(self) -> str:
        return f"SPD(lam={self.lam:g})"

    def observe(self, name: str, param: Tensor, grad: Tensor, ref: Tensor | None) -> None:
        if ref is None:
            return
        d = param - ref.to(param)
        if -float((grad * d).sum()) < 0:
            self._pending[name] = float(d.norm())

    @torch.no_grad()
    def apply(self, name: str, param: Tensor, ref: Tensor | None) -> Tensor | None:
        prev_norm = self._pending.pop(name, None)
        if ref is None or prev_norm is None or self.lam == 0:
            return None
        d = param - ref.to(param)
        norm = float(d.norm())
        r = min(1.0, max(0.0, (norm - prev_norm) / norm)) if norm > 0 else 0.0
        if r == 0:
            return None
        self.decayed += 1
        return param - (self.lam * r) * d


@WEIGHT_SPACE.register("spd")
def _build_spd(args) -> SPD:
    return SPD(lam=args.spd_lambda)
