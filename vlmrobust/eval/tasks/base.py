"""The eval-task interface: one object per task owns its YAML keys, data loading, cells, summary, report and plots.

The suite schema (`vlmrobust.eval.suite`), the runner (`vlmrobust.eval.runner`) and the report
(`vlmrobust.eval.report`) know no task by name: they parse the fields every dataset shares (`name`, `source`,
`split`, `n_samples`, `seed`, `batch_size`, `data_dir`, `download`, `attacks` with their labels and ε grids) and hand
everything else to the task named by the entry's `task:` (the `default` task when absent), looked up in
`EVAL_TASKS`.

Two kinds of task:

* a **task** evaluates a dataset (`task: vqa`): it parses its own keys into a `DatasetSpec` subclass, loads the data,
  computes its cells and renders its rows;
* an **analysis** (`parent` set) hangs off the datasets of its parent task and is switched on by a key of the same
  name in the dataset entry (`corruptions: {...}`, `margin: {...}` on a classification dataset). It runs after the
  parent's cells, reads what the parent left in `DatasetRun.outputs` (e.g. the clean cell), and adds its entry to the
  parent's summary rows (`row[analysis.name]`).

Either kind may also need a pass over several datasets after the per-dataset cells (e.g. a Mahalanobis shift score of
every dataset against an in-distribution reference set): `run_suite(SuiteRun)` gets the `DatasetRun` of each dataset
of that task, whose loaded data and `outputs` are still there.

Adding a task is one module and one line::

    from vlmrobust.eval.tasks import EvalTask, register_eval_task

    class EmbeddingNorm(EvalTask):
        name, keys, cell_kinds = "embedding-norm", frozenset(), ("embedding_norm",)

        def load(self, spec, model): ...                  # via vlmrobust.data.sources
        def run(self, run):                               # one cell per (model, dataset), resumable
            run.cell(run.key("norm"), {**run.base, "kind": "embedding_norm"}, lambda: {...})
        def summarize(self, model, cells, suite): ...     # -> {"embedding-norm": {dataset: row}}
        def markdown(self, model, summary, results): ...  # -> lines of its report section

    register_eval_task(EmbeddingNorm())

`tests/test_eval_tasks.py` defines such a task (38 lines with its loader, summary, section and a suite-level pass),
runs it through `run_suite` and renders it with the report, with no change to the schema, runner or report.

Cells are dicts stored in `results.json` under a key (`run.key(...)`: model | dataset | ...), with a `kind` naming
the task that owns them (`cell_kinds`), `model`, `dataset` and the task's numbers; `run.cell(key, config, compute)`
reuses a stored cell whose fingerprint of `config` matches and computes (and stores, atomically) the rest.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ...registry import Registry
from ..schema import Ctx, DatasetSpec


class EvalTask:
    """Base of every eval task and analysis; the class attributes declare what the suite schema gives it.

    Attributes:
        name (`str`): registry name; the `task:` value of its dataset entries (an analysis: its dataset-entry key).
        parent (`str`, *optional*): for an analysis, the task whose datasets it analyses.
        default (`bool`): the task of entries without `task:` (exactly one registered task has it).
        keys (`frozenset[str]`): dataset-entry keys the task owns, besides the shared ones (`schema.SHARED_KEYS`).
        default_keys (`frozenset[str]`): of those and the shared `attacks`, the ones the suite's `defaults:` fill in.
        suite_keys (`frozenset[str]`): top-level suite keys the task reads (e.g. named template sets).
        cell_kinds (`tuple[str, ...]`): the `kind` of every cell it writes (unique across tasks).
        summary_key (`str`, *optional*): where its rows go in `summary["models"][model]` (defaults to `name`).
        order (`int`): position of its report section and plots among the tasks of a suite (lower first).
        default_batch_size (`int`): batch size when neither the entry nor the defaults give one.
        plot_ylabel (`str`, *optional*): set for tasks whose rows are robustness curves (`clean`, `robust`): the
            report then draws a per-dataset metric-vs-ε plot with this y label.
    """

    name: str = ""
    parent: str | None = None
    default: bool = False
    keys: frozenset[str] = frozenset()
    default_keys: frozenset[str] = frozenset()
    suite_keys: frozenset[str] = frozenset()
    cell_kinds: tuple[str, ...] = ()
    summary_key: str | None = None
    order: int = 100
    default_batch_size: int = 128
    plot_ylabel: str | None = None

    @property
    def rows_key(self) -> str:
        return self.summary_key or self.name

    # -- schema -------------------------------------------------------------------------------------------------------
    def parse_attack(self, ctx: Ctx, raw: Any, where: str) -> Any:
        """One entry of the dataset's `attacks:` list -> an attack spec with `label`, `norm`, `eps`, `steps`, `seed`."""
        raise ctx.fail(where, f"datasets of task {self.name} take no attacks.")

    def parse(self, ctx: Ctx, entry: dict, common: dict, where: str) -> DatasetSpec:
        """The dataset spec from the merged entry; `common` holds the shared fields, already validated."""
        return DatasetSpec(**common)

    def parse_analysis(self, ctx: Ctx, raw: Any, where: str, dataset: DatasetSpec) -> Any:
        """An analysis's block of a dataset entry -> its spec (None or false: switched off)."""
        raise NotImplementedError

    def data_config(self, spec: DatasetSpec) -> dict:
        """What decides which samples are evaluated (part of every cell's fingerprint)."""
        return {"task": spec.task, "source": spec.source, "split": spec.split, "n_samples": spec.n_samples,
                "seed": spec.seed, "data_dir": spec.data_dir}

    # -- cells --------------------------------------------------------------------------------------------------------
    def load(self, spec: DatasetSpec, model) -> Any:
        """The evaluated samples of `spec` for `model` (raise `DatasetUnavailable` naming the fix)."""
        raise NotImplementedError

    def plan_size(self, spec: DatasetSpec) -> int:
        """Cells per model on this dataset (for the progress bar)."""
        return 1 + sum(len(a.eps) for a in spec.attacks)

    def run(self, run: DatasetRun) -> None:
        """Compute (or reuse) this task's cells of one (model, dataset)."""
        raise NotImplementedError

    def run_suite(self, run: SuiteRun) -> None:
        """After every dataset of a model: cells that need several datasets at once (none by default)."""

    # -- results ------------------------------------------------------------------------------------------------------
    def in_grid(self, cell: dict, dataset: dict) -> bool:
        """Whether a stored cell belongs to the current suite's grid (`dataset`: its entry in the stored suite)."""
        return True

    def summarize(self, model: str, cells: list[dict], suite: dict) -> dict:
        """This model's rows from its current cells (of this task and its analyses): `{rows_key: {dataset: row}}`
        plus any extra per-model entries (e.g. an average)."""
        return {}

    def summarize_row(self, row: dict, cells: list[dict], dataset: dict, suite: dict) -> Any:
        """An analysis's entry in its parent's row of one dataset (its cells of that dataset)."""
        return None

    def columns(self, row: dict) -> dict[str, float]:
        """Numbers of a row to rank models by (Borda) and to average over datasets; higher is better."""
        return {}

    def average(self, rows: list[dict]) -> dict:
        """An analysis's entries in its parent's average row over `rows` (e.g. the mean mCE)."""
        return {}

    def describe_attack(self, dataset: dict, attack: dict) -> str:
        """One line of the report's threat-model list."""
        return f"- `{dataset['name']}`: {attack['label']}, {attack['norm']}, ε ∈ {attack['eps']}"

    def report_intro(self) -> str:
        """Sentences of the report's opening paragraph explaining this task's numbers."""
        return ""

    def markdown(self, model: str, summary: dict, results: dict) -> list[str]:
        """Lines of this task's section for one model (`summary`: `summary["models"][model]`)."""
        return []

    def plots(self, summary: dict, results: dict, out: str | os.PathLike) -> dict[str, str]:
        """Write this task's suite-level plots into `out`; return `{caption: file name}`."""
        return {}

    def console(self, summary: dict) -> list[str]:
        """Lines printed by `vlmrobust eval` for one model."""
        return []

    def run_markdown(self, rows: dict[str, str], dataset: dict, results: dict, summary: dict) -> list[str]:
        """A recipe's compact table of its run rows (`{row label: model name}`, e.g. before / after) on one dataset
        (`summary`: the whole results summary)."""
        return []


