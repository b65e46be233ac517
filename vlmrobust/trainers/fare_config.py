from __future__ import annotations

from dataclasses import dataclass, field

from .base_config import RobustTrainingArguments


@dataclass
class FAREConfig(RobustTrainingArguments):
    """Configuration of FARE (Schlarmann et al., ICML 2024, arXiv 2402.12336).

    Defaults follow the paper's reference setting (AdamW lr 1e-5, wd 1e-4, cosine with 1,400 warm-up steps,
    PGD-10 with step 1/255, ε = 4/255); steps and batch size come from the recipe config.

    Args:
        fare_loss (`str`, *optional*, defaults to `"l2sq"`): `"l2sq"` = ‖φ_θ(x+δ) − φ_orig(x)‖²₂ summed over the
            embedding and averaged over the batch (the paper); `"l2"` uses the unsquared norm.
        log_clean_loss (`bool`, *optional*, defaults to `True`): on logging steps, also log the clean-image loss
            (one extra no-grad forward on those steps only).
    """

    method: str = field(default="fare", metadata={"help": "Method name."})
    fare_loss: str = field(default="l2sq", metadata={"help": "'l2sq' (paper) or 'l2'."})
    log_clean_loss: bool = field(default=True, metadata={"help": "Log the clean loss on logging steps."})
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate."})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "LR schedule."})
    warmup_steps: float = field(default=1400, metadata={"help": "Linear warm-up steps."})

    def __post_init__(self):
        if self.fare_loss not in ("l2sq", "l2"):
            raise ValueError(f"fare_loss must be 'l2sq' or 'l2', got '{self.fare_loss}'.")
        super().__post_init__()
