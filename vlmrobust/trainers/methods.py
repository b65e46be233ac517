"""The method registry: each method registers itself, with its metadata, from its own trainer module.

A method is a config dataclass (subclassing `RobustTrainingArguments`, its `method` field defaulting to the
method's name), a `RobustTrainer` subclass, and one call::

    register_method("fare", FAREConfig, FARETrainer, paper="2402.12336", backends=CLIP_BACKENDS + LVLM_BACKENDS,
                    recipe="recipes/fare_clip.py")

at the bottom of its trainer module. The recipes, `load_config` and `vlmrobust info` read everything else from
here: whether the trainer takes the training set's class names, whether it trains a classifier (evaluated as
such) or an encoder (reloaded and evaluated zero-shot), which backends it trains.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from ..registry import Registry
from .base_config import RobustTrainingArguments

#: backends (`VisionLanguageModel.backend`) of zero-shot CLIP models, and of LVLMs whose vision tower trains
CLIP_BACKENDS: tuple[str, ...] = ("open_clip", "hf-clip")
LVLM_BACKENDS: tuple[str, ...] = ("llava", "qwen_vl")
#: backends the LVLM VQA fine-tuning methods (`digrap_vqa`, `grace_vqa`: LoRA + teacher-forced answer CE) train;
#: PaliGemma has no vision-tower methods (FARE's, R-Adapt's anchor) wired in, so it is only here
VQA_BACKENDS: tuple[str, ...] = LVLM_BACKENDS + ("paligemma",)


@dataclass(frozen=True)
class Method:
    """A registered method and what the recipes need to know about it.

    Args:
        name (`str`): registry name; the config's `method` field and the `method` of saved configs.
        config_class (`type[RobustTrainingArguments]`): the method's config dataclass.
        trainer_class (`type`): the method's `RobustTrainer` subclass.
        needs_classnames (`bool`, *optional*, defaults to `False`): the trainer takes `classnames=` (the training
            set's class names in label order), e.g. to build text embeddings or a classification head.
        trains_classifier (`bool` or `Callable[[RobustTrainingArguments], bool]`, *optional*, defaults to `False`):
            the trained artefact is a classifier (encoder + head, `trainer.model`), evaluated as such; otherwise the
            saved encoder is reloaded and evaluated zero-shot. A callable decides from the run's config (a method
            whose head is trained only with some options); see :meth:`is_classifier`.
        paper (`str`, *optional*): arXiv id of the method's paper, e.g. `"2402.12336"`.
        backends (`tuple[str, ...]`, *optional*): model backends it trains (`model.backend`); defaults to the CLIP
            backends.
        recipe (`str`, *optional*): the recipe script that runs it, relative to the repository root.
    """

    name: str
    config_class: type[RobustTrainingArguments]
    trainer_class: type
    needs_classnames: bool = False
    trains_classifier: bool | Callable[[RobustTrainingArguments], bool] = False
    paper: str | None = None
    backends: tuple[str, ...] = CLIP_BACKENDS
    recipe: str | None = None

    def is_classifier(self, args: RobustTrainingArguments) -> bool:
        """Whether a run with config `args` trains a classifier (see `trains_classifier`)."""
        return bool(self.trains_classifier(args) if callable(self.trains_classifier) else self.trains_classifier)

    def trainer_kwargs(self, train_dataset) -> dict:
        """The method-specific keyword arguments of `trainer_class` for this training set."""
        return {"classnames": list(train_dataset.classnames)} if self.needs_classnames else {}

    def check_backend(self, model) -> None:
        """Refuse, with the supported backends named, a model this method does not train."""
        backend = getattr(model, "backend", None)
        if backend not in self.backends:
            raise ValueError(f"Method {self.name!r} trains {', '.join(self.backends)} models, not a {backend!r} model.")


METHODS: Registry[Method] = Registry("method")


def register_method(name: str, config_class: type[RobustTrainingArguments], trainer_class: type,
                    **metadata) -> Method:
    """Register a method (call it once, from the method's own module); a duplicate name raises `ValueError`.

    Args:
        name (`str`): the method's name; `config_class.method` must default to it.
        config_class (`type[RobustTrainingArguments]`): its config dataclass.
        trainer_class (`type`): its trainer.
        **metadata: the other fields of `Method` (`needs_classnames`, `trains_classifier`, `paper`, `backends`,
            `recipe`).

    Returns:
        `Method`: the registered entry.
    """
    if not (isinstance(config_class, type) and issubclass(config_class, RobustTrainingArguments)):
        raise TypeError(f"register_method({name!r}): config_class must subclass RobustTrainingArguments, got "
                        f"{config_class!r}.")
    default = next((f.default for f in fields(config_class) if f.name == "method"), MISSING)
    if default != name:
        raise ValueError(f"register_method({name!r}): {config_class.__name__}.method defaults to {default!r}; set "
                         f"`method: str = field(default={name!r})` so saved configs load back through the registry.")
    method = Method(name, config_class, trainer_class, **metadata)
    METHODS.register(name, method)
    return method


def resolve_method(method: str | type[RobustTrainingArguments] | Method) -> Method:
    """A `Method` from its name, its config class, or itself."""
    if isinstance(method, Method):
        return method
    if isinstance(method, type):
        name = next((f.default for f in fields(method) if f.name == "method"), None)
        found = METHODS.get(name)
        if found.config_class is not method:
            raise ValueError(f"{method.__name__} is not the registered config of method {name!r} "
                             f"({found.config_class.__name__} is); register it under its own name.")
        return found
    return METHODS.get(method)


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
