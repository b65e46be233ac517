"""The one robustness-evaluation protocol behind every number vlmrobust reports (recipes' before / after, model
cards, README tables, suites): per point, the worst case of APGD-CE and APGD-T (targeted DLR, invariant to the
logit scale), run by the suite runner on a named or generated suite, with the classifier's logit scale recorded next
to each number. The LVLM recipes evaluate the same way, on a generated VQA suite (`generated_vqa_suite`); every
recipe's `results.json` is the suite runner's file (`vlmrobust.results/v2`) plus its `run` section.

APGD-CE alone on a zero-shot head at a low learned logit scale (the digits stand-in's is ~13) can overstate robust
accuracy by ~20 points for models trained against the logits (TeCoA, AT / TRADES): the cross-entropy saturates and
gives the attack little gradient. APGD-T's targeted DLR loss is a ratio of logit differences, so it does not depend
on the scale.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..utils.io import atomic_write_json, atomic_write_text
from .tables import describe_attacks
from .zero_shot import RobustAccuracy

#: the attacks of every reported robust accuracy, worst case per point (AutoAttack's "fast" pair)
WORST_CASE_ATTACKS: tuple[str, ...] = ("apgd-ce", "apgd-t")
#: APGD-T's target classes (AutoAttack's standard 9; capped at n_classes - 1)
N_TARGET_CLASSES = 9


class TrainedClassifier(nn.Module):
    """A trained classifier (e.g. AT / TRADES's `CosineClassifier`: encoder + head) in place of a model's zero-shot
    head, so that it is evaluated by the same runner and protocol as zero-shot models.

    Args:
        model (`VisionLanguageModel`): the model the classifier was trained from (resolution, preprocessing).
        classifier (`nn.Module`): [0, 1] pixels -> logits, classes in `classnames` order.
        classnames (`Sequence[str]`): the classes of the classifier's head.
    """

    def __init__(self, model, classifier: nn.Module, classnames: Sequence[str]):
        super().__init__()
        self.classifier = classifier
        self.classnames = list(classnames)
        self.image_size = model.image_size
        self.backend = getattr(model, "backend", "base")
        self.name_or_path = getattr(model, "name_or_path", type(classifier).__name__)
        self._preprocess = model.preprocess

    def preprocess(self, image):
        return self._preprocess(image)

    def zero_shot_classifier(self, classnames: Sequence[str], templates: Sequence[str] | None = None) -> nn.Module:
        if list(classnames) != self.classnames:
            raise ValueError(f"this trained classifier's head has the classes {self.classnames[:5]}..., the dataset "
                             f"{list(classnames)[:5]}...: evaluate it on the dataset it was trained for (same "
                             "classnames, same order).")
        return self.classifier


def generated_suite(*, dataset: str, split: str = "test", n_samples: int | None = None, seed: int = 0,
                    batch_size: int = 128, epsilons: Sequence[float], steps: int = 100,
                    attacks: Sequence[str] = WORST_CASE_ATTACKS, norm: str = "Linf",
                    n_target_classes: int = N_TARGET_CLASSES, classnames: list[str] | None = None,
                    templates: str | list[str] | None = None, name: str = "recipe",
                    corruptions: dict | None = None, bad_images: str = "fail") -> dict:
    """A one-dataset suite mapping (for `load_suite`) that evaluates `dataset` under `attacks` at `epsilons`.

    Args:
        dataset (`str`): anything `load_classification_dataset` takes (`digits`, a Hub id, `imagefolder:<dir>`).
        classnames / templates: the dataset's own when `None`.
        attacks (`Sequence[str]`, *optional*, defaults to `WORST_CASE_ATTACKS`): worst case per point over these.
        corruptions (`dict`, *optional*): the dataset's `corruptions:` block (common corruptions as the OOD axis;
            the recipe's report then adds the ID / OOD / adversarial trade-off and its harmonic mean).
        bad_images (`str`, *optional*, defaults to `"fail"`): `"skip"` leaves the evaluated subset's unreadable
            images out before any cell (recorded in every cell); `"fail"` stops at the first, naming it.
    """
    entry: dict[str, Any] = {
        "name": dataset.replace("|", "_"), "source": dataset, "split": split, "n_samples": n_samples, "seed": seed,
        "batch_size": batch_size, "classnames": classnames, "templates": templates,
        "attacks": [{"attack": list(attacks), "norm": norm, "eps": sorted(float(e) for e in epsilons if e > 0),
                     "steps": steps, "seed": seed,
                     "options": {"apgd-t": {"n_target_classes": n_target_classes}} if "apgd-t" in attacks else {}}]}
    if corruptions:
        entry["corruptions"] = dict(corruptions)
    if bad_images != "fail":
        entry["bad_images"] = bad_images
    desc = (f"{describe_attacks(attacks)} ({steps} iterations each"
            + (f", {n_target_classes} target classes" if "apgd-t" in attacks else "") + f"), {norm}, seed {seed}")
    return {"name": name, "description": desc, "datasets": [entry]}


def generated_vqa_suite(*, source: str, n_samples: int | None, split: str | None = None, seed: int = 0,
                        attack_seed: int = 0,
                        batch_size: int = 16, epsilons: Sequence[float], steps: int = 100, answer_mode: str = "rank",
                        ensemble: bool = True, targets: Sequence[str] = (), max_references: int | None = None,
                        vqa: dict | None = None, nested_eps: bool = False, name: str = "recipe-vqa") -> dict:
    """A one-dataset VQA suite mapping (for `load_suite`): VQA accuracy of `source`, clean and under APGD on the
    answer loss at `epsilons` (the LVLM recipes' evaluation).

    Args:
        source (`str`): `shapes-vqa`, `vqa-json` (files in `vqa`) or a Hub id.
        split (`str`, *optional*): the split of a Hub dataset (the suite's default when `None`).
        seed (`int`, *optional*, defaults to 0): seed of the evaluated questions (the generator's, or the subset's).
        attack_seed (`int`, *optional*, defaults to 0): seed of the attacks.
        nested_eps (`bool`, *optional*, defaults to `False`): `False` attacks every ε from the clean images in the
            dataset's batches (`evaluate_vqa`'s protocol, which the recipes' tables were measured with).
        vqa (`dict`, *optional*): more fields of the dataset's `vqa:` block (e.g. the vqa-json files).
    """
    attack: dict[str, Any] = {"attack": "apgd", "label": "apgd-ensemble" if ensemble else "apgd", "norm": "Linf",
                              "eps": sorted(float(e) for e in epsilons if e > 0), "steps": steps, "seed": attack_seed,
                              "ensemble": ensemble, "max_references": max_references, "nested_eps": nested_eps}
    if targets:
        attack["targets"] = list(targets)
    entry: dict[str, Any] = {"name": "vqa" if source == "vqa-json" else source.replace("|", "_"), "task": "vqa",
                             "source": source, "n_samples": n_samples, "seed": seed, "batch_size": batch_size,
                             "vqa": {"answer_mode": answer_mode, **(vqa or {})},
                             "attacks": [attack] if attack["eps"] else []}
    if split:
        entry["split"] = split
    desc = (f"VQA accuracy ({answer_mode}), clean and under APGD on the answer loss ({steps} iterations, "
            + ("ensemble over the reference answers" if ensemble else "the majority answer")
            + (f" + targeted runs {list(targets)}" if targets else "") + f"), seed {attack_seed}")
    return {"name": name, "description": desc, "datasets": [entry]}


class SuiteEvaluator:
    """Evaluates models one at a time on a (generated or named) suite through `run_suite`, into one folder, and
    writes the recipe's `run` section (its rows, method, config) into the same `results.json`.

    The first call of an evaluator starts a fresh `results.json` (a recipe rerun into the same folder must not reuse
    cells of an earlier, differently trained model of the same name); later calls add their model's cells to it, so
    the folder's `report.md` compares every model evaluated (before / after, paradigms, guide).

    Args:
        suite (`dict`): a suite mapping (see `generated_suite`, `generated_vqa_suite`).
        output_dir (`str`): folder of `results.json`, `report.md`, plots and `suite.yaml` (the suite, so that
            `vlmrobust eval --suite <output_dir>/suite.yaml` reproduces any row).
        bf16 (`bool`, *optional*, defaults to `False`): bf16 autocast for the models.
        device (`str`, *optional*): defaults to CUDA when available.
        progress (`bool`, *optional*, defaults to `True`): progress bars.
    """

    def __init__(self, suite: dict, output_dir: str | os.PathLike, *, bf16: bool = False,
                 device: str | torch.device | None = None, progress: bool = True):
        from .suite import load_suite

        self.raw = suite
        self.suite = load_suite(suite)
        self.output_dir = Path(output_dir)
        self.bf16, self.device, self.progress = bf16, device, progress
        self._fresh = True
        self.rows: list[str] = []
        self.seconds: dict[str, float] = {}
        self.results: dict = {}

    def __call__(self, name: str, model) -> dict:
        """Evaluate `model` (a `VisionLanguageModel`, an LVLM, a `TrainedClassifier` or a `create_model` id) as row
        `name`; returns the results dict (every row so far)."""
        import time

        from .runner import run_suite

        if "|" in name:
            raise ValueError(f"model name {name!r} must not contain '|'.")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.output_dir / "suite.yaml", yaml.safe_dump(self.raw, sort_keys=False))
        t0 = time.time()
        self.results = run_suite({name: model}, self.suite, self.output_dir, device=self.device, bf16=self.bf16,
                                 resume=not self._fresh, progress=self.progress)
        self._fresh = False
        self.rows = [r for r in self.rows if r != name] + [name]
        self.seconds[name] = round(time.time() - t0, 1)
        return self.results

    def robust_accuracy(self, name: str) -> RobustAccuracy:
        """Row `name`'s clean and robust accuracy on the suite's (classification) dataset, from its cells."""
        from .tasks.classification import robust_accuracy

        out = robust_accuracy(self.results, name)
        out.seconds = self.seconds.get(name)
        return out

    def finish(self, *, title: str, intro: str = "", **info: Any) -> dict:
        """Write the `run` section (the rows evaluated, in order; `title`, `intro` and `info` such as `method`,
        `model`, `config`, `timings`) into `results.json` and render `report.md` with the recipe's header."""
        from .report import write_suite_report
        from .results import RESULTS_NAME, load_results

        results = load_results(self.output_dir)
        results["run"] = {"title": title, "intro": intro, "rows": list(self.rows), **info}
        results["summary"] = write_suite_report(results, self.output_dir)
        atomic_write_json(self.output_dir / RESULTS_NAME, results)
        self.results = results
        return results


__all__ = ["N_TARGET_CLASSES", "SuiteEvaluator", "TrainedClassifier", "WORST_CASE_ATTACKS", "generated_suite",
           "generated_vqa_suite"]
