"""The Gram volume of embeddings: GRACE's feature-alignment loss (arXiv 2603.27139)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _det3(g: torch.Tensor) -> torch.Tensor:
    """Determinants of a batch of 3×3 matrices by the cofactor expansion (a polynomial: differentiable everywhere,
    also at singular matrices, where `torch.linalg.det`'s backward needs a factorisation)."""
    a, b, c = g[..., 0, 0], g[..., 0, 1], g[..., 0, 2]
    d, e, f = g[..., 1, 0], g[..., 1, 1], g[..., 1, 2]
    h, i, j = g[..., 2, 0], g[..., 2, 1], g[..., 2, 2]
    return a * (e * j - f * i) - b * (d * j - f * h) + c * (d * i - e * h)


def gram_volume(*embeddings: torch.Tensor, eps: float = 1e-6, reduction: str = "mean") -> torch.Tensor:
    """`sqrt(|det G|)`, G the Gram matrix of the L2-normalised embeddings of each sample (GRACE's `L_GV`).

    For GRACE's three embeddings of one image (clean, adversarial, weight-perturbed), `sqrt(det G)` is the volume of
    the parallelepiped they span: 0 when two of them coincide (or all three are coplanar), at most 1 (orthogonal).

    Numerics: the determinant is computed in float64 by the cofactor formula. The square root of a determinant that
    reaches 0 has an unbounded derivative, so the loss is `sqrt(|det G| + eps) − sqrt(eps)`: exactly 0 for identical
    embeddings, with gradients bounded by `|∇ det| / (2·sqrt(eps))`; volumes well above `sqrt(eps)` (the default:
    1e-3) are unchanged to first order, smaller ones are smoothed quadratically. `eps` also keeps the float32
    rounding of two embeddings that should coincide (two forward passes of the same input) from producing a
    sign-like gradient. `eps=0` gives the plain `sqrt(|det G|)`.

    Args:
        *embeddings (`torch.Tensor`): three tensors `(B, D)` (clean, adversarial, weight-perturbed), one row per
            sample; L2-normalised here.
        eps (`float`, *optional*, defaults to 1e-6): added inside the square root (see above).
        reduction (`str`, *optional*, defaults to `"mean"`): `"mean"` over samples, or `"none"` for `(B,)`.

    Returns:
        `torch.Tensor`: the mean volume (a scalar), or one per sample, in the embeddings' floating dtype (float32 at
        least).
    """
    if len(embeddings) != 3:
        raise ValueError(f"gram_volume takes 3 embeddings (clean, adversarial, weight-perturbed), got {len(embeddings)}.")
    shapes = {tuple(e.shape) for e in embeddings}
    if len(shapes) != 1 or embeddings[0].dim() != 2:
        raise ValueError(f"gram_volume takes embeddings of one shape (B, D), got {sorted(shapes)}.")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}.")
    out_dtype = torch.promote_types(embeddings[0].dtype, torch.float32)
    v = torch.stack([F.normalize(e.double(), dim=-1) for e in embeddings], dim=1)  # (B, 3, D)
    det = _det3(v @ v.transpose(1, 2))
    vol = (det.abs() + eps).sqrt() - math.sqrt(eps)
    if reduction == "none":
        return vol.to(out_dtype)
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}.")
    return vol.mean().to(out_dtype)
