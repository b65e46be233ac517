"""Shared configuration of every robust fine-tuning method: `TrainingArguments` + the threat model + ε schedule."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from transformers import TrainingArguments

from .. import __version__
from ..attacks import ATTACKS, check_budget
from ..optim import parse_weight_space
from .schedules import EpsilonSchedule


@dataclass
class RobustTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the inner attack, its budget schedule and the weight-space hooks.

    Args:
        method (`str`): name of the method in the `METHODS` registry (set by each subclass).
        attack (`str`, *optional*, defaults to `"pgd"`): training attack, any attack of the `ATTACKS` registry that
            takes the method's loss as `loss_fn`: `"pgd"`, or `"apgd"` (APGD on the method's loss, max-loss point,
            no early stop, as in arXiv 2508.14079's AT study).
        attack_options (`dict` or `str`, *optional*): extra keyword arguments of the training attack (a JSON object
            on the command line, e.g. `'{"rho": 0.5}'`), over the attack's own `training_defaults`.
        attack_norm (`str`, *optional*, defaults to `"Linf"`): `"Linf"` or `"L2"`.
        epsilon (`float`, *optional*, defaults to 4/255): budget in [0, 1] pixel units (4/255, not 4).
        attack_steps (`int`, *optional*, defaults to 10): inner iterations.
        attack_step_size (`float`, *optional*, defaults to 1/255): PGD step α (FARE's reference value).
        attack_random_start (`bool`, *optional*, defaults to `True`): uniform start in the ε-ball.
        attack_momentum (`float`, *optional*, defaults to 0.0): PGD momentum μ (0: none; FARE's reference uses 0.9).
        attack_momentum_style (`str`, *optional*, defaults to `"fare"`): `"fare"`, the FARE reference's rule
            `v ← s(μ·v + s(∇))` (s = sign for L∞, L2-normalisation for L2; under L∞ with μ < 1 it is the plain sign
            step wherever ∇ ≠ 0), or `"mi-fgsm"` (`v ← μ·v + ∇/‖∇‖₁`, step along s(v)).
        attack_seed (`int`, *optional*): base seed of the attack's own generator; defaults to `seed`. The attack at
            optimizer step t, micro-batch k on rank r uses a seed derived from (attack_seed, t, k, r), so resumed runs repeat it.
        attack_seed_scope (`str`, *optional*, defaults to `"sample"`): what the random start is keyed to.
            `"sample"`: each image's start comes from (attack_seed, step, the image's position in the global
            batch), so 1 process and N processes (and any gradient-accumulation split of the same global batch)
            train the same model. `"rank"`: one draw per micro-batch keyed to (attack_seed, step, micro-batch,
            rank), the behaviour of vlmrobust 0.1.0 before this option, which the README's quickstart tables were measured with.
        epsilon_schedule (`str`, *optional*, defaults to `"constant"`): `"constant"` or `"linear"`
            (Epsilon-Scheduling, arXiv 2509.23325: 0 until T1, linear ramp to ε at T2, then constant).
        epsilon_schedule_start (`float`, *optional*, defaults to 0): T1.
        epsilon_schedule_end (`float`, *optional*, defaults to 0): T2.
        epsilon_schedule_unit (`str`, *optional*, defaults to `"steps"`): unit of T1 / T2, `"steps"` or `"epochs"`.
        weight_space (`str`, *optional*, defaults to `"none"`): weight-space hooks from `vlmrobust.optim.WEIGHT_SPACE`,
            `'+'`-joined: `"l2sp"` (L2-SP, arXiv 1802.01483). Hooks that read θ₀ make the trainer keep the shared
            frozen snapshot of the trained module.
        l2sp_lambda (`float`, *optional*, defaults to 0.01): λ of L2-SP, `g ← g + λ·(θ − θ₀)` (no paper default for
            CLIP; tune it).
    """

    method: str = field(default="base", metadata={"help": "Method name in the METHODS registry."})
    attack: str = field(default="pgd", metadata={"help": "Training attack from the attack registry: 'pgd', 'apgd'."})
    attack_options: dict | str | None = field(default=None, metadata={
        "help": "Extra keyword arguments of the training attack, as a JSON object (e.g. '{\"rho\": 0.5}')."})
    attack_norm: str = field(default="Linf", metadata={"help": "Threat model: 'Linf' or 'L2'."})
    epsilon: float = field(default=4 / 255, metadata={"help": "Budget in [0,1] pixel units, e.g. 0.0157 = 4/255."})
    attack_steps: int = field(default=10, metadata={"help": "Inner attack iterations."})
    attack_step_size: float | None = field(default=1 / 255, metadata={"help": "PGD step size (pixel units)."})
    attack_random_start: bool = field(default=True, metadata={"help": "Random uniform start in the eps-ball."})
    attack_momentum: float = field(default=0.0, metadata={"help": "Momentum on the PGD step (FARE ref.: 0.9)."})
    attack_momentum_style: str = field(default="fare", metadata={"help": "'fare' (FARE reference) or 'mi-fgsm'."})
    attack_seed: int | None = field(default=None, metadata={"help": "Attack seed (defaults to --seed)."})
    attack_seed_scope: str = field(default="sample", metadata={
        "help": "'sample': random starts keyed to the image's position in the global batch (same model on 1 or N "
                "processes); 'rank': keyed to (micro-batch, rank)."})
    epsilon_schedule: str = field(default="constant", metadata={"help": "'constant' or 'linear' (Eps-Scheduling)."})
    epsilon_schedule_start: float = field(default=0.0, metadata={"help": "T1: eps is 0 before it."})
    epsilon_schedule_end: float = field(default=0.0, metadata={"help": "T2: eps reaches its target here."})
    epsilon_schedule_unit: str = field(default="steps", metadata={"help": "'steps' or 'epochs'."})
    weight_space: str = field(default="none", metadata={
        "help": "Weight-space hooks, '+'-joined names from vlmrobust.optim.WEIGHT_SPACE (e.g. 'l2sp'), or 'none'."})
    l2sp_lambda: float = field(default=0.01, metadata={"help": "L2-SP lambda: g <- g + lambda * (theta - theta_0)."})

    # Trainer defaults that suit image-only robust training
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep pixel_values/labels columns."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Loggers; no telemetry by default."})

    def __post_init__(self):
        if self.attack not in ATTACKS:
            raise ValueError(f"attack {self.attack!r} is not a registered attack; registered: "
                             f"{', '.join(ATTACKS.names())}.")
        if isinstance(self.attack_options, str):
            text = self.attack_options.strip()
            self.attack_options = json.loads(text) if text else None
        if self.attack_options is not None and not isinstance(self.attack_options, dict):
            raise ValueError(f"attack_options must be a mapping (JSON object), got {self.attack_options!r}.")
        parse_weight_space(self.weight_space)
        if not self.l2sp_lambda >= 0:
            raise ValueError(f"l2sp_lambda must be >= 0, got {self.l2sp_lambda}.")
        self.attack_norm = {"linf": "Linf", "l2": "L2"}.get(str(self.attack_norm).lower(), self.attack_norm)
        if self.attack_momentum_style not in ("fare", "mi-fgsm"):
            raise ValueError(f"attack_momentum_style must be 'fare' (the FARE reference's rule) or 'mi-fgsm', got "
                             f"{self.attack_momentum_style!r}.")
        check_budget(self.attack_norm, self.epsilon)
        if self.attack_steps < 1:
            raise ValueError(f"attack_steps must be >= 1, got {self.attack_steps}.")
        if self.attack_step_size is not None:
            if self.attack_step_size <= 0:
                raise ValueError(f"attack_step_size must be > 0, got {self.attack_step_size}.")
            if self.attack_norm == "Linf" and self.attack_step_size > 1:
                raise ValueError(
                    f"attack_step_size={self.attack_step_size} is larger than the [0,1] pixel range: "
                    f"did you mean {self.attack_step_size:g}/255?"
                )
        if self.attack_seed_scope not in ("sample", "rank"):
            raise ValueError(f"attack_seed_scope must be 'sample' or 'rank', got '{self.attack_seed_scope}'.")
        if self.attack_seed is None:
            self.attack_seed = self.seed
        _ = self.epsilon_scheduler  # validates the schedule fields
        super().__post_init__()

    @property
    def epsilon_scheduler(self) -> EpsilonSchedule:
        return EpsilonSchedule(self.epsilon, self.epsilon_schedule, self.epsilon_schedule_start,
                               self.epsilon_schedule_end, self.epsilon_schedule_unit)

    # -- JSON round trip ------------------------------------------------------------------------------------------
    def to_vlmrobust_dict(self) -> dict:
        """The config as saved next to checkpoints: `method`, `vlmrobust_version` and every argument."""
        return {"method": self.method, "vlmrobust_version": __version__, "config": _jsonable(self.to_dict())}

    def save_json(self, path: str | os.PathLike) -> Path:
        from ..utils.io import atomic_write_json

        return atomic_write_json(path, self.to_vlmrobust_dict())

    @classmethod
    def from_dict(cls, d: dict) -> RobustTrainingArguments:
        names = {f.name for f in fields(cls) if f.init}
        return cls(**{k: v for k, v in d.items() if k in names})


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        try:
            json.dumps(v)
            out[k] = v
        except TypeError:
            out[k] = str(v)
    return out
