from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import ce_loss
from ..layout import EXTRA_WEIGHTS_NAME
from ..models.lora import inject_lora, merge_lora_state_dict
from ..optim import is_lora_adapter
from ..utils.io import atomic_save_safetensors
from .adversarial_trainer import CosineClassifier
from .base_trainer import RobustTrainer, require_vlm
from .digrap_config import DiGraPConfig
from .methods import register_method

#: LP-FT's probed head, written beside the checkpoints so that a resumed run anchors at the same θ₀
LP_HEAD_NAME = "lp_head.safetensors"


def linear_probe(encoder: nn.Module, weight: torch.Tensor, logit_scale: float, dataset, collate_fn: Callable,
                 steps: int, lr: float, batch_size: int, seed: int) -> torch.Tensor:
    """Train a cosine head `scale · normalize(φ(x)) · Wᵀ` on frozen features (clean images, AdamW, no decay).

    Deterministic for a seed (the batches come from a seeded sampler, not the distributed one), so every process
    computes the same head.

    Args:
        encoder (`nn.Module`): the frozen image tower (run in eval mode, without gradients).
        weight (`torch.Tensor`): the head's initial weight `(classes, dim)` (the zero-shot text embeddings).
        logit_scale (`float`): the fixed temperature.
        dataset (`torch.utils.data.Dataset`): items with `pixel_values` and `labels`.
        collate_fn (`Callable`): batches them.
        steps (`int`): optimizer steps (the data is cycled).
        lr (`float`): AdamW learning rate.
        batch_size (`int`): images per step.
        seed (`int`): seed of the batch order.

    Returns:
        `torch.Tensor`: the probed head's weight (CPU, fp32).
    """
    device = next(encoder.parameters()).device
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, collate_fn=collate_fn, drop_last=len(dataset) >= batch_size,
        sampler=torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)))
    head = weight.detach().float().to(device).clone().requires_grad_(True)
    opt = torch.optim.AdamW([head], lr=lr, weight_decay=0.0)
    was_training = encoder.training
    encoder.eval()
    try:
        for batch in itertools.islice(itertools.cycle(loader), steps):
            with torch.no_grad():
                feats = F.normalize(encoder(batch["pixel_values"].to(device)).float(), dim=-1)
            loss = F.cross_entropy(logit_scale * feats @ head.T, batch["labels"].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        encoder.train(was_training)
    return head.detach().cpu()


class DiGraPTrainer(RobustTrainer):
    """Fine-tuning of a CLIP classifier (image tower + cosine head from the zero-shot text embeddings) by
    cross-entropy, on clean or adversarial images, with DiGraP (arXiv 2502.15895) or one of its baselines chosen by
    the config (`weight_space`: none / l2sp / ftp / spd; `lp_steps`: LP-FT; full tower or LoRA). See `DiGraPConfig`.

    The weight-space rule runs per tensor between the full backward and the optimizer step (DiGraP, L2-SP) or right
    after it (FTP, SPD), with and without DeepSpeed ZeRO; θ₀ is the pretrained tower (and the zero-shot or probed
    head), 0 for LoRA adapters. Checkpoints are the backend's native layout with LoRA merged; the head and the
    unmerged adapters go to the extra-weights file (what a resume reads).

    Args:
        classnames (`Sequence[str]`): class names of the training set, in label order (the head's initialisation).
    """

    def __init__(self, model, args: DiGraPConfig, classnames: Sequence[str], **kwargs):
        require_vlm(model, type(self).__name__)
        if not classnames:
            raise ValueError("DiGraPTrainer needs the training classnames (label order) to build the zero-shot head.")
        self._class_embeddings = model.class_embeddings(list(classnames), list(args.prompt_templates)).detach()
        super().__init__(model, args, **kwargs)

    def trainable_module(self, model, args: DiGraPConfig) -> nn.Module:
        if args.lora_r:
            inject_lora(model.image_encoder, args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_target_modules,
                        seed=args.seed)
        else:
            model.image_encoder.requires_grad_(True)
        clf = CosineClassifier(model.image_encoder, self._class_embeddings, args.head_logit_scale)
        clf.head.requires_grad_(args.train_head)
        return clf

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        x, y = inputs["pixel_values"], inputs["labels"]
        if self.args.adversarial:
            x = self.adversarial_examples(self.unwrapped(model), x, y, ce_loss)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        self.log_metric("adv_loss" if self.args.adversarial else "ce_loss", loss)
        self.log_metric("train_accuracy", (logits.argmax(-1) == y).float().mean())
        return (loss, {"logits": logits}) if return_outputs else loss

    # -- LP-FT: probe the head on frozen features, then fine-tune from it -------------------------------------------
    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if self.args.lp_steps:
            self._linear_probe(resumed=resume_from_checkpoint not in (None, False))
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _linear_probe(self, resumed: bool) -> None:
        from safetensors.torch import load_file

        clf = self.unwrapped(self.model)  # before train(): not wrapped by DeepSpeed yet, whole on every rank
        path = Path(self.args.output_dir) / LP_HEAD_NAME
        if resumed and path.is_file():  # the run's own probe: the FT stage's θ₀
            weight = load_file(path)["weight"]
        else:
            clf.to(self.args.device)
            weight = linear_probe(clf.image_encoder, clf.head.weight, clf.logit_scale, self.train_dataset,
                                  self.data_collator, self.args.lp_steps, self.args.lp_learning_rate,
                                  self.args.per_device_train_batch_size, self.args.seed)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                weight = weight.to(self.args.device)
                torch.distributed.broadcast(weight, src=0)  # identical already; make sure
                weight = weight.cpu()
            if self.args.should_save:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_save_safetensors(path, {"weight": weight.contiguous()}, metadata={"format": "pt"})
        with torch.no_grad():
            clf.head.weight.copy_(weight.to(clf.head.weight))
            if self.reference is not None and "head.weight" in self.reference:
                self.reference["head.weight"].copy_(weight.to(self.reference["head.weight"]))

    # -- LoRA: merged native checkpoints, adapters kept for resuming ------------------------------------------------
    def _native_state_dict(self, state_dict: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        full, extra = super()._native_state_dict(state_dict)
        if not self.args.lora_r:
            return full, extra
        extra.update({k: v.detach().cpu() for k, v in state_dict.items() if is_lora_adapter(k)})
        alpha = self.args.lora_alpha if self.args.lora_alpha is not None else 2 * self.args.lora_r
        return merge_lora_state_dict(full, alpha / self.args.lora_r), extra

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        if not self.args.lora_r:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_trained_tensors(model if model is not None else self.model, resume_from_checkpoint,
                             "not a checkpoint of a LoRA run of this trainer")


register_method("digrap", DiGraPConfig, DiGraPTrainer, needs_classnames=True,
                trains_classifier=lambda args: bool(args.train_head), paper="2502.15895",
                recipe="recipes/digrap_clip.py")


def load_trained_tensors(model: nn.Module, checkpoint: str, not_ours: str, hint: str = "") -> None:
    """Load a LoRA run's trained tensors (the unmerged adapters, an LP-FT head) from `checkpoint`'s
    `EXTRA_WEIGHTS_NAME` into `model`: every tensor that requires a gradient must be there (`not_ours` says what a
    checkpoint without the file is; `hint` what a missing tensor may mean)."""
    from safetensors.torch import load_file

    path = Path(checkpoint) / EXTRA_WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} has no {EXTRA_WEIGHTS_NAME} with the LoRA adapters: {not_ours}.")
    saved = load_file(path, device="cpu")
    wanted = [n for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n in wanted if n not in saved]
    if missing:
        raise ValueError(f"Checkpoint {checkpoint} lacks {len(missing)} trained tensors, e.g. {missing[:3]}{hint}.")
    model.load_state_dict({n: saved[n] for n in wanted}, strict=False)
