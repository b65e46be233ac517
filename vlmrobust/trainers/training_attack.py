"""The inner maximisation's attack, built by name from the attack registry (`ATTACKS`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from ..attacks import ATTACKS, Attack, ce_loss

#: config field -> the attack keyword it feeds, passed only to attacks whose constructor takes that keyword
_OPTIONAL = {"alpha": "attack_step_size", "momentum": "attack_momentum", "momentum_style": "attack_momentum_style"}


def _keywords(builder: Callable) -> set[str]:
    """Keyword arguments `builder` takes by name; a class's `__init__(*args, **kwargs)` takes its parents' too."""
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names: set[str] = set()
    for target in ([c.__dict__["__init__"] for c in builder.__mro__ if "__init__" in c.__dict__]
                   if isinstance(builder, type) else [builder]):
        params = inspect.signature(target).parameters.values()
        names |= {p.name for p in params if p.kind in kinds}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return names


def training_attack_kwargs(args, *, eps: float, loss_fn: Callable, seed: int, random_start: bool,
                           sample_seeds: torch.Tensor | None) -> dict[str, Any]:
    """The keyword arguments the training attack `args.attack` is built with.

    Every attack gets the threat model, budget, steps, `loss_fn`, seed, random start and per-image seeds; the step
    size and momentum settings go to attacks that take them (`alpha`, `momentum`, `momentum_style`: PGD); then the
    attack's own `training_defaults` (APGD: no early stop, max-loss point) and the config's `attack_options`.
    """
    builder = ATTACKS.get(args.attack)
    kwargs = dict(norm=args.attack_norm, eps=eps, steps=args.attack_steps, loss_fn=loss_fn, seed=seed,
                  random_start=random_start, sample_seeds=sample_seeds)
    accepted = _keywords(builder)
    kwargs.update({k: getattr(args, f) for k, f in _OPTIONAL.items() if k in accepted})
    kwargs.update(getattr(builder, "training_defaults", {}))
    kwargs.update(args.attack_options or {})
    return kwargs


def build_training_attack(args, forward: Callable[[torch.Tensor], Any], **kw) -> Attack:
    """`build_attack(args.attack, forward, **training_attack_kwargs(args, **kw))`."""
    return ATTACKS.get(args.attack)(forward, **training_attack_kwargs(args, **kw))


def check_training_attack(args) -> None:
    """Fail at start, not at the first step, when `args.attack` cannot be built as a training attack (it fixes its
    own loss, such as `apgd-ce` or `autoattack`, or `attack_options` has a keyword it does not take)."""
    try:
        build_training_attack(args, lambda x: x, eps=args.epsilon, loss_fn=ce_loss, seed=0,
                              random_start=args.attack_random_start, sample_seeds=None)
    except (TypeError, ValueError) as err:
        raise ValueError(f"attack {args.attack!r} cannot be the training attack: {err}. A training attack takes the "
                         f"method's loss as `loss_fn` (e.g. 'pgd', 'apgd'); registered attacks: "
                         f"{', '.join(ATTACKS.names())}.") from err
