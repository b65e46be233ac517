"""The body of the LVLM recipes (`recipes/fare_llava.py`, `recipes/fare_qwen_vl.py`).

Offline quickstart flow: build the tiny random LVLM, teach it shapes-VQA (supervised fine-tuning of the whole model,
`sft_steps`; skipped for a real checkpoint by setting it to 0), evaluate VQA accuracy clean and under APGD, run FARE
on the LVLM's own vision tower (language side frozen), save in transformers' layout, reload through the backend
and evaluate again. `results.json` holds both evaluations.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset


# -- supervised fine-tuning on VQA (teacher-forced answer CE) ---------------------------------------------------------
def finetune_vqa(model, dataset, *, steps: int = 300, batch_size: int = 32, lr: float = 1e-3,
                 weight_decay: float = 0.0, seed: int = 0, log_every: int = 50) -> list[float]:
    """Fine-tune an LVLM's trainable parameters on VQA answers (prompt / image tokens masked); returns the losses.

    A plain AdamW loop with linear warm-up (10%) and cosine decay: enough for the offline fixtures and for LoRA
    smoke runs. Parameters with `requires_grad=False` (e.g. everything but LoRA adapters) stay frozen.

    Args:
        model (`LVLM`): the model to train in place.
        dataset: VQA items (`image` or `pixel_values`, `question`, `answers` / `answer`).
        steps (`int`, *optional*, defaults to 300): optimizer steps.
        batch_size (`int`, *optional*, defaults to 32): examples per step.
        lr (`float`, *optional*, defaults to 1e-3): peak learning rate (high: the fixtures start from random).
        weight_decay (`float`, *optional*, defaults to 0.0): AdamW weight decay.
        seed (`int`, *optional*, defaults to 0): data order.
        log_every (`int`, *optional*, defaults to 50): print the mean loss every n steps (0: silent).
    """
    import math

    from .data.vqa import VQACollator

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("No trainable parameters: unfreeze the model (or apply LoRA) before fine-tuning.")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    collate = VQACollator(model)
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=g,
                                         collate_fn=collate, drop_last=len(dataset) >= batch_size)
    model.train()
    losses, step = [], 0
    while step < steps:
        for batch in loader:
            pixels = batch.pop("pixel_values").to(model.device)
            loss = model.answer_loss(pixels, batch).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            step += 1
            if log_every and step % log_every == 0:
                print(f"[sft] step {step}/{steps} loss {sum(losses[-log_every:]) / log_every:.4f}")
            if step >= steps:
                break
    model.eval()
    return losses


class PixelsOnly(Dataset):
    """Images of a VQA dataset as `{"pixel_values"}` items, for vision-tower training (FARE / TeCoA-free)."""

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i]
        px = item["pixel_values"] if "pixel_values" in item else self.transform(item["image"])
        return {"pixel_values": px}


# -- the recipe -------------------------------------------------------------------------------------------------------
@dataclass
class LVLMScriptArguments:
    """Model, data and evaluation settings of the LVLM recipes.

    Args:
        model_name_or_path (`str`): a `create_model` id: `llava:<id or path>`, `qwen_vl:<id or path>`, or the
            offline random fixtures `llava:tiny` / `qwen_vl:tiny`.
        dataset_name (`str`): `shapes` (offline shapes-VQA) or `vqa-json:<questions.json>,<annotations.json>,<image dir>`.
        sft_steps (`int`): supervised fine-tuning steps on the training split before FARE (0 = none; the offline
            quickstart needs it because the fixtures start from random weights).
        tiny_image_size, tiny_hidden (`int`): geometry of the offline `tiny` fixtures (0 = their defaults); ignored
            for real checkpoints.
    """

    model_name_or_path: str = field(default="llava:tiny", metadata={"help": "create_model id."})
    dataset_name: str = field(default="shapes", metadata={"help": "shapes | vqa-json:<q.json>,<a.json>,<img dir>"})
    train_samples: int = field(default=512, metadata={"help": "Training questions (shapes) / images for FARE."})
    eval_samples: int = field(default=128, metadata={"help": "Questions used for (robust) evaluation."})
    sft_steps: int = field(default=0, metadata={"help": "VQA fine-tuning steps before FARE (0: none)."})
    sft_learning_rate: float = field(default=1e-3, metadata={"help": "VQA fine-tuning learning rate."})
    sft_batch_size: int = field(default=32, metadata={"help": "VQA fine-tuning batch size."})
    tiny_image_size: int = field(default=0, metadata={"help": "Image side (px) of the `tiny` fixtures (0: the "
                                                                "fixture's default; Qwen: a multiple of 28)."})
    tiny_hidden: int = field(default=0, metadata={"help": "Width of both towers of the `tiny` fixtures (0: default)."})
    fare_target: str = field(default="", metadata={"help": "Tower features FARE matches (llava: projector_input | "
                                                             "pooled; qwen_vl: merged | patch); default: backend's."})
    answer_mode: str = field(default="rank", metadata={"help": "'rank' (closed set by likelihood) or 'generate'."})
    eval_before: bool = field(default=True, metadata={"help": "Evaluate before FARE."})
    eval_after: bool = field(default=True, metadata={"help": "Evaluate the reloaded FARE model."})
    eval_epsilons: list[float] = field(default_factory=lambda: [2 / 255, 4 / 255],
                                       metadata={"help": "Budgets for robust evaluation (e.g. 2/255 4/255)."})
    eval_attack_steps: int = field(default=100, metadata={"help": "APGD iterations per run."})
    eval_ensemble: bool = field(default=True, metadata={"help": "One run per distinct reference, worst case."})
    eval_targets: list[str] = field(default_factory=list, metadata={
        "help": "Extra targeted APGD runs (one per answer string) in the worst case per question, e.g. yes no."})
    eval_batch_size: int = field(default=32, metadata={"help": "Evaluation batch size."})


def tiny_fixture_kwargs(script: LVLMScriptArguments) -> dict:
    """`create_model` kwargs giving the `tiny` fixtures the script's geometry (empty for real checkpoints)."""
    backend, _, spec = script.model_name_or_path.partition(":")
    if not spec.startswith("tiny"):
        return {}
    tiny = {}
    if script.tiny_image_size:
        tiny["image_size"] = script.tiny_image_size
    if script.tiny_hidden:
        tiny.update({"vision_hidden": script.tiny_hidden, "text_hidden": script.tiny_hidden} if backend == "llava"
                    else {"hidden": script.tiny_hidden})
    return {"tiny_kwargs": tiny} if tiny else {}


