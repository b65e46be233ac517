"""DiGraP and its baselines for LoRA fine-tuning of the tiny LLaVA on shapes-VQA (recipes/digrap_vqa.py's
quickstart): one SFT stage (the stand-in for pretraining), then each method on a copy of the same model, same
budget and seed; prints the README's ID / near OOD / far OOD table with a Wilson 95% interval per cell (over the
`--eval_samples` questions of each split) and the wall times.

    python benchmarks/digrap_vqa_table.py --output outputs/digrap-vqa [--steps 300] [--sft_steps 1500] \
        [--eval_samples 200] [--seed 0]

Re-running reuses the finished rows (`<output>/<row>/summary.json`); the SFT stage is always redone (cheap to
reproduce: same seed, same model).
"""

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: row -> config overrides (defaults of each method, untuned)
ROWS = {
    "vanilla LoRA": {"weight_space": "none"},
    "DiGraP (μ = 0.5)": {"weight_space": "digrap"},
    "L2-SP (λ = 0.01)": {"weight_space": "l2sp", "l2sp_lambda": 0.01},
    "FTP (lr 1e-2, k = 1)": {"weight_space": "ftp"},
    "SPD (λ = 1)": {"weight_space": "spd"},
    "LP-FT (output-head probe, 100 steps)": {"weight_space": "none", "lp_steps": 100},
}
WISE_ALPHA = 0.5
SPLITS = ("id", "near", "far")


def slug(row: str) -> str:
    return row.split(" (")[0].lower().replace(" ", "-")


def cell(acc: float, n: int) -> str:
    """`acc` in percent with its Wilson 95% interval over `n` questions (VQA accuracy passed as its sum of scores)."""
    from vlmrobust.metrics import wilson_interval

    lo, hi = wilson_interval(acc * n, n)
    return f"{100 * acc:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def table(rows: dict, before: dict, n: int) -> str:
    lines = ["| model | ID | near OOD | far OOD | train s |", "|---|---|---|---|---|"]
    lines.append("| pretrained stand-in (before LoRA) | " + " | ".join(cell(before[s], n) for s in SPLITS) + " | – |")
    for row, summary in rows.items():
        res, t = summary["results"], summary["timings"]
        train_s = t["train_s"] + t.get("lp_s", 0)
        lines.append(f"| {row} | " + " | ".join(cell(res["after"][s], n) for s in SPLITS) + f" | {train_s:g} |")
        for k, v in res.items():
            if k.startswith("wise-ft"):
                lines.append(f"| WiSE-FT (α = {WISE_ALPHA:g} of {row}) | " + " | ".join(cell(v[s], n) for s in SPLITS)
                             + " | – |")
    return "\n".join(lines)


def main():
    from transformers import set_seed

    from vlmrobust.script_utils import RecipeParser
    from vlmrobust.vlm_finetune_main import DiGraPVQAConfig, VQAFinetuneScriptArguments, lora_finetune, prepare

    p = argparse.ArgumentParser()
    p.add_argument("--output", default="outputs/digrap-vqa")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--sft_steps", type=int, default=1500)
    p.add_argument("--eval_samples", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    opts = p.parse_args()
    out = Path(opts.output)
    t_all = time.time()
    script, args = RecipeParser((VQAFinetuneScriptArguments, DiGraPVQAConfig)).parse_args_and_config(
        ["--config", str(ROOT / "recipes/configs/quickstart_digrap_vqa.yaml"), "--output_dir", str(out),
         "--max_steps", str(opts.steps), "--sft_steps", str(opts.sft_steps), "--eval_samples", str(opts.eval_samples),
         "--seed", str(opts.seed), "--use_cpu", "true"])
    set_seed(args.seed)
    base, data, timings = prepare(script, args)
    rows, before = {}, None
    for row, kw in ROWS.items():
        path = out / slug(row) / "summary.json"
        if path.is_file():
            rows[row] = json.loads(path.read_text())
        else:
            run_script = dataclasses.replace(script, wise_alphas=[WISE_ALPHA] if row == "vanilla LoRA" else [])
            rows[row] = lora_finetune(copy.deepcopy(base), data, run_script, dataclasses.replace(args, **kw),
                                      save=False, eval_before=before is None)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rows[row], indent=1))
        before = before or rows[row]["results"].get("before")
    print(f"shapes-VQA, tiny LLaVA, seed {args.seed}, {opts.eval_samples} questions per split, SFT {opts.sft_steps} "
          f"steps, LoRA {opts.steps} steps")
    print(table(rows, before, opts.eval_samples))
    print(f"\nwall times (s): SFT {timings.get('sft_s', 0):g}, whole script {time.time() - t_all:.0f}")


if __name__ == "__main__":
    main()
