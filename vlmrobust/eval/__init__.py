"""Robustness evaluation: zero-shot clean / robust accuracy, YAML eval suites with a resumable runner, common
corruptions, margin consistency, Borda rankings, and markdown / PNG reports."""

from .borda import borda_ranking
from .corruptions import ALEXNET_IMAGENET_C_ERRORS, ALL_CORRUPTIONS, COMMON_CORRUPTIONS, CorruptedDataset
from .margin import estimate_robust_accuracy, input_margins, kendall_tau
from .report import summarize_suite, write_suite_report
from .runner import DatasetUnavailable, load_results, merge_results, run_suite
from .suite import SUITES, Suite, SuiteError, load_suite
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
    "CorruptedDataset",
    "DatasetUnavailable",
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
    "run_suite",
    "summarize_suite",
    "write_suite_report",
]