def load_vqa_datasets(script: LVLMScriptArguments, model, seed: int = 0):
    """(train, eval) VQA datasets; images preprocessed to the model's resolution once."""
    from .data.shapes_vqa import ShapesVQA
    from .data.vqa import VQAJsonDataset

    if script.dataset_name == "shapes":
        train = ShapesVQA(script.train_samples, seed=seed, transform=model.preprocess)
        evald = ShapesVQA(script.eval_samples, seed=seed + 10_000, transform=model.preprocess)
        return train, evald
    if script.dataset_name.startswith("vqa-json:"):
        parts = script.dataset_name.split(":", 1)[1].split(",")
        if len(parts) != 3:
            raise ValueError("dataset_name 'vqa-json:' needs '<questions.json>,<annotations.json>,<image dir>'.")
        full = VQAJsonDataset(parts[0], parts[1], parts[2])
        n = len(full)
        idx_eval = list(range(min(script.eval_samples, n)))
        idx_train = list(range(len(idx_eval), min(n, len(idx_eval) + script.train_samples)))
        return torch.utils.data.Subset(full, idx_train), torch.utils.data.Subset(full, idx_eval)
    raise ValueError(f"Unknown dataset_name {script.dataset_name!r}: use 'shapes' or 'vqa-json:<q>,<a>,<images>'.")


