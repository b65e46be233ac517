"""AutoAttack: the parameter-free ensemble used to report robust accuracy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .apgd import APGD, APGDT
from .base import ATTACKS, Attack, AttackResult, is_labels, is_logits
from .losses import ce_loss

STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
_VERSIONS = {"standard": STANDARD_ATTACKS, "fast": ("apgd-ce", "apgd-t")}
_KNOWN = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square")
_STANDARD_STEPS, _STANDARD_TARGETS, _STANDARD_QUERIES = 100, 9, 5000


class _InputGradOnly(torch.autograd.Function):
    """Calls the model on a detached copy of the input and back-propagates to the input alone.

    torchattacks' FAB calls `.backward()`, which would accumulate into the model parameters' `.grad`; routing the
    backward through `torch.autograd.grad(..., inputs=x)` keeps them untouched for modules and plain functions alike.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            out = fn(x_in)
        ctx.x_in, ctx.out = x_in, out
        return out.detach()

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:
        # retain_graph: FAB back-propagates through the same output more than once.
        (grad,) = torch.autograd.grad(ctx.out, ctx.x_in, grad_out, retain_graph=True)
        return grad, None


class _TorchattacksModel(nn.Module):
    """Adapter that lets torchattacks components call any model: fp32 [0,1] images in, fp32 logits out.

    The wrapped model is deliberately not registered as a submodule, so torchattacks' own train/eval toggling and
    `next(model.parameters())` only ever see the empty anchor parameter (which gives them the device).
    """

    def __init__(self, call: Callable[[Tensor], Tensor], device: torch.device):
        super().__init__()
        object.__setattr__(self, "_call", call)
        self.anchor = nn.Parameter(torch.empty(0, device=device), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _InputGradOnly.apply(x, self._call)
        with torch.no_grad():
            return self._call(x)


@ATTACKS.register("autoattack")
class AutoAttack(Attack):
    r"""AutoAttack (Croce & Hein 2020, arXiv 2003.01690), run as its "standard" version by default.

    "standard" runs APGD-CE (100 iterations, no restarts), APGD-T (9 target classes, 100 iterations), FAB-T (9
    target classes, 100 iterations; arXiv 1907.02044) and Square (5,000 queries; arXiv 1912.00049) one after the
    other, each only on the points every earlier attack failed to break. FAB-T and Square are torchattacks 3.3
    components, wrapped so that they see [0, 1] images, cannot touch parameter gradients, and have their global-RNG
    seeding confined by `torch.random.fork_rng`. Reported numbers must use this configuration: torchattacks' own
    `AutoAttack` builds its APGD/APGD-T with torchattacks' default of 10 iterations and is *not* the standard one.
    `is_standard` tells whether this instance is.

    `x_adv` is the first point found that is misclassified (the clean image where the model was already wrong, the
    clean image where every attack failed); `x_max_loss` equals `x_adv` and `loss` is the cross-entropy there.
    `success` comes from one final forward pass on `x_adv`.

    Args:
        model (`nn.Module` or `Callable`):
            Classifier mapping images in [0, 1] to `[B, n_classes]` logits; normalisation lives inside it.
        norm (`str`, *optional*, defaults to `"Linf"`):
            "Linf" or "L2".
        eps (`float`):
            Radius of the ε-ball in [0, 1] pixel units.
        version (`str`, *optional*, defaults to `"standard"`):
            "standard" (APGD-CE, APGD-T, FAB-T, Square) or "fast" (APGD-CE and APGD-T only, the protocol of the
            FARE / RobustVLM CLIP tables); ignored when `attacks_to_run` is given.
        n_classes (`int`):
            Number of classes of the classifier.
        seed (`int`, *optional*, defaults to 0):
            Seed shared by all component attacks.
        attacks_to_run (`Sequence[str]`, *optional*):
            Explicit list drawn from "apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square", run in the given order.
        steps (`int`, *optional*, defaults to 100):
            Iterations of the APGD and FAB components.
        n_target_classes (`int`, *optional*, defaults to 9):
            Target classes of APGD-T and FAB-T (clipped to n_classes − 1).
        square_queries (`int`, *optional*, defaults to 5000):
            Query budget of Square.
        input_dtype (`torch.dtype`, *optional*):
            Dtype the model is fed; defaults to the model's parameter dtype.
        sample_seeds (`torch.Tensor`, *optional*):
            Per-image seeds of the APGD components' random starts (see `Attack`).

    The component losses are fixed (the protocol), so AutoAttack takes no `loss_fn`.
    """

    def __init__(
        self,
        model: nn.Module | Callable[[Tensor], Any],
        *,
        norm: str = "Linf",
        eps: float,
        version: str = "standard",
        n_classes: int,
        seed: int = 0,
        attacks_to_run: Sequence[str] | None = None,
        steps: int = _STANDARD_STEPS,
        n_target_classes: int = _STANDARD_TARGETS,
        square_queries: int = _STANDARD_QUERIES,
        input_dtype: torch.dtype | None = None,
        sample_seeds: Tensor | None = None,
    ):
        super().__init__(model, norm=norm, eps=eps, steps=steps, loss_fn=ce_loss, seed=seed, input_dtype=input_dtype,
                         sample_seeds=sample_seeds)
        if attacks_to_run is None:
            if version not in _VERSIONS:
                raise ValueError(f"Unknown AutoAttack version {version!r}; use one of {sorted(_VERSIONS)}.")
            attacks_to_run = _VERSIONS[version]
        unknown = [name for name in attacks_to_run if name not in _KNOWN]
        if unknown or not attacks_to_run:
            raise ValueError(f"attacks_to_run must be a non-empty list drawn from {list(_KNOWN)}, got {attacks_to_run}.")
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}.")
        self.version = version
        self.attacks_to_run = tuple(attacks_to_run)
        self.n_classes = int(n_classes)
        self.n_target_classes = int(n_target_classes)
        self.square_queries = int(square_queries)

    @property
    def is_standard(self) -> bool:
        """True when this is AutoAttack's standard configuration (the one numbers should be reported with)."""
        return (
            self.attacks_to_run == STANDARD_ATTACKS
            and self.steps == _STANDARD_STEPS
            and min(self.n_target_classes, self.n_classes - 1) == min(_STANDARD_TARGETS, self.n_classes - 1)
            and self.square_queries == _STANDARD_QUERIES
        )

    def __repr__(self) -> str:
        return (
            f"AutoAttack(norm={self.norm!r}, eps={self.eps:.6g}, attacks={list(self.attacks_to_run)}, "
            f"steps={self.steps}, n_target_classes={self.n_target_classes}, square_queries={self.square_queries}, "
            f"seed={self.seed}, standard={self.is_standard})"
        )

    def _component(self, name: str, wrapped: _TorchattacksModel) -> Callable[[Tensor, Tensor], Tensor]:
        """Return `attack(x, y) -> x_adv` for one component, on fp32 images."""
        common = {"norm": self.norm, "eps": self.eps, "seed": self.seed, "input_dtype": self._model_dtype}
        if name in ("apgd-ce", "apgd-dlr"):
            apgd = APGD(self.model, steps=self.steps, loss_fn=name.split("-")[1], n_restarts=1, **common)
            return apgd
        if name == "apgd-t":
            return APGDT(self.model, steps=self.steps, n_target_classes=self.n_target_classes, **common)

        # Only FAB-T and Square need torchattacks. Both call torch.manual_seed / torch.cuda.manual_seed; the base
        # class's fork_rng undoes that for the CPU and the images' device. Known gap: with CPU images on a machine
        # whose CUDA is not initialised yet, torch queues the CUDA seed lazily and fork_rng cannot undo it.
        import torchattacks

        if name == "fab-t":
            fab = torchattacks.FAB(
                wrapped, norm=self.norm, eps=self.eps, steps=self.steps, n_restarts=1, seed=self.seed,
                multi_targeted=True, n_classes=self.n_classes,
            )
            # torchattacks derives n_classes − 1 targets; the standard version uses 9 (fewer when there are fewer).
            fab.n_target_classes = min(self.n_target_classes, self.n_classes - 1)
            return fab
        return torchattacks.Square(
            wrapped, norm=self.norm, eps=self.eps, n_queries=self.square_queries, n_restarts=1, seed=self.seed,
            p_init=0.8, loss="margin", resc_schedule=True,
        )

    def _perturb(self, x: Tensor, target: Tensor, generator: torch.Generator) -> AttackResult:
        batch = x.shape[0]
        if not is_labels(target, batch):
            raise ValueError("AutoAttack needs integer class labels of shape [B] as target.")
        with torch.no_grad():
            clean = self._forward(x)
        if not is_logits(clean, batch) or clean.shape[1] != self.n_classes:
            got = tuple(clean.shape) if isinstance(clean, Tensor) else type(clean).__name__
            raise ValueError(f"AutoAttack needs [B, {self.n_classes}] logits (n_classes={self.n_classes}), got {got}.")
        if x.dim() != 4 and ("square" in self.attacks_to_run or "fab-t" in self.attacks_to_run):
            raise ValueError("FAB-T and Square need [B, C, H, W] images.")

        robust = clean.argmax(dim=1) == target
        x_adv = x.clone()
        wrapped = _TorchattacksModel(lambda inp: self._forward(inp).float(), x.device)
        for name in self.attacks_to_run:
            # One host sync per component attack.
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            attack = self._component(name, wrapped)
            x_sub, y_sub = x[idx], target[idx]
            if isinstance(attack, Attack) and self.sample_seeds is not None:  # the APGD components
                adv = attack(x_sub, y_sub, sample_seeds=self.sample_seeds[idx.cpu()]).float()
            else:
                adv = attack(x_sub, y_sub).float()
            # FAB and Square keep their own bookkeeping; re-project and re-check everything the same way.
            adv = self._clip(x_sub, adv)
            with torch.no_grad():
                fooled = self._forward(adv).argmax(dim=1) != y_sub
            x_adv[idx] = torch.where(self._view(fooled, x_sub), adv, x_adv[idx])
            robust[idx] = robust[idx] & ~fooled

        with torch.no_grad():
            out = self._forward(x_adv)
        loss = ce_loss(out, target)
        return AttackResult(x_adv=x_adv, x_max_loss=x_adv, loss=loss, success=out.argmax(dim=1) != target)
