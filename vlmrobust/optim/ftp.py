"""FTP: projection of each tensor onto a ball around θ₀ whose radius is learned by hypergradient."""

from __future__ import annotations

import torch
from torch import Tensor

from .digrap import ScalarAdam
from .hooks import WEIGHT_SPACE, PostStepConstraint


def row_l1_norms(t: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-row L1 norms `‖t_i‖₁ + eps` (rows along the first dimension, kept as a broadcastable `(n, 1, ...)`); a 0- or
    1-D tensor is one row."""
    if t.dim() < 2:
        return t.abs().sum().reshape([1] * t.dim()) + eps
    return t.abs().sum(dim=tuple(range(1, t.dim())), keepdim=True) + eps


class FTP(PostStepConstraint):
    """FTP, Fast Trainable Projection (Tian et al., NeurIPS 2023, arXiv 2310.19182), as a post-step constraint.

    After each optimizer step, per trainable tensor, with θ̃ the weights the optimizer produced and θ₀ the pretrained
    weights (0 for LoRA adapters):

    1. `c = θ̃ − θ₀`, row norms `n_i = ‖c_i‖₁ + 1e-8` (rows along the first dimension: one per output unit; a 0- /
       1-D tensor is one row, as in the authors' code's `_mars_norm`).
    2. The tensor's radius γ (one scalar per tensor) was updated before the step from the hypergradient
       `h_t = Σ_i g_t,i · c_{t−1,i} / ‖c_{t−1,i}‖₁` (g_t the gradient at θ_{t−1}, c_{t−1} the previous step's
       unconstrained deviation), positive h_t multiplied by the annealing factor `k`, then
       `γ ← ScalarAdam(lr).step(γ, h_t)`; it is clipped here to `[1e-8, max_i n_i]`. The hypergradient is that of the
       task loss w.r.t. γ through the projection `θ = θ₀ + (γ/n)·c`, summed over all rows as the authors do (rows the
       projection leaves alone included).
    3. `θ ← θ₀ + min(1, γ / n_i) · c_i` for every row i: each row's deviation is clipped to L1 length γ.

    On the first step γ = `gamma_init` (1e-8: the first step is projected back almost onto θ₀, as in the reference),
    and there is no hypergradient. The radius's Adam counts its own updates (bias correction from n = 1 on its first
    update; the reference counts optimizer steps from 2). `k` is a float and is never truncated (the reference's
    script casts it with `int()`). c_{t−1}/n_{t−1} is kept (a tensor the size of the parameter): it cannot be
    recovered from θ_{t−1} − θ₀, which a radius of 1e-8 rounds to 0 in fp32.

    State per parameter name: `gamma`, the scalar Adam's `m`, `v`, `n`, and `prev` (c_{t−1}/n_{t−1}).

    Args:
        lr (`float`, *optional*, defaults to 1e-2): learning rate of the radius's Adam (the reference's `mu`).
        k (`float`, *optional*, defaults to 1.0): annealing factor of positive hypergradients (radius shrinking).
        gamma_init (`float`, *optional*, defaults to 1e-8): the radius on the first step.
    """

    needs_reference = True
    observes_gradient = True
    state_key = "ftp"

    def __init__(self, lr: float = 1e-2, k: float = 1.0, gamma_init: float = 1e-8):
        super().__init__()
        if not (lr >= 0 and k >= 0 and gamma_init > 0):
            raise ValueError(f"FTP needs lr >= 0, k >= 0, gamma_init > 0; got lr={lr}, k={k}, gamma_init={gamma_init}.")
        self.adam, self.k, self.gamma_init = ScalarAdam(lr), float(k), float(gamma_init)
        self._pending: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"FTP(lr={self.adam.lr:g}, k={self.k:g}, gamma_init={self.gamma_init:g})"

    def radii(self) -> dict[str, float]:
        """γ per parameter name."""
        return {n: s["gamma"] for n, s in self.state.items()}

    def hypergradient(self, grad: Tensor, prev: Tensor) -> float:
        """`Σ_i g_i · c_{t−1,i} / n_{t−1,i}` (`prev` = c_{t−1}/n_{t−1}), positive values multiplied by `k`."""
        h = float((grad * prev).sum())
        return h * self.k if h > 0 else h

    def observe(self, name: str, param: Tensor, grad: Tensor, ref: Tensor | None) -> None:
        s = self.state.get(name)
        if s is None or s.get("prev") is None:  # first step: γ = gamma_init, no hypergradient
            return
        self._pending[name] = self.adam.step(float(s["gamma"]), self.hypergradient(grad, s["prev"].to(grad)), s)

    @torch.no_grad()
    def apply(self, name: str, param: Tensor, ref: Tensor | None) -> Tensor | None:
        if ref is None:
            return None
        s = self.state.setdefault(name, {"gamma": self.gamma_init, "m": 0.0, "v": 0.0, "n": 0, "prev": None})
        c = param - ref.to(param)
        norms = row_l1_norms(c)
        gamma = min(max(self._pending.pop(name, float(s["gamma"])), 1e-8), float(norms.max()))
        s["gamma"], s["prev"] = gamma, c / norms
        return ref.to(param) + (gamma / norms).clamp(max=1.0) * c


@WEIGHT_SPACE.register("ftp")
def _build_ftp(args) -> FTP:
    return FTP(lr=args.ftp_lr, k=args.ftp_k, gamma_init=args.ftp_gamma_init)
