"""What every eval task's YAML shares: the validation context that names the offending field, budgets, norms,
attack labels, and the dataset fields parsed once for every task (`DatasetSpec`).

Task-specific fields are parsed by the task modules in `vlmrobust/eval/tasks/`; this module knows no task.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..attacks import check_budget
from ..attacks.base import canonical_norm


class SuiteError(ValueError):
    """A suite file is malformed; the message names the suite and the field path."""


#: dataset fields every task has, parsed by the schema (a task adds its own `keys`)
SHARED_KEYS = frozenset({"name", "task", "source", "split", "n_samples", "seed", "batch_size", "data_dir", "download",
                         "attacks"})
#: shared fields that the suite's `defaults:` fill in for every task (a task adds its own `default_keys`)
SHARED_DEFAULT_KEYS = frozenset({"split", "n_samples", "seed", "batch_size", "data_dir"})


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of a suite: the fields every task shares. A task subclasses it for its own fields.

    Args:
        name (`str`): unique within the suite; part of every cell key.
        source (`str`): where the data comes from (what the task's loader in `vlmrobust.data.sources` reads).
        task (`str`): name of the registered eval task that evaluates it (`vlmrobust.eval.tasks.EVAL_TASKS`).
        split (`str`): dataset split.
        n_samples (`int`, *optional*): evaluated samples (a seeded subset; all when `None`).
        seed (`int`): seed of the subset.
        batch_size (`int`): samples per batch.
        data_dir (`str`, *optional*): local folder or Hub `data_dir` of the source.
        download (`str`, *optional*): how to get the data, shown when it is missing.
        attacks (`tuple`): the task's attack specs (threat models), each with a unique `label` and an `eps` grid.
        analyses (`dict[str, Any]`): specs of the per-dataset analyses switched on for this dataset, by name
            (e.g. `corruptions`, `margin` on a classification dataset).
    """

    name: str
    source: str
    task: str = ""
    split: str = "test"
    n_samples: int | None = None
    seed: int = 0
    batch_size: int = 128
    data_dir: str | None = None
    download: str | None = None
    attacks: tuple = ()
    analyses: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class Ctx:
    """Validation context of one suite: every error it raises names the suite and the field path.

    Args:
        suite (`str`): the suite's name.
        raw (`dict`, *optional*): the whole merged suite mapping (tasks read their top-level `suite_keys` from it).
    """

    def __init__(self, suite: str, raw: Mapping | None = None):
        self.suite = suite
        self.raw = dict(raw or {})

    def fail(self, where: str, msg: str) -> SuiteError:
        return SuiteError(f"suite '{self.suite}': {where}: {msg}" if where else f"suite '{self.suite}': {msg}")

    def check_keys(self, obj: Any, allowed: set[str] | frozenset[str], where: str) -> dict:
        if not isinstance(obj, Mapping):
            raise self.fail(where, f"must be a mapping, got {type(obj).__name__} ({obj!r}).")
        for k in obj:
            if k not in allowed:
                close = difflib.get_close_matches(str(k), sorted(allowed), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f"; allowed: {', '.join(sorted(allowed))}"
                raise self.fail(f"{where}.{k}" if where else str(k), f"unknown field{hint}.")
        return dict(obj)

    def integer(self, v: Any, where: str, lo: int | None = None, optional: bool = False) -> int | None:
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(where, f"must be an integer, got {v!r}.")
        if lo is not None and v < lo:
            raise self.fail(where, f"must be >= {lo}, got {v}.")
        return v

    def string(self, v: Any, where: str, optional: bool = False) -> str | None:
        if v is None and optional:
            return None
        if not isinstance(v, str) or not v:
            raise self.fail(where, f"must be a non-empty string, got {v!r}.")
        return v

    def boolean(self, v: Any, where: str) -> bool:
        if not isinstance(v, bool):
            raise self.fail(where, f"must be true or false, got {v!r}.")
        return v

    def strings(self, v: Any, where: str, what: str = "strings") -> list[str]:
        """A string or a list of non-empty strings -> the list."""
        v = [] if v is None else [v] if isinstance(v, str) else v
        if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
            raise self.fail(where, f"must be a list of non-empty {what}, got {v!r}.")
        return list(v)


def parse_eps(value: Any) -> float:
    """`4/255`, `"4/255"`, `0.0157` or `2.0` -> float (raises ValueError on anything else)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        s = value.strip()
        num, sep, den = s.partition("/")
        try:
            return float(num) / float(den) if sep else float(s)
        except (ValueError, ZeroDivisionError):
            pass
    raise ValueError(f"{value!r} is not a number or a fraction such as 4/255")


def eps_grid(ctx: Ctx, eps_raw: Any, norm: str, where: str) -> tuple[float, ...]:
    """The `eps` field of an attack entry: budgets > 0 in [0, 1] pixel units, sorted, without repeats."""
    if eps_raw is None:
        raise ctx.fail(f"{where}.eps", "missing; give a list of budgets such as [2/255, 4/255].")
    eps_list = eps_raw if isinstance(eps_raw, list) else [eps_raw]
    eps: list[float] = []
    for i, e in enumerate(eps_list):
        try:
            v = parse_eps(e)
            check_budget(norm, v)
        except ValueError as err:
            raise ctx.fail(f"{where}.eps[{i}]", str(err)) from err
        if v <= 0:
            raise ctx.fail(f"{where}.eps[{i}]", "must be > 0 (clean accuracy is always measured; it is ε = 0).")
        eps.append(v)
    if not eps:
        raise ctx.fail(f"{where}.eps", "is empty.")
    return tuple(sorted(set(eps)))


def parse_norm(ctx: Ctx, raw: Mapping, where: str, allowed: tuple[str, ...] = ("Linf", "L2"),
               why: str = "") -> str:
    """The `norm` field of an attack entry (default Linf), canonicalised and checked against `allowed`."""
    try:
        norm = canonical_norm(raw.get("norm", "Linf"))
    except ValueError as err:
        raise ctx.fail(f"{where}.norm", str(err)) from err
    if norm not in allowed:
        raise ctx.fail(f"{where}.norm", why or f"must be {' or '.join(allowed)}, got {norm}.")
    return norm


def attack_label(ctx: Ctx, raw: Mapping, default: str, where: str) -> str:
    """The `label` of an attack entry: the column name of its cells (no '|', which separates cell-key parts)."""
    label = ctx.string(raw.get("label", default), f"{where}.label")
    if "|" in label:
        raise ctx.fail(f"{where}.label", "must not contain '|'.")
    return label


def attack_settings(ctx: Ctx, raw: Mapping, where: str) -> dict:
    """`steps` (default 100) and `seed` (default 0) of an attack entry."""
    return {"steps": ctx.integer(raw.get("steps", 100), f"{where}.steps", lo=1),
            "seed": ctx.integer(raw.get("seed", 0), f"{where}.seed", lo=0)}


__all__ = ["SHARED_DEFAULT_KEYS", "SHARED_KEYS", "Ctx", "DatasetSpec", "SuiteError", "attack_label", "attack_settings",
           "eps_grid", "parse_eps", "parse_norm"]
