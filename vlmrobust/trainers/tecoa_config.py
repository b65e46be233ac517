from __future__ import annotations

from dataclasses import dataclass, field

from .base_config import RobustTrainingArguments


@dataclass
class TeCoAConfig(RobustTrainingArguments):
    """Configuration of TeCoA (Mao et al., ICLR 2023, arXiv 2212.07016), as re-implemented by the FARE authors.

    Args:
        prompt_templates (`list[str]`, *optional*): prompt templates for the frozen class embeddings; defaults to TeCoA's
            single `"This is a photo of a {}"`.
        tecoa_logit_scale (`float`, *optional*, defaults to 100.0): temperature of `scale · cos(φ(x+δ), t_c)`.
    """

    method: str = field(default="tecoa", metadata={"help": "Method name."})
    prompt_templates: list[str] = field(default_factory=lambda: ["This is a photo of a {}"],
                                 metadata={"help": "Prompt templates for the class embeddings."})
    tecoa_logit_scale: float = field(default=100.0, metadata={"help": "Logit scale of the zero-shot head."})
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate."})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "LR schedule."})
    warmup_steps: float = field(default=1400, metadata={"help": "Linear warm-up steps."})
