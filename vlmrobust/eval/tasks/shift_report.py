"""The `shift` analysis's report section and plots: shift vs accuracy per embedding kind (with Pearson / Spearman),
per-sample correlations between kinds, and per-sample score histograms of the ID set against each split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...utils.io import atomic_savefig
from ..plots import _pyplot
from ..shift import pearson, spearman
from ..tables import md_table, pct, safe_name


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def shift_markdown(name: str, model: str, summary: dict, cells: list[dict]) -> list[str]:
    avg, rows = summary.get(name), summary.get("vqa", {})
    if not avg:
        return []
    kinds = list(avg["correlation_with_accuracy"])
    table = [[d, *(f"{r[name][k]:.2f}" if k in r[name] else "–" for k in kinds), pct(r["clean"])]
             for d, r in rows.items() if r.get(name)]
    corr = avg["correlation_with_accuracy"]
    md = ["### Mahalanobis shift from the ID training data", "",
          "Per dataset the mean per-sample score −sqrt((z−μ)ᵀ pinv(Σ+1e-8·I) (z−μ)) of a Gaussian fitted on the ID "
          "training questions' embeddings (closer to 0 = closer to ID), per embedding kind, beside the VQA accuracy.",
          "", md_table(["dataset", *kinds, "VQA accuracy"], table), "",
          "Correlation of dataset shift with VQA accuracy (across datasets):", "",
          md_table(["embedding", "Pearson r", "Spearman ρ", "datasets"],
                   [[k, _fmt(c["pearson"]), _fmt(c["spearman"]), str(c["n_datasets"])] for k, c in corr.items()]), ""]
    if avg.get("by_level"):
        levels = list(dict.fromkeys(lv for d in avg["by_level"].values() for lv in d))
        md += ["Mean shift per level:", "",
               md_table(["embedding", *levels], [[k, *(f"{d[lv]:.2f}" if lv in d else "–" for lv in levels)]
                                                 for k, d in avg["by_level"].items()]), ""]
    pairs = sample_correlations(cells)
    if pairs:
        md += ["Per-sample correlation of the shift scores between embedding kinds (all datasets' samples):", "",
               md_table(["embedding", "embedding", "samples", "Pearson r", "Spearman ρ"], pairs), ""]
    return md


def sample_correlations(cells: list[dict]) -> list[list[str]]:
    """Per-sample Pearson / Spearman between every two embedding kinds, over every dataset's samples."""
    by_kind: dict[str, dict[str, list[float]]] = {}
    for c in cells:
        by_kind.setdefault(c["embedding"], {})[c["dataset"]] = c["scores"]
    kinds, rows = list(by_kind), []
    for i, a in enumerate(kinds):
        for b in kinds[i + 1:]:
            common = [d for d in by_kind[a] if d in by_kind[b] and len(by_kind[a][d]) == len(by_kind[b][d])]
            x = [s for d in common for s in by_kind[a][d]]
            y = [s for d in common for s in by_kind[b][d]]
            p, s = pearson(x, y), spearman(x, y)
            rows.append([a, b, str(len(x)), "–" if p is None else f"{p:.3f}", "–" if s is None else f"{s:.3f}"])
    return rows


def shift_plots(name: str, summary: dict, cells: dict[str, list[dict]], out: Path) -> dict[str, str]:
    plt = _pyplot()
    plots: dict[str, str] = {}
    models = {m: v for m, v in summary["models"].items() if v.get(name)}
    if not models:
        return plots
    kinds = list(dict.fromkeys(k for v in models.values() for k in v[name]["correlation_with_accuracy"]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 3.6), dpi=110, squeeze=False)
    for ax, k in zip(axes[0], kinds):
        for m, v in models.items():
            pts = [(r[name][k], 100 * r["clean"], d) for d, r in v.get("vqa", {}).items() if k in r.get(name, {})]
            if not pts:
                continue
            c = v[name]["correlation_with_accuracy"].get(k, {})
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18,
                       label=f"{m[-28:]} (r={_fmt(c.get('pearson'))}, ρ={_fmt(c.get('spearman'))})")
            for x, y, d in pts:
                ax.annotate(d, (x, y), fontsize=5, alpha=0.7)
        ax.set_title(k, fontsize=8)
        ax.set_xlabel("mean shift score (higher = closer to ID)", fontsize=7)
        ax.set_ylabel("VQA accuracy (%)", fontsize=7)
        ax.legend(fontsize=5)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, out / "shift_vs_accuracy.png")
    plt.close(fig)
    plots["Mahalanobis shift vs VQA accuracy, per embedding kind"] = "shift_vs_accuracy.png"
    for m, mcells in cells.items():
        ref = next((c["reference"] for c in mcells), None)
        by_kind: dict[str, dict[str, list[float]]] = {}
        for c in mcells:
            by_kind.setdefault(c["embedding"], {})[c["dataset"]] = c["scores"]
        datasets = [d for d in dict.fromkeys(c["dataset"] for c in mcells) if d != ref]
        if ref is None or not datasets:
            continue
        fig, axes = plt.subplots(len(by_kind), len(datasets), figsize=(2.2 * len(datasets), 1.8 * len(by_kind)),
                                 dpi=100, squeeze=False)
        for i, (k, per) in enumerate(by_kind.items()):
            for j, d in enumerate(datasets):
                ax = axes[i][j]
                if ref in per and d in per:
                    bins = np.histogram_bin_edges(per[ref] + per[d], bins=15)
                    ax.hist(per[ref], bins=bins, alpha=0.5, label=ref)
                    ax.hist(per[d], bins=bins, alpha=0.5, label=d)
                ax.set_title(f"{k}: {d}", fontsize=6)
                ax.tick_params(labelsize=5)
                if i == 0 and j == 0:
                    ax.legend(fontsize=5)
        fig.tight_layout()
        fname = f"shift_hist_{safe_name(m)}.png"
        atomic_savefig(fig, out / fname)
        plt.close(fig)
        plots[f"per-sample shift scores, ID vs each split: {m}"] = fname
    return plots
