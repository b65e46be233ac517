"""Evaluation suites: declarative YAML files (datasets, their eval task, attacks, budgets, analyses), validated here.

A suite file is a mapping::

    name: digits                         # defaults to the file name
    description: ...
    include: [_common/templates.yaml]    # other YAML files merged underneath this one (paths relative to it)
    dataset_defs: {cifar10: {source: uoft-cs/cifar10, ...}}  # shared entries (`use: cifar10`); defaults override
    defaults: {split: test, n_samples: 1000, attacks: [...]}    # applied to every dataset (of a task) that does not say
    expected_robustness: {weights: null} # weights of the budgets (0 = clean) in expected robustness
    average: {exclude: [imagenet], label: "13 zero-shot datasets"}   # datasets reported apart from the average row
    datasets:
      - name: cifar10                    # unique; part of every cell key
        use: cifar10                     # start from dataset_defs.cifar10 (optional)
        task: classification             # the registered eval task (default: zero-shot classification)
        source: uoft-cs/cifar10          # what the task's loader reads (`vlmrobust.data.sources`)
        split: test
        n_samples: 1000                  # a seeded subset (all when absent)
        seed: 0
        batch_size: 128
        data_dir: null
        download: "..."                  # shown when the data is missing
        attacks:                         # threat models; each entry is parsed by the task, every one has a unique
          - attack: [apgd-ce, apgd-t]    # `label` (default: the attacks joined by "+") and an ε grid
            eps: [2/255, 4/255]
        # ... plus the task's own keys and its analyses' blocks, e.g. `templates:`, `corruptions: {...}`,
        # `margin: {...}` on a classification dataset, `vqa: {...}` on a `task: vqa` one

The shared fields above are parsed here, once; every other key belongs to a registered eval task
(`vlmrobust.eval.tasks`): `classification` (with the `corruptions` and `margin` analyses), `vqa`, `caption`; each
task module documents its keys. A key of another task is refused naming that task. Every error names the suite and
the path of the offending field (``suite 'x': datasets[2].attacks[0].eps: ...``). No Python is imported from YAML:
sets of class names and templates are data, attacks are registry names.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from ..registry import Registry
from .results import fingerprint
from .schema import SHARED_DEFAULT_KEYS, SHARED_KEYS, Ctx, DatasetSpec, SuiteError, parse_eps
from .tasks import EVAL_TASKS, EvalTask, all_tasks, analyses_of

#: suite name -> path of its YAML file. The files in `vlmrobust/eval_suites/` register themselves; users add their own.
SUITES: Registry[Path] = Registry("eval suite")

_TOP_KEYS = frozenset({"name", "description", "include", "dataset_defs", "defaults", "datasets", "expected_robustness",
                       "average", "notes"})


def suites_dir() -> Path:
    """Folder of the shipped suites: `$VLMROBUST_SUITES_DIR`, else `vlmrobust/eval_suites/` (package data, so an
    installed wheel has them too)."""
    env = os.environ.get("VLMROBUST_SUITES_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "eval_suites"


def _register_shipped() -> None:
    folder = suites_dir()
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.yaml")):
        if path.stem not in SUITES:
            SUITES.register(path.stem, path)


_register_shipped()


@dataclass(frozen=True)
class Suite:
    """A validated evaluation suite.

    Args:
        average_exclude (`tuple[str, ...]`): classification datasets left out of the report's average row and shown
            apart, labelled (e.g. ImageNet in `fare13`, whose paper averages the 13 zero-shot datasets only).
        average_label (`str`): what the average row is called (default: "average (<n> datasets)").
    """

    name: str
    datasets: tuple[DatasetSpec, ...]
    description: str = ""
    expected_robustness_weights: dict[float, float] | None = None
    path: str | None = None
    average_exclude: tuple[str, ...] = ()
    average_label: str = ""

    def dataset(self, name: str) -> DatasetSpec:
        for d in self.datasets:
            if d.name == name:
                return d
        raise KeyError(f"suite '{self.name}' has no dataset '{name}'; datasets: {[d.name for d in self.datasets]}.")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))


# -- loading -----------------------------------------------------------------------------------------------------


def _deep_merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, Mapping) else v
    return out


def _read_yaml(path: Path, stack: tuple[Path, ...] = ()) -> dict:
    label = f"suite file {str(path)!r}"
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise SuiteError(f"{label}: include: circular include ({chain}).")
    if not path.is_file():
        raise SuiteError(f"{label}: file not found.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise SuiteError(f"{label}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise SuiteError(f"{label}: the top level must be a mapping, got {type(data).__name__}.")
    includes = data.pop("include", None) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise SuiteError(f"{label}: include: must be a file name or a list of file names.")
    merged: dict = {}
    for inc in includes:
        merged = _deep_merge(merged, _read_yaml((path.parent / inc).resolve(), (*stack, path)))
    return _deep_merge(merged, data)


def resolve_suite_path(name_or_path: str | os.PathLike) -> Path:
    """A registered suite name or a path to a YAML file -> the file's path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise FileNotFoundError(f"Suite file {str(p)!r} not found.")
        return p
    name = str(name_or_path)
    if name not in SUITES:
        known = ", ".join(SUITES.names()) or "none"
        raise KeyError(f"Unknown eval suite '{name}'. Known suites: {known}; or give the path of a suite YAML file.")
    return SUITES.get(name)


