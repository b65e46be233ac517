"""Per-layer curvature from squared gradients, and the layer-adaptive perturbation ranks it sets (GRACE's LAR-AWP,
arXiv 2603.27139)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch


def allocate_ranks(curvature: Sequence[float], max_rank: int, *, top_fraction: float = 0.2,
                   bottom_fraction: float = 0.2, middle_rank: int | None = None) -> list[int]:
    """Perturbation rank per layer from its curvature.

    The `round(top_fraction · n)` layers of highest curvature get `max_rank`, the `round(bottom_fraction · n)` of
    lowest curvature none, the others `middle_rank` (rounding half up; ties broken by layer order, earlier layers
    ranking higher).

    Args:
        curvature (`Sequence[float]`): one curvature value per layer.
        max_rank (`int`): rank of the top layers.
        top_fraction (`float`, *optional*, defaults to 0.2): fraction of layers that get `max_rank`.
        bottom_fraction (`float`, *optional*, defaults to 0.2): fraction of layers that get rank 0.
        middle_rank (`int`, *optional*): rank of the others; defaults to `max(1, max_rank // 2)` ([recon]: the paper
            states only the top and bottom groups), 0 when `max_rank` is 0.

    Returns:
        `list[int]`: the rank of each layer, in the order given.
    """
    n = len(curvature)
    if not (0 <= top_fraction <= 1 and 0 <= bottom_fraction <= 1 and top_fraction + bottom_fraction <= 1):
        raise ValueError(f"top_fraction ({top_fraction}) and bottom_fraction ({bottom_fraction}) must be in [0, 1] "
                         "and sum to at most 1.")
    if max_rank < 0:
        raise ValueError(f"max_rank must be >= 0, got {max_rank}.")
    if middle_rank is None:
        middle_rank = max(1, max_rank // 2) if max_rank > 0 else 0
    n_top = math.floor(top_fraction * n + 0.5)
    n_bottom = min(math.floor(bottom_fraction * n + 0.5), n - n_top)
    order = sorted(range(n), key=lambda i: (-float(curvature[i]), i))
    ranks = [middle_rank] * n
    for i in order[:n_top]:
        ranks[i] = max_rank
    for i in order[n - n_bottom:]:
        ranks[i] = 0
    return ranks


class CurvatureEMA:
    """EMA of each layer's mean squared gradient, `h ← β·h + (1 − β)·mean(g ⊙ g)` (a diagonal-Fisher curvature proxy).

    The first update of a layer sets `h = mean(g ⊙ g)` (no zero-initialised bias). The state is keyed by layer name
    and checkpointed through :meth:`state_dict`.

    Args:
        beta (`float`, *optional*, defaults to 0.9): EMA decay β.
    """

    def __init__(self, beta: float = 0.9):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}.")
        self.beta = float(beta)
        self.values: dict[str, float] = {}

    def update(self, name: str, grad: torch.Tensor) -> float:
        """Fold in one layer's (full, whole) gradient; returns the new value."""
        h = float(grad.detach().float().pow(2).mean())
        old = self.values.get(name)
        self.values[name] = h if old is None else self.beta * old + (1.0 - self.beta) * h
        return self.values[name]

    def __getitem__(self, name: str) -> float:
        return self.values[name]

    def state_dict(self) -> dict:
        return {"beta": self.beta, "values": dict(self.values)}

    def load_state_dict(self, state: Mapping) -> None:
        self.values = {k: float(v) for k, v in state["values"].items()}
