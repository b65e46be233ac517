"""`shift`: Mahalanobis shift of every VQA dataset from the ID training data (`vlmrobust shift`; maths in
`vlmrobust.eval.shift`).

An analysis of `task: vqa` datasets; `vlmrobust shift` switches it on for every VQA dataset of a suite, or a dataset
entry carries it::

    shift:
      encoders: ["image:google/vit-base-patch16-224", "text:bert-base-uncased"]   # transformers ids (or folders)
      vlm: true                 # also the VLM's own vlm-image / vlm-question / vlm-joint embeddings
      reference: mf-id          # the ID dataset whose *training* questions the Gaussian is fitted on
      reference_seed: 0         # ... drawn with this seed / split / count instead of the evaluated ones
      reference_split: train
      reference_samples: 200
      ridge: 1.0e-8

After a model's datasets (`run_suite`), one cell per (dataset, embedding kind) holds the per-sample scores and their
mean; each embedding kind's Gaussian is fitted only when one of its cells must be computed, so a rerun reuses
everything. The summary adds per dataset the mean score per kind (`row["shift"]`) and per model the Pearson / Spearman
correlation of dataset shift with VQA accuracy; the report adds the per-sample correlations between embedding kinds,
a shift-vs-accuracy scatter per kind and ID-vs-split histograms.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...data.sources import DatasetUnavailable
from ..schema import Ctx, DatasetSpec
from .base import EVAL_TASKS, EvalTask, SuiteRun, current_cells, register_eval_task

_KEYS = {"encoders", "vlm", "reference", "reference_seed", "reference_split", "reference_samples", "ridge"}


@dataclass(frozen=True)
class ShiftSpec:
    """The Mahalanobis analysis of a dataset (see the module docstring for the keys)."""

    encoders: tuple[str, ...] = ()
    vlm: bool = True
    reference: str | None = None
    reference_seed: int | None = 0
    reference_split: str | None = "train"
    reference_samples: int = 200
    ridge: float = 1e-8

    @property
    def kinds(self) -> list[str]:
        from ..shift import VLM_KINDS

        return [*self.encoders, *(VLM_KINDS if self.vlm else ())]


def parse_shift(ctx: Ctx, raw: Any, where: str) -> ShiftSpec | None:
    if raw is None or raw is False:
        return None
    raw = ctx.check_keys({} if raw is True else raw, _KEYS, where)
    encoders = ctx.strings(raw.get("encoders"), f"{where}.encoders")
    bad = [e for e in encoders if e.partition(":")[0] not in ("image", "text") or not e.partition(":")[2]]
    if bad:
        raise ctx.fail(f"{where}.encoders", f"write image:<transformers model id> or text:<model id>, got {bad}.")
    spec = ShiftSpec(encoders=tuple(encoders), vlm=ctx.boolean(raw.get("vlm", True), f"{where}.vlm"),
                     reference=ctx.string(raw.get("reference"), f"{where}.reference", optional=True),
                     reference_seed=ctx.integer(raw.get("reference_seed", 0), f"{where}.reference_seed", lo=0,
                                                optional=True),
                     reference_split=ctx.string(raw.get("reference_split", "train"), f"{where}.reference_split",
                                                optional=True),
                     reference_samples=ctx.integer(raw.get("reference_samples", 200), f"{where}.reference_samples",
                                                   lo=2),
                     ridge=float(raw.get("ridge", 1e-8)))
    if not spec.kinds:
        raise ctx.fail(where, "no embedding: give encoders or keep vlm: true.")
    return spec


def _reference_name(run: SuiteRun, spec: ShiftSpec) -> str:
    if spec.reference:
        if spec.reference not in run.datasets:
            raise DatasetUnavailable(f"shift: the reference dataset {spec.reference!r} was not evaluated; datasets: "
                                     f"{list(run.datasets)}.")
        return spec.reference
    ids = [d for d, r in run.datasets.items() if getattr(r.spec.analyses.get("frames"), "level", None) == "id"]
    if len(ids) != 1:
        raise DatasetUnavailable("shift: name the ID dataset (shift.reference / --reference); found "
                                 f"{len(ids)} datasets tagged frames level id.")
    return ids[0]


class ShiftAnalysis(EvalTask):
    name = "shift"
    parent = "vqa"
    cell_kinds = ("shift_score",)
    order = 14

    def parse_analysis(self, ctx: Ctx, raw: Any, where: str, dataset: DatasetSpec) -> ShiftSpec | None:
        return parse_shift(ctx, raw, where)

    def plan_size(self, spec: DatasetSpec) -> int:
        return len(spec.analyses[self.name].kinds) if self.name in spec.analyses else 0

    def run(self, run) -> None:
        """All of it happens in the suite pass (the Gaussian needs the reference dataset)."""

    def run_suite(self, run: SuiteRun) -> None:
        from ..shift import HFEncoder, fit_gaussian, mahalanobis_scores, vlm_embeddings

        first = next(iter(run.datasets.values()))
        spec: ShiftSpec = first.spec.analyses[self.name]
        ref = run.datasets[_reference_name(run, spec)]
        ref_spec = dataclasses.replace(
            ref.spec, n_samples=spec.reference_samples,
            seed=ref.spec.seed if spec.reference_seed is None else spec.reference_seed,
            split=spec.reference_split or ref.spec.split)
        task = EVAL_TASKS.get(ref.spec.task)
        ref_config = {"data": task.data_config(ref_spec), "ridge": spec.ridge}
        encoders: dict[str, Any] = {}

        def embed(r, data, kind: str) -> np.ndarray:
            items = [data[i] for i in range(len(data))]
            bs = r.spec.batch_size
            if kind.startswith("vlm-"):
                parts = [vlm_embeddings(r.model, items[i:i + bs]) for i in range(0, len(items), bs)]
                return np.concatenate([p[kind] for p in parts])
            if kind not in encoders:
                encoders[kind] = HFEncoder(kind, device=r.model.device)
            return np.concatenate([encoders[kind](items[i:i + bs], r.model.preprocess)
                                   for i in range(0, len(items), bs)])

        def gaussian(kind: str):
            return ref.cached(f"shift-gaussian|{kind}|{ref_config}", lambda: fit_gaussian(
                embed(ref, ref.cached(f"shift-reference|{ref_config}", lambda: task.load(ref_spec, ref.model)),
                      kind), spec.ridge))

        for r in run.datasets.values():
            for kind in spec.kinds:
                def compute(r=r, kind=kind) -> dict:
                    scores = mahalanobis_scores(r.cached(f"shift-emb|{kind}", lambda: embed(r, r.data, kind)),
                                                *gaussian(kind))
                    return {"kind": "shift_score", "model": r.model_name, "dataset": r.spec.name, "embedding": kind,
                            "n": len(scores), "mean": float(scores.mean()),
                            "scores": [round(float(s), 5) for s in scores],
                            "reference": ref.spec.name, "reference_samples": spec.reference_samples}

                run.cell(r.key("shift", kind), {**r.base, "kind": "shift_score", "embedding": kind,
                                                "reference": ref_config}, compute)

    # -- results ------------------------------------------------------------------------------------------------------
    def in_grid(self, cell: dict, dataset: dict) -> bool:
        return cell.get("embedding") in ShiftSpec(**{**dataset["analyses"][self.name], "encoders": tuple(
            dataset["analyses"][self.name]["encoders"])}).kinds

    def summarize_row(self, row: dict, cells: list[dict], dataset: dict, suite: dict) -> Any:
        return {c["embedding"]: c["mean"] for c in cells}

    def average(self, rows: list[dict]) -> dict:
        from ..shift import pearson, spearman

        rows = [r for r in rows if r.get(self.name)]
        if not rows:
            return {}
        kinds = list(dict.fromkeys(k for r in rows for k in r[self.name]))
        corr = {}
        for k in kinds:
            pts = [(r[self.name][k], r["clean"]) for r in rows if k in r[self.name]]
            corr[k] = {"pearson": pearson(*zip(*pts)), "spearman": spearman(*zip(*pts)), "n_datasets": len(pts)}
        out: dict = {"correlation_with_accuracy": corr}
        if any(r.get("frames") for r in rows):
            levels: dict[str, dict[str, list[float]]] = {}
            for r in rows:
                for k, v in r[self.name].items():
                    if r.get("frames"):
                        levels.setdefault(k, {}).setdefault(r["frames"]["level"], []).append(v)
            out["by_level"] = {k: {lv: float(np.mean(v)) for lv, v in d.items()} for k, d in levels.items()}
        return {self.name: out}

    def markdown(self, model: str, summary: dict, results: dict) -> list[str]:
        from .shift_report import shift_markdown

        return shift_markdown(self.name, model, summary, cells_by_model(results).get(model, []))

    def plots(self, summary: dict, results: dict, out: str | os.PathLike) -> dict[str, str]:
        from .shift_report import shift_plots

        return shift_plots(self.name, summary, cells_by_model(results), Path(out))

    def console(self, summary: dict) -> list[str]:
        avg = summary.get(self.name, {})
        lines = []
        for k, lv in avg.get("by_level", {}).items():
            lines.append(f"  shift {k}: " + " | ".join(f"{a} {v:.2f}" for a, v in lv.items()))
        return lines


def cells_by_model(results: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for c in current_cells(results).values():
        if c["kind"] == "shift_score":
            out.setdefault(c["model"], []).append(c)
    return out


register_eval_task(ShiftAnalysis())

__all__ = ["ShiftAnalysis", "ShiftSpec", "cells_by_model", "parse_shift"]
