"""`frames`: FRAMES-VQA's ID / near-OOD / far-OOD tags on VQA datasets, their averages, and the plot per shift type.

An analysis of `task: vqa` datasets, switched on per dataset by its tag::

    - name: mf-colour
      task: vqa
      source: mini-frames:colour
      n_samples: 100
      frames: {level: near, type: vision}     # level: id | near | far; type: the kind of shift (free text)

It computes nothing itself (the VQA cells are the numbers): it puts the tag in each VQA row (`row["frames"]`), adds
per model the mean accuracy per level and per (level, type) (`summary["models"][m]["frames"]`), a report section and
`frames_accuracy_by_shift.png` (accuracy per shift type, one bar per model). FRAMES-VQA (seed 004, CVPR 2025) reports
exactly these: per dataset, near and far averages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..plots import plot_grouped_bars
from ..schema import Ctx, DatasetSpec
from ..tables import md_table, pct
from .base import EvalTask, register_eval_task

LEVELS = ("id", "near", "far")


@dataclass(frozen=True)
class FramesTag:
    """Where a dataset sits in FRAMES-VQA's structure.

    Args:
        level (`str`): "id", "near" or "far".
        type (`str`): the shift ("none" for ID; "vision", "question", "answer", "multi-modal", "adversarial",
            "text", ... ).
    """

    level: str
    type: str = "none"


def column(tag: dict) -> str:
    """`"near · vision"`: the label of a (level, type) group (`"id"` for the ID set)."""
    return "id" if tag["level"] == "id" else f"{tag['level']} · {tag['type']}"


class FramesAnalysis(EvalTask):
    name = "frames"
    parent = "vqa"
    order = 12

    def parse_analysis(self, ctx: Ctx, raw: Any, where: str, dataset: DatasetSpec) -> FramesTag | None:
        if raw is None or raw is False:
            return None
        raw = ctx.check_keys(raw, {"level", "type"}, where)
        level = raw.get("level")
        if level not in LEVELS:
            raise ctx.fail(f"{where}.level", f"must be one of {', '.join(LEVELS)}, got {level!r}.")
        return FramesTag(level=level, type=ctx.string(raw.get("type", "none"), f"{where}.type"))

    def plan_size(self, spec: DatasetSpec) -> int:
        return 0

    def run(self, run) -> None:
        """Nothing to compute: the VQA cells hold the accuracies."""

    def summarize_row(self, row: dict, cells: list[dict], dataset: dict, suite: dict) -> Any:
        return dict(dataset["analyses"][self.name])

    def average(self, rows: list[dict]) -> dict:
        tagged = [r for r in rows if r.get(self.name)]
        if not tagged:
            return {}
        levels = {lv: [r["clean"] for r in tagged if r[self.name]["level"] == lv] for lv in LEVELS}
        groups: dict[str, list[float]] = {}
        for r in tagged:
            groups.setdefault(column(r[self.name]), []).append(r["clean"])
        return {self.name: {"levels": {lv: float(np.mean(v)) for lv, v in levels.items() if v},
                            "groups": {g: float(np.mean(v)) for g, v in groups.items()},
                            "n_datasets": {lv: len(v) for lv, v in levels.items()}}}

    def markdown(self, model: str, summary: dict, results: dict) -> list[str]:
        avg, rows = summary.get(self.name), summary.get(self.parent, {})
        if not avg:
            return []
        table = [[d, r[self.name]["level"], r[self.name]["type"], str(r.get("n")), pct(r["clean"])]
                 for d, r in rows.items() if r.get(self.name)]
        lv = avg["levels"]
        md = ["### ID / near / far OOD (FRAMES-VQA structure)", "",
              md_table(["dataset", "level", "shift", "n", "VQA accuracy"], table), "",
              "Averages over datasets: " + " · ".join(f"{k} {pct(v)} ({avg['n_datasets'][k]})" for k, v in lv.items())
              + (f" · drop ID → far {pct(lv['id'] - lv['far'])} points" if "id" in lv and "far" in lv else ""), "",
              "Per shift type: " + " · ".join(f"{g} {pct(v)}" for g, v in avg["groups"].items()), ""]
        return md

    def plots(self, summary: dict, results: dict, out: str | os.PathLike) -> dict[str, str]:
        per_model = {m: {**v[self.name]["groups"], **{f"{k} (avg)": x for k, x in v[self.name]["levels"].items()
                                                       if k != "id"}}
                     for m, v in summary["models"].items() if v.get(self.name)}
        if not per_model:
            return {}
        cols = [c for c in next(iter(per_model.values())) if all(c in v for v in per_model.values())]
        name = "frames_accuracy_by_shift.png"
        plot_grouped_bars(per_model, cols, Path(out) / name, title="VQA accuracy per shift type",
                          ylabel="VQA accuracy (%)")
        return {"VQA accuracy per shift type (ID / near / far)": name}

    def console(self, summary: dict) -> list[str]:
        avg = summary.get(self.name)
        if not avg:
            return []
        return ["  FRAMES levels: " + " | ".join(f"{k} {100 * v:.1f}" for k, v in avg["levels"].items())]


register_eval_task(FramesAnalysis())

__all__ = ["FramesAnalysis", "FramesTag", "LEVELS", "column"]
