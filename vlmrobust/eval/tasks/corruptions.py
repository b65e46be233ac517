"""Common corruptions (Hendrycks & Dietterich 2019, arXiv 1903.12261): an analysis of classification datasets.

Switched on by a `corruptions:` block in a classification dataset entry::

    corruptions:
      types: common          # common (the 15 ImageNet-C ones) | all (19) | a list of imagecorruptions names
      severities: [1, 2, 3, 4, 5]
      n_samples: 1000        # per (type, severity): a seeded subset of the evaluated images (capped at theirs)
      seed: 0                # subset and corruption noise
      reference: alexnet     # alexnet (published ImageNet-C errors) | none | a results .json (its first model)
      min_size: 32           # smaller images are upsampled before corrupting (imagecorruptions needs >= 32 px)
      batch_size: null       # defaults to the dataset's

One cell per (type, severity); the summary adds mean corruption accuracy, errors by type / severity and mCE to the
classification row (`row["corruptions"]`), and the report a section and a plot per dataset.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...data.sources import subset_indices
from ..corruptions import (
    ALEXNET_IMAGENET_C_ERRORS,
    ALEXNET_SOURCE,
    ALL_CORRUPTIONS,
    COMMON_CORRUPTIONS,
    CorruptedDataset,
    corruption_errors,
)
from ..results import unpack_mask
from ..schema import Ctx, DatasetSpec
from ..tables import format_eps, md_table, pct, safe_name
from ..zero_shot import predict
from .base import DatasetRun, EvalTask, register_eval_task
from .classification import classifier, robust_accuracy


@dataclass(frozen=True)
class CorruptionSpec:
    """Common corruptions of a dataset's images.

    Args:
        types (`tuple[str, ...]`): imagecorruptions names.
        severities (`tuple[int, ...]`): subset of 1..5.
        n_samples (`int`, *optional*): images per (type, severity), a seeded subset of the evaluated images.
        seed (`int`): seed of the subset and of the corruption noise.
        reference (`str`): "alexnet", "none", or a path to a results JSON whose first model is the reference.
        min_size (`int`): images smaller than this are upsampled before corrupting and downsampled back.
        batch_size (`int`, *optional*): defaults to the dataset's.
    """

    types: tuple[str, ...]
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    n_samples: int | None = None
    seed: int = 0
    reference: str = "none"
    min_size: int = 32
    batch_size: int | None = None


_KEYS = {"types", "severities", "n_samples", "seed", "reference", "min_size", "batch_size"}


class CorruptionsAnalysis(EvalTask):
    name = "corruptions"
    parent = "classification"
    default_keys = frozenset({"corruptions"})
    cell_kinds = ("corruption",)
    order = 40

    def parse_analysis(self, ctx: Ctx, raw: Any, where: str, dataset: DatasetSpec) -> CorruptionSpec:
        raw = ctx.check_keys(raw, _KEYS, where)
        types = raw.get("types", "common")
        types = list(COMMON_CORRUPTIONS) if types == "common" else list(ALL_CORRUPTIONS) if types == "all" else types
        if not isinstance(types, list) or not types:
            raise ctx.fail(f"{where}.types", "must be 'common', 'all' or a list of corruption names.")
        for i, t in enumerate(types):
            if t not in ALL_CORRUPTIONS:
                raise ctx.fail(f"{where}.types[{i}]", f"unknown corruption {t!r}; known: {', '.join(ALL_CORRUPTIONS)}.")
        sev = raw.get("severities", [1, 2, 3, 4, 5])
        sev = [sev] if isinstance(sev, int) else sev
        if not isinstance(sev, list) or not sev or any(isinstance(s, bool) or s not in (1, 2, 3, 4, 5) for s in sev):
            raise ctx.fail(f"{where}.severities", f"must be a list drawn from 1..5, got {sev!r}.")
        ref = raw.get("reference", "none")
        if not isinstance(ref, str) or not (ref in ("alexnet", "none") or ref.endswith(".json")):
            raise ctx.fail(f"{where}.reference", f"must be 'alexnet', 'none' or a path to a results .json, got {ref!r}.")
        n = ctx.integer(raw.get("n_samples"), f"{where}.n_samples", lo=1, optional=True)
        if dataset.n_samples is not None:
            n = dataset.n_samples if n is None else min(n, dataset.n_samples)
        return CorruptionSpec(
            types=tuple(types), severities=tuple(sorted(set(sev))), n_samples=n,
            seed=ctx.integer(raw.get("seed", 0), f"{where}.seed", lo=0), reference=ref,
            min_size=ctx.integer(raw.get("min_size", 32), f"{where}.min_size", lo=32),
            batch_size=ctx.integer(raw.get("batch_size"), f"{where}.batch_size", lo=1, optional=True))

    def plan_size(self, spec: DatasetSpec) -> int:
        cs = spec.analyses[self.name]
        return len(cs.types) * len(cs.severities)

    def run(self, run: DatasetRun) -> None:
        spec, cs, clean = run.spec, run.spec.analyses[self.name], run.outputs["clean"]
        n = clean["n"]
        sub = subset_indices(n, cs.n_samples, cs.seed)
        clean_sub = unpack_mask(clean["correct"], n)[torch.tensor(sub)].float().mean().item()
        for corruption in cs.types:
            for sev in cs.severities:
                cfg = {**run.base, "kind": "corruption", "corruption": corruption, "severity": sev,
                       "n_samples": cs.n_samples, "seed": cs.seed, "min_size": cs.min_size}

                def compute(c=corruption, s=sev) -> dict:
                    data = CorruptedDataset(run.data, c, s, seed=cs.seed, indices=sub, min_size=cs.min_size)
                    correct, _ = predict(classifier(run), data, batch_size=cs.batch_size or spec.batch_size,
                                         device=run.device, bf16=run.bf16, num_workers=run.num_workers,
                                         progress=run.progress, desc=f"{spec.name} {c} s{s}")
                    return {"kind": "corruption", "model": run.model_name, "dataset": spec.name, "corruption": c,
                            "severity": s, "n": len(correct), "accuracy": correct.float().mean().item(),
                            "clean_accuracy_subset": clean_sub}

                run.cell(run.key("corruption", corruption, sev), cfg, compute)

    def in_grid(self, cell: dict, dataset: dict) -> bool:
        cs = dataset["analyses"][self.name]
        return cell["corruption"] in cs["types"] and int(cell["severity"]) in cs["severities"]

    def summarize_row(self, row: dict, cells: list[dict], dataset: dict, suite: dict) -> dict | None:
        acc: dict[str, dict[int, float]] = {}
        for cell in cells:
            acc.setdefault(cell["corruption"], {})[int(cell["severity"])] = cell["accuracy"]
        if not acc:
            return None
        ref_name = (dataset.get("analyses") or {}).get(self.name, {}).get("reference", "none")
        reference = None
        if ref_name == "alexnet":
            reference = ALEXNET_IMAGENET_C_ERRORS
        elif ref_name.endswith(".json"):
            reference = _reference_errors(ref_name, dataset["name"])
        return {**corruption_errors(acc, reference), "reference": ref_name}

    def columns(self, row: dict) -> dict[str, float]:
        return {"corruptions": row[self.name]["mean_accuracy"]} if row.get(self.name) else {}

    def average(self, rows: list[dict]) -> dict:
        mces = [r[self.name]["mce"] for r in rows if r.get(self.name) and r[self.name]["mce"] is not None]
        return {"mce": float(np.mean(mces)) if mces else None}

    def markdown(self, model: str, summary: dict, results: dict) -> list[str]:
        corr = {d: r[self.name] for d, r in summary.get("datasets", {}).items() if r.get(self.name)}
        if not corr:
            return []
        md = ["### Common corruptions", ""]
        sevs = sorted({s for c in corr.values() for s in c["accuracy_by_severity"]})
        hdr = ["dataset", "mean corruption acc.", "mCE", "reference", f"by severity ({'/'.join(map(str, sevs))})"]
        rows = []
        for d, c in corr.items():
            mce = f"{100 * c['mce']:.1f} ({len(c['mce_types'])} types)" if c["mce"] is not None else \
                f"– (unnormalised mean error {100 * c['mean_error']:.1f})"
            sev = " / ".join(pct(c["accuracy_by_severity"][s]) for s in sorted(c["accuracy_by_severity"]))
            rows.append([d, pct(c["mean_accuracy"]), mce, ALEXNET_SOURCE if c["reference"] == "alexnet"
                         else c["reference"], sev])
        md += [md_table(hdr, rows), ""]
        for d, c in corr.items():
            types = list(c["accuracy_by_type"])
            md += [f"Accuracy by corruption type on `{d}` (mean over severities):", "",
                   md_table(types, [[pct(c["accuracy_by_type"][t]) for t in types]]), ""]
        if any(c["reference"] == "alexnet" for c in corr.values()):
            md += ["mCE is normalised by AlexNet's published *ImageNet-C* errors (15 benchmark corruptions; the 4 "
                   "extra ones enter the mean accuracy only). It is comparable to published mCE only for ImageNet "
                   "images corrupted at 224 px; elsewhere it is a relative scale.", ""]
        return md

    def run_markdown(self, rows: dict[str, str], dataset: dict, results: dict, summary: dict) -> list[str]:
        """The ID / OOD / adversarial trade-off of a recipe's rows (GRACE's summary, arXiv 2603.27139): clean
        accuracy, mean corruption accuracy, robust accuracy per ε and the harmonic mean of the three per ε."""
        out, eps = [], None
        for label, model in rows.items():
            corr = ((summary.get("models", {}).get(model) or {}).get("datasets", {}).get(dataset["name"]) or {})
            if not corr.get(self.name):
                continue
            t = tradeoff(results, model, corr[self.name]["mean_accuracy"], dataset["name"])
            eps = list(t["adversarial"])
            out.append([label, pct(t["id"]), pct(t["ood"]), *(pct(t["adversarial"][e]) for e in eps),
                        *(pct(t["harmonic_mean"][e]) for e in eps)])
        if not out:
            return []
        hdr = ["model", "ID (clean)", "OOD (corruptions)", *(f"adv. {format_eps(e)}" for e in eps),
               *(f"harmonic mean {format_eps(e)}" for e in eps)]
        return ["ID / OOD / adversarial trade-off: clean accuracy, mean accuracy over the corruptions, robust "
                "accuracy (the attacks above), and their harmonic mean per ε.", "", md_table(hdr, out), ""]

    def plots(self, summary: dict, results: dict, out: str | os.PathLike) -> dict[str, str]:
        plots = {}
        for entry in results["suite"]["datasets"]:
            d = entry["name"]
            if any((v.get("datasets", {}).get(d) or {}).get(self.name) for v in summary["models"].values()):
                name = f"corruptions_{safe_name(d)}.png"
                plot_corruptions(summary, d, os.path.join(out, name))
                plots[f"corruptions: {d}"] = name
        return plots


def harmonic_mean(*values: float) -> float:
    """Harmonic mean of accuracies (0 when one of them is 0)."""
    return 0.0 if min(values) <= 0 else len(values) / sum(1.0 / v for v in values)


def tradeoff(results: dict, model: str, ood: float, dataset: str | None = None) -> dict:
    """`{"id", "ood", "adversarial": {ε: acc}, "harmonic_mean": {ε: HM(id, ood, adv)}}` of one model: clean accuracy
    and robust accuracy per ε of the dataset's first attack (from its cells), and `ood` (e.g. the mean corruption
    accuracy)."""
    ra = robust_accuracy(results, model, dataset)
    adv = {float(e): float(a) for e, a in sorted(ra.robust_accuracy.items())}
    return {"id": ra.clean_accuracy, "ood": ood, "adversarial": adv,
            "harmonic_mean": {e: harmonic_mean(ra.clean_accuracy, ood, a) for e, a in adv.items()}}


def _reference_errors(path: str, dataset: str) -> dict[str, list[float]] | None:
    """Per-corruption error by severity of the first model of a results JSON, for `dataset` (a user reference)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError:
        return None
    ref_model = data.get("models", [None])[0]
    errs: dict[str, list[float]] = {}
    for cell in data.get("cells", {}).values():
        if cell.get("kind") == "corruption" and cell["model"] == ref_model and cell["dataset"] == dataset:
            errs.setdefault(cell["corruption"], [float("nan")] * 5)[int(cell["severity"]) - 1] = 1 - cell["accuracy"]
    return errs or None


