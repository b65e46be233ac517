"""Zero-shot clean and robust accuracy of CLIP-like models."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ..attacks import build_attack, check_budget

logger = logging.getLogger(__name__)

#: Components that need a minimum number of classes (DLR losses use the 3rd / 4th largest logit).
MIN_CLASSES = {"apgd-dlr": 3, "apgd-t": 4}


@dataclass
class RobustAccuracy:
    """Per-ε results of one attack on one dataset.

    Attributes:
        clean_accuracy (`float`): accuracy on unperturbed images.
        robust_accuracy (`dict[float, float]`): ε -> accuracy under the attack (ε = 0 is clean accuracy).
        n_samples (`int`): number of evaluated images.
        attack (`str`), norm (`str`), steps (`int`), seed (`int`): the attack's settings.
        robust_mask (`dict[float, torch.Tensor]`): ε -> per-sample bool (correct and not broken).
        margins (`torch.Tensor`): clean logit margins (top-1 minus top-2), per sample.
        logit_scale (`float`, *optional*): temperature of the evaluated classifier's logits (what the CE attack
            saw; APGD-T's targeted DLR loss does not depend on it).
        components (`tuple[str, ...]`): the attacks that ran, worst case per point (`attack` is their label).
        skipped_components (`tuple[str, ...]`): attacks of the protocol skipped for too few classes.
    """

    clean_accuracy: float
    robust_accuracy: dict[float, float]
    n_samples: int
    attack: str
    norm: str
    steps: int
    seed: int
    robust_mask: dict[float, torch.Tensor] = field(default_factory=dict, repr=False)
    margins: torch.Tensor | None = field(default=None, repr=False)
    logit_scale: float | None = None
    components: tuple[str, ...] = ()
    skipped_components: tuple[str, ...] = ()

    @property
    def expected_robustness(self) -> float:
        """Mean accuracy over the evaluated ε grid, ε = 0 (clean) included (arXiv 2509.23325)."""
        return expected_robustness({0.0: self.clean_accuracy, **self.robust_accuracy})

    def to_dict(self) -> dict:
        return {
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": {f"{e:.6g}": a for e, a in sorted(self.robust_accuracy.items())},
            "expected_robustness": self.expected_robustness,
            "n_samples": self.n_samples, "attack": self.attack, "attacks": list(self.components or (self.attack,)),
            "skipped_attacks": list(self.skipped_components), "logit_scale": self.logit_scale, "norm": self.norm,
            "steps": self.steps, "seed": self.seed,
        }


def logit_scale_of(classifier: nn.Module) -> float | None:
    """The temperature of a classifier's logits (`ZeroShotClassifier`, `CosineClassifier`, ...), if it has one."""
    scale = getattr(classifier, "logit_scale", None)
    if isinstance(scale, torch.Tensor) and scale.numel() == 1:
        scale = scale.item()
    return round(float(scale), 4) if isinstance(scale, (int, float)) else None


def expected_robustness(accuracy_by_eps: dict[float, float], weights: dict[float, float] | None = None) -> float:
    """Weighted mean of accuracy over a grid of budgets (uniform weights by default; ε = 0 is clean accuracy).

    The grid and weighting are a reconstruction (methods.md, [recon]); both are the caller's choice.
    """
    if not accuracy_by_eps:
        raise ValueError("expected_robustness needs at least one (epsilon, accuracy) pair.")
    w = weights or {e: 1.0 for e in accuracy_by_eps}
    missing = set(accuracy_by_eps) - set(w)
    if missing:
        raise ValueError(f"No weight for epsilon(s) {sorted(missing)}.")
    total = sum(w[e] for e in accuracy_by_eps)
    return sum(w[e] * a for e, a in accuracy_by_eps.items()) / total


def _subset(dataset: Dataset, n_samples: int | None, seed: int) -> Dataset:
    if n_samples is None or n_samples >= len(dataset):
        return dataset
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=g)[:n_samples].sort().values.tolist()
    return Subset(dataset, idx)


