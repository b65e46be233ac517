"""Layer-adaptive-rank adversarial weight perturbation (LAR-AWP, GRACE, arXiv 2603.27139).

Each perturbed layer gets a second low-rank branch `y = layer(x) + x·(B_awp·A_awp)ᵀ`, i.e. its weight `W` becomes
`W + Δ` with `Δ = B_awp·A_awp` of rank `r_l`, set from the layer's curvature (`curvature.allocate_ranks`). The branch
is a forward hook: the weights themselves are never written, so removing the perturbation is switching the branch off
(nothing is subtracted, nothing needs restoring), and it works the same on a DeepSpeed / DDP-wrapped module. The hooks
are attached only inside :meth:`probing` and :meth:`perturbed` (every other forward, e.g. the attack's, runs without
them); `persistent_hooks=True` keeps them attached throughout, for a `torch.compile`d module (dynamo does not guard on
module hooks: hooks added after compiling would be ignored).

One SAM-style step (Foret et al., arXiv 2010.01412), as `GRACETrainer` drives it:

1. :meth:`probing`: forward + backward of the loss at θ; a probe on each layer accumulates the gradient of the loss
   with respect to the layer's effective weight, `G = Σ dYᵀ·X`, over every micro-batch of the optimizer step.
2. :meth:`compute`: `G` is averaged over the processes; the curvature EMA is updated with it, the ranks are
   re-allocated every `interval` steps, and `Δ_l = c · P_{r_l}(G_l)`, `P_r` the best rank-r approximation
   (Eckart–Young: the rank-r matrix of given Frobenius norm that raises the first-order loss most), `c` scaling
   `‖Δ‖_F` to ρ over all layers together (`radius="global"`, SAM's choice) or per layer (`radius="layer"`).
3. :meth:`perturbed`: forward passes at θ + Δ (the trainer's second pass).
4. :meth:`clear`: the branch is off again, before the optimizer step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from .curvature import CurvatureEMA, allocate_ranks


class _GradProbe(torch.autograd.Function):
    """Identity on a layer's output; its backward adds `dYᵀ·X` (the gradient of the layer's weight) to `acc`."""

    @staticmethod
    def forward(ctx, out, inp, acc):
        ctx.save_for_backward(inp)
        ctx.acc = acc
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad_out):
        (inp,) = ctx.saved_tensors
        dy = grad_out.reshape(-1, grad_out.shape[-1]).to(ctx.acc.dtype)
        ctx.acc.addmm_(dy.T, inp.reshape(-1, inp.shape[-1]).to(ctx.acc.dtype))
        return grad_out, None, None


def low_rank_ascent(grad: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(B, A)` with `B @ A` the best rank-`rank` approximation of `grad` (`B: (out, r)`, `A: (r, in)`).

    Computed from the eigenvectors of the smaller of `G·Gᵀ` / `Gᵀ·G` (the top singular subspace), which is cheaper
    than an SVD of `G` for the few ranks LAR-AWP uses.
    """
    out_f, in_f = grad.shape
    r = min(int(rank), out_f, in_f)
    g = grad.float()
    if out_f <= in_f:
        _, vecs = torch.linalg.eigh(g @ g.T)
        u = vecs[:, -r:]
        return u, u.T @ g
    _, vecs = torch.linalg.eigh(g.T @ g)
    v = vecs[:, -r:]
    return g @ v, v.T


def _sq_norm(b: torch.Tensor, a: torch.Tensor) -> float:
    """‖B·A‖²_F = trace(BᵀB · AAᵀ), without forming B·A."""
    return float(((b.T @ b) * (a @ a.T)).sum())


