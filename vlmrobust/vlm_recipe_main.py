"""The body of the LVLM recipes (`recipes/fare_llava.py`, `recipes/fare_qwen_vl.py`, `recipes/grace_vqa.py`).

Offline quickstart flow: build the tiny random LVLM, teach it shapes-VQA (supervised fine-tuning of the whole model,
`sft_steps`; skipped for a real checkpoint by setting it to 0), evaluate VQA accuracy clean and under APGD, run FARE
on the LVLM's own vision tower (language side frozen), save in transformers' layout, reload through the backend
and evaluate again. Both evaluations run through the suite runner on a generated VQA suite (`vqa_recipe_suite`):
`results.json` is the runner's file (`vlmrobust.results/v2`) with a `run` section naming the rows before / after,
and `report.md` renders it.
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

    A plain one-process AdamW loop with linear warm-up (10%) and cosine decay: the offline fixtures' stand-in for
    pretraining (the recipes' `sft_steps`); the methods train through their `RobustTrainer`. Parameters with
    `requires_grad=False` stay frozen.

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


class VQAPixels(PixelsOnly):
    """VQA items as `{"pixel_values", "question", "answers" / "answer"}`, for trainers on the answer loss (GRACE)."""

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i]
        out = super().__getitem__(i)
        out.update({k: item[k] for k in ("question", "answers", "answer") if k in item})
        return out


# -- the recipe -------------------------------------------------------------------------------------------------------
@dataclass
class LVLMScriptArguments:
    """Model, data and evaluation settings of the LVLM recipes.

    Args:
        model_name_or_path (`str`): a `create_model` id: `llava:<id or path>`, `qwen_vl:<id or path>`,
            `paligemma:<id or path>` (VQA methods only), or the offline random fixtures `llava:tiny` / `qwen_vl:tiny` /
            `paligemma:tiny`.
        dataset_name (`str`): a VQA data source (`vlmrobust info` lists them): `shapes-vqa` (offline, generated),
            `vqa-json:<questions.json>,<annotations.json>,<image dir>`, or a Hub id / `save_to_disk` folder.
        sft_steps (`int`): supervised fine-tuning steps on the training split before FARE (0 = none; the offline
            quickstart needs it because the fixtures start from random weights).
        tiny_image_size, tiny_hidden (`int`): geometry of the offline `tiny` fixtures (0 = their defaults); ignored
            for real checkpoints.
    """

    model_name_or_path: str = field(default="llava:tiny", metadata={"help": "create_model id."})
    dataset_name: str = field(default="shapes-vqa", metadata={
        "help": "VQA data source: shapes-vqa | vqa-json:<q.json>,<a.json>,<img dir> | <Hub id> (`vlmrobust info`)."})
    dataset_train_split: str = field(default="train", metadata={"help": "Training split (Hub datasets)."})
    dataset_eval_split: str = field(default="validation", metadata={
        "help": "Evaluation split (Hub datasets; VQAv2's test answers are withheld, hence validation)."})
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

    def __post_init__(self):
        from .data.sources import resolve_source

        resolve_source(self.dataset_name, "vqa")  # a bad --dataset_name fails before any model loads


def tiny_fixture_kwargs(script: LVLMScriptArguments) -> dict:
    """`create_model` kwargs giving the `tiny` fixtures the script's geometry (empty for real checkpoints)."""
    backend, _, spec = script.model_name_or_path.partition(":")
    if not spec.startswith("tiny"):
        return {}
    tiny = {}
    if script.tiny_image_size:
        tiny["image_size"] = script.tiny_image_size
    if script.tiny_hidden:
        two_towers = backend in ("llava", "paligemma")
        tiny.update({"vision_hidden": script.tiny_hidden, "text_hidden": script.tiny_hidden} if two_towers
                    else {"hidden": script.tiny_hidden})
    return {"tiny_kwargs": tiny} if tiny else {}


