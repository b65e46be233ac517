"""Print the README's CLIP quickstart tables from what the recipes wrote (nothing typed by hand).

Run the quickstarts first (each writes `<output_dir>/results.json`, format `vlmrobust.results/v2`: the suite runner's
cells plus a `run` section naming the rows such as before / after):

    accelerate launch recipes/fare_clip.py --config recipes/configs/quickstart.yaml
    accelerate launch recipes/tecoa_clip.py --config recipes/configs/quickstart_tecoa.yaml
    accelerate launch recipes/adv_clip.py --config recipes/configs/quickstart_trades.yaml
    accelerate launch recipes/radapt_clip.py --config recipes/configs/quickstart_radapt.yaml
    python benchmarks/quickstart_tables.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vlmrobust.eval.results import load_results
from vlmrobust.eval.tables import format_eps
from vlmrobust.eval.tasks.classification import robust_accuracy

QUICKSTART = [  # (folder, row of results.json's run, label in the README)
    ("outputs/quickstart-fare", "before", "tiny digits CLIP (stand-in)"),
    ("outputs/quickstart-fare", "after", "+ FARE⁸ (300 steps, `quickstart.yaml`)"),
    ("outputs/quickstart-tecoa", "after", "+ TeCoA⁸ (300 steps, `quickstart_tecoa.yaml`)"),
    ("outputs/quickstart-trades", "after", "+ TRADES⁸ β=1, full FT (300 steps, `quickstart_trades.yaml`)"),
]
RADAPT = [  # the base and the guide rows fall back to the FARE quickstart's identical evaluations (same checkpoint,
    # points and seeds) when the R-Adapt run skipped them (`--eval_before false --eval_guide false`)
    ("outputs/quickstart-radapt", "base (standard)", "tiny digits CLIP (stand-in)"),
    ("outputs/quickstart-radapt", "R-Adapt (training-free)", "R-Adapt, training-free"),
    ("outputs/quickstart-radapt", "R-Adapt (model-guided)", "R-Adapt, model-guided (FARE⁸ quickstart guide)"),
    ("outputs/quickstart-radapt", "R-Adapt+", "R-Adapt+ (anchor only, 100 steps on 1,437 digits, ε 8/255)"),
    ("outputs/quickstart-radapt", "FARE^8 (quickstart, the guide)", "FARE⁸ (300 steps, the guide)"),
]


def _rows(root: Path, folder: str) -> tuple[dict, dict]:
    """`({row: RobustAccuracy as a dict}, run section)` of a quickstart's results.json (empty when it is missing)."""
    path = root / folder / "results.json"
    if not path.is_file():
        return {}, {}
    data = load_results(path)
    run = data.get("run", {})
    return {r: robust_accuracy(data, r).to_dict() for r in run.get("rows", [])}, run


def table(rows, root: Path) -> str:
    lines, protocol = [], set()
    eps_all: list[float] = []
    found = []
    fallback = {"base (standard)": ("outputs/quickstart-fare", "before"),
                "FARE^8 (quickstart, the guide)": ("outputs/quickstart-fare", "after")}
    for folder, key, label in rows:
        results, run = _rows(root, folder)
        if key not in results and key in fallback:
            folder, key = fallback[key]
            results, run = _rows(root, folder)
        if key not in results:
            lines.append(f"<!-- missing: {key} in {root / folder / 'results.json'} -->")
            continue
        r = results[key]
        eps = sorted(float(e) for e in r["robust_accuracy"])
        eps_all = eps_all or eps
        protocol.add((" + ".join(a.upper() for a in r.get("attacks", [r["attack"]])), r["steps"], r["n_samples"],
                      r["seed"], run.get("timings", {}).get("total_s") or run.get("timings", {}).get("total (s)")))
        found.append((label, r, eps))
    head = ["model", "logit scale", "clean"] + [f"ε={format_eps(e)}" for e in eps_all]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r, _ in found:
        vals = [r["robust_accuracy"].get(f"{e:.6g}") for e in eps_all]
        scale = r.get("logit_scale")
        out.append(f"| {label} | {'–' if scale is None else f'{scale:.3g}'} | {100 * r['clean_accuracy']:.1f} | "
                   + " | ".join("–" if v is None else f"{100 * v:.1f}" for v in vals) + " |")
    return "\n".join(lines + out) + "\n\n" + "; ".join(
        f"attacks {a} (worst case per point), {s} iterations each, n = {n}, seed {seed}, run total {t} s"
        for a, s, n, seed, t in sorted(protocol, key=str))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default=".", help="folder the quickstarts ran in")
    args = p.parse_args(argv)
    root = Path(args.root)
    print("Quickstart table:\n\n" + table(QUICKSTART, root) + "\n\nR-Adapt table:\n\n" + table(RADAPT, root))


if __name__ == "__main__":
    main()
