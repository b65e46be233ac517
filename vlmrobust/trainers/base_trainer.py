"""`RobustTrainer`: the machinery every robust fine-tuning method shares, written once.

It owns the inner attack loop (the training attack built by name from the attack registry, always on the
*unwrapped* module, in eval mode, gradients for δ only), the ε schedule, the frozen reference θ₀ (one snapshot of
the trained module, built before the Trainer / DeepSpeed sees the model so ZeRO-3 never partitions it, shared by
every consumer), logging of extra losses, the weight-space hooks (a gradient hook and gradient transforms between
the full backward and the optimizer step, post-step constraints after it; DeepSpeed-safe), and saving in the
backend's native layout (open_clip / transformers) so checkpoints load without vlmrobust and resume with it.
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer

from ..layout import EXTRA_WEIGHTS_NAME, HF_WEIGHTS_NAME, OPEN_CLIP_WEIGHTS_NAME, saved_key
from ..models.base import VisionLanguageModel
from ..optim import (
    GradientTransform,
    PostStepCallback,
    PostStepConstraint,
    ReferenceWeights,
    WeightSpaceRunner,
    build_weight_space,
    frozen_copy,
    get_full_grad,
    set_full_grad,
)
from ..utils.distributed import check_zero_stage
from ..utils.io import atomic_save_safetensors, check_safetensors, umask_modes
from .activation_checkpointing import attach_activation_checkpointing
from .base_config import RobustTrainingArguments
from .performance import autocast_context, compile_in_place, wants_compile
from .run_guards import (
    NonFiniteGuard,
    check_has_batches,
    check_output_dir,
    check_resume_config,
    check_steps_trained,
    nonfinite_message,
    resolve_resume,
)
from .training_attack import AttackLoop, check_training_attack

__all__ = ["RobustTrainer", "attach_activation_checkpointing", "frozen_copy", "image_collator", "require_vlm"]


#: the unreadable images skipped before a checkpoint (`bad_images='skip'`), kept in it for a resumed run's report
SKIPPED_IMAGES_NAME = "vlmrobust_skipped_images.json"


def image_collator(features: list[dict]) -> dict[str, torch.Tensor]:
    """Stack `pixel_values` (and `labels` when present) of dataset items. Skipped unreadable images
    (`bad_images='skip'`) are dropped; where any were, the batch carries their names as `skipped_images` (a list of
    strings the trainer takes out and counts before the batch reaches the model)."""
    from ..data.classification import is_skipped

    skipped = [getattr(f, "where", "an unreadable image") for f in features if is_skipped(f)]
    features = [f for f in features if not is_skipped(f)]
    if not features:
        raise ValueError(f"Every image of a training batch was unreadable (skipped: {'; '.join(skipped[:3])}): "
                         "check the dataset.")
    batch = {"pixel_values": torch.stack([torch.as_tensor(f["pixel_values"]) for f in features])}
    if "labels" in features[0]:
        batch["labels"] = torch.as_tensor([int(f["labels"]) for f in features], dtype=torch.long)
    if skipped:
        batch["skipped_images"] = skipped
    return batch


def require_vlm(model, trainer_name: str) -> None:
    if not isinstance(model, VisionLanguageModel):
        raise TypeError(
            f"{trainer_name} takes a vlmrobust model (from vlmrobust.create_model), got {type(model).__name__}."
        )


class RobustTrainer(AttackLoop, NonFiniteGuard, Trainer):
    """Base class of vlmrobust's trainers (FARE, TeCoA, Classic AT / TRADES, ...).

    Subclasses implement :meth:`trainable_module` (what the HF `Trainer` / DeepSpeed optimises) and
    `compute_loss`; they call :meth:`adversarial_examples` for the inner maximisation and may override
    :meth:`on_full_backward` for gradient surgery. Weight-space methods plug in as hooks (`vlmrobust.optim`): the
    config's `weight_space` names registered ones, `gradient_transforms` / `post_step_constraints` add others.

    Class attributes:
        supported_zero_stages (`tuple[int, ...]`): DeepSpeed ZeRO stages the method supports (0: no DeepSpeed, plain
            / DDP); any other stage is refused at start with a message naming these.
        needs_reference (`bool`): the method reads θ₀ (FARE's frozen target encoder). The trainer then keeps
            `self.reference`, a `ReferenceWeights` snapshot of the trained module; it keeps it too when a weight-space
            hook needs θ₀, and it is the same object for every consumer.
        reference_trainable_only (`bool`): θ₀ keeps only the tensors that train (a table, no module view): for LoRA on
            a large frozen base (no copy of the base), when nothing runs θ₀ as a module.

    Args:
        model (`VisionLanguageModel`): the full model (e.g. from `create_model`). Only the module returned by
            `trainable_module` is handed to the Trainer, which keeps 0-dim parameters such as open_clip's
            `logit_scale` away from DeepSpeed.
        args (`RobustTrainingArguments`): method config.
        train_dataset (`torch.utils.data.Dataset`): items with `pixel_values` in [0, 1] (and `labels`).
        gradient_transforms (`Sequence[GradientTransform]`, *optional*): applied after those `args.weight_space`
            names, once per optimizer step, to each trainable tensor's full gradient.
        post_step_constraints (`Sequence[PostStepConstraint]`, *optional*): applied after those `args.weight_space`
            names, right after each optimizer step.
        kwargs: passed to `transformers.Trainer` (callbacks, eval_dataset, ...).

    Attributes:
        reference (`ReferenceWeights` or None): θ₀, the frozen snapshot of the trained module (None when nothing reads
            it).
        weight_space (`WeightSpaceRunner`): the gradient transforms and post-step constraints, and their state (saved
            into every checkpoint, restored on `resume_from_checkpoint`).
    """

    # compute_loss returns a per-micro-batch mean: the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False
    supported_zero_stages: tuple[int, ...] = (0, 1, 2, 3)
    needs_reference: bool = False
    reference_trainable_only: bool = False

    def __init__(self, model: VisionLanguageModel, args: RobustTrainingArguments, train_dataset=None,
                 data_collator: Callable | None = None,
                 gradient_transforms: Sequence[GradientTransform] = (),
                 post_step_constraints: Sequence[PostStepConstraint] = (), **kwargs):
        require_vlm(model, type(self).__name__)
        check_zero_stage(args, self.supported_zero_stages, type(self).__name__)
        check_training_attack(args)
        self.vlm = model
        self.vlm.requires_grad_(False)
        trainable = self.trainable_module(model, args)
        hooks = build_weight_space(args)
        transforms = [*(h for h in hooks if isinstance(h, GradientTransform)), *gradient_transforms]
        constraints = [*(h for h in hooks if isinstance(h, PostStepConstraint)), *post_step_constraints]
        # θ₀, taken before the Trainer (and DeepSpeed ZeRO-3) sees the model, and never registered inside it
        wanted = self.needs_reference or any(getattr(h, "needs_reference", False) for h in (*transforms, *constraints))
        self.reference: ReferenceWeights | None = (
            ReferenceWeights(trainable, trainable_only=self.reference_trainable_only) if wanted else None)
        self.weight_space = WeightSpaceRunner(transforms, constraints, self.reference)
        if args.activation_checkpointing or args.gradient_checkpointing:
            attach_activation_checkpointing(trainable)
        #: whether the encoder (and θ₀'s copy, FARE's target) run compiled (`compile_encoder`, see `performance`)
        self.compiled = wants_compile(args, getattr(model, "backend", None))
        if self.compiled:
            compile_in_place(trainable, args.compile_mode)
            if self.reference is not None:
                compile_in_place(self.reference.module, args.compile_mode)
        self._native_keys = self._map_to_native(trainable)
        self._metrics: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._micro_step = (-1, 0)  # (global_step, attack call within it)
        self._micro_batch = (-1, 0)  # (global_step, micro-batch index within it on this rank)
        self._attack_call = 0  # attack calls within the current micro-batch
        self._finite: torch.Tensor | None = None  # every loss of the current optimizer step finite (on device)
        self.skipped_steps: list[int] = []  # optimizer steps skipped for a non-finite loss / gradient
        #: unreadable training images left out under `bad_images='skip'` on this process, by name (`"<source>
        #: (split s) row i, file <path>"`): each counted once however many epochs meet it
        self.skipped_image_names: set[str] = set()
        self._apply_bad_images(args, train_dataset)
        if args.nonfinite_loss == "skip" and args.deepspeed:
            raise ValueError("nonfinite_loss='skip' is not supported under DeepSpeed (its engine steps the "
                             "optimizer itself): use 'stop' (the default).")
        super().__init__(model=trainable, args=args, train_dataset=train_dataset,
                         data_collator=data_collator or image_collator, **kwargs)
        if self.weight_space.constraints:
            self.add_callback(PostStepCallback(self))

    # -- what is trained -------------------------------------------------------------------------------------------
    def trainable_module(self, model: VisionLanguageModel, args: RobustTrainingArguments) -> nn.Module:
        """The module handed to the Trainer; set `requires_grad` on what should train. Default: image encoder."""
        model.image_encoder.requires_grad_(True)
        return model.image_encoder

    def _map_to_native(self, trainable: nn.Module) -> dict[str, str]:
        """trainable-module key -> key in the backend's native state dict (by tensor identity)."""
        native = getattr(self.vlm, "model", self.vlm)
        by_id = {id(t): k for k, t in native.state_dict(keep_vars=True).items()}
        return {k: by_id[id(t)] for k, t in trainable.state_dict(keep_vars=True).items() if id(t) in by_id}

    def _prepare_input(self, data):
        """Move inputs to the device *without* DeepSpeed's cast of float inputs to its bf16 / fp16 dtype.

        [0, 1] pixels, and so the attack's perturbation, stay fp32 under a bf16 / fp16 DeepSpeed config: bf16 has
        8 mantissa bits (steps of 1/256 near 1), which would round an ε = 4/255 ball to a few values per pixel. The
        encoders normalise in fp32 and cast to the tower's dtype themselves.
        """
        if isinstance(data, Mapping):
            return type(data)({k: self._prepare_input(v) for k, v in data.items()})
        if isinstance(data, (tuple, list)):
            return type(data)(self._prepare_input(v) for v in data)
        if isinstance(data, torch.Tensor):
            return data.to(device=self.args.device)
        return data

    #: how many skipped images are named in the report (all are counted)
    max_named_skipped_images = 5

    def _apply_bad_images(self, args, train_dataset) -> None:
        """Hand `args.bad_images` to the training set (the datasets that read image files take it)."""
        from ..data.classification import apply_bad_images

        mode = getattr(args, "bad_images", "fail")
        if train_dataset is not None and not apply_bad_images(train_dataset, mode) and mode == "skip":
            import warnings

            warnings.warn(f"bad_images='skip' has no effect on this training set ({type(train_dataset).__name__}): "
                          "only classification image datasets (Hub, imagefolder:, parquet:, webdataset:) skip "
                          "unreadable images; this one stops at the first, naming it.", UserWarning, stacklevel=3)

    def _prepare_inputs(self, inputs):
        if isinstance(inputs, Mapping) and "skipped_images" in inputs:  # from image_collator (bad_images='skip')
            inputs = dict(inputs)
            self.skipped_image_names.update(inputs.pop("skipped_images"))
        return super()._prepare_inputs(inputs)

    def skipped_images_report(self) -> dict | None:
        """`{"skipped_images": n, "skipped_image_files": [the first few, sorted]}`: the distinct unreadable images
        left out on every process, or None unless `bad_images='skip'`. Collective under DDP: every rank calls it."""
        if getattr(self.args, "bad_images", "fail") != "skip":
            return None
        names = set(self.skipped_image_names)
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            names = set(gather_object(sorted(names)))
        return {"skipped_images": len(names),
                "skipped_image_files": sorted(names)[:self.max_named_skipped_images]}

    def unwrapped(self, model: nn.Module) -> nn.Module:
        """`accelerator.unwrap_model(model)`, remembered for the last wrapper asked about: unwrapping walks every
        submodule (accelerate looks for compiled regions), twice per training step otherwise."""
        cached = getattr(self, "_unwrapped_cache", None)
        if cached is not None and cached[0] is model:
            return cached[1]
        inner = self.accelerator.unwrap_model(model)
        self._unwrapped_cache = (model, inner)
        return inner

    def compute_loss_context_manager(self):
        """HF's context (accelerate's autocast covers the wrapped model only) plus bf16 autocast over the whole
        `compute_loss` when `args.bf16`: θ₀'s target, every attack iteration on the unwrapped module and the
        training forward. Autocast leaves element-wise ops alone, so δ and its projection stay fp32."""
        stack = contextlib.ExitStack()
        stack.enter_context(super().compute_loss_context_manager())
        stack.enter_context(autocast_context(self.args, self.args.device))
        return stack

    # -- logging ---------------------------------------------------------------------------------------------------
    def log_metric(self, name: str, value: torch.Tensor) -> None:
        """Record a scalar (kept on device, averaged and synced only when the Trainer logs)."""
        self._metrics[name].append(value.detach().float().mean())

    def wants_extra_logging(self) -> bool:
        """True on optimizer steps the Trainer will log: the place for optional extra forward passes."""
        steps = self.args.logging_steps
        if not steps or self.args.logging_strategy == "no":
            return False
        steps = max(int(steps if steps >= 1 else steps * max(self.state.max_steps, 1)), 1)
        return (self.state.global_step + 1) % steps == 0 or self.state.global_step == 0

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._metrics and "loss" in logs:
            for k, vals in self._metrics.items():
                logs[k] = round(torch.stack([v.to("cpu") for v in vals]).mean().item(), 6)
            self._metrics.clear()
        super().log(logs, start_time)

    # -- the hooks around the optimizer step -----------------------------------------------------------------------
    def on_full_backward(self, model: nn.Module) -> None:
        """Called once per optimizer step, after the last micro-batch's backward, before the optimizer step (and
        before the gradient transforms).

        Override for gradient surgery; read / write gradients with :meth:`get_full_grad` / :meth:`set_full_grad`,
        which work with and without DeepSpeed ZeRO.
        """

    def get_full_grad(self, param: nn.Parameter) -> torch.Tensor | None:
        """`param`'s whole gradient (gathered under ZeRO); see `vlmrobust.optim.get_full_grad`."""
        return get_full_grad(param)

    def set_full_grad(self, param: nn.Parameter, grad: torch.Tensor) -> None:
        """Set `param`'s whole gradient (scattered under ZeRO); see `vlmrobust.optim.set_full_grad`."""
        set_full_grad(param, grad)

    def _before_optimizer_step(self, model: nn.Module) -> None:
        if not self._defers_grad_check() and not self._all_finite(model):
            step = self.state.global_step + 1
            if self.args.nonfinite_loss == "stop":
                raise FloatingPointError(nonfinite_message(step, self.args.output_dir))
            self.skipped_steps.append(step)
            print(f"[vlmrobust] non-finite loss or gradient at optimizer step {step}: step skipped "
                  f"({len(self.skipped_steps)} so far).")
            for p in model.parameters():  # the optimizer skips parameters without a gradient
                p.grad = None
            return
        self.on_full_backward(model)
        if self.weight_space.acts_after_backward:
            self.weight_space.after_backward(self.unwrapped(model), self._loss_scale())

    def training_step(self, model: nn.Module, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
        step = self.state.global_step
        self._micro_batch = (step, self._micro_batch[1] + 1 if self._micro_batch[0] == step else 0)
        self._attack_call = 0
        if not all(m.training for m in model.modules()):  # reading the modes is cheaper than setting them all
            model.train()
        inputs = self._prepare_inputs(inputs)
        with self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        finite = torch.isfinite(loss.detach()).all()
        self._finite = finite if self._finite is None else self._finite & finite
        del inputs
        if self.args.n_gpu > 1:
            loss = loss.mean()
        loss = loss / self.current_gradient_accumulation_steps
        sync = self.accelerator.sync_gradients
        if self.is_deepspeed_enabled:
            # DeepSpeed steps the optimizer inside accelerator.backward(); split it to place the hook in between.
            engine = self.model_wrapped
            engine.set_gradient_accumulation_boundary(is_boundary=sync)
            engine.backward(loss, scale_wrt_gas=False)
            if sync:
                self._before_optimizer_step(model)
                engine.step()
                # (without DeepSpeed the Trainer steps after this returns: PostStepCallback runs the constraints)
                self.weight_space.after_step(self.unwrapped(model))
        else:
            self.accelerator.backward(loss)
            if sync:
                self._before_optimizer_step(model)
        return loss.detach()

    # -- the run: guards before and after (`run_guards`) -----------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """`Trainer.train`, guarded: `resume_from_checkpoint=True` takes the newest *complete* checkpoint; an
        earlier run in `output_dir` is refused unless resuming or `overwrite_output_dir`; a resumed run keeps its
        method and threat model unless `resume_allow_config_change`; a run that trains fewer optimizer steps than
        asked raises instead of saving an under-trained model as the result."""
        resume = resolve_resume(self.args.output_dir, resume_from_checkpoint)
        check_output_dir(self.args.output_dir, resume=resume, overwrite=self.args.overwrite_output_dir)
        if resume is not None:
            check_resume_config(self.args, resume)
        check_has_batches(self.args, self.train_dataset)
        out = super().train(resume_from_checkpoint=resume, **kwargs)
        check_steps_trained(self)
        report = self.skipped_images_report()
        if report is not None:  # bad_images='skip': the count (0 too) in the metrics, the log and once on screen
            out.metrics.update(report)
            self.state.log_history.append({**report, "step": self.state.global_step})
            if self.is_world_process_zero():
                n, names = report["skipped_images"], report["skipped_image_files"]
                more = f" (first {len(names)})" if n > len(names) else ""
                print(f"[vlmrobust] bad_images='skip': {n} unreadable training image(s) skipped"
                      + (f"{more}: {'; '.join(names)}" if n else "") + ".")
        return out

    # -- checkpoints: the weight-space hooks' state beside the optimizer's ------------------------------------------
    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            self.weight_space.save(output_dir)
            if self.skipped_image_names:  # bad_images='skip': a resumed run keeps counting from here
                from ..utils.io import atomic_write_json

                atomic_write_json(Path(output_dir) / SKIPPED_IMAGES_NAME, sorted(self.skipped_image_names))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            names = [n for n, _ in self.unwrapped(self.model).named_parameters()]
            self.weight_space.load(checkpoint, names)
            skipped = Path(checkpoint) / SKIPPED_IMAGES_NAME
            if skipped.is_file():
                import json

                self.skipped_image_names.update(json.loads(skipped.read_text()))

    # -- saving / loading ------------------------------------------------------------------------------------------
    def _native_state_dict(self, state_dict: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        native = getattr(self.vlm, "model", self.vlm)
        full = {k: v.detach().cpu() for k, v in native.state_dict().items()}
        extra = {}
        for k, v in state_dict.items():
            if k in self._native_keys:
                full[self._native_keys[k]] = v.detach().cpu()
            else:
                extra[k] = v.detach().cpu()
        return full, extra

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        full, extra = self._native_state_dict(state_dict)
        if extra:
            atomic_save_safetensors(Path(output_dir) / EXTRA_WEIGHTS_NAME, extra, metadata={"format": "pt"})
        self.vlm.save_pretrained(output_dir, state_dict=full, **self.args.to_vlmrobust_dict())
        # pickled without its `*_token` secrets (`RobustTrainingArguments.__getstate__`)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        umask_modes(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        from safetensors.torch import load_file

        model = model if model is not None else self.model
        ckpt = Path(resume_from_checkpoint)
        weights = [ckpt / n for n in (OPEN_CLIP_WEIGHTS_NAME, HF_WEIGHTS_NAME) if (ckpt / n).is_file()]
        if not weights:
            raise FileNotFoundError(f"No vlmrobust checkpoint weights in {ckpt} ({OPEN_CLIP_WEIGHTS_NAME} / "
                                    f"{HF_WEIGHTS_NAME}): is this a checkpoint folder written by a vlmrobust trainer?")
        check_safetensors(weights[0])
        full = load_file(weights[0], device="cpu")
        on_disk = {k: saved_key(n, full) for k, n in self._native_keys.items()}
        sd = {k: full[n] for k, n in on_disk.items() if n is not None}
        missing = [k for k, n in on_disk.items() if n is None]
        if (ckpt / EXTRA_WEIGHTS_NAME).is_file():
            sd.update(load_file(ckpt / EXTRA_WEIGHTS_NAME, device="cpu"))
        if missing:
            raise ValueError(f"Checkpoint {ckpt} lacks {len(missing)} trained tensors, e.g. {missing[:3]}.")
        model.load_state_dict(sd, strict=False)
