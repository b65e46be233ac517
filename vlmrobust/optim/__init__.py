"""Weight-space methods: the shared θ₀ snapshot, gradient transforms and post-step constraints.

A method that needs the pretrained weights θ₀ reads them from one `ReferenceWeights` the trainer keeps (FARE's frozen
target encoder, L2-SP, DiGraP, FTP, SPD, WiSE-FT). `GradientTransform`s rewrite each tensor's full gradient between
the full backward and the optimizer step; `PostStepConstraint`s rewrite each tensor right after the step; both work
with and without DeepSpeed ZeRO (`full_tensors`) and keep their state by parameter name. New ones register a
factory with `@WEIGHT_SPACE.register("name")` and are chosen with the config's `weight_space`.

GRACE's pieces (arXiv 2603.27139) live here too: the Gram volume loss (`gram`), the curvature EMA and rank allocation
(`curvature`) and the low-rank adversarial weight perturbation (`lar_awp`).
"""

from .curvature import CurvatureEMA, allocate_ranks
from .digrap import DiGraP, ScalarAdam
from .ftp import FTP
from .full_tensors import get_full_grad, get_full_param, set_full_grad, set_full_param
from .gram import gram_volume
from .hooks import (
    WEIGHT_SPACE,
    GradientTransform,
    PostStepConstraint,
    WeightSpaceHook,
    build_weight_space,
    parse_weight_space,
)
from .l2sp import L2SP
from .lar_awp import LowRankWeightPerturbation, low_rank_ascent
from .reference import ReferenceWeights, frozen_copy, is_lora_adapter
from .runner import PostStepCallback, WeightSpaceRunner
from .spd import SPD

__all__ = [
    "FTP", "L2SP", "SPD", "WEIGHT_SPACE", "CurvatureEMA", "DiGraP", "GradientTransform", "LowRankWeightPerturbation",
    "PostStepCallback", "PostStepConstraint", "ReferenceWeights", "ScalarAdam", "WeightSpaceHook", "WeightSpaceRunner",
    "allocate_ranks", "build_weight_space", "frozen_copy", "get_full_grad", "get_full_param", "gram_volume",
    "is_lora_adapter", "low_rank_ascent", "parse_weight_space", "set_full_grad", "set_full_param",
]
