from __future__ import annotations

from dataclasses import dataclass, field

from ..models.radapt import RAdaptSettings
from .fare_config import FAREConfig


@dataclass
class RAdaptConfig(FAREConfig):
    """Configuration of R-Adapt+ (Nie et al., arXiv 2603.12799): train only the robustness anchor.

    The backbone stays frozen; the anchor starts from the training-free one (or a guide model's) and is trained on a
    small adversarial set with FARE's loss `‖f_A(x_adv) − f_orig(x)‖²` ([recon]: the paper's default; `fare_loss`
    chooses the squared or plain norm), f_orig being the standard model without filter or anchor. ε = 4/255 as in the
    paper. The optimiser defaults are [recon] (the paper gives none): AdamW lr 1e-3 without weight decay (decay would
    pull the anchor towards zero, i.e. towards "no anchor") and no warm-up.

    Args:
        alpha (`float`, *optional*, defaults to 1.0): anchor strength α.
        attn_coef (`float`, *optional*): [recon] coefficient of block 1's attention output; default `1 − alpha`.
        anchor_coef (`float`, *optional*): [recon] coefficient of the anchor; default `alpha`.
        gaussian_filter (`bool`, *optional*, defaults to `True`): apply the Gaussian input filter.
        d0 (`float`, *optional*, defaults to 35.0): filter cut-off at `d0_reference_size` px.
        d0_reference_size (`int`, *optional*, defaults to 224): [recon] resolution `d0` refers to.
        d0_scaling (`str`, *optional*, defaults to `"resolution"`): [recon] `"resolution"` or `"none"`.
        anchor_init (`str`, *optional*, defaults to `"training-free"`): initial anchor, `"training-free"` (the paper)
            or `"model-guided"` (from `guide_model`).
        guide_model (`str`, *optional*): `create_model` id of the guide checkpoint (e.g. a FARE model) for
            `anchor_init="model-guided"` and for the recipe's model-guided paradigm.
    """

    method: str = field(default="radapt", metadata={"help": "Method name."})
    alpha: float = field(default=1.0, metadata={"help": "Anchor strength alpha (0 = no anchor)."})
    attn_coef: float | None = field(default=None, metadata={"help": "Coefficient of block-1 attention; 1-alpha."})
    anchor_coef: float | None = field(default=None, metadata={"help": "Coefficient of the anchor; default alpha."})
    gaussian_filter: bool = field(default=True, metadata={"help": "Apply the Gaussian input low-pass filter."})
    d0: float = field(default=35.0, metadata={"help": "Filter cut-off (index units) at d0_reference_size px."})
    d0_reference_size: int = field(default=224, metadata={"help": "Resolution d0 refers to."})
    d0_scaling: str = field(default="resolution", metadata={"help": "'resolution' (scale D0 with size) or 'none'."})
    anchor_init: str = field(default="training-free", metadata={"help": "'training-free' or 'model-guided'."})
    guide_model: str | None = field(default=None, metadata={"help": "Guide checkpoint id (e.g. a FARE model)."})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate of the anchor."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (0: keep the anchor's scale)."})
    warmup_steps: float = field(default=0, metadata={"help": "Linear warm-up steps."})

    def __post_init__(self):
        if self.anchor_init not in ("training-free", "model-guided"):
            raise ValueError(f"anchor_init must be 'training-free' or 'model-guided', got {self.anchor_init!r}.")
        if self.anchor_init == "model-guided" and not self.guide_model:
            raise ValueError("anchor_init='model-guided' needs --guide_model (e.g. "
                             "'local-dir:outputs/quickstart-fare').")
        self.radapt_settings()  # validates d0 / d0_scaling
        super().__post_init__()

    def radapt_settings(self, base_model: str = "", paradigm: str = "radapt-plus") -> RAdaptSettings:
        """The model-side settings (:class:`RAdaptSettings`) these arguments describe."""
        guide = self.guide_model if (paradigm == "model-guided" or self.anchor_init == "model-guided") else None
        return RAdaptSettings(base_model=base_model, paradigm=paradigm, guide_model=guide, alpha=self.alpha,
                              attn_coef=self.attn_coef, anchor_coef=self.anchor_coef,
                              gaussian_filter=self.gaussian_filter, d0=self.d0,
                              d0_reference_size=self.d0_reference_size, d0_scaling=self.d0_scaling)
