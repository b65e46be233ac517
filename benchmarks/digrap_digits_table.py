"""DiGraP and its baselines (vanilla fine-tuning, L2-SP, FTP, SPD, LP-FT, WiSE-FT) on the offline digits stand-in:
train each with `recipes/digrap_clip.py` (quickstart_digrap.yaml, same budget), evaluate all through one suite
(`benchmarks/digrap_digits_suite.yaml`), print the README's table.

    python benchmarks/digrap_digits_table.py --output outputs/digrap-digits [--steps 300] [--seed 0]
    python benchmarks/digrap_digits_table.py --output outputs/digrap-digits-adv --adversarial --attack_steps 3 \
        --steps 60 --suite benchmarks/digrap_digits_suite_fast.yaml        # robust variant, the README's table

On clean digits the stand-in is already ~99% accurate and the cross-entropy at logit scale 100 is ~0 from the first
step: the clean runs barely move the weights (every method = zero-shot); the robust variant has a training signal.

Re-running reuses finished trainings (their checkpoints) and the suite's finished cells.
"""

import argparse
import json
import sys
import time
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


def train(out: Path, steps: int, seed: int, timings: dict, extra: tuple = ()) -> dict[str, Path]:
    import digrap_clip

    dirs = {}
    for row, flags in ROWS.items():
        d = out / slug(row)
        if not (d / "open_clip_model.safetensors").is_file():
            t0 = time.time()
            digrap_clip.main(["--config", str(ROOT / "recipes/configs/quickstart_digrap.yaml"), "--output_dir", str(d),
                              "--max_steps", str(steps), "--save_strategy", "no", "--eval_before", "false",
                              "--eval_after", "false", "--disable_tqdm", "true", "--seed", str(seed), *extra, *flags])
            timings[f"train {row}"] = round(time.time() - t0, 1)
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


def cell(acc: float, n: int) -> str:
    """`acc` in percent with its Wilson 95% interval over `n` evaluated images."""
    from vlmrobust.metrics import wilson_interval

    if acc != acc:  # nan: missing cell
        return "–"
    lo, hi = wilson_interval(acc * n, n)
    return f"{100 * acc:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def table(data: dict, names: list[str], n_clean: int = 240, n_corr: int = 100) -> str:
    """ID = clean test digits; near / far OOD = the 19 corruptions at severity 1 / 5 (3 in between); robust accuracy
    at ε = 2/255, 4/255. Wilson 95% intervals over the distinct images: n_clean for clean and robust cells, n_corr
    for corruption means (each corruption is applied to the same n_corr images, so the mean is not over 19·n_corr
    independent draws; n_corr is the conservative count)."""
    rows = {n: {"corr": {}} for n in names}
    for c in data["cells"].values():
        r = rows.get(c["model"])
        if r is None:
            continue
        if c.get("kind") == "corruption":
            r["corr"].setdefault(int(c["severity"]), []).append(c["accuracy"])
        elif c.get("kind") == "clean":
            r["clean"] = c["accuracy"]
        elif c.get("eps") is not None:
            r[f"{float(c['eps']) * 255:.0f}"] = c["accuracy"]
    nan = float("nan")
    eps = sorted({k for r in rows.values() for k in r if k.isdigit()}, key=int)
    lines = ["| model | ID: clean | near OOD: corruptions sev 1 | corruptions sev 3 | far OOD: corruptions sev 5 | "
             + "".join(f"ε={e}/255 | " for e in eps), "|---|---|---|---|---|" + "---|" * len(eps)]
    for n in names:
        r = rows[n]
        corr = [sum(r["corr"][s]) / len(r["corr"][s]) if r["corr"].get(s) else nan for s in (1, 3, 5)]
        vals = [cell(r.get("clean", nan), n_clean), *(cell(v, n_corr) for v in corr),
                *(cell(r.get(e, nan), n_clean) for e in eps)]
        lines.append(f"| {n} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--output", default="outputs/digrap-digits")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--suite", default=str(ROOT / "benchmarks/digrap_digits_suite.yaml"))
    p.add_argument("--adversarial", action="store_true",
                   help="the robust variant: every method fine-tunes on the training attack's images")
    p.add_argument("--attack_steps", type=int, default=10, help="training attack steps (with --adversarial)")
    opts = p.parse_args()
    out = Path(opts.output)
    from vlmrobust.eval.runner import run_suite

    tpath = out / "timings.json"
    timings = json.loads(tpath.read_text()) if tpath.is_file() else {}
    extra = ("--adversarial", "true", "--attack_steps", str(opts.attack_steps)) if opts.adversarial else ()
    refs = models(out, train(out, opts.steps, opts.seed, timings, extra))
    t0 = time.time()
    data = run_suite(refs, opts.suite, out / "eval", device=opts.device,
                     progress=False)
    timings.setdefault("eval (suite, all models)", round(time.time() - t0, 1))
    tpath.write_text(json.dumps(timings, indent=1))
    print(table(data, list(refs)))
    print("\nwall times (s): " + ", ".join(f"{k} {v:g}" for k, v in timings.items()))


if __name__ == "__main__":
    main()
