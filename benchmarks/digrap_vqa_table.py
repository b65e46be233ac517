"""DiGraP and its baselines for LoRA fine-tuning of the tiny LLaVA or Qwen2-VL on shapes-VQA (recipes/digrap_vqa.py's
quickstart): one SFT stage (the stand-in for pretraining), then each method (`DiGraPVQATrainer`, one process) on a
copy of the same model, same budget and seed; prints the README's ID / near OOD / far OOD table with a Wilson 95%
interval per cell (over the `--eval_samples` questions of each split) and the wall times.

    python benchmarks/digrap_vqa_table.py --output outputs/digrap-vqa [--backend llava|qwen_vl] [--steps 300] \
        [--sft_steps 1500] [--eval_samples 200] [--seed 0] [--adversarial] [--only ROW ...]

`--adversarial` adds a row of DiGraP trained on the training attack's images (PGD, L-inf 4/255, `--attack_steps`
iterations, on the answer cross-entropy); `--only` runs a subset of the rows (by their slug, e.g. `vanilla-lora`).

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
#: `--adversarial`: DiGraP on the training attack's images (PGD, L-inf 4/255, step 2/255, `--attack_steps` steps)
ADV_ROW = "DiGraP adversarial (μ = 0.5, PGD-{steps} at L-inf 4/255)"
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
    p.add_argument("--backend", choices=["llava", "qwen_vl"], default="llava", help="Which tiny LVLM fixture.")
    p.add_argument("--adversarial", action="store_true", help="Add a row of DiGraP on adversarial images.")
    p.add_argument("--attack_steps", type=int, default=3, help="PGD iterations of that row's training attack.")
    p.add_argument("--only", nargs="*", default=None, help="Run only these rows (slugs, e.g. vanilla-lora digrap).")
    opts = p.parse_args()
    out = Path(opts.output)
    t_all = time.time()
    script, args = RecipeParser((VQAFinetuneScriptArguments, DiGraPVQAConfig)).parse_args_and_config(
        ["--config", str(ROOT / "recipes/configs/quickstart_digrap_vqa.yaml"), "--output_dir", str(out),
         "--max_steps", str(opts.steps), "--sft_steps", str(opts.sft_steps), "--eval_samples", str(opts.eval_samples),
         "--seed", str(opts.seed), "--use_cpu", "true", "--model_name_or_path", f"{opts.backend}:tiny",
         "--save_strategy", "no", "--report_to", "none", "--overwrite_output_dir", "true"])
    set_seed(args.seed)
    base, data, timings = prepare(script, args)
    rows, before = {}, None
    todo = dict(ROWS)
    if opts.adversarial:
        todo[ADV_ROW.format(steps=opts.attack_steps)] = {
            "weight_space": "digrap", "adversarial": True, "attack_steps": opts.attack_steps,
            "attack_step_size": 2 / 255, "epsilon": 4 / 255}
    if opts.only:
        todo = {r: kw for r, kw in todo.items() if slug(r) in opts.only}
    for row, kw in todo.items():
        path = out / slug(row) / "summary.json"
        if path.is_file():
            rows[row] = json.loads(path.read_text())
        else:
            run_script = dataclasses.replace(script, wise_alphas=[WISE_ALPHA] if row == "vanilla LoRA" else [])
            row_args = dataclasses.replace(args, output_dir=str(out / slug(row)), **kw)
            rows[row] = lora_finetune(copy.deepcopy(base), data, run_script, row_args, save=False,
                                      eval_before=before is None)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rows[row], indent=1))
        before = before or rows[row]["results"].get("before")
    name = {"llava": "LLaVA", "qwen_vl": "Qwen2-VL"}[opts.backend]
    print(f"shapes-VQA, tiny {name}, seed {args.seed}, {opts.eval_samples} questions per split, SFT {opts.sft_steps} "
          f"steps, LoRA {opts.steps} steps")
    print(table(rows, before, opts.eval_samples))
    print(f"\nwall times (s): SFT {timings.get('sft_s', 0):g}, whole script {time.time() - t_all:.0f}")


if __name__ == "__main__":
    main()
