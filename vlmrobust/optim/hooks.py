"""The weight-space hook types and their registry.

A *gradient transform* rewrites each parameter tensor's full gradient once per optimizer step, between the last
micro-batch's backward and the optimizer step (DiGraP, L2-SP). A *post-step constraint* rewrites each parameter
tensor right after the optimizer step (FTP, SPD, a ball around θ₀). Both work on one whole tensor at a time,
whatever DeepSpeed does to it (see `WeightSpaceRunner`), and keep their state per parameter *name*, so it survives a
resume and a change of the optimizer's parameter order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from ..registry import Registry


class WeightSpaceHook:
    """What gradient transforms and post-step constraints share: which tensors they touch, whether they need θ₀,
    and their state.

    Class attributes:
        needs_reference (`bool`): the hook reads θ₀; the trainer then keeps the shared snapshot (`ReferenceWeights`)
            and passes each tensor's θ₀ as `ref` (otherwise `ref` is None).
        state_key (`str`, *optional*): name of the hook's state in checkpoints; defaults to the class name.

    Attributes:
        state (`dict[str, dict[str, Any]]`): per-parameter state, keyed by the trained module's parameter name.
            Values are tensors (any device) or Python numbers; they are saved into each checkpoint and restored
            on `--resume_from_checkpoint` through `state_dict` / `load_state_dict`.
    """

    needs_reference: bool = False
    state_key: str | None = None

    def __init__(self):
        self.state: dict[str, dict[str, Any]] = {}

    def applies_to(self, name: str) -> bool:
        """Whether the hook touches parameter `name` (default: every trainable parameter)."""
        return True

    def state_dict(self) -> dict[str, Any]:
        """The hook's state, per parameter name (tensors moved to the CPU)."""
        state = getattr(self, "state", {})
        return {"state": {n: {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in s.items()}
                          for n, s in state.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (tensors arrive on the CPU; move them lazily when used)."""
        self.state = {n: dict(s) for n, s in state_dict.get("state", {}).items()}


class GradientTransform(WeightSpaceHook):
    """Rewrites a parameter tensor's gradient once per optimizer step.

    Called after the last micro-batch's backward and before the optimizer step (and before gradient clipping, so
    what it adds is clipped with the rest), on the *full* gradient: accumulated over the micro-batches, averaged
    over the processes, gathered under DeepSpeed ZeRO-2 / 3 and unscaled under fp16 loss scaling.

    Subclasses implement :meth:`transform`.
    """

    def transform(self, name: str, param: Tensor, grad: Tensor, ref: Tensor | None) -> Tensor:
        """The new gradient of parameter `name`.

        Args:
            name (`str`): the parameter's name in the trained module (`trainer.model.named_parameters()`).
            param (`torch.Tensor`): its current value θ, whole, fp32 (DeepSpeed's fp32 master copy under ZeRO).
                Read-only.
            grad (`torch.Tensor`): its full gradient, fp32. May be modified in place and returned.
            ref (`torch.Tensor`, *optional*): its θ₀ when `needs_reference`, else None.

        Returns:
            `torch.Tensor`: the gradient the optimizer will use (same shape).
        """
        raise NotImplementedError


class PostStepConstraint(WeightSpaceHook):
    """Rewrites a parameter tensor right after the optimizer step (e.g. a projection back towards θ₀).

    Subclasses implement :meth:`apply`.
    """

    def apply(self, name: str, param: Tensor, ref: Tensor | None) -> Tensor | None:
        """The constrained value of parameter `name`, or None to leave it as the optimizer left it.

        Args:
            name (`str`): the parameter's name in the trained module.
            param (`torch.Tensor`): its value after the step, whole, fp32 (DeepSpeed's fp32 master copy under
                ZeRO). Read-only: return a new tensor.
            ref (`torch.Tensor`, *optional*): its θ₀ when `needs_reference`, else None.

        Returns:
            `torch.Tensor` or None: the new value (written to the model and, under DeepSpeed, to the fp32 master
            copy the optimizer keeps), or None for no change.
        """
        raise NotImplementedError


#: name -> `factory(args) -> GradientTransform | PostStepConstraint`; the config's `weight_space` picks from it
WEIGHT_SPACE: Registry[Callable[[Any], WeightSpaceHook]] = Registry("weight-space method")


def parse_weight_space(spec: str | None) -> list[str]:
    """`"l2sp"`, `"l2sp+ftp"`, `"none"` / `""` -> the list of names, each checked against `WEIGHT_SPACE`."""
    names = [] if spec in (None, "", "none") else [s.strip() for s in str(spec).split("+") if s.strip()]
    unknown = [n for n in names if n not in WEIGHT_SPACE]
    if unknown:
        raise ValueError(f"weight_space {spec!r}: unknown {unknown}; registered: "
                         f"{', '.join(WEIGHT_SPACE.names()) or 'none'} ('+'-joined, or 'none').")
    return names


def build_weight_space(args) -> list[WeightSpaceHook]:
    """The hooks the config's `weight_space` names, built from the config (in the order given)."""
    return [WEIGHT_SPACE.get(n)(args) for n in parse_weight_space(getattr(args, "weight_space", None))]
