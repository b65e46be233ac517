"""DiGraP: directional gradient projection towards θ₀, with a projection strength ω learned per tensor."""

from __future__ import annotations

import math

from torch import Tensor

from .hooks import WEIGHT_SPACE, GradientTransform


class ScalarAdam:
    """Adam on one scalar (DiGraP's ω, FTP's γ), its state kept in a plain dict (saved in checkpoints as numbers).

    `x ← x − lr · m̂ / (√v̂ + eps)`, with `m ← β₁m + (1−β₁)h`, `v ← β₂v + (1−β₂)h²`, `m̂ = m / (1−β₁ⁿ)`,
    `v̂ = v / (1−β₂ⁿ)` and n the number of updates so far (this one included), for a (hyper)gradient h.

    Args:
        lr (`float`): step size (DiGraP's μ, FTP's learning rate of γ).
        betas (`tuple[float, float]`, *optional*, defaults to `(0.9, 0.999)`): β₁, β₂.
        eps (`float`, *optional*, defaults to 1e-8): ε.
    """

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)

    def step(self, x: float, h: float, state: dict) -> float:
        """The new value of `x` after one step on hypergradient `h`; updates `state` (`m`, `v`, `k`) in place."""
        b1, b2 = self.betas
        state["n"] = n = int(state.get("n", 0)) + 1
        state["m"] = m = b1 * float(state.get("m", 0.0)) + (1 - b1) * h
        state["v"] = v = b2 * float(state.get("v", 0.0)) + (1 - b2) * h * h
        return x - self.lr * (m / (1 - b1**n)) / (math.sqrt(v / (1 - b2**n)) + self.eps)


class DiGraP(GradientTransform):
    """DiGraP (Huang et al., ICLR 2025, arXiv 2502.15895): one-sided projection of the task gradient away from the
    direction that moves θ further from θ₀, by an amount ω learned online per tensor.

    Per trainable tensor, once per optimizer step (on the full gradient, before the optimizer):

    1. g₁ = the task gradient, g₂ = θ − θ₀ (θ₀ the pretrained weights; 0 for LoRA adapter tensors).
    2. Hypergradient step on ω (when `learn_omega` and the previous step of this tensor projected): with
       c_{t−1} the previous step's projected component (below),
       `h_t = cos(g₁_t, c_{t−1}) = g₁_t·c_{t−1} / (‖g₁_t‖‖c_{t−1}‖)`, then `ω ← clip(ω − μ·Adam(h_t), 0, 1)` (a
       scalar Adam, `ScalarAdam`, lr μ). Sign: a descent step uses `g = g₁ − ω·c`, so θ_t depends on ω through
       `∂θ_t/∂ω = η·c_{t−1}` (SGD view) and `∂L(θ_t)/∂ω = η·g₁_t·c_{t−1}`: hypergradient *descent* (Baydin et al.,
       arXiv 1703.04782) lowers ω when the current task gradient agrees with the component the projection took out
       (projecting hurt the task) and raises it when they disagree. The cosine (not the raw product) makes h
       scale-free across tensors. No step (and no Adam count) when there is no previous component (the first step,
       or a previous step without conflict) or either norm is 0. [recon: the paper gives the cosine and the scalar
       Adam; which steps count is not stated.]
    3. Conflict test and projection: if `g₁·g₂ < 0` (descending g₁ moves θ away from θ₀) and `‖g₂‖ > 0`,
       `c_t = (g₁·g₂ / ‖g₂‖²)·g₂` and `g = g₁ − ω·c_t`; else `g = g₁` and there is no component. c_t is kept for
       the next step's hypergradient (the full component, not ω·c_t, so that ω can leave 0).

    ω = 0 is plain fine-tuning (the gradient is returned untouched), ω = 1 a full one-sided projection (PCGrad-style:
    `g·g₂ = 0` on conflict). The optimizer (AdamW in the paper) then steps on g as usual. State per parameter name:
    `omega`, the scalar Adam's `m`, `v`, `n`, and `prev` (c_t, a tensor the size of the parameter; None without
    conflict), saved into each checkpoint and restored on resume.

    Args:
        mu (`float`, *optional*, defaults to 0.5): learning rate μ of the scalar Adam on ω (the authors' VQA value).
        omega_init (`float`, *optional*, defaults to 0.0): ω of every tensor at the start, in [0, 1].
        learn_omega (`bool`, *optional*, defaults to `True`): learn ω; otherwise it stays `omega_init`.
        betas (`tuple[float, float]`, *optional*, defaults to `(0.9, 0.999)`): the scalar Adam's β₁, β₂.
        eps (`float`, *optional*, defaults to 1e-8): the scalar Adam's ε.
    """

    needs_reference = True
    state_key = "digrap"

    def __init__(self, mu: float = 0.5, omega_init: float = 0.0, learn_omega: bool = True,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__()
        if not mu >= 0:
            raise ValueError(f"DiGraP mu must be >= 0, got {mu}.")
        if not 0.0 <= omega_init <= 1.0:
            raise ValueError(f"DiGraP omega_init must be in [0, 1], got {omega_init}.")
        self.adam = ScalarAdam(mu, betas, eps)
        self.omega_init, self.learn_omega = float(omega_init), bool(learn_omega)

    def __repr__(self) -> str:
        return f"DiGraP(mu={self.adam.lr:g}, omega_init={self.omega_init:g}, learn_omega={self.learn_omega})"

    def omegas(self) -> dict[str, float]:
        """ω per parameter name (tensors not seen yet are absent)."""
        return {n: s["omega"] for n, s in self.state.items()}

    @staticmethod
    def hypergradient(g1: Tensor, prev: Tensor) -> float | None:
        """`cos(g₁, c_{t−1})`, or None when either is 0."""
        den = float(g1.norm()) * float(prev.norm())
        return float((g1 * prev).sum()) / den if den > 0 and math.isfinite(den) else None

    def transform(self, name: str, param: Tensor, grad: Tensor, ref: Tensor | None) -> Tensor:
        if ref is None:
            return grad
        s = self.state.setdefault(name, {"omega": self.omega_init, "m": 0.0, "v": 0.0, "n": 0, "prev": None})
        prev = s.get("prev")
        if self.learn_omega and prev is not None:
            h = self.hypergradient(grad, prev.to(grad))
            if h is not None:
                s["omega"] = min(1.0, max(0.0, self.adam.step(float(s["omega"]), h, s)))
        g2 = param - ref.to(param)
        dot, sq = float((grad * g2).sum()), float((g2 * g2).sum())
        if not (dot < 0 and sq > 0):
            s["prev"] = None
            return grad
        component = g2.mul(dot / sq)
        s["prev"] = component if self.learn_omega else None
        omega = float(s["omega"])
        return grad if omega == 0 else grad.sub_(component, alpha=omega)


@WEIGHT_SPACE.register("digrap")
def _build_digrap(args) -> DiGraP:
    return DiGraP(mu=args.digrap_mu, omega_init=args.digrap_omega_init, learn_omega=args.digrap_learn_omega)

