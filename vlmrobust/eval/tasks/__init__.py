"""Eval tasks, registered by name: zero-shot `classification` (the default) with its `corruptions` and `margin`
analyses, `vqa` and `caption`. See `base` for the interface and how to add a task."""

from .base import (
    EVAL_TASKS,
    DatasetRun,
    EvalTask,
    SuiteRun,
    all_tasks,
    analyses_of,
    current_cells,
    dataset_entry,
    register_eval_task,
    task_of_cell,
)

# the built-in tasks register themselves on import (report order: vqa, caption, classification, its analyses)
from . import caption, classification, corruptions, margin, vqa  # noqa: E402, F401  isort: skip

__all__ = ["EVAL_TASKS", "DatasetRun", "EvalTask", "SuiteRun", "all_tasks", "analyses_of", "current_cells",
           "dataset_entry", "register_eval_task", "task_of_cell"]
