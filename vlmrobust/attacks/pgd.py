"""Projected gradient descent, the training-time attack."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .base import ATTACKS, Attack, AttackResult, LossFn, is_labels, is_logits

MOMENTUM_STYLES = ("fare", "mi-fgsm")


@ATTACKS.register("pgd")
class PGD(Attack):
    r"""Projected gradient ascent on a per-sample loss (Madry et al. 2018, arXiv 1706.06083).

    Each step is `δ ← Π(δ + α·s(∇))`, where `s` is the sign for L∞ and the per-sample L2 normalisation `∇/‖∇‖₂` for
    L2, and Π projects onto the ε-ball and clamps x + δ to [0, 1] (`Attack._project`).

    With `momentum=μ > 0` a velocity `v` (zero at the start) replaces `s(∇)` in the step. Two update rules:

    * `momentum_style="fare"` (default) follows the FARE reference code (Schlarmann et al. 2024, arXiv 2402.12336;
      RobustVLM `train/pgd_train.py`): `v ← s(μ·v + s(∇))`, i.e. the normalised gradient is accumulated and the
      velocity is stored normalised again, then `δ ← Π(δ + α·v)`. For L∞ with μ < 1 this is the plain sign step
      wherever ∇ ≠ 0 (|μ·v| ≤ μ < 1 = |sign(∇)|, so the sign of the sum is the sign of ∇); momentum only matters
      where ∇ = 0 and for L2.
    * `momentum_style="mi-fgsm"`: MI-FGSM (Dong et al. 2018, arXiv 1710.06081), `v ← μ·v + ∇/‖∇‖₁` with the L1
      norm per sample and `v` kept unnormalised, then `δ ← Π(δ + α·s(v))`.

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
            μ of the velocity described above; 0 disables it (the FARE reference uses 0.9).
        momentum_style (`str`, *optional*, defaults to `"fare"`):
            `"fare"` (the FARE reference rule) or `"mi-fgsm"` (MI-FGSM's L1-normalised accumulation); only used
            when `momentum > 0`.
        loss_fn (`Callable[[Any, Tensor], Tensor]`, *optional*):
            Per-sample loss to maximise, `loss_fn(output, target) -> [B]`. Defaults to cross-entropy.
        seed (`int`, *optional*, defaults to 0):
            Seed of the random start.
        return_max_loss (`bool`, *optional*, defaults to `False`):
            Return the max-loss iterate as `x_adv` instead of the last iterate.
        input_dtype (`torch.dtype`, *optional*):
            Dtype the model is fed; defaults to the model's parameter dtype. The perturbation stays fp32.
        sample_seeds (`torch.Tensor`, *optional*):
            Per-image seeds of the random start (see `Attack`).

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
        momentum_style: str = "fare",
        loss_fn: LossFn | None = None,
        seed: int = 0,
        return_max_loss: bool = False,
        input_dtype: torch.dtype | None = None,
        sample_seeds: Tensor | None = None,
    ):
        super().__init__(model, norm=norm, eps=eps, steps=steps, loss_fn=loss_fn, seed=seed, input_dtype=input_dtype,
                         sample_seeds=sample_seeds)
        if alpha is None:
            alpha = self.eps / 4 if self.norm == "Linf" else 2.5 * self.eps / max(self.steps, 1)
        if alpha < 0 or momentum < 0:
            raise ValueError(f"alpha and momentum must be >= 0, got alpha={alpha}, momentum={momentum}.")
        self.alpha = float(alpha)
        self.random_start = bool(random_start)
        if momentum_style not in MOMENTUM_STYLES:
            raise ValueError(f"momentum_style must be one of {MOMENTUM_STYLES}, got {momentum_style!r}.")
        self.momentum = float(momentum)
        self.momentum_style = momentum_style
        self.return_max_loss = bool(return_max_loss)

    def __repr__(self) -> str:
        return (
            f"PGD(norm={self.norm!r}, eps={self.eps:.6g}, alpha={self.alpha:.6g}, steps={self.steps}, "
            f"random_start={self.random_start}, momentum={self.momentum}, momentum_style={self.momentum_style!r}, "
            f"seed={self.seed})"
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

        # the max-loss point is only wanted by `perturb` and `return_max_loss`; the training call skips its bookkeeping
        track = self._full_result or self.return_max_loss
        # hoisted out of the loop: the per-iteration Python cost is a visible share of a small model's step
        loss_and_grad, loss_fn, step_direction = self._loss_and_grad, self.loss_fn, self._step_direction
        alpha, eps, momentum = self.alpha, self.eps, self.momentum
        sign_step = self.norm == "Linf" and velocity is None
        for _ in range(self.steps):
            loss, grad, out = loss_and_grad(x, delta, target, loss_fn)
            if track:
                keep_best(loss, delta, out)
            if sign_step:
                # δ ← Π(δ + α·sign(∇)) with δ updated in place (it is this loop's own tensor; `keep_best` keeps
                # copies; ∇ may alias autograd's buffers, so its sign is a new tensor): the same float ops, in the same
                # order, as `_project(x, delta + alpha * grad.sign())`
                delta.add_(grad.sign().mul_(alpha)).clamp_(-eps, eps).add_(x).clamp_(0.0, 1.0).sub_(x)
                continue
            if velocity is None:
                step = step_direction(grad)
            elif self.momentum_style == "fare":
                velocity = step_direction(momentum * velocity + step_direction(grad))
                step = velocity
            else:
                l1 = grad.flatten(1).abs().sum(dim=1)
                velocity = momentum * velocity + grad / self._view(l1 + 1e-12, grad)
                step = step_direction(velocity)
            delta = self._project(x, delta + alpha * step)

        last_pred = None
        # The last iterate has not been scored yet; one forward without graph does it, unless the caller only
        # wants the last iterate (training: `attack(images, target)`), where it would be wasted.
        if self._full_result or self.return_max_loss:
            loss, _, out = self._loss_and_grad(x, delta, target, self.loss_fn, need_grad=False)
            last_pred = out.argmax(dim=1) if is_logits(out, batch) else None
            keep_best(loss, delta, out)

        if not track:
            best_delta = delta
        x_adv = x + (best_delta if self.return_max_loss else delta)
        success = None
        if is_labels(target, batch) and last_pred is not None:
            pred = best_pred if self.return_max_loss else last_pred
            success = pred != target
        return AttackResult(x_adv=x_adv, x_max_loss=x + best_delta, loss=best_loss, success=success)
