"""What the recipes share: a TRL-style parser (YAML `--config`, flags override) and the data / eval plumbing."""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from .utils.distributed import launched_on_cpu

_FRACTION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*/\s*([0-9]*\.?[0-9]+)\s*$")


def _fraction(v):
    """'4/255' -> 0.01568...; anything else unchanged (lets configs and flags write budgets as fractions)."""
    if isinstance(v, str):
        m = _FRACTION.match(v)
        if m:
            return float(m.group(1)) / float(m.group(2))
    if isinstance(v, list):
        return [_fraction(x) for x in v]
    return v


class RecipeParser(HfArgumentParser):
    """`HfArgumentParser` that reads defaults from `--config file.yaml`; command-line flags override them.

    Budgets may be written as fractions (`epsilon: 4/255`, `--epsilon 4/255`). Under a CPU `accelerate launch`
    (`--cpu`, or `use_cpu: true` in the accelerate config) `use_cpu` is set too: the launcher only exports
    `ACCELERATE_USE_CPU`, and without `use_cpu` the training arguments count one process under DeepSpeed.
    """

    def parse_args_and_config(self, args: Sequence[str] | None = None):
        args = list(sys.argv[1:] if args is None else args)
        if "--config" in args:
            i = args.index("--config")
            if i + 1 >= len(args):
                raise ValueError("--config needs a YAML file path.")
            path = Path(args[i + 1])
            del args[i : i + 2]
            if not path.is_file():
                raise FileNotFoundError(f"Config file not found: {path}")
            cfg = yaml.safe_load(path.read_text())
            if cfg is None or cfg == {}:  # would train with every default into ./trainer_output
                raise ValueError(f"{path} is empty: a recipe config sets at least output_dir (see recipes/configs/ "
                                 "for examples).")
            if not isinstance(cfg, dict):
                raise ValueError(f"{path} must be a YAML mapping of argument names to values.")
            known = {f.name for dc in self.dataclass_types for f in dataclasses.fields(dc)}
            unknown = sorted(set(cfg) - known)
            if unknown:
                raise ValueError(f"Unknown key(s) in {path}: {', '.join(unknown)}. Run the recipe with --help to "
                                 "list the valid arguments.")
            self.set_defaults(**{k: _fraction(v) for k, v in cfg.items()})
            # required fields given in the YAML are not required on the command line any more
            for action in self._actions:
                if action.dest in cfg:
                    action.required = False
        if launched_on_cpu() and any(f.name == "use_cpu" for dc in self.dataclass_types
                                     for f in dataclasses.fields(dc)):
            self.set_defaults(use_cpu=True)
        args = [str(_fraction(a)) if _FRACTION.match(a) else a for a in args]
        return self.parse_args_into_dataclasses(args=args)


