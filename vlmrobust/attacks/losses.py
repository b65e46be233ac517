"""Per-sample attack losses (shape `[B]`, to be maximised), as defined by Croce & Hein 2020 (arXiv 2003.01690).

Every loss here has the signature `loss_fn(output, target) -> Tensor[B]` (the targeted DLR loss takes the target
classes as a third argument), so any of them, or a user function with the same signature, can drive an attack.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor


def _check_logits_labels(logits: Tensor, labels: Tensor, name: str, min_classes: int = 2) -> None:
    if logits.dim() != 2:
        raise ValueError(f"{name} expects [B, n_classes] logits, got shape {tuple(logits.shape)}.")
    if labels.is_floating_point() or labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"{name} expects integer class labels of shape [{logits.shape[0]}], got {labels.dtype} "
            f"{tuple(labels.shape)}; for other targets pass your own loss_fn(output, target)."
        )
    if logits.shape[1] < min_classes:
        raise ValueError(f"{name} needs at least {min_classes} classes, got {logits.shape[1]}.")


def ce_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sample cross-entropy `CE(logits, labels)`, shape `[B]`.

    Args:
        logits (`torch.Tensor`): `[B, n_classes]` logits.
        labels (`torch.Tensor`): `[B]` integer class labels.
    """
    _check_logits_labels(logits, labels, "ce_loss")
    return F.cross_entropy(logits.float(), labels.long(), reduction="none")


def dlr_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Difference-of-logits-ratio loss `-(z_y - max_{i≠y} z_i) / (z_π1 - z_π3)`, shape `[B]`.

    π orders the logits decreasingly. The ratio is invariant to shifting and rescaling the logits, which is why APGD
    uses it to avoid the gradient masking that plain CE suffers from on over-confident models.

    Args:
        logits (`torch.Tensor`): `[B, n_classes]` logits, n_classes >= 3.
        labels (`torch.Tensor`): `[B]` integer class labels.
    """
    _check_logits_labels(logits, labels, "dlr_loss", min_classes=3)
    z = logits.float()
    top = z.topk(3, dim=1).values
    z_y = z.gather(1, labels.long()[:, None]).squeeze(1)
    z_other = z.scatter(1, labels.long()[:, None], float("-inf")).amax(dim=1)
    return -(z_y - z_other) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted_loss(logits: Tensor, labels: Tensor, target_labels: Tensor) -> Tensor:
    """Targeted DLR loss `-(z_y - z_t) / (z_π1 - (z_π3 + z_π4) / 2)`, shape `[B]`.

    Args:
        logits (`torch.Tensor`): `[B, n_classes]` logits, n_classes >= 4.
        labels (`torch.Tensor`): `[B]` true class labels.
        target_labels (`torch.Tensor`): `[B]` classes the attack pushes towards.
    """
    _check_logits_labels(logits, labels, "dlr_targeted_loss", min_classes=4)
    _check_logits_labels(logits, target_labels, "dlr_targeted_loss")
    z = logits.float()
    top = z.topk(4, dim=1).values
    z_y = z.gather(1, labels.long()[:, None]).squeeze(1)
    z_t = z.gather(1, target_labels.long()[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def resolve_loss(loss: str | Callable[[Any, Tensor], Tensor]) -> Callable[[Any, Tensor], Tensor]:
    """Map "ce" / "dlr" to the loss function; pass a callable through unchanged."""
    if callable(loss):
        return loss
    table = {"ce": ce_loss, "dlr": dlr_loss}
    key = str(loss).lower()
    if key not in table:
        raise ValueError(f"Unknown loss {loss!r}; use 'ce', 'dlr' or a callable loss_fn(output, target) -> [B].")
    return table[key]


__all__ = ["ce_loss", "dlr_loss", "dlr_targeted_loss", "resolve_loss"]
