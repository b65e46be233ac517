"""Run an evaluation suite on one or several models, one resumable cell at a time.

A *cell* is the smallest unit of work whose result is stored: the clean pass of a (model, dataset), one attack at
one ε, one corruption at one severity, or the margin analysis. Every cell is written to `results.json` (atomically)
as soon as it finishes, with a fingerprint of everything it depends on; a rerun reuses every stored cell whose
fingerprint still matches and computes only the rest, so a killed run resumes where it stopped and a changed suite
recomputes only what changed. Attacks at a larger ε only attack the points that survived the next smaller one (a
point broken inside a small ball is broken inside a larger one), so the ε grid costs little more than its largest
budget.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..data.sources import (
    DatasetUnavailable,
    load_caption_dataset,
    load_suite_dataset,
    load_vqa_dataset,
    subset_indices,
)
from ..utils.io import atomic_write_json
from .suite import AttackSpec, CaptionAttackSpec, DatasetSpec, Suite, VQAAttackSpec, fingerprint, load_suite

logger = logging.getLogger(__name__)

RESULTS_NAME = "results.json"
FORMAT = "vlmrobust.eval/v1"

CellCallback = Callable[[str, dict], None]


# -- cell keys and masks ------------------------------------------------------------------------------------------


def eps_key(eps: float) -> str:
    return f"{eps:.6g}"


def clean_key(model: str, dataset: str) -> str:
    return f"{model}|{dataset}|clean"


def attack_key(model: str, dataset: str, attack: AttackSpec, eps: float) -> str:
    return f"{model}|{dataset}|{attack.label}|{attack.norm}|{eps_key(eps)}"


def corruption_key(model: str, dataset: str, corruption: str, severity: int) -> str:
    return f"{model}|{dataset}|corruption|{corruption}|{severity}"


def margin_key(model: str, dataset: str, label: str) -> str:
    return f"{model}|{dataset}|margin|{label}"


def pack_mask(mask: torch.Tensor) -> str:
    """Bool vector -> hex string (1 bit per sample)."""
    return np.packbits(mask.cpu().numpy().astype(np.uint8)).tobytes().hex()


def unpack_mask(hexstr: str, n: int) -> torch.Tensor:
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(hexstr), dtype=np.uint8))[:n]
    return torch.from_numpy(bits.astype(bool))


# -- results file ---------------------------------------------------------------------------------------------------


def load_results(path: str | os.PathLike) -> dict:
    """Read a `results.json` written by `run_suite` (raises a clear error on anything else)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a vlmrobust suite results file (format {data.get('format')!r}).")
    return data


def merge_results(results: Sequence[dict]) -> dict:
    """Merge results files of the same suite (e.g. one per model) into one; later files win on equal keys."""
    if not results:
        raise ValueError("merge_results needs at least one results dict.")
    names = {r["suite"]["name"] for r in results}
    if len(names) > 1:
        raise ValueError(f"Cannot merge results of different suites: {sorted(names)}.")
    out = {**results[0], "cells": {}, "models": []}
    for r in results:
        out["cells"].update(r["cells"])
        out["models"] += [m for m in r["models"] if m not in out["models"]]
        out["skipped"] = {**out.get("skipped", {}), **r.get("skipped", {})}
    return out


class _Store:
    """The results file: stored cells plus the bookkeeping to reuse them."""

    def __init__(self, output_dir: Path, suite: Suite, models: list[str], resume: bool, meta: dict):
        self.path = output_dir / RESULTS_NAME
        old: dict = {}
        if resume and self.path.is_file():
            try:
                old = load_results(self.path)
            except (ValueError, json.JSONDecodeError) as err:
                logger.warning("Ignoring unreadable %s (%s); starting afresh.", self.path, err)
        self.cells: dict[str, dict] = dict(old.get("cells", {}))
        prev_models = [m for m in old.get("models", []) if m not in models]
        self.data = {"format": FORMAT, "vlmrobust_version": __version__, "suite": suite.to_dict(),
                     "models": prev_models + list(models), "meta": meta, "skipped": {}, "cells": self.cells}
        self.reused = 0
        self.computed = 0

    def get(self, key: str, config: str) -> dict | None:
        cell = self.cells.get(key)
        if cell is not None and cell.get("config") == config:
            return cell
        return None

    def put(self, key: str, cell: dict) -> None:
        self.cells[key] = cell
        self.flush()

    def flush(self) -> None:
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        atomic_write_json(self.path, self.data)


