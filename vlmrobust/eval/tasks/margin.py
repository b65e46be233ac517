"""Margin consistency (arXiv 2406.18451): an analysis of classification datasets.

Switched on by a `margin:` block in a classification dataset entry::

    margin:
      attack: apgd-ce+apgd-t   # label of the dataset attack the estimate is checked against (default: the first)
      subset: 100              # points whose input-space margin is measured (FAB-T), capped at n_samples
      seed: 0                  # subset and FAB seed
      steps: 100               # FAB iterations per target class
      n_target_classes: 9
      max_norm: null           # cap of the input margin when FAB finds nothing (default: 4x the largest ε)

One cell per dataset: Kendall τ between the clean logit margins and the input-space margins on the subset, and per ε
the margin-based robust-accuracy estimate next to the measured one (from the classification cells).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ...data.sources import subset_indices
from ..margin import estimate_robust_accuracy, input_margins, kendall_tau
from ..results import eps_key, unpack_mask
from ..schema import Ctx, DatasetSpec, parse_eps
from ..tables import format_eps, md_table, pct
from .base import DatasetRun, EvalTask, register_eval_task
from .classification import classifier


@dataclass(frozen=True)
class MarginSpec:
    """Margin consistency on a subset, and the margin-based robust-accuracy estimate.

    Args:
        attack (`str`): label of the dataset attack whose robust masks the estimate is checked against.
        subset (`int`): number of points whose input-space margin is measured (FAB-T) and whose attacked robustness
            fixes the logit-margin threshold.
        seed (`int`): seed of the subset and of FAB.
        steps (`int`): FAB iterations per target class.
        n_target_classes (`int`): FAB target classes (the minimum norm over them is kept).
        max_norm (`float`, *optional*): cap of the input margin when FAB finds nothing (defaults to 4× the largest
            ε of the attack).
    """

    attack: str
    subset: int = 100
    seed: int = 0
    steps: int = 100
    n_target_classes: int = 9
    max_norm: float | None = None


_KEYS = {"attack", "subset", "seed", "steps", "n_target_classes", "max_norm"}


class MarginAnalysis(EvalTask):
    name = "margin"
    parent = "classification"
    default_keys = frozenset({"margin"})
    cell_kinds = ("margin",)
    order = 50

    def parse_analysis(self, ctx: Ctx, raw: Any, where: str, dataset: DatasetSpec) -> MarginSpec:
        raw = ctx.check_keys(raw, _KEYS, where)
        labels = [a.label for a in dataset.attacks]
        if not labels:
            raise ctx.fail(where, "needs at least one attack on the dataset to check the estimate against.")
        label = raw.get("attack", labels[0])
        if label not in labels:
            raise ctx.fail(f"{where}.attack", f"{label!r} is not an attack label of this dataset; labels: {labels}.")
        subset = ctx.integer(raw.get("subset", 100), f"{where}.subset", lo=2)
        if dataset.n_samples is not None:
            subset = min(subset, dataset.n_samples)
        max_norm = raw.get("max_norm")
        if max_norm is not None:
            try:
                max_norm = parse_eps(max_norm)
            except ValueError as err:
                raise ctx.fail(f"{where}.max_norm", str(err)) from err
        return MarginSpec(
            attack=label, subset=subset, seed=ctx.integer(raw.get("seed", 0), f"{where}.seed", lo=0),
            steps=ctx.integer(raw.get("steps", 100), f"{where}.steps", lo=1),
            n_target_classes=ctx.integer(raw.get("n_target_classes", 9), f"{where}.n_target_classes", lo=1),
            max_norm=max_norm)

    def plan_size(self, spec: DatasetSpec) -> int:
        return 1

    def run(self, run: DatasetRun) -> None:
        ms = run.spec.analyses[self.name]
        atk = next(a for a in run.spec.attacks if a.label == ms.attack)
        cfg = {**run.base, "kind": "margin", "margin": vars(ms), "attack_cells": [
            run.stored(run.key(atk.label, atk.norm, eps_key(e)))["config"] for e in atk.eps]}
        run.cell(run.key("margin", atk.label), cfg, lambda: self._compute(run, ms, atk))

    def _compute(self, run: DatasetRun, ms: MarginSpec, atk) -> dict:
        clean, masks = run.outputs["clean"], run.outputs["masks"][atk.label]
        n = clean["n"]
        correct = unpack_mask(clean["correct"], n)
        margins = torch.tensor(clean["margins"], dtype=torch.float32)
        sub = torch.tensor(subset_indices(n, ms.subset, ms.seed))
        items = [run.data[int(i)] for i in sub]
        x = torch.stack([torch.as_tensor(it["pixel_values"]) for it in items]).to(run.device)
        y = torch.tensor([int(it["labels"]) for it in items], device=run.device)
        max_norm = ms.max_norm or 4 * max(atk.eps)
        im = input_margins(classifier(run), x, y, norm=atk.norm, steps=ms.steps, n_target_classes=ms.n_target_classes,
                           max_norm=max_norm, seed=ms.seed, batch_size=run.spec.batch_size)
        corr_sub = correct[sub]
        tau, p = kendall_tau(margins[sub][corr_sub], im[corr_sub])
        estimates = {}
        for eps, mask in masks.items():
            est = estimate_robust_accuracy(margins, correct, sub, mask[sub])
            measured = mask.float().mean().item()
            estimates[eps_key(eps)] = {"estimate": est.estimate, "measured": measured,
                                       "abs_error": abs(est.estimate - measured), "threshold": est.threshold,
                                       "subset_robust_accuracy": est.subset_robust_accuracy}
        return {"kind": "margin", "model": run.model_name, "dataset": run.spec.name, "attack": atk.label,
                "norm": atk.norm, "subset_size": len(sub), "n_correct_subset": int(corr_sub.sum()), "n": n,
                "kendall_tau": tau, "p_value": p,
                "input_margin_method": f"FAB-T ({ms.n_target_classes} targets, {ms.steps} it.)",
                "max_norm": max_norm, "input_margins": [round(float(v), 6) for v in im], "estimates": estimates}

    def in_grid(self, cell: dict, dataset: dict) -> bool:
        return dataset["analyses"][self.name].get("attack") == cell.get("attack")

    def summarize_row(self, row: dict, cells: list[dict], dataset: dict, suite: dict) -> dict:
        return {c["attack"]: {k: c[k] for k in ("kendall_tau", "p_value", "subset_size", "n_correct_subset",
                                                 "estimates", "input_margin_method")} for c in cells}

    def markdown(self, model: str, summary: dict, results: dict) -> list[str]:
        marg = {d: r[self.name] for d, r in summary.get("datasets", {}).items() if r.get(self.name)}
        if not marg:
            return []
        hdr = ["dataset", "attack", "subset (correct)", "Kendall τ", "ε", "estimated rob. acc.", "measured",
               "abs. error"]
        rows = [[d, a, f"{mm['subset_size']} ({mm['n_correct_subset']})", f"{mm['kendall_tau']:.3f}",
                 format_eps(float(e)), pct(est["estimate"]), pct(est["measured"]), f"{100 * est['abs_error']:.1f}"]
                for d, by_a in marg.items() for a, mm in by_a.items() for e, est in mm["estimates"].items()]
        return ["### Margin consistency", "",
                "Kendall τ between clean logit margin and input-space margin (smallest perturbation found by FAB-T) on "
                "a subset of correctly classified points; the estimate thresholds the logit margin of *all* points at "
                "λ fixed on the subset's attacked robust accuracy (arXiv 2406.18451). A low τ means the estimate "
                "should not be trusted.", "", md_table(hdr, rows), ""]


register_eval_task(MarginAnalysis())

__all__ = ["MarginAnalysis", "MarginSpec"]
