"""R-Adapt: robustness from two small, frozen-backbone changes in the shallow layers (arXiv 2603.12799).

No public code exists; where the paper is silent the choice is a knob of :class:`RAdaptSettings`, marked [recon].

- **Gaussian input filter** (:class:`GaussianInputFilter`): a per-channel Fourier low-pass of the [0, 1] pixels,
  inside the differentiable graph, before the patch embedding.
- **Robustness anchor**: block 1's attention output is mixed with a fixed per-token tensor `A`,
  `h₁ = z + attn_coef · MHSA₁(LN₁(z)) + anchor_coef · A` (paper: `attn_coef = 1 − α`, `anchor_coef = α`).

`A` comes from a uniform white image through the standard model (training-free), through another checkpoint such as
a FARE model (model-guided), or is trained on a few adversarial images (R-Adapt+, `RAdaptTrainer`).

How the anchor reaches block 1 differs per backend; an :class:`AnchorAdapter` subclass per backend (registered in
`ANCHOR_ADAPTERS` under the backend name) says where block 1's attention is, how its output is laid out and which
patch grid an input has: open_clip, transformers CLIP, LLaVA's CLIP tower and Qwen2-VL / Qwen2.5-VL's vision tower
(packed tokens, one anchor per `(grid_t, grid_h, grid_w)`). Wrapping an LVLM gives an :class:`RAdaptLVLM`, whose
`pixel_inputs` (the path of `answer_loss`, `generate`, `rank_answers`) runs the [0, 1] pixels through the filter.
"""

from ...layout import RADAPT_CONFIG_NAME, RADAPT_WEIGHTS_NAME
from ..factory import BACKENDS
from .adapters import (
    ANCHOR_ADAPTERS,
    AnchorAdapter,
    Grid,
    HFCLIPAnchorAdapter,
    LlavaAnchorAdapter,
    OpenCLIPAnchorAdapter,
    QwenVLAnchorAdapter,
    adapter_for,
    block1_attention_output,
    grid_key,
    model_id,
)
from .encoder import RAdaptImageEncoder
from .filter import GaussianInputFilter
from .model import RAdaptLVLM, RAdaptModel, load_radapt
from .settings import PARADIGMS, RAdaptSettings


@BACKENDS.register("radapt")
def _radapt(spec: str, **kw) -> RAdaptModel:
    """`create_model("radapt:<folder>")`: a folder written by `RAdaptModel.save_pretrained`."""
    return load_radapt(spec, **kw)


__all__ = [
    "ANCHOR_ADAPTERS", "PARADIGMS", "RADAPT_CONFIG_NAME", "RADAPT_WEIGHTS_NAME", "AnchorAdapter",
    "GaussianInputFilter", "Grid", "HFCLIPAnchorAdapter", "LlavaAnchorAdapter", "OpenCLIPAnchorAdapter",
    "QwenVLAnchorAdapter", "RAdaptImageEncoder", "RAdaptLVLM", "RAdaptModel", "RAdaptSettings",
    "adapter_for", "block1_attention_output", "grid_key", "load_radapt", "model_id",
]
