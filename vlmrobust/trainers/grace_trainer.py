"""GRACE: LoRA adversarial fine-tuning of CLIP's vision tower with a curvature-adaptive weight perturbation and Gram
alignment (arXiv 2603.27139; no public code)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import ce_loss
from ..layout import EXTRA_WEIGHTS_NAME, HF_WEIGHTS_NAME, LAR_AWP_STATE_NAME, OPEN_CLIP_WEIGHTS_NAME, saved_key
from ..models.lora import add_vision_lora, lora_deltas, lora_layers, merge_lora_state_dict
from ..optim import LowRankWeightPerturbation, gram_volume
from ..utils.io import atomic_write_json
from .base_trainer import RobustTrainer, require_vlm
from .grace_config import GRACEConfig
from .methods import register_method


class GRACETrainer(RobustTrainer):
    """GRACE (Gram-aligned Robustness via Adaptive Curvature Estimation, arXiv 2603.27139) on a frozen CLIP.

    LoRA adapters on the vision tower's linear layers (`vlmrobust.models.lora`) are trained on
    `CE(x_adv) + λ_LAR · CE_{θ+Δ}(x_adv) + λ_GV · L_GV(φ_θ(x), φ_θ(x_adv), φ_{θ+Δ}(x))`, with x_adv the training
    attack (PGD-10 on the zero-shot CE at θ), Δ the layer-adaptive-rank adversarial weight perturbation
    (`vlmrobust.optim.LowRankWeightPerturbation`) and L_GV the Gram volume (`vlmrobust.optim.gram_volume`). When
    training ends the adapters are merged (`merge_lora_at_end`), and every checkpoint is written as a plain CLIP in
    the backend's layout (merged weights) plus the adapters in `vlmrobust_extra.safetensors` for resuming.

    One optimizer step, over its `k` micro-batches (gradient accumulation) and all processes:

    1. per micro-batch: x_adv at θ; forward / backward of `CE(x_adv)/k` at θ. Its gradient is the CE term's, and the
       probe of each adapted layer accumulates `∂CE/∂W` (the effective weight's gradient). The images are kept.
    2. at the last micro-batch: Δ from the *full* accumulated gradient, averaged over the processes (what SAM on the
       whole global batch does, so `k` micro-batches of `B/k` train the same weights as one batch of `B`), the
       curvature EMA updated with it and the ranks re-allocated every K steps.
    3. per kept micro-batch: forward / backward of `(λ_LAR·CE_{θ+Δ}(x_adv) + λ_GV·L_GV)/k`, Δ treated as a constant
       (SAM's approximation); gradients accumulate onto step 1's.
    4. Δ is removed (it lives in a separate low-rank branch and never touches the weights), then the gradient hooks
       and the optimizer step run on the un-perturbed weights. Processes synchronise gradients once, at the last
       backward. With λ_LAR = λ_GV = 0 there is no second pass: a plain adversarial LoRA step.

    Supported: no DeepSpeed / DDP and DeepSpeed ZeRO-2 (ZeRO-3 partitions the frozen weights the branches and the
    probes read; it is refused at start). Activation checkpointing is refused (a recomputed forward would see the
    branch in the state of the backward, not of the forward).

    Args:
        classnames (`Sequence[str]`): class names of the training set, in label order.
    """

    supported_zero_stages = (0, 2)

    def __init__(self, model, args: GRACEConfig, classnames: Sequence[str] | None = None, **kwargs):
        require_vlm(model, type(self).__name__)
        if args.activation_checkpointing or args.gradient_checkpointing:
            raise ValueError(f"{type(self).__name__} does not support activation checkpointing: the weight-"
                             "perturbation branch is on in one forward pass and off in another of the same backward.")
        self.init_task(model, args, classnames)
        self._pending: list[tuple] = []
        self._lora_merged = False
        super().__init__(model, args, **kwargs)
        a = args
        self.awp = LowRankWeightPerturbation(  # the linear LoRA layers (not open_clip's patch-embedding conv)
            lora_layers(self.model, (nn.Linear,)), rho=a.awp_rho, max_rank=a.awp_max_rank, middle_rank=a.awp_middle_rank,
            top_fraction=a.curvature_top_fraction, bottom_fraction=a.curvature_bottom_fraction,
            beta=a.curvature_beta, interval=a.curvature_interval, radius=a.awp_radius,
            persistent_hooks=self.compiled)  # attached only for the probing / perturbed passes unless compiled

    def init_task(self, model, args: GRACEConfig, classnames: Sequence[str] | None) -> None:
        """Task state built before the Trainer: the frozen class embeddings of the zero-shot head."""
        if not classnames:
            raise ValueError("GRACETrainer needs the training classnames (label order) to build text embeddings.")
        self.class_embeddings = model.class_embeddings(list(classnames), list(args.prompt_templates)).detach()

    def trainable_module(self, model, args: GRACEConfig):
        """The image encoder, its tower adapted with LoRA (only the adapters train)."""
        with torch.random.fork_rng(devices=[]):  # the adapters' initialisation follows `seed`, not the global RNG
            torch.manual_seed(args.seed)
            self.lora = add_vision_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout,
                                        args.lora_target_modules)
        return model.image_encoder

    # -- the loss --------------------------------------------------------------------------------------------------
    def logits(self, encoder, x: torch.Tensor) -> torch.Tensor:
        emb = F.normalize(encoder(x).float(), dim=-1)
        return self.args.logit_scale * emb @ self.class_embeddings.to(emb.device).T

    def _attack(self, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        enc = self.unwrapped(model)
        return self.adversarial_examples(lambda z: self.logits(enc, z), x, y, ce_loss, module=enc)

    def targets(self, inputs: dict):
        """What the loss compares against besides the images: the labels."""
        return inputs["labels"]

    def adversarial_loss(self, model, x_adv: torch.Tensor, y) -> torch.Tensor:
        """The first pass's loss at θ (the zero-shot CE on the adversarial images); logs it."""
        logits = self.logits(model, x_adv)
        ce = F.cross_entropy(logits, y)
        self.log_metric("adv_loss", ce.detach())
        self.log_metric("adv_accuracy", (logits.argmax(-1) == y).float().mean())
        return ce

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The first pass's loss: CE of the zero-shot logits at θ on the training attack's examples."""
        x, y = inputs["pixel_values"], inputs["labels"]
        x_adv = self._attack(model, x, y)
        logits = self.logits(model, x_adv)
        loss = F.cross_entropy(logits, y)
        return (loss, {"logits": logits, "adversarial_images": x_adv}) if return_outputs else loss

    def perturbed_loss(self, model, x: torch.Tensor, x_adv: torch.Tensor, y) -> torch.Tensor:
        """The second pass's loss `λ_LAR·CE_{θ+Δ}(x_adv) + λ_GV·L_GV` (Δ as currently set)."""
        a = self.args
        loss = torch.zeros((), device=x.device)
        gram_input = x if a.gram_perturbed_input == "clean" else x_adv
        if a.lambda_gv > 0:
            e_clean, e_adv = model(torch.cat([x, x_adv])).chunk(2)
        with self.awp.perturbed():
            if a.lambda_lar > 0 and a.lambda_gv > 0 and a.gram_perturbed_input == "clean":
                e_p_adv, e_wp = model(torch.cat([x_adv, x])).chunk(2)
            else:
                e_p = model(x_adv if a.lambda_lar > 0 else gram_input)
                e_p_adv = e_wp = e_p
        if a.lambda_lar > 0:
            lar = F.cross_entropy(self.logits(lambda e: e, e_p_adv), y)
            loss = loss + a.lambda_lar * lar
            self.log_metric("lar_loss", lar)
        if a.lambda_gv > 0:
            gv = gram_volume(e_clean, e_adv, e_wp, eps=a.gram_eps)
            loss = loss + a.lambda_gv * gv
            self.log_metric("gram_volume", gv)
        return loss

    # -- the two-pass step -----------------------------------------------------------------------------------------
    def _sync_context(self, model, last: bool):
        """Processes synchronise gradients in the last backward of the step only (DeepSpeed: see `_backward`)."""
        if last or self.is_deepspeed_enabled:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(model)

    def _backward(self, loss: torch.Tensor, last: bool) -> None:
        if self.is_deepspeed_enabled:
            engine = self.model_wrapped
            engine.set_gradient_accumulation_boundary(is_boundary=last)
            engine.backward(loss, scale_wrt_gas=False)
        else:
            self.accelerator.backward(loss)

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        step = self.state.global_step
        self._micro_batch = (step, self._micro_batch[1] + 1 if self._micro_batch[0] == step else 0)
        self._attack_call = 0
        model.train()
        inputs = self._prepare_inputs(inputs)
        x, y = inputs["pixel_values"], self.targets(inputs)
        ga = self.current_gradient_accumulation_steps
        sync = self.accelerator.sync_gradients
        second_pass = self.args.lambda_lar > 0 or self.args.lambda_gv > 0
        if not self._pending:
            self.awp.zero_grad()
        x_adv = self._attack(model, x, y)
        last = sync and not second_pass
        with self._sync_context(model, last), self.awp.probing():
            with self.compute_loss_context_manager():
                ce = self.adversarial_loss(model, x_adv, y)
            self._backward(ce / ga, last)
        total = ce.detach() / ga
        self._pending.append((x, x_adv, y))
        if not sync:
            return total
        try:
            if second_pass:
                total = total + self._second_pass(model, ga)
        finally:
            self._pending = []
            self.awp.clear()  # Δ is gone before any hook or optimizer step sees the weights
        self._before_optimizer_step(model)
        if self.is_deepspeed_enabled:
            self.model_wrapped.step()
            self.weight_space.after_step(self.unwrapped(model))
        return total

    def _second_pass(self, model, ga: int) -> torch.Tensor:
        stats = self.awp.compute(self.state.global_step, grad_scale=self._loss_scale())
        for k, v in stats.items():
            self.log_metric(k, torch.tensor(v))
        total = torch.zeros(())
        for k, (x, x_adv, y) in enumerate(self._pending):
            last = k == len(self._pending) - 1
            with self._sync_context(model, last):
                with self.compute_loss_context_manager():
                    loss = self.perturbed_loss(model, x, x_adv, y)
                self._backward(loss / ga, last)
            total = total + loss.detach().cpu() / ga
        return total.to(x.device)

    # -- merging, saving, resuming ---------------------------------------------------------------------------------
    def train(self, *args, **kwargs):
        out = super().train(*args, **kwargs)
        if self.args.merge_lora_at_end:
            self.merge_and_unload()
        return out

    def merge_and_unload(self):
        """Merge the adapters into the tower in place (PEFT's `merge_and_unload`) and drop the perturbation branches.

        Afterwards the model is a plain CLIP and later saves write it as such. Returns the vlmrobust model.
        """
        if not self._lora_merged:
            self.awp.remove()
            tower = self.lora.merge_and_unload()
            if hasattr(tower, "peft_config"):
                del tower.peft_config
            self._lora_merged = True
            self._native_keys = self._map_to_native(self.unwrapped(self.model))
        return self.vlm

    def _native_state_dict(self, state_dict: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        full, extra = super()._native_state_dict(state_dict)
        if self._lora_merged:
            return full, extra
        adapters = {k: v.detach().cpu() for k, v in state_dict.items() if ".lora_" in k}
        deltas = lora_deltas(getattr(self.vlm, "model", self.vlm))  # named as the native state dict
        return merge_lora_state_dict(full, deltas), {**extra, **adapters}

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        from safetensors.torch import load_file

        model = model if model is not None else self.model
        ckpt = Path(resume_from_checkpoint)
        extra = ckpt / EXTRA_WEIGHTS_NAME
        if not extra.is_file():
            raise FileNotFoundError(f"{ckpt} has no {EXTRA_WEIGHTS_NAME} with the LoRA adapters: not a checkpoint "
                                    "written by GRACETrainer during training.")
        adapters = load_file(extra, device="cpu")
        wanted = [n for n, p in self.unwrapped(model).named_parameters() if p.requires_grad]
        missing = [n for n in wanted if n not in adapters]
        if missing:
            raise ValueError(f"Checkpoint {ckpt} lacks {len(missing)} LoRA tensors, e.g. {missing[:3]}.")
        self.unwrapped(model).load_state_dict({n: adapters[n] for n in wanted}, strict=False)
        weights = [ckpt / n for n in (OPEN_CLIP_WEIGHTS_NAME, HF_WEIGHTS_NAME) if (ckpt / n).is_file()]
        if weights:  # the merged weights must be this run's frozen base + the adapters: same base model
            saved = load_file(weights[0], device="cpu")
            ours, _ = self._native_state_dict(self.unwrapped(model).state_dict())
            on_disk = {k: saved_key(k, saved) for k in ours}  # LLaVA is saved in transformers' legacy key layout
            if not any(on_disk.values()):
                raise ValueError(f"{weights[0]} shares no tensor name with this run's model: not a checkpoint of it.")
            bad = [k for k, v in ours.items() if on_disk[k] is not None
                   and not torch.allclose(saved[on_disk[k]].float(), v.float(), rtol=1e-4, atol=1e-5)]
            if bad:
                raise ValueError(f"{ckpt} was trained from another base model ({len(bad)} merged tensors differ, e.g. "
                                 f"{bad[0]!r}): resume with the run's original model_name_or_path.")

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save and not self._lora_merged:
            atomic_write_json(Path(output_dir) / LAR_AWP_STATE_NAME, self.awp.state_dict())

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            path = Path(checkpoint) / LAR_AWP_STATE_NAME
            if not path.is_file():
                raise FileNotFoundError(f"{checkpoint} has no {LAR_AWP_STATE_NAME} (the LAR-AWP curvature and ranks).")
            self.awp.load_state_dict(json.loads(path.read_text()))


register_method("grace", GRACEConfig, GRACETrainer, needs_classnames=True, paper="2603.27139",
                recipe="recipes/grace_clip.py")