def load_suite(name_or_path: str | os.PathLike | Mapping, *, n_samples: int | None = None,
               batch_size: int | None = None) -> Suite:
    """Load, merge (`include:`) and validate a suite.

    Args:
        name_or_path (`str`, `os.PathLike` or `Mapping`): a registered name (`"digits"`, `"fare13"`, ...), a YAML
            path, or an already parsed mapping.
        n_samples (`int`, *optional*): override every dataset's `n_samples` (and cap the corruption / margin
            subsets at it), e.g. for a quick look.
        batch_size (`int`, *optional*): override every dataset's batch size.

    Raises:
        SuiteError: naming the field path, on any malformed field.
    """
    if isinstance(name_or_path, Mapping):
        raw, path = dict(name_or_path), None
        includes = raw.pop("include", None)
        if includes:
            raise SuiteError("include: only works for suites loaded from a file (paths are relative to it).")
    else:
        path = resolve_suite_path(name_or_path)
        raw = _read_yaml(path.resolve())
    default_name = path.stem if path is not None else "suite"
    return _validate(raw, default_name, str(path) if path else None, n_samples, batch_size)


# -- validation: the shared fields here, the rest by the dataset's task --------------------------------------------


def _task(ctx: Ctx, name: Any, where: str) -> EvalTask:
    tasks = [t for t in all_tasks() if t.parent is None]
    if isinstance(name, str) and name in EVAL_TASKS and EVAL_TASKS.get(name).parent is None:
        return EVAL_TASKS.get(name)
    if isinstance(name, str) and name in EVAL_TASKS:
        raise ctx.fail(where, f"{name!r} is an analysis of {EVAL_TASKS.get(name).parent} datasets: add a "
                              f"`{name}:` block to such a dataset instead.")
    raise ctx.fail(where, f"unknown task {name!r}; known: {', '.join(t.name for t in tasks)}.")


def _owners(key: str) -> list[str]:
    """The tasks a dataset-entry key belongs to (an analysis's key belongs to its parent)."""
    return sorted({t.parent or t.name for t in all_tasks() if key in t.keys or (t.parent and key == t.name)})


def _dataset(ctx: Ctx, d: dict, task: EvalTask, where: str, seen: set[str], n_override: int | None,
             batch_override: int | None) -> DatasetSpec:
    analyses = analyses_of(task.name)
    own = SHARED_KEYS | task.keys | {a.name for a in analyses}
    for k in d:
        if k not in own:
            owners = _owners(k)
            raise ctx.fail(f"{where}.{k}", f"only for task: {' / '.join(owners)} datasets (this one is task: "
                                           f"{task.name}; add task: {owners[0]}, or remove this field).")
    dname = ctx.string(d.get("name"), f"{where}.name")
    if dname in seen or "|" in dname:
        raise ctx.fail(f"{where}.name", f"{dname!r} is repeated or contains '|'.")
    seen.add(dname)
    source = ctx.string(d.get("source"), f"{where}.source")
    n = ctx.integer(d.get("n_samples"), f"{where}.n_samples", lo=1, optional=True)
    if n_override is not None:
        n = n_override if n is None else min(n, n_override)
    atk_raw = d.get("attacks") or []
    if not isinstance(atk_raw, list):
        raise ctx.fail(f"{where}.attacks", "must be a list of attack entries.")
    attacks = tuple(task.parse_attack(ctx, a, f"{where}.attacks[{j}]") for j, a in enumerate(atk_raw))
    if len({a.label for a in attacks}) != len(attacks):
        raise ctx.fail(f"{where}.attacks", "two entries share a label; give them distinct 'label's.")
    common = dict(
        name=dname, task=task.name, source=source, split=ctx.string(d.get("split", "test"), f"{where}.split"),
        n_samples=n, seed=ctx.integer(d.get("seed", 0), f"{where}.seed", lo=0),
        batch_size=batch_override or ctx.integer(d.get("batch_size", task.default_batch_size), f"{where}.batch_size",
                                                 lo=1),
        data_dir=ctx.string(d.get("data_dir"), f"{where}.data_dir", optional=True),
        download=ctx.string(d.get("download"), f"{where}.download", optional=True), attacks=attacks)
    spec = task.parse(ctx, d, common, where)
    found = {}
    for a in analyses:
        raw = d.get(a.name)
        if raw is not None and raw is not False:
            found[a.name] = a.parse_analysis(ctx, raw, f"{where}.{a.name}", spec)
    return dataclasses.replace(spec, analyses=found)


