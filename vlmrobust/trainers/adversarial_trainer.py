from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import ce_loss
from ..attacks.base import eval_mode
from .adversarial_config import AdversarialConfig
from .base_trainer import RobustTrainer, require_vlm
from .methods import register_method


class CosineClassifier(nn.Module):
    """Image encoder + linear head on L2-normalised embeddings: `scale · normalize(φ(x)) Wᵀ`."""

    def __init__(self, image_encoder: nn.Module, class_embeddings: torch.Tensor, logit_scale: float = 100.0):
        super().__init__()
        self.image_encoder = image_encoder
        self.head = nn.Linear(class_embeddings.shape[1], class_embeddings.shape[0], bias=False)
        with torch.no_grad():
            self.head.weight.copy_(F.normalize(class_embeddings.float(), dim=-1))
        self.logit_scale = float(logit_scale)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        emb = F.normalize(self.image_encoder(pixels).float(), dim=-1)
        return self.logit_scale * self.head(emb.to(self.head.weight.dtype)).float()


def kl_per_sample(logits_adv: torch.Tensor, p_clean: torch.Tensor) -> torch.Tensor:
    """KL(p_clean ‖ softmax(logits_adv)) per sample."""
    logp_adv = F.log_softmax(logits_adv.float(), dim=-1)
    return (p_clean * (p_clean.clamp_min(1e-12).log() - logp_adv)).sum(-1)


class AdversarialTrainer(RobustTrainer):
    """Classic AT (CE on adversarial examples) and TRADES for CLIP classifiers, full fine-tuning or linear probing
    (protocols of arXiv 2508.14079).

    Args:
        classnames (`Sequence[str]`): class names in label order (the head is initialised from their text
            embeddings, i.e. from the zero-shot classifier).
    """

    def __init__(self, model, args: AdversarialConfig, classnames: Sequence[str], **kwargs):
        require_vlm(model, type(self).__name__)
        if not classnames:
            raise ValueError("AdversarialTrainer needs the training classnames to initialise the head.")
        self._class_embeddings = model.class_embeddings(list(classnames), list(args.prompt_templates)).detach()
        super().__init__(model, args, **kwargs)

    def trainable_module(self, model, args: AdversarialConfig) -> nn.Module:
        clf = CosineClassifier(model.image_encoder, self._class_embeddings, args.head_logit_scale)
        clf.image_encoder.requires_grad_(args.protocol == "full")
        clf.head.requires_grad_(True)
        return clf

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        x, y = inputs["pixel_values"], inputs["labels"]
        clf = self.unwrapped(model)
        if self.args.loss == "classic":
            x_adv = self.adversarial_examples(clf, x, y, ce_loss)
            logits = model(x_adv)
            loss = F.cross_entropy(logits, y)
            self.log_metric("adv_loss", loss)
        else:
            # The attack's clean target comes from the model in eval mode, like the attack itself (TRADES reference:
            # both under model.eval()); the loss terms below run in train mode.
            with torch.no_grad(), eval_mode(clf):
                p_clean = F.softmax(clf(x).float(), dim=-1)
            if self.args.trades_attack_loss == "kl":
                # KL(p‖p) has zero gradient at δ = 0: start inside the ball (TRADES starts from x + 0.001·N(0, I))
                x_adv = self.adversarial_examples(clf, x, p_clean, kl_per_sample, random_start=True)
            else:
                x_adv = self.adversarial_examples(clf, x, y, ce_loss)
            logits_clean = model(x)
            logits = model(x_adv)
            natural = F.cross_entropy(logits_clean, y)
            robust = kl_per_sample(logits, F.softmax(logits_clean.float(), dim=-1)).mean()
            loss = natural + self.args.trades_beta * robust
            self.log_metric("clean_loss", natural)
            self.log_metric("trades_kl", robust)
        self.log_metric("adv_accuracy", (logits.argmax(-1) == y).float().mean())
        return (loss, {"logits": logits}) if return_outputs else loss


# the trained artefact is a classifier (encoder + head): recipes evaluate it rather than the zero-shot model
register_method("adversarial", AdversarialConfig, AdversarialTrainer, needs_classnames=True, trains_classifier=True,
                paper="2508.14079", recipe="recipes/adv_clip.py")
