from __future__ import annotations

from dataclasses import dataclass, field

from .grace_config import GRACEConfig


@dataclass
class GRACEVQAConfig(GRACEConfig):
    """Configuration of GRACE on an LVLM (LLaVA, Qwen-VL): `GRACEConfig`'s fields, with LoRA on the language model.

    The loss is `CE(x_adv) + λ_LAR · CE_{θ+Δ}(x_adv) + λ_GV · L_GV`, CE the teacher-forced cross-entropy of the
    reference answer (prompt and image tokens masked) on images attacked against that same loss, and `L_GV` the Gram
    volume of the pooled projected image features (the mean over image tokens of what the projector hands the
    language model) of the clean, adversarial and weight-perturbed images. The features depend on trained weights
    only through the image side: the projector is adapted by default ([recon]; with `lora_vision="none"` the volume
    has no gradient and `lambda_gv` must be 0).

    Args:
        lora_target_modules (`list[str]`, *optional*): the language model's linear layers to adapt; defaults to
            `q_proj`, `v_proj` ([recon], as vlmrobust's LVLM LoRA and the FRAMES-VQA LLaVA baseline).
        lora_vision (`str`, *optional*, defaults to `"projector"`): the image side adapted too: `"none"`,
            `"projector"` (LLaVA's `multi_modal_projector`, Qwen-VL's `visual.merger`) or `"tower"` (the projector
            and the vision tower's transformer blocks).
        Other fields: see `GRACEConfig` (`prompt_templates` and `logit_scale` are unused here).
    """

    method: str = field(default="grace_vqa", metadata={"help": "Method name."})
    lora_vision: str = field(default="projector", metadata={
        "help": "Image side adapted besides the language model: none | projector | tower."})

    def __post_init__(self):
        if self.lora_vision not in ("none", "projector", "tower"):
            raise ValueError(f"lora_vision must be 'none', 'projector' or 'tower', got {self.lora_vision!r}.")
        if self.lora_vision == "none" and self.lambda_gv > 0:
            raise ValueError("lambda_gv > 0 needs trained image features: with lora_vision='none' the pooled "
                             "projected image features are frozen and the Gram volume has no gradient; use "
                             "lora_vision='projector' or 'tower', or lambda_gv=0.")
        super().__post_init__()