def run_lvlm_fare_recipe(config_class, trainer_class, argv=None) -> dict:
    """Parse `(LVLMScriptArguments, config_class)`, then [SFT] → eval → FARE on the tower → save → reload → eval."""
    from accelerate import PartialState
    from transformers import set_seed

    from .eval.vqa import evaluate_vqa
    from .models import create_model
    from .script_utils import RecipeParser
    from .utils.determinism import enable_determinism
    from .utils.distributed import outside_zero3_init
    from .utils.io import atomic_write_json

    script, args = RecipeParser((LVLMScriptArguments, config_class)).parse_args_and_config(argv)
    _ = args.device  # the training arguments set up the process group (CPU / GPU, DDP / DeepSpeed) first
    state = PartialState()
    set_seed(args.seed)
    t_start = time.time()
    kw = {"fare_target": script.fare_target} if script.fare_target else {}
    # whole on every rank (FARE copies the frozen reference tower from it); ZeRO-3 partitions the trained tower only
    with outside_zero3_init():
        model = create_model(script.model_name_or_path, **kw, **tiny_fixture_kwargs(script))
    if args.full_determinism:  # same numbers for any thread count (utils/determinism.py)
        enable_determinism(model)
    train_ds, eval_ds = load_vqa_datasets(script, model, seed=args.seed)
    timings, results = {}, {}
    if script.sft_steps > 0:
        t0 = time.time()
        model.requires_grad_(True)
        finetune_vqa(model, train_ds, steps=script.sft_steps, batch_size=script.sft_batch_size,
                     lr=script.sft_learning_rate, seed=args.seed)
        timings["sft_s"] = round(time.time() - t0, 1)
        if state.is_main_process:  # every rank ran the same seeded SFT; one writes the starting point
            model.save_pretrained(Path(args.output_dir) / "sft")  # in transformers' layout

    def _eval(m, name):
        return evaluate_vqa(m, eval_ds, script.eval_epsilons, steps=script.eval_attack_steps,
                            batch_size=script.eval_batch_size, answer_mode=script.answer_mode,
                            ensemble=script.eval_ensemble, targets=tuple(script.eval_targets), seed=args.seed,
                            desc=name)

    if script.eval_before and state.is_main_process:
        results["before"] = _eval(model, "before")
        print(f"[eval before] {json.dumps({k: results['before'][k] for k in ('clean', 'robust')})}")
    trainer = trainer_class(model, args, train_dataset=PixelsOnly(train_ds, model.preprocess))
    t0 = time.time()
    train_out = trainer.train()
    timings["train_s"] = round(time.time() - t0, 1)
    trainer.save_model(args.output_dir)
    state.wait_for_everyone()
    if script.eval_after and state.is_main_process:
        backend = script.model_name_or_path.split(":", 1)[0]
        with outside_zero3_init():
            trained = create_model(f"{backend}:{args.output_dir}", **kw)
        if args.full_determinism:
            enable_determinism(trained)
        results["after"] = _eval(trained, "after")
        print(f"[eval after]  {json.dumps({k: results['after'][k] for k in ('clean', 'robust')})}")
    timings["total_s"] = round(time.time() - t_start, 1)
    summary = {"method": args.method, "model": script.model_name_or_path, "dataset": script.dataset_name,
               "epsilon": args.epsilon, "norm": args.attack_norm, "train_metrics": train_out.metrics,
               "timings": timings, "results": results}
    if script.dataset_name == "shapes":
        summary["chance"] = eval_ds.chance_accuracy()
    if state.is_main_process:
        atomic_write_json(Path(args.output_dir) / "results.json", summary)
        print(f"Wrote {args.output_dir}/results.json and the checkpoint ({json.dumps(timings)})")
    state.wait_for_everyone()
    return summary
