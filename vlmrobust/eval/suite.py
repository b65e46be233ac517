"""Evaluation suites: declarative YAML files (datasets, attacks, budgets, corruptions, margins), validated here.

A suite file is a mapping::

    name: digits                         # defaults to the file name
    description: ...
    include: [_common/templates.yaml]    # other YAML files merged underneath this one (paths relative to it)
    template_sets: {cars: ["a photo of a {}."]}   # named prompt lists, referred to by datasets
    classname_sets: {stl10: [airplane, bird, ...]}
    dataset_defs: {cifar10: {source: uoft-cs/cifar10, ...}}  # shared entries (`use: cifar10`); defaults override
    defaults: {split: test, n_samples: 1000, attacks: [...]}    # applied to every dataset that does not say
    expected_robustness: {weights: null}
    average: {exclude: [imagenet], label: "13 zero-shot datasets"}   # datasets reported apart from the average row
    datasets:
      - name: cifar10
        use: cifar10                     # start from dataset_defs.cifar10 (optional)
        source: uoft-cs/cifar10          # anything `load_classification_dataset` takes
        split: test
        n_samples: 1000
        classnames: null                 # list | set name | {file: classnames.txt} | {builtin: imagenet}
        templates: openai_imagenet       # set name | list | {file: ...}
        download: "..."                  # shown when the data is missing
        attacks:
          - attack: [apgd-ce, apgd-t]    # one registered attack, or several: worst case per sample
            norm: Linf
            eps: [2/255, 4/255]
            steps: 100
            seed: 0
            options: {apgd-t: {n_target_classes: 9}}
        corruptions: {types: common, severities: [1, 2, 3, 4, 5], n_samples: 1000, reference: alexnet}
        margin: {attack: apgd-ce+apgd-t, subset: 500}
      - name: shapes-vqa                 # a VQA dataset for LVLMs (`task: vqa`; the default task is classification)
        task: vqa
        source: shapes-vqa               # shapes-vqa (offline generator, n_samples / seed) | vqa-json | a Hub id
        n_samples: 60
        batch_size: 20
        vqa: {answer_mode: rank}         # rank (closed set) | generate; questions_file / annotations_file /
                                         # image_dir / image_pattern for vqa-json; answers_field for the Hub
        attacks:
          - attack: apgd                 # APGD on the teacher-forced answer loss (the only VQA attack)
            eps: [2/255, 4/255]
            steps: 100
            ensemble: true               # one run per distinct reference answer, worst case per question
            max_references: 3
            targets: ["maybe"]           # extra targeted runs
      - name: shapes-caption             # a captioning dataset for LVLMs (`task: caption`), scored by CIDEr
        task: caption
        source: shapes-caption           # shapes-caption (offline generator, n_samples / seed) | coco-json
        n_samples: 30                    # CIDEr is computed on this fixed subset (the first / seeded n images)
        caption: {max_new_tokens: 20}    # prompt / max_new_tokens; annotations_file / image_dir for coco-json
        attacks:
          - attack: apgd                 # APGD on the teacher-forced CE of a reference caption
            eps: [2/255, 4/255]
            steps: 100
            n_references: 5              # one run per reference caption, lowest CIDEr per image kept

Every error names the suite and the path of the offending field (``suite 'x': datasets[2].attacks[0].eps: ...``).
No Python is imported from YAML: sets of class names and templates are data, attacks are registry names.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..attacks import ATTACKS, check_budget
from ..attacks.base import canonical_norm
from ..registry import Registry

#: suite name -> path of its YAML file. The files in `vlmrobust/eval_suites/` register themselves; users add their own.
SUITES: Registry[Path] = Registry("eval suite")

#: Components that need a minimum number of classes (DLR losses use the 3rd / 4th largest logit).
MIN_CLASSES = {"apgd-dlr": 3, "apgd-t": 4}

_TOP_KEYS = {"name", "description", "include", "template_sets", "classname_sets", "dataset_defs", "defaults",
             "datasets", "expected_robustness", "average", "notes"}
_DATASET_KEYS = {"use", "name", "task", "source", "split", "n_samples", "seed", "batch_size", "classnames",
                 "templates", "image_column", "label_column", "data_dir", "download", "attacks", "corruptions",
                 "margin", "vqa", "caption"}
_DEFAULT_KEYS = _DATASET_KEYS - {"use", "name", "task", "source", "download", "vqa", "caption"}
TASKS = ("classification", "vqa", "caption")
#: dataset fields of a `task: vqa` entry, and the suite defaults that also apply to VQA entries
_VQA_DATASET_KEYS = {"use", "name", "task", "source", "split", "n_samples", "seed", "batch_size", "data_dir",
                     "download", "attacks", "vqa"}
_VQA_DEFAULT_KEYS = {"split", "n_samples", "seed", "batch_size", "data_dir"}
_VQA_KEYS = {"answer_mode", "candidates", "max_new_tokens", "questions_file", "annotations_file", "image_dir",
             "image_pattern", "answers_field", "image_size"}
_VQA_ATTACK_KEYS = {"attack", "label", "norm", "eps", "steps", "seed", "ensemble", "targets", "max_references"}
#: VQA sources that are not Hub ids
VQA_SOURCES = ("shapes-vqa", "vqa-json")
#: dataset fields of a `task: caption` entry (the suite defaults that apply are those of VQA entries)
_CAPTION_DATASET_KEYS = {"use", "name", "task", "source", "split", "n_samples", "seed", "batch_size", "data_dir",
                         "download", "attacks", "caption"}
_CAPTION_KEYS = {"prompt", "max_new_tokens", "annotations_file", "image_dir", "image_size"}
_CAPTION_ATTACK_KEYS = {"attack", "label", "norm", "eps", "steps", "seed", "n_references"}
#: captioning sources (no Hub loader yet: COCO-format JSON + image folder, or the offline generator)
CAPTION_SOURCES = ("shapes-caption", "coco-json")
_ATTACK_KEYS = {"attack", "label", "norm", "eps", "steps", "seed", "options"}
_CORRUPTION_KEYS = {"types", "severities", "n_samples", "seed", "reference", "min_size", "batch_size"}
_MARGIN_KEYS = {"attack", "subset", "seed", "steps", "n_target_classes", "max_norm"}


class SuiteError(ValueError):
    """A suite file is malformed; the message names the suite and the field path."""


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


# -- schema ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttackSpec:
    """One threat model of a dataset: attack(s), norm, ε grid, iterations, seed.

    Args:
        components (`tuple[str, ...]`): registered attack names; with several a point is robust only if it survives
            all of them (they run one after the other on the survivors, like AutoAttack).
        label (`str`): name of the cell column (defaults to the components joined by "+").
        norm (`str`): "Linf" or "L2".
        eps (`tuple[float, ...]`): budgets in [0, 1] pixel units, ascending, ε > 0.
        steps (`int`): iterations of each component.
        seed (`int`): attack seed.
        options (`dict[str, dict]`): extra constructor arguments per component.
    """

    components: tuple[str, ...]
    label: str
    norm: str = "Linf"
    eps: tuple[float, ...] = ()
    steps: int = 100
    seed: int = 0
    options: dict[str, dict] = field(default_factory=dict)


@dataclass(frozen=True)
class CorruptionSpec:
    """Common corruptions (Hendrycks & Dietterich 2019, arXiv 1903.12261) of a dataset's images.

    Args:
        types (`tuple[str, ...]`): imagecorruptions names ("common" = the 15 ImageNet-C ones, "all" = 19).
        severities (`tuple[int, ...]`): subset of 1..5.
        n_samples (`int`, *optional*): images per (type, severity), a seeded subset of the evaluated images.
        seed (`int`): seed of the subset and of the corruption noise.
        reference (`str`): "alexnet" (published ImageNet-C errors), "none", or a path to a results JSON whose
            first model is the reference.
        min_size (`int`): images smaller than this are upsampled before corrupting (imagecorruptions needs ≥ 32 px)
            and downsampled back.
    """

    types: tuple[str, ...]
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    n_samples: int | None = None
    seed: int = 0
    reference: str = "none"
    min_size: int = 32
    batch_size: int | None = None


@dataclass(frozen=True)
class MarginSpec:
    """Margin consistency (arXiv 2406.18451) on a subset, and the margin-based robust-accuracy estimate.

    Args:
        attack (`str`): label of the dataset attack whose robust masks the estimate is checked against.
        subset (`int`): number of points whose input-space margin is measured (FAB-T) and whose attacked robustness
            fixes the logit-margin threshold.
        seed (`int`): seed of the subset and of FAB.
        steps (`int`): FAB iterations per target class.
        n_target_classes (`int`): FAB target classes (the minimum norm over them is kept).
        max_norm (`float`, *optional*): cap of the input margin when FAB finds nothing (defaults to 4× the largest
            ε of the attack).
    """

    attack: str
    subset: int = 100
    seed: int = 0
    steps: int = 100
    n_target_classes: int = 9
    max_norm: float | None = None


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
        image_size (`int`): rendered side of `shapes-vqa` images.
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
class DatasetSpec:
    """One dataset of a suite and everything measured on it (`task` "classification", "vqa" or "caption")."""

    name: str
    source: str
    split: str = "test"
    n_samples: int | None = None
    seed: int = 0
    batch_size: int = 128
    classnames: Any = None
    templates: Any = "openai_imagenet"
    image_column: str | None = None
    label_column: str | None = None
    data_dir: str | None = None
    download: str | None = None
    attacks: tuple[AttackSpec | VQAAttackSpec | CaptionAttackSpec, ...] = ()
    corruptions: CorruptionSpec | None = None
    margin: MarginSpec | None = None
    task: str = "classification"
    vqa: VQASpec | None = None
    caption: CaptionSpec | None = None

    def data_config(self) -> dict:
        """What decides which images and labels are evaluated (part of every cell's fingerprint)."""
        if self.task == "vqa":
            return {"task": "vqa", "source": self.source, "split": self.split, "n_samples": self.n_samples,
                    "seed": self.seed, "data_dir": self.data_dir, "vqa": asdict(self.vqa) if self.vqa else None}
        if self.task == "caption":
            return {"task": "caption", "source": self.source, "split": self.split, "n_samples": self.n_samples,
                    "seed": self.seed, "data_dir": self.data_dir,
                    "caption": asdict(self.caption) if self.caption else None}
        return {"source": self.source, "split": self.split, "n_samples": self.n_samples, "seed": self.seed,
                "classnames": self.classnames, "templates": self.templates, "image_column": self.image_column,
                "label_column": self.label_column, "data_dir": self.data_dir}


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


def fingerprint(obj: Any) -> str:
    """Short stable hash of a JSON-able object (decides whether a stored cell is still valid)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


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


class _Ctx:
    def __init__(self, suite: str):
        self.suite = suite

    def fail(self, where: str, msg: str) -> SuiteError:
        return SuiteError(f"suite '{self.suite}': {where}: {msg}" if where else f"suite '{self.suite}': {msg}")

    def check_keys(self, obj: Any, allowed: set[str], where: str) -> dict:
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


def _eps_grid(ctx: _Ctx, eps_raw: Any, norm: str, where: str) -> tuple[float, ...]:
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


def _attack(ctx: _Ctx, raw: Any, where: str) -> AttackSpec:
    raw = ctx.check_keys(raw, _ATTACK_KEYS, where)
    if "attack" not in raw:
        raise ctx.fail(f"{where}.attack", "missing; give a registered attack name or a list of them.")
    comps = raw["attack"]
    comps = [comps] if isinstance(comps, str) else comps
    if not isinstance(comps, list) or not comps:
        raise ctx.fail(f"{where}.attack", f"must be an attack name or a non-empty list of names, got {comps!r}.")
    for i, c in enumerate(comps):
        w = f"{where}.attack" + (f"[{i}]" if len(comps) > 1 else "")
        if not isinstance(c, str) or c not in ATTACKS:
            raise ctx.fail(w, f"unknown attack {c!r}; registered attacks: {', '.join(ATTACKS.names())}.")
    try:
        norm = canonical_norm(raw.get("norm", "Linf"))
    except ValueError as err:
        raise ctx.fail(f"{where}.norm", str(err)) from err
    if norm == "L1":
        raise ctx.fail(f"{where}.norm", "L1 budgets are not implemented yet by the APGD / PGD attacks "
                                        "(only Linf and L2); remove this attack or use norm: Linf / L2.")
    eps = _eps_grid(ctx, raw.get("eps"), norm, where)
    options = raw.get("options") or {}
    if not isinstance(options, Mapping):
        raise ctx.fail(f"{where}.options", "must map component names to argument mappings.")
    for k, v in options.items():
        if k not in comps:
            raise ctx.fail(f"{where}.options.{k}", f"is not one of this entry's attacks {comps}.")
        if not isinstance(v, Mapping):
            raise ctx.fail(f"{where}.options.{k}", "must be a mapping of constructor arguments.")
        for banned in ("eps", "norm", "steps", "seed", "model"):
            if banned in v:
                raise ctx.fail(f"{where}.options.{k}.{banned}", f"set '{banned}' on the attack entry, not in options.")
    label = ctx.string(raw.get("label", "+".join(comps)), f"{where}.label")
    if "|" in label:
        raise ctx.fail(f"{where}.label", "must not contain '|'.")
    return AttackSpec(
        components=tuple(comps), label=label, norm=norm, eps=eps,
        steps=ctx.integer(raw.get("steps", 100), f"{where}.steps", lo=1),
        seed=ctx.integer(raw.get("seed", 0), f"{where}.seed", lo=0),
        options={k: dict(v) for k, v in options.items()},
    )


def _likelihood_attack_threat(ctx: _Ctx, raw: dict, where: str, kind: str, target: str) -> tuple[str, tuple]:
    """The `attack` / `norm` / `eps` fields of a VQA or captioning attack (APGD on the teacher-forced loss)."""
    comps = raw.get("attack", "apgd")
    comps = [comps] if isinstance(comps, str) else comps
    if comps != ["apgd"]:
        raise ctx.fail(f"{where}.attack", f"{kind} datasets support only 'apgd' (APGD on the {target} loss), got "
                                          f"{raw.get('attack')!r}.")
    try:
        norm = canonical_norm(raw.get("norm", "Linf"))
    except ValueError as err:
        raise ctx.fail(f"{where}.norm", str(err)) from err
    if norm not in ("Linf", "L2"):
        raise ctx.fail(f"{where}.norm", f"must be Linf or L2 for {kind} attacks, got {norm}.")
    return norm, _eps_grid(ctx, raw.get("eps"), norm, where)


def _vqa_attack(ctx: _Ctx, raw: Any, where: str) -> VQAAttackSpec:
    raw = ctx.check_keys(raw, _VQA_ATTACK_KEYS, where)
    norm, eps = _likelihood_attack_threat(ctx, raw, where, "VQA", "answer")
    ensemble = raw.get("ensemble", True)
    if not isinstance(ensemble, bool):
        raise ctx.fail(f"{where}.ensemble", f"must be true or false, got {ensemble!r}.")
    targets = raw.get("targets") or []
    targets = [targets] if isinstance(targets, str) else targets
    if not isinstance(targets, list) or not all(isinstance(t, str) and t for t in targets):
        raise ctx.fail(f"{where}.targets", f"must be a list of non-empty strings, got {raw.get('targets')!r}.")
    if targets and not ensemble:
        raise ctx.fail(f"{where}.targets", "targeted runs are part of the ensemble; set ensemble: true.")
    label = ctx.string(raw.get("label", "apgd-ensemble" if ensemble else "apgd"), f"{where}.label")
    if "|" in label:
        raise ctx.fail(f"{where}.label", "must not contain '|'.")
    return VQAAttackSpec(
        components=("apgd",), label=label, norm=norm, eps=eps,
        steps=ctx.integer(raw.get("steps", 100), f"{where}.steps", lo=1),
        seed=ctx.integer(raw.get("seed", 0), f"{where}.seed", lo=0), ensemble=ensemble, targets=tuple(targets),
        max_references=ctx.integer(raw.get("max_references"), f"{where}.max_references", lo=1, optional=True),
    )


def _vqa_spec(ctx: _Ctx, raw: Any, source: str, where: str) -> VQASpec:
    raw = ctx.check_keys(raw or {}, _VQA_KEYS, where)
    mode = raw.get("answer_mode", "rank" if source == "shapes-vqa" else "generate")
    if mode not in ("rank", "generate"):
        raise ctx.fail(f"{where}.answer_mode", f"must be 'rank' or 'generate', got {mode!r}.")
    cands = raw.get("candidates")
    if cands is not None and (not isinstance(cands, list) or not cands
                              or not all(isinstance(c, str) and c for c in cands)):
        raise ctx.fail(f"{where}.candidates", f"must be a non-empty list of answer strings, got {cands!r}.")
    if mode == "rank" and cands is None and source != "shapes-vqa":
        raise ctx.fail(f"{where}.candidates", "answer_mode 'rank' needs the closed answer set here (only "
                                              "shapes-vqa provides its own); give candidates or use 'generate'.")
    files = {k: ctx.string(raw.get(k), f"{where}.{k}", optional=True)
             for k in ("questions_file", "annotations_file", "image_dir", "image_pattern")}
    if source == "vqa-json":
        for k in ("questions_file", "annotations_file", "image_dir"):
            if files[k] is None:
                raise ctx.fail(f"{where}.{k}", "missing; source vqa-json needs questions_file, annotations_file "
                                               "and image_dir.")
    else:
        extra = [k for k, v in files.items() if v is not None]
        if extra:
            raise ctx.fail(f"{where}.{extra[0]}", "only used with source: vqa-json.")
    return VQASpec(
        answer_mode=mode, candidates=tuple(cands) if cands else None,
        max_new_tokens=ctx.integer(raw.get("max_new_tokens", 10), f"{where}.max_new_tokens", lo=1), **files,
        answers_field=ctx.string(raw.get("answers_field", "answers"), f"{where}.answers_field"),
        image_size=ctx.integer(raw.get("image_size", 64), f"{where}.image_size", lo=8),
    )


def _vqa_dataset(ctx: _Ctx, d: dict, dname: str, where: str, n_override: int | None,
                 batch_override: int | None) -> DatasetSpec:
    for k in d:
        if k not in _VQA_DATASET_KEYS:
            raise ctx.fail(f"{where}.{k}", "is a classification field; not allowed with task: vqa "
                                           f"(VQA fields: {', '.join(sorted(_VQA_DATASET_KEYS - {'use'}))}).")
    source = ctx.string(d.get("source"), f"{where}.source")
    n = ctx.integer(d.get("n_samples"), f"{where}.n_samples", lo=1, optional=True)
    if n_override is not None:
        n = n_override if n is None else min(n, n_override)
    if source == "shapes-vqa" and n is None:
        raise ctx.fail(f"{where}.n_samples", "missing; the shapes-vqa generator needs the number of questions.")
    atk_raw = d.get("attacks") or []
    if not isinstance(atk_raw, list):
        raise ctx.fail(f"{where}.attacks", "must be a list of attack entries.")
    attacks = tuple(_vqa_attack(ctx, a, f"{where}.attacks[{j}]") for j, a in enumerate(atk_raw))
    if len({a.label for a in attacks}) != len(attacks):
        raise ctx.fail(f"{where}.attacks", "two entries share a label; give them distinct 'label's.")
    batch = batch_override or ctx.integer(d.get("batch_size", 16), f"{where}.batch_size", lo=1)
    return DatasetSpec(
        name=dname, source=source, split=ctx.string(d.get("split", "test"), f"{where}.split"), n_samples=n,
        seed=ctx.integer(d.get("seed", 0), f"{where}.seed", lo=0), batch_size=batch, classnames=None,
        templates=None, data_dir=ctx.string(d.get("data_dir"), f"{where}.data_dir", optional=True),
        download=ctx.string(d.get("download"), f"{where}.download", optional=True), attacks=attacks, task="vqa",
        vqa=_vqa_spec(ctx, d.get("vqa"), source, f"{where}.vqa"),
    )


def _caption_attack(ctx: _Ctx, raw: Any, where: str) -> CaptionAttackSpec:
    raw = ctx.check_keys(raw, _CAPTION_ATTACK_KEYS, where)
    norm, eps = _likelihood_attack_threat(ctx, raw, where, "captioning", "caption")
    label = ctx.string(raw.get("label", "apgd-ensemble"), f"{where}.label")
    if "|" in label:
        raise ctx.fail(f"{where}.label", "must not contain '|'.")
    return CaptionAttackSpec(
        components=("apgd",), label=label, norm=norm, eps=eps,
        steps=ctx.integer(raw.get("steps", 100), f"{where}.steps", lo=1),
        seed=ctx.integer(raw.get("seed", 0), f"{where}.seed", lo=0),
        n_references=ctx.integer(raw.get("n_references", 5), f"{where}.n_references", lo=1, optional=True),
    )


def _caption_dataset(ctx: _Ctx, d: dict, dname: str, where: str, n_override: int | None,
                     batch_override: int | None) -> DatasetSpec:
    for k in d:
        if k not in _CAPTION_DATASET_KEYS:
            raise ctx.fail(f"{where}.{k}", "not allowed with task: caption (captioning fields: "
                                           f"{', '.join(sorted(_CAPTION_DATASET_KEYS - {'use'}))}).")
    source = ctx.string(d.get("source"), f"{where}.source")
    if source not in CAPTION_SOURCES:
        raise ctx.fail(f"{where}.source", f"unknown captioning source {source!r}; known: "
                                          f"{', '.join(CAPTION_SOURCES)} (COCO-format JSON + image folder).")
    n = ctx.integer(d.get("n_samples"), f"{where}.n_samples", lo=1, optional=True)
    if n_override is not None:
        n = n_override if n is None else min(n, n_override)
    if source == "shapes-caption" and n is None:
        raise ctx.fail(f"{where}.n_samples", "missing; the shapes-caption generator needs the number of images.")
    atk_raw = d.get("attacks") or []
    if not isinstance(atk_raw, list):
        raise ctx.fail(f"{where}.attacks", "must be a list of attack entries.")
    attacks = tuple(_caption_attack(ctx, a, f"{where}.attacks[{j}]") for j, a in enumerate(atk_raw))
    if len({a.label for a in attacks}) != len(attacks):
        raise ctx.fail(f"{where}.attacks", "two entries share a label; give them distinct 'label's.")
    cw = f"{where}.caption"
    raw = ctx.check_keys(d.get("caption") or {}, _CAPTION_KEYS, cw)
    files = {k: ctx.string(raw.get(k), f"{cw}.{k}", optional=True) for k in ("annotations_file", "image_dir")}
    if source == "coco-json":
        for k, v in files.items():
            if v is None:
                raise ctx.fail(f"{cw}.{k}", "missing; source coco-json needs annotations_file and image_dir.")
    else:
        extra = [k for k, v in files.items() if v is not None]
        if extra:
            raise ctx.fail(f"{cw}.{extra[0]}", "only used with source: coco-json.")
    spec = CaptionSpec(
        prompt=ctx.string(raw.get("prompt", CaptionSpec.prompt), f"{cw}.prompt"),
        max_new_tokens=ctx.integer(raw.get("max_new_tokens", 20), f"{cw}.max_new_tokens", lo=1), **files,
        image_size=ctx.integer(raw.get("image_size", 64), f"{cw}.image_size", lo=8),
    )
    batch = batch_override or ctx.integer(d.get("batch_size", 16), f"{where}.batch_size", lo=1)
    return DatasetSpec(
        name=dname, source=source, split=ctx.string(d.get("split", "test"), f"{where}.split"), n_samples=n,
        seed=ctx.integer(d.get("seed", 0), f"{where}.seed", lo=0), batch_size=batch, classnames=None,
        templates=None, data_dir=ctx.string(d.get("data_dir"), f"{where}.data_dir", optional=True),
        download=ctx.string(d.get("download"), f"{where}.download", optional=True), attacks=attacks,
        task="caption", caption=spec,
    )


def _corruptions(ctx: _Ctx, raw: Any, where: str, n_samples_cap: int | None) -> CorruptionSpec | None:
    if raw is None or raw is False:
        return None
    from .corruptions import ALL_CORRUPTIONS, COMMON_CORRUPTIONS

    raw = ctx.check_keys(raw, _CORRUPTION_KEYS, where)
    types = raw.get("types", "common")
    if types == "common":
        types = list(COMMON_CORRUPTIONS)
    elif types == "all":
        types = list(ALL_CORRUPTIONS)
    if not isinstance(types, list) or not types:
        raise ctx.fail(f"{where}.types", "must be 'common', 'all' or a list of corruption names.")
    for i, t in enumerate(types):
        if t not in ALL_CORRUPTIONS:
            raise ctx.fail(f"{where}.types[{i}]", f"unknown corruption {t!r}; known: {', '.join(ALL_CORRUPTIONS)}.")
    sev = raw.get("severities", [1, 2, 3, 4, 5])
    sev = [sev] if isinstance(sev, int) else sev
    if not isinstance(sev, list) or not sev or any(isinstance(s, bool) or s not in (1, 2, 3, 4, 5) for s in sev):
        raise ctx.fail(f"{where}.severities", f"must be a list drawn from 1..5, got {sev!r}.")
    ref = raw.get("reference", "none")
    if not isinstance(ref, str) or not (ref in ("alexnet", "none") or ref.endswith(".json")):
        raise ctx.fail(f"{where}.reference", f"must be 'alexnet', 'none' or a path to a results .json, got {ref!r}.")
    n = ctx.integer(raw.get("n_samples"), f"{where}.n_samples", lo=1, optional=True)
    if n_samples_cap is not None:
        n = n_samples_cap if n is None else min(n, n_samples_cap)
    return CorruptionSpec(
        types=tuple(types), severities=tuple(sorted(set(sev))), n_samples=n,
        seed=ctx.integer(raw.get("seed", 0), f"{where}.seed", lo=0), reference=ref,
        min_size=ctx.integer(raw.get("min_size", 32), f"{where}.min_size", lo=32),
        batch_size=ctx.integer(raw.get("batch_size"), f"{where}.batch_size", lo=1, optional=True),
    )


def _margin(ctx: _Ctx, raw: Any, where: str, attacks: tuple[AttackSpec, ...], cap: int | None) -> MarginSpec | None:
    if raw is None or raw is False:
        return None
    raw = ctx.check_keys(raw, _MARGIN_KEYS, where)
    labels = [a.label for a in attacks]
    if not labels:
        raise ctx.fail(where, "needs at least one attack on the dataset to check the estimate against.")
    label = raw.get("attack", labels[0])
    if label not in labels:
        raise ctx.fail(f"{where}.attack", f"{label!r} is not an attack label of this dataset; labels: {labels}.")
    subset = ctx.integer(raw.get("subset", 100), f"{where}.subset", lo=2)
    if cap is not None:
        subset = min(subset, cap)
    max_norm = raw.get("max_norm")
    if max_norm is not None:
        try:
            max_norm = parse_eps(max_norm)
        except ValueError as err:
            raise ctx.fail(f"{where}.max_norm", str(err)) from err
    return MarginSpec(
        attack=label, subset=subset, seed=ctx.integer(raw.get("seed", 0), f"{where}.seed", lo=0),
        steps=ctx.integer(raw.get("steps", 100), f"{where}.steps", lo=1),
        n_target_classes=ctx.integer(raw.get("n_target_classes", 9), f"{where}.n_target_classes", lo=1),
        max_norm=max_norm,
    )


def _name_list(ctx: _Ctx, value: Any, sets: Mapping, where: str, kind: str) -> Any:
    """Validate a classnames / templates field: a list, a named set, or a {file:} / {builtin:} reference."""
    if value is None:
        return None
    if isinstance(value, str):
        if value in sets:
            return _name_list(ctx, sets[value], {}, where, kind)
        return value  # a builtin template-set name or a single format string; checked when loading the data
    if isinstance(value, list):
        if not value or not all(isinstance(v, str) and v for v in value):
            raise ctx.fail(where, f"{kind} must be a non-empty list of strings.")
        if kind == "templates":
            bad = [t for t in value if "{}" not in t and "{c}" not in t]
            if bad:
                raise ctx.fail(where, f"every template needs a '{{}}' slot for the class name; bad: {bad[:3]}.")
        return list(value)
    if isinstance(value, Mapping):
        if len(value) != 1 or next(iter(value)) not in ("file", "builtin"):
            raise ctx.fail(where, "a reference must be {file: <name in the dataset folder or Hub repo>} or "
                                  "{builtin: imagenet}.")
        key, ref = next(iter(value.items()))
        if not isinstance(ref, str) or not ref:
            raise ctx.fail(f"{where}.{key}", "must be a non-empty string.")
        if key == "builtin" and ref not in ("imagenet",):
            raise ctx.fail(f"{where}.builtin", f"unknown builtin list {ref!r}; known: imagenet.")
        return {key: ref}
    raise ctx.fail(where, f"{kind} must be a list, a set name or a reference, got {type(value).__name__}.")


def _validate(raw: dict, default_name: str, path: str | None, n_override: int | None,
              batch_override: int | None) -> Suite:
    name = raw.get("name", default_name)
    ctx = _Ctx(str(name))
    raw = ctx.check_keys(raw, _TOP_KEYS, "")
    ctx.string(name, "name")
    template_sets = raw.get("template_sets") or {}
    classname_sets = raw.get("classname_sets") or {}
    for key, sets in (("template_sets", template_sets), ("classname_sets", classname_sets)):
        if not isinstance(sets, Mapping):
            raise ctx.fail(key, "must map set names to lists.")
    defaults = ctx.check_keys(raw.get("defaults") or {}, _DEFAULT_KEYS, "defaults")
    defs = raw.get("dataset_defs") or {}
    if not isinstance(defs, Mapping):
        raise ctx.fail("dataset_defs", "must map names to dataset entries.")
    for k, v in defs.items():
        ctx.check_keys(v, _DATASET_KEYS - {"use"}, f"dataset_defs.{k}")
    datasets_raw = raw.get("datasets")
    if not isinstance(datasets_raw, list) or not datasets_raw:
        raise ctx.fail("datasets", "must be a non-empty list of datasets.")
    datasets: list[DatasetSpec] = []
    seen: set[str] = set()
    for i, d_raw in enumerate(datasets_raw):
        where = f"datasets[{i}]"
        d = ctx.check_keys(d_raw, _DATASET_KEYS, where)
        use = d.pop("use", None)
        base: dict = {}
        if use is not None:
            if use not in defs:
                raise ctx.fail(f"{where}.use", f"unknown dataset definition {use!r}; defined: {sorted(defs)}.")
            base = {"name": use, **defs[use]}
        task = d.get("task", base.get("task", "classification"))
        if task not in TASKS:
            raise ctx.fail(f"{where}.task", f"unknown task {task!r}; known: {', '.join(TASKS)}.")
        if task in ("vqa", "caption"):  # classification defaults (templates, attacks, corruptions, ...) do not apply
            defaults_here = {k: v for k, v in defaults.items() if k in _VQA_DEFAULT_KEYS}
        else:
            defaults_here = defaults
        # precedence: shared definition < suite defaults (the protocol) < the entry itself
        d = {**base, **defaults_here, **d}
        d.pop("task", None)
        dname = ctx.string(d.get("name"), f"{where}.name")
        if dname in seen or "|" in dname:
            raise ctx.fail(f"{where}.name", f"{dname!r} is repeated or contains '|'.")
        seen.add(dname)
        if task == "vqa":
            datasets.append(_vqa_dataset(ctx, d, dname, where, n_override, batch_override))
            continue
        if task == "caption":
            datasets.append(_caption_dataset(ctx, d, dname, where, n_override, batch_override))
            continue
        if "vqa" in d:
            raise ctx.fail(f"{where}.vqa", "only for task: vqa datasets (add task: vqa, or remove this field).")
        if "caption" in d:
            raise ctx.fail(f"{where}.caption", "only for task: caption datasets (add task: caption, or remove this "
                                               "field).")
        source = ctx.string(d.get("source"), f"{where}.source")
        n = ctx.integer(d.get("n_samples"), f"{where}.n_samples", lo=1, optional=True)
        if n_override is not None:
            n = n_override if n is None else min(n, n_override)
        atk_raw = d.get("attacks") or []
        if not isinstance(atk_raw, list):
            raise ctx.fail(f"{where}.attacks", "must be a list of attack entries.")
        attacks = tuple(_attack(ctx, a, f"{where}.attacks[{j}]") for j, a in enumerate(atk_raw))
        if len({a.label for a in attacks}) != len(attacks):
            raise ctx.fail(f"{where}.attacks", "two entries share a label; give them distinct 'label's.")
        batch = batch_override or ctx.integer(d.get("batch_size", 128), f"{where}.batch_size", lo=1)
        datasets.append(DatasetSpec(
            name=dname, source=source, split=ctx.string(d.get("split", "test"), f"{where}.split"), n_samples=n,
            seed=ctx.integer(d.get("seed", 0), f"{where}.seed", lo=0), batch_size=batch,
            classnames=_name_list(ctx, d.get("classnames"), classname_sets, f"{where}.classnames", "classnames"),
            templates=_name_list(ctx, d.get("templates", "openai_imagenet"), template_sets, f"{where}.templates",
                                 "templates"),
            image_column=ctx.string(d.get("image_column"), f"{where}.image_column", optional=True),
            label_column=ctx.string(d.get("label_column"), f"{where}.label_column", optional=True),
            data_dir=ctx.string(d.get("data_dir"), f"{where}.data_dir", optional=True),
            download=ctx.string(d.get("download"), f"{where}.download", optional=True),
            attacks=attacks,
            corruptions=_corruptions(ctx, d.get("corruptions"), f"{where}.corruptions", n),
            margin=_margin(ctx, d.get("margin"), f"{where}.margin", attacks, n),
        ))
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


__all__ = [
    "AttackSpec", "CaptionAttackSpec", "CaptionSpec", "CorruptionSpec", "DatasetSpec", "MarginSpec", "SUITES", "Suite",
    "SuiteError", "VQAAttackSpec",
    "VQASpec", "fingerprint", "load_suite", "parse_eps", "resolve_suite_path", "suites_dir",
]
