"""GRACE's offline comparison tables, printed from what the recipes wrote (nothing typed by hand).

Digits (CLIP): base, FARE⁸, TeCoA⁸ and GRACE side by side under one evaluation (clean, APGD-CE + APGD-T at
2/4/8 /255, the 19 common corruptions at severities 1/3/5 as the OOD axis, and the harmonic mean of ID / OOD /
adversarial accuracy). The three recipes run with their quickstart configs and the shared overrides `CLIP_COMMON`
(60 steps instead of 300, APGD-CE 20 iterations on 100 images, corruptions on 50: shorter than the quickstarts so
the three fit in minutes on a loaded 2-core machine; they run in parallel); the base row is the GRACE run's
`before` evaluation.

Shapes-VQA (tiny LVLMs): vanilla LoRA (`--lambda_lar 0 --lambda_gv 0`: the same adversarial LoRA step without the
weight perturbation and the Gram term) against GRACE, both from the same shapes-VQA fine-tuned starting point
(`recipes/grace_vqa.py`, `LVLM_COMMON`); clean and robust VQA accuracy (with Wilson 95% intervals) and their
harmonic mean. `lvlm`: the tiny LLaVA (`quickstart_grace_llava.yaml`), `qwen`: the tiny Qwen2-VL
(`quickstart_grace_qwen_vl.yaml`).

    python benchmarks/grace_tables.py --run          # runs whatever results.json is missing, then prints
    python benchmarks/grace_tables.py --run --only lvlm   # one table (clip | lvlm | qwen)
    python benchmarks/grace_tables.py --run --only lvlm --seeds 0 1 2   # + mean ± std over seeds (OUT/seed<k>/)
    python benchmarks/grace_tables.py                # prints from outputs/grace-cmp/*/results.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

from vlmrobust.eval.results import load_results
from vlmrobust.eval.tables import format_eps
from vlmrobust.eval.tasks.corruptions import harmonic_mean, tradeoff

OUT = "outputs/grace-cmp"
CLIP_COMMON = ["--max_steps", "60", "--warmup_steps", "6", "--eval_max_samples", "100", "--eval_attack", "apgd-ce",
               "--eval_attack_steps", "20", "--eval_epsilons", "2/255", "4/255", "8/255", "--eval_corruptions", "all",
               "--eval_corruption_severities", "1", "3", "5", "--eval_corruption_samples", "50",
               "--save_strategy", "no", "--disable_tqdm", "true"]
CLIP_RUNS = {  # name: (recipe, config, extra args)
    "grace": ("recipes/grace_clip.py", "recipes/configs/quickstart_grace.yaml", []),
    "fare": ("recipes/fare_clip.py", "recipes/configs/quickstart.yaml", ["--eval_before", "false"]),
    "tecoa": ("recipes/tecoa_clip.py", "recipes/configs/quickstart_tecoa.yaml", ["--eval_before", "false"]),
}
CLIP_ROWS = [("grace", "before", "tiny digits CLIP (base)"), ("fare", "after", "+ FARE⁸ (full FT)"),
             ("tecoa", "after", "+ TeCoA⁸ (full FT)"), ("grace", "after", "+ GRACE (LoRA r16, merged)")]
LVLM_COMMON = ["--disable_tqdm", "true"]
LVLM_RUNS = {  # the GRACE run starts from the shapes-VQA fine-tuned model the LoRA run saved (same start, one SFT)
    "llava-lora": ("recipes/grace_vqa.py", "recipes/configs/quickstart_grace_llava.yaml",
                   ["--lambda_lar", "0", "--lambda_gv", "0"]),
    "llava-grace": ("recipes/grace_vqa.py", "recipes/configs/quickstart_grace_llava.yaml",
                    ["--model_name_or_path", f"llava:{OUT}/llava-lora/sft", "--sft_steps", "0", "--eval_before", "false"]),
}
LVLM_ROWS = [("llava-lora", "before", "tiny LLaVA, shapes-VQA fine-tuned (start)"),
             ("llava-lora", "after", "+ vanilla adversarial LoRA (λ_LAR = λ_GV = 0)"),
             ("llava-grace", "after", "+ GRACE (LoRA, LAR-AWP + Gram volume)")]
QWEN_RUNS = {  # the same on the tiny Qwen2-VL (112 px, 16 image tokens)
    "qwen-lora": ("recipes/grace_vqa.py", "recipes/configs/quickstart_grace_qwen_vl.yaml",
                  ["--lambda_lar", "0", "--lambda_gv", "0"]),
    "qwen-grace": ("recipes/grace_vqa.py", "recipes/configs/quickstart_grace_qwen_vl.yaml",
                   ["--model_name_or_path", f"qwen_vl:{OUT}/qwen-lora/sft", "--sft_steps", "0", "--eval_before",
                    "false"]),
}
QWEN_ROWS = [("qwen-lora", "before", "tiny Qwen2-VL, shapes-VQA fine-tuned (start)"),
             ("qwen-lora", "after", "+ vanilla adversarial LoRA (λ_LAR = λ_GV = 0)"),
             ("qwen-grace", "after", "+ GRACE (LoRA, LAR-AWP + Gram volume)")]


def run_missing(root: Path, runs: dict, common: list[str], parallel: bool = False) -> None:
    """Run the recipes whose results.json is missing (one after the other, or all at once), logs beside them."""
    procs = []
    for name, (recipe, config, extra) in runs.items():
        out = root / OUT / name
        if (out / "results.json").is_file() and "rows" in load_results(out / "results.json").get("run", {}):
            continue
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, recipe, "--config", config, "--output_dir", str(out), *common, *extra]
        print("+ " + " ".join(cmd), flush=True)
        log = open(out / "run.log", "w")  # noqa: SIM115 (closed with the process)
        procs.append((name, time.time(), log, subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT)))
        if not parallel:
            _wait(procs)
            procs = []
    _wait(procs)


def _wait(procs) -> None:
    for name, t0, log, proc in procs:
        rc = proc.wait()
        log.close()
        print(f"[{name}] exit {rc}, {time.time() - t0:.0f} s", flush=True)
        if rc:
            raise SystemExit(f"{name} failed: see {log.name}")


def _load(root: Path, name: str) -> dict | None:
    path = root / OUT / name / "results.json"
    return load_results(path) if path.is_file() else None


def clip_table(root: Path) -> str:
    lines, rows, eps_all, notes = [], [], None, set()
    for name, row, label in CLIP_ROWS:
        data = _load(root, name)
        if data is None or row not in data.get("run", {}).get("rows", []):
            lines.append(f"<!-- missing: {row} in {OUT}/{name}/results.json -->")
            continue
        dataset = data["suite"]["datasets"][0]["name"]
        corr = data["summary"]["models"][row]["datasets"][dataset]["corruptions"]
        t = tradeoff(data, row, corr["mean_accuracy"], dataset)
        eps_all = eps_all or sorted(t["adversarial"])
        rows.append((label, t))
        run, entry = data["run"], data["suite"]["datasets"][0]
        atk, corr_cfg = entry["attacks"][0], entry.get("analyses", {}).get("corruptions", {})
        notes.add(f"seed {run['config'].get('seed')}, {atk['label']} {atk['steps']} iterations on {entry['n_samples']} "
                  f"held-out digits, {len(corr_cfg.get('types', []))} corruptions x severities "
                  f"{'/'.join(map(str, corr_cfg.get('severities', [])))} on {corr_cfg.get('n_samples')}")
        if row == "after":
            notes.add(f"{name}: {run['config'].get('max_steps')} steps, {run.get('timings', {}).get('total_s')} s")
    if not rows:
        return "\n".join(lines)
    head = (["model", "clean (ID)"] + [f"robust {format_eps(e)}" for e in eps_all] + ["corruptions (OOD)"]
            + [f"HM {format_eps(e)}" for e in eps_all])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, t in rows:
        cells = ([t["id"]] + [t["adversarial"].get(e) for e in eps_all] + [t["ood"]]
                 + [t["harmonic_mean"].get(e) for e in eps_all])
        out.append(f"| {label} | " + " | ".join("–" if v is None else f"{100 * v:.1f}" for v in cells) + " |")
    return "\n".join(lines + out) + f"\n\n({'; '.join(sorted(notes))}; HM = harmonic mean of ID, OOD, robust at ε)"


def lvlm_table(root: Path, table_rows=LVLM_ROWS) -> str:
    lines, rows, eps_all, notes = [], [], None, set()
    for name, row, label in table_rows:
        data = _load(root, name)
        if data is None or row not in data.get("run", {}).get("rows", []):
            lines.append(f"<!-- missing: {row} in {OUT}/{name}/results.json -->")
            continue
        dataset = data["suite"]["datasets"][0]["name"]
        summary = data["summary"]["models"][row]["vqa"][dataset]  # {"clean", "robust": {attack: {ε: acc}}, "ci95"}
        attack, by_eps = next(iter(summary["robust"].items()))
        clean, robust = summary["clean"], {float(k): v for k, v in by_eps.items()}
        ci = summary.get("ci95", {})
        ci_robust = {float(k): v for k, v in ci.get("robust", {}).get(attack, {}).items()}
        eps_all = eps_all or sorted(robust)
        rows.append((label, (clean, ci.get("clean")), {e: (v, ci_robust.get(e)) for e, v in robust.items()}))
        run, entry = data["run"], data["suite"]["datasets"][0]
        notes.add(f"seed {run['config'].get('seed')}, {attack}, {entry['n_samples']} held-out questions, chance "
                  f"(majority answer per question type) {100 * summary['chance']:.1f}")
        timings = run.get("timings", {})
        if row == "after":
            sft = f" (SFT {timings['sft_s']} s)" if "sft_s" in timings else ""
            notes.add(f"{name}: {run['config'].get('max_steps')} steps, {timings.get('total_s')} s in all{sft}")
    if not rows:
        return "\n".join(lines)
    head = (["model", "clean"] + [f"robust {format_eps(e)}" for e in eps_all]
            + [f"HM(clean, robust {format_eps(e)})" for e in eps_all])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(v, ci=None):
        if v is None:
            return "–"
        return f"{100 * v:.1f}" + (f" ({100 * ci[0]:.1f}–{100 * ci[1]:.1f})" if ci else "")

    for label, (clean, clean_ci), robust in rows:
        cells = ([cell(clean, clean_ci)] + [cell(*robust[e]) if e in robust else "–" for e in eps_all]
                 + [cell(harmonic_mean(clean, robust[e][0])) for e in eps_all])
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines + out) + (f"\n\n({'; '.join(sorted(notes))}; VQA accuracy in %, with its Wilson 95% "
                                      "interval over the questions (conservative for VQA's soft scores))")


def seeded(runs: dict, seed: int) -> dict:
    """`runs` for another seed: `--seed <seed>`, results under `OUT/seed<seed>/` (seed 0 keeps the plain folders)."""
    if seed == 0:
        return runs
    return {f"seed{seed}/{name}": (recipe, config, [a.replace(f"{OUT}/", f"{OUT}/seed{seed}/") for a in extra]
                                   + ["--seed", str(seed)])
            for name, (recipe, config, extra) in runs.items()}


def lvlm_seed_table(root: Path, table_rows, seeds: list[int]) -> str:
    """Mean ± sample std over `seeds` of each LVLM cell (each seed: its own SFT, training draws, held-out questions
    and attack starts)."""
    lines, rows, eps_all, n_q = [], [], None, set()
    for name, row, label in table_rows:
        per_seed = []
        for seed in seeds:
            folder = name if seed == 0 else f"seed{seed}/{name}"
            data = _load(root, folder)
            if data is None or row not in data.get("run", {}).get("rows", []):
                lines.append(f"<!-- missing: {row} in {OUT}/{folder}/results.json -->")
                continue
            dataset = data["suite"]["datasets"][0]["name"]
            summary = data["summary"]["models"][row]["vqa"][dataset]
            robust = {float(k): v for k, v in next(iter(summary["robust"].values())).items()}
            eps_all = eps_all or sorted(robust)
            n_q.add(data["suite"]["datasets"][0]["n_samples"])
            per_seed.append([summary["clean"]] + [robust[e] for e in eps_all]
                            + [harmonic_mean(summary["clean"], robust[e]) for e in eps_all])
        if len(per_seed) == len(seeds):
            rows.append((label, torch.tensor(per_seed, dtype=torch.float64) * 100))
    if not rows:
        return "\n".join(lines)
    head = (["model", "clean"] + [f"robust {format_eps(e)}" for e in eps_all]
            + [f"HM(clean, robust {format_eps(e)})" for e in eps_all])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, t in rows:
        mean, std = t.mean(0), t.std(0) if len(seeds) > 1 else torch.zeros(t.shape[1])
        out.append(f"| {label} | " + " | ".join(f"{m:.1f} ± {s:.1f}" for m, s in zip(mean.tolist(), std.tolist()))
                   + " |")
    return "\n".join(lines + out) + (f"\n\n(mean ± sample std over seeds {', '.join(map(str, seeds))}; "
                                      f"{'/'.join(map(str, sorted(n_q)))} held-out questions per seed; VQA accuracy in %)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default=".", help="folder the recipes run in")
    p.add_argument("--run", action="store_true", help="run the recipes whose results.json is missing first")
    p.add_argument("--only", choices=["clip", "lvlm", "qwen"], help="one of the tables (lvlm: tiny LLaVA, qwen: tiny "
                                                                    "Qwen2-VL)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="LVLM tables: also mean ± std over these seeds")
    args = p.parse_args(argv)
    root = Path(args.root)
    tables = [args.only] if args.only else ["clip", "lvlm", "qwen"]
    if args.run and "clip" in tables:
        run_missing(root, CLIP_RUNS, CLIP_COMMON, parallel=True)
    for seed in args.seeds if args.run else []:
        if "lvlm" in tables:
            run_missing(root, seeded(LVLM_RUNS, seed), LVLM_COMMON)
        if "qwen" in tables:
            run_missing(root, seeded(QWEN_RUNS, seed), LVLM_COMMON)
    if "clip" in tables:
        print("GRACE digits comparison:\n\n" + clip_table(root) + "\n")
    if "lvlm" in tables:
        print("GRACE shapes-VQA (tiny LLaVA):\n\n" + lvlm_table(root) + "\n")
    if "qwen" in tables:
        print("GRACE shapes-VQA (tiny Qwen2-VL):\n\n" + lvlm_table(root, QWEN_ROWS) + "\n")
    if args.seeds != [0]:
        for name, rows in (("lvlm", LVLM_ROWS), ("qwen", QWEN_ROWS)):
            if name in tables:
                print(f"GRACE shapes-VQA ({'tiny LLaVA' if name == 'lvlm' else 'tiny Qwen2-VL'}), over seeds:\n\n"
                      + lvlm_seed_table(root, rows, args.seeds) + "\n")


if __name__ == "__main__":
    main()
