"""Adversarial attacks in [0, 1] pixel space: PGD (training), APGD / APGD-T and AutoAttack (evaluation).

All attacks share one contract (see `Attack`): seeded by their own generator under `torch.random.fork_rng`,
gradients taken with respect to the perturbation only, fp32 perturbations for bf16 models, eval mode during the
attack and the caller's mode restored afterwards. New attacks register with `@ATTACKS.register("name")` and are
built by name with `build_attack`.
"""

from .apgd import APGD, APGDT, apgd_checkpoints
from .autoattack import STANDARD_ATTACKS, AutoAttack
from .base import ATTACKS, Attack, AttackResult, build_attack, check_budget
from .losses import ce_loss, dlr_loss, dlr_targeted_loss
from .pgd import PGD
from .vlm import AnswerLoss, attack_answers, ensemble_attack

__all__ = [
    "ATTACKS",
    "APGD",
    "APGDT",
    "AnswerLoss",
    "Attack",
    "AttackResult",
    "AutoAttack",
    "PGD",
    "STANDARD_ATTACKS",
    "apgd_checkpoints",
    "attack_answers",
    "build_attack",
    "ce_loss",
    "check_budget",
    "dlr_loss",
    "dlr_targeted_loss",
    "ensemble_attack",
]
