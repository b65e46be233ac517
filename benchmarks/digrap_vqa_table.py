"""DiGraP and its baselines for LoRA fine-tuning of the tiny LLaVA on shapes-VQA (recipes/digrap_vqa.py's
quickstart): one SFT stage (the stand-in for pretraining), then each method on a copy of the same model, same
budget; prints the README's ID / near OOD / far OOD table.

    python benchmarks/digrap_vqa_table.py --output outputs/digrap-vqa [--steps 300] [--sft_steps 1500] \
        [--eval_samples 200]
"""

import argparse
import copy
import dataclasses
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: row -> config overrides (defaults of each method, untuned)
ROWS = {
    "vanilla LoRA": {"weight_space": "none"},
    "DiGraP (μ = 0.5)": {"weight_space": "digrap"},
    "L2-SP (λ = 0.01)": {"weight_space": "l2sp", "l2sp_lambda": 0.01},
    "FTP (lr 1e-2, k = 1)": {"weight_space": "ftp"},
    "SPD (λ = 1)": {"weight_space": "spd"},
}
WISE_ALPHA = 0.5


def main():
    from transformers import set_seed

    from vlmrobust.script_utils import RecipeParser
    from vlmrobust.vlm_finetune_main import DiGraPVQAConfig, VQAFinetuneScriptArguments, lora_finetune, prepare

    p = argparse.ArgumentParser()
    p.add_argument("--output", default="outputs/digrap-vqa")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--sft_steps", type=int, default=1500)
    p.add_argument("--eval_samples", type=int, default=200)
    opts = p.parse_args()
    out = Path(opts.output)
    script, args = RecipeParser((VQAFinetuneScriptArguments, DiGraPVQAConfig)).parse_args_and_config(
        ["--config", str(ROOT / "recipes/configs/quickstart_digrap_vqa.yaml"), "--output_dir", str(out),
         "--max_steps", str(opts.steps), "--sft_steps", str(opts.sft_steps), "--eval_samples", str(opts.eval_samples),
         "--use_cpu", "true"])
    set_seed(args.seed)
    base, data, _ = prepare(script, args)
    rows = {}
    for row, kw in ROWS.items():
        path = out / row.split(" (")[0].lower().replace(" ", "-") / "summary.json"
        if path.is_file():
            rows[row] = json.loads(path.read_text())
            continue
        wise = [WISE_ALPHA] if kw["weight_space"] == "none" else []
        run_script = dataclasses.replace(script, wise_alphas=wise)
        run_args = dataclasses.replace(args, **kw)
        rows[row] = lora_finetune(copy.deepcopy(base), data, run_script, run_args, save=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows[row], indent=1))
    lines = ["| model | ID | near OOD | far OOD |", "|---|---|---|---|"]
    first = next(iter(rows.values()))["results"]["before"]
    lines.append("| pretrained stand-in (before LoRA) | " + " | ".join(f"{100 * first[s]:.1f}" for s in
                                                                         ("id", "near", "far")) + " |")
    for row, summary in rows.items():
        res = summary["results"]
        lines.append(f"| {row} | " + " | ".join(f"{100 * res['after'][s]:.1f}" for s in ("id", "near", "far")) + " |")
        for k, v in res.items():
            if k.startswith("wise-ft"):
                lines.append(f"| WiSE-FT (α = {WISE_ALPHA:g} of {row}) | "
                             + " | ".join(f"{100 * v[s]:.1f}" for s in ("id", "near", "far")) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
