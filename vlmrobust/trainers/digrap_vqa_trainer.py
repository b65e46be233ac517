"""DiGraP and its baselines for LoRA fine-tuning of an LVLM (LLaVA, Qwen-VL, PaliGemma) on VQA (arXiv 2502.15895): the
teacher-forced answer cross-entropy, on clean or adversarial images, with the weight-space hooks of `RobustTrainer`
between the full backward and the optimizer step."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from torch import nn

from ..data.vqa import VQACollator
from ..models.lora import ADAPTER, add_lvlm_lora, lora_deltas, merge_lora_state_dict
from ..utils.io import atomic_save_safetensors
from .base_trainer import RobustTrainer, require_vlm
from .digrap_trainer import LP_HEAD_NAME, load_trained_tensors
from .digrap_vqa_config import DiGraPVQAConfig
from .grace_vqa_trainer import AnswerLossSteps, LVLMAnswerModule
from .methods import VQA_BACKENDS, register_method


def probe_output_head(module: LVLMAnswerModule, head: nn.Module, dataset, collate_fn, steps: int, lr: float,
                      batch_size: int, seed: int, device) -> torch.Tensor:
    """LP-FT's probe: train `head` (the language model's output layer) alone on the answer CE of clean images, AdamW
    without decay, every other weight frozen; deterministic for a seed (a seeded sampler, not the distributed one),
    so every process computes the same head. Returns the probed weight (CPU, in the head's dtype)."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, collate_fn=collate_fn, drop_last=len(dataset) >= batch_size,
        sampler=torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)))
    trainable = {n: p.requires_grad for n, p in module.named_parameters()}
    module.requires_grad_(False)
    head.weight.requires_grad_(True)
    opt = torch.optim.AdamW([head.weight], lr=lr, weight_decay=0.0)
    was_training = module.training
    module.eval()
    try:
        for batch in itertools.islice(itertools.cycle(loader), steps):
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            pixels = batch.pop("pixel_values")
            loss = module(pixels, batch).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        module.train(was_training)
        for n, p in module.named_parameters():
            p.requires_grad_(trainable[n])
        head.weight.grad = None
    return head.weight.detach().cpu().clone()


