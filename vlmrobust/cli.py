"""The `vlmrobust` command: `eval` (run a suite), `report` (re-render from results JSON), `convert`, `info`.

    vlmrobust eval --model vlmrobust:tiny-digits-clip --suite digits --output outputs/eval-digits
    vlmrobust eval --model llava:tiny --suite shapes_vqa --output outputs/eval-shapes-vqa      # VQA (LVLMs)
    vlmrobust eval --model open_clip:ViT-B-32/openai --model hf-hub:chs20/fare2-clip --suite fare13 \\
        --output outputs/fare13 --bf16 --skip-missing
    vlmrobust report outputs/run-a/results.json outputs/run-b/results.json --output outputs/compare
    vlmrobust report outputs/quickstart-fare          # a recipe's folder: its before / after rows and every cell
    vlmrobust convert outputs/old-eval/results.json   # a results file of format v1 -> v2
    vlmrobust info
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmrobust", description="Robustness evaluation of vision-language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="run an eval suite on one or more models (resumable)")
    ev.add_argument("--model", action="append", required=True,
                    help="create_model id (open_clip:…, hf-hub:…, local-dir:…, hf-clip:…; llava:… / qwen_vl:… for "
                         "VQA suites); repeat for several")
    ev.add_argument("--suite", required=True, help="suite name (see `vlmrobust info`) or path of a suite YAML")
    ev.add_argument("--output", required=True, help="folder for results.json, report.md and plots")
    ev.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: cuda when available)")
    ev.add_argument("--bf16", action="store_true", help="bf16 autocast for the model (perturbations stay fp32)")
    ev.add_argument("--n-samples", type=int, default=None, help="cap every dataset's sample count")
    ev.add_argument("--batch-size", type=int, default=None, help="override the suite's batch sizes")
    ev.add_argument("--datasets", default=None, help="comma-separated subset of the suite's datasets")
    ev.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                    help="reuse finished cells of an existing results.json (default: on)")
    ev.add_argument("--skip-missing", action="store_true", help="skip datasets that cannot be loaded")
    ev.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    ev.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")

    rp = sub.add_parser("report", help="re-render report.md and plots from one or more results.json")
    rp.add_argument("results", nargs="+", help="results.json files (or their folders: `vlmrobust eval` outputs, recipe "
                                               "output dirs) of the same suite")
    rp.add_argument("--output", default=None, help="folder for report.md and plots (and the merged results.json of "
                                                   "several); default: the folder of the only results file")

    cv = sub.add_parser("convert", help="convert a results.json of format v1 (vlmrobust.eval/v1) to the current one")
    cv.add_argument("results", help="the v1 results.json (or its folder)")
    cv.add_argument("--output", default=None, help="where to write the converted file (default: in place, the old "
                                                   "one kept as results.v1.json)")

    sub.add_parser("info", help="versions, devices, registered backends / attacks / suites / methods / data sources")

    ps = sub.add_parser("push", help="upload a checkpoint folder (model, model card, results) to the Hub")
    ps.add_argument("folder", help="output_dir of a vlmrobust run")
    ps.add_argument("repo_id", help="e.g. me/fare4-vit-b-32")
    ps.add_argument("--private", action="store_true", help="create the repo as private")
    return parser


def _eval(args: argparse.Namespace) -> int:
    from .eval.report import console_summary
    from .eval.runner import run_suite

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    datasets = [d.strip() for d in args.datasets.split(",")] if args.datasets else None
    res = run_suite(args.model, args.suite, args.output, device=args.device, bf16=args.bf16,
                    n_samples=args.n_samples, batch_size=args.batch_size, datasets=datasets, resume=args.resume,
                    skip_missing=args.skip_missing, num_workers=args.num_workers, progress=not args.no_progress)
    print(console_summary(res.get("summary", {})))
    run = res.get("last_run", {})
    print(f"\n{run.get('computed_cells')} cells computed, {run.get('reused_cells')} reused from an earlier run. "
          f"Wrote {args.output}/results.json, report.md and plots.")
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

    print(push_to_hub(args.folder, args.repo_id, private=args.private))
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
    except Exception as err:  # the trainers pull in transformers/accelerate; info must still work without them
        print(f"methods: unavailable ({type(err).__name__}: {err})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    handler = {"eval": _eval, "report": _report, "convert": _convert, "info": _info, "push": _push}[args.command]
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