def _mean_over_processes(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t.div_(dist.get_world_size())
    return t


class LowRankWeightPerturbation:
    """The LAR-AWP branches on a set of linear layers, their curvature EMA, ranks and current perturbation.

    Args:
        layers (`Mapping[str, nn.Module]`): name -> layer whose output is `x·Wᵀ (+ b)` for input `x` (e.g. PEFT
            LoRA layers; the effective weight, LoRA included, is what gets perturbed). Names key the state.
        rho (`float`, *optional*, defaults to 0.05): radius ρ of the perturbation, Frobenius norm.
        max_rank (`int`, *optional*, defaults to 4): rank of the highest-curvature layers.
        middle_rank (`int`, *optional*): rank of the middle layers; `allocate_ranks`'s default when None.
        top_fraction (`float`, *optional*, defaults to 0.2): fraction of layers at `max_rank`.
        bottom_fraction (`float`, *optional*, defaults to 0.2): fraction of layers left unperturbed.
        beta (`float`, *optional*, defaults to 0.9): EMA decay of the curvature.
        interval (`int`, *optional*, defaults to 1000): K, optimizer steps between rank re-allocations.
        radius (`str`, *optional*, defaults to `"global"`): `"global"` (‖Δ‖ over all layers = ρ) or `"layer"`
            (each perturbed layer's ‖Δ_l‖ = ρ).
        persistent_hooks (`bool`, *optional*, defaults to `False`): keep the forward hooks attached at all times
            (needed when the layers run inside a compiled module); by default they are attached on entering
            :meth:`probing` / :meth:`perturbed` and removed on leaving it, so the other forwards pay nothing.
    """

    def __init__(self, layers: Mapping[str, nn.Module], *, rho: float = 0.05, max_rank: int = 4,
                 middle_rank: int | None = None, top_fraction: float = 0.2, bottom_fraction: float = 0.2,
                 beta: float = 0.9, interval: int = 1000, radius: str = "global", persistent_hooks: bool = False):
        if not layers:
            raise ValueError("LowRankWeightPerturbation needs at least one layer.")
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}.")
        if interval < 1:
            raise ValueError(f"interval (K) must be >= 1, got {interval}.")
        if radius not in ("global", "layer"):
            raise ValueError(f"radius must be 'global' or 'layer', got {radius!r}.")
        allocate_ranks([0.0] * len(layers), max_rank, top_fraction=top_fraction, bottom_fraction=bottom_fraction,
                       middle_rank=middle_rank)  # validates the fractions and ranks
        self.layers = dict(layers)
        self.rho, self.radius, self.interval = float(rho), radius, int(interval)
        self.rank_kwargs = {"max_rank": int(max_rank), "middle_rank": middle_rank, "top_fraction": top_fraction,
                            "bottom_fraction": bottom_fraction}
        self.curvature = CurvatureEMA(beta)
        self.ranks: dict[str, int] = {}
        self.grads: dict[str, torch.Tensor] = {}  # accumulated ∂L/∂W per layer (fp32)
        self.factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # the current Δ = B·A per layer
        self.mode = "off"
        self._hook_fns = {n: self._hook(n) for n in self.layers}
        self.persistent_hooks = bool(persistent_hooks)
        self._removed = False
        self._handles: dict = self._attach(self.layers) if self.persistent_hooks else {}

    # -- the branch --------------------------------------------------------------------------------------------------
    def _hook(self, name: str):
        def hook(module, args, output):
            if self.mode == "probe":
                x = args[0].detach()
                acc = self.grads.get(name)
                if acc is None:
                    acc = self.grads[name] = torch.zeros(output.shape[-1], x.shape[-1], device=x.device)
                return _GradProbe.apply(output, x, acc)
            if self.mode == "perturb" and name in self.factors:
                b, a = self.factors[name]
                x = args[0]
                return output + (x @ a.to(x.dtype).T) @ b.to(x.dtype).T
            return None

        return hook

    def _attach(self, names) -> dict:
        return {n: self.layers[n].register_forward_hook(self._hook_fns[n]) for n in names}

    @contextlib.contextmanager
    def _mode(self, mode: str) -> Iterator[None]:
        previous, self.mode = self.mode, mode
        # on demand: the probe on every layer; the branch only on the layers that have a Δ (the others' hook is a
        # no-op in this mode); attached for the duration of the context (an enclosing context's stay)
        attached = {}
        if not self.persistent_hooks and not self._removed:
            wanted = self.layers if mode == "probe" else [n for n in self.layers if n in self.factors]
            attached = self._attach([n for n in wanted if n not in self._handles])
            self._handles.update(attached)
        try:
            yield
        finally:
            self.mode = previous
            for n, h in attached.items():
                h.remove()
                del self._handles[n]

    def probing(self):
        """Context: forward passes record the gradient of each layer's effective weight (accumulated)."""
        return self._mode("probe")

    def perturbed(self):
        """Context: forward passes run at θ + Δ (the current perturbation; θ when there is none)."""
        return self._mode("perturb")

    def zero_grad(self) -> None:
        """Forget the accumulated gradients (call at the first micro-batch of an optimizer step)."""
        for g in self.grads.values():
            g.zero_()

    # -- the ascent --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def compute(self, step: int, grad_scale: float = 1.0) -> dict[str, float]:
        """Set Δ from the accumulated gradients (averaged over the processes; every rank gets the same Δ).

        Args:
            step (`int`): the optimizer step; ranks are re-allocated when `step % interval == 0` (and on first use).
            grad_scale (`float`, *optional*, defaults to 1.0): fp16 loss scale the gradients carry.

        Returns:
            `dict[str, float]`: `awp_grad_norm` (‖G‖ over the layers), `awp_norm` (‖Δ‖), `awp_mean_rank`.
        """
        missing = [n for n in self.layers if n not in self.grads]
        if missing:
            raise RuntimeError(f"No gradient was probed for {missing[:3]}: run a forward / backward under "
                               "`probing()` first.")
        for name, g in self.grads.items():
            _mean_over_processes(g)
            if grad_scale != 1.0:
                g.div_(grad_scale)
            self.curvature.update(name, g)
        if step % self.interval == 0 or not self.ranks:
            ranks = allocate_ranks([self.curvature[n] for n in self.layers], **self.rank_kwargs)
            self.ranks = dict(zip(self.layers, ranks))
        self.factors = {}
        sq = {}
        for name, g in self.grads.items():
            if self.ranks[name] > 0 and self.rho > 0:
                b, a = low_rank_ascent(g, self.ranks[name])
                self.factors[name] = (b, a)
                sq[name] = _sq_norm(b, a)
        total = sum(sq.values()) ** 0.5
        for name, (b, a) in list(self.factors.items()):
            norm = total if self.radius == "global" else sq[name] ** 0.5
            if norm == 0:
                del self.factors[name]
                continue
            self.factors[name] = (b * (self.rho / norm), a)
        grad_norm = sum(float(g.pow(2).sum()) for g in self.grads.values()) ** 0.5
        return {"awp_grad_norm": grad_norm, "awp_norm": self.norm(),
                "awp_mean_rank": sum(self.ranks.values()) / len(self.ranks)}

    def norm(self) -> float:
        """‖Δ‖_F over all layers (0 when there is no perturbation)."""
        return sum(_sq_norm(b, a) for b, a in self.factors.values()) ** 0.5

    def clear(self) -> None:
        """Remove the perturbation: the branch is off (the weights were never written)."""
        self.factors = {}

    def remove(self) -> None:
        """Detach the branches from the layers for good (e.g. before merging LoRA)."""
        self.clear()
        for h in self._handles.values():
            h.remove()
        self._handles = {}
        self._removed = True
        self.grads = {}

    # -- checkpoints -------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"curvature": self.curvature.state_dict(), "ranks": dict(self.ranks)}

    def load_state_dict(self, state: Mapping) -> None:
        unknown = sorted(set(state["ranks"]) - set(self.layers))
        if unknown:
            raise ValueError(f"LAR-AWP state for layers this model lacks, e.g. {unknown[:3]}.")
        self.curvature.load_state_dict(state["curvature"])
        self.ranks = {k: int(v) for k, v in state["ranks"].items()}
