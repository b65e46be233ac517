"""VQA (`task: vqa`, LVLMs): VQA accuracy, clean and under APGD on the teacher-forced answer loss per ε.

Dataset-entry keys (besides the shared ones)::

    - name: shapes-vqa
      task: vqa
      source: shapes-vqa               # shapes-vqa (offline generator, n_samples / seed) | vqa-json | a Hub id
      n_samples: 60
      batch_size: 20                   # default 16
      vqa:
        answer_mode: rank              # rank (closed set, by likelihood) | generate (greedy)
        candidates: null               # the answer set of `rank` (shapes-vqa has its own)
        max_new_tokens: 10             # `generate`
        questions_file: ...            # vqa-json: the official JSON files and image folder
        annotations_file: ...
        image_dir: ...
        image_pattern: null
        answers_field: answers         # a Hub dataset's answers column
        image_size: 64                 # rendered side of shapes-vqa / mini-frames images
        perturb: {eps: 8/255, steps: 10}   # evaluate APGD-perturbed images (mini-FRAMES' adversarial split)
      attacks:
        - attack: apgd                 # APGD on the teacher-forced answer loss (the only VQA attack)
          eps: [2/255, 4/255]
          steps: 100
          ensemble: true               # one run per distinct reference answer, worst case per question
          max_references: 3
          targets: ["maybe"]           # extra targeted runs (ensemble only)
          nested_eps: true             # see below

Scores are per-question soft VQA accuracies (rounded to 4 decimals). With `nested_eps: true` (the default) each ε
keeps the per-question minimum with the next smaller ε (its perturbations lie inside the larger ball too) and only
re-attacks the questions still above 0, packed into full batches. With `nested_eps: false` every ε attacks each
batch of the dataset from the clean images, as `vlmrobust.eval.vqa.evaluate_vqa` does (the LVLM recipes' protocol).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ...data.sources import DatasetUnavailable, load_vqa_dataset
from ..results import eps_key, fingerprint
from ..schema import Ctx, DatasetSpec, attack_label, attack_settings, eps_grid, parse_norm
from ..tables import (
    add_curve_point,
    curve_cells,
    curve_columns,
    curve_expected_robustness,
    curve_intervals,
    eps_columns,
    format_eps,
    md_table,
    pct,
    pct_ci,
)
from .base import DatasetRun, EvalTask, analyses_of, register_eval_task
from .classification import in_attack_grid
from .vqa_perturb import decoding_record, parse_perturb, perturb_split

#: VQA sources that are not Hub ids
VQA_SOURCES = ("shapes-vqa", "vqa-json")


def generated_source(source: str) -> bool:
    """Whether `source` is an offline generator (shapes-vqa, mini-frames:...), with its own closed answer set."""
    from ...data.sources import resolve_source

    try:
        return resolve_source(source, "vqa").generated
    except ValueError:
        return False


@dataclass(frozen=True)
class VQASpec:
    """How a `task: vqa` dataset is read and answered.

    Args:
        answer_mode (`str`): "rank" (the most likely of a closed answer set; steadier for small models) or
            "generate" (greedy decoding).
        candidates (`tuple[str, ...]`, *optional*): the answer set for "rank" (defaults to the dataset's own
            `answer_candidates()`, which `shapes-vqa` has).
        max_new_tokens (`int`): generation length for "generate".
        questions_file, annotations_file, image_dir, image_pattern: the official VQA JSON files and image folder
            (`source: vqa-json`, see `VQAJsonDataset`).
        answers_field (`str`): answers column of a Hub dataset (list of strings or of `{"answer": ...}`).
        image_size (`int`): rendered side of `shapes-vqa` / `mini-frames` images.
        perturb (`dict`, *optional*): `{eps, steps, norm, seed}`: the evaluated images are APGD-perturbed against
            the evaluated model once, at load (`vqa_perturb.perturb_split`; mini-FRAMES' adversarial split).
    """

    answer_mode: str = "generate"
    candidates: tuple[str, ...] | None = None
    max_new_tokens: int = 10
    questions_file: str | None = None
    annotations_file: str | None = None
    image_dir: str | None = None
    image_pattern: str | None = None
    answers_field: str = "answers"
    image_size: int = 64
    perturb: dict | None = None


@dataclass(frozen=True)
class VQAAttackSpec:
    """One threat model of a VQA dataset: APGD on the teacher-forced answer loss (RobustVLM protocol).

    Args:
        components (`tuple[str, ...]`): `("apgd",)`.
        label (`str`): name of the cell column.
        norm (`str`): "Linf" or "L2".
        eps (`tuple[float, ...]`): budgets in [0, 1] pixel units, ascending, ε > 0.
        steps (`int`): APGD iterations per run.
        seed (`int`): attack seed.
        ensemble (`bool`): one untargeted run per distinct reference answer (worst case per question), else one
            run on the majority answer.
        targets (`tuple[str, ...]`): strings forced by extra targeted runs (ensemble only).
        max_references (`int`, *optional*): cap on distinct references attacked per question.
        nested_eps (`bool`): each ε starts from the next smaller ε's worst case (default), or from the clean images.
    """

    components: tuple[str, ...]
    label: str
    norm: str = "Linf"
    eps: tuple[float, ...] = ()
    steps: int = 100
    seed: int = 0
    ensemble: bool = True
    targets: tuple[str, ...] = ()
    max_references: int | None = None
    nested_eps: bool = True


@dataclass(frozen=True)
class VQADataset(DatasetSpec):
    """A VQA dataset: the shared fields plus how it is read and answered (`vqa`)."""

    vqa: VQASpec = VQASpec()


_ATTACK_KEYS = {"attack", "label", "norm", "eps", "steps", "seed", "ensemble", "targets", "max_references",
                "nested_eps"}
_VQA_KEYS = {"answer_mode", "candidates", "max_new_tokens", "questions_file", "annotations_file", "image_dir",
             "image_pattern", "answers_field", "image_size", "perturb"}


def likelihood_threat(ctx: Ctx, raw: dict, where: str, kind: str, target: str) -> tuple[str, tuple[float, ...]]:
    """The `attack` / `norm` / `eps` fields of a VQA or captioning attack (APGD on the teacher-forced loss)."""
    comps = raw.get("attack", "apgd")
    if ([comps] if isinstance(comps, str) else comps) != ["apgd"]:
        raise ctx.fail(f"{where}.attack", f"{kind} datasets support only 'apgd' (APGD on the {target} loss), got "
                                          f"{raw.get('attack')!r}.")
    norm = parse_norm(ctx, raw, where, ("Linf", "L2"))
    return norm, eps_grid(ctx, raw.get("eps"), norm, where)


def batches(run: DatasetRun, indices: list[int]):
    """`(indices, pixels, questions, references, items)` of the data in batches of the dataset's batch size."""
    data, model = run.data, run.model
    for start in range(0, len(indices), run.spec.batch_size):
        idx = indices[start:start + run.spec.batch_size]
        items = [data[i] for i in idx]
        imgs = [it["pixel_values"] if "pixel_values" in it else model.preprocess(it["image"]) for it in items]
        pixels = torch.stack([torch.as_tensor(x) for x in imgs]).float().to(model.device)
        yield idx, pixels, [it["question"] for it in items], [list(it["answers"]) for it in items], items


def _per_type(scores: list[float], types: list[str]) -> dict[str, float]:
    out = {}
    for t in dict.fromkeys(types):
        vals = [s for s, x in zip(scores, types) if x == t]
        out[t] = round(sum(vals) / len(vals), 4)
    return out


class VQATask(EvalTask):
    name = "vqa"
    keys = frozenset({"vqa"})
    cell_kinds = ("vqa_clean", "vqa_attack")
    order = 10
    default_batch_size = 16
    plot_ylabel = "VQA accuracy (%)"

    # -- schema -------------------------------------------------------------------------------------------------------
    def parse_attack(self, ctx: Ctx, raw: Any, where: str) -> VQAAttackSpec:
        raw = ctx.check_keys(raw, _ATTACK_KEYS, where)
        norm, eps = likelihood_threat(ctx, raw, where, "VQA", "answer")
        ensemble = ctx.boolean(raw.get("ensemble", True), f"{where}.ensemble")
        targets = ctx.strings(raw.get("targets"), f"{where}.targets")
        if targets and not ensemble:
            raise ctx.fail(f"{where}.targets", "targeted runs are part of the ensemble; set ensemble: true.")
        return VQAAttackSpec(
            components=("apgd",), label=attack_label(ctx, raw, "apgd-ensemble" if ensemble else "apgd", where),
            norm=norm, eps=eps, **attack_settings(ctx, raw, where), ensemble=ensemble, targets=tuple(targets),
            max_references=ctx.integer(raw.get("max_references"), f"{where}.max_references", lo=1, optional=True),
            nested_eps=ctx.boolean(raw.get("nested_eps", True), f"{where}.nested_eps"))

    def parse(self, ctx: Ctx, entry: dict, common: dict, where: str) -> VQADataset:
        source = common["source"]
        generated = generated_source(source)
        if generated and common["n_samples"] is None:
            raise ctx.fail(f"{where}.n_samples", f"missing; the {source} generator needs the number of questions.")
        w = f"{where}.vqa"
        raw = ctx.check_keys(entry.get("vqa") or {}, _VQA_KEYS, w)
        mode = raw.get("answer_mode", "rank" if generated else "generate")
        if mode not in ("rank", "generate"):
            raise ctx.fail(f"{w}.answer_mode", f"must be 'rank' or 'generate', got {mode!r}.")
        cands = raw.get("candidates")
        if cands is not None and (not isinstance(cands, list) or not cands
                                  or not all(isinstance(c, str) and c for c in cands)):
            raise ctx.fail(f"{w}.candidates", f"must be a non-empty list of answer strings, got {cands!r}.")
        if mode == "rank" and cands is None and not generated:
            raise ctx.fail(f"{w}.candidates", "answer_mode 'rank' needs the closed answer set here (only the "
                                              "generated sets provide their own); give candidates or use 'generate'.")
        files = {k: ctx.string(raw.get(k), f"{w}.{k}", optional=True)
                 for k in ("questions_file", "annotations_file", "image_dir", "image_pattern")}
        if source == "vqa-json":
            for k in ("questions_file", "annotations_file", "image_dir"):
                if files[k] is None:
                    raise ctx.fail(f"{w}.{k}", "missing; source vqa-json needs questions_file, annotations_file and "
                                               "image_dir.")
        elif not source.startswith("frames:"):  # frames:<dataset> takes them as overrides of its default files
            extra = [k for k, v in files.items() if v is not None]
            if extra:
                raise ctx.fail(f"{w}.{extra[0]}", "only used with source: vqa-json or frames:<dataset>.")
        return VQADataset(**common, vqa=VQASpec(
            answer_mode=mode, candidates=tuple(cands) if cands else None,
            max_new_tokens=ctx.integer(raw.get("max_new_tokens", 10), f"{w}.max_new_tokens", lo=1), **files,
            answers_field=ctx.string(raw.get("answers_field", "answers"), f"{w}.answers_field"),
            image_size=ctx.integer(raw.get("image_size", 64), f"{w}.image_size", lo=8),
            perturb=parse_perturb(ctx, raw.get("perturb"), f"{w}.perturb")))

    def data_config(self, spec: VQADataset) -> dict:
        return {"task": "vqa", "source": spec.source, "split": spec.split, "n_samples": spec.n_samples,
                "seed": spec.seed, "data_dir": spec.data_dir, "vqa": asdict(spec.vqa)}

    # -- cells --------------------------------------------------------------------------------------------------------
    def load(self, spec, model):
        data = load_vqa_dataset(spec, model)
        return perturb_split(data, model, spec.vqa.perturb, spec.batch_size) if spec.vqa.perturb else data

    def run(self, run: DatasetRun) -> None:
        clean_cfg = {**run.base, "kind": "vqa_clean", "batch_size": run.spec.batch_size}
        clean = run.cell(run.key("clean"), clean_cfg, lambda: self._clean(run))
        for atk in run.spec.attacks:
            parent_cfg, parent = fingerprint(clean_cfg), clean["scores"]
            for eps in atk.eps:
                cfg = {**run.base, "kind": "vqa_attack", "norm": atk.norm, "eps": eps_key(eps), "steps": atk.steps,
                       "seed": atk.seed, "ensemble": atk.ensemble, "targets": list(atk.targets),
                       "max_references": atk.max_references, "batch_size": run.spec.batch_size, "parent": parent_cfg}
                if not atk.nested_eps:
                    cfg["nested_eps"] = False
                cell = run.cell(run.key(atk.label, atk.norm, eps_key(eps)), cfg,
                                lambda a=atk, e=eps, p=parent: self._attack(run, a, e, p, clean))
                if atk.nested_eps:
                    parent_cfg, parent = fingerprint(cfg), cell["scores"]
        run.outputs["clean"] = clean

    def _score_fn(self, run: DatasetRun, questions: list[str], refs: list[list[str]]):
        from ...metrics import vqa_accuracy
        from ..vqa import _answer

        vs = run.spec.vqa
        candidates = None
        if vs.answer_mode == "rank":
            candidates = list(vs.candidates) if vs.candidates else run.data.answer_candidates()

        def score(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            pos = idx.tolist()
            with torch.no_grad():
                preds = _answer(run.model, x, [questions[i] for i in pos], vs.answer_mode, candidates,
                                vs.max_new_tokens)
            return torch.tensor([vqa_accuracy(p, refs[i]) for p, i in zip(preds, pos)])

        return score

    def _clean(self, run: DatasetRun) -> dict:
        data, lvlm = run.data, run.model
        was_training = lvlm.training
        lvlm.eval()
        scores: list[float] = []
        types: list[str] = []
        try:
            for _, pixels, questions, refs, items in batches(run, list(range(len(data)))):
                if any(not r for r in refs):
                    raise DatasetUnavailable(f"dataset '{run.spec.name}': some questions have no reference answers "
                                             "(annotations missing?); VQA accuracy needs them.")
                score = self._score_fn(run, questions, refs)
                scores += [float(v) for v in score(pixels, torch.arange(len(questions)))]
                types += [str(it.get("question_type", "") or "all") for it in items]
        finally:
            lvlm.train(was_training)
        scores = [round(v, 4) for v in scores]  # stored rounded; the attack cells start from these
        cell = {"kind": "vqa_clean", "task": "vqa", "metric": "vqa_accuracy", "model": run.model_name,
                "dataset": run.spec.name, "n": len(scores), "accuracy": sum(scores) / max(len(scores), 1),
                "answer_mode": run.spec.vqa.answer_mode, **decoding_record(run.model, run.spec.vqa),
                "scores": scores, "question_types": types,
                "per_type": _per_type(scores, types)}
        if hasattr(data, "chance_accuracy"):
            cell["chance_accuracy"] = round(data.chance_accuracy()["overall"], 4)
        return cell

    def _attack(self, run: DatasetRun, atk: VQAAttackSpec, eps: float, parent: list[float], clean: dict) -> dict:
        from ...attacks.vlm import ensemble_attack
        from ...metrics import majority_answer
        from ..vqa import warn_nonfinite

        scores = [float(v) for v in parent]
        alive = [i for i, v in enumerate(scores) if v > 0]
        # nested: the survivors of the smaller ε, packed; otherwise every dataset batch whole (the ensemble itself
        # skips the questions already at 0), as evaluate_vqa batches them
        attacked = alive if atk.nested_eps else list(range(len(scores)))
        nonfinite: list[int] = []  # questions whose attack met a NaN / Inf loss or image: scored 0 (broken)
        lvlm = run.model
        was_training = lvlm.training
        lvlm.eval()
        t0 = time.perf_counter()
        try:
            for idx, pixels, questions, refs, _ in batches(run, attacked):
                score = self._score_fn(run, questions, refs)
                broken: list[int] = []
                # the ensemble: every reference answer (and the targets); otherwise APGD on the majority answer
                kw = {"targets": atk.targets, "max_references": atk.max_references} if atk.ensemble else {}
                answers = refs if atk.ensemble else [[majority_answer(r)] for r in refs]
                _, worst = ensemble_attack(lvlm, pixels, questions, answers, eps=eps, score_fn=score, steps=atk.steps,
                                           norm=atk.norm, seed=atk.seed, nonfinite_out=broken, **kw)
                for i, w in zip(idx, worst.tolist()):
                    scores[i] = min(scores[i], round(float(w), 4))
                nonfinite += [idx[j] for j in broken]
        finally:
            lvlm.train(was_training)
        dt = time.perf_counter() - t0
        n = len(scores)
        cell = {"kind": "vqa_attack", "task": "vqa", "metric": "vqa_accuracy", "model": run.model_name,
                "dataset": run.spec.name, "attack": atk.label, "components": list(atk.components), "norm": atk.norm,
                "eps": eps, "steps": atk.steps, "seed": atk.seed, "ensemble": atk.ensemble,
                "targets": list(atk.targets), "max_references": atk.max_references, "n": n,
                "accuracy": sum(scores) / max(n, 1), "scores": scores, "n_attacked": len(alive),
                "per_type": _per_type(scores, clean["question_types"]),
                "attacked_questions_per_s": round(len(alive) / dt, 3) if alive and dt > 0 else None}
        if nonfinite:
            cell["n_nonfinite"] = len(nonfinite)
            cell["nonfinite_questions"] = sorted(nonfinite)
            warn_nonfinite(len(nonfinite), f"{run.spec.name} {atk.label} {atk.norm} eps {eps:g}")
        return cell

    # -- results ------------------------------------------------------------------------------------------------------
    def in_grid(self, cell: dict, dataset: dict) -> bool:
        return cell["kind"] == "vqa_clean" or in_attack_grid(cell, dataset)

    def summarize(self, model: str, cells: list[dict], suite: dict) -> dict:
        rows: dict[str, dict] = {}
        for cell in (c for c in cells if c["kind"] in self.cell_kinds):  # (its analyses' cells come too)
            row = rows.setdefault(cell["dataset"], {"clean": None, "robust": {}, "per_type": {}})
            if cell["kind"] == "vqa_clean":
                row.update(clean=cell["accuracy"], n=cell["n"], chance=cell.get("chance_accuracy"),
                           answer_mode=cell.get("answer_mode"))
                for t, v in cell.get("per_type", {}).items():
                    row["per_type"].setdefault(t, {})["clean"] = v
            else:
                add_curve_point(row, cell, cell["accuracy"])
                eps = format_eps(float(cell["eps"])) if cell["norm"] == "Linf" else f"{float(cell['eps']):g}"
                for t, v in cell.get("per_type", {}).items():
                    row["per_type"].setdefault(t, {})[f"{cell['attack']} ({cell['norm']}) ε={eps}"] = v
        out, extra = {}, {}
        for entry in suite["datasets"]:
            row = rows.get(entry["name"])
            if row is not None and row["clean"] is not None:
                out[entry["name"]] = row = {**row, "expected_robustness": curve_expected_robustness(row),
                                            "ci95": curve_intervals(row)}
                for a in (a for a in analyses_of(self.name) if a.name in (entry.get("analyses") or {})):
                    row[a.name] = a.summarize_row(row, [c for c in cells if c["dataset"] == entry["name"]
                                                        and c["kind"] in a.cell_kinds], entry, suite)
        for a in analyses_of(self.name):  # per-model entries over the datasets (e.g. FRAMES' near / far means)
            extra.update(a.average(list(out.values())))
        return {"vqa": out, **extra} if out else {}

    def columns(self, row: dict) -> dict[str, float]:
        return curve_columns(row)

    def describe_attack(self, dataset: dict, a: dict) -> str:
        eps = ", ".join(format_eps(e) if a["norm"] == "Linf" else f"{e:g}" for e in a["eps"])
        ens = (f"ensemble over {a.get('max_references') or 'all'} distinct references per question"
               + (f" + targeted runs {a['targets']}" if a.get("targets") else "")
               if a.get("ensemble") else "one run on the majority answer")
        nested = "" if a.get("nested_eps", True) else ", every ε from the clean images"
        return (f"- `{dataset['name']}` (VQA, answers by {dataset['vqa'].get('answer_mode')}): {a['label']} = APGD on "
                f"the teacher-forced answer loss, {ens}, {a['norm']}, ε ∈ {{{eps}}}, {a['steps']} iterations, seed "
                f"{a['seed']}{nested}, n = {dataset.get('n_samples') or 'all'} questions")

    def report_intro(self) -> str:
        return ("VQA accuracy in %: the official metric (min(1, #matching references / 3), averaged over "
                "leave-one-out reference subsets); robust = per question the worst answer over the attack runs.")

    def _table(self, rows: dict[str, dict], first: str) -> str:
        labels, cols, headers = eps_columns(list(rows.values()))
        header = [first, "n", "answers", "chance", "clean"] + headers + [f"exp. rob. {a}" for a in labels]
        return md_table(header, [[d, str(r.get("n")), str(r.get("answer_mode")), pct(r.get("chance")),
                                  pct_ci(r["clean"], r.get("n"))] + curve_cells(r, cols, labels, n=r.get("n"))
                                 for d, r in rows.items()])

    def markdown(self, model: str, summary: dict, results: dict) -> list[str]:
        vqa = summary.get("vqa")
        if not vqa:
            return []
        md = ["### VQA accuracy", "",
              "Official VQA accuracy (min(1, #matching references / 3), averaged over leave-one-out reference "
              "subsets), in %; robust = per question the worst answer over the attack runs (and over every smaller "
              "ε, unless its threat model starts every ε from the clean images). In parentheses: the Wilson 95% "
              "interval over the n questions (conservative for soft scores; evaluation sampling only, not the "
              "training seed). Chance = always answering each question type's most frequent answer (where the "
              "dataset defines it).", "", self._table(vqa, "VQA dataset"), ""]
        for d, r in vqa.items():
            if len(r["per_type"]) > 1:
                cols = list(next(iter(r["per_type"].values())))
                md += [f"By question type on `{d}`:", "",
                       md_table(["type"] + cols, [[t] + [pct(v.get(c)) for c in cols]
                                                  for t, v in r["per_type"].items()]), ""]
        return md

    def console(self, summary: dict) -> list[str]:
        lines = []
        for d, r in summary.get("vqa", {}).items():
            parts = [f"clean {pct_ci(r['clean'], r.get('n'))}"]
            if r.get("chance") is not None:
                parts.append(f"chance {100 * r['chance']:.1f}")
            for a, accs in r["robust"].items():
                parts += [f"{a} {e:.4g}: {pct_ci(acc, r.get('n'))}" for e, acc in sorted(accs.items())]
            lines.append(f"  {d} (VQA accuracy): " + " | ".join(parts))
        return lines

    def run_markdown(self, rows: dict[str, str], dataset: dict, results: dict, summary: dict) -> list[str]:
        models = summary["models"]
        have = {label: models[m]["vqa"][dataset["name"]] for label, m in rows.items()
                if dataset["name"] in models.get(m, {}).get("vqa", {})}
        if not have:
            return []
        return [f"VQA accuracy (%) on `{dataset['name']}`, clean and under the attacks of the threat models below "
                "(per question the worst case), in parentheses its Wilson 95% interval over the n questions.", "",
                self._table(have, "model"), ""]


register_eval_task(VQATask())

__all__ = ["VQAAttackSpec", "VQADataset", "VQASpec", "VQATask", "VQA_SOURCES", "batches", "likelihood_threat"]