class DatasetRun:
    """What the runner hands a task for one (model, dataset): the model, data, shared fingerprint and cell store.

    Attributes:
        model_name (`str`): the model's name in the results (first part of every cell key).
        spec (`DatasetSpec`): the dataset.
        base (`dict`): what every cell's fingerprint starts from (model, data config, bf16, weight files).
        device, bf16, num_workers, progress: the runner's settings.
        outputs (`dict`): what the task leaves for its analyses and its suite pass (e.g. the clean cell).
    """

    def __init__(self, runner, slot, model_name: str, spec: DatasetSpec, base: dict):
        self._runner, self._slot = runner, slot
        self.model_name, self.spec, self.base = model_name, spec, base
        self.device, self.bf16 = runner.device, runner.bf16
        self.num_workers, self.progress = runner.num_workers, runner.progress
        self.outputs: dict[str, Any] = {}

    @property
    def model(self):
        """The model (loaded on first use)."""
        return self._slot.model

    @property
    def data(self) -> Any:
        """The dataset's samples, loaded once per model by the task's `load`."""
        return self.cached("data", lambda: EVAL_TASKS.get(self.spec.task).load(self.spec, self.model))

    def cached(self, name: str, build: Callable[[], Any]) -> Any:
        """An object built once per (model, dataset), e.g. a zero-shot head, shared with the analyses."""
        return self._slot.cached(self.spec.name, name, build)

    def key(self, *parts: Any) -> str:
        """A cell key: model | dataset | parts."""
        return "|".join([self.model_name, self.spec.name, *map(str, parts)])

    def cell(self, key: str, config: dict, compute: Callable[[], dict]) -> dict:
        """The stored cell `key` if its fingerprint of `config` matches, else `compute()`, stored at once."""
        return self._runner.cell(key, config, compute)

    def stored(self, key: str) -> dict | None:
        """A cell of the results file (this run's or an earlier one's), or None."""
        return self._runner.store.cells.get(key)


