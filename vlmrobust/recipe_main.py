"""The body of the CLIP recipes (`recipes/{fare,tecoa,adv}_clip.py`): evaluate, train, save, evaluate, report."""

from __future__ import annotations

import json
import time

from accelerate import PartialState
from transformers import set_seed

from .script_utils import RecipeParser, ScriptArguments, load_datasets, recipe_evaluator, reload_spec
from .utils.distributed import outside_zero3_init


def _resolve_resume(args) -> str | None:
    """The checkpoint to resume (`--resume_from_checkpoint true`: the newest complete one; none yet: start fresh)."""
    from .trainers.run_guards import resolve_resume

    return resolve_resume(args.output_dir, args.resume_from_checkpoint, fresh_if_none=True)


def guard_output_dir(args) -> str | None:
    """Resolve the resume point and refuse an `output_dir` holding an earlier run, before anything is evaluated
    or written there; returns the checkpoint to resume (None: a fresh run)."""
    from .trainers.run_guards import check_output_dir

    resume = _resolve_resume(args)
    check_output_dir(args.output_dir, resume=resume, overwrite=args.overwrite_output_dir)
    return resume


def run_clip_recipe(method, argv=None) -> dict:
    """Parse `(ScriptArguments, <method's config>)`, then evaluate → train → save → reload → evaluate → report.

    `method` is a registered method's name (`"fare"`) or config class (`FAREConfig`); its trainer, whether that
    takes the class names, and whether it trains a classifier come from the registry (`vlmrobust.trainers.METHODS`).

    Both evaluations go through the suite runner (`recipe_evaluator`): the worst case per point of APGD-CE and
    APGD-T on the recipe's eval split, the logit scale recorded with each number. `<output_dir>/results.json` is the
    runner's file (`vlmrobust.results/v2`: every cell, the suite) with a `run` section naming the rows (before /
    after), the method and its config; `report.md` renders both (`vlmrobust report <output_dir>` re-renders it).
    """
    from .eval.protocol import TrainedClassifier
    from .eval.report import accuracy_table, protocol_text
    from .hub.card_folder import write_model_card
    from .hub.push import take_hub_push
    from .models import create_model
    from .trainers import resolve_method

    method = resolve_method(method)
    parser = RecipeParser((ScriptArguments, method.config_class))
    script, args = parser.parse_args_and_config(argv)
    resume = guard_output_dir(args)
    hub = take_hub_push(args)  # push_to_hub=True: the finished output goes up once, through `vlmrobust push`
    _ = args.device  # the training arguments set up the process group (CPU / GPU, DDP / DeepSpeed) first
    state = PartialState()
    set_seed(args.seed)
    t_start = time.time()
    # the stand-in checkpoint is pre-trained once, by the main process; every rank holds the whole model (ZeRO-3
    # partitions the trained tower when the Trainer wraps it)
    with state.main_process_first(), outside_zero3_init():
        model = create_model(script.model_name_or_path)
    method.check_backend(model)
    train_ds, _ = load_datasets(script, model, seed=args.seed)
    timings = {}
    evaluate = recipe_evaluator(script, args.output_dir, seed=args.seed, bf16=args.bf16, device=state.device,
                                progress=not args.disable_tqdm, bad_images=args.bad_images)
    if script.eval_before and state.is_main_process:
        evaluate("before", model)
        timings["eval_before_s"] = evaluate.seconds["before"]
    state.wait_for_everyone()

    trainer = method.trainer_class(model, args, train_dataset=train_ds, **method.trainer_kwargs(train_ds))
    t0 = time.time()
    train_out = trainer.train(resume_from_checkpoint=resume)
    timings["train_s"] = round(time.time() - t0, 1)
    trainer.save_model(args.output_dir)
    state.wait_for_everyone()

    if script.eval_after and state.is_main_process:
        if method.is_classifier(args):  # AT / TRADES, a trained head: the trained classifier, same protocol
            clf = trainer.accelerator.unwrap_model(trainer.model).eval()
            evaluate("after", TrainedClassifier(model, clf, train_ds.classnames))
        else:  # reload the saved checkpoint through the backend's loader: what users will get
            with outside_zero3_init():
                trained = create_model(reload_spec(model, args.output_dir))
            evaluate("after", trained)
        timings["eval_after_s"] = evaluate.seconds["after"]
    results = {}
    if state.is_main_process and evaluate.rows:
        timings["total_s"] = round(time.time() - t_start, 1)
        title = f"{args.method.upper()} on {script.dataset_name}: {script.model_name_or_path}"
        intro = (f"Trained with ε = {args.epsilon * 255:.3g}/255 ({args.attack_norm}), {args.attack}-"
                 f"{args.attack_steps}, {trainer.state.global_step} steps, seed {args.seed}.")
        if script.model_name_or_path.startswith("vlmrobust:"):
            intro += (" The starting model is vlmrobust's offline stand-in: a tiny CLIP contrastively pre-trained "
                      "on the digits train split in place of a downloaded checkpoint.")
        evaluate.finish(title=title, intro=intro, method=args.method, model=script.model_name_or_path,
                        dataset=script.dataset_name, epsilon=args.epsilon, norm=args.attack_norm,
                        config=args.to_vlmrobust_dict()["config"], train_metrics=train_out.metrics, timings=timings)
        results = {name: evaluate.robust_accuracy(name) for name in evaluate.rows}
        write_model_card(
            args.output_dir, backend=model.backend, base_model=script.model_name_or_path, method=args.method,
            repo_id=hub.repo_id if hub else None,
            results_markdown=protocol_text(results) + "\n\n" + accuracy_table(results), notes=intro,
            training={"epsilon": f"{args.epsilon * 255:.3g}/255 ({args.attack_norm})", "attack":
                      f"{args.attack}-{args.attack_steps}", "dataset": script.dataset_name,
                      "steps": trainer.state.global_step, "learning rate": args.learning_rate})
        print("\n" + title + "\n" + accuracy_table(results, fmt="text"))
        if script.eval_corruptions != "none":
            _print_tradeoffs(evaluate.results)
        print(f"\nWrote {args.output_dir}/results.json (every cell, the suite and the run's rows), report.md and its "
              f"plots, suite.yaml, README.md (model card) and the checkpoint ({json.dumps(timings)})")
    if hub is not None and state.is_main_process:
        hub.push(args.output_dir)
    state.wait_for_everyone()
    return {k: v.to_dict() for k, v in results.items()}


def _print_tradeoffs(results: dict) -> None:
    """Print each row's ID / OOD (corruptions) / adversarial accuracy and their harmonic mean (also in report.md)."""
    from .eval.tasks.corruptions import tradeoff

    name = results["suite"]["datasets"][0]["name"]
    for row in results["run"]["rows"]:
        corr = (results["summary"]["models"][row]["datasets"].get(name) or {}).get("corruptions")
        if corr:
            t = tradeoff(results, row, corr["mean_accuracy"], name)
            adv = ", ".join(f"{e * 255:.3g}/255 {100 * a:.1f} (HM {100 * t['harmonic_mean'][e]:.1f})"
                            for e, a in t["adversarial"].items())
            print(f"{row}: ID {100 * t['id']:.1f}, OOD (corruptions) {100 * t['ood']:.1f}, adversarial {adv}")
