"""Perturbation-budget schedules: constant, or Epsilon-Scheduling (arXiv 2509.23325)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EpsilonSchedule:
    """ε as a function of training progress.

    `constant` gives ε throughout. `linear` is Epsilon-Scheduling: ε = 0 until `start` (T1), a linear ramp to ε at
    `end` (T2), then ε. The exact shape between T1 and T2 is a reconstruction (methods.md, [recon]): the paper says
    only that the budget grows from 0 to the target.

    Args:
        epsilon (`float`): target budget in [0, 1] pixel units.
        kind (`str`, *optional*, defaults to `"constant"`): `"constant"` or `"linear"`.
        start (`float`, *optional*, defaults to 0): T1, in `unit`s.
        end (`float`, *optional*, defaults to 0): T2, in `unit`s.
        unit (`str`, *optional*, defaults to `"steps"`): `"steps"` or `"epochs"` (fractional epochs allowed).
    """

    epsilon: float
    kind: str = "constant"
    start: float = 0.0
    end: float = 0.0
    unit: str = "steps"

    def __post_init__(self):
        if self.kind not in ("constant", "linear"):
            raise ValueError(f"epsilon_schedule must be 'constant' or 'linear', got '{self.kind}'.")
        if self.unit not in ("steps", "epochs"):
            raise ValueError(f"epsilon_schedule_unit must be 'steps' or 'epochs', got '{self.unit}'.")
        if self.kind == "linear" and not (0 <= self.start <= self.end):
            raise ValueError(
                f"Epsilon-Scheduling needs 0 <= start (T1) <= end (T2); got start={self.start}, end={self.end}."
            )

    def __call__(self, step: int, steps_per_epoch: float | None = None) -> float:
        """ε at optimizer step `step` (0-based); `steps_per_epoch` is needed when `unit == "epochs"`."""
        if self.kind == "constant":
            return self.epsilon
        t = float(step)
        if self.unit == "epochs":
            if not steps_per_epoch:
                raise ValueError("An epoch-based epsilon schedule needs steps_per_epoch.")
            t = step / steps_per_epoch
        if t < self.start:
            return 0.0
        if t >= self.end:
            return self.epsilon
        return self.epsilon * (t - self.start) / (self.end - self.start)
