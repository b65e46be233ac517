"""Formatting shared by the report and the tasks: budgets, percentages, markdown tables, robustness-curve rows, and
the one-sentence protocol / accuracy table of the recipes' rows and model cards."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .zero_shot import RobustAccuracy, expected_robustness


def format_eps(eps: float) -> str:
    """4/255 for budgets on the 1/255 grid, else the plain number."""
    if eps == 0:
        return "0"
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-4 else f"{eps:.4g}"


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def safe_name(name: str) -> str:
    """A file-name-safe version of a dataset name."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def same_eps(a: float, b: float) -> bool:
    return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))


# -- robustness-curve rows: {"clean": v, "robust": {"<label> (<norm>)": {eps: v}}, "expected_robustness": {...}} ------

def curve_label(cell: dict) -> str:
    """The row key of an attack cell's curve: '<label> (<norm>)'."""
    return f"{cell['attack']} ({cell['norm']})"


def add_curve_point(row: dict, cell: dict, value: float) -> None:
    row["robust"].setdefault(curve_label(cell), {})[float(cell["eps"])] = value


def curve_expected_robustness(row: dict, weights: Mapping[float, float] | None = None) -> dict[str, float]:
    """Per attack curve, the (weighted) mean of the metric over {0} ∪ its ε grid (arXiv 2509.23325)."""
    out = {}
    for a, pts in row["robust"].items():
        grid = {0.0: row["clean"], **pts}
        w = None
        if weights:  # the suite validated that every budget of the grid has a weight
            w = {e: next(v for k, v in weights.items() if abs(k - e) < 1e-9) for e in grid}
        out[a] = expected_robustness(grid, w)
    return out


def curve_columns(row: dict) -> dict[str, float]:
    """clean and every (attack, ε) point of a row, as named columns (Borda, averages)."""
    cols = {"clean": row["clean"]}
    for a, pts in row["robust"].items():
        for e, v in pts.items():
            cols[f"{a} ε={format_eps(e)}"] = v
    return cols


def eps_columns(rows: Sequence[dict]) -> tuple[list[str], list[tuple[str, float]], list[str]]:
    """The curves of several rows: their labels, the (label, ε) columns, and those columns' headers."""
    labels = sorted({a for r in rows for a in r["robust"]})
    cols = [(a, e) for a in labels for e in sorted({e for r in rows for e in r["robust"].get(a, {})})]
    return labels, cols, [f"{a} ε={format_eps(e) if 'Linf' in a else f'{e:g}'}" for a, e in cols]


def curve_cells(row: dict, cols: list[tuple[str, float]], labels: list[str], fmt=pct) -> list[str]:
    """A row's values at `cols`, then its expected robustness per label, formatted."""
    return ([fmt(row["robust"].get(a, {}).get(e)) for a, e in cols]
            + [fmt(row["expected_robustness"].get(a)) for a in labels])


# -- the recipes' rows (RobustAccuracy) -----------------------------------------------------------------------------

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
        return md_table(header, rows)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def fmt_row(cells):
        return "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths))

    return "\n".join([fmt_row(header), fmt_row(["-" * w for w in widths])] + [fmt_row(c) for c in rows])


def describe_attacks(components: Sequence[str], skipped: Sequence[str] = ()) -> str:
    """'the worst case per point of APGD-CE and APGD-T' (or the single attack), for reports and model cards."""
    names = [c.upper() if c.startswith("apgd") else c for c in components if c not in skipped]
    text = names[0] if len(names) == 1 else "the worst case per point of " + " and ".join(names)
    if skipped:
        text += f" ({', '.join(s.upper() for s in skipped)} skipped: too few classes)"
    return text


def protocol_text(results: Mapping[str, RobustAccuracy]) -> str:
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


__all__ = ["accuracy_table", "add_curve_point", "curve_cells", "curve_columns", "curve_expected_robustness",
           "curve_label", "describe_attacks", "eps_columns", "format_eps", "md_table", "pct", "protocol_text",
           "safe_name", "same_eps"]
