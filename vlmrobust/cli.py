"""The `vlmrobust` command: `eval` (run a suite), `shift` (Mahalanobis shift analysis of a VQA suite), `report`
(re-render from results JSON), `convert`, `push`, `wise-ft`, `info`.

    vlmrobust eval --model vlmrobust:tiny-digits-clip --suite digits --output outputs/eval-digits
    vlmrobust eval --model llava:tiny --suite shapes_vqa --output outputs/eval-shapes-vqa      # VQA (LVLMs)
    vlmrobust eval --model open_clip:ViT-B-32/openai --model hf-hub:chs20/fare2-clip --suite fare13 \\
        --output outputs/fare13 --bf16 --skip-missing
    vlmrobust report outputs/run-a/results.json outputs/run-b/results.json --output outputs/compare
    vlmrobust report outputs/quickstart-fare          # a recipe's folder: its before / after rows and every cell
    vlmrobust convert outputs/old-eval/results.json   # a results file of format v1 -> v2
    vlmrobust push outputs/fare4-vitb32 me/fare4-vit-b-32 [--private] [--revision dev] [--dry-run staged/]
    vlmrobust eval --model hf-hub:me/fare4-vit-b-32 --suite digits --output outputs/eval-released --update-card
    vlmrobust wise-ft --model local-dir:outputs/quickstart-digrap --base vlmrobust:tiny-digits-clip \\
        --alphas 0,0.25,0.5,0.75,1 --suite digits --output outputs/quickstart-digrap/wise-ft
    vlmrobust eval --model llava:outputs/quickstart-fare-llava/sft --suite mini_frames --output outputs/mini-frames
    vlmrobust shift --model llava:outputs/quickstart-fare-llava/sft --suite mini_frames --output outputs/mini-frames \\
        --encoder image:google/vit-base-patch16-224 --encoder text:bert-base-uncased
    vlmrobust info
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmrobust", description="Robustness evaluation of vision-language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="run an eval suite on one or more models (resumable)")
    ev.add_argument("--model", action="append", required=True,
                    help="create_model id (open_clip:…, hf-hub:…, local-dir:…, hf-clip:…; llava:… / qwen_vl:… / "
                         "paligemma:… for VQA suites); repeat for several")
    ev.add_argument("--suite", required=True, help="suite name (see `vlmrobust info`) or path of a suite YAML")
    ev.add_argument("--output", required=True, help="folder for results.json, report.md and plots")
    ev.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: cuda when available)")
    ev.add_argument("--bf16", action="store_true", help="bf16 autocast for the model (perturbations stay fp32)")
    ev.add_argument("--n-samples", type=_positive_int, default=None, help="cap every dataset's sample count")
    ev.add_argument("--batch-size", type=_positive_int, default=None, help="override the suite's batch sizes")
    ev.add_argument("--datasets", default=None, help="comma-separated subset of the suite's datasets")
    ev.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                    help="reuse finished cells of an existing results.json (default: on)")
    ev.add_argument("--skip-missing", action="store_true", help="skip datasets that cannot be loaded")
    ev.add_argument("--bad-images", choices=("fail", "skip"), default=None,
                    help="an unreadable image in a classification dataset: 'fail' (stop, naming the file; the "
                         "default) or 'skip' (leave it out: n counts the rest, each cell records how many were "
                         "skipped); overrides the suite's bad_images")
    ev.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    ev.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    ev.add_argument("--update-card", action="store_true",
                    help="append the results to the model card of the (single) Hub model evaluated, in one commit "
                         "(needs a token with write access: `hf auth login` or HF_TOKEN)")

    rp = sub.add_parser("report", help="re-render report.md and plots from one or more results.json")
    rp.add_argument("results", nargs="+", help="results.json files (or their folders: `vlmrobust eval` outputs, recipe "
                                               "output dirs) of the same suite")
    rp.add_argument("--output", default=None, help="folder for report.md and plots (and the merged results.json of "
                                                   "several); default: the folder of the only results file")

    cv = sub.add_parser("convert", help="convert a results.json of format v1 (vlmrobust.eval/v1) to the current one")
    cv.add_argument("results", help="the v1 results.json (or its folder)")
    cv.add_argument("--output", default=None, help="where to write the converted file (default: in place, the old "
                                                   "one kept as results.v1.json)")

    wf = sub.add_parser("wise-ft", help="WiSE-FT: interpolate a fine-tuned checkpoint with its base at several alphas, "
                                        "save each (native layout) and evaluate each through a suite")
    wf.add_argument("--model", required=True, help="create_model id of the fine-tuned checkpoint (local-dir:…)")
    wf.add_argument("--base", required=True, help="create_model id of the model it was fine-tuned from (theta_0)")
    wf.add_argument("--alphas", default="0,0.25,0.5,0.75,1",
                    help="comma-separated floats in [0, 1]: weight of the fine-tuned model (default 0,0.25,0.5,0.75,1)")
    wf.add_argument("--suite", default=None, help="suite name or YAML path (none: only write the checkpoints)")
    wf.add_argument("--output", required=True, help="folder for alpha_<a>/ checkpoints and eval/")
    wf.add_argument("--device", default=None, help="e.g. cuda, cpu (default: cuda when available)")
    wf.add_argument("--bf16", action="store_true", help="bf16 autocast for the evaluation")
    wf.add_argument("--n-samples", type=int, default=None, help="cap every dataset's sample count")
    wf.add_argument("--no-progress", action="store_true", help="no progress bars")

    sh = sub.add_parser("shift", help="Mahalanobis shift of a VQA suite's datasets from the ID training data, and its "
                                      "correlation with accuracy (resumable; the eval's results.json and report)")
    sh.add_argument("--model", action="append", required=True, help="an LVLM (llava:… / qwen_vl:… / paligemma:…); repeat for several")
    sh.add_argument("--suite", required=True, help="a VQA suite (mini_frames, frames_vqa, or a YAML path)")
    sh.add_argument("--output", required=True, help="folder for results.json, report.md and plots (the eval's folder "
                                                    "reuses its accuracy cells)")
    sh.add_argument("--encoder", action="append", default=[],
                    help="a uni-modal encoder, image:<transformers model id or folder> or text:<id>; repeat")
    sh.add_argument("--no-vlm", action="store_true", help="skip the VLM's own image / question / joint embeddings")
    sh.add_argument("--reference", default=None, help="the ID dataset (default: the one tagged frames level id)")
    sh.add_argument("--reference-samples", type=int, default=200, help="ID training questions the Gaussian is fit on")
    sh.add_argument("--reference-seed", type=int, default=0, help="seed of those (generated sets: the training seed)")
    sh.add_argument("--reference-split", default="train", help="split of those (datasets with splits)")
    sh.add_argument("--ridge", type=float, default=1e-8, help="Σ + ridge·I before the pseudo-inverse")
    sh.add_argument("--device", default=None)
    sh.add_argument("--n-samples", type=int, default=None, help="cap every dataset's sample count")
    sh.add_argument("--batch-size", type=int, default=None, help="override the suite's batch sizes")
    sh.add_argument("--datasets", default=None, help="comma-separated subset of the suite's datasets")
    sh.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    sh.add_argument("--no-progress", action="store_true", help="no progress bars")

    sub.add_parser("info", help="versions, devices, registered backends / attacks / suites / methods / data sources")

    ps = sub.add_parser("push", help="upload a checkpoint folder (model, model card, results) to the Hub, in one "
                                     "commit (token: `hf auth login` or HF_TOKEN)")
    ps.add_argument("folder", help="output_dir of a vlmrobust run (any kind: open_clip, transformers CLIP / LLaVA / "
                                   "Qwen-VL, PEFT adapter, R-Adapt anchors)")
    ps.add_argument("repo_id", help="e.g. me/fare4-vit-b-32 (a bare name goes to your user)")
    ps.add_argument("--private", action="store_true", help="create the repo as private")
    ps.add_argument("--revision", default=None, help="branch to push to (created from main when missing)")
    ps.add_argument("--commit-message", default=None, help="commit title")
    ps.add_argument("--dry-run", metavar="DIR", default=None,
                    help="write exactly what would be uploaded (model card included) to DIR; no network")
    return parser


def _eval(args: argparse.Namespace) -> int:
    from .eval.report import console_summary
    from .eval.runner import run_suite

    if args.update_card:
        from .hub.push import check_can_write, hub_model_repo

        if len(args.model) != 1:
            raise SystemExit("vlmrobust eval: error: --update-card takes exactly one --model (the Hub model whose card "
                             "gets the results).")
        try:  # a local model, no network or no write access: say so before evaluating anything
            check_can_write(hub_model_repo(args.model[0]))
        except ValueError as err:
            print(f"vlmrobust eval: error: {err}", file=sys.stderr)
            return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    _probe_hub_for_suite(args.suite)
    datasets = [d.strip() for d in args.datasets.split(",")] if args.datasets else None
    res = run_suite(args.model, args.suite, args.output, device=args.device, bf16=args.bf16,
                    n_samples=args.n_samples, batch_size=args.batch_size, datasets=datasets, resume=args.resume,
                    skip_missing=args.skip_missing, num_workers=args.num_workers, progress=not args.no_progress,
                    dataset_overrides={"bad_images": args.bad_images} if args.bad_images else None)
    print(console_summary(res.get("summary", {})))
    run = res.get("last_run", {})
    print(f"\n{run.get('computed_cells')} cells computed, {run.get('reused_cells')} reused from an earlier run. "
          f"Wrote {args.output}/results.json, report.md and plots.")
    skipped = res.get("skipped") or {}
    if skipped and not res.get("cells"):
        print(f"vlmrobust eval: error: every dataset was skipped ({len(skipped)}: "
              f"{'; '.join(f'{k}: {v}' for k, v in skipped.items())[:500]}); nothing was evaluated.", file=sys.stderr)
        return 1
    if args.update_card:
        from .hub.card_results import load_result_rows
        from .hub.push import hub_model_repo, update_card

        results = f"{args.output}/results.json"
        url = update_card(hub_model_repo(args.model[0]), load_result_rows(results, args.model[0]), results,
                          suite=res.get("suite", {}).get("name", str(args.suite)))
        print(f"Added the results to the model card: {url}")
    return 0


def _shift(args: argparse.Namespace) -> int:
    import dataclasses

    from .eval.report import console_summary
    from .eval.runner import run_suite
    from .eval.suite import load_suite
    from .eval.tasks.shift import ShiftSpec

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    spec = ShiftSpec(encoders=tuple(args.encoder), vlm=not args.no_vlm, reference=args.reference,
                     reference_seed=args.reference_seed, reference_split=args.reference_split,
                     reference_samples=args.reference_samples, ridge=args.ridge)
    if not spec.kinds:
        raise SystemExit("vlmrobust shift: error: no embedding: give --encoder or drop --no-vlm.")
    suite = load_suite(args.suite, n_samples=args.n_samples, batch_size=args.batch_size)
    keep = [d.strip() for d in args.datasets.split(",")] if args.datasets else None
    datasets = tuple(dataclasses.replace(d, analyses={**d.analyses, "shift": spec}) for d in suite.datasets
                     if d.task == "vqa" and (keep is None or d.name in keep))
    if not datasets:
        raise SystemExit(f"vlmrobust shift: error: suite {suite.name!r} has no VQA datasets to analyse.")
    suite = dataclasses.replace(suite, datasets=datasets,
                                average_exclude=tuple(e for e in suite.average_exclude if e in {d.name for d in datasets}))
    res = run_suite(args.model, suite, args.output, device=args.device, progress=not args.no_progress)
    print(console_summary(res.get("summary", {})))
    run = res.get("last_run", {})
    print(f"\n{run.get('computed_cells')} cells computed, {run.get('reused_cells')} reused. Wrote {args.output}/"
          "results.json, report.md and plots.")
    return 0


def _probe_hub_for_suite(suite: str) -> None:
    """Probe the Hub once before a suite whose datasets come from it (fails over to the cache in seconds)."""
    from .utils.hub_access import needs_hub_source, use_cache_if_unreachable

    try:
        from .eval.suite import load_suite

        sources = [d.source for d in load_suite(suite).datasets]
    except Exception:  # an unreadable suite is reported by run_suite itself, with its own message
        return
    if any(needs_hub_source(s) for s in sources):
        use_cache_if_unreachable()


def _wise_ft(args: argparse.Namespace) -> int:
    from .hub.wise_ft import wise_ft

    out = wise_ft(args.model, args.base, args.alphas, args.output, suite=args.suite, device=args.device,
                  bf16=args.bf16, n_samples=args.n_samples, progress=not args.no_progress)
    for alpha, folder in out["checkpoints"].items():
        print(f"alpha={alpha:g}: {folder}")
    if out["results"] is not None:
        from .eval.report import console_summary

        print(console_summary(out["results"].get("summary", {})))
        print(f"Wrote {args.output}/eval/results.json and report.md (a row per alpha).")
    return 0


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .eval.report import console_summary, write_suite_report
    from .eval.results import RESULTS_NAME, ResultsFormatError, load_results, merge_results
    from .utils.io import atomic_write_json

    if args.output is None and len(args.results) > 1:
        raise SystemExit("vlmrobust report: --output is needed to merge several results files.")
    try:
        merged = merge_results([load_results(p) for p in args.results])
    except ResultsFormatError as err:
        raise SystemExit(f"vlmrobust report: {err}") from None
    out = args.output or (Path(args.results[0]) if Path(args.results[0]).is_dir() else Path(args.results[0]).parent)
    merged["summary"] = write_suite_report(merged, out)
    if len(args.results) > 1:
        atomic_write_json(Path(out) / RESULTS_NAME, merged)
    print(console_summary(merged["summary"]))
    print(f"\nWrote {out}/report.md and plots.")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .eval.convert import convert_file

    print(convert_file(args.results, args.output))
    return 0


def _push(args: argparse.Namespace) -> int:
    from .hub.push import push_to_hub

    try:
        print(push_to_hub(args.folder, args.repo_id, private=args.private, revision=args.revision,
                          commit_message=args.commit_message, dry_run=args.dry_run))
    except (ValueError, FileNotFoundError, FileExistsError) as err:  # a local problem, said in one line
        print(f"vlmrobust push: error: {err}", file=sys.stderr)
        return 2
    return 0


def _info(_: argparse.Namespace) -> int:
    import torch

    from . import __version__
    from .attacks import ATTACKS
    from .data.sources import describe_sources
    from .eval.suite import SUITES, suites_dir
    from .eval.tasks import all_tasks
    from .models import BACKENDS

    print(f"vlmrobust {__version__}")
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}")
    if torch.cuda.is_available():
        devs = ", ".join(f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count()))
    else:
        devs = "none"
    print(f"CUDA devices: {devs}")
    print(f"model backends: {', '.join(f'{b}:' for b in BACKENDS.names())}")
    print(f"attacks: {', '.join(ATTACKS.names())}")
    print(f"eval suites ({suites_dir()}): {', '.join(SUITES.names()) or 'none'}")
    print("data sources (a suite's `source:`, a recipe's --dataset_name):")
    for line in describe_sources():
        print(f"  {line}")
    print(f"eval tasks: {', '.join(t.name + (f' (analysis of {t.parent})' if t.parent else '') for t in all_tasks())}")
    try:
        from .trainers import METHODS

        print(f"methods: {', '.join(METHODS.names())}")
        from .optim import WEIGHT_SPACE

        print(f"weight-space hooks (--weight_space): {', '.join(WEIGHT_SPACE.names())}")
    except Exception as err:  # the trainers pull in transformers/accelerate; info must still work without them
        print(f"methods: unavailable ({type(err).__name__}: {err})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .utils.hub_access import HubAccessError

    args = make_parser().parse_args(argv)
    handler = {"eval": _eval, "shift": _shift, "report": _report, "convert": _convert, "info": _info,
               "push": _push, "wise-ft": _wise_ft}[args.command]
    try:
        return handler(args)
    except HubAccessError as err:  # already one line that says what to do: no traceback
        print(f"vlmrobust {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
