"""The one adapter from a results file to model-card rows.

Model cards never read a results file directly: they take a list of :class:`ResultRow` (dataset, metric, attack, ε,
value). This module is the only place that knows the results format; when the format changes, only
:func:`rows_from_results` changes.

Today it reads the suite runner's cells (`format: vlmrobust.eval/v1`, and `vlmrobust.results/v2`, which keeps the
same cell keys: `model|dataset|clean`, `model|dataset|<attack>|<norm>|<ε>`, with `kind`, `accuracy` / `cider`,
`attack`, `norm`, `eps`, `steps`, `n`), as written by `vlmrobust eval` and by every recipe into `<output_dir>/results.json` (before v2: `<output_dir>/eval/`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

#: cell kind -> (card task type, metric, the cell field holding the value)
_KINDS = {
    "clean": ("zero-shot-image-classification", "accuracy", "accuracy"),
    "attack": ("zero-shot-image-classification", "accuracy", "accuracy"),
    "vqa_clean": ("visual-question-answering", "vqa_accuracy", "accuracy"),
    "vqa_attack": ("visual-question-answering", "vqa_accuracy", "accuracy"),
    "caption_clean": ("image-to-text", "cider", "cider"),
    "caption_attack": ("image-to-text", "cider", "cider"),
}


@dataclass(frozen=True)
class ResultRow:
    """One number of a model card: a metric on a dataset, clean or under an attack at a budget.

    Args:
        dataset (`str`): dataset name (as in the suite).
        metric (`str`): `accuracy`, `vqa_accuracy` or `cider`.
        value (`float`): accuracies as fractions in [0, 1], CIDEr as computed (×100 scale).
        attack (`str`, *optional*): attack label (e.g. `apgd-ce+apgd-t`); None for the clean number.
        norm (`str`, *optional*): `Linf` or `L2` (with `attack`).
        epsilon (`float`, *optional*): budget in [0, 1] pixel units (with `attack`).
        task (`str`, *optional*): Hub task type, `zero-shot-image-classification` by default.
        split (`str`, *optional*): dataset split.
        dataset_id (`str`, *optional*): Hub dataset id when the data comes from the Hub.
        n (`int`, *optional*): number of evaluated samples.
        steps (`int`, *optional*): attack iterations.
    """

    dataset: str
    metric: str
    value: float
    attack: str | None = None
    norm: str | None = None
    epsilon: float | None = None
    task: str = "zero-shot-image-classification"
    split: str | None = None
    dataset_id: str | None = None
    n: int | None = None
    steps: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def results_models(results: dict) -> list[str]:
    """Names of the models a results dict holds numbers for (in the file's order)."""
    names = list(results.get("models") or [])
    for key in results.get("cells", {}):
        name = key.split("|", 1)[0]
        if name not in names:
            names.append(name)
    return names


def rows_from_results(results: dict, model: str | None = None) -> list[ResultRow]:
    """The card rows of `model` in a results dict (clean and attacked accuracy / VQA accuracy / CIDEr).

    Args:
        results (`dict`): a loaded results file.
        model (`str`, *optional*): which model's numbers; required when the file holds several, except that a
            recipe's `after` (the trained checkpoint) is taken by default.
    """
    models = results_models(results)
    if model is None:
        if "after" in models:
            model = "after"
        elif len(models) == 1:
            model = models[0]
        else:
            raise ValueError(f"the results hold several models ({', '.join(models)}): say which one the card is for.")
    specs = {d.get("name"): d for d in (results.get("suite") or {}).get("datasets", [])}
    rows = []
    for cell in results.get("cells", {}).values():
        kind = cell.get("kind")
        if cell.get("model") != model or kind not in _KINDS:
            continue
        task, metric, field = _KINDS[kind]
        spec = specs.get(cell["dataset"], {})
        attacked = kind.endswith("attack")
        rows.append(ResultRow(
            dataset=cell["dataset"], metric=metric, value=float(cell[field]),
            attack=cell.get("attack") if attacked else None, norm=cell.get("norm") if attacked else None,
            epsilon=float(cell["eps"]) if attacked else None, task=task, split=spec.get("split"),
            dataset_id=_hub_dataset_id(spec.get("source")), n=cell.get("n"),
            steps=cell.get("steps") if attacked else None))
    return sorted(rows, key=lambda r: (r.dataset, r.attack is not None, r.attack or "", r.norm or "",
                                       r.epsilon or 0.0))


def load_result_rows(path: str | os.PathLike, model: str | None = None) -> list[ResultRow]:
    """Read a results file (or the `results.json` in a folder) and return `model`'s card rows."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    return rows_from_results(json.loads(p.read_text(encoding="utf-8")), model)


def find_results_file(folder: str | os.PathLike) -> Path | None:
    """The results file of a checkpoint folder that holds suite cells: `results.json` (v2: a recipe writes its cells
    there), else `eval/results.json` (where recipes kept them before v2)."""
    for candidate in (Path(folder) / "results.json", Path(folder) / "eval" / "results.json"):
        if candidate.is_file():
            try:
                if "cells" in json.loads(candidate.read_text(encoding="utf-8")):
                    return candidate
            except ValueError:
                continue
    return None


def _hub_dataset_id(source: str | None) -> str | None:
    if not source:
        return None
    kind, sep, loc = source.partition(":")
    repo = loc if sep and kind == "webdataset" else (source if not sep else "")
    return repo if repo.count("/") == 1 and not Path(repo).expanduser().exists() else None


__all__ = ["ResultRow", "find_results_file", "load_result_rows", "results_models", "rows_from_results"]
