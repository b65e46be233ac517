"""The one results format, `vlmrobust.results/v2`, written by `vlmrobust eval` and by every recipe.

A `results.json` is a mapping::

    format: vlmrobust.results/v2
    vlmrobust_version: 0.1.0
    suite: {...}          # the validated suite (`Suite.to_dict()`): datasets with their task, attacks, analyses
    models: [...]         # names of the evaluated models (first part of every cell key)
    meta: {device, bf16, torch}
    cells: {key: cell}    # key = model | dataset | ... ; a cell has `kind` (the task that wrote it), `model`,
                          # `dataset`, its numbers, `config` (fingerprint of what it depends on) and `seconds`
    skipped: {model|dataset: reason}
    last_run: {computed_cells, reused_cells}
    updated: <time>
    summary: {...}        # derived (`vlmrobust.eval.report.summarize_suite`), rewritten by every report
    run: {...}            # only from a recipe: `title`, `intro`, `rows` (row labels such as before / after, each a
                          # model name of the cells), `method`, `model`, `dataset`, `config` (the method's
                          # arguments), `train_metrics`, `timings`

`vlmrobust report <file or folder>` renders any of them. Older files (`vlmrobust.eval/v1` from `vlmrobust eval`, and
the recipes' own format before v2) are refused with a one-line message; `vlmrobust convert` turns a v1 suite file
into v2 (its cells keep their fingerprints, so a run resumes from them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..utils.io import atomic_write_json

logger = logging.getLogger(__name__)

RESULTS_NAME = "results.json"
FORMAT = "vlmrobust.results/v2"
V1_FORMAT = "vlmrobust.eval/v1"


class ResultsFormatError(ValueError):
    """A file is not a `vlmrobust.results/v2` results file; the message says what it is and what to do."""


def fingerprint(obj) -> str:
    """Short stable hash of a JSON-able object (decides whether a stored cell is still valid)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


def eps_key(eps: float) -> str:
    return f"{eps:.6g}"


def clean_key(model: str, dataset: str) -> str:
    return f"{model}|{dataset}|clean"


def attack_key(model: str, dataset: str, attack, eps: float) -> str:
    """Key of one attack's cell at one ε (`attack`: a spec with `label` and `norm`)."""
    return f"{model}|{dataset}|{attack.label}|{attack.norm}|{eps_key(eps)}"


def pack_mask(mask: torch.Tensor) -> str:
    """Bool vector -> hex string (1 bit per sample)."""
    return np.packbits(mask.cpu().numpy().astype(np.uint8)).tobytes().hex()


def unpack_mask(hexstr: str, n: int) -> torch.Tensor:
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(hexstr), dtype=np.uint8))[:n]
    return torch.from_numpy(bits.astype(bool))


def check_format(data: dict, path: str | os.PathLike) -> dict:
    """Return `data` if it is a v2 results dict, else raise `ResultsFormatError` naming what it is."""
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt == FORMAT:
        return data
    if fmt == V1_FORMAT:
        raise ResultsFormatError(
            f"{path} is results format v1 ({V1_FORMAT}, vlmrobust {data.get('vlmrobust_version', '< 0.2')}, before "
            f"{FORMAT}); re-run, or convert it with `vlmrobust convert {path}`.")
    if isinstance(data, dict) and "results" in data and ("method" in data or "title" in data):
        raise ResultsFormatError(
            f"{path} is a recipe results file of format v1 (before {FORMAT}); re-run the recipe, or convert its "
            f"suite cells with `vlmrobust convert {Path(path).parent / 'eval' / RESULTS_NAME}`.")
    raise ResultsFormatError(f"{path} is not a vlmrobust results file (format {fmt!r}; expected {FORMAT}).")


def load_results(path: str | os.PathLike) -> dict:
    """Read a `results.json` (or the one in a folder) of format v2; older formats raise `ResultsFormatError`."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_NAME
    return check_format(json.loads(path.read_text(encoding="utf-8")), path)


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


class Store:
    """The results file of a run: stored cells plus the bookkeeping to reuse them.

    Args:
        output_dir (`Path`): folder of `results.json`.
        suite (`dict`): the suite (`Suite.to_dict()`).
        models (`list[str]`): the models of this run (earlier models of the file are kept after them).
        resume (`bool`): start from the file's cells (a v1 file raises `ResultsFormatError`: convert or
            `--no-resume`); otherwise start afresh.
        meta (`dict`): device, precision, versions.
    """

    def __init__(self, output_dir: Path, suite: dict, models: list[str], resume: bool, meta: dict):
        self.path = output_dir / RESULTS_NAME
        old: dict = {}
        if resume and self.path.is_file():
            try:
                old = load_results(self.path)
            except ResultsFormatError as err:
                raise ResultsFormatError(f"{err} (or run without resuming: --no-resume / resume=False)") from None
            except json.JSONDecodeError as err:
                logger.warning("Ignoring unreadable %s (%s); starting afresh.", self.path, err)
        self.cells: dict[str, dict] = dict(old.get("cells", {}))
        prev_models = [m for m in old.get("models", []) if m not in models]
        self.data = {"format": FORMAT, "vlmrobust_version": __version__, "suite": suite,
                     "models": prev_models + list(models), "meta": meta, "skipped": {}, "cells": self.cells}
        if "run" in old:
            self.data["run"] = old["run"]
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


__all__ = ["FORMAT", "RESULTS_NAME", "ResultsFormatError", "Store", "attack_key", "check_format", "clean_key",
           "eps_key", "fingerprint", "load_results", "merge_results", "pack_mask", "unpack_mask"]
