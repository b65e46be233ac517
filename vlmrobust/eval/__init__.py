"""Robustness evaluation: YAML eval suites of registered eval tasks (zero-shot classification with corruptions and
margin consistency, VQA, captioning) run by a resumable runner into one results format, Borda rankings, and markdown
/ PNG reports."""

from .borda import borda_ranking
from .corruptions import ALEXNET_IMAGENET_C_ERRORS, ALL_CORRUPTIONS, COMMON_CORRUPTIONS, CorruptedDataset
from .margin import estimate_robust_accuracy, input_margins, kendall_tau
from .report import summarize_suite, write_suite_report
from .results import FORMAT, ResultsFormatError, load_results, merge_results
from .runner import DatasetUnavailable, run_suite
from .suite import SUITES, Suite, SuiteError, load_suite
from .tasks import EVAL_TASKS, EvalTask, register_eval_task
from .zero_shot import (
    RobustAccuracy,
    attack_survivors,
    evaluate_robust_accuracy,
    evaluate_zero_shot,
    expected_robustness,
    predict,
)

__all__ = [
    "ALEXNET_IMAGENET_C_ERRORS",
    "ALL_CORRUPTIONS",
    "COMMON_CORRUPTIONS",
    "EVAL_TASKS",
    "FORMAT",
    "CorruptedDataset",
    "DatasetUnavailable",
    "EvalTask",
    "ResultsFormatError",
    "RobustAccuracy",
    "SUITES",
    "Suite",
    "SuiteError",
    "attack_survivors",
    "borda_ranking",
    "estimate_robust_accuracy",
    "evaluate_robust_accuracy",
    "evaluate_zero_shot",
    "expected_robustness",
    "input_margins",
    "kendall_tau",
    "load_results",
    "load_suite",
    "merge_results",
    "predict",
    "register_eval_task",
    "run_suite",
    "summarize_suite",
    "write_suite_report",
]
