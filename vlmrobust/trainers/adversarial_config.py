from __future__ import annotations

from dataclasses import dataclass, field

from .base_config import RobustTrainingArguments


@dataclass
class AdversarialConfig(RobustTrainingArguments):
    """Classic adversarial training and TRADES on a CLIP classifier (the study of arXiv 2508.14079).

    The classifier is the image encoder plus a linear head initialised from the zero-shot text embeddings.
    Defaults follow the study: APGD on the loss, L∞ 4/255, 10 steps, no random start, max-loss point.

    Args:
        loss (`str`, *optional*, defaults to `"classic"`): `"classic"` = CE on adversarial examples (Madry et al.);
            `"trades"` = `CE(f(x), y) + β·KL(p(x) ‖ p(x_adv))` (Zhang et al., arXiv 1901.08573).
        trades_beta (`float`, *optional*, defaults to 1.0): β of TRADES.
        trades_attack_loss (`str`, *optional*, defaults to `"kl"`): what TRADES' inner attack maximises: `"kl"`
            (the TRADES paper; always from a random start, since the KL has zero gradient at δ = 0) or `"ce"`.
        protocol (`str`, *optional*, defaults to `"full"`): `"full"` fine-tunes encoder and head; `"lp"` (linear
            probing) trains the head only.
        prompt_templates (`list[str]`, *optional*): prompt templates for the head's initialisation.
        head_logit_scale (`float`, *optional*, defaults to 100.0): fixed temperature of the cosine head.
    """

    method: str = field(default="adversarial", metadata={"help": "Method name."})
    loss: str = field(default="classic", metadata={"help": "'classic' (AT) or 'trades'."})
    trades_beta: float = field(default=1.0, metadata={"help": "TRADES beta."})
    trades_attack_loss: str = field(default="kl", metadata={"help": "TRADES inner loss: 'kl' or 'ce'."})
    protocol: str = field(default="full", metadata={"help": "'full' fine-tuning or 'lp' linear probing."})
    prompt_templates: list[str] = field(default_factory=lambda: ["This is a photo of a {}"],
                                 metadata={"help": "Prompt templates for the head initialisation."})
    head_logit_scale: float = field(default=100.0, metadata={"help": "Cosine head temperature."})
    attack: str = field(default="apgd", metadata={"help": "Training attack: 'apgd' (study) or 'pgd'."})
    attack_random_start: bool = field(default=False, metadata={"help": "Random start (study: no)."})

    def __post_init__(self):
        if self.loss not in ("classic", "trades"):
            raise ValueError(f"loss must be 'classic' or 'trades', got '{self.loss}'.")
        if self.protocol not in ("full", "lp"):
            raise ValueError(f"protocol must be 'full' or 'lp' (linear probing), got '{self.protocol}'.")
        if self.trades_attack_loss not in ("kl", "ce"):
            raise ValueError(f"trades_attack_loss must be 'kl' or 'ce', got '{self.trades_attack_loss}'.")
        if self.trades_beta < 0:
            raise ValueError(f"trades_beta must be >= 0, got {self.trades_beta}.")
        super().__post_init__()
