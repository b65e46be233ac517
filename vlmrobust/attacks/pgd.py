"""Projected gradient descent, the training-time attack."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .base import ATTACKS, Attack, AttackResult, LossFn, is_labels, is_logits


@ATTACKS.register("pgd")
class PGD(Attack):
    r"""Projected gradient ascent on a per-sample loss (Madry et al. 2018, arXiv 1706.06083).

    Each step is `δ ← Π(δ + α·sign(g))` for L∞ and `δ ← Π(δ + α·g/‖g‖₂)` for L2, where Π projects onto the ε-ball
    and x + δ is clamped to [0, 1]. With `momentum=μ > 0` the step direction follows the FARE reference
    (Schlarmann et al. 2024, arXiv 2402.12336): `g ← μ·g + ∇/‖∇‖₁` with the L1 norm taken per sample, then the sign
    (L∞) or normalised (L2) step of the accumulated `g`.

    Args:
        model (`nn.Module` or `Callable`):
            Maps images in [0, 1] to outputs; normalisation lives inside it.
        norm (`str`, *optional*, defaults to `"Linf"`):
            "Linf" or "L2".
        eps (`float`):
            Radius of the ε-ball in [0, 1] pixel units.
        alpha (`float`, *optional*):
            Step size. Defaults to `eps / 4` for L∞ and `2.5 * eps / steps` for L2.
        steps (`int`, *optional*, defaults to 10):
            Number of gradient steps.
        random_start (`bool`, *optional*, defaults to `True`):
            Start from a uniform sample of the ε-ball instead of the clean image.
        momentum (`float`, *optional*, defaults to 0.0):
            μ of the L1-normalised gradient accumulation described above; 0 disables it (FARE uses 0.9 when on).
        loss_fn (`Callable[[Any, Tensor], Tensor]`, *optional*):
            Per-sample loss to maximise, `loss_fn(output, target) -> [B]`. Defaults to cross-entropy.
        seed (`int`, *optional*, defaults to 0):
            Seed of the random start.
        return_max_loss (`bool`, *optional*, defaults to `False`):
            Return the max-loss iterate as `x_adv` instead of the last iterate.
        input_dtype (`torch.dtype`, *optional*):
            Dtype the model is fed; defaults to the model's parameter dtype. The perturbation stays fp32.

    `perturb` costs `steps` forward+input-backward passes plus one forward to score the last iterate; calling the
    attack directly (`attack(images, target)`, the training path) skips that forward when it is not needed.
    """

    def __init__(
        self,
        model: nn.Module | Callable[[Tensor], Any],
        *,
        norm: str = "Linf",
        eps: float,
        alpha: float | None = None,
        steps: int = 10,
        random_start: bool = True,
        momentum: float = 0.0,
        loss_fn: LossFn | None = None,
        seed: int = 0,
        return_max_loss: bool = False,
        input_dtype: torch.dtype | None = None,
    ):
        super().__init__(model, norm=norm, eps=eps, steps=steps, loss_fn=loss_fn, seed=seed, input_dtype=input_dtype)
        if alpha is None:
            alpha = self.eps / 4 if self.norm == "Linf" else 2.5 * self.eps / max(self.steps, 1)
        if alpha < 0 or momentum < 0:
            raise ValueError(f"alpha and momentum must be >= 0, got alpha={alpha}, momentum={momentum}.")
        self.alpha = float(alpha)
        self.random_start = bool(random_start)
        self.momentum = float(momentum)
        self.return_max_loss = bool(return_max_loss)

    def __repr__(self) -> str:
        return (
            f"PGD(norm={self.norm!r}, eps={self.eps:.6g}, alpha={self.alpha:.6g}, steps={self.steps}, "
            f"random_start={self.random_start}, momentum={self.momentum}, seed={self.seed})"
        )

    def _perturb(self, x: Tensor, target: Tensor, generator: torch.Generator) -> AttackResult:
        batch = x.shape[0]
        delta = self._random_init(x, generator) if self.random_start else torch.zeros_like(x)
        velocity = torch.zeros_like(x) if self.momentum > 0 else None
        best_loss = torch.full((batch,), float("-inf"), device=x.device)
        best_delta = delta.clone()
        best_pred: Tensor | None = None

        def keep_best(loss: Tensor, delta: Tensor, out: Any) -> None:
            nonlocal best_loss, best_delta, best_pred
            better = loss > best_loss
            best_loss = torch.where(better, loss, best_loss)
            best_delta = torch.where(self._view(better, x), delta, best_delta)
            if is_logits(out, batch):
                pred = out.argmax(dim=1)
                best_pred = pred if best_pred is None else torch.where(better, pred, best_pred)

        for _ in range(self.steps):
            loss, grad, out = self._loss_and_grad(x, delta, target, self.loss_fn)
            keep_best(loss, delta, out)
            if velocity is not None:
                l1 = grad.flatten(1).abs().sum(dim=1)
                velocity = self.momentum * velocity + grad / self._view(l1 + 1e-12, grad)
                grad = velocity
            delta = self._project(x, delta + self.alpha * self._step_direction(grad))

        last_pred = None
        # The last iterate has not been scored yet; one forward without graph does it, unless the caller only
        # wants the last iterate (training: `attack(images, target)`), where it would be wasted.
        if self._full_result or self.return_max_loss:
            loss, _, out = self._loss_and_grad(x, delta, target, self.loss_fn, need_grad=False)
            last_pred = out.argmax(dim=1) if is_logits(out, batch) else None
            keep_best(loss, delta, out)

        x_adv = x + (best_delta if self.return_max_loss else delta)
        success = None
        if is_labels(target, batch) and last_pred is not None:
            pred = best_pred if self.return_max_loss else last_pred
            success = pred != target
        return AttackResult(x_adv=x_adv, x_max_loss=x + best_delta, loss=best_loss, success=success)
