"""Readable results: markdown tables, console tables and accuracy-vs-ε plots, written atomically."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..utils.io import atomic_savefig, atomic_write_json, atomic_write_text
from .zero_shot import RobustAccuracy, expected_robustness


def format_eps(eps: float) -> str:
    """4/255 for budgets on the 1/255 grid, else the plain number."""
    if eps == 0:
        return "0"
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-4 else f"{eps:.4g}"


def accuracy_table(results: Mapping[str, RobustAccuracy], fmt: str = "markdown") -> str:
    """One row per model: the logit scale of its classifier, clean, robust accuracy at each ε, expected robustness
    (accuracies in %)."""
    eps = sorted({e for r in results.values() for e in r.robust_accuracy})
    header = ["model", "logit scale", "clean"] + [f"ε={format_eps(e)}" for e in eps] + ["expected rob."]
    rows = []
    for name, r in results.items():
        cells = [name, "–" if r.logit_scale is None else f"{r.logit_scale:.3g}", f"{100 * r.clean_accuracy:.1f}"]
        cells += [f"{100 * r.robust_accuracy[e]:.1f}" if e in r.robust_accuracy else "–" for e in eps]
        cells.append(f"{100 * r.expected_robustness:.1f}")
        rows.append(cells)
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in rows]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def fmt_row(cells):
        return "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths))

    return "\n".join([fmt_row(header), fmt_row(["-" * w for w in widths])] + [fmt_row(c) for c in rows])


def plot_accuracy_vs_eps(results: Mapping[str, RobustAccuracy], path: str | os.PathLike, title: str = "") -> Path:
    """Accuracy (%) against ε, one curve per model (ε = 0 is clean accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, r in results.items():
        pts = sorted({0.0: r.clean_accuracy, **r.robust_accuracy}.items())
        ax.plot([e * 255 for e, _ in pts], [100 * a for _, a in pts], marker="o", label=name)
    ax.set_xlabel(f"ε ({next(iter(results.values())).norm}, in /255 pixel units)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    r0 = next(iter(results.values()))
    ax.set_title(title or f"{r0.attack} ({r0.steps} it.), n={r0.n_samples}")
    fig.tight_layout()
    out = atomic_savefig(fig, path)
    plt.close(fig)
    return out


def write_report(output_dir: str | os.PathLike, results: Mapping[str, RobustAccuracy], *, title: str,
                 intro: str = "", extra: dict | None = None, plot_name: str = "accuracy_vs_eps.png") -> dict:
    """Write `results.json`, `report.md` and the accuracy-vs-ε plot into `output_dir`; return the JSON dict."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {"title": title, "results": {k: v.to_dict() for k, v in results.items()}, **(extra or {})}
    atomic_write_json(out / "results.json", data)
    plot_accuracy_vs_eps(results, out / plot_name, title)

    md = [f"# {title}", "", intro, "",
          protocol_text(results) + " Expected robustness = mean accuracy over the ε grid including ε = 0.", "",
          accuracy_table(results), "", f"![accuracy vs epsilon]({plot_name})", ""]
    if (out / "eval" / "report.md").is_file():
        md += ["The suite runner's cells (per point), report and suite file are in [eval/](eval/report.md).", ""]
    atomic_write_text(out / "report.md", "\n".join(md))
    return data


# -- suite reports ---------------------------------------------------------------------------------------------------

def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _same_eps(a: float, b: float) -> bool:
    return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))


def in_suite_grid(cell: dict, suite: dict) -> bool:
    """Whether a stored cell belongs to the grid of `suite` (a `Suite.to_dict()`, as stored in `results.json`).

    A results file keeps the cells of earlier runs into the same folder so that a changed suite can reuse them; the
    report must only show the current suite's grid: its datasets, each dataset's attacks (label, norm, ε, iterations,
    seed), corruption types × severities and margin analysis.
    """
    spec = next((d for d in suite.get("datasets", []) if d["name"] == cell.get("dataset")), None)
    if spec is None:
        return False
    kind = cell.get("kind")
    if kind in ("clean", "vqa_clean", "caption_clean"):
        return True
    if kind in ("attack", "vqa_attack", "caption_attack"):
        for a in spec.get("attacks", []):
            if (a["label"] == cell.get("attack") and a["norm"] == cell.get("norm")
                    and any(_same_eps(e, cell["eps"]) for e in a["eps"])
                    and a.get("steps") == cell.get("steps") and a.get("seed", cell.get("seed")) == cell.get("seed")):
                return True
        return False
    if kind == "corruption":
        cs = spec.get("corruptions") or {}
        return cell["corruption"] in cs.get("types", ()) and int(cell["severity"]) in cs.get("severities", ())
    if kind == "margin":
        return bool(spec.get("margin")) and spec["margin"].get("attack") == cell.get("attack")
    return False


def current_cells(results: dict) -> dict[str, dict]:
    """The cells of `results` that belong to its suite's grid and to its models (see `in_suite_grid`)."""
    suite, models = results["suite"], set(results.get("models", []))
    return {k: c for k, c in results["cells"].items()
            if (not models or c.get("model") in models) and in_suite_grid(c, suite)}


def summarize_suite(results: dict) -> dict:
    """Derived metrics of a suite results dict (as written by `run_suite`).

    Returns `{"models": {model: {"datasets": {dataset: row}, "average": row}}, "borda": [...] | None}` where a row has
    `clean`, `robust` (`{attack: {eps: acc}}`), `expected_robustness` (`{attack: value}`: mean accuracy over
    {0} ∪ that attack's ε grid, methods.md), `corruptions` (see `corruption_errors`) and `margin`. VQA datasets
    (`task: vqa`) go to `{model: {"vqa": {dataset: row}}}` instead, with VQA accuracy in `clean` / `robust`, plus
    `per_type` (`{question type: {"clean" | "<attack> ε=<eps>": acc}}`), `chance` and `answer_mode`; they are left
    out of the classification averages but enter the Borda ranking (columns are compared per dataset). Captioning
    datasets (`task: caption`) go to `{model: {"caption": {dataset: row}}}`, with corpus CIDEr ×100 in `clean` /
    `robust` (same shape; also in the Borda ranking, not in the averages or the accuracy plots).

    Only the cells of the suite's current grid are summarised (`current_cells`): cells an earlier, different suite
    left in the same results file are kept there for reuse but never reported. The average runs over the
    classification datasets the suite does not list in `average_exclude` (`average["datasets"]`); the excluded ones
    are reported apart (`average["apart"]`).
    """
    from .borda import borda_ranking
    from .corruptions import ALEXNET_IMAGENET_C_ERRORS, corruption_errors

    suite = results["suite"]
    weights = suite.get("expected_robustness_weights")
    weights = {float(k): float(v) for k, v in weights.items()} if weights else None
    refs = {d["name"]: (d.get("corruptions") or {}).get("reference", "none") for d in suite["datasets"]}
    order = [d["name"] for d in suite["datasets"]]
    exclude = set(suite.get("average_exclude") or ())
    rows: dict[str, dict[str, dict]] = {}
    vqa_rows: dict[str, dict[str, dict]] = {}
    cap_rows: dict[str, dict[str, dict]] = {}
    for cell in current_cells(results).values():
        m, d = cell["model"], cell["dataset"]
        if cell["kind"] in ("caption_clean", "caption_attack"):
            rows.setdefault(m, {})
            row = cap_rows.setdefault(m, {}).setdefault(d, {"clean": None, "robust": {}})
            if cell["kind"] == "caption_clean":
                row.update(clean=cell["cider"], n=cell["n"])
            else:
                row["robust"].setdefault(f"{cell['attack']} ({cell['norm']})", {})[float(cell["eps"])] = cell["cider"]
            continue
        if cell["kind"] in ("vqa_clean", "vqa_attack"):
            rows.setdefault(m, {})
            _add_vqa_cell(vqa_rows.setdefault(m, {}).setdefault(d, {"clean": None, "robust": {}, "per_type": {}}),
                          cell)
            continue
        row = rows.setdefault(m, {}).setdefault(d, {"clean": None, "robust": {}, "corr_acc": {}, "margin": {}})
        if cell["kind"] == "clean":
            row["clean"], row["n"], row["logit_scale"] = cell["accuracy"], cell["n"], cell.get("logit_scale")
        elif cell["kind"] == "attack":
            row["robust"].setdefault(f"{cell['attack']} ({cell['norm']})", {})[float(cell["eps"])] = cell["accuracy"]
        elif cell["kind"] == "corruption":
            row["corr_acc"].setdefault(cell["corruption"], {})[int(cell["severity"])] = cell["accuracy"]
        elif cell["kind"] == "margin":
            row["margin"][cell["attack"]] = {k: cell[k] for k in ("kendall_tau", "p_value", "subset_size",
                                                                  "n_correct_subset", "estimates",
                                                                  "input_margin_method")}
    ref_models = {}
    out: dict[str, Any] = {"models": {}}
    for m, by_d in rows.items():
        ds = {}
        for d in sorted(by_d, key=lambda k: order.index(k) if k in order else len(order)):
            row = by_d[d]
            if row["clean"] is None:
                continue
            er = {}
            for a, accs in row["robust"].items():
                grid = {0.0: row["clean"], **accs}
                w = None
                if weights:  # the suite validated that every budget of the grid has a weight
                    w = {e: next(v for k, v in weights.items() if abs(k - e) < 1e-9) for e in grid}
                er[a] = expected_robustness(grid, w)
            corr = None
            if row["corr_acc"]:
                ref_name = refs.get(d, "none")
                reference = None
                if ref_name == "alexnet":
                    reference = ALEXNET_IMAGENET_C_ERRORS
                elif ref_name.endswith(".json"):
                    reference = ref_models.setdefault((ref_name, d), _reference_errors(ref_name, d))
                corr = corruption_errors(row["corr_acc"], reference)
                corr["reference"] = ref_name
            ds[d] = {"n": row.get("n"), "logit_scale": row.get("logit_scale"), "clean": row["clean"],
                     "robust": row["robust"], "expected_robustness": er,
                     "corruptions": corr, "margin": row["margin"]}
        averaged = {d: r for d, r in ds.items() if d not in exclude}
        avg = _average(averaged)
        if avg:
            avg.update(datasets=list(averaged), apart=[d for d in ds if d in exclude],
                       label=suite.get("average_label") or "")
        out["models"][m] = {"datasets": ds, "average": avg}
        vqa = {d: vqa_rows[m][d] for d in sorted(vqa_rows.get(m, {}),
                                                  key=lambda k: order.index(k) if k in order else len(order))
               if vqa_rows[m][d]["clean"] is not None}
        for r in vqa.values():
            r["expected_robustness"] = {a: expected_robustness({0.0: r["clean"], **accs}) for a, accs in
                                        r["robust"].items()}
            r["corruptions"], r["margin"] = None, {}
        if vqa:
            out["models"][m]["vqa"] = vqa
        cap = {d: cap_rows[m][d] for d in sorted(cap_rows.get(m, {}),
                                                  key=lambda k: order.index(k) if k in order else len(order))
               if cap_rows[m][d]["clean"] is not None}
        for r in cap.values():
            r["expected_robustness"] = {a: expected_robustness({0.0: r["clean"], **v}) for a, v in r["robust"].items()}
            r["corruptions"], r["margin"] = None, {}
        if cap:
            out["models"][m]["caption"] = cap
    if len(out["models"]) > 1:
        scores = {m: {d: _columns(r) for d, r in {**v["datasets"], **v.get("vqa", {}), **v.get("caption", {})}.items()}
                  for m, v in out["models"].items()}
        out["borda"] = borda_ranking(scores)
    else:
        out["borda"] = None
    return out


def _add_vqa_cell(row: dict, cell: dict) -> None:
    if cell["kind"] == "vqa_clean":
        row.update(clean=cell["accuracy"], n=cell["n"], chance=cell.get("chance_accuracy"),
                   answer_mode=cell.get("answer_mode"))
        for t, v in cell.get("per_type", {}).items():
            row["per_type"].setdefault(t, {})["clean"] = v
    else:
        a = f"{cell['attack']} ({cell['norm']})"
        row["robust"].setdefault(a, {})[float(cell["eps"])] = cell["accuracy"]
        eps = format_eps(float(cell["eps"])) if cell["norm"] == "Linf" else f"{float(cell['eps']):g}"
        for t, v in cell.get("per_type", {}).items():
            row["per_type"].setdefault(t, {})[f"{a} ε={eps}"] = v


def _reference_errors(path: str, dataset: str) -> dict[str, list[float]] | None:
    """Per-corruption error by severity of the first model of a results JSON, for `dataset` (a user reference)."""
    import json

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


def _columns(row: dict) -> dict[str, float]:
    cols = {"clean": row["clean"]}
    for a, accs in row["robust"].items():
        for e, v in accs.items():
            cols[f"{a} ε={format_eps(e)}"] = v
    if row["corruptions"]:
        cols["corruptions"] = row["corruptions"]["mean_accuracy"]
    return cols


def _average(ds: dict[str, dict]) -> dict:
    """Mean over datasets of every column that all datasets of this model have."""
    if not ds:
        return {}
    import numpy as np

    cols = [_columns(r) for r in ds.values()]
    common = set(cols[0]).intersection(*map(set, cols[1:]))
    avg = {c: float(np.mean([col[c] for col in cols])) for c in sorted(common)}
    ers = [r["expected_robustness"] for r in ds.values()]
    er_common = set(ers[0]).intersection(*map(set, ers[1:])) if ers else set()
    avg_er = {a: float(np.mean([e[a] for e in ers])) for a in sorted(er_common)}
    mces = [r["corruptions"]["mce"] for r in ds.values() if r["corruptions"] and r["corruptions"]["mce"] is not None]
    return {"columns": avg, "expected_robustness": avg_er, "mce": float(np.mean(mces)) if mces else None,
            "n_datasets": len(ds)}


def plot_suite_accuracy(summary: dict, dataset: str | None, path: str | os.PathLike) -> Path:
    """Accuracy vs ε, one curve per (model, attack), one panel per norm; `dataset=None` averages over the datasets of
    the average row (those that have the attack; datasets the suite reports apart are left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, dict[str, dict[float, float]]] = {}  # norm -> curve label -> {eps: acc}
    for m, v in summary["models"].items():
        averaged = v["average"].get("datasets", list(v["datasets"])) if v.get("average") else list(v["datasets"])
        rows = ([v["datasets"][d] for d in averaged] if dataset is None
                else [v["datasets"].get(dataset) or v.get("vqa", {}).get(dataset)])
        pts_by: dict[str, dict[float, list[float]]] = {}
        for r in filter(None, rows):
            for a, accs in r["robust"].items():
                c = pts_by.setdefault(a, {})
                c.setdefault(0.0, []).append(r["clean"])
                for e, acc in accs.items():
                    c.setdefault(e, []).append(acc)
        for a, c in pts_by.items():
            n = max(len(x) for x in c.values())
            norm = a.rsplit("(", 1)[-1].rstrip(")") if "(" in a else "Linf"
            label = f"{m} · {a}" if len(summary["models"]) > 1 else a
            curves.setdefault(norm, {})[label] = {e: sum(x) / len(x) for e, x in c.items() if len(x) == n}
    norms = sorted(curves, key=lambda k: (k != "Linf", k)) or ["Linf"]
    fig, axes = plt.subplots(1, len(norms), figsize=(6.4 * len(norms), 4.2), dpi=120, squeeze=False)
    for ax, norm in zip(axes[0], norms):
        for label, pts in curves.get(norm, {}).items():
            xs = sorted(pts)
            ax.plot([e * 255 if norm == "Linf" else e for e in xs], [100 * pts[e] for e in xs], marker="o",
                    label=label)
        ax.set_xlabel("ε (L∞, in /255 pixel units)" if norm == "Linf" else f"ε ({norm}, pixel units)")
        is_vqa = dataset is not None and any(dataset in v.get("vqa", {}) for v in summary["models"].values())
        ax.set_ylabel("VQA accuracy (%)" if is_vqa else "accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        ax.set_title(f"{dataset or 'average over datasets'} · {norm}")
    fig.tight_layout()
    out = atomic_savefig(fig, path)
    plt.close(fig)
    return out


def plot_corruptions(summary: dict, dataset: str, path: str | os.PathLike) -> Path:
    """Corruption accuracy by type (mean over severities; bars per model) and by severity (lines per model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = [m for m, v in summary["models"].items() if (v["datasets"].get(dataset) or {}).get("corruptions")]
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


def plot_model_comparison(summary: dict, path: str | os.PathLike) -> Path:
    """Grouped bars: each model's dataset-averaged clean, robust (per attack and ε) and corruption accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(summary["models"])
    cols = sorted(set.intersection(*[set(summary["models"][m]["average"].get("columns", {})) for m in models]),
                  key=lambda c: (c != "clean", c == "corruptions", c))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cols) + 2), 4.2), dpi=120)
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        avg = summary["models"][m]["average"]["columns"]
        ax.bar(np.arange(len(cols)) + i * width, [100 * avg[c] for c in cols], width, label=m)
    ax.set_xticks(np.arange(len(cols)) + 0.4 - width / 2, cols, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("accuracy (%), mean over datasets")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    ax.set_title("model comparison")
    fig.tight_layout()
    out = atomic_savefig(fig, path)
    plt.close(fig)
    return out


def suite_markdown(results: dict, summary: dict, plots: dict[str, str]) -> str:
    """The markdown report of a suite run (tables for every model, corruptions, margins, Borda, plots)."""
    from .corruptions import ALEXNET_SOURCE

    suite = results["suite"]
    md = [f"# Robustness report: suite `{suite['name']}`", ""]
    if suite.get("description"):
        md += [suite["description"].strip(), ""]
    meta = results.get("meta", {})
    md += [f"vlmrobust {results.get('vlmrobust_version')}, device {meta.get('device')}, bf16 {meta.get('bf16')}. "
           "Accuracies in %. Robust accuracy counts a point only if it is classified correctly and survives every "
           "attack listed in its column (worst case per sample). Logit scale: the temperature of the attacked "
           "classifier's logits (the CE attack depends on it, APGD-T's targeted DLR loss does not). Expected "
           "robustness = mean accuracy over the ε grid "
           "of that attack including ε = 0 (clean) (arXiv 2509.23325; uniform weights unless the suite sets them).",
           ""]
    md += ["## Threat models", ""]
    for d in suite["datasets"]:
        for a in d["attacks"]:
            eps = ", ".join(format_eps(e) if a["norm"] == "Linf" else f"{e:g}" for e in a["eps"])
            if d.get("task") == "vqa":
                vq = d.get("vqa") or {}
                ens = (f"ensemble over {a.get('max_references') or 'all'} distinct references per question"
                       + (f" + targeted runs {a['targets']}" if a.get("targets") else "")
                       if a.get("ensemble") else "one run on the majority answer")
                md.append(f"- `{d['name']}` (VQA, answers by {vq.get('answer_mode')}): {a['label']} = APGD on the "
                          f"teacher-forced answer loss, {ens}, {a['norm']}, ε ∈ {{{eps}}}, {a['steps']} iterations, "
                          f"seed {a['seed']}, n = {d.get('n_samples') or 'all'} questions")
                continue
            if d.get("task") == "caption":
                md.append(f"- `{d['name']}` (captioning, CIDEr): {a['label']} = APGD on the teacher-forced CE of a "
                          f"reference caption, one run per reference (at most {a.get('n_references') or 'all'}), "
                          f"lowest CIDEr per image kept, {a['norm']}, ε ∈ {{{eps}}}, {a['steps']} iterations, "
                          f"seed {a['seed']}, fixed subset of n = {d.get('n_samples') or 'all'} images")
                continue
            md.append(f"- `{d['name']}`: {a['label']} = {' then '.join(a['components'])}, {a['norm']}, "
                      f"ε ∈ {{{eps}}}, {a['steps']} iterations, seed {a['seed']}, n = {d.get('n_samples') or 'all'}")
    md.append("")
    for m, v in summary["models"].items():
        md += [f"## `{m}`", ""]
        if v.get("vqa"):
            md += _vqa_markdown(v["vqa"])
        if v.get("caption"):
            md += _caption_markdown(v["caption"])
        if not v["datasets"]:
            continue
        labels = sorted({a for r in v["datasets"].values() for a in r["robust"]})
        eps_cols = [(a, e) for a in labels for e in sorted({e for r in v["datasets"].values()
                                                           for e in r["robust"].get(a, {})})]
        header = ["dataset", "n", "logit scale", "clean"] + [
            f"{a} ε={format_eps(e) if 'Linf' in a else f'{e:g}'}" for a, e in eps_cols] + [
            f"exp. rob. {a}" for a in labels]
        avg = v["average"]
        apart = avg.get("apart", [])

        def row_of(r: dict, name: str, eps_cols=eps_cols, labels=labels) -> list[str]:
            scale = r.get("logit_scale")
            cells = [name, str(r["n"]), "–" if scale is None else f"{scale:.3g}", _pct(r["clean"])]
            cells += [_pct(r["robust"].get(a, {}).get(e)) for a, e in eps_cols]
            cells += [_pct(r["expected_robustness"].get(a)) for a in labels]
            return cells

        rows = [row_of(r, d) for d, r in v["datasets"].items() if d not in apart]
        if avg.get("n_datasets", 0) > 1:
            cols = avg["columns"]
            name = f"average of {avg['n_datasets']}" + (f": {avg['label']}" if avg.get("label") else "")
            if apart:
                name += f", without {', '.join(apart)}"
            cells = [f"**{name}**", "", "", _pct(cols.get("clean"))]
            cells += [_pct(cols.get(f"{a} ε={format_eps(e)}")) for a, e in eps_cols]
            cells += [_pct(avg["expected_robustness"].get(a)) for a in labels]
            rows.append(cells)
        rows += [row_of(v["datasets"][d], f"{d} (apart, not in the average)") for d in apart]
        md += [_md_table(header, rows), ""]
        skipped = sorted({(c["dataset"], c["attack"], comp) for c in current_cells(results).values()
                          if c.get("model") == m and c.get("skipped_components") for comp in c["skipped_components"]})
        for d, a, comp in skipped:
            md += [f"Note: on `{d}`, `{comp}` was skipped in `{a}` (too few classes); that column is the other "
                   "attacks' worst case only.", ""]
        corr = {d: r["corruptions"] for d, r in v["datasets"].items() if r["corruptions"]}
        if corr:
            md += ["### Common corruptions", ""]
            sevs = sorted({s for c in corr.values() for s in c["accuracy_by_severity"]})
            hdr = ["dataset", "mean corruption acc.", "mCE", "reference", f"by severity ({'/'.join(map(str, sevs))})"]
            crow = []
            for d, c in corr.items():
                mce = f"{100 * c['mce']:.1f} ({len(c['mce_types'])} types)" if c["mce"] is not None else \
                    f"– (unnormalised mean error {100 * c['mean_error']:.1f})"
                sev = " / ".join(_pct(c["accuracy_by_severity"][s]) for s in sorted(c["accuracy_by_severity"]))
                ref = ALEXNET_SOURCE if c["reference"] == "alexnet" else c["reference"]
                crow.append([d, _pct(c["mean_accuracy"]), mce, ref, sev])
            md += [_md_table(hdr, crow), ""]
            for d, c in corr.items():
                types = list(c["accuracy_by_type"])
                md += [f"Accuracy by corruption type on `{d}` (mean over severities):", "",
                       _md_table(types, [[_pct(c["accuracy_by_type"][t]) for t in types]]), ""]
            if any(c["reference"] == "alexnet" for c in corr.values()):
                md += ["mCE is normalised by AlexNet's published *ImageNet-C* errors (15 benchmark corruptions; the "
                       "4 extra ones enter the mean accuracy only). It is comparable to published mCE only for "
                       "ImageNet images corrupted at 224 px; elsewhere it is a relative scale.", ""]
        marg = {d: r["margin"] for d, r in v["datasets"].items() if r["margin"]}
        if marg:
            md += ["### Margin consistency", "",
                   "Kendall τ between clean logit margin and input-space margin (smallest perturbation found by "
                   "FAB-T) on a subset of correctly classified points; the estimate thresholds the logit margin of "
                   "*all* points at λ fixed on the subset's attacked robust accuracy (arXiv 2406.18451). A low τ means "
                   "the estimate should not be trusted.", ""]
            hdr = ["dataset", "attack", "subset (correct)", "Kendall τ", "ε", "estimated rob. acc.", "measured",
                   "abs. error"]
            mrows = []
            for d, by_a in marg.items():
                for a, mm in by_a.items():
                    for e, est in mm["estimates"].items():
                        mrows.append([d, a, f"{mm['subset_size']} ({mm['n_correct_subset']})",
                                      f"{mm['kendall_tau']:.3f}", format_eps(float(e)), _pct(est["estimate"]),
                                      _pct(est["measured"]), f"{100 * est['abs_error']:.1f}"])
            md += [_md_table(hdr, mrows), ""]
    if summary.get("borda"):
        md += ["## Borda ranking", "",
               "Per dataset, models are ranked on every accuracy column they all have (clean, each attack × ε, mean "
               "corruption accuracy); rank 1 is best, ties share the mean rank; the Borda score is the sum of ranks "
               "(lower is better).", "",
               _md_table(["place", "model", "Borda score", "mean rank", "columns"],
                         [[str(b["place"]), f"`{b['model']}`", f"{b['borda']:g}", f"{b['mean_rank']:.2f}",
                           str(b["n_columns"])] for b in summary["borda"]]), ""]
    if results.get("skipped"):
        md += ["## Skipped datasets", ""] + [f"- {k}: {v}" for k, v in results["skipped"].items()] + [""]
    md += ["## Plots", ""] + [f"![{k}]({v})" for k, v in plots.items()] + [""]
    return "\n".join(md)


def _vqa_markdown(vqa: dict[str, dict]) -> list[str]:
    """The VQA table of one model (VQA accuracy clean / per attack and ε, expected robustness) and per-type rows."""
    labels = sorted({a for r in vqa.values() for a in r["robust"]})
    eps_cols = [(a, e) for a in labels for e in sorted({e for r in vqa.values() for e in r["robust"].get(a, {})})]
    header = ["VQA dataset", "n", "answers", "chance", "clean"] + \
        [f"{a} ε={format_eps(e) if 'Linf' in a else f'{e:g}'}" for a, e in eps_cols] + \
        [f"exp. rob. {a}" for a in labels]
    rows = []
    for d, r in vqa.items():
        cells = [d, str(r.get("n")), str(r.get("answer_mode")), _pct(r.get("chance")), _pct(r["clean"])]
        cells += [_pct(r["robust"].get(a, {}).get(e)) for a, e in eps_cols]
        cells += [_pct(r["expected_robustness"].get(a)) for a in labels]
        rows.append(cells)
    md = ["### VQA accuracy", "",
          "Official VQA accuracy (min(1, #matching references / 3), averaged over leave-one-out reference subsets), "
          "in %; robust = per question the worst answer over the attack runs (and over every smaller ε). Chance = "
          "always answering each question type's most frequent answer (where the dataset defines it).", "",
          _md_table(header, rows), ""]
    for d, r in vqa.items():
        if len(r["per_type"]) > 1:
            cols = list(next(iter(r["per_type"].values())))
            md += [f"By question type on `{d}`:", "",
                   _md_table(["type"] + cols, [[t] + [_pct(v.get(c)) for c in cols]
                                               for t, v in r["per_type"].items()]), ""]
    return md


def _caption_markdown(cap: dict[str, dict]) -> list[str]:
    """The captioning table of one model: corpus CIDEr clean / per attack and ε, expected robustness."""
    labels = sorted({a for r in cap.values() for a in r["robust"]})
    eps_cols = [(a, e) for a in labels for e in sorted({e for r in cap.values() for e in r["robust"].get(a, {})})]
    header = ["captioning dataset", "n images", "clean"] + \
        [f"{a} ε={format_eps(e) if 'Linf' in a else f'{e:g}'}" for a, e in eps_cols] + \
        [f"exp. rob. {a}" for a in labels]

    def f(v):
        return "–" if v is None else f"{v:.1f}"

    rows = []
    for d, r in cap.items():
        cells = [d, str(r.get("n")), f(r["clean"])]
        cells += [f(r["robust"].get(a, {}).get(e)) for a, e in eps_cols]
        cells += [f(r["expected_robustness"].get(a)) for a in labels]
        rows.append(cells)
    return ["### Captioning CIDEr", "",
            "Corpus CIDEr-D ×100 (COCO caption toolkit: PTB tokenizer + pycocoevalcap's Cider) of greedy captions on "
            "the suite's fixed image subset; robust = per image the lowest CIDEr over the attack runs (one per "
            "reference caption) and over every smaller ε, scored against the IDF of the subset's references (the "
            "clean run's IDF), so the column is the corpus CIDEr of the selected captions.", "",
            _md_table(header, rows), ""]


def write_suite_report(results: dict, output_dir: str | os.PathLike) -> dict:
    """Write `report.md` and the PNG plots of a suite results dict into `output_dir`; return the summary."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize_suite(results)
    plots: dict[str, str] = {}
    datasets = [d["name"] for d in results["suite"]["datasets"]
                if any(d["name"] in v["datasets"] or d["name"] in v.get("vqa", {}) for v in summary["models"].values())]
    has_attacks = any(r["robust"] for v in summary["models"].values()
                      for r in (*v["datasets"].values(), *v.get("vqa", {}).values()))
    if has_attacks:
        for d in datasets:
            name = f"acc_vs_eps_{_safe(d)}.png"
            plot_suite_accuracy(summary, d, out / name)
            plots[f"accuracy vs ε: {d}"] = name
        if sum(any(d in v["datasets"] for v in summary["models"].values()) for d in datasets) > 1:
            plot_suite_accuracy(summary, None, out / "acc_vs_eps_average.png")
            plots["accuracy vs ε: average"] = "acc_vs_eps_average.png"
    for d in datasets:
        if any((v["datasets"].get(d) or {}).get("corruptions") for v in summary["models"].values()):
            name = f"corruptions_{_safe(d)}.png"
            plot_corruptions(summary, d, out / name)
            plots[f"corruptions: {d}"] = name
    if len(summary["models"]) > 1 and all(v["average"].get("columns") for v in summary["models"].values()):
        plot_model_comparison(summary, out / "model_comparison.png")
        plots["model comparison"] = "model_comparison.png"
    atomic_write_text(out / "report.md", suite_markdown(results, summary, plots))
    return summary


def describe_attacks(components: Sequence[str], skipped: Sequence[str] = ()) -> str:
    """'the worst case per point of APGD-CE and APGD-T' (or the single attack), for reports and model cards."""
    names = [c.upper() if c.startswith("apgd") else c for c in components if c not in skipped]
    text = names[0] if len(names) == 1 else "the worst case per point of " + " and ".join(names)
    if skipped:
        text += f" ({', '.join(s.upper() for s in skipped)} skipped: too few classes)"
    return text


def protocol_text(results) -> str:
    """One sentence naming how the robust accuracies of `results` (`{row: RobustAccuracy}`) were measured."""
    r0 = next(iter(results.values()))
    comps = tuple(r0.components or (r0.attack,))
    if any(tuple(r.components or (r.attack,)) != comps for r in results.values()):
        attacks = "; ".join(f"{k}: {describe_attacks(r.components or (r.attack,))}" for k, r in results.items())
    else:
        attacks = describe_attacks(comps, r0.skipped_components)
    norm = "L∞" if r0.norm == "Linf" else r0.norm
    text = (f"Robust accuracy (%) under {attacks} ({r0.steps} iterations each, {norm}, seed {r0.seed}) on "
            f"{r0.n_samples} images; a point counts only if it is classified correctly and survives every attack "
            "(and every smaller ε). Logit scale: the temperature of the evaluated classifier's logits, per row")
    if "apgd-t" in comps:
        text += " (APGD-T's targeted DLR loss does not depend on it)"
    return text + "."
