"""Borda ranking of several models evaluated on the same suite ("A Guide to Robust Generalization", methods.md).

Per dataset, every model is ranked on every accuracy column (clean, each attack × ε, corruption accuracy, ...);
rank 1 is the best, tied models share the average of their ranks, and a model's score is the sum of its ranks over
all (dataset, column) pairs both models have. Lower is better.
"""

from __future__ import annotations

from collections.abc import Mapping


def borda_ranking(scores: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[dict]:
    """Rank models from `scores[model][dataset][column] = accuracy` (higher is better).

    Only (dataset, column) pairs that every model has take part, so a model is never punished for a cell another
    model lacks.

    Returns:
        A list of `{"model", "borda", "mean_rank", "n_columns", "place"}`, best first.
    """
    from scipy.stats import rankdata

    models = list(scores)
    if not models:
        return []
    common: set[tuple[str, str]] | None = None
    for m in models:
        pairs = {(d, c) for d, cols in scores[m].items() for c in cols}
        common = pairs if common is None else common & pairs
    pairs = sorted(common or set())
    total = dict.fromkeys(models, 0.0)
    for d, c in pairs:
        values = [-float(scores[m][d][c]) for m in models]
        for m, r in zip(models, rankdata(values, method="average")):
            total[m] += float(r)
    ordered = sorted(models, key=lambda m: (total[m], m))
    return [{"model": m, "borda": total[m], "mean_rank": total[m] / len(pairs) if pairs else float("nan"),
             "n_columns": len(pairs), "place": i + 1} for i, m in enumerate(ordered)]


__all__ = ["borda_ranking"]
