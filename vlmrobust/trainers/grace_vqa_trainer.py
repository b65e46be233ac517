"""GRACE on an LVLM (LLaVA, Qwen-VL, PaliGemma): LoRA on the language model (and the image side), the teacher-forced
answer CE on adversarial images, the layer-adaptive-rank weight perturbation and the Gram volume of the pooled
projected image features (arXiv 2603.27139, carried over from CLIP; no public code)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..data.vqa import VQACollator
from ..models.lora import add_lvlm_lora
from ..optim import gram_volume
from .grace_trainer import GRACETrainer
from .grace_vqa_config import GRACEVQAConfig
from .methods import VQA_BACKENDS, register_method

DEFAULT_LM_TARGETS = ("q_proj", "v_proj")


def pooled_image_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """`(B, D)`: the mean over image tokens of the projected image features an LVLM's language model reads (LLaVA's
    `multi_modal_projector` output, Qwen-VL's merger output, PaliGemma's linear projector's), in fp32, from [0, 1]
    pixels."""
    hf = model.hf_model
    kw = {}
    if model.backend == "llava":
        kw = {"vision_feature_layer": hf.config.vision_feature_layer,
              "vision_feature_select_strategy": hf.config.vision_feature_select_strategy}
    out = hf.get_image_features(**model.pixel_inputs(pixels.to(model.device)), **kw)
    feats = out.pooler_output if hasattr(out, "pooler_output") else out
    return torch.stack([f.float().reshape(-1, f.shape[-1]).mean(0) for f in feats])


class LVLMAnswerModule(nn.Module):
    """An LVLM's transformers model as the Trainer's module (what DDP / DeepSpeed wrap).

    `module(pixels, batch)` is the per-sample teacher-forced answer CE of `batch` (`LVLM.answer_loss`);
    `module(pixels)` the pooled projected image features (`pooled_image_features`); `module(compute=fn)` is
    `fn(module)`: several passes in one forward of the wrapper (DDP prepares its reducer at each forward from that
    forward's graph alone, so one backward must follow one forward when the passes read different parameters).
    """

    def __init__(self, model):
        super().__init__()
        self.lvlm = model.model
        self.__dict__["vlm"] = model  # not a sub-module: its parameters are `lvlm`'s

    def forward(self, pixels: torch.Tensor | None = None, batch: dict | None = None, *, compute=None) -> torch.Tensor:
        if compute is not None:
            return compute(self)
        if batch is None:
            return pooled_image_features(self.vlm, pixels)
        return self.vlm.answer_loss(pixels, batch)


def _identity(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return out


class AnswerLossSteps:
    """The text side of a VQA batch and the training attack on the answer CE, for the trainers whose module is an
    `LVLMAnswerModule` (GRACE's and DiGraP's LVLM trainers; a mixin before `RobustTrainer`)."""

    def targets(self, inputs: dict) -> dict:
        """The text side of the batch: token ids, masks, labels (prompt and image tokens at -100)."""
        return {k: v for k, v in inputs.items() if k != "pixel_values"}

    def _attack(self, model, x: torch.Tensor, batch: dict) -> torch.Tensor:
        enc = self.unwrapped(model)
        dummy = torch.zeros(x.shape[0], device=x.device)
        return self.adversarial_examples(lambda z: enc(z, batch), x, dummy, _identity, module=enc)


class GRACEVQATrainer(AnswerLossSteps, GRACETrainer):
    """GRACE on a vlmrobust LLaVA / Qwen-VL: `GRACETrainer`'s two-pass step with the LVLM's answer loss.

    LoRA adapters on the language model's `lora_target_modules` and the image side (`lora_vision`) are trained on
    `CE(x_adv) + λ_LAR · CE_{θ+Δ}(x_adv) + λ_GV · L_GV(f_θ(x), f_θ(x_adv), f_{θ+Δ}(x))`: CE the teacher-forced
    cross-entropy of the reference answer, x_adv the training attack (`args.attack`, PGD-10 by default) on that loss
    at θ, Δ the LAR-AWP perturbation of every linear LoRA layer (language model and image side, ranks by
    curvature), f the pooled projected image features. The step, its exactness under gradient accumulation, the
    DeepSpeed support (DDP, ZeRO-2; ZeRO-3 refused) and the checkpoints are `GRACETrainer`'s; the adapters are
    merged at the end, so the saved model loads with plain transformers `from_pretrained`.

    Training items are VQA items with `pixel_values` ([0, 1], the model's resolution), `question` and `answers` /
    `answer`; the default collator is `VQACollator(model)`.
    """

    trains_on_answers = True  # the recipes hand it VQA items, not images alone

    def __init__(self, model, args: GRACEVQAConfig, classnames: Sequence[str] | None = None, **kwargs):
        kwargs.setdefault("data_collator", VQACollator(model))
        super().__init__(model, args, classnames, **kwargs)

    def init_task(self, model, args, classnames) -> None:
        if getattr(model, "backend", None) not in VQA_BACKENDS:
            raise ValueError(f"GRACEVQATrainer trains {', '.join(VQA_BACKENDS)} models, not a "
                             f"{getattr(model, 'backend', None)!r} model (CLIP: GRACETrainer).")

    def trainable_module(self, model, args: GRACEVQAConfig):
        """The LVLM's transformers model, LoRA-adapted (only the adapters train)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            self.lora = add_lvlm_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout,
                                      args.lora_target_modules or DEFAULT_LM_TARGETS, args.lora_vision)
        return LVLMAnswerModule(model)

    # -- the loss --------------------------------------------------------------------------------------------------
    def adversarial_loss(self, model, x_adv: torch.Tensor, batch: dict) -> torch.Tensor:
        ce = model(x_adv, batch).mean()
        self.log_metric("adv_loss", ce.detach())
        return ce

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        x, batch = inputs["pixel_values"], self.targets(inputs)
        x_adv = self._attack(model, x, batch)
        loss = self.adversarial_loss(model, x_adv, batch)
        return (loss, {"adversarial_images": x_adv}) if return_outputs else loss

    def perturbed_loss(self, model, x: torch.Tensor, x_adv: torch.Tensor, batch: dict) -> torch.Tensor:
        """`λ_LAR·CE_{θ+Δ}(x_adv) + λ_GV·L_GV` on the pooled projected image features (Δ as currently set).

        Its passes run inside one forward of the (DDP / DeepSpeed) wrapped module: with DDP's
        `find_unused_parameters` (the Trainer's default for a plain module) a projector-only feature pass after the
        language-model pass would otherwise mark the language model's LoRA ready before its gradient arrives.
        """
        return model(compute=lambda m: self._perturbed_terms(m, x, x_adv, batch))

    def _perturbed_terms(self, model, x: torch.Tensor, x_adv: torch.Tensor, batch: dict) -> torch.Tensor:
        a = self.args
        loss = torch.zeros((), device=x.device)
        if a.lambda_gv > 0:
            f_clean, f_adv = model(torch.cat([x, x_adv])).chunk(2)
        with self.awp.perturbed():
            if a.lambda_lar > 0:
                lar = model(x_adv, batch).mean()
                loss = loss + a.lambda_lar * lar
                self.log_metric("lar_loss", lar.detach())
            if a.lambda_gv > 0:
                f_wp = model(x if a.gram_perturbed_input == "clean" else x_adv)
        if a.lambda_gv > 0:
            gv = gram_volume(f_clean, f_adv, f_wp, eps=a.gram_eps)
            loss = loss + a.lambda_gv * gv
            self.log_metric("gram_volume", gv.detach())
        return loss


register_method("grace_vqa", GRACEVQAConfig, GRACEVQATrainer, paper="2603.27139", backends=VQA_BACKENDS,
                recipe="recipes/grace_vqa.py")