class DiGraPVQATrainer(AnswerLossSteps, RobustTrainer):
    """LoRA fine-tuning of a vlmrobust LVLM on VQA answers with DiGraP (arXiv 2502.15895) or a baseline
    chosen by the config (`weight_space`: none / l2sp / ftp / spd; `lp_steps`: LP-FT). See `DiGraPVQAConfig`.

    LoRA adapters (`vlmrobust.models.lora.add_lvlm_lora`) on the language model's `lora_target_modules` (and the
    image side with `lora_vision`) are trained on the teacher-forced cross-entropy of the reference answer, of the
    clean images or, with `adversarial`, of the training attack's images (`args.attack` on that same loss at θ, as
    `GRACEVQATrainer`). The weight-space rule runs per tensor between the full backward and the optimizer step
    (DiGraP, L2-SP) or right after it (FTP, SPD): `RobustTrainer`'s hooks, the same as the CLIP `DiGraPTrainer`'s,
    with θ₀ = 0 for the adapters (the probed head with LP-FT); θ₀ keeps only the trained tensors (no copy of the
    frozen base), and the hooks' state (DiGraP's ω and its Adam moments) is checkpointed by parameter name and
    restored on resume. DDP and DeepSpeed ZeRO-2 are supported (the shared `RobustTrainer` step); ZeRO-3 is refused
    (the recipes evaluate the in-memory model after training, which ZeRO-3 would leave partitioned).

    The adapters stay unmerged in memory (WiSE-FT of the delta: `lora_scale`); every checkpoint is written in the
    backend's native layout with the adapters merged (plain transformers `from_pretrained` loads it), and the trained
    tensors (adapters, an LP-FT head) unmerged in `vlmrobust_extra.safetensors` (what a resume reads).

    Training items are VQA items with `pixel_values` ([0, 1], the model's resolution), `question` and `answers` /
    `answer`; the default collator is `VQACollator(model)`.
    """

    trains_on_answers = True  # the recipes hand it VQA items, not images alone
    supported_zero_stages = (0, 2)
    reference_trainable_only = True  # θ₀: the adapters (0) and an LP-FT head, not a copy of the frozen LVLM

    def __init__(self, model, args: DiGraPVQAConfig, classnames=None, **kwargs):
        require_vlm(model, type(self).__name__)
        if getattr(model, "backend", None) not in VQA_BACKENDS:
            raise ValueError(f"DiGraPVQATrainer trains {', '.join(VQA_BACKENDS)} models, not a "
                             f"{getattr(model, 'backend', None)!r} model (CLIP: method 'digrap', DiGraPTrainer).")
        if not isinstance(args, DiGraPVQAConfig):
            raise TypeError(f"DiGraPVQATrainer takes a DiGraPVQAConfig, got {type(args).__name__}.")
        kwargs.setdefault("data_collator", VQACollator(model))
        self._probed = False
        super().__init__(model, args, **kwargs)

    def trainable_module(self, model, args: DiGraPVQAConfig) -> nn.Module:
        """The LVLM's transformers model with LoRA adapters (and, for LP-FT, its output head) trainable."""
        with torch.random.fork_rng(devices=[]):  # the adapters' initialisation follows `seed`, not the global RNG
            torch.manual_seed(args.seed)
            self.lora = add_lvlm_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout,
                                      args.lora_target_modules, args.lora_vision)
        if args.lp_steps:
            model.model.get_output_embeddings().requires_grad_(True)
        return LVLMAnswerModule(model)

    # -- the loss --------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        x, batch = inputs["pixel_values"], self.targets(inputs)
        if self.args.adversarial:
            x = self._attack(model, x, batch)
        loss = model(x, batch).mean()
        self.log_metric("adv_loss" if self.args.adversarial else "ce_loss", loss)
        return (loss, {"images": x}) if return_outputs else loss

    # -- LP-FT: probe the output head on the frozen model, then fine-tune adapters and head from it ------------------
    def head_name(self) -> str:
        """The output head's parameter name in the trained module."""
        head = self.vlm.model.get_output_embeddings().weight
        return next(n for n, p in self.unwrapped(self.model).named_parameters() if p is head)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if self.args.lp_steps and not self._probed:
            self.linear_probe(resumed=resume_from_checkpoint not in (None, False))
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def linear_probe(self, resumed: bool = False) -> torch.Tensor:
        """LP-FT's first stage (`probe_output_head`, or on a resume the run's own probe from `lp_head.safetensors`):
        sets the head and its θ₀ to the probe; `train` calls it, a recipe may call it first to evaluate the probe."""
        from safetensors.torch import load_file

        module = self.unwrapped(self.model)  # before train(): not wrapped yet, whole on every rank
        head = self.vlm.model.get_output_embeddings()
        path = Path(self.args.output_dir) / LP_HEAD_NAME
        if resumed and path.is_file():
            weight = load_file(path)["weight"]
        else:
            module.to(self.args.device)
            weight = probe_output_head(module, head, self.train_dataset, self.data_collator, self.args.lp_steps,
                                       self.args.lp_learning_rate, self.args.per_device_train_batch_size,
                                       self.args.seed, self.args.device)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                weight = weight.to(self.args.device)
                torch.distributed.broadcast(weight, src=0)  # identical already; make sure
                weight = weight.cpu()
            if self.args.should_save:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_save_safetensors(path, {"weight": weight.contiguous()}, metadata={"format": "pt"})
        name = self.head_name()
        with torch.no_grad():
            head.weight.copy_(weight.to(head.weight))
            if self.reference is not None and name in self.reference:
                self.reference[name].copy_(weight.to(self.reference[name]))
        self._probed = True
        return weight

    def save_adapter(self, folder: str | Path, base_model_name_or_path: str | None = None) -> Path:
        """Write the LoRA adapters in PEFT's layout (`adapter_config.json`, `adapter_model.safetensors`) to `folder`:
        `peft.PeftModel.from_pretrained(<base transformers model>, folder)` rebuilds the fine-tuned model. An LP-FT
        head is not part of it (it is in the merged checkpoint and `lp_head.safetensors`). Main process only."""
        import copy

        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        folder = Path(folder)
        if not self.args.should_save:
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        config = copy.copy(self.lora.peft_config[ADAPTER])
        config.base_model_name_or_path = base_model_name_or_path
        config.save_pretrained(str(folder))
        state = get_peft_model_state_dict(self.vlm.model, adapter_name=ADAPTER)
        save_file({f"base_model.model.{k}": v.detach().cpu().contiguous() for k, v in state.items()},
                  str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        return folder

    # -- checkpoints: merged native weights, the trained tensors unmerged for resuming ------------------------------
    def _native_state_dict(self, state_dict: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        full, extra = super()._native_state_dict(state_dict)
        trained = {n for n, p in self.unwrapped(self.model).named_parameters() if p.requires_grad}
        extra.update({k: v.detach().cpu() for k, v in state_dict.items() if k in trained})
        return merge_lora_state_dict(full, lora_deltas(self.vlm.model)), extra

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        load_trained_tensors(self.unwrapped(model if model is not None else self.model), resume_from_checkpoint,
                             "not a checkpoint written by DiGraPVQATrainer during training",
                             " (another lora_r / lora_target_modules / lp_steps?)")


register_method("digrap_vqa", DiGraPVQAConfig, DiGraPVQATrainer, paper="2502.15895", backends=VQA_BACKENDS,
                recipe="recipes/digrap_vqa.py")
