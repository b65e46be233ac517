"""Publish a checkpoint folder to the Hugging Face Hub, in the layout its backend's own library loads."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..layout import detect_layout, missing_files

#: files that only matter for resuming training; kept out of a published model
_TRAINING_ONLY = ["optimizer.pt", "scheduler.pt", "rng_state*.pth", "trainer_state.json", "training_args.bin",
                  "checkpoint-*/**", "global_step*/**", "*.tmp", ".*"]


def check_publishable(folder: str | os.PathLike) -> str:
    """Return the backend of a checkpoint folder, or raise an error that says what is missing."""
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder: give the output_dir of a vlmrobust run.")
    backend = detect_layout(path)
    if backend is None or missing_files(path, backend):
        missing = f" ({backend} layout without {', '.join(missing_files(path, backend))})" if backend else ""
        raise ValueError(f"{path} holds no complete checkpoint in a known layout{missing}: open_clip_config.json + "
                         "open_clip_model.safetensors, transformers' config.json + *.safetensors, or R-Adapt's "
                         "radapt_config.json + radapt_anchor.safetensors.")
    if not (path / "README.md").is_file():
        raise ValueError(f"{path} has no README.md model card: the recipes write one next to results.json; "
                         "write one with vlmrobust.hub.model_card.write_model_card before publishing.")
    return backend


def push_to_hub(folder: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str | None = None) -> str:
    """Upload `folder` (model, model card, results, report, plots) to `repo_id`; return the commit URL.

    Training-only state (optimizer, scheduler, RNG, intermediate `checkpoint-*` folders) is not uploaded.
    """
    from huggingface_hub import HfApi

    backend = check_publishable(folder)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    meta = {}
    cfg = Path(folder) / "vlmrobust_config.json"
    if cfg.is_file():
        meta = json.loads(cfg.read_text())
    msg = commit_message or f"vlmrobust: upload {meta.get('method', backend)} checkpoint"
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=msg,
                             ignore_patterns=_TRAINING_ONLY)
    return str(getattr(info, "commit_url", info))
