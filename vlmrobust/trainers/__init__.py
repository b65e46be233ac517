"""Robust fine-tuning methods: one config dataclass + one small Trainer subclass each.

Each method registers itself in `METHODS` (with its metadata) from its own `<method>_trainer.py`; importing this
package imports every `*_trainer.py` module here, so a new built-in method needs no line in this file.
"""

from __future__ import annotations

import importlib
import pkgutil

from .adversarial_config import AdversarialConfig
from .adversarial_trainer import AdversarialTrainer, CosineClassifier
from .base_config import RobustTrainingArguments
from .base_trainer import RobustTrainer, frozen_copy, image_collator
from .digrap_config import DiGraPConfig
from .digrap_trainer import DiGraPTrainer
from .digrap_vqa_config import DiGraPVQAConfig
from .digrap_vqa_trainer import DiGraPVQATrainer
from .fare_config import FAREConfig
from .fare_trainer import FARETrainer, fare_distance
from .grace_config import GRACEConfig
from .grace_trainer import GRACETrainer
from .methods import CLIP_BACKENDS, LVLM_BACKENDS, METHODS, Method, load_config, register_method, resolve_method
from .radapt_config import RAdaptConfig
from .radapt_trainer import RAdaptTrainer
from .schedules import EpsilonSchedule
from .tecoa_config import TeCoAConfig
from .tecoa_trainer import TeCoATrainer

for _module in pkgutil.iter_modules(__path__):
    if _module.name.endswith("_trainer"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "CLIP_BACKENDS", "LVLM_BACKENDS", "METHODS", "AdversarialConfig", "AdversarialTrainer", "CosineClassifier",
    "DiGraPConfig", "DiGraPTrainer", "DiGraPVQAConfig", "DiGraPVQATrainer", "EpsilonSchedule", "FAREConfig",
    "FARETrainer", "GRACEConfig", "GRACETrainer",
    "Method", "RAdaptConfig", "RAdaptTrainer", "RobustTrainer",
    "RobustTrainingArguments", "TeCoAConfig", "TeCoATrainer",
    "fare_distance", "frozen_copy", "image_collator", "load_config", "register_method", "resolve_method",
]
