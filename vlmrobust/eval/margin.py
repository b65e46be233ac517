"""Margin consistency (Youssef et al., arXiv 2406.18451): logit margins as a cheap stand-in for input-space margins.

For a margin-consistent (typically robust) model, the clean logit margin (top-1 minus top-2 logit) ranks points like
their input-space margin (the norm of the smallest perturbation that changes the prediction). Then the robust
accuracy of a large set can be estimated by attacking a small subset only: pick the logit-margin threshold λ at
which the subset's "correct with margin > λ" fraction equals its attacked robust accuracy, and count the correct
points of the whole set with margin > λ. Kendall τ on the subset tells whether the estimate deserves trust.

Input-space margins here are the smallest perturbation FAB-T (arXiv 1907.02044; torchattacks' implementation)
finds over several target classes: an upper bound of the true margin, as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class MarginEstimate:
    """The margin-based robust-accuracy estimate for one budget.

    Attributes:
        threshold (`float`): λ, the logit margin above which a correct point is predicted robust.
        estimate (`float`): estimated robust accuracy of the whole set.
        subset_robust_accuracy (`float`): attacked robust accuracy of the subset that fixed λ.
        subset_size (`int`): points in the subset.
    """

    threshold: float
    estimate: float
    subset_robust_accuracy: float
    subset_size: int


def margin_threshold(margins: Tensor, correct: Tensor, robust: Tensor) -> float:
    """λ such that the number of correct subset points with margin > λ equals the number of robust ones.

    Args:
        margins (`torch.Tensor`): clean logit margins of the subset `[m]`.
        correct (`torch.Tensor`): bool `[m]`, clean prediction right.
        robust (`torch.Tensor`): bool `[m]`, right and not broken by the attack (implies `correct`).
    """
    k = int(robust.sum())
    m = margins[correct.bool()].float().sort(descending=True).values
    if k >= len(m):
        return float("-inf")
    if k == 0:  # (m is not empty: k >= len(m) above)
        return float(m[0])
    # midway between the k-th and (k+1)-th largest margin: exactly k points lie above it (ties aside)
    return float((m[k - 1] + m[k]) / 2)


def estimate_robust_accuracy(margins: Tensor, correct: Tensor, subset: Tensor, subset_robust: Tensor) -> MarginEstimate:
    """Estimate robust accuracy on the whole set from an attacked subset and clean logit margins.

    Args:
        margins (`torch.Tensor`): clean logit margins of all `n` points.
        correct (`torch.Tensor`): bool `[n]`, clean prediction right.
        subset (`torch.Tensor`): long `[m]`, indices of the attacked subset.
        subset_robust (`torch.Tensor`): bool `[m]`, robust under the attack (per subset point).
    """
    subset = subset.long()
    lam = margin_threshold(margins[subset], correct[subset], subset_robust)
    est = (correct.bool() & (margins.float() > lam)).float().mean().item()
    return MarginEstimate(threshold=lam, estimate=est, subset_robust_accuracy=subset_robust.float().mean().item(),
                          subset_size=len(subset))


def kendall_tau(logit_margins: Tensor, input_margins: Tensor) -> tuple[float, float]:
    """Kendall τ-b (and its p-value) between two per-sample margin vectors (`scipy.stats.kendalltau`)."""
    from scipy.stats import kendalltau

    a, b = logit_margins.double().cpu().numpy(), input_margins.double().cpu().numpy()
    if len(a) < 2:
        return float("nan"), float("nan")
    res = kendalltau(a, b)
    return float(res.statistic), float(res.pvalue)


def input_margins(
    classifier: nn.Module | Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    *,
    norm: str = "Linf",
    steps: int = 100,
    n_target_classes: int = 9,
    max_norm: float = 1.0,
    seed: int = 0,
    batch_size: int = 128,
) -> Tensor:
    """Smallest adversarial perturbation norm FAB-T finds per point (0 where already misclassified).

    FAB-T runs once per target class (the 2nd, 3rd, ... highest clean logit) and the smallest norm that flips the
    prediction is kept; points FAB cannot flip get `max_norm`. The global RNG is left as it was.

    Args:
        classifier (`nn.Module` or `Callable`): [0, 1] pixels -> logits.
        images (`torch.Tensor`): `[m, C, H, W]` in [0, 1].
        labels (`torch.Tensor`): `[m]` class labels.
        norm (`str`, *optional*, defaults to `"Linf"`): "Linf" or "L2".
        steps (`int`, *optional*, defaults to 100): FAB iterations per target.
        n_target_classes (`int`, *optional*, defaults to 9): clipped to n_classes − 1.
        max_norm (`float`, *optional*, defaults to 1.0): value for points FAB cannot flip.
        seed (`int`, *optional*, defaults to 0): FAB's seed.
        batch_size (`int`, *optional*, defaults to 128): points per FAB call.
    """
    import torchattacks

    from ..attacks.autoattack import _TorchattacksModel
    from ..attacks.base import canonical_norm, eval_mode, per_sample_norm

    norm = canonical_norm(norm)
    device = images.device
    devices = [device.index or 0] if device.type == "cuda" else []
    out = torch.full((len(images),), float(max_norm))
    with torch.random.fork_rng(devices=devices), eval_mode(classifier):
        torch.manual_seed(seed)

        def call(x: Tensor) -> Tensor:
            return classifier(x).float()

        wrapped = _TorchattacksModel(call, device)
        with torch.no_grad():
            n_classes = call(images[:1]).shape[1]
        fab = torchattacks.FAB(wrapped, norm=norm, eps=max_norm, steps=steps, n_restarts=1, seed=seed,
                               multi_targeted=True, n_classes=n_classes)
        k = min(n_target_classes, n_classes - 1)
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].float()
            y = labels[start:start + batch_size].to(device)
            with torch.no_grad():
                pred = call(x).argmax(1)
            best = torch.where(pred == y, torch.full((len(x),), float(max_norm), device=device),
                               torch.zeros(len(x), device=device))
            for rank in range(2, k + 2):
                fab.target_class = rank
                adv = fab.attack_single_run_targeted(x, y).detach().float().clamp(0, 1)
                with torch.no_grad():
                    flipped = call(adv).argmax(1) != y
                dist = per_sample_norm(adv - x, norm)
                best = torch.where(flipped & (pred == y), torch.minimum(best, dist), best)
            out[start:start + len(x)] = best.cpu()
    return out


__all__ = ["MarginEstimate", "estimate_robust_accuracy", "input_margins", "kendall_tau", "margin_threshold"]