def _validate(raw: dict, default_name: str, path: str | None, n_override: int | None,
              batch_override: int | None) -> Suite:
    name = raw.get("name", default_name)
    tasks = all_tasks()
    ctx = Ctx(str(name), raw)
    raw = ctx.check_keys(raw, _TOP_KEYS.union(*(t.suite_keys for t in tasks)), "")
    ctx.string(name, "name")
    entry_keys = SHARED_KEYS.union(*(t.keys | ({t.name} if t.parent else set()) for t in tasks))
    defaults = ctx.check_keys(raw.get("defaults") or {}, SHARED_DEFAULT_KEYS.union(*(t.default_keys for t in tasks)),
                              "defaults")
    defs = raw.get("dataset_defs") or {}
    if not isinstance(defs, Mapping):
        raise ctx.fail("dataset_defs", "must map names to dataset entries.")
    for k, v in defs.items():
        ctx.check_keys(v, entry_keys, f"dataset_defs.{k}")
    datasets_raw = raw.get("datasets")
    if not isinstance(datasets_raw, list) or not datasets_raw:
        raise ctx.fail("datasets", "must be a non-empty list of datasets.")
    default_task = next(t.name for t in tasks if t.default)
    datasets: list[DatasetSpec] = []
    seen: set[str] = set()
    for i, d_raw in enumerate(datasets_raw):
        where = f"datasets[{i}]"
        d = ctx.check_keys(d_raw, entry_keys | {"use"}, where)
        use = d.pop("use", None)
        base: dict = {}
        if use is not None:
            if use not in defs:
                raise ctx.fail(f"{where}.use", f"unknown dataset definition {use!r}; defined: {sorted(defs)}.")
            base = {"name": use, **defs[use]}
        task = _task(ctx, d.get("task", base.get("task", default_task)), f"{where}.task")
        applies = SHARED_DEFAULT_KEYS | task.default_keys.union(*(a.default_keys for a in analyses_of(task.name)))
        # precedence: shared definition < suite defaults (the protocol) < the entry itself
        d = {**base, **{k: v for k, v in defaults.items() if k in applies}, **d}
        d.pop("task", None)
        datasets.append(_dataset(ctx, d, task, where, seen, n_override, batch_override))
    er = ctx.check_keys(raw.get("expected_robustness") or {}, {"weights"}, "expected_robustness")
    weights = er.get("weights")
    if weights is not None:
        if not isinstance(weights, Mapping):
            raise ctx.fail("expected_robustness.weights", "must map budgets (0 = clean) to weights.")
        try:
            weights = {parse_eps(k): float(v) for k, v in weights.items()}
        except (TypeError, ValueError) as err:
            raise ctx.fail("expected_robustness.weights", str(err)) from err
        for i, d in enumerate(datasets):
            for j, a in enumerate(d.attacks):
                missing = [e for e in (0.0, *a.eps) if not any(abs(e - w) < 1e-9 for w in weights)]
                if missing:
                    raise ctx.fail("expected_robustness.weights", f"no weight for ε = {missing} (grid of "
                                   f"datasets[{i}].attacks[{j}]); give one per budget, 0 (clean) included.")
    avg = ctx.check_keys(raw.get("average") or {}, {"exclude", "label"}, "average")
    exclude = avg.get("exclude") or []
    if isinstance(exclude, str):
        exclude = [exclude]
    if not isinstance(exclude, list) or not all(isinstance(e, str) for e in exclude):
        raise ctx.fail("average.exclude", "must be a list of dataset names.")
    unknown = [e for e in exclude if e not in seen]
    if unknown:
        close = {e: difflib.get_close_matches(e, sorted(seen), n=1) for e in unknown}
        hint = "; ".join(f"{e!r}" + (f" (did you mean {c[0]!r}?)" if c else "") for e, c in close.items())
        raise ctx.fail("average.exclude", f"no dataset {hint} in this suite; datasets: {sorted(seen)}.")
    label = ctx.string(avg.get("label"), "average.label", optional=True) or ""
    desc = raw.get("description", "")
    return Suite(name=str(name), datasets=tuple(datasets), description=str(desc or ""),
                 expected_robustness_weights=weights, path=path, average_exclude=tuple(exclude), average_label=label)


__all__ = ["SUITES", "DatasetSpec", "Suite", "SuiteError", "fingerprint", "load_suite", "parse_eps",
           "resolve_suite_path", "suites_dir"]
