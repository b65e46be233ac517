"""Read / write CLIP checkpoints in open_clip's native layout."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..utils.io import atomic_save_safetensors, atomic_write_json

OPEN_CLIP_CONFIG_NAME = "open_clip_config.json"
OPEN_CLIP_WEIGHTS_NAME = "open_clip_model.safetensors"
VLMROBUST_CONFIG_NAME = "vlmrobust_config.json"


def save_open_clip(
    model: nn.Module,
    save_directory: str | os.PathLike,
    model_cfg: dict,
    preprocess_cfg: dict,
    state_dict: dict[str, torch.Tensor] | None = None,
    extra_config: dict | None = None,
) -> Path:
    """Save an open_clip model as `open_clip_config.json` + `open_clip_model.safetensors` (+ vlmrobust's JSON).

    Each file is written atomically, weights first, so an interrupted save never leaves a config pointing at
    missing or truncated weights.

    Args:
        model (`nn.Module`): the open_clip `CLIP` model.
        save_directory (`str`): target folder (created).
        model_cfg (`dict`): open_clip model config (`embed_dim`, `vision_cfg`, `text_cfg`, ...).
        preprocess_cfg (`dict`): open_clip preprocess config (`size`, `mean`, `std`, `interpolation`, ...).
        state_dict (`dict`, *optional*): weights to write instead of `model.state_dict()`.
        extra_config (`dict`, *optional*): written to `vlmrobust_config.json` (method, training config, results).
    """
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    sd = state_dict if state_dict is not None else model.state_dict()
    sd = {k: v.detach().to("cpu") for k, v in sd.items()}
    atomic_save_safetensors(out / OPEN_CLIP_WEIGHTS_NAME, sd, metadata={"format": "pt"})
    atomic_write_json(out / OPEN_CLIP_CONFIG_NAME, {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg})
    meta = {"vlmrobust_version": __version__, "backend": "open_clip", **(extra_config or {})}
    atomic_write_json(out / VLMROBUST_CONFIG_NAME, meta)
    return out
