"""A checkpoint folder's model card: what the folder says about itself (kind, configs, results, an earlier card).

:func:`write_model_card` is what the recipes call after saving; :func:`card_info_from_folder` and
:func:`folder_results` are what `vlmrobust push` reads before regenerating a card for its target repo. The card
itself is built by :mod:`vlmrobust.hub.model_card`; results files are read only through
:mod:`vlmrobust.hub.card_results`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..layout import PEFT_CONFIG_NAME, RADAPT_CONFIG_NAME, VLMROBUST_CONFIG_NAME
from ..utils.io import atomic_write_text
from .card_results import ResultRow, find_results_file, load_result_rows, results_models
from .model_card import CardInfo, build_model_card, card_notes, checkpoint_kind, format_epsilon, parse_card


def training_settings(config: dict) -> dict[str, str]:
    """The settings worth stating on a card, from a saved method config (`vlmrobust_config.json`'s `config`)."""
    out: dict[str, str] = {}
    norm = config.get("attack_norm")
    if "epsilon" in config:
        out["threat model (training)"] = f"{norm}, ε = {format_epsilon(float(config['epsilon']), norm)}"
    if "attack" in config:
        step = config.get("attack_step_size")
        out["training attack"] = (f"{config['attack']}-{config.get('attack_steps')}"
                                  + (f", step {format_epsilon(float(step), norm)}" if step else ""))
    if config.get("epsilon_schedule") not in (None, "constant"):
        out["ε schedule"] = (f"{config['epsilon_schedule']} ({config.get('epsilon_schedule_start')} → "
                             f"{config.get('epsilon_schedule_end')} {config.get('epsilon_schedule_unit')})")
    if config.get("max_steps", -1) and config.get("max_steps", -1) > 0:
        out["optimizer steps"] = str(config["max_steps"])
    elif "num_train_epochs" in config:
        out["epochs"] = f"{config['num_train_epochs']:g}"
    for key, label in (("learning_rate", "learning rate"), ("per_device_train_batch_size", "batch size per device"),
                       ("gradient_accumulation_steps", "gradient accumulation"), ("weight_decay", "weight decay"),
                       ("seed", "seed")):
        if key in config:
            out[label] = f"{config[key]:g}" if isinstance(config[key], float) else str(config[key])
    return out


def card_info_from_folder(folder: str | os.PathLike, repo_id: str) -> CardInfo:
    """Collect what a card says from a checkpoint folder: its kind, its configs and an earlier generated card."""
    path = Path(folder)
    kind = checkpoint_kind(path)
    if kind is None:
        raise ValueError(f"{path} holds no checkpoint in a known layout.")
    old_meta, _ = parse_card((path / "README.md").read_text(encoding="utf-8")) if (path / "README.md").is_file() \
        else ({}, "")
    old = old_meta.get("vlmrobust") if isinstance(old_meta.get("vlmrobust"), dict) else {}
    cfg = _read_json(path / VLMROBUST_CONFIG_NAME)
    method = old.get("method") or cfg.get("method")
    base_model = old.get("base_model")
    training = dict(old.get("training") or {})
    if kind == "radapt":
        rcfg = _read_json(path / RADAPT_CONFIG_NAME)
        method = method or rcfg.get("method", "radapt")
        base_model = base_model or rcfg.get("base_model")
        if not training:
            training = {k.replace("_", " "): str(rcfg[k]) for k in ("paradigm", "sigma", "attn_coef", "anchor_coef",
                                                                    "guide_model") if rcfg.get(k) is not None}
    if kind == "peft":
        base_model = base_model or _read_json(path / PEFT_CONFIG_NAME).get("base_model_name_or_path")
    if base_model is None:
        base_model = _read_json(path / "results.json").get("model")
    if not training and isinstance(cfg.get("config"), dict):
        training = training_settings(cfg["config"])
    datasets = [d for d in (old_meta.get("datasets") or []) if isinstance(d, str)]
    notes = card_notes((path / "README.md").read_text(encoding="utf-8")) if (path / "README.md").is_file() else ""
    return CardInfo(repo_id=repo_id, kind=kind, method=method, base_model=base_model, training=training,
                    datasets=datasets, notes=notes)


def folder_results(folder: str | os.PathLike) -> tuple[list[ResultRow], list[ResultRow], Path | None]:
    """`(rows of the checkpoint, rows of its base model, results file)` found in a checkpoint folder.

    A recipe's `results.json` holds `before` (the base model) and `after` (this checkpoint); a file of
    `vlmrobust eval` on the checkpoint alone holds one model.
    """
    path = find_results_file(folder)
    if path is None:
        return [], [], None
    rows = load_result_rows(path)
    models = results_models(json.loads(path.read_text(encoding="utf-8")))
    base = load_result_rows(path, "before") if "before" in models and "after" in models else []
    return rows, base, path


def write_model_card(output_dir: str | os.PathLike, *, backend: str | None = None, base_model: str, method: str,
                     results_markdown: str = "", training: dict | None = None, repo_id: str | None = None,
                     notes: str = "", datasets: Sequence[str] = ()) -> Path:
    """Write `README.md` in a checkpoint folder: metadata, loading snippet, training settings, results.

    The results come from the folder's suite results (`results.json`, via the adapter); `notes` and
    `results_markdown` are kept verbatim in the card's notes block.

    Args:
        output_dir (`str`): checkpoint folder.
        backend (`str`, *optional*): unused (the kind is read from the folder's layout); kept for older callers.
        base_model (`str`): the `create_model` id training started from.
        method (`str`): e.g. `"fare"`.
        results_markdown (`str`, *optional*): extra markdown (e.g. the recipe's before / after table).
        training (`dict`, *optional*): settings worth stating; defaults to those of `vlmrobust_config.json`.
        repo_id (`str`, *optional*): Hub repo the card will live in (used in the loading snippet); the folder
            name until `vlmrobust push` rewrites the card for its repo.
        notes (`str`, *optional*): free markdown shown before `results_markdown`.
        datasets (`Sequence[str]`, *optional*): Hub ids of the training data.
    """
    del backend
    out = Path(output_dir)
    info = card_info_from_folder(out, repo_id or out.name)
    info.method, info.base_model = method, base_model
    if training:
        info.training = {k: str(v) for k, v in training.items()}
    info.datasets = list(datasets) or info.datasets
    info.notes = "\n\n".join(t.strip() for t in (notes, results_markdown) if t and t.strip())
    rows, base_rows, _ = folder_results(out)
    return atomic_write_text(out / "README.md", build_model_card(info, rows, base_rows=base_rows,
                                                                 heading="Evaluation of this checkpoint"))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


__all__ = ["card_info_from_folder", "folder_results", "training_settings", "write_model_card"]
