"""Robust fine-tuning methods: one config dataclass + one small Trainer subclass each, registered in METHODS."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..registry import Registry
from .adversarial_config import AdversarialConfig
from .adversarial_trainer import AdversarialTrainer, CosineClassifier
from .base_config import RobustTrainingArguments
from .base_trainer import RobustTrainer, frozen_copy, image_collator
from .fare_config import FAREConfig
from .fare_trainer import FARETrainer, fare_distance
from .radapt_config import RAdaptConfig
from .radapt_trainer import RAdaptTrainer
from .schedules import EpsilonSchedule
from .tecoa_config import TeCoAConfig
from .tecoa_trainer import TeCoATrainer


@dataclass(frozen=True)
class Method:
    config_class: type[RobustTrainingArguments]
    trainer_class: type[RobustTrainer]


METHODS: Registry[Method] = Registry("method")
METHODS.register("fare", Method(FAREConfig, FARETrainer))
METHODS.register("tecoa", Method(TeCoAConfig, TeCoATrainer))
METHODS.register("adversarial", Method(AdversarialConfig, AdversarialTrainer))
METHODS.register("radapt", Method(RAdaptConfig, RAdaptTrainer))


def load_config(path: str | os.PathLike) -> RobustTrainingArguments:
    """Load a saved method config (`vlmrobust_config.json` or a folder holding it) through the registry."""
    p = Path(path)
    if p.is_dir():
        p = p / "vlmrobust_config.json"
    data = json.loads(p.read_text())
    if "method" not in data:
        raise ValueError(f"{p} has no 'method' field: not a vlmrobust method config.")
    cls = METHODS.get(data["method"]).config_class
    return cls.from_dict(data.get("config", {}))


__all__ = [
    "METHODS", "AdversarialConfig", "AdversarialTrainer", "CosineClassifier", "EpsilonSchedule", "FAREConfig",
    "FARETrainer", "Method", "RAdaptConfig", "RAdaptTrainer", "RobustTrainer", "RobustTrainingArguments",
    "TeCoAConfig", "TeCoATrainer",
    "fare_distance", "frozen_copy", "image_collator", "load_config",
]
