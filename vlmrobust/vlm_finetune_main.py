"""The body of `recipes/digrap_vqa.py`: LoRA fine-tuning of an LVLM (LLaVA, Qwen-VL) on VQA with DiGraP
(arXiv 2502.15895) or a baseline (vanilla, L2-SP, FTP, SPD; WiSE-FT of the LoRA delta), evaluated in distribution and
under two distribution shifts.

Offline (`shapes-vqa`): the tiny random fixture is first taught shapes-VQA on every colour and shape (`sft_steps`,
the stand-in for pretraining; 0 for a real checkpoint), then LoRA-fine-tuned on the in-distribution part only
(`id_colours` × `id_shapes`). Evaluation: ID (held-out questions of the same part), near OOD (unseen colours, seen
shapes), far OOD (unseen colours and shapes), clean VQA accuracy. The training loop is `finetune_vqa` (one process;
no DDP / DeepSpeed yet) with the weight-space hooks between backward and step.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .trainers.base_config import RobustTrainingArguments


@dataclass
class VQAFinetuneScriptArguments:
    """Model, data and evaluation of `recipes/digrap_vqa.py`.

    Args:
        model_name_or_path (`str`): `llava:<id or path>`, `qwen_vl:<id or path>`, or the fixtures `llava:tiny` /
            `qwen_vl:tiny`.
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