def load_vqa_datasets(script: LVLMScriptArguments, model, seed: int = 0):
    """(train, eval) datasets of any registered VQA source (`--dataset_name`, see `vlmrobust.data.sources`).

    Generated sets (`shapes-vqa`) draw the evaluation questions from another seed; one-split files (`vqa-json`) give
    the first `eval_samples` questions to evaluation and the next `train_samples` to training; Hub datasets use
    their `dataset_train_split` / `dataset_eval_split`.
    """
    from .data.sources import load_train_eval

    return load_train_eval(script.dataset_name, "vqa", train_split=script.dataset_train_split,
                           eval_split=script.dataset_eval_split, n_train=script.train_samples,
                           n_eval=script.eval_samples, seed=seed, image_size=model.image_size,
                           preprocess=model.preprocess)


def load_train_dataset(script: LVLMScriptArguments, model, seed: int = 0):
    """The VQA training set of `--dataset_name`, disjoint from the questions `vqa_recipe_suite` evaluates.

    Generated sets (`shapes-vqa`) evaluate questions drawn from seed + 10,000; Hub datasets evaluate another split;
    one-split files (`vqa-json`) train on the questions outside the suite's seeded evaluation subset.
    """
    from .data.sources import resolve_source, subset_indices

    train, _ = load_vqa_datasets(script, model, seed=seed)
    if resolve_source(script.dataset_name, "vqa").name != "vqa-json":
        return train
    full = train.dataset if isinstance(train, torch.utils.data.Subset) else train
    held_out = set(subset_indices(len(full), script.eval_samples, seed))
    return torch.utils.data.Subset(full, [i for i in range(len(full)) if i not in held_out][:script.train_samples])


def vqa_recipe_suite(script: LVLMScriptArguments, seed: int = 0) -> dict:
    """The recipe's evaluation as a one-dataset VQA suite: `eval_samples` questions (shapes-VQA generated with seed
    + 10,000, a seeded subset of the vqa-json questions, or of a Hub dataset's `dataset_eval_split`), APGD on the
    answer loss at `eval_epsilons`, every ε from the clean images (`evaluate_vqa`'s protocol)."""
    from .data.sources import resolve_source
    from .eval.protocol import generated_vqa_suite

    kind = resolve_source(script.dataset_name, "vqa").name
    source, data_seed, vqa, split = script.dataset_name, seed, {}, script.dataset_eval_split
    if kind == "shapes-vqa":
        source, data_seed, split = "shapes-vqa", seed + 10_000, None
    elif kind == "vqa-json":
        q, a, images = script.dataset_name.split(":", 1)[1].split(",")
        source, split, vqa = "vqa-json", None, {"questions_file": q, "annotations_file": a, "image_dir": images}
    return generated_vqa_suite(
        source=source, split=split, n_samples=script.eval_samples, seed=data_seed, attack_seed=seed,
        batch_size=script.eval_batch_size, epsilons=script.eval_epsilons, steps=script.eval_attack_steps,
        answer_mode=script.answer_mode, ensemble=script.eval_ensemble, targets=script.eval_targets, vqa=vqa,
        name=f"recipe-{kind}")


