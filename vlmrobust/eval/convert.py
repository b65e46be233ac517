"""Convert a results file of format v1 (`vlmrobust.eval/v1`, written by `vlmrobust eval` before v2) to
`vlmrobust.results/v2`: the cells are unchanged (their fingerprints still match, so a run resumes from them); the
stored suite moves each dataset's analyses (`corruptions`, `margin`) under `analyses` and keeps only the fields of
its task. A recipe's own v1 file has no cells to convert: its suite cells are in `<output_dir>/eval/results.json`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..utils.io import atomic_write_json
from .results import FORMAT, RESULTS_NAME, V1_FORMAT, check_format
from .schema import DatasetSpec
from .tasks import EVAL_TASKS, analyses_of


def convert_v1(data: dict) -> dict:
    """A v1 suite results dict -> the same results as a v2 dict (summary dropped: the report recomputes it)."""
    if data.get("format") != V1_FORMAT:
        raise ValueError(f"not a {V1_FORMAT} results dict (format {data.get('format')!r}).")
    shared = set(DatasetSpec.__dataclass_fields__)
    datasets = []
    for d in data["suite"]["datasets"]:
        task = EVAL_TASKS.get(d.get("task") or next(n for n in EVAL_TASKS.names() if EVAL_TASKS.get(n).default))
        entry = {k: v for k, v in d.items() if k in shared | task.keys}
        entry["task"] = task.name
        entry["analyses"] = {a.name: d[a.name] for a in analyses_of(task.name) if d.get(a.name)}
        datasets.append(entry)
    out = {k: v for k, v in data.items() if k not in ("summary", "format")}
    return {"format": FORMAT, **out, "suite": {**data["suite"], "datasets": datasets}}


def convert_file(path: str | os.PathLike, output: str | os.PathLike | None = None) -> str:
    """Convert the v1 `results.json` at `path` (or in that folder); in place unless `output` is given (the old file is
    kept as `results.v1.json` next to it). Returns what was done, in one line."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") == FORMAT:
        return f"{path} is already {FORMAT}; nothing to do."
    if data.get("format") != V1_FORMAT:
        check_format(data, path)  # raises, naming what the file is
    new = convert_v1(data)
    target = Path(output) if output else path
    if target.is_dir() or target.suffix != ".json":
        target = target / RESULTS_NAME
    if target == path:
        os.replace(path, path.with_name("results.v1.json"))
    atomic_write_json(target, new)
    return f"Converted {path} ({V1_FORMAT}, {len(new['cells'])} cells) to {target} ({FORMAT})."


__all__ = ["convert_file", "convert_v1"]
