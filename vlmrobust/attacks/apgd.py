"""Auto-PGD (APGD) and its targeted-DLR variant (APGD-T), the evaluation attacks."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .base import ATTACKS, Attack, AttackResult, LossFn, is_labels, is_logits
from .losses import dlr_targeted_loss, resolve_loss


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations at which APGD may halve its step size: w_j = ⌈p_j·steps⌉ with p_0 = 0, p_1 = 0.22 and
    p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06) (Croce & Hein 2020, section 3.2)."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    points = sorted({math.ceil(pj * steps - 1e-9) for pj in p[1:]})
    return [w for w in points if 0 < w <= steps]


@dataclass
class _Run:
    """Per-sample outcome of one APGD run on a sub-batch (fp32 perturbations)."""

    delta_best: Tensor
    loss_best: Tensor
    delta_adv: Tensor
    success: Tensor | None


@ATTACKS.register("apgd")
class APGD(Attack):
    r"""Auto-PGD (Croce & Hein 2020, arXiv 2003.01690).

    Step size starts at 2ε and is halved at the checkpoints of `apgd_checkpoints(steps)` for every sample where
    fewer than a fraction `rho` of the steps since the last checkpoint increased the loss, or where neither the step
    size nor the best loss changed since the last checkpoint; such samples then restart from their best point (with
    the momentum term reset to zero). Updates use momentum 0.75 (the paper's α):
    `z = Π(x_k + η·s(∇)),  x_{k+1} = Π(x_k + 0.75·(z − x_k) + 0.25·(x_k − x_{k−1}))`.

    With class labels the attack records the first misclassified point; with `early_stop` each sample stops moving
    once it is misclassified (a per-sample mask: the model always sees the whole sub-batch, so a model that closes
    over per-sample state sees consistent batches within a run), points misclassified before the attack are not
    attacked, and restarts only run on still-robust points. With any other target every restart runs on the whole
    batch and keeps the max-loss point.

    Args:
        model (`nn.Module` or `Callable`):
            Maps images in [0, 1] to outputs; normalisation lives inside it.
        norm (`str`, *optional*, defaults to `"Linf"`):
            "Linf" or "L2".
        eps (`float`):
            Radius of the ε-ball in [0, 1] pixel units.
        steps (`int`, *optional*, defaults to 100):
            Iterations per restart (each costs one forward + input-backward; one more forward scores the clean
            input).
        n_restarts (`int`, *optional*, defaults to 1):
            Number of runs from fresh random starts.
        loss_fn (`str` or `Callable`, *optional*, defaults to `"ce"`):
            "ce", "dlr" or any `loss_fn(output, target) -> [B]` to maximise (embedding distances, LM likelihoods).
            The same keyword as every other attack; the old spelling `loss=` still works, with a
            `DeprecationWarning`.
        rho (`float`, *optional*, defaults to 0.75):
            Fraction of loss-increasing steps below which the step size is halved at a checkpoint.
        seed (`int`, *optional*, defaults to 0):
            Seed of the random starts.
        eot_iter (`int`, *optional*, defaults to 1):
            Gradients averaged per step (Expectation over Transformation, for randomised models).
        random_start (`bool`, *optional*, defaults to `True`):
            Start from a uniform sample of the ε-ball instead of the clean image.
        early_stop (`bool`, *optional*, defaults to `True`):
            With label targets, stop moving samples once misclassified. Turn it off when the max-loss point of every
            sample is wanted (e.g. adversarial training with APGD).
        n_classes (`int`, *optional*):
            Expected number of classes; checked against the logits when given.
        input_dtype (`torch.dtype`, *optional*):
            Dtype the model is fed; defaults to the model's parameter dtype. The perturbation stays fp32.
        return_max_loss (`bool`, *optional*, defaults to `False`):
            Return the max-loss point as `x_adv` (what `attack(images, target)` gives) instead of the first
            misclassified one; the training default (adversarial training on the max-loss point, arXiv 2508.14079).
        sample_seeds (`torch.Tensor`, *optional*):
            Per-image seeds of the random starts (see `Attack`).

    Debugging: set `record_step_sizes = True` on an instance and each call leaves in `step_sizes` one `[steps, B_run]`
    tensor per run (restart, target class), row k holding the per-sample step size η used at iteration k. Off by
    default; when on it costs one `[B]` copy per iteration.
    """

    momentum = 0.75
    record_step_sizes = False
    # as the training attack: every sample's max-loss point, no early stop once misclassified
    training_defaults = {"early_stop": False, "return_max_loss": True}

    def __init__(
        self,
        model: nn.Module | Callable[[Tensor], Any],
        *,
        norm: str = "Linf",
        eps: float,
        steps: int = 100,
        n_restarts: int = 1,
        loss_fn: str | LossFn = "ce",
        rho: float = 0.75,
        seed: int = 0,
        eot_iter: int = 1,
        random_start: bool = True,
        early_stop: bool = True,
        n_classes: int | None = None,
        input_dtype: torch.dtype | None = None,
        return_max_loss: bool = False,
        sample_seeds: Tensor | None = None,
        loss: str | LossFn | None = None,
    ):
        if loss is not None:
            warnings.warn("APGD(loss=...) is deprecated: use loss_fn=..., the keyword every attack takes.",
                          DeprecationWarning, stacklevel=2)
            loss_fn = loss
        super().__init__(model, norm=norm, eps=eps, steps=steps, loss_fn=resolve_loss(loss_fn), seed=seed,
                         input_dtype=input_dtype, sample_seeds=sample_seeds)
        if n_restarts < 1 or eot_iter < 1:
            raise ValueError(f"n_restarts and eot_iter must be >= 1, got {n_restarts} and {eot_iter}.")
        #: name of the loss (for `repr`)
        self.loss = loss_fn.lower() if isinstance(loss_fn, str) else getattr(loss_fn, "__name__", "callable")
        self.return_max_loss = bool(return_max_loss)
        self.n_restarts = int(n_restarts)
        self.rho = float(rho)
        self.eot_iter = int(eot_iter)
        self.random_start = bool(random_start)
        self.early_stop = bool(early_stop)
        self.n_classes = n_classes
        self.checkpoints = apgd_checkpoints(self.steps)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(norm={self.norm!r}, eps={self.eps:.6g}, steps={self.steps}, "
            f"n_restarts={self.n_restarts}, loss={self.loss!r}, seed={self.seed})"
        )

    # -- one run ------------------------------------------------------------------------------------------------

    def _eval(self, x: Tensor, delta: Tensor, target: Tensor, loss_fn: LossFn, need_grad: bool):
        if self.eot_iter == 1 or not need_grad:
            return self._loss_and_grad(x, delta, target, loss_fn, need_grad=need_grad)
        loss_sum, grad_sum, out = None, None, None
        for _ in range(self.eot_iter):
            loss, grad, out = self._loss_and_grad(x, delta, target, loss_fn)
            loss_sum = loss if loss_sum is None else loss_sum + loss
            grad_sum = grad if grad_sum is None else grad_sum + grad
        return loss_sum / self.eot_iter, grad_sum / self.eot_iter, out

    def _run(
        self, x: Tensor, target: Tensor, loss_fn: LossFn, labels: Tensor | None, generator: torch.Generator
    ) -> _Run:
        """One APGD run on `x`; `labels` (or None) decides success and early stopping, `target` feeds the loss."""
        batch = x.shape[0]

        def bview(t: Tensor) -> Tensor:
            return self._view(t, x)

        delta = self._random_init(x, generator) if self.random_start else torch.zeros_like(x)
        loss, grad, out = self._eval(x, delta, target, loss_fn, need_grad=self.steps > 0)
        if labels is not None and not is_logits(out, batch):
            labels = None

        best_loss, best_delta = loss.clone(), delta.clone()
        best_grad = grad.clone() if grad is not None else None
        success = adv_delta = None
        active = torch.ones(batch, dtype=torch.bool, device=x.device)
        if labels is not None:
            success = out.argmax(dim=1) != labels
            adv_delta = torch.where(bview(success), delta, torch.zeros_like(delta))
            if self.early_stop:
                active = ~success

        eta = torch.full((batch,), 2 * self.eps, device=x.device)
        delta_prev, loss_prev = delta, loss
        n_increase = torch.zeros(batch, device=x.device)
        best_at_check = best_loss.clone()
        reduced_at_check = torch.zeros(batch, dtype=torch.bool, device=x.device)
        last_check = 0
        checkpoints = set(self.checkpoints)
        a = self.momentum
        trace: list[Tensor] | None = [] if self.record_step_sizes else None

        for k in range(self.steps):
            if trace is not None:
                trace.append(eta.clone())
            z = self._project(x, delta + bview(eta) * self._step_direction(grad))
            if k == 0:
                new = z
            else:
                new = self._project(x, delta + a * (z - delta) + (1 - a) * (delta - delta_prev))
            moving = bview(active)
            delta_prev, delta = torch.where(moving, delta, delta_prev), torch.where(moving, new, delta)

            # The gradient at the final iterate would never be used: a plain forward scores it.
            loss, grad_new, out = self._eval(x, delta, target, loss_fn, need_grad=k < self.steps - 1)
            grad = grad_new if grad_new is not None else grad

            n_increase += ((loss > loss_prev) & active).float()
            loss_prev = loss
            better = (loss > best_loss) & active
            best_loss = torch.where(better, loss, best_loss)
            best_delta = torch.where(bview(better), delta, best_delta)
            if grad_new is not None:
                best_grad = torch.where(bview(better), grad, best_grad)

            if labels is not None:
                newly = (out.argmax(dim=1) != labels) & ~success
                adv_delta = torch.where(bview(newly), delta, adv_delta)
                success = success | newly
                if self.early_stop:
                    active = active & ~success

            if (k + 1) in checkpoints and k < self.steps - 1:
                window = (k + 1) - last_check
                too_few_increases = n_increase < self.rho * window
                stalled = ~reduced_at_check & (best_loss <= best_at_check)
                reduce = (too_few_increases | stalled) & active
                eta = torch.where(reduce, eta / 2, eta)
                back = bview(reduce)
                delta = torch.where(back, best_delta, delta)
                delta_prev = torch.where(back, best_delta, delta_prev)
                grad = torch.where(back, best_grad, grad)
                loss_prev = torch.where(reduce, best_loss, loss_prev)
                reduced_at_check = reduce
                best_at_check = best_loss.clone()
                n_increase.zero_()
                last_check = k + 1

        if trace is not None:
            self.step_sizes.append(torch.stack(trace) if trace else eta.new_empty(0, batch))
        if success is not None:
            adv_delta = torch.where(bview(success), adv_delta, best_delta)
        else:
            adv_delta = best_delta
        return _Run(best_delta, best_loss, adv_delta, success)

    # -- restarts -----------------------------------------------------------------------------------------------

    def _runs(
        self,
        x: Tensor,
        labels: Tensor | None,
        generator: torch.Generator,
        make_target: Callable[[Tensor], tuple[Tensor, LossFn]],
        rounds: int,
        state: dict[str, Tensor | None],
        subset: bool,
    ) -> None:
        """Run `rounds` APGD runs, merging into `state`; with `subset` each runs only on still-robust points.

        `make_target(idx)` returns the loss target and loss function for the sub-batch `idx`.
        """
        batch = x.shape[0]
        for _ in range(rounds):
            if subset and labels is not None:
                # One host sync per run, not per iteration.
                idx = (~state["success"]).nonzero().squeeze(1)
                if idx.numel() == 0:
                    return
            else:
                idx = torch.arange(batch, device=x.device)
            sub_target, loss_fn = make_target(idx)
            self._init_index = idx
            run = self._run(x[idx], sub_target, loss_fn, None if labels is None else labels[idx], generator)
            self._init_index = None
            better = run.loss_best > state["loss"][idx]
            state["loss"][idx] = torch.where(better, run.loss_best, state["loss"][idx])
            state["delta_best"][idx] = torch.where(self._view(better, x), run.delta_best, state["delta_best"][idx])
            if labels is not None and run.success is not None:
                newly = run.success & ~state["success"][idx]
                state["delta_adv"][idx] = torch.where(self._view(newly, x), run.delta_adv, state["delta_adv"][idx])
                state["success"][idx] = state["success"][idx] | newly

    def _init_state(self, x: Tensor, target: Tensor, loss_fn: LossFn) -> tuple[dict[str, Tensor | None], Any]:
        """Score the clean input: it seeds the max-loss point and marks points misclassified before any attack.

        Also starts a fresh `step_sizes` record (see the class docstring)."""
        self.step_sizes: list[Tensor] = []
        loss, _, out = self._loss_and_grad(x, torch.zeros_like(x), target, loss_fn, need_grad=False)
        state: dict[str, Tensor | None] = {
            "loss": loss.clone(),
            "delta_best": torch.zeros_like(x),
            "delta_adv": torch.zeros_like(x),
            "success": None,
        }
        return state, out

    def _check_classes(self, out: Any) -> None:
        if self.n_classes is not None and isinstance(out, Tensor) and out.dim() == 2 and out.shape[1] != self.n_classes:
            raise ValueError(f"n_classes={self.n_classes} but the model returns {out.shape[1]} logits.")

    def _finish(self, x: Tensor, state: dict[str, Tensor | None]) -> AttackResult:
        success = state["success"]
        delta_adv = state["delta_best"] if success is None or self.return_max_loss else torch.where(
            success.view(-1, *([1] * (x.dim() - 1))), state["delta_adv"], state["delta_best"]
        )
        return AttackResult(
            x_adv=x + delta_adv, x_max_loss=x + state["delta_best"], loss=state["loss"], success=success
        )

    def _perturb(self, x: Tensor, target: Tensor, generator: torch.Generator) -> AttackResult:
        batch = x.shape[0]
        state, out = self._init_state(x, target, self.loss_fn)
        self._check_classes(out)
        labels = target if is_labels(target, batch) and is_logits(out, batch) else None
        if labels is not None:
            state["success"] = out.argmax(dim=1) != labels
        loss_fn = self.loss_fn
        subset = labels is not None and self.early_stop
        self._runs(x, labels, generator, lambda idx: (target[idx], loss_fn), self.n_restarts, state, subset)
        return self._finish(x, state)


@ATTACKS.register("apgd-t")
class APGDT(APGD):
    r"""Targeted APGD on the targeted DLR loss (Croce & Hein 2020, arXiv 2003.01690), as used in AutoAttack.

    For each target rank t = 2, …, n_target_classes + 1 the t-th largest clean logit becomes the target class of
    `dlr_targeted_loss`, and APGD runs (`n_restarts` times) on the points that are still classified correctly.
    Success is untargeted: a point counts as broken once it is misclassified as anything. `loss` in the result is
    the targeted DLR value of the run that produced `x_max_loss` (the clean point scores against the rank-2 class).

    Args:
        model (`nn.Module` or `Callable`):
            Classifier mapping images in [0, 1] to `[B, n_classes]` logits (n_classes >= 4).
        norm (`str`, *optional*, defaults to `"Linf"`):
            "Linf" or "L2".
        eps (`float`):
            Radius of the ε-ball in [0, 1] pixel units.
        steps (`int`, *optional*, defaults to 100):
            Iterations per target class and restart.
        n_target_classes (`int`, *optional*, defaults to 9):
            Number of target classes; clipped to n_classes − 1.
        n_restarts (`int`, *optional*, defaults to 1):
            Runs per target class.
        seed (`int`, *optional*, defaults to 0):
            Seed of the random starts.
        **kwargs:
            `rho`, `eot_iter`, `random_start`, `early_stop`, `n_classes`, `input_dtype`, `return_max_loss`,
            `sample_seeds` as in `APGD`.
    """

    def __init__(
        self,
        model: nn.Module | Callable[[Tensor], Any],
        *,
        norm: str = "Linf",
        eps: float,
        steps: int = 100,
        n_target_classes: int = 9,
        n_restarts: int = 1,
        seed: int = 0,
        rho: float = 0.75,
        eot_iter: int = 1,
        random_start: bool = True,
        early_stop: bool = True,
        n_classes: int | None = None,
        input_dtype: torch.dtype | None = None,
        return_max_loss: bool = False,
        sample_seeds: Tensor | None = None,
    ):
        super().__init__(
            model,
            norm=norm,
            eps=eps,
            steps=steps,
            n_restarts=n_restarts,
            loss_fn="dlr",
            rho=rho,
            seed=seed,
            eot_iter=eot_iter,
            random_start=random_start,
            early_stop=early_stop,
            n_classes=n_classes,
            input_dtype=input_dtype,
            return_max_loss=return_max_loss,
            sample_seeds=sample_seeds,
        )
        if n_target_classes < 1:
            raise ValueError(f"n_target_classes must be >= 1, got {n_target_classes}.")
        self.loss = "dlr-targeted"
        self.n_target_classes = int(n_target_classes)

    def __repr__(self) -> str:
        return (
            f"APGDT(norm={self.norm!r}, eps={self.eps:.6g}, steps={self.steps}, "
            f"n_target_classes={self.n_target_classes}, n_restarts={self.n_restarts}, seed={self.seed})"
        )

    def _perturb(self, x: Tensor, target: Tensor, generator: torch.Generator) -> AttackResult:
        batch = x.shape[0]
        if not is_labels(target, batch):
            raise ValueError("APGDT needs integer class labels of shape [B] as target.")
        with torch.no_grad():
            clean = self._forward(x)
        if not is_logits(clean, batch) or clean.shape[1] < 4:
            raise ValueError("APGDT needs a classifier returning [B, n_classes] logits with n_classes >= 4.")
        self._check_classes(clean)
        ranking = clean.argsort(dim=1, descending=True)
        n_targets = min(self.n_target_classes, clean.shape[1] - 1)

        def targeted(out: Any, labels_and_targets: Tensor) -> Tensor:
            return dlr_targeted_loss(out, labels_and_targets[:, 0], labels_and_targets[:, 1])

        # Labels and target classes travel together as the loss target so that sub-batching keeps them aligned.
        first = torch.stack([target, ranking[:, 1]], dim=1)
        state, _ = self._init_state(x, first, targeted)
        state["success"] = clean.argmax(dim=1) != target
        for rank in range(1, n_targets + 1):

            def make_target(idx: Tensor, rank: int = rank) -> tuple[Tensor, LossFn]:
                return torch.stack([target[idx], ranking[idx, rank]], dim=1), targeted

            self._runs(x, target, generator, make_target, self.n_restarts, state, subset=True)
        return self._finish(x, state)


def _fixed_loss(name: str, loss: str) -> Callable[..., APGD]:
    def build(model: nn.Module | Callable[[Tensor], Any], **kwargs: Any) -> APGD:
        if "loss_fn" in kwargs or "loss" in kwargs:
            raise TypeError(f"'{name}' fixes loss_fn={loss!r}; use build_attack('apgd', ..., loss_fn=...) for another "
                            "loss.")
        return APGD(model, loss_fn=loss, **kwargs)

    build.__name__ = build.__qualname__ = f"build_{name.replace('-', '_')}"
    build.__doc__ = f"`APGD` with `loss_fn={loss!r}`; keyword arguments as in `APGD`."
    build.training_defaults = APGD.training_defaults
    return build


ATTACKS.register("apgd-ce", _fixed_loss("apgd-ce", "ce"))
ATTACKS.register("apgd-dlr", _fixed_loss("apgd-dlr", "dlr"))
