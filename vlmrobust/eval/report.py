"""Readable results: markdown tables, console tables and accuracy-vs-ε plots, written atomically."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..utils.io import atomic_savefig, atomic_write_json, atomic_write_text
from .zero_shot import RobustAccuracy


def format_eps(eps: float) -> str:
    """4/255 for budgets on the 1/255 grid, else the plain number."""
    if eps == 0:
        return "0"
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-4 else f"{eps:.4g}"


def accuracy_table(results: Mapping[str, RobustAccuracy], fmt: str = "markdown") -> str:
    """One row per model: clean, robust accuracy at each ε, expected robustness (all in %)."""
    eps = sorted({e for r in results.values() for e in r.robust_accuracy})
    header = ["model", "clean"] + [f"ε={format_eps(e)}" for e in eps] + ["expected rob."]
    rows = []
    for name, r in results.items():
        cells = [name, f"{100 * r.clean_accuracy:.1f}"]
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
    r0 = next(iter(results.values()))
    md = [f"# {title}", "", intro, "",
          f"Zero-shot accuracy (%) under {r0.attack} ({r0.norm}, {r0.steps} iterations, seed {r0.seed}) on "
          f"{r0.n_samples} images; expected robustness = mean accuracy over the ε grid including ε = 0.", "",
          accuracy_table(results), "", f"![accuracy vs epsilon]({plot_name})", ""]
    atomic_write_text(out / "report.md", "\n".join(md))
    return data