# -- the runner ----------------------------------------------------------------------------------------------------


class _ModelSlot:
    """Loads a model (and its per-dataset data and classifiers) only when a cell needs it."""

    def __init__(self, ref: Any, device: str | torch.device | None):
        self.ref, self.device = ref, device
        self._model = None
        self._data: dict[str, Any] = {}
        self._clf: dict[str, Any] = {}
        self._cider: dict[str, Any] = {}

    @property
    def model(self):
        if self._model is None:
            if isinstance(self.ref, str):
                from ..models import create_model

                self._model = create_model(self.ref)
            else:
                self._model = self.ref
            if self.device is not None:
                self._model = self._model.to(self.device)
            self._model.eval()
        return self._model

    def dataset(self, spec: DatasetSpec):
        if spec.name not in self._data:
            load = {"vqa": load_vqa_dataset, "caption": load_caption_dataset}.get(spec.task, load_suite_dataset)
            self._data[spec.name] = load(spec, self.model)
        return self._data[spec.name]

    def classifier(self, spec: DatasetSpec):
        if spec.name not in self._clf:
            data = self.dataset(spec)
            self._clf[spec.name] = self.model.zero_shot_classifier(data.classnames, data.templates)
        return self._clf[spec.name]

    def cider(self, spec: DatasetSpec):
        """CIDEr scorer (IDF of the references of the whole evaluated image set) of a captioning dataset."""
        if spec.name not in self._cider:
            from ..metrics import CorpusCider

            data = self.dataset(spec)
            refs = {i: list(data[i]["answers"]) for i in range(len(data))}
            empty = [i for i, r in refs.items() if not r]
            if empty:
                raise DatasetUnavailable(f"dataset '{spec.name}': {len(empty)} image(s) have no reference captions "
                                         "(annotations missing?); CIDEr needs them.")
            self._cider[spec.name] = CorpusCider(refs)
        return self._cider[spec.name]

    def release(self) -> None:
        self._model, self._data, self._clf, self._cider = None, {}, {}, {}


def _model_name(ref: Any) -> str:
    if isinstance(ref, str):
        return ref
    return getattr(ref, "name_or_path", None) or type(ref).__name__


def _plan_size(suite: Suite, n_models: int) -> int:
    per_model = 0
    for d in suite.datasets:
        per_model += 1 + sum(len(a.eps) for a in d.attacks)
        if d.corruptions:
            per_model += len(d.corruptions.types) * len(d.corruptions.severities)
        if d.margin:
            per_model += 1
    return per_model * n_models


