from __future__ import annotations

from dataclasses import dataclass, field

from .base_config import RobustTrainingArguments


@dataclass
class DiGraPConfig(RobustTrainingArguments):
    """Configuration of robust fine-tuning of a CLIP classifier with DiGraP (Huang et al., ICLR 2025, arXiv 2502.15895)
    and its baselines, one trainer for all of them.

    The classifier is the image tower plus a cosine head initialised from the zero-shot text embeddings,
    `scale · normalize(φ(x)) · Wᵀ`; the loss is the cross-entropy of its logits, on clean images or (with
    `adversarial`) on the training attack's images. What makes the method is the weight-space hook and the schedule:

    * DiGraP: `weight_space="digrap"` (the default; `digrap_mu`, `digrap_omega_init`, `digrap_learn_omega`);
    * vanilla fine-tuning: `weight_space="none"`; L2-SP: `"l2sp"`; FTP: `"ftp"`; SPD: `"spd"` (their arguments in
      `RobustTrainingArguments`);
    * LP-FT (Kumar et al., arXiv 2202.10054): `lp_steps > 0` with `train_head` — a linear probe of the head on frozen
      features first, then fine-tuning of everything from it;
    * WiSE-FT (Wortsman et al., arXiv 2109.01903): post hoc, `vlmrobust wise-ft` on the saved checkpoint.

    Full fine-tuning of the tower (`lora_r = 0`) or LoRA adapters on it (`lora_r > 0`; θ₀ = 0 for the adapters).

    Args:
        adversarial (`bool`, *optional*, defaults to `False`): train on the training attack's images (the `attack*`
            arguments; the attack maximises the same cross-entropy), as TeCoA does; else on clean images.
        train_head (`bool`, *optional*, defaults to `False`): train the head too; otherwise it stays the frozen
            zero-shot head (CE on zero-shot logits, and the saved tower is evaluated zero-shot).
        head_logit_scale (`float`, *optional*, defaults to 100.0): the head's fixed temperature (CLIP's / TeCoA's).
        prompt_templates (`list[str]`, *optional*): templates of the zero-shot head; defaults to
            `"This is a photo of a {}"`.
        lp_steps (`int`, *optional*, defaults to 0): LP-FT's linear-probe steps (0: no probe). Needs `train_head`.
        lp_learning_rate (`float`, *optional*, defaults to 1e-3): AdamW learning rate of the probe.
        lora_r (`int`, *optional*, defaults to 0): LoRA rank on the tower (0: full fine-tuning).
        lora_alpha (`float`, *optional*): LoRA α; defaults to 2 · `lora_r`.
        lora_dropout (`float`, *optional*, defaults to 0.0): LoRA dropout.
        lora_target_modules (`list[str]`, *optional*): `nn.Linear` names to adapt; default: HF CLIP's q/k/v/out
            projections, or open_clip's MLP `c_fc` / `c_proj`.
    """

    method: str = field(default="digrap", metadata={"help": "Method name."})
    weight_space: str = field(default="digrap", metadata={
        "help": "'digrap' (default), 'none' (vanilla FT), 'l2sp', 'ftp', 'spd', or '+'-joined names."})
    adversarial: bool = field(default=False, metadata={"help": "Train on the training attack's images."})
    train_head: bool = field(default=False, metadata={"help": "Train the head (else the frozen zero-shot head)."})
    head_logit_scale: float = field(default=100.0, metadata={"help": "Fixed temperature of the cosine head."})
    prompt_templates: list[str] = field(default_factory=lambda: ["This is a photo of a {}"],
                                        metadata={"help": "Prompt templates of the zero-shot head."})
    lp_steps: int = field(default=0, metadata={"help": "LP-FT: linear-probe steps before fine-tuning (0: none)."})
    lp_learning_rate: float = field(default=1e-3, metadata={"help": "LP-FT: AdamW learning rate of the probe."})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank on the image tower (0: full fine-tuning)."})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (default 2 * r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "nn.Linear names to adapt (default: q/k/v/out_proj for HF CLIP, c_fc/c_proj for open_clip)."})
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (towards 0)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "LR schedule."})
    warmup_steps: float = field(default=500, metadata={"help": "Linear warm-up steps."})

    def __post_init__(self):
        if self.lp_steps < 0 or self.lora_r < 0:
            raise ValueError(f"lp_steps and lora_r must be >= 0, got {self.lp_steps}, {self.lora_r}.")
        if self.lp_steps and not self.train_head:
            raise ValueError("LP-FT (lp_steps > 0) probes and then fine-tunes the head: set train_head true.")
        super().__post_init__()