def plot_corruptions(summary: dict, dataset: str, path: str | os.PathLike) -> Path:
    """Corruption accuracy by type (mean over severities; bars per model) and by severity (lines per model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ...utils.io import atomic_savefig

    models = [m for m, v in summary["models"].items() if (v.get("datasets", {}).get(dataset) or {}).get("corruptions")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=120, gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        c = summary["models"][m]["datasets"][dataset]["corruptions"]
        types = list(c["accuracy_by_type"])
        xs = np.arange(len(types)) + i * width
        ax1.bar(xs, [100 * c["accuracy_by_type"][t] for t in types], width, label=m)
        ax1.set_xticks(np.arange(len(types)) + 0.4 - width / 2, types, rotation=60, ha="right", fontsize=7)
        sev = sorted(c["accuracy_by_severity"])
        ax2.plot(sev, [100 * c["accuracy_by_severity"][s] for s in sev], marker="o", label=m)
    ax1.set_ylabel("accuracy (%)")
    ax1.set_ylim(0, 100)
    ax1.set_title(f"{dataset}: accuracy by corruption (mean over severities)")
    ax2.set_xlabel("severity")
    ax2.set_ylim(0, 100)
    ax2.set_title("by severity")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, axis="y")
    if len(models) > 1:
        ax1.legend(fontsize=7)
    fig.tight_layout()
    out = atomic_savefig(fig, path)
    plt.close(fig)
    return out


register_eval_task(CorruptionsAnalysis())

__all__ = ["CorruptionSpec", "CorruptionsAnalysis", "harmonic_mean", "plot_corruptions", "tradeoff"]