def run_suite(
    models: Sequence[str] | Mapping[str, Any],
    suite: str | os.PathLike | Suite,
    output_dir: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    bf16: bool = False,
    n_samples: int | None = None,
    batch_size: int | None = None,
    datasets: Sequence[str] | None = None,
    resume: bool = True,
    skip_missing: bool = False,
    num_workers: int = 0,
    progress: bool = True,
    report: bool = True,
    on_cell: CellCallback | None = None,
) -> dict:
    """Evaluate `models` on `suite`, writing `results.json` after every cell (and the report at the end).

    Args:
        models (`Sequence[str]` or `Mapping[str, VisionLanguageModel]`): `create_model` ids, or name -> model.
        suite (`str`, `os.PathLike` or `Suite`): a registered suite name, a YAML path or a loaded `Suite`.
        output_dir (`str` or `os.PathLike`): where `results.json`, `report.md` and the plots go.
        device (`str`, *optional*): e.g. "cuda"; defaults to CUDA when available, else CPU.
        bf16 (`bool`, *optional*, defaults to `False`): bf16 autocast for the models (perturbations stay fp32).
        n_samples (`int`, *optional*): cap every dataset's sample count (quick runs); part of the cell fingerprints.
        batch_size (`int`, *optional*): override the suite's batch sizes.
        datasets (`Sequence[str]`, *optional*): run only these datasets of the suite.
        resume (`bool`, *optional*, defaults to `True`): reuse finished cells of an existing `results.json`.
        skip_missing (`bool`, *optional*, defaults to `False`): skip datasets that cannot be loaded (they are listed
            in the report) instead of stopping.
        num_workers (`int`, *optional*, defaults to 0): DataLoader workers (decoding, corruptions).
        progress (`bool`, *optional*, defaults to `True`): progress bars with ETA.
        report (`bool`, *optional*, defaults to `True`): write `report.md` and the plots at the end.
        on_cell (`Callable[[str, dict], None]`, *optional*): called after each computed cell is stored.

    Returns:
        The results dict (as written to `results.json`), with a `summary` when `report` is set.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(suite, Suite):
        suite = load_suite(suite, n_samples=n_samples, batch_size=batch_size)
    elif n_samples is not None or batch_size is not None:
        raise ValueError("n_samples / batch_size overrides need a suite name or path, not a loaded Suite.")
    if datasets:
        unknown = [d for d in datasets if d not in {s.name for s in suite.datasets}]
        if unknown:
            raise KeyError(f"suite '{suite.name}' has no dataset(s) {unknown}; datasets: "
                           f"{[s.name for s in suite.datasets]}.")
        suite = dataclasses.replace(suite, datasets=tuple(d for d in suite.datasets if d.name in datasets),
                                    average_exclude=tuple(e for e in suite.average_exclude if e in datasets))
    refs = dict(models) if isinstance(models, Mapping) else {_model_name(m): m for m in models}
    if not refs:
        raise ValueError("run_suite needs at least one model.")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"device": str(device), "bf16": bool(bf16), "torch": torch.__version__}
    store = _Store(out, suite, list(refs), resume, meta)
    runner = _Runner(store, bool(bf16), device, num_workers, progress, on_cell)
    bar = tqdm(total=_plan_size(suite, len(refs)), desc=f"suite {suite.name}", unit="cell", disable=not progress,
               dynamic_ncols=True)
    runner.bar = bar
    try:
        for name, ref in refs.items():
            slot = _ModelSlot(ref, device)
            for spec in suite.datasets:
                try:
                    runner.run_dataset(name, slot, spec)
                except DatasetUnavailable as err:
                    if not skip_missing:
                        raise
                    logger.warning("%s", err)
                    store.data["skipped"][f"{name}|{spec.name}"] = str(err)
                    store.flush()
            slot.release()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    finally:
        bar.close()
    store.data["last_run"] = {"computed_cells": store.computed, "reused_cells": store.reused}
    store.flush()
    if report:
        from .report import write_suite_report

        store.data["summary"] = write_suite_report(store.data, out)
        store.flush()
    return store.data


def weights_signature(ref) -> str | None:
    """Identity of a local checkpoint's weight files (name, size, mtime), or None for ids not on disk."""
    import hashlib

    if not isinstance(ref, str) or ":" not in ref:
        return None
    folder = Path(ref.split(":", 1)[1])
    if not folder.is_dir():
        return None
    files = sorted(f for pat in ("*.safetensors", "*.bin", "*.pt", "*.pth") for f in folder.glob(pat))
    if not files:
        return None
    h = hashlib.sha1()
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


