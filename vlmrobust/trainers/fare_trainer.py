from __future__ import annotations

import torch

from .base_trainer import RobustTrainer
from .fare_config import FAREConfig
from .methods import CLIP_BACKENDS, LVLM_BACKENDS, register_method


def fare_distance(emb: torch.Tensor, target: torch.Tensor, kind: str = "l2sq") -> torch.Tensor:
    """Per-sample ‖emb − target‖²₂ (or ‖·‖₂), computed in fp32.

    Token features `(B, T, D)` (an LVLM's vision tower) count as one flattened vector per sample: the squared
    distance is summed over tokens and dimensions.
    """
    diff = emb.float() - target.float()
    d = (diff**2).flatten(1).sum(1) if diff.dim() > 2 else (diff**2).sum(-1)
    return d if kind == "l2sq" else d.clamp_min(1e-12).sqrt()


class FARETrainer(RobustTrainer):
    """FARE: unsupervised adversarial fine-tuning of CLIP's vision encoder (arXiv 2402.12336).

    `min_θ E_x max_{‖δ‖≤ε} ‖φ_θ(x+δ) − φ_orig(x)‖²₂`, with φ_orig the original encoder applied to the clean image:
    the trainer's shared frozen θ₀ snapshot (`self.reference`, the same one L2-SP & co. read). Only the vision tower
    trains; no labels, no text tower.
    """

    needs_reference = True

    @property
    def reference_encoder(self):
        """φ_orig: the frozen θ₀ encoder (`self.reference.module`)."""
        return self.reference.module

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        x = inputs["pixel_values"]
        with torch.no_grad():
            target = self.reference(x).float()
        kind = self.args.fare_loss
        x_adv = self.adversarial_examples(self.unwrapped(model), x, target, lambda e, t: fare_distance(e, t, kind))
        loss = fare_distance(model(x_adv), target, kind).mean()
        self.log_metric("adv_loss", loss)
        if self.args.log_clean_loss and self.wants_extra_logging():
            with torch.no_grad():
                self.log_metric("clean_loss", fare_distance(self.unwrapped(model)(x), target, kind).mean())
        return (loss, {"embeddings": None}) if return_outputs else loss


register_method("fare", FAREConfig, FARETrainer, paper="2402.12336", backends=CLIP_BACKENDS + LVLM_BACKENDS,
                recipe="recipes/fare_clip.py")