@dataclass
class DiGraPVQAConfig(RobustTrainingArguments):
    """LoRA fine-tuning of an LVLM's language model on VQA answers with a weight-space method.

    Uses `output_dir`, `seed`, `max_steps`, `per_device_train_batch_size`, `learning_rate`, `weight_decay` and the
    weight-space arguments (`weight_space`, `digrap_*`, `l2sp_lambda`, `ftp_*`, `spd_*`) of
    `RobustTrainingArguments`; the attack arguments are unused.

    Args:
        lora_r (`int`, *optional*, defaults to 4): LoRA rank (LLaVA-1.5 in FRAMES-VQA: 4 on q / v).
        lora_alpha (`float`, *optional*): LoRA α; defaults to 2r.
        lora_target_modules (`list[str]`, *optional*, defaults to `["q_proj", "v_proj"]`): attention projections of
            the language model to adapt.
        lp_steps (`int`, *optional*, defaults to 0): LP-FT (Kumar et al., arXiv 2202.10054): first train the language
            model's output head alone (the linear probe: every other weight frozen) for this many steps at
            `lp_learning_rate`, then fine-tune the LoRA adapters *and* the probed head (θ₀ of the head = the probed
            head for the weight-space hooks). 0: no probe, the head stays frozen.
        lp_learning_rate (`float`, *optional*, defaults to 1e-3): the probe's AdamW learning rate.
    """

    method: str = field(default="digrap_vqa", metadata={"help": "Method name (not a registered trainer)."})
    weight_space: str = field(default="digrap", metadata={"help": "'digrap', 'none', 'l2sp', 'ftp', 'spd'."})
    lora_r: int = field(default=4, metadata={"help": "LoRA rank."})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (default 2r)."})
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"],
                                           metadata={"help": "Language-model projections to adapt."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW peak learning rate (warm-up 10%, cosine)."})
    max_steps: int = field(default=300, metadata={"help": "LoRA fine-tuning steps."})
    lp_steps: int = field(default=0, metadata={"help": "LP-FT: output-head probe steps before LoRA (0: none)."})
    lp_learning_rate: float = field(default=1e-3, metadata={"help": "LP-FT: the probe's learning rate."})

    def __post_init__(self):
        super().__post_init__()
        if self.lp_steps < 0:
            raise ValueError(f"lp_steps must be >= 0, got {self.lp_steps}.")


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


@contextlib.contextmanager
def lora_scale(model, alpha: float):
    """WiSE-FT of a LoRA model (arXiv 2109.01903): every LoRA layer's delta scaled by `alpha` (W₀ + α·s·B·A, the
    interpolation of the merged weights), restored on exit."""
    layers = [m for m in model.modules() if isinstance(getattr(m, "scaling", None), dict) and hasattr(m, "lora_A")]
    saved = [dict(m.scaling) for m in layers]
    try:
        for m in layers:
            for k in m.scaling:
                m.scaling[k] = m.scaling[k] * float(alpha)
        yield model
    finally:
        for m, s in zip(layers, saved):
            m.scaling.clear()
            m.scaling.update(s)


def prepare(script: VQAFinetuneScriptArguments, args: DiGraPVQAConfig) -> tuple:
    """The model before LoRA (the offline fixture taught shapes-VQA on every colour and shape when `sft_steps`) and
    the data splits; returns `(model, data, timings)`."""
    from .models import create_model
    from .vlm_recipe_main import LVLMScriptArguments, finetune_vqa, tiny_fixture_kwargs

    tiny = tiny_fixture_kwargs(LVLMScriptArguments(model_name_or_path=script.model_name_or_path,
                                                   tiny_image_size=script.tiny_image_size,
                                                   tiny_hidden=script.tiny_hidden))
    load = {"device": "cuda" if torch.cuda.is_available() and not args.use_cpu else "cpu"}
    if args.bf16 and not tiny:
        load["torch_dtype"] = torch.bfloat16  # LoRA adapters train in the base's dtype here (no autocast)
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
                  timings: dict | None = None, save: bool = True, eval_before: bool = True) -> dict:
    """LoRA on `model` (in place), eval → [LP-FT's probe of the output head → eval] → fine-tune with the
    weight-space hooks → eval (ID / near / far, WiSE-FT α) → [save the adapters and `results.json` to
    `output_dir`]; returns the summary (`eval_before=False` skips the first evaluation, e.g. when comparing
    several methods from one model)."""
    from .eval.vqa import evaluate_vqa
    from .models.lvlm_base import apply_lora, lora_config
    from .optim import GradientTransform, ReferenceWeights, WeightSpaceRunner, build_weight_space
    from .utils.io import atomic_write_json
    from .vlm_recipe_main import finetune_vqa

    t_start, timings = time.time(), dict(timings or {})
    with torch.random.fork_rng():
        torch.manual_seed(args.seed)  # the same adapters for the same seed
        model.model = apply_lora(model.model, lora_config(lora_r=args.lora_r, lora_alpha=args.lora_alpha,
                                                          target_modules=args.lora_target_modules))
    candidates = data["sft"].answer_candidates()

    def evaluate(name: str) -> dict:
        t0 = time.time()
        out = {split: evaluate_vqa(model, data[split], epsilons=(), answer_mode="rank", candidates=candidates,
                                   batch_size=script.eval_batch_size, seed=args.seed, desc=f"{name} {split}")
               ["clean"] for split in ("id", "near", "far")}
        timings[f"eval_{name}_s"] = round(time.time() - t0, 1)
        print(f"[eval {name}] " + ", ".join(f"{k} {100 * v:.1f}" for k, v in out.items()))
        return out

    results = {"before": evaluate("before")} if eval_before else {}
    head = model.model.get_output_embeddings() if args.lp_steps else None
    if head is not None:  # LP-FT: probe the output head on the frozen model, then fine-tune LoRA + the probed head
        t0, adapters = time.time(), [p for p in model.parameters() if p.requires_grad]
        model.requires_grad_(False)
        head.requires_grad_(True)
        finetune_vqa(model, data["train"], steps=args.lp_steps, batch_size=args.per_device_train_batch_size,
                     lr=args.lp_learning_rate, weight_decay=args.weight_decay, seed=args.seed, log_every=0)
        for p in adapters:
            p.requires_grad_(True)
        timings["lp_s"] = round(time.time() - t0, 1)
        results["probed"] = evaluate("probed")
    hooks = build_weight_space(args)  # θ₀: the trainable tensors now (LoRA adapters: 0; an LP-FT head: the probe)
    reference = (ReferenceWeights(model, trainable_only=True) if any(h.needs_reference for h in hooks) else None)
    runner = WeightSpaceRunner([h for h in hooks if isinstance(h, GradientTransform)],
                               [h for h in hooks if not isinstance(h, GradientTransform)], reference)
    t0 = time.time()
    losses = finetune_vqa(model, data["train"], steps=args.max_steps, batch_size=args.per_device_train_batch_size,
                          lr=args.learning_rate, weight_decay=args.weight_decay, seed=args.seed,
                          log_every=args.logging_steps if args.logging_steps >= 1 else 0,
                          weight_space=runner if runner else None)
    timings["train_s"] = round(time.time() - t0, 1)
    results["after"] = evaluate("after")
    for alpha in script.wise_alphas:
        with lora_scale(model, alpha):
            results[f"wise-ft α={alpha:g}"] = evaluate(f"wise-ft α={alpha:g}")
    summary = {"method": args.method, "weight_space": args.weight_space, "lp_steps": args.lp_steps,
               "model": script.model_name_or_path, "eval_samples": script.eval_samples, "seed": args.seed,
               "splits": {"id": [script.id_colours, script.id_shapes], "near": [script.near_colours, script.id_shapes],
                          "far": [script.far_colours, script.far_shapes]},
               "results": results, "final_loss": losses[-1] if losses else None,
               "omega": next((h.omegas() for h in hooks if hasattr(h, "omegas")), None),
               "timings": {**timings, "total_s": round(time.time() - t_start, 1)}}
    if save:
        out = Path(args.output_dir)
        model.save_pretrained(out, **args.to_vlmrobust_dict())  # PEFT adapter layout
        if head is not None:  # LP-FT: the fine-tuned head is not part of the adapters
            from safetensors.torch import save_file

            save_file({"weight": head.weight.detach().cpu().contiguous()}, str(out / "lp_ft_head.safetensors"))
        if runner:
            runner.save(out)
        atomic_write_json(out / "results.json", summary)
    return summary


def run_lvlm_digrap_recipe(argv=None) -> dict:
    """Parse `(VQAFinetuneScriptArguments, DiGraPVQAConfig)`, then [SFT] → LoRA → eval → fine-tune with the
    weight-space hooks → eval (ID / near / far, and WiSE-FT α) → save the adapters → `results.json`."""
    from transformers import set_seed

    from .script_utils import RecipeParser

    script, args = RecipeParser((VQAFinetuneScriptArguments, DiGraPVQAConfig)).parse_args_and_config(argv)
    set_seed(args.seed)
    model, data, timings = prepare(script, args)
    summary = lora_finetune(model, data, script, args, timings)
    print(json.dumps({k: v for k, v in summary.items() if k in ("results", "timings")}, indent=1))
    return summary