class _Runner:
    def __init__(self, store: _Store, bf16: bool, device, num_workers: int, progress: bool,
                 on_cell: CellCallback | None):
        self.store, self.bf16, self.device = store, bf16, device
        self.num_workers, self.progress, self.on_cell = num_workers, progress, on_cell
        self.bar: tqdm | None = None

    def _tick(self, desc: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(desc[-60:], refresh=False)
            self.bar.update(1)

    def _cell(self, key: str, config: dict, compute: Callable[[], dict]) -> dict:
        cfg = fingerprint(config)
        cell = self.store.get(key, cfg)
        if cell is None:
            t0 = time.perf_counter()
            cell = compute()
            cell.update(config=cfg, seconds=round(time.perf_counter() - t0, 3))
            self.store.put(key, cell)
            self.store.computed += 1
            if self.on_cell is not None:
                self.on_cell(key, cell)
        else:
            self.store.reused += 1
        self._tick(key)
        return cell

    def run_dataset(self, model: str, slot: _ModelSlot, spec: DatasetSpec) -> None:
        base = {"model": model, "data": spec.data_config(), "bf16": self.bf16}
        weights = weights_signature(slot.ref)
        if weights is not None:  # retrained into the same folder => different cells, not stale reuse
            base["weights"] = weights
        if spec.task == "vqa":
            self._run_vqa(model, slot, spec, base)
            return
        if spec.task == "caption":
            self._run_caption(model, slot, spec, base)
            return
        ck = clean_key(model, spec.name)
        clean_cfg = {**base, "kind": "clean"}

        def clean() -> dict:
            from .zero_shot import logit_scale_of, predict

            data = slot.dataset(spec)
            correct, margins = predict(slot.classifier(spec), data, batch_size=spec.batch_size, device=self.device,
                                       bf16=self.bf16, num_workers=self.num_workers, progress=self.progress,
                                       desc=f"{spec.name} clean")
            return {"kind": "clean", "model": model, "dataset": spec.name, "n": len(correct),
                    "n_classes": len(data.classnames), "logit_scale": logit_scale_of(slot.classifier(spec)),
                    "accuracy": correct.float().mean().item(),
                    "correct": pack_mask(correct), "margins": [round(float(m), 5) for m in margins]}

        clean_cell = self._cell(ck, clean_cfg, clean)
        n = clean_cell["n"]
        masks: dict[str, dict[float, torch.Tensor]] = {}
        for atk in spec.attacks:
            parent_cfg, parent_mask = fingerprint(clean_cfg), unpack_mask(clean_cell["correct"], n)
            masks[atk.label] = {}
            for eps in atk.eps:
                cfg = {**base, "kind": "attack", "components": atk.components, "norm": atk.norm, "eps": eps_key(eps),
                       "steps": atk.steps, "seed": atk.seed, "options": atk.options, "batch_size": spec.batch_size,
                       "parent": parent_cfg}
                cell = self._cell(attack_key(model, spec.name, atk, eps), cfg,
                                  lambda a=atk, e=eps, p=parent_mask: self._attack(model, slot, spec, a, e, p, n,
                                                                                   clean_cell["n_classes"]))
                parent_cfg, parent_mask = fingerprint(cfg), unpack_mask(cell["robust"], n)
                masks[atk.label][eps] = parent_mask
        if spec.corruptions:
            self._corruptions(model, slot, spec, base, clean_cell)
        if spec.margin:
            atk = next(a for a in spec.attacks if a.label == spec.margin.attack)
            cfg = {**base, "kind": "margin", "margin": vars(spec.margin), "attack_cells": [
                self.store.cells[attack_key(model, spec.name, atk, e)]["config"] for e in atk.eps]}
            self._cell(margin_key(model, spec.name, atk.label), cfg,
                       lambda: self._margin(model, slot, spec, atk, clean_cell, masks[atk.label]))

    def _attack(self, model: str, slot: _ModelSlot, spec: DatasetSpec, atk: AttackSpec, eps: float,
                alive: torch.Tensor, n: int, n_classes: int) -> dict:
        from .zero_shot import attack_survivors

        idx = alive.nonzero().flatten().tolist()
        robust = torch.zeros(n, dtype=torch.bool)
        t0 = time.perf_counter()
        broken_by = {c: 0 for c in atk.components}
        if idx:
            survived, broken_by = attack_survivors(
                slot.classifier(spec), slot.dataset(spec), idx, eps, attacks=atk.components, norm=atk.norm,
                steps=atk.steps, seed=atk.seed, batch_size=spec.batch_size, n_classes=n_classes,
                attack_kwargs=atk.options, device=self.device, bf16=self.bf16, num_workers=self.num_workers,
                progress=self.progress, desc=f"{spec.name} {atk.label} {atk.norm} ε={eps_key(eps)}")
            robust[torch.tensor(idx)] = survived
        dt = time.perf_counter() - t0
        skipped = [c for c, v in broken_by.items() if v < 0]
        if skipped:
            logger.warning("%s: %s skipped (needs more than %d classes).", spec.name, skipped, n_classes)
        from .zero_shot import logit_scale_of

        return {"kind": "attack", "model": model, "dataset": spec.name, "attack": atk.label,
                "components": list(atk.components), "skipped_components": skipped,
                "logit_scale": logit_scale_of(slot.classifier(spec)), "norm": atk.norm, "eps": eps,
                "steps": atk.steps, "seed": atk.seed, "n": n, "accuracy": robust.float().mean().item(),
                "robust": pack_mask(robust), "n_attacked": len(idx), "broken_by": broken_by,
                "attacked_images_per_s": round(len(idx) / dt, 3) if idx and dt > 0 else None}

    # -- VQA (LVLMs) --------------------------------------------------------------------------------------------------
    def _run_vqa(self, model: str, slot: _ModelSlot, spec: DatasetSpec, base: dict) -> None:
        """Clean VQA accuracy, then each attack's ε grid in ascending order. Scores are per-question soft VQA
        accuracies; each ε keeps the per-question minimum with the next smaller ε (its perturbations lie inside the
        larger ball too) and only re-attacks questions that still score above 0."""
        clean_cfg = {**base, "kind": "vqa_clean", "batch_size": spec.batch_size}
        clean_cell = self._cell(clean_key(model, spec.name), clean_cfg, lambda: self._vqa_clean(model, slot, spec))
        for atk in spec.attacks:
            parent_cfg, parent = fingerprint(clean_cfg), clean_cell["scores"]
            for eps in atk.eps:
                cfg = {**base, "kind": "vqa_attack", "norm": atk.norm, "eps": eps_key(eps), "steps": atk.steps,
                       "seed": atk.seed, "ensemble": atk.ensemble, "targets": list(atk.targets),
                       "max_references": atk.max_references, "batch_size": spec.batch_size, "parent": parent_cfg}
                cell = self._cell(attack_key(model, spec.name, atk, eps), cfg,
                                  lambda a=atk, e=eps, p=parent: self._vqa_attack(model, slot, spec, a, e, p,
                                                                                  clean_cell))
                parent_cfg, parent = fingerprint(cfg), cell["scores"]

    def _vqa_batches(self, slot: _ModelSlot, spec: DatasetSpec, indices: list[int]):
        data = slot.dataset(spec)
        model = slot.model
        for start in range(0, len(indices), spec.batch_size):
            idx = indices[start:start + spec.batch_size]
            items = [data[i] for i in idx]
            imgs = [it["pixel_values"] if "pixel_values" in it else model.preprocess(it["image"]) for it in items]
            pixels = torch.stack([torch.as_tensor(x) for x in imgs]).float().to(model.device)
            yield idx, pixels, [it["question"] for it in items], [list(it["answers"]) for it in items], items

    def _vqa_score_fn(self, slot: _ModelSlot, spec: DatasetSpec, questions: list[str], refs: list[list[str]]):
        from ..metrics import vqa_accuracy
        from .vqa import _answer

        vs = spec.vqa
        candidates = self._vqa_candidates(slot, spec)

        def score(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            pos = idx.tolist()
            with torch.no_grad():
                preds = _answer(slot.model, x, [questions[i] for i in pos], vs.answer_mode, candidates,
                                vs.max_new_tokens)
            return torch.tensor([vqa_accuracy(p, refs[i]) for p, i in zip(preds, pos)])

        return score

    def _vqa_candidates(self, slot: _ModelSlot, spec: DatasetSpec) -> list[str] | None:
        if spec.vqa.answer_mode != "rank":
            return None
        if spec.vqa.candidates:
            return list(spec.vqa.candidates)
        data = slot.dataset(spec)
        return data.answer_candidates()

    @staticmethod
    def _per_type(scores: list[float], types: list[str]) -> dict[str, float]:
        out = {}
        for t in dict.fromkeys(types):
            vals = [s for s, x in zip(scores, types) if x == t]
            out[t] = round(sum(vals) / len(vals), 4)
        return out

    def _vqa_clean(self, model: str, slot: _ModelSlot, spec: DatasetSpec) -> dict:
        data = slot.dataset(spec)
        lvlm = slot.model
        was_training = lvlm.training
        lvlm.eval()
        scores: list[float] = []
        types: list[str] = []
        try:
            for _, pixels, questions, refs, items in self._vqa_batches(slot, spec, list(range(len(data)))):
                if any(not r for r in refs):
                    raise DatasetUnavailable(f"dataset '{spec.name}': some questions have no reference answers "
                                             "(annotations missing?); VQA accuracy needs them.")
                score = self._vqa_score_fn(slot, spec, questions, refs)
                scores += [float(v) for v in score(pixels, torch.arange(len(questions)))]
                types += [str(it.get("question_type", "") or "all") for it in items]
        finally:
            lvlm.train(was_training)
        scores = [round(v, 4) for v in scores]  # stored rounded; the attack cells start from these
        cell = {"kind": "vqa_clean", "task": "vqa", "metric": "vqa_accuracy", "model": model, "dataset": spec.name,
                "n": len(scores), "accuracy": sum(scores) / max(len(scores), 1), "answer_mode": spec.vqa.answer_mode,
                "scores": scores, "question_types": types,
                "per_type": self._per_type(scores, types)}
        if hasattr(data, "chance_accuracy"):
            cell["chance_accuracy"] = round(data.chance_accuracy()["overall"], 4)
        return cell

    def _vqa_attack(self, model: str, slot: _ModelSlot, spec: DatasetSpec, atk: VQAAttackSpec, eps: float,
                    parent: list[float], clean_cell: dict) -> dict:
        from ..attacks.vlm import ensemble_attack
        from ..metrics import majority_answer

        scores = [float(v) for v in parent]
        alive = [i for i, v in enumerate(scores) if v > 0]
        lvlm = slot.model
        was_training = lvlm.training
        lvlm.eval()
        t0 = time.perf_counter()
        try:
            for idx, pixels, questions, refs, _ in self._vqa_batches(slot, spec, alive):
                score = self._vqa_score_fn(slot, spec, questions, refs)
                if atk.ensemble:
                    _, worst = ensemble_attack(lvlm, pixels, questions, refs, eps=eps, score_fn=score,
                                               steps=atk.steps, norm=atk.norm, targets=atk.targets,
                                               max_references=atk.max_references, seed=atk.seed)
                else:
                    _, worst = ensemble_attack(lvlm, pixels, questions, [[majority_answer(r)] for r in refs],
                                               eps=eps, score_fn=score, steps=atk.steps, norm=atk.norm,
                                               seed=atk.seed)
                for i, w in zip(idx, worst.tolist()):
                    scores[i] = min(scores[i], round(float(w), 4))
        finally:
            lvlm.train(was_training)
        dt = time.perf_counter() - t0
        n = len(scores)
        return {"kind": "vqa_attack", "task": "vqa", "metric": "vqa_accuracy", "model": model, "dataset": spec.name,
                "attack": atk.label, "components": list(atk.components), "norm": atk.norm, "eps": eps,
                "steps": atk.steps, "seed": atk.seed, "ensemble": atk.ensemble, "targets": list(atk.targets),
                "max_references": atk.max_references, "n": n, "accuracy": sum(scores) / max(n, 1),
                "scores": scores, "n_attacked": len(alive),
                "per_type": self._per_type(scores, clean_cell["question_types"]),
                "attacked_questions_per_s": round(len(alive) / dt, 3) if alive and dt > 0 else None}

    # -- captioning (LVLMs, CIDEr) ------------------------------------------------------------------------------------
    def _run_caption(self, model: str, slot: _ModelSlot, spec: DatasetSpec, base: dict) -> None:
        """Clean CIDEr, then each attack's ε grid in ascending order. Scores are per-image CIDEr-D ×100 against the
        IDF of the whole evaluated set's references (fixed, so their mean is the corpus CIDEr); each ε starts from
        the next smaller ε's worst case and re-attacks only images that still score above 0."""
        from ..metrics import cider_status

        ok, message = cider_status()
        if not ok:  # said plainly; with --skip-missing it is listed under "Skipped datasets" in the report
            raise DatasetUnavailable(f"dataset '{spec.name}' (captioning) needs CIDEr: {message}")
        cs = spec.caption
        clean_cfg = {**base, "kind": "caption_clean", "batch_size": spec.batch_size}
        clean_cell = self._cell(clean_key(model, spec.name), clean_cfg,
                                lambda: self._caption_clean(model, slot, spec))
        for atk in spec.attacks:
            parent_cfg, parent = fingerprint(clean_cfg), clean_cell
            for eps in atk.eps:
                cfg = {**base, "kind": "caption_attack", "norm": atk.norm, "eps": eps_key(eps), "steps": atk.steps,
                       "seed": atk.seed, "n_references": atk.n_references, "max_new_tokens": cs.max_new_tokens,
                       "batch_size": spec.batch_size, "parent": parent_cfg}
                cell = self._cell(attack_key(model, spec.name, atk, eps), cfg,
                                  lambda a=atk, e=eps, p=parent: self._caption_attack(model, slot, spec, a, e, p))
                parent_cfg, parent = fingerprint(cfg), cell

    def _caption_clean(self, model: str, slot: _ModelSlot, spec: DatasetSpec) -> dict:
        from .caption import caption_scores

        data = slot.dataset(spec)
        scorer = slot.cider(spec)
        lvlm = slot.model
        was_training = lvlm.training
        lvlm.eval()
        scores: list[float] = []
        captions: list[str] = []
        try:
            for idx, pixels, prompts, _, _ in self._vqa_batches(slot, spec, list(range(len(data)))):
                sc, caps = caption_scores(lvlm, scorer, pixels, prompts, idx, spec.caption.max_new_tokens)
                scores += sc
                captions += caps
        finally:
            lvlm.train(was_training)
        scores = [round(v, 4) for v in scores]
        return {"kind": "caption_clean", "task": "caption", "metric": "cider", "model": model, "dataset": spec.name,
                "n": len(scores), "cider": sum(scores) / max(len(scores), 1), "scores": scores, "captions": captions,
                "max_new_tokens": spec.caption.max_new_tokens}

    def _caption_attack(self, model: str, slot: _ModelSlot, spec: DatasetSpec, atk: CaptionAttackSpec, eps: float,
                        parent: dict) -> dict:
        from .caption import attack_captions

        scorer = slot.cider(spec)
        scores = [float(v) for v in parent["scores"]]
        captions = list(parent["captions"])
        alive = [i for i, v in enumerate(scores) if v > 0]
        lvlm = slot.model
        was_training = lvlm.training
        lvlm.eval()
        t0 = time.perf_counter()
        try:
            for idx, pixels, prompts, refs, _ in self._vqa_batches(slot, spec, alive):
                sc, caps = attack_captions(lvlm, scorer, pixels, prompts, refs, idx, eps=eps, steps=atk.steps,
                                           norm=atk.norm, n_references=atk.n_references, seed=atk.seed,
                                           max_new_tokens=spec.caption.max_new_tokens,
                                           start=([scores[i] for i in idx], [captions[i] for i in idx]))
                for i, v, c in zip(idx, sc, caps):
                    if round(v, 4) < scores[i]:
                        scores[i], captions[i] = round(v, 4), c
        finally:
            lvlm.train(was_training)
        dt = time.perf_counter() - t0
        n = len(scores)
        return {"kind": "caption_attack", "task": "caption", "metric": "cider", "model": model, "dataset": spec.name,
                "attack": atk.label, "components": list(atk.components), "norm": atk.norm, "eps": eps,
                "steps": atk.steps, "seed": atk.seed, "n_references": atk.n_references, "n": n,
                "cider": sum(scores) / max(n, 1), "scores": scores, "captions": captions, "n_attacked": len(alive),
                "attacked_images_per_s": round(len(alive) / dt, 3) if alive and dt > 0 else None}

    def _corruptions(self, model: str, slot: _ModelSlot, spec: DatasetSpec, base: dict, clean_cell: dict) -> None:
        from .corruptions import CorruptedDataset
        from .zero_shot import predict

        cs = spec.corruptions
        n = clean_cell["n"]
        sub = subset_indices(n, cs.n_samples, cs.seed)
        clean_sub = unpack_mask(clean_cell["correct"], n)[torch.tensor(sub)].float().mean().item()
        for corruption in cs.types:
            for sev in cs.severities:
                cfg = {**base, "kind": "corruption", "corruption": corruption, "severity": sev,
                       "n_samples": cs.n_samples, "seed": cs.seed, "min_size": cs.min_size}

                def compute(c=corruption, s=sev) -> dict:
                    data = CorruptedDataset(slot.dataset(spec), c, s, seed=cs.seed, indices=sub, min_size=cs.min_size)
                    correct, _ = predict(slot.classifier(spec), data, batch_size=cs.batch_size or spec.batch_size,
                                         device=self.device, bf16=self.bf16, num_workers=self.num_workers,
                                         progress=self.progress, desc=f"{spec.name} {c} s{s}")
                    return {"kind": "corruption", "model": model, "dataset": spec.name, "corruption": c,
                            "severity": s, "n": len(correct), "accuracy": correct.float().mean().item(),
                            "clean_accuracy_subset": clean_sub}

                self._cell(corruption_key(model, spec.name, corruption, sev), cfg, compute)

    def _margin(self, model: str, slot: _ModelSlot, spec: DatasetSpec, atk: AttackSpec, clean_cell: dict,
                masks: dict[float, torch.Tensor]) -> dict:
        from .margin import estimate_robust_accuracy, input_margins, kendall_tau

        ms = spec.margin
        n = clean_cell["n"]
        correct = unpack_mask(clean_cell["correct"], n)
        margins = torch.tensor(clean_cell["margins"], dtype=torch.float32)
        sub = torch.tensor(subset_indices(n, ms.subset, ms.seed))
        data = slot.dataset(spec)
        items = [data[int(i)] for i in sub]
        x = torch.stack([torch.as_tensor(it["pixel_values"]) for it in items]).to(self.device)
        y = torch.tensor([int(it["labels"]) for it in items], device=self.device)
        max_norm = ms.max_norm or 4 * max(atk.eps)
        im = input_margins(slot.classifier(spec), x, y, norm=atk.norm, steps=ms.steps,
                           n_target_classes=ms.n_target_classes, max_norm=max_norm, seed=ms.seed,
                           batch_size=spec.batch_size)
        corr_sub = correct[sub]
        tau, p = kendall_tau(margins[sub][corr_sub], im[corr_sub])
        estimates = {}
        for eps, mask in masks.items():
            est = estimate_robust_accuracy(margins, correct, sub, mask[sub])
            measured = mask.float().mean().item()
            estimates[eps_key(eps)] = {"estimate": est.estimate, "measured": measured,
                                       "abs_error": abs(est.estimate - measured), "threshold": est.threshold,
                                       "subset_robust_accuracy": est.subset_robust_accuracy}
        return {"kind": "margin", "model": model, "dataset": spec.name, "attack": atk.label, "norm": atk.norm,
                "subset_size": len(sub), "n_correct_subset": int(corr_sub.sum()), "n": n, "kendall_tau": tau,
                "p_value": p, "input_margin_method": f"FAB-T ({ms.n_target_classes} targets, {ms.steps} it.)",
                "max_norm": max_norm, "input_margins": [round(float(v), 6) for v in im],
                "estimates": estimates}


__all__ = ["DatasetUnavailable", "RESULTS_NAME", "load_caption_dataset", "load_results", "load_suite_dataset",
           "load_vqa_dataset", "merge_results", "run_suite"]
