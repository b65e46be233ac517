"""Zero-shot classification (the default task): clean accuracy and robust accuracy under image attacks per ε.

Dataset-entry keys (besides the shared ones)::

    - name: cifar10
      source: uoft-cs/cifar10          # anything `load_classification_dataset` takes
      classnames: null                 # list | set name | {file: classnames.txt} | {builtin: imagenet}
      templates: openai_imagenet       # set name | list | {file: ...}
      image_column: null               # columns of a Hub / parquet source
      label_column: null
      bad_images: fail                 # an unreadable image: fail (stop, naming it) | skip (left out before any
                                       # cell; n = the readable rest; cells record skipped_images and the files)
      attacks:
        - attack: [apgd-ce, apgd-t]    # one registered attack, or several: worst case per sample
          norm: Linf                   # Linf | L2
          eps: [2/255, 4/255]
          steps: 100
          seed: 0
          options: {apgd-t: {n_target_classes: 9}}

and the top-level `template_sets: {name: [...]}` / `classname_sets: {name: [...]}` they can refer to. Cells: one
clean cell (per-sample correctness and logit margins) and one cell per attack and ε; a larger ε only attacks the
points that survived the next smaller one. The `corruptions` and `margin` analyses hang off these datasets.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ...attacks import ATTACKS
from ...data.sources import load_suite_dataset
from ..results import eps_key, fingerprint, pack_mask, unpack_mask
from ..schema import Ctx, DatasetSpec, attack_label, attack_settings, eps_grid, parse_norm
from ..tables import (
    accuracy_table,
    add_curve_point,
    curve_cells,
    curve_columns,
    curve_expected_robustness,
    curve_intervals,
    eps_columns,
    format_eps,
    md_table,
    pct,
    pct_ci,
    protocol_text,
)
from ..zero_shot import RobustAccuracy, attack_survivors, logit_scale_of, predict
from .base import DatasetRun, EvalTask, analyses_of, current_cells, register_eval_task
from .unreadable import check_bad_images, drop_unreadable, parse_bad_images, skipped_record

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttackSpec:
    """One threat model of a dataset: attack(s), norm, ε grid, iterations, seed.

    Args:
        components (`tuple[str, ...]`): registered attack names; with several a point is robust only if it survives
            all of them (they run one after the other on the survivors, like AutoAttack).
        label (`str`): name of the cell column (defaults to the components joined by "+").
        norm (`str`): "Linf" or "L2".
        eps (`tuple[float, ...]`): budgets in [0, 1] pixel units, ascending, ε > 0.
        steps (`int`): iterations of each component.
        seed (`int`): attack seed.
        options (`dict[str, dict]`): extra constructor arguments per component.
    """

    components: tuple[str, ...]
    label: str
    norm: str = "Linf"
    eps: tuple[float, ...] = ()
    steps: int = 100
    seed: int = 0
    options: dict[str, dict] = field(default_factory=dict)


@dataclass(frozen=True)
class ClassificationDataset(DatasetSpec):
    """A zero-shot classification dataset (`classnames` / `templates` as in the YAML, resolved when loading)."""

    classnames: Any = None
    templates: Any = "openai_imagenet"
    image_column: str | None = None
    label_column: str | None = None
    #: an unreadable image in the evaluated subset: "fail" (stop, naming the file) or "skip" (left out before
    #: any cell: n counts the readable images, each cell records how many were skipped and the first files)
    bad_images: str = "fail"

    def __post_init__(self):
        check_bad_images(self.bad_images)


_ATTACK_KEYS = {"attack", "label", "norm", "eps", "steps", "seed", "options"}


def _name_list(ctx: Ctx, value: Any, sets: Mapping, where: str, kind: str) -> Any:
    """Validate a classnames / templates field: a list, a named set, or a {file:} / {builtin:} reference."""
    if value is None:
        return None
    if isinstance(value, str):
        if value in sets:
            return _name_list(ctx, sets[value], {}, where, kind)
        return value  # a builtin template-set name or a single format string; checked when loading the data
    if isinstance(value, list):
        if not value or not all(isinstance(v, str) and v for v in value):
            raise ctx.fail(where, f"{kind} must be a non-empty list of strings.")
        if kind == "templates":
            bad = [t for t in value if "{}" not in t and "{c}" not in t]
            if bad:
                raise ctx.fail(where, f"every template needs a '{{}}' slot for the class name; bad: {bad[:3]}.")
        return list(value)
    if isinstance(value, Mapping):
        if len(value) != 1 or next(iter(value)) not in ("file", "builtin"):
            raise ctx.fail(where, "a reference must be {file: <name in the dataset folder or Hub repo>} or "
                                  "{builtin: imagenet}.")
        key, ref = next(iter(value.items()))
        if not isinstance(ref, str) or not ref:
            raise ctx.fail(f"{where}.{key}", "must be a non-empty string.")
        if key == "builtin" and ref not in ("imagenet",):
            raise ctx.fail(f"{where}.builtin", f"unknown builtin list {ref!r}; known: imagenet.")
        return {key: ref}
    raise ctx.fail(where, f"{kind} must be a list, a set name or a reference, got {type(value).__name__}.")


def classifier(run: DatasetRun):
    """The model's zero-shot head for the dataset's classes (built once per model and dataset)."""
    return run.cached("classifier", lambda: run.model.zero_shot_classifier(run.data.classnames, run.data.templates))


def robust_accuracy(results: dict, model: str, dataset: str | None = None, attack: str | None = None) -> RobustAccuracy:
    """One model's clean and robust accuracy on a classification dataset of a results dict, from its cells.

    Args:
        results (`dict`): a v2 results dict.
        model (`str`): the model's name in the cells (a recipe's row label: `before`, `after`, ...).
        dataset (`str`, *optional*): defaults to the suite's first dataset.
        attack (`str`, *optional*): attack label; defaults to the dataset's first attack.
    """
    entry = next(d for d in results["suite"]["datasets"] if dataset in (None, d["name"]))
    atk = next(a for a in entry["attacks"] if attack in (None, a["label"]))
    clean = results["cells"][f"{model}|{entry['name']}|clean"]
    acc, masks, skipped = {}, {}, set()
    for e in atk["eps"]:
        cell = results["cells"][f"{model}|{entry['name']}|{atk['label']}|{atk['norm']}|{eps_key(e)}"]
        acc[e] = cell["accuracy"]
        masks[e] = unpack_mask(cell["robust"], clean["n"])
        skipped.update(cell.get("skipped_components", []))
    return RobustAccuracy(
        clean_accuracy=clean["accuracy"], robust_accuracy=acc, n_samples=clean["n"], attack=atk["label"],
        norm=atk["norm"], steps=atk["steps"], seed=atk["seed"], robust_mask=masks,
        margins=torch.tensor(clean["margins"]), logit_scale=clean.get("logit_scale"),
        components=tuple(c for c in atk["components"] if c not in skipped), skipped_components=tuple(sorted(skipped)))


class ClassificationTask(EvalTask):
    name = "classification"
    default = True
    keys = frozenset({"classnames", "templates", "image_column", "label_column", "bad_images"})
    default_keys = keys | {"attacks"}
    suite_keys = frozenset({"template_sets", "classname_sets"})
    cell_kinds = ("clean", "attack")
    summary_key = "datasets"
    order = 30
    plot_ylabel = "accuracy (%)"

    # -- schema -------------------------------------------------------------------------------------------------------
    def parse_attack(self, ctx: Ctx, raw: Any, where: str) -> AttackSpec:
        raw = ctx.check_keys(raw, _ATTACK_KEYS, where)
        if "attack" not in raw:
            raise ctx.fail(f"{where}.attack", "missing; give a registered attack name or a list of them.")
        comps = raw["attack"]
        comps = [comps] if isinstance(comps, str) else comps
        if not isinstance(comps, list) or not comps:
            raise ctx.fail(f"{where}.attack", f"must be an attack name or a non-empty list of names, got {comps!r}.")
        for i, c in enumerate(comps):
            w = f"{where}.attack" + (f"[{i}]" if len(comps) > 1 else "")
            if not isinstance(c, str) or c not in ATTACKS:
                raise ctx.fail(w, f"unknown attack {c!r}; registered attacks: {', '.join(ATTACKS.names())}.")
        norm = parse_norm(ctx, raw, where, ("Linf", "L2"), "L1 budgets are not implemented yet by the APGD / PGD "
                          "attacks (only Linf and L2); remove this attack or use norm: Linf / L2.")
        eps = eps_grid(ctx, raw.get("eps"), norm, where)
        options = raw.get("options") or {}
        if not isinstance(options, Mapping):
            raise ctx.fail(f"{where}.options", "must map component names to argument mappings.")
        for k, v in options.items():
            if k not in comps:
                raise ctx.fail(f"{where}.options.{k}", f"is not one of this entry's attacks {comps}.")
            if not isinstance(v, Mapping):
                raise ctx.fail(f"{where}.options.{k}", "must be a mapping of constructor arguments.")
            for banned in ("eps", "norm", "steps", "seed", "model"):
                if banned in v:
                    raise ctx.fail(f"{where}.options.{k}.{banned}", f"set '{banned}' on the attack entry, not in "
                                                                    "options.")
        return AttackSpec(components=tuple(comps), label=attack_label(ctx, raw, "+".join(comps), where), norm=norm,
                          eps=eps, **attack_settings(ctx, raw, where), options={k: dict(v) for k, v in options.items()})

    def parse(self, ctx: Ctx, entry: dict, common: dict, where: str) -> ClassificationDataset:
        sets = {k: ctx.raw.get(k) or {} for k in self.suite_keys}
        for key, value in sets.items():
            if not isinstance(value, Mapping):
                raise ctx.fail(key, "must map set names to lists.")
        return ClassificationDataset(
            **common,
            classnames=_name_list(ctx, entry.get("classnames"), sets["classname_sets"], f"{where}.classnames",
                                  "classnames"),
            templates=_name_list(ctx, entry.get("templates", "openai_imagenet"), sets["template_sets"],
                                 f"{where}.templates", "templates"),
            image_column=ctx.string(entry.get("image_column"), f"{where}.image_column", optional=True),
            label_column=ctx.string(entry.get("label_column"), f"{where}.label_column", optional=True),
            bad_images=parse_bad_images(ctx, entry.get("bad_images", "fail"), f"{where}.bad_images"))

    def data_config(self, spec: ClassificationDataset) -> dict:
        return {"source": spec.source, "split": spec.split, "n_samples": spec.n_samples, "seed": spec.seed,
                "classnames": spec.classnames, "templates": spec.templates, "image_column": spec.image_column,
                "label_column": spec.label_column, "data_dir": spec.data_dir,
                **({"bad_images": "skip"} if getattr(spec, "bad_images", "fail") == "skip" else {})}

    # -- cells --------------------------------------------------------------------------------------------------------
    def load(self, spec, model):
        data = load_suite_dataset(spec, model)
        if getattr(spec, "bad_images", "fail") == "skip":
            data = drop_unreadable(spec.name, data)
        return data

    def run(self, run: DatasetRun) -> None:
        spec = run.spec
        clean_cfg = {**run.base, "kind": "clean"}
        clean = run.cell(run.key("clean"), clean_cfg, lambda: self._clean(run))
        n = clean["n"]
        masks: dict[str, dict[float, torch.Tensor]] = {}
        for atk in spec.attacks:
            parent_cfg, parent_mask = fingerprint(clean_cfg), unpack_mask(clean["correct"], n)
            masks[atk.label] = {}
            for eps in atk.eps:
                cfg = {**run.base, "kind": "attack", "components": atk.components, "norm": atk.norm,
                       "eps": eps_key(eps), "steps": atk.steps, "seed": atk.seed, "options": atk.options,
                       "batch_size": spec.batch_size, "parent": parent_cfg}
                cell = run.cell(run.key(atk.label, atk.norm, eps_key(eps)), cfg,
                                lambda a=atk, e=eps, p=parent_mask: self._attack(run, a, e, p, n, clean["n_classes"]))
                parent_cfg, parent_mask = fingerprint(cfg), unpack_mask(cell["robust"], n)
                masks[atk.label][eps] = parent_mask
        run.outputs.update(clean=clean, masks=masks)

    def _clean(self, run: DatasetRun) -> dict:
        spec, data = run.spec, run.data
        correct, margins = predict(classifier(run), data, batch_size=spec.batch_size, device=run.device, bf16=run.bf16,
                                   num_workers=run.num_workers, progress=run.progress, desc=f"{spec.name} clean")
        return {"kind": "clean", "model": run.model_name, "dataset": spec.name, "n": len(correct),
                "n_classes": len(data.classnames), "logit_scale": logit_scale_of(classifier(run)),
                "accuracy": correct.float().mean().item(),
                "correct": pack_mask(correct), "margins": [round(float(m), 5) for m in margins],
                **skipped_record(run)}

    def _attack(self, run: DatasetRun, atk: AttackSpec, eps: float, alive: torch.Tensor, n: int,
                n_classes: int) -> dict:
        spec = run.spec
        idx = alive.nonzero().flatten().tolist()
        robust = torch.zeros(n, dtype=torch.bool)
        t0 = time.perf_counter()
        broken_by = {c: 0 for c in atk.components}
        if idx:
            survived, broken_by = attack_survivors(
                classifier(run), run.data, idx, eps, attacks=atk.components, norm=atk.norm, steps=atk.steps,
                seed=atk.seed, batch_size=spec.batch_size, n_classes=n_classes, attack_kwargs=atk.options,
                device=run.device, bf16=run.bf16, num_workers=run.num_workers, progress=run.progress,
                desc=f"{spec.name} {atk.label} {atk.norm} ε={eps_key(eps)}")
            robust[torch.tensor(idx)] = survived
        dt = time.perf_counter() - t0
        skipped = [c for c, v in broken_by.items() if v < 0]
        if skipped:
            logger.warning("%s: %s skipped (needs more than %d classes).", spec.name, skipped, n_classes)
        return {"kind": "attack", "model": run.model_name, "dataset": spec.name, "attack": atk.label,
                "components": list(atk.components), "skipped_components": skipped,
                "logit_scale": logit_scale_of(classifier(run)), "norm": atk.norm, "eps": eps,
                "steps": atk.steps, "seed": atk.seed, "n": n, "accuracy": robust.float().mean().item(),
                "robust": pack_mask(robust), "n_attacked": len(idx), "broken_by": broken_by,
                "attacked_images_per_s": round(len(idx) / dt, 3) if idx and dt > 0 else None, **skipped_record(run)}

    # -- results ------------------------------------------------------------------------------------------------------
    def in_grid(self, cell: dict, dataset: dict) -> bool:
        return cell["kind"] == "clean" or in_attack_grid(cell, dataset)

    def summarize(self, model: str, cells: list[dict], suite: dict) -> dict:
        weights = suite.get("expected_robustness_weights")
        weights = {float(k): float(v) for k, v in weights.items()} if weights else None
        exclude = set(suite.get("average_exclude") or ())
        rows: dict[str, dict] = {}
        for cell in cells:
            row = rows.setdefault(cell["dataset"], {"clean": None, "robust": {}})
            if cell["kind"] == "clean":
                row.update(clean=cell["accuracy"], n=cell["n"], logit_scale=cell.get("logit_scale"))
            elif cell["kind"] == "attack":
                add_curve_point(row, cell, cell["accuracy"])
        ds = {}
        for entry in suite["datasets"]:
            row = rows.get(entry["name"])
            if row is None or row["clean"] is None:
                continue
            out = {"n": row.get("n"), "logit_scale": row.get("logit_scale"), "clean": row["clean"],
                   "robust": row["robust"], "expected_robustness": curve_expected_robustness(row, weights),
                   "ci95": curve_intervals(row)}
            for a in analyses_of(self.name):
                own = [c for c in cells if c["dataset"] == entry["name"] and c["kind"] in a.cell_kinds]
                out[a.name] = a.summarize_row(out, own, entry, suite)
            ds[entry["name"]] = out
        averaged = {d: r for d, r in ds.items() if d not in exclude}
        avg = self._average(averaged)
        if avg:
            avg.update(datasets=list(averaged), apart=[d for d in ds if d in exclude],
                       label=suite.get("average_label") or "")
        return {"datasets": ds, "average": avg}

    def _average(self, ds: dict[str, dict]) -> dict:
        """Mean over datasets of every column that all datasets of this model have."""
        if not ds:
            return {}
        cols = [self.columns(r) for r in ds.values()]
        common = set(cols[0]).intersection(*map(set, cols[1:]))
        ers = [r["expected_robustness"] for r in ds.values()]
        er_common = set(ers[0]).intersection(*map(set, ers[1:]))
        out = {"columns": {c: float(np.mean([col[c] for col in cols])) for c in sorted(common)},
               "expected_robustness": {a: float(np.mean([e[a] for e in ers])) for a in sorted(er_common)}}
        for a in analyses_of(self.name):
            out.update(a.average(list(ds.values())))
        return {**out, "n_datasets": len(ds)}

    def columns(self, row: dict) -> dict[str, float]:
        cols = curve_columns(row)
        for a in analyses_of(self.name):
            cols.update(a.columns(row))
        return cols

    def describe_attack(self, dataset: dict, a: dict) -> str:
        eps = ", ".join(format_eps(e) if a["norm"] == "Linf" else f"{e:g}" for e in a["eps"])
        return (f"- `{dataset['name']}`: {a['label']} = {' then '.join(a['components'])}, {a['norm']}, ε ∈ {{{eps}}}, "
                f"{a['steps']} iterations, seed {a['seed']}, n = {dataset.get('n_samples') or 'all'}")

    def report_intro(self) -> str:
        return ("Accuracies in %. Robust accuracy counts a point only if it is classified correctly and survives every "
                "attack listed in its column (worst case per sample). Logit scale: the temperature of the attacked "
                "classifier's logits (the CE attack depends on it, APGD-T's targeted DLR loss does not). Expected "
                "robustness = mean accuracy over the ε grid of that attack including ε = 0 (clean) (arXiv "
                "2509.23325; uniform weights unless the suite sets them). In parentheses: the Wilson 95% interval of "
                "an accuracy over the n evaluated images (sampling of the evaluation set only, not the training seed).")

    def markdown(self, model: str, summary: dict, results: dict) -> list[str]:
        ds = summary.get("datasets")
        if not ds:
            return []
        labels, eps_cols, headers = eps_columns(list(ds.values()))
        header = ["dataset", "n", "logit scale", "clean"] + headers + [f"exp. rob. {a}" for a in labels]
        avg = summary["average"]
        apart = avg.get("apart", [])

        def row_of(r: dict, name: str) -> list[str]:
            scale = r.get("logit_scale")
            return [name, str(r["n"]), "–" if scale is None else f"{scale:.3g}", pct_ci(r["clean"], r["n"])
                    ] + curve_cells(r, eps_cols, labels, n=r["n"])

        rows = [row_of(r, d) for d, r in ds.items() if d not in apart]
        if avg.get("n_datasets", 0) > 1:
            cols = avg["columns"]
            name = f"average of {avg['n_datasets']}" + (f": {avg['label']}" if avg.get("label") else "")
            if apart:
                name += f", without {', '.join(apart)}"
            rows.append([f"**{name}**", "", "", pct(cols.get("clean"))]
                        + [pct(cols.get(f"{a} ε={format_eps(e)}")) for a, e in eps_cols]
                        + [pct(avg["expected_robustness"].get(a)) for a in labels])
        rows += [row_of(ds[d], f"{d} (apart, not in the average)") for d in apart]
        md = [md_table(header, rows), ""]
        skipped = sorted({(c["dataset"], c["attack"], comp) for c in current_cells(results).values()
                          if c.get("model") == model and c.get("skipped_components")
                          for comp in c["skipped_components"]})
        for d, a, comp in skipped:
            md += [f"Note: on `{d}`, `{comp}` was skipped in `{a}` (too few classes); that column is the other "
                   "attacks' worst case only.", ""]
        return md

    def plots(self, summary: dict, results: dict, out: str | os.PathLike) -> dict[str, str]:
        from ..plots import plot_curves, plot_grouped_bars

        models = summary["models"]
        plots = {}
        has_attacks = any(r["robust"] for v in models.values() for r in v.get("datasets", {}).values())
        n_datasets = len({d for v in models.values() for d in v.get("datasets", {})})
        if has_attacks and n_datasets > 1:
            rows = {m: [v["datasets"][d] for d in v["average"].get("datasets", v["datasets"])]
                    for m, v in models.items() if v.get("datasets")}
            plot_curves(rows, os.path.join(out, "acc_vs_eps_average.png"), title="average over datasets")
            plots["accuracy vs ε: average"] = "acc_vs_eps_average.png"
        if len(models) > 1 and all((v.get("average") or {}).get("columns") for v in models.values()):
            values = {m: v["average"]["columns"] for m, v in models.items()}
            cols = sorted(set.intersection(*map(set, values.values())),
                          key=lambda c: (c != "clean", c == "corruptions", c))
            plot_grouped_bars(values, cols, os.path.join(out, "model_comparison.png"), title="model comparison",
                              ylabel="accuracy (%), mean over datasets")
            plots["model comparison"] = "model_comparison.png"
        return plots

    def console(self, summary: dict) -> list[str]:
        lines = []
        for d, r in summary.get("datasets", {}).items():
            parts = [f"clean {pct_ci(r['clean'], r['n'])}"]
            for a, accs in r["robust"].items():
                parts += [f"{a} {e:.4g}: {pct_ci(acc, r['n'])}" for e, acc in sorted(accs.items())]
            lines.append(f"  {d}: " + " | ".join(parts))
        return lines

    def run_markdown(self, rows: dict[str, str], dataset: dict, results: dict, summary: dict) -> list[str]:
        have = {label: m for label, m in rows.items() if f"{m}|{dataset['name']}|clean" in results["cells"]}
        if not have or not dataset["attacks"]:
            return []
        ra = {label: robust_accuracy(results, m, dataset["name"]) for label, m in have.items()}
        md = [protocol_text(ra) + " Expected robustness = mean accuracy over the ε grid including ε = 0.", "",
              accuracy_table(ra), ""]
        for analysis in analyses_of(self.name):  # e.g. the corruptions' ID / OOD / adversarial trade-off
            if analysis.name in (dataset.get("analyses") or {}):
                md += analysis.run_markdown(have, dataset, results, summary)
        return md


def in_attack_grid(cell: dict, dataset: dict) -> bool:
    """Whether an attack cell matches one of the dataset's attacks (label, norm, ε, iterations, seed)."""
    from ..tables import same_eps

    return any(a["label"] == cell.get("attack") and a["norm"] == cell.get("norm")
               and any(same_eps(e, cell["eps"]) for e in a["eps"])
               and a.get("steps") == cell.get("steps") and a.get("seed", cell.get("seed")) == cell.get("seed")
               for a in dataset.get("attacks", []))


register_eval_task(ClassificationTask())

__all__ = ["AttackSpec", "ClassificationDataset", "ClassificationTask", "classifier", "in_attack_grid",
           "robust_accuracy"]
