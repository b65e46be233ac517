"""Run an evaluation suite on one or several models, one resumable cell at a time.

A *cell* is the smallest unit of work whose result is stored (e.g. the clean pass of a (model, dataset), one attack at
one ε, one corruption at one severity). Every cell is written to `results.json` (atomically) as soon as it finishes,
with a fingerprint of everything it depends on; a rerun reuses every stored cell whose fingerprint still matches and
computes only the rest, so a killed run resumes where it stopped and a changed suite recomputes only what changed.

What the cells of a dataset are is up to its task (`vlmrobust.eval.tasks`): the runner loads models lazily, hands
each dataset to its task and then to the analyses switched on for it, and after a model's datasets gives every task
its suite-level pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data.sources import DatasetUnavailable
from .results import RESULTS_NAME, Store, fingerprint, load_results, merge_results
from .suite import DatasetSpec, Suite, load_suite
from .tasks import EVAL_TASKS, DatasetRun, SuiteRun, all_tasks, analyses_of

logger = logging.getLogger(__name__)

CellCallback = Callable[[str, dict], None]


class _ModelSlot:
    """Loads a model only when a cell needs it, and keeps what tasks build per dataset (data, heads) until release."""

    def __init__(self, ref: Any, device: str | torch.device | None):
        self.ref, self.device = ref, device
        self._model = None
        self._cache: dict[tuple[str, str], Any] = {}

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

    def cached(self, dataset: str, name: str, build: Callable[[], Any]) -> Any:
        if (dataset, name) not in self._cache:
            self._cache[(dataset, name)] = build()
        return self._cache[(dataset, name)]

    def release(self) -> None:
        self._model, self._cache = None, {}


def _model_name(ref: Any) -> str:
    if isinstance(ref, str):
        return ref
    return getattr(ref, "name_or_path", None) or type(ref).__name__


def _analyses(spec: DatasetSpec) -> list:
    return [a for a in analyses_of(spec.task) if a.name in spec.analyses]


def _plan_size(suite: Suite, n_models: int) -> int:
    per_model = sum(EVAL_TASKS.get(d.task).plan_size(d) + sum(a.plan_size(d) for a in _analyses(d))
                    for d in suite.datasets)
    return per_model * n_models


def weights_signature(ref) -> str | None:
    """Identity of a local checkpoint's weight files (name, size, mtime), or None for ids not on disk."""
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
    """The cell store and the settings every task sees through its `DatasetRun`."""

    def __init__(self, store: Store, bf16: bool, device, num_workers: int, progress: bool,
                 on_cell: CellCallback | None, bar: tqdm):
        self.store, self.bf16, self.device = store, bf16, device
        self.num_workers, self.progress, self.on_cell, self.bar = num_workers, progress, on_cell, bar

    def cell(self, key: str, config: dict, compute: Callable[[], dict]) -> dict:
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
        self.bar.set_postfix_str(key[-60:], refresh=False)
        self.bar.update(1)
        return cell

    def run_dataset(self, model: str, slot: _ModelSlot, spec: DatasetSpec) -> DatasetRun:
        task = EVAL_TASKS.get(spec.task)
        base = {"model": model, "data": task.data_config(spec), "bf16": self.bf16}
        weights = weights_signature(slot.ref)
        if weights is not None:  # retrained into the same folder => different cells, not stale reuse
            base["weights"] = weights
        run = DatasetRun(self, slot, model, spec, base)
        task.run(run)
        for analysis in _analyses(spec):
            analysis.run(run)
        return run

    def run_model(self, name: str, slot: _ModelSlot, suite: Suite, skip_missing: bool) -> None:
        runs: dict[str, DatasetRun] = {}
        for spec in suite.datasets:
            try:
                runs[spec.name] = self.run_dataset(name, slot, spec)
            except DatasetUnavailable as err:
                if not skip_missing:
                    raise
                logger.warning("%s", err)
                self.store.data["skipped"][f"{name}|{spec.name}"] = str(err)
                self.store.flush()
        for task in all_tasks():  # suite-level passes, over the datasets each task (or analysis) ran on
            mine = {d: r for d, r in runs.items() if task.name in (r.spec.task, *r.spec.analyses)}
            if mine:
                task.run_suite(SuiteRun(self, name, mine))


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
    dataset_overrides: Mapping[str, Any] | None = None,
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
        resume (`bool`, *optional*, defaults to `True`): reuse finished cells of an existing `results.json` (one of
            an older format raises `ResultsFormatError`: convert it, or pass `resume=False` to start afresh).
        skip_missing (`bool`, *optional*, defaults to `False`): skip datasets that cannot be loaded (they are listed
            in the report) instead of stopping.
        num_workers (`int`, *optional*, defaults to 0): DataLoader workers (decoding, corruptions).
        progress (`bool`, *optional*, defaults to `True`): progress bars with ETA.
        report (`bool`, *optional*, defaults to `True`): write `report.md` and the plots at the end.
        on_cell (`Callable[[str, dict], None]`, *optional*): called after each computed cell is stored.
        dataset_overrides (`Mapping[str, Any]`, *optional*): dataset fields set on every dataset of the suite that
            has them (e.g. `{"bad_images": "skip"}` for the classification datasets: `vlmrobust eval --bad-images`),
            validated by the dataset's task; part of the cell fingerprints. A field no dataset has is an error.

    Returns:
        The results dict (as written to `results.json`, format `vlmrobust.results/v2`), with a `summary` when
        `report` is set.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(suite, Suite):
        for flag, v in (("n_samples", n_samples), ("batch_size", batch_size)):
            if v is not None and (not isinstance(v, int) or v < 1):  # 0 would be silently ignored or empty
                raise ValueError(f"{flag} must be a positive integer, got {v!r}.")
        suite = load_suite(suite, n_samples=n_samples, batch_size=batch_size)
    elif n_samples is not None or batch_size is not None:
        raise ValueError("n_samples / batch_size overrides need a suite name or path, not a loaded Suite.")
    if dataset_overrides:
        suite = _override_datasets(suite, dataset_overrides)
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
    store = Store(out, suite.to_dict(), list(refs), resume, meta)
    bar = tqdm(total=_plan_size(suite, len(refs)), desc=f"suite {suite.name}", unit="cell", disable=not progress,
               dynamic_ncols=True)
    runner = _Runner(store, bool(bf16), device, num_workers, progress, on_cell, bar)
    try:
        for name, ref in refs.items():
            slot = _ModelSlot(ref, device)
            runner.run_model(name, slot, suite, skip_missing)
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


__all__ = ["DatasetUnavailable", "RESULTS_NAME", "load_results", "merge_results", "run_suite", "weights_signature"]


def _override_datasets(suite: Suite, overrides: Mapping[str, Any]) -> Suite:
    """`suite` with `overrides` set on every dataset that has those fields (its task's `__post_init__` validates)."""
    fields = {f.name for d in suite.datasets for f in dataclasses.fields(d)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"No dataset of suite {suite.name!r} has the field(s) {unknown} to override.")
    return dataclasses.replace(suite, datasets=tuple(
        dataclasses.replace(d, **{k: v for k, v in overrides.items() if k in {f.name for f in dataclasses.fields(d)}})
        for d in suite.datasets))
