"""`WeightSpaceRunner`: applies a trainer's gradient transforms and post-step constraints, and checkpoints them."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback

from ..layout import WEIGHT_SPACE_STATE_NAME
from .full_tensors import get_full_grad, get_full_param, set_full_grad, set_full_param
from .hooks import GradientTransform, PostStepConstraint, WeightSpaceHook
from .reference import ReferenceWeights

_FORMAT = 1


class WeightSpaceRunner:
    """A trainer's weight-space hooks, the shared θ₀ they read, and their checkpointed state.

    The trainer calls :meth:`after_backward` once per optimizer step, after the last micro-batch's backward (its
    gradients accumulated and all-reduced) and before the step, and :meth:`after_step` right after the step. Both go
    over the trained module's parameters one whole tensor at a time, in `named_parameters()` order, on every rank
    (under ZeRO the accessors are collective; every rank computes the same result).

    Args:
        transforms (`Sequence[GradientTransform]`): applied in order to each trainable tensor's gradient.
        constraints (`Sequence[PostStepConstraint]`): applied in order to each trainable tensor after the step.
        reference (`ReferenceWeights`, *optional*): θ₀, required when a hook `needs_reference`.
    """

    def __init__(self, transforms: Sequence[GradientTransform] = (), constraints: Sequence[PostStepConstraint] = (),
                 reference: ReferenceWeights | None = None):
        for kind, hooks, cls in (("gradient_transforms", transforms, GradientTransform),
                                 ("post_step_constraints", constraints, PostStepConstraint)):
            bad = [h for h in hooks if not isinstance(h, cls)]
            if bad:
                raise TypeError(f"{kind} takes {cls.__name__} instances, got {bad[0]!r}.")
        self.transforms = list(transforms)
        self.constraints = list(constraints)
        self.reference = reference
        if self.needs_reference and reference is None:
            raise ValueError("A weight-space hook needs θ₀ but no ReferenceWeights were given.")

    @property
    def hooks(self) -> list[WeightSpaceHook]:
        return [*self.transforms, *self.constraints]

    @property
    def needs_reference(self) -> bool:
        return any(h.needs_reference for h in self.hooks)

    @property
    def acts_after_backward(self) -> bool:
        """Whether :meth:`after_backward` has work: gradient transforms, or constraints that observe the gradient."""
        return bool(self.transforms) or any(c.observes_gradient for c in self.constraints)

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def _ref(self, hook: WeightSpaceHook, name: str, device: torch.device) -> torch.Tensor | None:
        return self.reference.anchor(name, device) if hook.needs_reference else None

    # -- the two hook points -----------------------------------------------------------------------------------------
    def after_backward(self, module: nn.Module, grad_scale: float = 1.0) -> None:
        """Apply the gradient transforms to every trainable tensor of `module` that has a gradient, then show the
        result to the post-step constraints that observe it (`PostStepConstraint.observes_gradient`).

        Args:
            module (`nn.Module`): the trained module, unwrapped (its names key the hooks' state and θ₀).
            grad_scale (`float`, *optional*, defaults to 1.0): the fp16 loss scale the gradients still carry; the
                transforms see (and return) unscaled gradients.
        """
        if not self.acts_after_backward:
            return
        observers = [c for c in self.constraints if c.observes_gradient]
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            active = [t for t in self.transforms if t.applies_to(name)]
            watching = [c for c in observers if c.applies_to(name)]
            if not active and not watching:
                continue
            grad = get_full_grad(p)
            if grad is None:  # a parameter the loss does not reach (no .grad without DeepSpeed)
                continue
            # the parameter's own fp32, unscaled .grad is transformed in place (no copy in, none out); a gathered
            # (ZeRO) or cast / unscaled gradient is a copy and is written back
            in_place = bool(active) and grad is p.grad and grad.dtype == torch.float32 and grad_scale == 1.0
            if in_place:
                g = grad
            else:
                g = grad.float() / grad_scale if grad_scale != 1.0 else grad.float().clone()
            theta = get_full_param(p).to(g.device)
            for t in active:
                g = t.transform(name, theta, g, self._ref(t, name, g.device))
            for c in watching:
                c.observe(name, theta, g, self._ref(c, name, g.device))
            if active and not (in_place and g is grad):
                set_full_grad(p, (g * grad_scale if grad_scale != 1.0 else g).to(grad.dtype))

    def after_step(self, module: nn.Module) -> None:
        """Apply the post-step constraints to every trainable tensor of `module`."""
        if not self.constraints:
            return
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            active = [c for c in self.constraints if c.applies_to(name)]
            if not active:
                continue
            theta = get_full_param(p)
            new = None
            for c in active:
                out = c.apply(name, theta if new is None else new, self._ref(c, name, theta.device))
                new = out if out is not None else new
            if new is not None:
                set_full_param(p, new)

    # -- checkpoints -------------------------------------------------------------------------------------------------
    def _keys(self) -> list[str]:
        keys, seen = [], {}
        for h in self.hooks:
            base = h.state_key or type(h).__name__
            seen[base] = seen.get(base, 0) + 1
            keys.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
        return keys

    def state_dict(self) -> dict:
        """Every hook's state (by hook key, then parameter name) and θ₀'s fingerprint."""
        return {"format": _FORMAT, "hooks": {k: h.state_dict() for k, h in zip(self._keys(), self.hooks)},
                "reference": self.reference.fingerprint() if self.reference is not None else None}

    def load_state_dict(self, state: dict, param_names: Sequence[str] = (), where: str = "the checkpoint") -> None:
        """Restore :meth:`state_dict`; `param_names` (the trained module's) are checked against the saved names."""
        if state.get("format") != _FORMAT:
            raise ValueError(f"Weight-space state in {where} has format {state.get('format')!r}; this vlmrobust reads "
                             f"format {_FORMAT}.")
        saved, keys = state.get("hooks", {}), self._keys()
        if set(saved) != set(keys):
            raise ValueError(f"{where} holds weight-space state for {sorted(saved)} but this run has the hooks "
                             f"{keys}: resume with the same `weight_space` / hooks as the interrupted run.")
        known = set(param_names)
        for key, hook in zip(keys, self.hooks):
            unknown = sorted(set(saved[key].get("state", {})) - known) if known else []
            if unknown:
                raise ValueError(f"{where}: {key} has state for parameters this model lacks, e.g. {unknown[:3]}.")
            hook.load_state_dict(saved[key])
        if self.reference is not None and state.get("reference") is not None:
            self.reference.check_fingerprint(state["reference"], where)

    def save(self, folder: str | os.PathLike) -> Path | None:
        """Write the state into checkpoint `folder` (atomically); nothing when there are no hooks and no θ₀."""
        if not self.hooks and self.reference is None:
            return None
        path = Path(folder) / WEIGHT_SPACE_STATE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            torch.save(self.state_dict(), tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path

    def load(self, folder: str | os.PathLike, param_names: Sequence[str] = ()) -> bool:
        """Restore the state from checkpoint `folder`. Returns whether a state file was there.

        Raises:
            FileNotFoundError: when hooks are configured but the checkpoint has no state for them (written by a run
                without them, or with `save_only_model`).
        """
        path = Path(folder) / WEIGHT_SPACE_STATE_NAME
        if not path.is_file():
            if self.hooks:
                raise FileNotFoundError(f"{folder} has no {WEIGHT_SPACE_STATE_NAME}: it was not written by a run with "
                                        f"these weight-space hooks ({self._keys()}), so their state cannot be resumed.")
            return False
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), param_names, str(folder))
        return True


class PostStepCallback(TrainerCallback):
    """Runs the constraints after the optimizer step of a Trainer that steps the optimizer itself (not DeepSpeed,
    whose step the trainer calls explicitly and follows with :meth:`WeightSpaceRunner.after_step` itself).

    Args:
        trainer (`transformers.Trainer`): the trainer whose `weight_space` runner and model to use.
    """

    def __init__(self, trainer):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        t = self.trainer
        if t.is_deepspeed_enabled:
            return
        if t.accelerator.optimizer_step_was_skipped:  # fp16 overflow: the weights did not move
            return
        t.weight_space.after_step(t.accelerator.unwrap_model(t.model))
