"""L2-SP: an L2 penalty towards the starting point instead of towards zero."""

from __future__ import annotations

from torch import Tensor

from .hooks import WEIGHT_SPACE, GradientTransform


class L2SP(GradientTransform):
    """L2-SP (Li, Grandvalet & Davoine, ICML 2018, arXiv 1802.01483) as a gradient transform.

    Adds the gradient of `λ/2 · ‖θ − θ₀‖²` to every trained tensor's gradient: `g ← g + λ·(θ − θ₀)`, with θ₀ the
    weights the run started from (the trainer's shared `ReferenceWeights`). Being a gradient term it goes through the
    optimizer like the task gradient (Adam normalises it; gradient clipping sees it), as in the paper; AdamW's own
    decoupled `weight_decay` still pulls towards zero, so set it to 0 for pure L2-SP. A tensor without a θ₀ (none in
    the trainers shipped here) is left unchanged. The DiGraP authors ship it as a baseline (arXiv 2502.15895).

    Args:
        lam (`float`): λ ≥ 0, fixed for the whole run (0 is plain fine-tuning).
    """

    needs_reference = True
    state_key = "l2sp"

    def __init__(self, lam: float):
        super().__init__()
        if not lam >= 0:
            raise ValueError(f"L2-SP lambda must be >= 0, got {lam}.")
        self.lam = float(lam)

    def __repr__(self) -> str:
        return f"L2SP(lam={self.lam:g})"

    def transform(self, name: str, param: Tensor, grad: Tensor, ref: Tensor | None) -> Tensor:
        if ref is None or self.lam == 0:
            return grad
        return grad.add_(param - ref.to(param), alpha=self.lam)


@WEIGHT_SPACE.register("l2sp")
def _build_l2sp(args) -> L2SP:
    return L2SP(args.l2sp_lambda)
