"""Print the README's LVLM quickstart table from the recipes' `results.json` (nothing typed by hand).

Each cell is a VQA accuracy in % with its Wilson 95% interval over the n evaluation questions (the summary rows'
`ci95`, `vlmrobust.eval.report.summarize_suite`); a model with several seeds gets a mean ± std (sample std over the
seeds) row. Runs of the same model and seed (e.g. with another thread count) must agree exactly: every evaluated
question's score before and after FARE, the FARE training loss and the saved weights (SFT and FARE). The script stops
if they do not.

    for s in 0 1 2; do
      accelerate launch recipes/fare_qwen_vl.py --config recipes/configs/quickstart_qwen_vl.yaml --seed $s \\
          --output_dir outputs/qwen_vl-s$s
    done
    python benchmarks/lvlm_quickstart_table.py outputs/qwen_vl-s* outputs/llava-s*
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from pathlib import Path

from vlmrobust.eval.report import summarize_suite
from vlmrobust.eval.results import load_results

LABELS = {"qwen_vl:tiny": "tiny Qwen2-VL, 112 px (16 image tokens)", "llava:tiny": "tiny LLaVA, 32 px (16 image tokens)"}
ROWS = ("before", "after")  # the recipe's rows: fine-tuned model, then with the FARE tower
WALL_CLOCK = {"seconds", "config", "attacked_questions_per_s"}  # cell fields that are not results (times, paths)


def vqa_rows(data: dict) -> list[dict]:
    """The summary row (clean, robust, n, ci95) of each of the run's rows on its one VQA dataset."""
    summary = summarize_suite(data)["models"]
    (dataset,) = (d["name"] for d in data["suite"]["datasets"])
    return [summary[r]["vqa"][dataset] for r in data["run"]["rows"]]


def cells(data: dict) -> list[tuple[float, tuple[float, float]]]:
    """(accuracy, Wilson 95% interval) for fine-tuned clean, fine-tuned robust, FARE clean, FARE robust."""
    out = []
    for row in vqa_rows(data):
        ((label, pts),) = row["robust"].items()
        ((eps, robust),) = pts.items()
        out += [(row["clean"], tuple(row["ci95"]["clean"])), (robust, tuple(row["ci95"]["robust"][label][eps]))]
    return out


def seed_of(data: dict) -> int:
    return int(data["run"]["config"]["seed"])


def fingerprint(data: dict, folder: Path) -> str:
    """Everything a rerun must reproduce: every question's score in both evaluations, the FARE training loss and
    the saved weights."""
    evals = {k: {f: v for f, v in c.items() if f not in WALL_CLOCK} for k, c in sorted(data["cells"].items())}
    weights = {p: hashlib.sha256((folder / p).read_bytes()).hexdigest()
               for p in ("sft/model.safetensors", "model.safetensors") if (folder / p).is_file()}
    return json.dumps([evals, data["run"]["train_metrics"].get("train_loss"), weights], sort_keys=True)


def fmt(acc: float, ci: tuple[float, float]) -> str:
    return f"{100 * acc:.1f} ({100 * ci[0]:.1f}–{100 * ci[1]:.1f})"


def table(run_dirs: list[Path]) -> str:
    runs: dict[str, dict[int, list[tuple[Path, dict]]]] = {}
    for d in run_dirs:
        data = load_results(d)
        if data["run"]["rows"] != list(ROWS):
            raise SystemExit(f"{d}: rows {data['run']['rows']}, expected {list(ROWS)} (run with eval before and after)")
        runs.setdefault(data["run"]["model"], {}).setdefault(seed_of(data), []).append((d, data))
    head = ["model (fixture)", "seed", "fine-tuned: clean", "fine-tuned: APGD 8/255", "FARE⁸ tower: clean",
            "FARE⁸ tower: APGD 8/255", "run time"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, by_seed in runs.items():
        label = LABELS.get(model, model)
        means = []
        for seed in sorted(by_seed):
            group = by_seed[seed]
            first = cells(group[0][1])
            ref = fingerprint(group[0][1], group[0][0])
            for d, data in group[1:]:
                if fingerprint(data, d) != ref:
                    raise SystemExit(f"{model} seed {seed}: {group[0][0]} and {d} differ: {first} vs {cells(data)}")
            means.append([a for a, _ in first])
            mins = " / ".join(f"{data['run']['timings']['total_s'] / 60:.1f}" for _, data in group)
            note = f" (×{len(group)}, identical)" if len(group) > 1 else ""
            out.append(f"| {label} | {seed}{note} | " + " | ".join(fmt(a, ci) for a, ci in first) + f" | {mins} min |")
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