def _collate(batch):
    from ..data.classification import is_skipped

    skipped = [getattr(b, "where", "an unreadable image") for b in batch if is_skipped(b)]
    if skipped:  # a skipped unreadable image would shift every point after it, and change n
        raise ValueError(f"Unreadable image {'; '.join(skipped)} met during evaluation: an evaluation never drops a "
                         "point mid-run (its accuracy is over a fixed set of n points, the same for every model, "
                         "attack and budget). Remove or replace the file, or let the suite leave unreadable images "
                         "out before any cell (`bad_images: skip` on the dataset, or `vlmrobust eval --bad-images "
                         "skip`: n counts the rest and every cell records how many were skipped).")
    return torch.stack([torch.as_tensor(b["pixel_values"]) for b in batch]), torch.as_tensor(
        [int(b["labels"]) for b in batch], dtype=torch.long)


@torch.no_grad()
def _margins(logits: torch.Tensor) -> torch.Tensor:
    top2 = logits.float().topk(2, dim=-1).values
    return top2[:, 0] - top2[:, 1]


def evaluate_robust_accuracy(
    classifier: nn.Module,
    dataset: Dataset,
    epsilons: Sequence[float],
    *,
    attack: str = "apgd-ce",
    norm: str = "Linf",
    steps: int = 100,
    batch_size: int = 128,
    n_samples: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    bf16: bool = False,
    progress: bool = True,
    desc: str = "eval",
    attack_kwargs: dict | None = None,
) -> RobustAccuracy:
    """Clean and robust accuracy of `classifier` (pixels in [0,1] -> logits) for each ε.

    Points misclassified when clean are not attacked (they count as non-robust), and a point found
    misclassified at a smaller ε is not attacked at a larger one (it would break there too), so the attacks
    spend their gradient evaluations only where they can change the result.

    Args:
        classifier (`nn.Module`): e.g. `model.zero_shot_classifier(classnames, templates)`.
        dataset (`Dataset`): items with `pixel_values` in [0, 1] and integer `labels`.
        epsilons (`Sequence[float]`): budgets in pixel units (4/255, not 4); 0 entries are skipped.
        attack (`str`, *optional*, defaults to `"apgd-ce"`): a name in `vlmrobust.attacks.ATTACKS`.
        norm (`str`, *optional*, defaults to `"Linf"`): threat model.
        steps (`int`, *optional*, defaults to 100): attack iterations.
        n_samples (`int`, *optional*): evaluate a seeded random subset of this size.
        seed (`int`, *optional*, defaults to 0): attack and subset seed.
        bf16 (`bool`, *optional*, defaults to `False`): bf16 autocast for the model (perturbation stays fp32).
    """
    for e in epsilons:
        check_budget(norm, e)
    eps_sorted = sorted({float(e) for e in epsilons if e > 0})
    data = _subset(dataset, n_samples, seed)
    if len(data) == 0:
        raise ValueError("The evaluation dataset is empty.")
    if device is None:
        device = next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=_collate)
    autocast = (torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16) if bf16
                else contextlib.nullcontext())
    correct_all, margins_all = [], []
    robust_all: dict[float, list[torch.Tensor]] = {e: [] for e in eps_sorted}
    bar = tqdm(total=len(data) * (1 + len(eps_sorted)), desc=desc, unit="img", disable=not progress,
               dynamic_ncols=True)
    try:
        for b, (x, y) in enumerate(loader):
            x, y = x.to(device), y.to(device)
            with torch.no_grad(), autocast:
                logits = classifier(x)
            correct = logits.argmax(-1) == y
            correct_all.append(correct.cpu())
            margins_all.append(_margins(logits).cpu())
            bar.update(len(x))
            alive = correct.clone()
            for e in eps_sorted:
                idx = alive.nonzero().flatten()
                if len(idx):
                    atk = build_attack(attack, classifier, norm=norm, eps=e, steps=steps, seed=seed + b,
                                       **(attack_kwargs or {}))
                    with autocast:
                        res = atk.perturb(x[idx], y[idx])
                    with torch.no_grad(), autocast:
                        still = classifier(res.x_adv).argmax(-1) == y[idx]
                    alive[idx] = still
                robust_all[e].append(alive.cpu().clone())
                bar.update(len(x))
    finally:
        bar.close()
        classifier.train(was_training)
    correct = torch.cat(correct_all)
    masks = {e: torch.cat(v) for e, v in robust_all.items()}
    return RobustAccuracy(
        clean_accuracy=correct.float().mean().item(),
        robust_accuracy={e: m.float().mean().item() for e, m in masks.items()},
        n_samples=len(correct), attack=attack, norm=norm, steps=steps, seed=seed, robust_mask=masks,
        margins=torch.cat(margins_all), logit_scale=logit_scale_of(classifier), components=(attack,),
    )


