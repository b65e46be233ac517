from __future__ import annotations

import os
from pathlib import Path

import torch

from ..layout import RADAPT_WEIGHTS_NAME, VLMROBUST_CONFIG_NAME
from ..models.radapt import RAdaptModel
from .base_trainer import RobustTrainer, require_vlm
from .fare_trainer import fare_distance
from .methods import CLIP_BACKENDS, LVLM_BACKENDS, register_method
from .radapt_config import RAdaptConfig

_SETTING_FIELDS = ("alpha", "attn_coef", "anchor_coef", "gaussian_filter", "d0", "d0_reference_size", "d0_scaling")


class RAdaptTrainer(RobustTrainer):
    """R-Adapt+: train only the block-1 robustness anchor of a frozen CLIP (Nie et al., arXiv 2603.12799).

    `min_A E_x max_{‖δ‖≤ε} ‖f_A(x+δ) − f_orig(x)‖²₂`, where f_A is the R-Adapt model (Gaussian input filter + anchor A)
    and f_orig the standard model; the attack runs through the filter (the whole graph is differentiable). The
    reference is the frozen backbone itself with the adapter switched off, so no second copy of the encoder is kept.

    Args:
        model (`VisionLanguageModel`): a standard model (wrapped here, anchor initialised as `args.anchor_init` says)
            or an `RAdaptModel` whose filter / coefficient settings match `args`.
        args (`RAdaptConfig`): method config.
        kwargs: passed to `RobustTrainer` (`train_dataset`, ...).
    """

    def __init__(self, model, args: RAdaptConfig, **kwargs):
        require_vlm(model, type(self).__name__)
        if isinstance(model, RAdaptModel):
            want = args.radapt_settings()
            diff = {f: (getattr(model.settings, f), getattr(want, f)) for f in _SETTING_FIELDS
                    if getattr(model.settings, f) != getattr(want, f)}
            if diff:
                raise ValueError("The RAdaptModel's settings differ from the training config (model, config): "
                                 f"{diff}. Pass the standard model instead, or set the config to match.")
        elif args.anchor_init == "model-guided":
            from ..models import create_model

            settings = args.radapt_settings().to_dict()
            for k in ("base_model", "paradigm", "guide_model"):
                settings.pop(k)
            model = RAdaptModel.model_guided(model, create_model(args.guide_model), **settings)
        else:
            model = RAdaptModel(model, args.radapt_settings())
        model.settings.paradigm = "radapt-plus"
        # a grid first seen mid-training would get an anchor the optimizer does not know: refuse instead
        model.image_encoder.recompute_missing = False
        super().__init__(model, args, **kwargs)

    def trainable_module(self, model: RAdaptModel, args: RAdaptConfig):
        model.image_encoder.anchors.requires_grad_(True)
        return model.image_encoder

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        x = inputs["pixel_values"]
        enc = self.unwrapped(model)
        with torch.no_grad(), enc.disable_adapter():
            target = enc(x).float()
        kind = self.args.fare_loss
        x_adv = self.adversarial_examples(enc, x, target, lambda e, t: fare_distance(e, t, kind))
        loss = fare_distance(model(x_adv), target, kind).mean()
        self.log_metric("adv_loss", loss)
        if self.args.log_clean_loss and self.wants_extra_logging():
            with torch.no_grad():
                self.log_metric("clean_loss", fare_distance(enc(x), target, kind).mean())
        return (loss, {"embeddings": None}) if return_outputs else loss

    # -- the R-Adapt layout: base model id + anchors + settings, no backbone weights -------------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        anchors = None
        if state_dict is not None:  # gathered by the Trainer (DeepSpeed ZeRO-3 partitions the anchor too)
            anchors = {k.removeprefix("anchors."): v for k, v in state_dict.items() if k.startswith("anchors.")}
        self.vlm.save_pretrained(output_dir, anchors=anchors, training=self.args.to_vlmrobust_dict())
        self.args.save_json(Path(output_dir) / VLMROBUST_CONFIG_NAME)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        from safetensors.torch import load_file

        model = model if model is not None else self.model
        path = Path(resume_from_checkpoint) / RADAPT_WEIGHTS_NAME
        if not path.is_file():
            raise FileNotFoundError(f"No {RADAPT_WEIGHTS_NAME} in {resume_from_checkpoint}: not an R-Adapt+ "
                                    "checkpoint.")
        sd = {f"anchors.{k.removeprefix('anchor.')}": v for k, v in load_file(path, device="cpu").items()}
        missing = [k for k in self.unwrapped(model).anchors.state_dict() if f"anchors.{k}" not in sd]
        if missing:
            raise ValueError(f"Checkpoint {resume_from_checkpoint} lacks the anchor(s) for grid(s) {missing}.")
        model.load_state_dict(sd, strict=False)


register_method("radapt", RAdaptConfig, RAdaptTrainer, paper="2603.12799",
                backends=CLIP_BACKENDS + LVLM_BACKENDS + ("radapt",), recipe="recipes/radapt_clip.py")
