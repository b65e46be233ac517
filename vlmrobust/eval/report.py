"""Readable results: the summary, `report.md` and the plots of a results file, whatever its tasks.

The summary, the sections and the plots come from the tasks of the suite (`vlmrobust.eval.tasks`); this module
puts them together: an optional recipe header (the `run` section of the file: title, intro and each task's compact
table of its rows), the threat models, one section per model, the Borda ranking of several models, skipped
datasets and the plots.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..utils.io import atomic_write_text
from .borda import borda_ranking
from .plots import plot_curves
from .tables import accuracy_table, describe_attacks, format_eps, md_table, protocol_text, safe_name
from .tasks import EVAL_TASKS, EvalTask, all_tasks, current_cells, task_of_cell


def _used_tasks(suite: dict) -> list[EvalTask]:
    """The tasks and analyses of a stored suite, in report order."""
    names = {d["task"] for d in suite["datasets"]} | {a for d in suite["datasets"] for a in d.get("analyses") or {}}
    missing = sorted(n for n in names if n not in EVAL_TASKS)
    if missing:
        raise KeyError(f"these results use eval task(s) {missing}, which are not registered here; import the module "
                       f"that registers them (registered: {', '.join(EVAL_TASKS.names())}).")
    return [t for t in all_tasks() if t.name in names]


def summarize_suite(results: dict) -> dict:
    """Derived metrics of a results dict: `{"models": {model: {...}}, "borda": [...] | None}`.

    Each task of the suite puts its rows under its `rows_key` in `summary["models"][model]` (classification rows
    under `datasets`, with the per-model `average` and, in each row, its analyses' entries such as `corruptions` and
    `margin`; VQA and captioning rows under their task's name). Only the cells of the suite's
    current grid are summarised (`current_cells`): cells an earlier, different suite left in the same results file are
    kept there for reuse but never reported. With several models, the Borda ranking compares them per dataset on
    every column (`EvalTask.columns`) all of them have.
    """
    suite = results["suite"]
    tasks = [t for t in _used_tasks(suite) if t.parent is None]
    by_model: dict[str, list[dict]] = {}
    for cell in current_cells(results).values():
        by_model.setdefault(cell["model"], []).append(cell)
    out: dict = {"models": {}}
    for m, cells in by_model.items():
        entry: dict = {}
        for task in tasks:
            mine = [c for c in cells if (task_of_cell(c).parent or task_of_cell(c).name) == task.name]
            if mine:
                entry.update(task.summarize(m, mine, suite))
        out["models"][m] = entry
    out["borda"] = None
    if len(out["models"]) > 1:
        out["borda"] = borda_ranking({m: {d: t.columns(r) for t in tasks for d, r in v.get(t.rows_key, {}).items()}
                                      for m, v in out["models"].items()})
    return out


def run_markdown(results: dict, summary: dict, plots: dict[str, str]) -> list[str]:
    """The header of a recipe's results (its `run` section): title, intro, and per dataset its task's table of the
    run's rows (e.g. before / after) with the dataset's plot."""
    run = results["run"]
    rows = {r: r for r in run.get("rows", [])}
    md = [f"# {run.get('title') or 'Run'}", "", run.get("intro", ""), ""]
    for entry in results["suite"]["datasets"]:
        md += EVAL_TASKS.get(entry["task"]).run_markdown(rows, entry, results, summary)
        plot = plots.get(f"accuracy vs ε: {entry['name']}")
        if plot:
            md += [f"![accuracy vs epsilon]({plot})", ""]
    return md + ["Every cell of these rows (per point) is below, with the suite that produced them (`suite.yaml`: "
                 "`vlmrobust eval --suite suite.yaml` reproduces a row).", ""]


def suite_markdown(results: dict, summary: dict, plots: dict[str, str]) -> str:
    """The markdown report of a results dict (recipe header, threat models, every model's sections, Borda, plots)."""
    suite = results["suite"]
    tasks = _used_tasks(suite)
    md = run_markdown(results, summary, plots) if results.get("run") else []
    md += [f"# Robustness report: suite `{suite['name']}`", ""]
    if suite.get("description"):
        md += [suite["description"].strip(), ""]
    meta = results.get("meta", {})
    intro = " ".join(filter(None, (t.report_intro() for t in tasks)))
    md += [f"vlmrobust {results.get('vlmrobust_version')}, device {meta.get('device')}, bf16 {meta.get('bf16')}. "
           + intro, ""]
    md += ["## Threat models", ""]
    for d in suite["datasets"]:
        md += [EVAL_TASKS.get(d["task"]).describe_attack(d, a) for a in d["attacks"]]
    md.append("")
    for m, v in summary["models"].items():
        md += [f"## `{m}`", ""]
        for task in tasks:
            md += task.markdown(m, v, results)
    if summary.get("borda"):
        md += ["## Borda ranking", "",
               "Per dataset, models are ranked on every accuracy column they all have (clean, each attack × ε, mean "
               "corruption accuracy); rank 1 is best, ties share the mean rank; the Borda score is the sum of ranks "
               "(lower is better).", "",
               md_table(["place", "model", "Borda score", "mean rank", "columns"],
                        [[str(b["place"]), f"`{b['model']}`", f"{b['borda']:g}", f"{b['mean_rank']:.2f}",
                          str(b["n_columns"])] for b in summary["borda"]]), ""]
    if results.get("skipped"):
        md += ["## Skipped datasets", ""] + [f"- {k}: {v}" for k, v in results["skipped"].items()] + [""]
    md += ["## Plots", ""] + [f"![{k}]({v})" for k, v in plots.items()] + [""]
    return "\n".join(md)


def write_suite_report(results: dict, output_dir: str | os.PathLike) -> dict:
    """Write `report.md` and the PNG plots of a results dict into `output_dir`; return the summary."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize_suite(results)
    tasks = _used_tasks(results["suite"])
    models = summary["models"]
    curves = {t.name: t for t in tasks if t.plot_ylabel and t.parent is None}
    plots: dict[str, str] = {}
    if any(r["robust"] for v in models.values() for t in curves.values() for r in v.get(t.rows_key, {}).values()):
        for entry in results["suite"]["datasets"]:
            task, d = curves.get(entry["task"]), entry["name"]
            if task is None or not any(d in v.get(task.rows_key, {}) for v in models.values()):
                continue
            name = f"acc_vs_eps_{safe_name(d)}.png"
            plot_curves({m: [v.get(task.rows_key, {}).get(d)] for m, v in models.items()}, out / name, title=d,
                        ylabel=task.plot_ylabel)
            plots[f"accuracy vs ε: {d}"] = name
    for task in tasks:
        plots.update(task.plots(summary, results, out))
    atomic_write_text(out / "report.md", suite_markdown(results, summary, plots))
    return summary


def console_summary(summary: dict) -> str:
    """The summary as printed by `vlmrobust eval` / `vlmrobust report`: per model, each task's lines, then Borda."""
    lines = []
    for model, v in summary.get("models", {}).items():
        lines += ["", model] + [line for t in all_tasks() for line in t.console(v)]
    lines += [f"Borda #{b['place']}: {b['model']} (score {b['borda']:g})" for b in summary.get("borda") or []]
    return "\n".join(lines)


__all__ = ["accuracy_table", "console_summary", "describe_attacks", "format_eps", "protocol_text", "run_markdown",
           "suite_markdown", "summarize_suite", "write_suite_report"]
