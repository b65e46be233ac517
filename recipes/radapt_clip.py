"""R-Adapt: a frozen CLIP made robust by a Gaussian input filter and a block-1 robustness anchor (arXiv 2603.12799).

Three ways to get the anchor (`--paradigm`): `training-free` (the standard model on a white image), `model-guided`
(the same from `--guide_model`, e.g. a FARE checkpoint), `radapt-plus` (only the anchor trained, FARE loss, on the
training set); `all` runs the three and writes one side-by-side table with the base model and the guide.

Offline quickstart (tiny CLIP stand-in on digits; needs the FARE quickstart checkpoint as the guide):

    accelerate launch recipes/fare_clip.py --config recipes/configs/quickstart.yaml   # -> outputs/quickstart-fare
    accelerate launch recipes/radapt_clip.py --config recipes/configs/quickstart_radapt.yaml

A real model (ViT-L/14, guided by a released FARE⁴ checkpoint, R-Adapt+ on 2,000 ImageNet images):

    accelerate launch recipes/radapt_clip.py --model_name_or_path open_clip:ViT-L-14/openai \\
        --dataset_name imagenet-1k --max_train_samples 2000 --classnames imagenet --templates openai_imagenet \\
        --guide_model hf-hub:chs20/fare4-clip --paradigm all --num_train_epochs 10 --output_dir outputs/radapt-vitl14

Each paradigm is saved as `<output_dir>/<paradigm>/` (base model id + anchor, `create_model("radapt:<dir>")`) and
evaluated after reloading from there. This recipe is for CLIP (zero-shot classification); R-Adapt on the vision
tower of a LLaVA or Qwen-VL model works from Python (`RAdaptModel.training_free(create_model("llava:<id>"))`, ...)
and is evaluated with the VQA suites (`vlmrobust eval --model radapt:<dir> --suite shapes_vqa`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import PartialState
from transformers import set_seed

from vlmrobust.models import create_model
from vlmrobust.models.radapt import PARADIGMS, GaussianInputFilter, RAdaptModel, model_id
from vlmrobust.script_utils import RecipeParser, ScriptArguments, load_datasets, recipe_evaluator
from vlmrobust.trainers import RAdaptConfig, RAdaptTrainer
from vlmrobust.utils.distributed import outside_zero3_init

LABELS = {"training-free": "R-Adapt (training-free)", "model-guided": "R-Adapt (model-guided)",
          "radapt-plus": "R-Adapt+"}


@dataclass
class RAdaptScriptArguments:
    """Which R-Adapt paradigms to run.

    Args:
        paradigm (`str`): `training-free`, `model-guided`, `radapt-plus` or `all`.
        eval_guide (`bool`): also evaluate the guide checkpoint itself (e.g. FARE), for the side-by-side table.
        guide_label (`str`): its row name in the table; default `guide (<id>)`.
    """

    paradigm: str = field(default="all", metadata={"help": "training-free | model-guided | radapt-plus | all"})
    eval_guide: bool = field(default=True, metadata={"help": "Evaluate the guide checkpoint too."})
    guide_label: str = field(default="", metadata={"help": "Row name of the guide in the table."})


def make_parser() -> RecipeParser:
    return RecipeParser((ScriptArguments, RAdaptScriptArguments, RAdaptConfig))


def build(paradigm: str, base, args: RAdaptConfig, train_ds, out: Path, guide=None) -> RAdaptModel:
    """The R-Adapt model of one paradigm on `base`; `base` is adapted in place until `unload()`.

    R-Adapt+ trains (all processes) and saves to `out`; the other two are only built here.
    """
    settings = args.radapt_settings(model_id(base), paradigm).to_dict()
    if paradigm == "training-free":
        return RAdaptModel.training_free(base, **{k: v for k, v in settings.items() if k != "paradigm"})
    elif paradigm == "model-guided":
        settings = {k: v for k, v in settings.items() if k not in ("paradigm", "guide_model")}
        return RAdaptModel.model_guided(base, guide, guide_model=args.guide_model, **settings)
    else:
        args.output_dir = str(out)
        trainer = RAdaptTrainer(base, args, train_dataset=train_ds)
        trainer.train(resume_from_checkpoint=None)
        trainer.save_model(str(out))
        return trainer.vlm


def main(argv=None) -> dict:
    from vlmrobust.eval.report import accuracy_table

    script, ra, args = make_parser().parse_args_and_config(argv)
    if ra.paradigm not in (*PARADIGMS, "all"):
        raise ValueError(f"--paradigm must be one of {', '.join(PARADIGMS)} or 'all', got {ra.paradigm!r}.")
    paradigms = list(PARADIGMS) if ra.paradigm == "all" else [ra.paradigm]
    if "model-guided" in paradigms and not args.guide_model:
        raise ValueError("The model-guided paradigm needs --guide_model, e.g. local-dir:outputs/quickstart-fare "
                         "(made by recipes/fare_clip.py) or a released FARE checkpoint such as "
                         "hf-hub:chs20/fare4-clip.")
    _ = args.device  # the training arguments set up the process group (CPU / GPU, DDP / DeepSpeed) first
    state = PartialState()
    set_seed(args.seed)
    root = Path(args.output_dir)
    t_start = time.time()
    with state.main_process_first(), outside_zero3_init():  # whole on every rank; ZeRO-3 partitions the anchor
        base = create_model(script.model_name_or_path)
    guide = None
    if args.guide_model:
        with outside_zero3_init():
            guide = create_model(args.guide_model)
        guide.requires_grad_(False)
    train_ds, _ = load_datasets(script, base, seed=args.seed)
    timings = {}
    evaluate = recipe_evaluator(script, root, seed=args.seed, bf16=args.bf16, device=state.device,
                                progress=not args.disable_tqdm)

    def _eval(name, model, desc):  # the suite runner's worst case of APGD-CE and APGD-T, into <output_dir>
        if state.is_main_process:
            evaluate(name, model)
            timings[f"eval {name} (s)"] = evaluate.seconds[name]

    if script.eval_before:
        _eval("base (standard)", base, "eval base")
    for p in paradigms:
        t0 = time.time()
        model = build(p, base, args, train_ds, root / p, guide)
        if p != "radapt-plus" and state.is_main_process:
            model.save_pretrained(root / p)
        timings[f"build {p} (s)"] = round(time.time() - t0, 1)
        base = model.unload()
        state.wait_for_everyone()
        if script.eval_after:  # reload through create_model: what users get
            with outside_zero3_init():
                reloaded = create_model(f"radapt:{root / p}")
            _eval(LABELS[p], reloaded, f"eval {p}")
            reloaded.unload()
    if guide is not None and ra.eval_guide:
        _eval(ra.guide_label or f"guide ({args.guide_model})", guide, "eval guide")

    results = {}
    if state.is_main_process and evaluate.rows:
        timings["total (s)"] = round(time.time() - t_start, 1)
        s = args.radapt_settings(model_id(base))
        d0_h, _ = GaussianInputFilter(s.d0, s.d0_reference_size, s.d0_scaling).cutoff(base.image_size, base.image_size)
        a, b = s.coefficients
        title = f"R-Adapt on {script.dataset_name}: {script.model_name_or_path}"
        intro = (f"Frozen backbone; Gaussian input filter {'on' if s.gaussian_filter else 'off'} (D0 = {s.d0:g} at "
                 f"{s.d0_reference_size} px, i.e. {d0_h:.3g} index units at {base.image_size} px, scaling "
                 f"'{s.d0_scaling}'); anchor mixed into block 1 as h₁ = z + {a:g}·MHSA + {b:g}·A (α = {s.alpha:g}). "
                 f"Paradigms: {', '.join(paradigms)}.")
        if "model-guided" in paradigms or guide is not None:
            intro += f" Guide model: {args.guide_model}."
        if "radapt-plus" in paradigms:
            steps = args.max_steps if args.max_steps > 0 else round(
                args.num_train_epochs * -(-len(train_ds) // args.per_device_train_batch_size))
            intro += (f" R-Adapt+: only the anchor trained (FARE loss, initialised {args.anchor_init}) for {steps} "
                      f"steps of {args.per_device_train_batch_size} on {len(train_ds)} training images, "
                      f"{args.attack}-{args.attack_steps} at ε = {args.epsilon * 255:.3g}/255, "
                      f"lr {args.learning_rate:g}.")
        if script.model_name_or_path.startswith("vlmrobust:"):
            intro += (" The starting model is vlmrobust's offline stand-in: a tiny CLIP contrastively pre-trained on "
                      "the digits train split in place of a downloaded checkpoint.")
        evaluate.finish(title=title, intro=intro, method="radapt", paradigms=paradigms, model=script.model_name_or_path,
                        guide_model=args.guide_model, settings=s.to_dict(), config=args.to_vlmrobust_dict()["config"],
                        timings=timings)
        results = {name: evaluate.robust_accuracy(name) for name in evaluate.rows}
        print("\n" + title + "\n" + accuracy_table(results, fmt="text"))
        print(f"\nWrote {root}/results.json (every cell, the suite and the rows), report.md and its plots, and one "
              f"folder per paradigm ({timings})")
    state.wait_for_everyone()
    return {k: v.to_dict() for k, v in results.items()}


if __name__ == "__main__":
    main()