class SuiteRun:
    """What a task's suite pass gets for one model: the `DatasetRun` of each of its datasets that was evaluated.

    Attributes:
        model_name (`str`): the model's name in the results.
        datasets (`dict[str, DatasetRun]`): dataset name -> its run (data and `outputs` still loaded), suite order.
    """

    def __init__(self, runner, model_name: str, datasets: dict[str, DatasetRun]):
        self._runner, self.model_name, self.datasets = runner, model_name, datasets

    def cell(self, key: str, config: dict, compute: Callable[[], dict]) -> dict:
        return self._runner.cell(key, config, compute)


#: task name -> the registered `EvalTask`
EVAL_TASKS: Registry[EvalTask] = Registry("eval task")


def register_eval_task(task: EvalTask) -> EvalTask:
    """Register `task` under `task.name` (a duplicate name or cell kind fails loudly)."""
    if not task.name:
        raise ValueError(f"{type(task).__name__} needs a `name`.")
    for other in (EVAL_TASKS.get(n) for n in EVAL_TASKS.names() if n != task.name):
        clash = set(task.cell_kinds) & set(other.cell_kinds)
        if clash:
            raise ValueError(f"eval task '{task.name}': cell kind(s) {sorted(clash)} already belong to '{other.name}'.")
        if task.default and other.default:
            raise ValueError(f"eval task '{task.name}': '{other.name}' is already the default task.")
    return EVAL_TASKS.register(task.name, task)


def all_tasks() -> list[EvalTask]:
    """Every registered task and analysis, in report order."""
    return sorted(map(EVAL_TASKS.get, EVAL_TASKS.names()), key=lambda t: (t.order, t.name))


def analyses_of(task: str) -> list[EvalTask]:
    """The analyses whose parent is `task`, in report order."""
    return [t for t in all_tasks() if t.parent == task]


def task_of_cell(cell: dict) -> EvalTask | None:
    """The task that wrote `cell` (by its `kind`)."""
    return next((t for t in all_tasks() if cell.get("kind") in t.cell_kinds), None)


def dataset_entry(suite: dict, name: str | None) -> dict | None:
    """The entry of dataset `name` in a stored suite dict."""
    return next((d for d in suite.get("datasets", []) if d["name"] == name), None)


def current_cells(results: dict) -> dict[str, dict]:
    """The cells of `results` that belong to its suite's grid and to its models.

    A results file keeps the cells of earlier runs into the same folder so that a changed suite can reuse them; the
    report must only show the current suite's grid: its datasets and, per dataset, what its task and analyses say
    (`EvalTask.in_grid`: attacks with their label, norm, ε, iterations and seed, corruption types × severities, ...).
    """
    suite, models = results["suite"], set(results.get("models", []))
    out = {}
    for k, c in results["cells"].items():
        task, entry = task_of_cell(c), dataset_entry(suite, c.get("dataset"))
        if models and c.get("model") not in models or task is None or entry is None:
            continue
        if (task.parent is None and entry.get("task") == task.name) or task.name in (entry.get("analyses") or {}):
            if task.in_grid(c, entry):
                out[k] = c
    return out


__all__ = ["EVAL_TASKS", "DatasetRun", "EvalTask", "SuiteRun", "all_tasks", "analyses_of", "current_cells",
           "dataset_entry", "register_eval_task", "task_of_cell"]
