"""Is a recipe's reported robust accuracy the worst case? Re-attack its "after" checkpoint on the same points.

Reads `<run>/results.json` (what the recipe reported: its run rows and their cells) and `<run>/suite.yaml` (the
points, budgets and iterations it used), reloads the checkpoint of `<run>` (a zero-shot CLIP: FARE, TeCoA) and attacks the same points
with each attack alone, chained over the ε grid like the recipe (a point broken at a smaller ε is not re-attacked;
`--eps 8/255` checks one budget, every clean-correct point attacked):

- APGD-CE at the classifier's own (learned) logit scale: the recipes' protocol before issue 20;
- APGD-CE at logit scale 100;
- APGD-T (targeted DLR, scale-invariant) alone;
- AutoAttack "fast" (APGD-CE then APGD-T) at the own scale, AutoAttack's own implementation of the worst case.

    python benchmarks/check_reported_robustness.py outputs/quickstart-tecoa --eps 8/255

Prints a markdown table and writes `<run>/robustness_check.json` (atomically).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vlmrobust.data.sources import load_suite_dataset
from vlmrobust.eval.results import load_results
from vlmrobust.eval.suite import load_suite, parse_eps
from vlmrobust.eval.tables import format_eps
from vlmrobust.eval.tasks.classification import robust_accuracy
from vlmrobust.eval.zero_shot import evaluate_robust_accuracy
from vlmrobust.models import create_model
from vlmrobust.utils.io import atomic_write_json


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="output folder of a CLIP recipe (results.json, suite.yaml, the checkpoint)")
    p.add_argument("--row", default="after", help="row of the recipe's run to check (default: after)")
    p.add_argument("--scale", type=float, default=100.0, help="the fixed logit scale of the CE check")
    p.add_argument("--eps", nargs="*", default=None, help="check only these budgets of the grid (e.g. 8/255)")
    p.add_argument("--checks", nargs="*", default=["ce", "ce100", "t", "aa"], choices=["ce", "ce100", "t", "aa"],
                   help="which attacks to run alone (default: all four)")
    args = p.parse_args(argv)
    run = Path(args.run)
    reported = robust_accuracy(load_results(run), args.row).to_dict()
    suite = load_suite(run / "suite.yaml")
    spec = suite.datasets[0]
    atk = spec.attacks[0]
    targets = atk.options.get("apgd-t", {}).get("n_target_classes", 9)
    model = create_model(f"local-dir:{run}").eval()
    data = load_suite_dataset(spec, model)
    own = model.zero_shot_classifier(data.classnames, data.templates)
    fixed = model.zero_shot_classifier(data.classnames, data.templates, logit_scale=args.scale)
    grid = list(atk.eps)
    if args.eps:
        want = [parse_eps(e) for e in args.eps]
        grid = [e for e in grid if any(abs(e - w) < 1e-9 for w in want)]
        if not grid:
            raise SystemExit(f"--eps {args.eps}: not in the recipe's grid {atk.eps}.")
    kw = dict(norm=atk.norm, steps=atk.steps, seed=atk.seed, batch_size=spec.batch_size, progress=False)
    n_classes = len(data.classnames)
    checks = {
        "ce": (f"APGD-CE alone, logit scale {own.logit_scale:.3g} (the recipes' protocol before issue 20)",
               lambda: evaluate_robust_accuracy(own, data, grid, attack="apgd-ce", **kw)),
        "ce100": (f"APGD-CE alone, logit scale {args.scale:g}",
                  lambda: evaluate_robust_accuracy(fixed, data, grid, attack="apgd-ce", **kw)),
        "t": (f"APGD-T alone ({targets} targets)",
              lambda: evaluate_robust_accuracy(own, data, grid, attack="apgd-t",
                                               attack_kwargs={"n_target_classes": targets}, **kw)),
        "aa": (f"AutoAttack fast (APGD-CE + APGD-T), logit scale {own.logit_scale:.3g}",
               lambda: evaluate_robust_accuracy(own, data, grid, attack="autoattack",
                                                attack_kwargs={"version": "fast", "n_classes": n_classes}, **kw)),
    }
    rows = {f"recipe's report ({reported.get('attack')}, logit scale {reported.get('logit_scale')})":
            {float(e): a for e, a in reported["robust_accuracy"].items() if any(abs(float(e) - g) < 1e-6
                                                                                for g in grid)}}
    for key in args.checks:
        name, run_check = checks[key]
        rows[name] = run_check().robust_accuracy
        print(f"{name}: {rows[name]}", flush=True)  # as it comes: the attacks are slow on a CPU
    eps = sorted(grid)
    lines = ["| attack on the same checkpoint and points | " + " | ".join(f"ε={format_eps(e)}" for e in eps) + " |",
             "|---|" + "---|" * len(eps)]
    for name, accs in rows.items():
        vals = [next((a for k, a in accs.items() if abs(k - e) < 1e-6), None) for e in eps]
        lines.append(f"| {name} | " + " | ".join("–" if v is None else f"{100 * v:.1f}" for v in vals) + " |")
    table = "\n".join(lines)
    print(f"{run} ({args.row}), {len(data)} points, {atk.steps} iterations, seed {atk.seed}:\n\n{table}")
    out = {"run": str(run), "row": args.row, "n": len(data), "steps": atk.steps,
           "rows": {k: {f"{e:.6g}": a for e, a in v.items()} for k, v in rows.items()}, "table": table}
    atomic_write_json(run / "robustness_check.json", out)
    return out


if __name__ == "__main__":
    main()