def evaluate_zero_shot(model, dataset, epsilons: Sequence[float], *, classnames: Sequence[str] | None = None,
                       templates: Sequence[str] | None = None, **kwargs) -> RobustAccuracy:
    """Zero-shot robust accuracy of a `VisionLanguageModel` on a classification dataset.

    `classnames` / `templates` default to the dataset's `.classnames` / `.templates`; other arguments as in
    :func:`evaluate_robust_accuracy`.
    """
    classnames = classnames or getattr(dataset, "classnames", None)
    templates = templates or getattr(dataset, "templates", None)
    if not classnames or not templates:
        raise ValueError("Zero-shot evaluation needs classnames and templates (from the dataset or as arguments).")
    clf = model.zero_shot_classifier(list(classnames), list(templates))
    return evaluate_robust_accuracy(clf, dataset, epsilons, **kwargs)


def _autocast(device: str | torch.device, bf16: bool):
    return (torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16) if bf16
            else contextlib.nullcontext())


@torch.no_grad()
def predict(
    classifier: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    bf16: bool = False,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "clean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean predictions of `classifier` on `dataset`: `(correct [n] bool, logit margins [n] float)` on the CPU."""
    device = device or next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_collate, num_workers=num_workers)
    correct, margins = [], []
    try:
        with tqdm(total=len(dataset), desc=desc, unit="img", disable=not progress, dynamic_ncols=True,
                  leave=False) as bar:
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                with _autocast(device, bf16):
                    logits = classifier(x)
                correct.append(((logits.argmax(-1) == y) & torch.isfinite(logits).all(-1)).cpu())
                margins.append(_margins(logits).cpu())
                bar.update(len(x))
    finally:
        classifier.train(was_training)
    return torch.cat(correct), torch.cat(margins)


