"""Helpers for runs launched with `accelerate launch` (DDP, multi-node, DeepSpeed ZeRO), CPU or GPU."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence

_TRUE = ("1", "true", "yes", "on")


def launched_on_cpu() -> bool:
    """True when this process was launched to train on CPU.

    That is `accelerate launch --cpu` / `use_cpu: true` (the launcher exports `ACCELERATE_USE_CPU`), or a distributed
    launch (`WORLD_SIZE` > 1, or accelerate's DeepSpeed launcher, which exports no CPU flag at all) on a machine
    without an accelerator. The training arguments must then say `use_cpu=True`, or `transformers` counts a single
    process (DeepSpeed: `train_batch_size ... != ... * world_size`).
    """
    if os.environ.get("ACCELERATE_USE_CPU", "false").strip().lower() in _TRUE:
        return True
    distributed = (int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
                   or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").strip().lower() in _TRUE)
    if not distributed:
        return False
    import torch

    return not torch.accelerator.is_available()


def zero_stage(args) -> int:
    """The DeepSpeed ZeRO stage the Trainer will use for these training arguments (0 without DeepSpeed).

    Reads `args.deepspeed` (a JSON path or dict) or, under `accelerate launch` with a DeepSpeed config, the plugin
    built from the launcher's environment.
    """
    ds = getattr(args, "hf_deepspeed_config", None)
    if ds is not None:
        return int(ds.config.get("zero_optimization", {}).get("stage", 0))
    plugin = getattr(args, "deepspeed_plugin", None)
    if plugin is not None:
        return int(plugin.zero_stage or 0)
    cfg = getattr(args, "deepspeed", None)
    if cfg:
        cfg = cfg if isinstance(cfg, dict) else json.loads(open(cfg).read())
        return int(cfg.get("zero_optimization", {}).get("stage", 0))
    return 0


def check_zero_stage(args, supported: Sequence[int], name: str) -> None:
    """Refuse, at start, a DeepSpeed ZeRO stage a method does not support (0 = no DeepSpeed)."""
    stage = zero_stage(args)
    if stage not in supported:
        names = ", ".join("no DeepSpeed / DDP" if s == 0 else f"ZeRO-{s}" for s in supported)
        raise ValueError(f"{name} does not support DeepSpeed ZeRO-{stage}; supported: {names}. Launch with another "
                         "accelerate config (recipes/accelerate_configs/) or DeepSpeed JSON (recipes/ds_configs/).")


@contextlib.contextmanager
def outside_zero3_init() -> Iterator[None]:
    """Build models in full, even when ZeRO-3 training arguments exist.

    `transformers` partitions every model loaded with `from_pretrained` while a ZeRO-3 config is alive
    (`deepspeed.zero.Init`). vlmrobust's trainers copy frozen reference encoders from the model before the Trainer
    sees it, and save untouched towers next to the trained one, so the model must be whole on every rank; ZeRO-3
    partitions the trained module when the Trainer wraps it.
    """
    try:
        from transformers.integrations import deepspeed as hf_ds
    except ImportError:  # pragma: no cover - transformers always ships it
        yield
        return
    saved = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved
