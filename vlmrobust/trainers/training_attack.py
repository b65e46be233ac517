"""The inner maximisation: the attack built by name from the attack registry (`ATTACKS`), its seeds and ε."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..attacks import ATTACKS, Attack, ce_loss
from ..attacks.base import eval_mode
from .performance import frozen_parameters

#: config field -> the attack keyword it feeds, passed only to attacks whose constructor takes that keyword
_OPTIONAL = {"alpha": "attack_step_size", "momentum": "attack_momentum", "momentum_style": "attack_momentum_style"}


@functools.lru_cache(maxsize=64)
def _keywords(builder: Callable) -> frozenset[str]:
    """Keyword arguments `builder` takes by name; a class's `__init__(*args, **kwargs)` takes its parents' too."""
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names: set[str] = set()
    for target in ([c.__dict__["__init__"] for c in builder.__mro__ if "__init__" in c.__dict__]
                   if isinstance(builder, type) else [builder]):
        params = inspect.signature(target).parameters.values()
        names |= {p.name for p in params if p.kind in kinds}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return frozenset(names)


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


class AttackLoop:
    """The attack half of `RobustTrainer` (a mixin before `transformers.Trainer`): the ε schedule, the attack seeds
    (a function of the optimizer step, the micro-batch and the image's position in the global batch, so resumed and
    re-split runs repeat them) and :meth:`adversarial_examples`.
    """

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch, as the Trainer counts them for its own epoch boundaries.

        Taken from the Trainer's prepared training dataloader when training starts (so `dataloader_drop_last`, the
        number of processes and gradient accumulation count exactly as they do for the Trainer); before that, the
        same count is derived from the dataset size.
        """
        if getattr(self, "_steps_per_epoch", None):
            return self._steps_per_epoch
        a = self.args
        per_batch = a.per_device_train_batch_size * max(a.world_size, 1)
        n = len(self.train_dataset) if self.train_dataset is not None else per_batch
        batches = n // per_batch if a.dataloader_drop_last else math.ceil(n / per_batch)
        return max(math.ceil(batches / a.gradient_accumulation_steps), 1)

    def set_initial_training_values(self, args, dataloader, *rest, **kwargs):
        values = super().set_initial_training_values(args, dataloader, *rest, **kwargs)
        # (num_train_epochs, num_update_steps_per_epoch, ...): the count the Trainer uses for epoch boundaries
        self._steps_per_epoch = max(int(values[1]), 1)
        return values

    @property
    def current_epsilon(self) -> float:
        """ε at the current optimizer step under the configured schedule."""
        return self.args.epsilon_scheduler(self.state.global_step, self.steps_per_epoch)

    def _next_attack_seed(self) -> int:
        step = self.state.global_step
        k = self._micro_step[1] + 1 if self._micro_step[0] == step else 0
        self._micro_step = (step, k)
        # a fixed function of (seed, optimizer step, micro-batch, rank): a resumed run repeats the same attacks,
        # and ranks do not share random starts
        rank = self.args.process_index
        return (int(self.args.attack_seed) * 1_000_003 + step * 1_009 + k * 7 + rank * 104_729) % (2**63 - 1)

    def _sample_seeds(self, n: int) -> torch.Tensor:
        """Per-image seeds of the random start, keyed to each image's position in the *global* batch.

        accelerate hands micro-batch k of rank r (of N, per-device batch B) the global batch number k·N + r of the
        optimizer step, so image i sits at position (k·N + r)·B + i: 1 process with batch N·B and N processes
        with batch B (or any split into accumulation steps) give every image the same start.
        """
        a = self.args
        k = self._micro_batch[1] if self._micro_batch[0] == self.state.global_step else 0
        first = (k * max(a.world_size, 1) + a.process_index) * a.per_device_train_batch_size
        base = (int(a.attack_seed) * 1_000_003 + self.state.global_step * 1_009 + self._attack_call * 7) % 2**61
        self._attack_call += 1
        return (base + torch.arange(first, first + n, dtype=torch.int64) * 104_729) % 2**61

    def adversarial_examples(self, forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                             target: torch.Tensor, loss_fn: Callable, epsilon: float | None = None,
                             module: nn.Module | None = None, random_start: bool | None = None) -> torch.Tensor:
        """Maximise `loss_fn(forward(x + δ), target)` over the ε-ball with the configured attack (`args.attack`, built
        through the attack registry with `loss_fn=`; see `training_attack_kwargs`).

        `forward` must be the unwrapped module (or a function of it), never a DeepSpeed engine / DDP wrapper:
        the attack takes gradients w.r.t. δ only, so parameter gradients and optimizer buffers stay untouched.
        `module` is the network inside `forward` when `forward` is a plain function: it is put in eval mode for the
        attack and restored afterwards. `random_start` overrides the config (a loss with zero gradient at δ = 0,
        such as TRADES' KL, needs one). Returns detached adversarial images (the clean ones when ε is 0).
        """
        eps = self.current_epsilon if epsilon is None else epsilon
        self._metrics["epsilon"].append(torch.tensor(float(eps)))
        seed = self._next_attack_seed()
        if eps <= 0:
            return images.detach()
        a = self.args
        rs = a.attack_random_start if random_start is None else random_start
        sample_seeds = self._sample_seeds(images.shape[0]) if a.attack_seed_scope == "sample" else None
        # gradients w.r.t. δ only: with the weights frozen, eager autograd records no weight-gradient graph in the
        # attack's forwards, and a compiled encoder's backward computes no weight gradients (not under ZeRO, whose
        # partitioned parameters keep their flags)
        trained = None if getattr(self, "is_deepspeed_enabled", False) else self._attack_frozen_module()
        atk = build_training_attack(a, forward, eps=eps, loss_fn=loss_fn, seed=seed, random_start=rs,
                                    sample_seeds=sample_seeds)
        atk.check_inputs = False  # the trainer's own [0, 1] batches: no host sync to re-check them
        # `module` (when `forward` is a plain function) in eval mode for the attack, each submodule's mode restored
        with eval_mode(module), frozen_parameters(trained):
            return atk(images, target).detach()

    def _attack_frozen_module(self) -> nn.Module | None:
        """The module whose parameters are frozen while the attack runs (the trained one)."""
        model = getattr(self, "model", None)
        return self.unwrapped(model) if model is not None and hasattr(self, "unwrapped") else model
