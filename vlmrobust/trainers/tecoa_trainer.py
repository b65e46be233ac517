from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..attacks import ce_loss
from .base_trainer import RobustTrainer, require_vlm
from .methods import register_method
from .tecoa_config import TeCoAConfig


class TeCoATrainer(RobustTrainer):
    """TeCoA: supervised adversarial fine-tuning of CLIP's vision encoder against frozen text embeddings
    (arXiv 2212.07016). Loss and inner attack are the cross-entropy of `scale · cos(φ_θ(x+δ), t_c)`.

    Args:
        classnames (`Sequence[str]`): class names of the training set, in label order.
    """

    def __init__(self, model, args: TeCoAConfig, classnames: Sequence[str], **kwargs):
        require_vlm(model, type(self).__name__)
        if not classnames:
            raise ValueError("TeCoATrainer needs the training classnames (label order) to build text embeddings.")
        self.class_embeddings = model.class_embeddings(list(classnames), list(args.prompt_templates)).detach()
        super().__init__(model, args, **kwargs)

    def logits(self, encoder, x: torch.Tensor) -> torch.Tensor:
        emb = F.normalize(encoder(x).float(), dim=-1)
        return self.args.tecoa_logit_scale * emb @ self.class_embeddings.to(emb.device).T

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        x, y = inputs["pixel_values"], inputs["labels"]
        enc = self.unwrapped(model)
        x_adv = self.adversarial_examples(lambda z: self.logits(enc, z), x, y, ce_loss, module=enc)
        logits = self.logits(model, x_adv)
        loss = F.cross_entropy(logits, y)
        self.log_metric("adv_loss", loss)
        self.log_metric("adv_accuracy", (logits.argmax(-1) == y).float().mean())
        return (loss, {"logits": logits}) if return_outputs else loss


register_method("tecoa", TeCoAConfig, TeCoATrainer, needs_classnames=True, paper="2212.07016",
                recipe="recipes/tecoa_clip.py")
