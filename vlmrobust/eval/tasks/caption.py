"""Captioning (`task: caption`, LVLMs): corpus CIDEr of greedy captions, clean and under attack per ε.

Dataset-entry keys (besides the shared ones)::

    - name: shapes-caption
      task: caption
      source: shapes-caption           # shapes-caption (offline generator, n_samples / seed) | coco-json
      n_samples: 30                    # CIDEr is computed on this fixed subset (the first / seeded n images)
      batch_size: 15                   # default 16
      caption:
        prompt: Provide a short caption for this image.
        max_new_tokens: 20
        annotations_file: ...          # coco-json: COCO-format caption JSON and image folder
        image_dir: ...
        image_size: 64                 # rendered side of shapes-caption images
      attacks:
        - attack: apgd                 # APGD on the teacher-forced CE of a reference caption
          eps: [2/255, 4/255]
          steps: 100
          n_references: 5              # one run per reference caption, lowest CIDEr per image kept

Scores are per-image CIDEr-D ×100 against the IDF of the whole evaluated set's references (fixed, so their mean is
the corpus CIDEr); each ε starts from the next smaller ε's worst case and re-attacks only images still above 0.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from ...data.sources import DatasetUnavailable, load_caption_dataset
from ..results import eps_key, fingerprint
from ..schema import Ctx, DatasetSpec, attack_label, attack_settings
from ..tables import (
    add_curve_point,
    curve_cells,
    curve_columns,
    curve_expected_robustness,
    eps_columns,
    format_eps,
    md_table,
)
from .base import DatasetRun, EvalTask, register_eval_task
from .classification import in_attack_grid
from .vqa import batches, likelihood_threat

#: captioning sources (no Hub loader yet: COCO-format JSON + image folder, or the offline generator)
CAPTION_SOURCES = ("shapes-caption", "coco-json")


@dataclass(frozen=True)
class CaptionSpec:
    """How a `task: caption` dataset is read and captioned.

    Args:
        prompt (`str`): the captioning instruction.
        max_new_tokens (`int`): caption length (greedy decoding).
        annotations_file, image_dir: COCO-format caption JSON and image folder (`source: coco-json`, see
            `CaptionJsonDataset`).
        image_size (`int`): rendered side of `shapes-caption` images.
    """

    prompt: str = "Provide a short caption for this image."
    max_new_tokens: int = 20
    annotations_file: str | None = None
    image_dir: str | None = None
    image_size: int = 64


@dataclass(frozen=True)
class CaptionAttackSpec:
    """One threat model of a captioning dataset: APGD on the teacher-forced CE of a reference caption, one run per
    reference (up to `n_references`), per image the lowest CIDEr kept.

    Args:
        components (`tuple[str, ...]`): `("apgd",)`.
        label (`str`): name of the cell column.
        norm (`str`): "Linf" or "L2".
        eps (`tuple[float, ...]`): budgets in [0, 1] pixel units, ascending, ε > 0.
        steps (`int`): APGD iterations per run.
        seed (`int`): attack seed.
        n_references (`int`, *optional*): reference captions attacked per image (None: all).
    """

    components: tuple[str, ...]
    label: str
    norm: str = "Linf"
    eps: tuple[float, ...] = ()
    steps: int = 100
    seed: int = 0
    n_references: int | None = 5


@dataclass(frozen=True)
class CaptionDataset(DatasetSpec):
    """A captioning dataset: the shared fields plus how it is read and captioned (`caption`)."""

    caption: CaptionSpec = CaptionSpec()


_ATTACK_KEYS = {"attack", "label", "norm", "eps", "steps", "seed", "n_references"}
_CAPTION_KEYS = {"prompt", "max_new_tokens", "annotations_file", "image_dir", "image_size"}


def _cider(run: DatasetRun):
    """CIDEr scorer (IDF of the references of the whole evaluated image set) of a captioning dataset."""
    from ...metrics import CorpusCider

    def build():
        data = run.data
        refs = {i: list(data[i]["answers"]) for i in range(len(data))}
        empty = [i for i, r in refs.items() if not r]
        if empty:
            raise DatasetUnavailable(f"dataset '{run.spec.name}': {len(empty)} image(s) have no reference captions "
                                     "(annotations missing?); CIDEr needs them.")
        return CorpusCider(refs)

    return run.cached("cider", build)


class CaptionTask(EvalTask):
    name = "caption"
    keys = frozenset({"caption"})
    cell_kinds = ("caption_clean", "caption_attack")
    order = 20
    default_batch_size = 16

    # -- schema -------------------------------------------------------------------------------------------------------
    def parse_attack(self, ctx: Ctx, raw: Any, where: str) -> CaptionAttackSpec:
        raw = ctx.check_keys(raw, _ATTACK_KEYS, where)
        norm, eps = likelihood_threat(ctx, raw, where, "captioning", "caption")
        return CaptionAttackSpec(
            components=("apgd",), label=attack_label(ctx, raw, "apgd-ensemble", where), norm=norm, eps=eps,
            **attack_settings(ctx, raw, where),
            n_references=ctx.integer(raw.get("n_references", 5), f"{where}.n_references", lo=1, optional=True))

    def parse(self, ctx: Ctx, entry: dict, common: dict, where: str) -> CaptionDataset:
        source = common["source"]
        if source not in CAPTION_SOURCES:
            raise ctx.fail(f"{where}.source", f"unknown captioning source {source!r}; known: "
                                              f"{', '.join(CAPTION_SOURCES)} (COCO-format JSON + image folder).")
        if source == "shapes-caption" and common["n_samples"] is None:
            raise ctx.fail(f"{where}.n_samples", "missing; the shapes-caption generator needs the number of images.")
        w = f"{where}.caption"
        raw = ctx.check_keys(entry.get("caption") or {}, _CAPTION_KEYS, w)
        files = {k: ctx.string(raw.get(k), f"{w}.{k}", optional=True) for k in ("annotations_file", "image_dir")}
        if source == "coco-json":
            for k, v in files.items():
                if v is None:
                    raise ctx.fail(f"{w}.{k}", "missing; source coco-json needs annotations_file and image_dir.")
        else:
            extra = [k for k, v in files.items() if v is not None]
            if extra:
                raise ctx.fail(f"{w}.{extra[0]}", "only used with source: coco-json.")
        return CaptionDataset(**common, caption=CaptionSpec(
            prompt=ctx.string(raw.get("prompt", CaptionSpec.prompt), f"{w}.prompt"),
            max_new_tokens=ctx.integer(raw.get("max_new_tokens", 20), f"{w}.max_new_tokens", lo=1), **files,
            image_size=ctx.integer(raw.get("image_size", 64), f"{w}.image_size", lo=8)))

    def data_config(self, spec: CaptionDataset) -> dict:
        return {"task": "caption", "source": spec.source, "split": spec.split, "n_samples": spec.n_samples,
                "seed": spec.seed, "data_dir": spec.data_dir, "caption": asdict(spec.caption)}

    # -- cells --------------------------------------------------------------------------------------------------------
    def load(self, spec, model):
        return load_caption_dataset(spec, model)

    def run(self, run: DatasetRun) -> None:
        from ...metrics import cider_status

        ok, message = cider_status()
        if not ok:  # said plainly; with --skip-missing it is listed under "Skipped datasets" in the report
            raise DatasetUnavailable(f"dataset '{run.spec.name}' (captioning) needs CIDEr: {message}")
        cs = run.spec.caption
        clean_cfg = {**run.base, "kind": "caption_clean", "batch_size": run.spec.batch_size}
        clean = run.cell(run.key("clean"), clean_cfg, lambda: self._clean(run))
        for atk in run.spec.attacks:
            parent_cfg, parent = fingerprint(clean_cfg), clean
            for eps in atk.eps:
                cfg = {**run.base, "kind": "caption_attack", "norm": atk.norm, "eps": eps_key(eps), "steps": atk.steps,
                       "seed": atk.seed, "n_references": atk.n_references, "max_new_tokens": cs.max_new_tokens,
                       "batch_size": run.spec.batch_size, "parent": parent_cfg}
                cell = run.cell(run.key(atk.label, atk.norm, eps_key(eps)), cfg,
                                lambda a=atk, e=eps, p=parent: self._attack(run, a, e, p))
                parent_cfg, parent = fingerprint(cfg), cell
        run.outputs["clean"] = clean

    def _clean(self, run: DatasetRun) -> dict:
        from ..caption import caption_scores

        scorer, lvlm = _cider(run), run.model
        was_training = lvlm.training
        lvlm.eval()
        scores: list[float] = []
        captions: list[str] = []
        try:
            for idx, pixels, prompts, _, _ in batches(run, list(range(len(run.data)))):
                sc, caps = caption_scores(lvlm, scorer, pixels, prompts, idx, run.spec.caption.max_new_tokens)
                scores += sc
                captions += caps
        finally:
            lvlm.train(was_training)
        scores = [round(v, 4) for v in scores]
        return {"kind": "caption_clean", "task": "caption", "metric": "cider", "model": run.model_name,
                "dataset": run.spec.name, "n": len(scores), "cider": sum(scores) / max(len(scores), 1),
                "scores": scores, "captions": captions, "max_new_tokens": run.spec.caption.max_new_tokens}

    def _attack(self, run: DatasetRun, atk: CaptionAttackSpec, eps: float, parent: dict) -> dict:
        from ..caption import attack_captions
        from ..vqa import warn_nonfinite

        scorer, lvlm = _cider(run), run.model
        scores = [float(v) for v in parent["scores"]]
        captions = list(parent["captions"])
        alive = [i for i, v in enumerate(scores) if v > 0]
        nonfinite: list[int] = []  # images whose attack met a NaN / Inf loss or image: scored 0 (broken)
        was_training = lvlm.training
        lvlm.eval()
        t0 = time.perf_counter()
        try:
            for idx, pixels, prompts, refs, _ in batches(run, alive):
                broken: list[int] = []
                sc, caps = attack_captions(lvlm, scorer, pixels, prompts, refs, idx, eps=eps, steps=atk.steps,
                                           norm=atk.norm, n_references=atk.n_references, seed=atk.seed,
                                           max_new_tokens=run.spec.caption.max_new_tokens,
                                           start=([scores[i] for i in idx], [captions[i] for i in idx]),
                                           nonfinite_out=broken)
                nonfinite += [idx[j] for j in broken]
                for i, v, c in zip(idx, sc, caps):
                    if round(v, 4) < scores[i]:
                        scores[i], captions[i] = round(v, 4), c
        finally:
            lvlm.train(was_training)
        dt = time.perf_counter() - t0
        n = len(scores)
        cell = {"kind": "caption_attack", "task": "caption", "metric": "cider", "model": run.model_name,
                "dataset": run.spec.name, "attack": atk.label, "components": list(atk.components), "norm": atk.norm,
                "eps": eps, "steps": atk.steps, "seed": atk.seed, "n_references": atk.n_references, "n": n,
                "cider": sum(scores) / max(n, 1), "scores": scores, "captions": captions, "n_attacked": len(alive),
                "attacked_images_per_s": round(len(alive) / dt, 3) if alive and dt > 0 else None}
        if nonfinite:
            cell["n_nonfinite"] = len(nonfinite)
            cell["nonfinite_images"] = sorted(nonfinite)
            warn_nonfinite(len(nonfinite), f"{run.spec.name} {atk.label} {atk.norm} eps {eps:g}", "images")
        return cell

    # -- results ------------------------------------------------------------------------------------------------------
    def in_grid(self, cell: dict, dataset: dict) -> bool:
        return cell["kind"] == "caption_clean" or in_attack_grid(cell, dataset)

    def summarize(self, model: str, cells: list[dict], suite: dict) -> dict:
        rows: dict[str, dict] = {}
        for cell in cells:
            row = rows.setdefault(cell["dataset"], {"clean": None, "robust": {}})
            if cell["kind"] == "caption_clean":
                row.update(clean=cell["cider"], n=cell["n"])
            else:
                add_curve_point(row, cell, cell["cider"])
        out = {}
        for entry in suite["datasets"]:
            row = rows.get(entry["name"])
            if row is not None and row["clean"] is not None:
                out[entry["name"]] = {**row, "expected_robustness": curve_expected_robustness(row)}
        return {"caption": out} if out else {}

    def columns(self, row: dict) -> dict[str, float]:
        return curve_columns(row)

    def describe_attack(self, dataset: dict, a: dict) -> str:
        eps = ", ".join(format_eps(e) if a["norm"] == "Linf" else f"{e:g}" for e in a["eps"])
        return (f"- `{dataset['name']}` (captioning, CIDEr): {a['label']} = APGD on the teacher-forced CE of a "
                f"reference caption, one run per reference (at most {a.get('n_references') or 'all'}), lowest CIDEr "
                f"per image kept, {a['norm']}, ε ∈ {{{eps}}}, {a['steps']} iterations, seed {a['seed']}, fixed subset "
                f"of n = {dataset.get('n_samples') or 'all'} images")

    def report_intro(self) -> str:
        return "CIDEr: corpus CIDEr-D ×100 of greedy captions; robust = per image the lowest CIDEr over the attack runs."

    def markdown(self, model: str, summary: dict, results: dict) -> list[str]:
        cap = summary.get("caption")
        if not cap:
            return []
        labels, cols, headers = eps_columns(list(cap.values()))
        header = ["captioning dataset", "n images", "clean"] + headers + [f"exp. rob. {a}" for a in labels]

        def f(v):
            return "–" if v is None else f"{v:.1f}"

        rows = [[d, str(r.get("n")), f(r["clean"])] + curve_cells(r, cols, labels, fmt=f) for d, r in cap.items()]
        return ["### Captioning CIDEr", "",
                "Corpus CIDEr-D ×100 (COCO caption toolkit: PTB tokenizer + pycocoevalcap's Cider) of greedy captions "
                "on the suite's fixed image subset; robust = per image the lowest CIDEr over the attack runs (one per "
                "reference caption) and over every smaller ε, scored against the IDF of the subset's references (the "
                "clean run's IDF), so the column is the corpus CIDEr of the selected captions.", "",
                md_table(header, rows), ""]

    def console(self, summary: dict) -> list[str]:
        lines = []
        for d, r in summary.get("caption", {}).items():
            parts = [f"clean {r['clean']:.1f}"]
            for a, scores in r["robust"].items():
                parts += [f"{a} {e:.4g}: {c:.1f}" for e, c in sorted(scores.items())]
            lines.append(f"  {d} (CIDEr): " + " | ".join(parts))
        return lines


register_eval_task(CaptionTask())

__all__ = ["CAPTION_SOURCES", "CaptionAttackSpec", "CaptionDataset", "CaptionSpec", "CaptionTask"]