@dataclass
class ScriptArguments:
    """Model, data and evaluation settings shared by the CLIP recipes.

    Args:
        model_name_or_path (`str`): a `create_model` id: `open_clip:ViT-L-14/openai`, `hf-clip:<id>`,
            `local-dir:<path>`, or the offline stand-in `vlmrobust:tiny-digits-clip`.
        dataset_name (`str`): a classification data source (`vlmrobust info` lists them): `digits`, a Hub id
            (`imagenet-1k`), `imagefolder:<dir>`, `parquet:<files>`, `webdataset:<Hub id or dir>`.
    """

    model_name_or_path: str = field(default="vlmrobust:tiny-digits-clip", metadata={"help": "create_model id."})
    dataset_name: str = field(default="digits", metadata={
        "help": "Classification data source: digits | <Hub id> | imagefolder:<dir> | parquet:<files> | "
                "webdataset:<loc> (`vlmrobust info` lists them)."})
    dataset_train_split: str = field(default="train", metadata={"help": "Training split."})
    dataset_eval_split: str = field(default="test", metadata={"help": "Evaluation split."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Subsample the training set."})
    templates: str = field(default="", metadata={"help": "Prompt templates (openai_imagenet | simple | digits); "
                                                          "default: the dataset's."})
    classnames: str = field(default="", metadata={"help": "Class names: 'imagenet' (OpenAI's 1,000 names) or a "
                                                           "text file with one name per line; default: the dataset's."})
    eval_before: bool = field(default=True, metadata={"help": "Evaluate the model before training."})
    eval_after: bool = field(default=True, metadata={"help": "Evaluate the trained model."})
    eval_max_samples: int | None = field(default=500, metadata={"help": "Images used for robust evaluation."})
    eval_epsilons: list[float] = field(default_factory=lambda: [2 / 255, 4 / 255],
                                       metadata={"help": "Budgets for robust evaluation (e.g. 2/255 4/255)."})
    eval_attack: str = field(default="apgd-ce+apgd-t", metadata={
        "help": "Evaluation attacks, '+'-joined, worst case per point (default: APGD-CE + APGD-T, the protocol of "
                "every number vlmrobust reports; anything else is labelled as such)."})
    eval_attack_steps: int = field(default=100, metadata={"help": "Iterations of each evaluation attack."})
    eval_target_classes: int = field(default=9, metadata={"help": "APGD-T target classes (capped at classes - 1)."})
    eval_batch_size: int = field(default=128, metadata={"help": "Evaluation batch size."})
    eval_corruptions: str = field(default="none", metadata={
        "help": "Common corruptions of the eval images as the OOD axis: 'none', 'common' (15), 'all' (19); the "
                "report then adds the ID / OOD / adversarial trade-off and its harmonic mean."})
    eval_corruption_severities: list[int] = field(default_factory=lambda: [1, 3, 5],
                                                  metadata={"help": "Corruption severities (1..5)."})
    eval_corruption_samples: int | None = field(default=100, metadata={
        "help": "Eval images corrupted per (type, severity) (a seeded subset)."})

    def __post_init__(self):
        from .data.sources import resolve_source

        resolve_source(self.dataset_name, "classification")  # a bad --dataset_name fails before any model loads


def load_datasets(script: ScriptArguments, model, seed: int = 0):
    """(train, eval) datasets of any registered classification source (`--dataset_name`, see
    `vlmrobust.data.sources`) at the model's resolution, with pixels in [0, 1] and class names / templates."""
    from .data import get_templates
    from .data.sources import load_train_eval

    options = {}
    if script.templates:
        options["templates"] = get_templates(script.templates)
    if script.classnames:
        options["classnames"] = resolve_classnames(script.classnames)
    return load_train_eval(script.dataset_name, "classification", train_split=script.dataset_train_split,
                           eval_split=script.dataset_eval_split, n_train=script.max_train_samples,
                           n_eval=script.eval_max_samples, seed=seed, image_size=model.image_size,
                           preprocess=model.preprocess, **options)


def resolve_classnames(spec: str) -> list[str]:
    """'imagenet' -> OpenAI's curated ImageNet class names (as shipped by open_clip); else a file, one per line."""
    if spec == "imagenet":
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        return list(IMAGENET_CLASSNAMES)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"classnames '{spec}': use 'imagenet' or the path of a text file, one name per line.")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def recipe_suite(script: ScriptArguments, seed: int = 0, bad_images: str = "fail") -> dict:
    """The recipe's evaluation as a one-dataset suite (its eval split, subset, ε grid and attacks; `bad_images`,
    the training config's, says whether unreadable evaluation images are left out before any cell)."""
    from .attacks import ATTACKS
    from .eval.protocol import generated_suite

    attacks = [a.strip() for a in script.eval_attack.split("+") if a.strip()]
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not attacks:
        raise ValueError(f"--eval_attack {script.eval_attack!r}: unknown attack(s) {unknown}; use '+'-joined names "
                         f"from {', '.join(ATTACKS.names())} (default apgd-ce+apgd-t).")
    return generated_suite(
        dataset=script.dataset_name, split=script.dataset_eval_split, n_samples=script.eval_max_samples, seed=seed,
        batch_size=script.eval_batch_size, epsilons=script.eval_epsilons, steps=script.eval_attack_steps,
        attacks=attacks, n_target_classes=script.eval_target_classes,
        classnames=resolve_classnames(script.classnames) if script.classnames else None,
        templates=script.templates or None, name=f"recipe-{script.dataset_name.replace('|', '_')}",
        corruptions=None if script.eval_corruptions == "none" else {
            "types": script.eval_corruptions, "severities": list(script.eval_corruption_severities),
            "n_samples": script.eval_corruption_samples, "seed": seed, "reference": "none"},
        bad_images=bad_images)


def recipe_evaluator(script: ScriptArguments, output_dir: str | Path, *, seed: int = 0, bf16: bool = False,
                     device=None, progress: bool = True, bad_images: str = "fail"):
    """A `SuiteEvaluator` for the recipe's evaluation: every row (before / after, paradigms, guide) runs through the
    suite runner on `recipe_suite`, worst case per point over the attacks, into `<output_dir>` (`results.json` in the
    one results format, `report.md`, plots, `suite.yaml`)."""
    from .eval.protocol import SuiteEvaluator

    return SuiteEvaluator(recipe_suite(script, seed, bad_images), Path(output_dir), bf16=bf16, device=device,
                          progress=progress)


def reload_spec(model, path: str | Path) -> str:
    """The `create_model` id that reloads a checkpoint saved from `model` at `path`."""
    return f"hf-clip:{path}" if model.backend == "hf-clip" else f"local-dir:{path}"
