"""DiGraP and its baselines (vanilla fine-tuning, L2-SP, FTP, SPD, LP-FT, WiSE-FT) on the offline digits stand-in:
train each with `recipes/digrap_clip.py` (quickstart_digrap.yaml, same budget), evaluate all through one suite
(`benchmarks/digrap_digits_suite.yaml`), print the README's table.

    python benchmarks/digrap_digits_table.py --output outputs/digrap-digits [--steps 300]

Re-running reuses finished trainings (their checkpoints) and the suite's finished cells.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "recipes"))

BASE = "vlmrobust:tiny-digits-clip"
#: row -> recipe flags over quickstart_digrap.yaml (defaults of each method, untuned)
ROWS = {
    "vanilla FT": ["--weight_space", "none"],
    "DiGraP (μ = 0.5)": ["--weight_space", "digrap"],
    "L2-SP (λ = 0.01)": ["--weight_space", "l2sp", "--l2sp_lambda", "0.01"],
    "FTP (lr 1e-2, k = 1)": ["--weight_space", "ftp"],
    "SPD (λ = 1)": ["--weight_space", "spd"],
    "LP-FT (100 probe steps)": ["--weight_space", "none", "--train_head", "true", "--lp_steps", "100"],
}
WISE_ALPHA = 0.5


def slug(row: str) -> str:
    return row.split(" (")[0].lower().replace(" ", "-")


def train(out: Path, steps: int) -> dict[str, Path]:
    import digrap_clip

    dirs = {}
    for row, flags in ROWS.items():
        d = out / slug(row)
        if not (d / "open_clip_model.safetensors").is_file():
            digrap_clip.main(["--config", str(ROOT / "recipes/configs/quickstart_digrap.yaml"), "--output_dir", str(d),
                              "--max_steps", str(steps), "--save_strategy", "no", "--eval_before", "false",
                              "--eval_after", "false", "--disable_tqdm", "true", *flags])
        dirs[row] = d
    return dirs


def models(out: Path, dirs: dict[str, Path]) -> dict:
    from safetensors.torch import load_file

    from vlmrobust.data import load_digits_splits
    from vlmrobust.eval.protocol import TrainedClassifier
    from vlmrobust.hub.wise_ft import alpha_dirname, wise_ft
    from vlmrobust.layout import EXTRA_WEIGHTS_NAME
    from vlmrobust.models import create_model
    from vlmrobust.trainers import CosineClassifier

    wise = out / "wise-ft"
    if not (wise / alpha_dirname(WISE_ALPHA) / "open_clip_model.safetensors").is_file():
        wise_ft(f"local-dir:{dirs['vanilla FT']}", BASE, [WISE_ALPHA], wise)
    refs = {"zero-shot (stand-in)": BASE}
    for row, d in dirs.items():
        if "--train_head" in ROWS[row]:  # a trained head: evaluate the classifier, as the recipe does
            m = create_model(f"local-dir:{d}")
            head = load_file(d / EXTRA_WEIGHTS_NAME)["head.weight"]
            clf = CosineClassifier(m.image_encoder, head, 100.0)
            clf.head.weight.data.copy_(head)  # (CosineClassifier normalises its init; keep the trained head)
            refs[row] = TrainedClassifier(m, clf.eval(), load_digits_splits(image_size=m.image_size)[1].classnames)
        else:
            refs[row] = f"local-dir:{d}"
    refs[f"WiSE-FT (α = {WISE_ALPHA:g} of vanilla FT)"] = f"local-dir:{wise / alpha_dirname(WISE_ALPHA)}"
    return refs


def table(data: dict, names: list[str]) -> str:
    rows = {n: {"corr": {}} for n in names}
    for cell in data["cells"].values():
        r = rows.get(cell["model"])
        if r is None:
            continue
        if cell.get("kind") == "corruption":
            r["corr"].setdefault(int(cell["severity"]), []).append(cell["accuracy"])
        elif cell.get("kind") == "clean":
            r["clean"] = cell["accuracy"]
        elif cell.get("eps") is not None:
            r[f"{float(cell['eps']) * 255:.0f}"] = cell["accuracy"]
    lines = ["| model | clean (ID) | corruptions sev 1 | sev 3 | sev 5 | ε=2/255 | ε=4/255 |", "|---|---|---|---|---|---|---|"]
    for n in names:
        r = rows[n]
        corr = [100 * sum(r["corr"].get(s, [float("nan")])) / max(len(r["corr"].get(s, [])), 1) for s in (1, 3, 5)]
        vals = [100 * r.get("clean", float("nan")), *corr, 100 * r.get("2", float("nan")), 100 * r.get("4", float("nan"))]
        lines.append(f"| {n} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--output", default="outputs/digrap-digits")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--device", default="cpu")
    opts = p.parse_args()
    out = Path(opts.output)
    from vlmrobust.eval.runner import run_suite

    refs = models(out, train(out, opts.steps))
    data = run_suite(refs, ROOT / "benchmarks/digrap_digits_suite.yaml", out / "eval", device=opts.device,
                     progress=False)
    print(table(data, list(refs)))


if __name__ == "__main__":
    main()
