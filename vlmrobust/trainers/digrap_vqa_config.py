from __future__ import annotations

from dataclasses import dataclass, field

from .base_config import RobustTrainingArguments


@dataclass
class DiGraPVQAConfig(RobustTrainingArguments):
    """Configuration of LoRA fine-tuning of an LVLM (LLaVA, Qwen-VL) on VQA answers with DiGraP (Huang et al., ICLR
    2025, arXiv 2502.15895) or one of its baselines, one trainer for all of them (`DiGraPVQATrainer`).

    The loss is the teacher-forced cross-entropy of the reference answer (prompt and image tokens masked), on clean
    images or (with `adversarial`) on the training attack's images against that same loss, as GRACE's LVLM trainer
    does. The method is the weight-space hook, as in `DiGraPConfig` (CLIP): `weight_space` = `digrap` (default;
    `digrap_mu`, `digrap_omega_init`, `digrap_learn_omega`), `none` (vanilla LoRA), `l2sp`, `ftp`, `spd`; θ₀ = 0 for
    the LoRA adapter tensors (B·A = 0 is the pretrained model). LP-FT: `lp_steps`; WiSE-FT of the LoRA delta:
    `wise_alphas` of `recipes/digrap_vqa.py` (post hoc, `vlmrobust.models.lora.lora_scale`).

    Args:
        adversarial (`bool`, *optional*, defaults to `False`): train on the training attack's images (the `attack*`
            arguments: PGD-10 at ε = 4/255 L-inf by default, maximising the answer cross-entropy); else clean images.
        lora_r (`int`, *optional*, defaults to 4): LoRA rank (LLaVA-1.5 in FRAMES-VQA: 4 on q / v); must be >= 1.
        lora_alpha (`float`, *optional*): LoRA α; defaults to 2r.
        lora_dropout (`float`, *optional*, defaults to 0.0): LoRA dropout.
        lora_target_modules (`list[str]`, *optional*, defaults to `["q_proj", "v_proj"]`): linear layers of the
            language model to adapt.
        lora_vision (`str`, *optional*, defaults to `"none"`): the image side adapted too: `"none"`, `"projector"`
            or `"tower"` (`vlmrobust.models.lora.add_lvlm_lora`).
        lp_steps (`int`, *optional*, defaults to 0): LP-FT (Kumar et al., arXiv 2202.10054): first train the language
            model's output head alone (every other weight frozen, clean images, AdamW at `lp_learning_rate`, the
            same seeded batches on every process) for this many steps, then fine-tune the LoRA adapters *and* the
            probed head; the probed head is the head's θ₀ for the weight-space hooks and is written to
            `output_dir/lp_head.safetensors` (what a resume reads). 0: no probe, the head stays frozen.
        lp_learning_rate (`float`, *optional*, defaults to 1e-3): the probe's AdamW learning rate.
    """

    method: str = field(default="digrap_vqa", metadata={"help": "Method name."})
    weight_space: str = field(default="digrap", metadata={
        "help": "'digrap' (default), 'none' (vanilla LoRA), 'l2sp', 'ftp', 'spd', or '+'-joined names."})
    adversarial: bool = field(default=False, metadata={"help": "Train on the training attack's images."})
    lora_r: int = field(default=4, metadata={"help": "LoRA rank (>= 1)."})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (default 2r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"],
                                           metadata={"help": "Language-model projections to adapt."})
    lora_vision: str = field(default="none", metadata={
        "help": "Image side adapted besides the language model: none | projector | tower."})
    lp_steps: int = field(default=0, metadata={"help": "LP-FT: output-head probe steps before LoRA (0: none)."})
    lp_learning_rate: float = field(default=1e-3, metadata={"help": "LP-FT: the probe's learning rate."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW peak learning rate."})
    max_steps: int = field(default=300, metadata={"help": "LoRA fine-tuning steps."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (towards 0)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "LR schedule."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Linear warm-up: steps, or a fraction (< 1) of them."})

    def __post_init__(self):
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1 (DiGraP for VQA trains LoRA adapters on the language model), got "
                             f"{self.lora_r}; set e.g. --lora_r 4.")
        if self.lp_steps < 0:
            raise ValueError(f"lp_steps must be >= 0, got {self.lp_steps}.")
        if self.lora_vision not in ("none", "projector", "tower"):
            raise ValueError(f"lora_vision must be 'none', 'projector' or 'tower', got {self.lora_vision!r}.")
        if not self.lora_target_modules and self.lora_vision == "none":
            raise ValueError("Nothing to adapt: lora_target_modules is empty and lora_vision='none'; name the "
                             "language model's projections (e.g. --lora_target_modules q_proj v_proj).")
        super().__post_init__()
