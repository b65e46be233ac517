"""Check a suite's `report.md` against its `results.json`: every number of the accuracy and VQA tables is looked up
in the stored cells (by model, dataset, attack label, norm and ε parsed from the table itself), and the tables
show exactly the suite's grid. Written independently of `vlmrobust.eval.report`: it reads only the raw cells and
the suite dict stored with them.
"""

from __future__ import annotations

import math
import re

import numpy as np

_COL = re.compile(r"^(?P<label>.+) \((?P<norm>[A-Za-z0-9]+)\) ε=(?P<eps>[0-9./]+)$")
_EXP = re.compile(r"^exp\. rob\. (?P<label>.+) \((?P<norm>[A-Za-z0-9]+)\)$")


def _eps(text: str) -> float:
    if "/" in text:
        a, b = text.split("/")
        return float(a) / float(b)
    return float(text)


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def wilson95(p: float, n: int) -> tuple[float, float]:
    """The Wilson score 95% interval, written out here (not `vlmrobust.metrics`) so the report is checked against
    an independent computation: (p + z²/2n ± z·√(p(1−p)/n + z²/4n²)) / (1 + z²/n), z = 1.959964."""
    z = 1.959963984540054
    p = min(max(p, 0.0), 1.0)
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, center - half), min(1.0, center + half)


def pct_ci(v: float, n: int) -> str:
    """An accuracy cell of the report: `72.5 (65.9–78.2)`, the value and its Wilson 95% interval over n items."""
    lo, hi = wilson95(v, n)
    return f"{100 * v:.1f} ({100 * lo:.1f}–{100 * hi:.1f})"


def model_sections(report: str) -> dict[str, str]:
    """`## \\`model\\`` heading -> the text of that section."""
    parts = re.split(r"^## `(.+)`$", report, flags=re.M)
    return {parts[i]: parts[i + 1].split("\n## ")[0] for i in range(1, len(parts), 2)}


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every markdown table of `text` as (header, rows)."""
    out, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in lines[i].strip("|").split(" | ")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("| "):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split(" | ")])
                i += 1
            out.append((header, rows))
        else:
            i += 1
    return out


def _find(cells: dict, **want) -> dict:
    eps = want.pop("eps", None)
    hits = [c for c in cells.values() if all(c.get(k) == v for k, v in want.items())
            and (eps is None or abs(float(c["eps"]) - eps) < 1e-6)]
    assert len(hits) == 1, f"{len(hits)} cells match {want} eps={eps}"
    return hits[0]


def _suite_grid(suite: dict, dataset: str) -> set[tuple[str, str, float]]:
    d = next(d for d in suite["datasets"] if d["name"] == dataset)
    return {(a["label"], a["norm"], round(float(e), 6)) for a in d["attacks"] for e in a["eps"]}


def check_report_against_results(report: str, results: dict, *, task: str = "classification") -> int:
    """Assert that every number of the `task` tables ("classification": the per-model accuracy table with its
    average row; "vqa": the VQA accuracy table) is the stored cell value, column by column (each accuracy with its
    Wilson 95% interval over the cell's n, computed here by hand), and that the columns and rows are exactly the
    suite's grid. Returns how many numbers were checked."""
    suite, cells = results["suite"], results["cells"]
    datasets = {d["name"]: d for d in suite["datasets"] if d.get("task", "classification") == task}
    apart = set(suite.get("average_exclude") or ())
    metric = "accuracy"
    clean_kind, attack_kind = ("clean", "attack") if task == "classification" else ("vqa_clean", "vqa_attack")
    first = "dataset" if task == "classification" else "VQA dataset"
    checked = 0
    sections = model_sections(report)
    assert set(sections) == set(results["models"]), (set(sections), results["models"])
    for model, text in sections.items():
        found = [(h, r) for h, r in tables(text) if h[0] == first and "clean" in h]
        assert len(found) == 1, f"{model}: {len(found)} tables headed {first!r}"
        header, rows = found[0]
        clean_col = header.index("clean")
        per_row: dict[str, dict[str, float]] = {}
        named = {}
        for row in rows:
            name = row[0]
            if name.startswith("**average"):
                named["average"] = row
                continue
            d = name.removesuffix(" (apart, not in the average)")
            assert d in datasets, f"{model}: row {name!r} is not a dataset of the suite"
            assert (d in apart) == (d != name), f"{model}: {name!r} labelled apart wrongly"
            named[d] = row
        assert set(named) - {"average"} == set(datasets), (model, sorted(named), sorted(datasets))
        attack_cols = [(j, _COL.match(h)) for j, h in enumerate(header) if _COL.match(h)]
        exp_cols = [(j, _EXP.match(h)) for j, h in enumerate(header) if _EXP.match(h)]
        grid = set().union(*(_suite_grid(suite, d) for d in datasets))
        shown = {(m["label"], m["norm"], round(_eps(m["eps"]), 6)) for _, m in attack_cols}
        assert shown == grid, f"{model}: columns {sorted(shown)} != suite grid {sorted(grid)}"
        for d in datasets:
            row = named[d]
            clean = _find(cells, kind=clean_kind, model=model, dataset=d)
            vals = {"clean": clean[metric]}
            assert row[clean_col] == pct_ci(clean[metric], clean["n"]), (model, d, "clean", row[clean_col])
            if "logit scale" in header:  # the temperature the attacks saw, stored with the clean cell
                scale = clean.get("logit_scale")
                want = "–" if scale is None else f"{scale:.3g}"
                assert row[header.index("logit scale")] == want, (model, d, "logit scale", want)
            by_attack: dict[str, list[float]] = {}
            for j, m in attack_cols:
                key = (m["label"], m["norm"], round(_eps(m["eps"]), 6))
                if key not in _suite_grid(suite, d):
                    assert row[j] == "–", (model, d, header[j], row[j])
                    continue
                c = _find(cells, kind=attack_kind, model=model, dataset=d, attack=m["label"], norm=m["norm"],
                          eps=_eps(m["eps"]))
                assert row[j] == pct_ci(c[metric], c["n"]), (model, d, header[j], row[j], c[metric])
                vals[header[j]] = c[metric]
                by_attack.setdefault(f"{m['label']} ({m['norm']})", []).append(c[metric])
                checked += 1
            for j, m in exp_cols:
                accs = by_attack[f"{m['label']} ({m['norm']})"]
                want = float(np.mean([clean[metric], *accs]))  # uniform weights over {0} ∪ the grid
                assert row[j] == _pct(want), (model, d, header[j], row[j], want)
                vals[header[j]] = want
                checked += 1
            per_row[d] = vals
            checked += 1
        averaged = [d for d in datasets if d not in apart]
        if task == "classification" and len(averaged) > 1:
            row = named["average"]
            assert f"average of {len(averaged)}" in row[0], row[0]
            for j, h in enumerate(header):
                if j == 0 or h in ("n", "logit scale"):
                    continue
                want = float(np.mean([per_row[d][h] for d in averaged]))
                assert row[j] == _pct(want), (model, "average", h, row[j], want)
                checked += 1
        else:
            assert "average" not in named
    return checked