def run_lvlm_fare_recipe(method="fare", argv=None) -> dict:
    """Parse `(LVLMScriptArguments, <method's config>)`, then [SFT] → eval → train → save → reload → eval;
    returns the results dict (`vlmrobust.results/v2`, with the `run` section) on the main process.

    `method` is a registered method's name or config class (default FARE) whose `backends` include the LVLM's.
    Tower methods (FARE) train on the images alone; a trainer with `trains_on_answers` (GRACE's LVLM trainer) gets
    the VQA items (images, questions, answers).
    """
    from accelerate import PartialState
    from transformers import set_seed

    from .eval.protocol import SuiteEvaluator
    from .eval.report import console_summary
    from .hub.push import take_hub_push
    from .models import create_model
    from .recipe_main import guard_output_dir
    from .script_utils import RecipeParser
    from .trainers import resolve_method
    from .utils.determinism import enable_determinism
    from .utils.distributed import outside_zero3_init

    method = resolve_method(method)
    script, args = RecipeParser((LVLMScriptArguments, method.config_class)).parse_args_and_config(argv)
    resume = guard_output_dir(args)  # before SFT / evaluation write anything into output_dir
    hub = take_hub_push(args)  # push_to_hub=True: the finished output goes up once, through `vlmrobust push`
    _ = args.device  # the training arguments set up the process group (CPU / GPU, DDP / DeepSpeed) first
    state = PartialState()
    set_seed(args.seed)
    t_start = time.time()
    kw = {"fare_target": script.fare_target} if script.fare_target else {}
    # whole on every rank (FARE copies the frozen reference tower from it); ZeRO-3 partitions the trained tower only
    with outside_zero3_init():
        model = create_model(script.model_name_or_path, **kw, **tiny_fixture_kwargs(script))
    method.check_backend(model)
    if args.full_determinism:  # same numbers for any thread count (utils/determinism.py)
        enable_determinism(model)
    train_ds = load_train_dataset(script, model, seed=args.seed)
    evaluate = SuiteEvaluator(vqa_recipe_suite(script, args.seed), args.output_dir, device=model.device,
                              progress=not args.disable_tqdm)
    timings = {}
    if script.sft_steps > 0:
        t0 = time.time()
        model.requires_grad_(True)
        finetune_vqa(model, train_ds, steps=script.sft_steps, batch_size=script.sft_batch_size,
                     lr=script.sft_learning_rate, seed=args.seed)
        timings["sft_s"] = round(time.time() - t0, 1)
        if state.is_main_process:  # every rank ran the same seeded SFT; one writes the starting point
            model.save_pretrained(Path(args.output_dir) / "sft")  # in transformers' layout

    def _eval(m, name):
        res = evaluate(name, m)
        timings[f"eval_{name}_s"] = evaluate.seconds[name]
        print(f"[eval {name}] " + console_summary({"models": {name: res["summary"]["models"].get(name, {})}}).strip())

    if script.eval_before and state.is_main_process:
        _eval(model, "before")
    on_answers = getattr(method.trainer_class, "trains_on_answers", False)  # GRACE: LoRA on the answer loss
    pixels = (VQAPixels if on_answers else PixelsOnly)(train_ds, model.preprocess)
    trainer = method.trainer_class(model, args, train_dataset=pixels, **method.trainer_kwargs(pixels))
    t0 = time.time()
    train_out = trainer.train(resume_from_checkpoint=resume)
    timings["train_s"] = round(time.time() - t0, 1)
    trainer.save_model(args.output_dir)
    state.wait_for_everyone()
    if script.eval_after and state.is_main_process:
        backend = script.model_name_or_path.split(":", 1)[0]
        with outside_zero3_init():
            trained = create_model(f"{backend}:{args.output_dir}", **kw)
        if args.full_determinism:
            enable_determinism(trained)
        _eval(trained, "after")
    timings["total_s"] = round(time.time() - t_start, 1)
    results = {}
    if state.is_main_process and evaluate.rows:
        what = "LoRA on the answer loss" if on_answers else "the vision tower"
        title = f"{args.method.upper()} ({what}) of {script.model_name_or_path}, {script.dataset_name}"
        intro = (f"Trained with ε = {args.epsilon * 255:.3g}/255 ({args.attack_norm}), {trainer.state.global_step} "
                 f"steps, seed {args.seed}" + (f", after {script.sft_steps} steps of VQA fine-tuning of the whole "
                                               "model" if script.sft_steps else "") + ".")
        results = evaluate.finish(title=title, intro=intro, method=args.method, model=script.model_name_or_path,
                                  dataset=script.dataset_name, epsilon=args.epsilon, norm=args.attack_norm,
                                  config=args.to_vlmrobust_dict()["config"], train_metrics=train_out.metrics,
                                  timings=timings)
        print(f"Wrote {args.output_dir}/results.json, report.md and the checkpoint ({json.dumps(timings)})")
    if hub is not None and state.is_main_process:
        hub.push(args.output_dir)
    state.wait_for_everyone()
    return results


run_lvlm_recipe = run_lvlm_fare_recipe
