"""Are two runs' numbers identical? Compare results files cell by cell and row by row (e.g. before / after a refactor).

Reads either side in any format vlmrobust has written: `vlmrobust.results/v2` (suite runs and recipes), the suite
runner's `vlmrobust.eval/v1`, and the recipes' own format before v2 (its rows in `results.json`, its cells in
`eval/results.json`). Compares every stored cell both sides have, field by field (timings aside), and each recipe row's
reported numbers (clean / robust accuracy per ε, logit scale, expected robustness; VQA accuracy per ε and question
type), and prints markdown tables.

    python benchmarks/compare_results.py /tmp/run-before /tmp/run-after
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

VOLATILE = {"seconds", "attacked_images_per_s", "attacked_questions_per_s"}


def _read(path: Path) -> dict:
    return json.loads((path / "results.json" if path.is_dir() else path).read_text(encoding="utf-8"))


def cells_of(path: Path) -> dict[str, dict]:
    """Stored cells of a results file or folder (an old recipe folder keeps them in eval/results.json)."""
    data = _read(path)
    if "cells" in data:
        return data["cells"]
    folder = path if path.is_dir() else path.parent
    return _read(folder / "eval")["cells"] if (folder / "eval" / "results.json").is_file() else {}


def _vqa_key(eps: float) -> str:
    k = eps * 255
    return f"{round(k):g}/255" if abs(k - round(k)) < 1e-6 else f"{eps:g}"


def rows_of(path: Path) -> dict[str, dict[str, float]]:
    """A recipe's reported numbers per row: `{row: {column: value}}` (empty for a plain suite run)."""
    data = _read(path)
    out: dict[str, dict[str, float]] = {}
    if "results" in data:  # the recipes' format before v2
        for row, r in data["results"].items():
            if "clean_accuracy" in r:
                out[row] = {"clean": r["clean_accuracy"], "logit scale": r.get("logit_scale"),
                            "exp. rob.": r["expected_robustness"],
                            **{f"ε={float(e) * 255:.3g}/255": v for e, v in r["robust_accuracy"].items()}}
            else:  # evaluate_vqa's dict
                out[row] = {"VQA clean": r["clean"], **{f"VQA ε={e}": v for e, v in r["robust"].items()},
                            **{f"{t}: {k}": v for t, by in r.get("per_type", {}).items() for k, v in by.items()}}
        return out
    if data.get("format") != "vlmrobust.results/v2" or "run" not in data:
        return out
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from vlmrobust.eval.tasks.classification import robust_accuracy

    entry = data["suite"]["datasets"][0]
    for row in data["run"]["rows"]:
        if entry["task"] == "classification":
            r = robust_accuracy(data, row).to_dict()
            out[row] = {"clean": r["clean_accuracy"], "logit scale": r.get("logit_scale"),
                        "exp. rob.": r["expected_robustness"],
                        **{f"ε={float(e) * 255:.3g}/255": v for e, v in r["robust_accuracy"].items()}}
        else:  # VQA rows: the runner's cells, in evaluate_vqa's rounding (4 decimals)
            clean = data["cells"][f"{row}|{entry['name']}|clean"]
            vals = {"VQA clean": round(clean["accuracy"], 4)}
            types = {t: {"clean": v} for t, v in clean["per_type"].items()}
            for a in entry["attacks"]:
                for e in a["eps"]:
                    c = data["cells"][f"{row}|{entry['name']}|{a['label']}|{a['norm']}|{e:.6g}"]
                    vals[f"VQA ε={_vqa_key(e)}"] = round(c["accuracy"], 4)
                    for t, v in c["per_type"].items():
                        types[t][_vqa_key(e)] = v
            out[row] = {**vals, **{f"{t}: {k}": v for t, by in types.items() for k, v in by.items()}}
    return out


def compare(before: Path, after: Path) -> tuple[str, bool]:
    lines, same = [], True
    cb, ca = cells_of(before), cells_of(after)
    common = sorted(set(cb) & set(ca))
    diffs = []
    for k in common:
        for f in sorted((set(cb[k]) | set(ca[k])) - VOLATILE):
            if cb[k].get(f) != ca[k].get(f):
                diffs.append((k, f, cb[k].get(f), ca[k].get(f)))
    only = sorted(set(cb) ^ set(ca)) if cb and ca else []  # one side without cells: an old LVLM recipe's file
    same &= not diffs and not only
    lines += [f"cells: {len(cb)} before, {len(ca)} after, {len(common)} compared field by field "
              f"(all but {sorted(VOLATILE)}): {len(diffs)} differing fields, {len(only)} cells on one side only"
              + ("" if cb and ca else " (one side has no cells: its rows are compared below)") + ".", ""]
    lines += [f"- {k} · {f}: {str(b)[:80]} != {str(a)[:80]}" for k, f, b, a in diffs[:20]]
    lines += [f"- only on one side: {k}" for k in only[:20]]
    rb, ra = rows_of(before), rows_of(after)
    if rb or ra:
        cols = list(dict.fromkeys(c for r in (*rb.values(), *ra.values()) for c in r))
        lines += ["", "| row | column | before | after | identical |", "|---|---|---|---|---|"]
        for row in dict.fromkeys([*rb, *ra]):
            for c in cols:
                b, a = rb.get(row, {}).get(c), ra.get(row, {}).get(c)
                if b is None and a is None:
                    continue
                ok = b == a
                same &= ok
                lines.append(f"| {row} | {c} | {b} | {a} | {'yes' if ok else '**NO**'} |")
    return "\n".join(lines), same


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("before", help="results.json (or its folder) of the first run")
    p.add_argument("after", help="results.json (or its folder) of the second run")
    args = p.parse_args(argv)
    text, same = compare(Path(args.before), Path(args.after))
    print(text + f"\n\n{'IDENTICAL' if same else 'DIFFERENT'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