def attack_survivors(
    classifier: nn.Module,
    dataset: Dataset,
    indices: Sequence[int],
    eps: float,
    *,
    attacks: Sequence[str] = ("apgd-ce",),
    norm: str = "Linf",
    steps: int = 100,
    seed: int = 0,
    batch_size: int = 128,
    n_classes: int | None = None,
    attack_kwargs: dict[str, dict] | None = None,
    device: str | torch.device | None = None,
    bf16: bool = False,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "attack",
) -> tuple[torch.Tensor, dict[str, int]]:
    """Attack the points `indices` of `dataset` at one budget; return which survive every attack.

    Several attacks are a worst case per sample: each runs only on the points all earlier ones failed to break
    (AutoAttack's scheme), so a point counts as robust only if it survives all of them. The verdict is always a fresh
    forward pass on the returned adversarial images after checking they lie in the ε-ball and the [0, 1] box, so an
    attack's own bookkeeping cannot over- or under-report. Pass only points that are still robust (clean-correct, or
    robust at a smaller ε): a point broken at a smaller budget is broken at a larger one too.

    Args:
        classifier (`nn.Module`): [0, 1] pixels -> logits.
        dataset (`Dataset`): items with `pixel_values` and `labels`.
        indices (`Sequence[int]`): positions of `dataset` to attack.
        eps (`float`): budget in pixel units.
        attacks (`Sequence[str]`, *optional*, defaults to `("apgd-ce",)`): registered attack names, run in order.
        norm (`str`), steps (`int`), seed (`int`): as in `build_attack`; batch `b` uses seed `seed + b`.
        n_classes (`int`, *optional*): number of classes; needed by "autoattack", and components that need more
            classes than there are ("apgd-t" needs 4, "apgd-dlr" 3) are skipped and reported (inside AutoAttack,
            APGD-T is dropped from its list for fewer than 4 classes).
        attack_kwargs (`dict[str, dict]`, *optional*): extra constructor arguments per attack name.
        bf16 (`bool`, *optional*, defaults to `False`): bf16 autocast for the model; perturbations stay fp32.

    Returns:
        `(survived, broken_by)`: bool `[len(indices)]` on the CPU, and `{attack: number of points it broke}` (a
        skipped attack maps to -1).
    """
    from ..attacks.autoattack import _VERSIONS as _AA_VERSIONS
    from ..attacks.base import canonical_norm, per_sample_norm

    check_budget(norm, eps)
    canon = canonical_norm(norm)
    device = device or next(classifier.parameters()).device
    indices = [int(i) for i in indices]
    broken_by = {a: 0 for a in attacks}
    runnable = []
    for a in attacks:
        if n_classes is not None and n_classes < MIN_CLASSES.get(a, 2):
            broken_by[a] = -1
        else:
            runnable.append(a)
    survived = torch.ones(len(indices), dtype=torch.bool)
    if not indices or not runnable:
        return survived, broken_by
    was_training = classifier.training
    classifier.eval()
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, collate_fn=_collate,
                        num_workers=num_workers)
    autocast = _autocast(device, bf16)
    out = []
    try:
        with tqdm(total=len(indices), desc=desc, unit="img", disable=not progress, dynamic_ncols=True,
                  leave=False) as bar:
            for b, (x, y) in enumerate(loader):
                x, y = x.to(device), y.to(device)
                alive = torch.ones(len(x), dtype=torch.bool, device=device)
                for name in runnable:
                    # One host sync per batch and attack, none inside the attack's iterations.
                    idx = alive.nonzero().flatten()
                    if idx.numel() == 0:
                        break
                    kwargs = dict((attack_kwargs or {}).get(name, {}))
                    if name == "autoattack":
                        kwargs.setdefault("n_classes", n_classes)
                        if n_classes is not None and n_classes < MIN_CLASSES["apgd-t"] and "attacks_to_run" not in kwargs:
                            # e.g. PCAM's 2 classes: run AutoAttack's other components rather than fail
                            kwargs["attacks_to_run"] = [a for a in _AA_VERSIONS[kwargs.get("version", "standard")]
                                                        if a != "apgd-t"]
                    atk = build_attack(name, classifier, norm=norm, eps=eps, steps=steps, seed=seed + b, **kwargs)
                    with autocast:
                        res = atk.perturb(x[idx], y[idx])
                    # a NaN / Inf adversarial point (or logit) is never counted as robust: it counts as broken
                    finite = torch.isfinite(res.x_adv.detach().flatten(1)).all(1)
                    x_adv = torch.where(finite.view(-1, *[1] * (x.dim() - 1)), res.x_adv, x[idx])
                    dist = per_sample_norm((x_adv.float() - x[idx].float()), canon)
                    if bool((dist > eps * (1 + 1e-4) + 1e-6).any()) or bool(
                            (x_adv < 0).any() | (x_adv > 1).any()):
                        raise RuntimeError(f"{name} returned points outside the {canon} ball of radius {eps:.6g} or "
                                           "the [0, 1] box; refusing to count them.")
                    with torch.no_grad(), autocast:
                        logits = classifier(res.x_adv)
                    still = (logits.argmax(-1) == y[idx]) & finite & torch.isfinite(logits).all(-1)
                    if not bool(finite.all()):
                        logger.warning("%s returned %d non-finite (NaN / Inf) points: counted as broken.", name,
                                       int((~finite).sum()))
                    broken_by[name] += int((~still).sum())
                    alive[idx] = still
                out.append(alive.cpu())
                bar.update(len(x))
    finally:
        classifier.train(was_training)
    return torch.cat(out), broken_by
