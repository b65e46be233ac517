"""Metrics with no model or data dependencies: VQA answer normalisation and accuracy, CIDEr-D, confidence intervals."""

from .cider import CIDER_INSTALL_HINT, CorpusCider, cider_status, compute_cider, ptb_tokenize
from .intervals import wilson_interval
from .vqa import majority_answer, normalize_answer, process_digit_article, process_punctuation, vqa_accuracy

__all__ = [
    "CIDER_INSTALL_HINT", "CorpusCider", "cider_status", "compute_cider", "majority_answer", "normalize_answer",
    "process_digit_article", "process_punctuation", "ptb_tokenize", "vqa_accuracy", "wilson_interval",
]
