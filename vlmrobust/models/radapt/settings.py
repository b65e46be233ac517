"""The settings of an R-Adapt model (saved as `radapt_config.json`) and the R-Adapt file names."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

PARADIGMS = ("training-free", "model-guided", "radapt-plus")


@dataclass
class RAdaptSettings:
    """What an R-Adapt model is, besides its anchor tensors; saved as `radapt_config.json`.

    Args:
        base_model (`str`): `create_model` id of the frozen backbone (reloaded from it).
        paradigm (`str`, *optional*, defaults to `"training-free"`): how the anchor was obtained:
            `"training-free"`, `"model-guided"` or `"radapt-plus"`.
        guide_model (`str`, *optional*): id of the checkpoint the anchor came from (model-guided, or the
            initialisation of R-Adapt+).
        alpha (`float`, *optional*, defaults to 1.0): anchor strength α (paper: ≈ 1, swept 0–2; 0 = no anchor).
        attn_coef (`float`, *optional*): [recon] coefficient of block 1's attention output; `None` = `1 − alpha`.
        anchor_coef (`float`, *optional*): [recon] coefficient of the anchor; `None` = `alpha`.
        gaussian_filter (`bool`, *optional*, defaults to `True`): apply the Gaussian input filter.
        d0 (`float`, *optional*, defaults to 35.0): filter cut-off at `d0_reference_size` px (paper: 30–40 at 224).
        d0_reference_size (`int`, *optional*, defaults to 224): [recon] resolution `d0` refers to.
        d0_scaling (`str`, *optional*, defaults to `"resolution"`): [recon] `"resolution"` (scale D0 with the input
            size) or `"none"`; see :class:`GaussianInputFilter`.
    """

    base_model: str = ""
    paradigm: str = "training-free"
    guide_model: str | None = None
    alpha: float = 1.0
    attn_coef: float | None = None
    anchor_coef: float | None = None
    gaussian_filter: bool = True
    d0: float = 35.0
    d0_reference_size: int = 224
    d0_scaling: str = "resolution"

    def __post_init__(self):
        if self.paradigm not in PARADIGMS:
            raise ValueError(f"paradigm must be one of {PARADIGMS}, got {self.paradigm!r}.")
        if self.d0 <= 0:
            raise ValueError(f"d0 must be > 0, got {self.d0}.")
        if self.d0_scaling not in ("resolution", "none"):
            raise ValueError(f"d0_scaling must be 'resolution' or 'none', got {self.d0_scaling!r}.")

    @property
    def coefficients(self) -> tuple[float, float]:
        """(attn_coef, anchor_coef) with the paper's defaults (1 − α, α) filled in."""
        a = 1.0 - self.alpha if self.attn_coef is None else self.attn_coef
        b = self.alpha if self.anchor_coef is None else self.anchor_coef
        return float(a), float(b)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> RAdaptSettings:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
