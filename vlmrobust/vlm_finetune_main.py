"""The body of `recipes/digrap_vqa.py`: LoRA fine-tuning of an LVLM (LLaVA, Qwen-VL) on VQA with DiGraP
(arXiv 2502.15895) or a baseline (vanilla, L2-SP, FTP, SPD, LP-FT; WiSE-FT of the LoRA delta), evaluated in
distribution and under two distribution shifts.

Offline (`shapes-vqa`): the tiny random fixture is first taught shapes-VQA on every colour and shape (`sft_steps`,
the stand-in for pretraining; 0 for a real checkpoint), then LoRA-fine-tuned on the in-distribution part only
(`id_colours` × `id_shapes`). Evaluation: ID (held-out questions of the same part), near OOD (unseen colours, seen
shapes), far OOD (unseen colours and shapes), clean VQA accuracy. The LoRA stage is `DiGraPVQATrainer` (method
`digrap_vqa`, a `transformers.Trainer`: one process, DDP or DeepSpeed ZeRO-2 under `accelerate launch`); the
evaluations run on the main process.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .trainers.digrap_vqa_config import DiGraPVQAConfig


@dataclass
class VQAFinetuneScriptArguments:
    """Model, data and evaluation of `recipes/digrap_vqa.py`.

    Args:
        model_name_or_path (`str`): `llava:<id or path>`, `qwen_vl:<id or path>`, `paligemma:<id or path>`, or the
            fixtures `llava:tiny` / `qwen_vl:tiny` / `paligemma:tiny`.
        train_samples (`int`): in-distribution training questions.
        eval_samples (`int`): questions per evaluation split (ID, near, far).
        sft_steps (`int`): whole-model VQA fine-tuning on every colour and shape before LoRA (the offline stand-in
            for pretraining; 0 for a real checkpoint).
        id_colours / id_shapes (`list[str]`): the in-distribution part of shapes-VQA (fine-tuning data).
        near_colours (`list[str]`): near OOD: these colours, the ID shapes.
        far_colours / far_shapes (`list[str]`): far OOD: these colours and shapes.
        wise_alphas (`list[float]`): also evaluate WiSE-FT of the LoRA delta at these α (`W₀ + α·s·B·A`).
    """

    model_name_or_path: str = field(default="llava:tiny", metadata={"help": "create_model id."})
    train_samples: int = field(default=512, metadata={"help": "In-distribution training questions."})
    eval_samples: int = field(default=200, metadata={"help": "Questions per evaluation split."})
    sft_steps: int = field(default=0, metadata={"help": "Whole-model VQA steps on all colours / shapes first."})
    sft_learning_rate: float = field(default=3e-3, metadata={"help": "Learning rate of that stage."})
    sft_batch_size: int = field(default=32, metadata={"help": "Batch size of that stage."})
    sft_samples: int = field(default=1024, metadata={"help": "Questions of that stage (every colour and shape)."})
    tiny_image_size: int = field(default=0, metadata={"help": "Image side of the `tiny` fixtures (0: default)."})
    tiny_hidden: int = field(default=0, metadata={"help": "Width of the `tiny` fixtures (0: default)."})
    id_colours: list[str] = field(default_factory=lambda: ["red", "green", "blue"],
                                  metadata={"help": "In-distribution colours."})
    id_shapes: list[str] = field(default_factory=lambda: ["circle", "square"],
                                 metadata={"help": "In-distribution shapes."})
    near_colours: list[str] = field(default_factory=lambda: ["yellow", "purple", "orange"],
                                    metadata={"help": "Near OOD: unseen colours, ID shapes."})
    far_colours: list[str] = field(default_factory=lambda: ["yellow", "purple", "orange"],
                                   metadata={"help": "Far OOD colours."})
    far_shapes: list[str] = field(default_factory=lambda: ["triangle", "diamond"],
                                  metadata={"help": "Far OOD shapes."})
    wise_alphas: list[float] = field(default_factory=list, metadata={"help": "WiSE-FT alphas of the LoRA delta."})
    eval_batch_size: int = field(default=50, metadata={"help": "Evaluation batch size."})


def shapes_splits(script: VQAFinetuneScriptArguments, model, seed: int) -> dict:
    """train / id / near / far `ShapesVQA` sets (disjoint seeds), and `sft` (every colour and shape)."""
    from .data.shapes_vqa import ShapesVQA

    kw = dict(image_size=model.image_size, transform=model.preprocess)
    return {
        "sft": ShapesVQA(script.sft_samples, seed=seed + 40_000, **kw),
        "train": ShapesVQA(script.train_samples, seed=seed, colours=script.id_colours, shapes=script.id_shapes, **kw),
        "id": ShapesVQA(script.eval_samples, seed=seed + 10_000, colours=script.id_colours, shapes=script.id_shapes,
                        **kw),
        "near": ShapesVQA(script.eval_samples, seed=seed + 20_000, colours=script.near_colours,
                          shapes=script.id_shapes, **kw),
        "far": ShapesVQA(script.eval_samples, seed=seed + 30_000, colours=script.far_colours,
                         shapes=script.far_shapes, **kw),
    }


def prepare(script: VQAFinetuneScriptArguments, args: DiGraPVQAConfig) -> tuple:
    """The model before LoRA (the offline fixture taught shapes-VQA on every colour and shape when `sft_steps`) and
    the data splits; returns `(model, data, timings)`."""
    from .models import create_model
    from .vlm_recipe_main import LVLMScriptArguments, finetune_vqa, tiny_fixture_kwargs

    tiny = tiny_fixture_kwargs(LVLMScriptArguments(model_name_or_path=script.model_name_or_path,
                                                   tiny_image_size=script.tiny_image_size,
                                                   tiny_hidden=script.tiny_hidden))
    load = {"device": args.device}  # this process's device (the training arguments chose it)
    if args.bf16 and not tiny:
        load["torch_dtype"] = torch.bfloat16  # the frozen base in bf16; PEFT keeps the adapters in fp32
    model = create_model(script.model_name_or_path, **tiny, **load)
    data, timings = shapes_splits(script, model, args.seed), {}
    if script.sft_steps > 0:
        t0 = time.time()
        model.requires_grad_(True)
        finetune_vqa(model, data["sft"], steps=script.sft_steps, batch_size=script.sft_batch_size,
                     lr=script.sft_learning_rate, seed=args.seed)
        timings["sft_s"] = round(time.time() - t0, 1)
    model.requires_grad_(False)
    return model, data, timings


def lora_finetune(model, data: dict, script: VQAFinetuneScriptArguments, args: DiGraPVQAConfig,
                  timings: dict | None = None, save: bool = True, eval_before: bool = True,
                  resume_from_checkpoint=None) -> dict:
    """LoRA on `model` (in place) through `DiGraPVQATrainer`: eval → [LP-FT's probe of the output head → eval] →
    fine-tune with the weight-space hooks → eval (ID / near / far, WiSE-FT α) → [save the merged checkpoint, the
    adapters and `results.json` to `output_dir`]; returns the summary (`eval_before=False` skips the first
    evaluation, e.g. when comparing several methods from one model). Evaluations run on the main process only;
    the other processes get a summary without results."""
    from accelerate import PartialState

    from .eval.vqa import evaluate_vqa
    from .models.lora import lora_scale
    from .trainers.digrap_vqa_trainer import DiGraPVQATrainer
    from .utils.io import atomic_write_json
    from .vlm_recipe_main import VQAPixels

    state = PartialState()
    t_start, timings = time.time(), dict(timings or {})
    trainer = DiGraPVQATrainer(model, args, train_dataset=VQAPixels(data["train"], model.preprocess))
    candidates = data["sft"].answer_candidates()

    def evaluate(name: str) -> dict:
        if not state.is_main_process:
            return {}
        t0 = time.time()
        model.model.eval()
        out = {split: evaluate_vqa(model, data[split], epsilons=(), answer_mode="rank", candidates=candidates,
                                   batch_size=script.eval_batch_size, seed=args.seed, desc=f"{name} {split}")
               ["clean"] for split in ("id", "near", "far")}
        timings[f"eval_{name}_s"] = round(time.time() - t0, 1)
        print(f"[eval {name}] " + ", ".join(f"{k} {100 * v:.1f}" for k, v in out.items()))
        return out

    model.to(args.device)
    results = {"before": evaluate("before")} if eval_before else {}
    if args.lp_steps:  # LP-FT: probe the output head on the frozen model, evaluate it, then fine-tune from it
        t0 = time.time()
        trainer.linear_probe(resumed=resume_from_checkpoint not in (None, False))
        timings["lp_s"] = round(time.time() - t0, 1)
        results["probed"] = evaluate("probed")
    t0 = time.time()
    train_out = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    timings["train_s"] = round(time.time() - t0, 1)
    results["after"] = evaluate("after")
    for alpha in script.wise_alphas:
        with lora_scale(model, alpha):
            results[f"wise-ft α={alpha:g}"] = evaluate(f"wise-ft α={alpha:g}")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    summary = {"method": args.method, "weight_space": args.weight_space, "adversarial": args.adversarial,
               "lp_steps": args.lp_steps, "model": script.model_name_or_path, "eval_samples": script.eval_samples,
               "seed": args.seed, "world_size": args.world_size,
               "splits": {"id": [script.id_colours, script.id_shapes], "near": [script.near_colours, script.id_shapes],
                          "far": [script.far_colours, script.far_shapes]},
               "results": results if state.is_main_process else {},
               "final_loss": losses[-1] if losses else None, "train_loss": train_out.training_loss,
               "omega": next((h.omegas() for h in trainer.weight_space.hooks if hasattr(h, "omegas")), None),
               "timings": {**timings, "total_s": round(time.time() - t_start, 1)}}
    if save:
        out = Path(args.output_dir)
        trainer.save_model(str(out))  # merged native weights + the unmerged adapters (vlmrobust_extra.safetensors)
        base = script.model_name_or_path.split(":", 1)[-1]
        trainer.save_adapter(out / "adapter", None if base.startswith("tiny") else base)  # PEFT's layout
        if state.is_main_process:
            trainer.weight_space.save(out)
            atomic_write_json(out / "results.json", summary)
    state.wait_for_everyone()
    return summary


def run_lvlm_digrap_recipe(argv=None) -> dict:
    """Parse `(VQAFinetuneScriptArguments, DiGraPVQAConfig)`, then [SFT] → LoRA → eval → fine-tune with the
    weight-space hooks (`DiGraPVQATrainer`) → eval (ID / near / far, and WiSE-FT α) → save → `results.json`.
    Under `accelerate launch` every process runs the same seeded SFT and trains its share of each batch."""
    from transformers import set_seed

    from .recipe_main import guard_output_dir
    from .script_utils import RecipeParser
    from .trainers.digrap_vqa_trainer import DiGraPVQATrainer
    from .utils.distributed import check_zero_stage

    script, args = RecipeParser((VQAFinetuneScriptArguments, DiGraPVQAConfig)).parse_args_and_config(argv)
    resume = guard_output_dir(args)
    _ = args.device  # the training arguments set up the process group (CPU / GPU, DDP / DeepSpeed) first
    # refuse an unsupported ZeRO stage before the model loads and the SFT stage runs (ZeRO-3 would partition it)
    check_zero_stage(args, DiGraPVQATrainer.supported_zero_stages, "DiGraPVQATrainer (method digrap_vqa)")
    set_seed(args.seed)
    model, data, timings = prepare(script, args)
    summary = lora_finetune(model, data, script, args, timings, resume_from_checkpoint=resume)
    if summary["results"]:
        print(json.dumps({k: v for k, v in summary.items() if k in ("results", "timings")}, indent=1))
    return summary
