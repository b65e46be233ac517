"""Plots shared by the tasks' report sections: metric-vs-ε curves and grouped bars (PNG, written atomically)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..utils.io import atomic_savefig


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(rows: Mapping[str, Sequence[dict]], path: str | os.PathLike, *, title: str,
                ylabel: str = "accuracy (%)") -> Path:
    """Metric (%) vs ε, one curve per (model, attack), one panel per norm, from robustness-curve rows
    (`{"clean", "robust": {"<label> (<norm>)": {eps: value}}}`); several rows of a model are averaged point-wise
    (only points every row has).

    Args:
        rows (`Mapping[str, Sequence[dict]]`): model -> its rows (one dataset, or the datasets of an average).
        path (`str` or `os.PathLike`): the PNG.
        title (`str`): panel title prefix (the norm is appended).
        ylabel (`str`, *optional*, defaults to `"accuracy (%)"`): y-axis label.
    """
    plt = _pyplot()
    curves: dict[str, dict[str, dict[float, float]]] = {}  # norm -> curve label -> {eps: value}
    for m, model_rows in rows.items():
        pts_by: dict[str, dict[float, list[float]]] = {}
        for r in filter(None, model_rows):
            for a, accs in r["robust"].items():
                c = pts_by.setdefault(a, {})
                c.setdefault(0.0, []).append(r["clean"])
                for e, acc in accs.items():
                    c.setdefault(e, []).append(acc)
        for a, c in pts_by.items():
            n = max(len(x) for x in c.values())
            norm = a.rsplit("(", 1)[-1].rstrip(")") if "(" in a else "Linf"
            label = f"{m} · {a}" if len(rows) > 1 else a
            curves.setdefault(norm, {})[label] = {e: sum(x) / len(x) for e, x in c.items() if len(x) == n}
    norms = sorted(curves, key=lambda k: (k != "Linf", k)) or ["Linf"]
    fig, axes = plt.subplots(1, len(norms), figsize=(6.4 * len(norms), 4.2), dpi=120, squeeze=False)
    for ax, norm in zip(axes[0], norms):
        for label, pts in curves.get(norm, {}).items():
            xs = sorted(pts)
            ax.plot([e * 255 if norm == "Linf" else e for e in xs], [100 * pts[e] for e in xs], marker="o",
                    label=label)
        ax.set_xlabel("ε (L∞, in /255 pixel units)" if norm == "Linf" else f"ε ({norm}, pixel units)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        ax.set_title(f"{title} · {norm}")
    fig.tight_layout()
    out = atomic_savefig(fig, path)
    plt.close(fig)
    return out


def plot_grouped_bars(values: Mapping[str, Mapping[str, float]], cols: Sequence[str], path: str | os.PathLike, *,
                      title: str, ylabel: str) -> Path:
    """Grouped bars: for each of `cols` (columns every model has), one bar per model (values in [0, 1], in %)."""
    import numpy as np

    plt = _pyplot()
    models = list(values)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cols) + 2), 4.2), dpi=120)
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        ax.bar(np.arange(len(cols)) + i * width, [100 * values[m][c] for c in cols], width, label=m)
    ax.set_xticks(np.arange(len(cols)) + 0.4 - width / 2, cols, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    out = atomic_savefig(fig, path)
    plt.close(fig)
    return out


__all__ = ["plot_curves", "plot_grouped_bars"]
