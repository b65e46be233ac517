"""Checkpoint file names and layout detection, in one place.

A vlmrobust output folder is in its backend's *native* layout, so the backend's own library loads it:

- `open_clip`: `open_clip_config.json` + `open_clip_model.safetensors` (`open_clip.create_model_and_transforms(
  "local-dir:<dir>")`);
- `transformers`: `config.json` + `*.safetensors` (`CLIPModel` / `LlavaForConditionalGeneration` / Qwen
  `from_pretrained`);
- `peft`: `adapter_config.json` + `adapter_model.safetensors` (a LoRA / PEFT adapter of a LLaVA or Qwen-VL model;
  `PeftModel.from_pretrained(<base model>, <dir>)`);
- `radapt`: `radapt_config.json` + `radapt_anchor.safetensors` (anchors and settings only, no backbone weights;
  `create_model("radapt:<dir>")`).

vlmrobust adds `vlmrobust_config.json` (the method config) and, for tensors a native layout has no place for (a
trained classification head), `vlmrobust_extra.safetensors`; training checkpoints (`checkpoint-<step>/`) also hold
`vlmrobust_weight_space.pt` when weight-space hooks or θ₀ are used.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

OPEN_CLIP_CONFIG_NAME = "open_clip_config.json"
OPEN_CLIP_WEIGHTS_NAME = "open_clip_model.safetensors"
HF_CONFIG_NAME = "config.json"
HF_WEIGHTS_NAME = "model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
RADAPT_CONFIG_NAME = "radapt_config.json"
RADAPT_WEIGHTS_NAME = "radapt_anchor.safetensors"
VLMROBUST_CONFIG_NAME = "vlmrobust_config.json"
EXTRA_WEIGHTS_NAME = "vlmrobust_extra.safetensors"
#: in each training checkpoint folder: the weight-space hooks' state and θ₀'s fingerprint (`vlmrobust.optim`)
WEIGHT_SPACE_STATE_NAME = "vlmrobust_weight_space.pt"
#: in each GRACE training checkpoint folder: the LAR-AWP curvature EMA and ranks (`vlmrobust.optim.lar_awp`)
LAR_AWP_STATE_NAME = "vlmrobust_lar_awp.json"

#: layout -> the files that make it complete (a glob where the name varies, e.g. sharded transformers weights)
REQUIRED_FILES = {
    "open_clip": (OPEN_CLIP_CONFIG_NAME, OPEN_CLIP_WEIGHTS_NAME),
    "transformers": (HF_CONFIG_NAME, "*.safetensors"),
    "peft": (PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME),
    "radapt": (RADAPT_CONFIG_NAME, RADAPT_WEIGHTS_NAME),
}

#: files and folders only needed to resume training (optimizer, scheduler, RNG, pickled arguments, which hold the Hub
#: token, intermediate checkpoints), kept out of a published model; globs relative to the output folder
TRAINING_STATE_PATTERNS = ("optimizer.pt", "scheduler.pt", "rng_state*.pth", "trainer_state.json",
                           "training_args.bin", "checkpoint-*", "global_step*", "latest", "zero_to_fp32.py", "*.tmp",
                           "vlmrobust_weight_space.pt")


def detect_layout(folder: str | os.PathLike) -> str | None:
    """`"radapt"`, `"open_clip"`, `"peft"` or `"transformers"` from the config file a folder holds (None: none).

    Only the config file decides; :func:`missing_files` says whether the layout is complete.
    """
    path = Path(folder)
    if (path / RADAPT_CONFIG_NAME).is_file():
        return "radapt"
    if (path / OPEN_CLIP_CONFIG_NAME).is_file():
        return "open_clip"
    if (path / PEFT_CONFIG_NAME).is_file() and not (path / HF_CONFIG_NAME).is_file():
        return "peft"
    if (path / HF_CONFIG_NAME).is_file():
        return "transformers"
    return None


def hf_model_type(folder: str | os.PathLike) -> str | None:
    """`model_type` of a transformers folder's `config.json` (`clip`, `llava`, `qwen2_vl`, ...), or None."""
    import json

    cfg = Path(folder) / HF_CONFIG_NAME
    if not cfg.is_file():
        return None
    try:
        return json.loads(cfg.read_text()).get("model_type")
    except (ValueError, OSError):
        return None


def missing_files(folder: str | os.PathLike, layout: str) -> list[str]:
    """The files (or globs) `layout` needs that `folder` lacks."""
    path = Path(folder)
    return [name for name in REQUIRED_FILES[layout]
            if not (any(path.glob(name)) if "*" in name else (path / name).is_file())]


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
    from . import __version__
    from .utils.io import atomic_save_safetensors, atomic_write_json

    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    sd = state_dict if state_dict is not None else model.state_dict()
    sd = {k: v.detach().to("cpu") for k, v in sd.items()}
    atomic_save_safetensors(out / OPEN_CLIP_WEIGHTS_NAME, sd, metadata={"format": "pt"})
    atomic_write_json(out / OPEN_CLIP_CONFIG_NAME, {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg})
    meta = {"vlmrobust_version": __version__, "backend": "open_clip", **(extra_config or {})}
    atomic_write_json(out / VLMROBUST_CONFIG_NAME, meta)
    return out


def saved_key(native: str, saved: Mapping) -> str | None:
    """The key a native state-dict entry has in a saved checkpoint: transformers' `save_pretrained` writes some
    models in their legacy layout (LLaVA's `model.vision_tower.*` as `vision_tower.*`, `model.language_model.*` as
    `language_model.model.*`, `lm_head.*` as `language_model.lm_head.*`)."""
    candidates = [native]
    if native.startswith("model."):
        rest = native[len("model."):]
        candidates.append(rest)
        if rest.startswith("language_model."):
            candidates.append("language_model.model." + rest[len("language_model."):])
    if native.startswith("lm_head."):
        candidates.append("language_model." + native)
    return next((c for c in candidates if c in saved), None)
