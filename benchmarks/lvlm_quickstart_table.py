"""Print the README's LVLM quickstart table from the recipes' `results.json` (nothing typed by hand).

Each cell is a VQA accuracy in % with its Wilson 95% interval over the n evaluation questions; a model with several
seeds gets a mean ± std (sample std over seeds) row. Runs of the same model and seed (e.g. with another thread count)
must agree exactly (both evaluations, per question type, and the FARE training loss): the script stops if
they do not.

    for s in 0 1 2; do
      accelerate launch recipes/fare_qwen_vl.py --config recipes/configs/quickstart_qwen_vl.yaml --seed $s \\
          --output_dir outputs/qwen_vl-s$s
    done
    python benchmarks/lvlm_quickstart_table.py outputs/qwen_vl-s* outputs/llava-s*
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from vlmrobust.metrics import wilson_interval

LABELS = {"qwen_vl:tiny": "tiny Qwen2-VL, 112 px (16 image tokens)", "llava:tiny": "tiny LLaVA, 32 px (16 image tokens)"}


def cells(res: dict) -> list[tuple[float, int]]:
    """(accuracy, n) for fine-tuned clean, fine-tuned robust, FARE clean, FARE robust."""
    out = []
    for key in ("before", "after"):
        r = res["results"][key]
        (robust,) = r["robust"].values()
        out += [(r["clean"], r["n"]), (robust, r["n"])]
    return out


def fingerprint(res: dict) -> str:
    """Everything a rerun must reproduce: both evaluations (per question type too) and the FARE training loss."""
    evals = {k: {m: v for m, v in r.items() if m != "seconds"} for k, r in res["results"].items()}
    return json.dumps([evals, res["train_metrics"].get("train_loss")], sort_keys=True)


def fmt(acc: float, n: int) -> str:
    lo, hi = wilson_interval(acc * n, n)
    return f"{100 * acc:.1f} ({100 * lo:.1f}–{100 * hi:.1f})"


def table(run_dirs: list[Path]) -> str:
    runs: dict[str, dict[int, list[tuple[Path, dict]]]] = {}
    for d in run_dirs:
        res = json.loads((d / "results.json").read_text())
        seed = res["results"]["before"]["protocol"]["seed"]
        runs.setdefault(res["model"], {}).setdefault(seed, []).append((d, res))
    head = ["model (fixture)", "seed", "fine-tuned: clean", "fine-tuned: APGD 8/255", "FARE⁸ tower: clean",
            "FARE⁸ tower: APGD 8/255", "runtime"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, by_seed in runs.items():
        label = LABELS.get(model, model)
        means = []
        for seed in sorted(by_seed):
            group = by_seed[seed]
            first = cells(group[0][1])
            for d, res in group[1:]:
                if fingerprint(res) != fingerprint(group[0][1]):
                    raise SystemExit(f"{model} seed {seed}: {group[0][0]} and {d} differ: {first} vs {cells(res)}")
            means.append([a for a, _ in first])
            mins = "/".join(f"{res['timings']['total_s'] / 60:.0f}" for _, res in group)
            note = f" (×{len(group)}, identical)" if len(group) > 1 else ""
            out.append(f"| {label} | {seed}{note} | " + " | ".join(fmt(a, n) for a, n in first) + f" | {mins} min |")
            label = ""
        if len(means) > 1:
            cols = list(zip(*means))
            out.append(f"| | mean ± std ({len(means)} seeds) | " + " | ".join(
                f"{100 * statistics.mean(c):.1f} ± {100 * statistics.stdev(c):.1f}" for c in cols) + " | |")
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="output folders of the LVLM quickstart runs")
    print(table(p.parse_args(argv).runs))


if __name__ == "__main__":
    main()
