"""Metrics with no model or data dependencies: VQA answer normalisation and accuracy, CIDEr-D."""

from .cider import CIDER_INSTALL_HINT, CorpusCider, cider_status, compute_cider, ptb_tokenize
from .vqa import majority_answer, normalize_answer, process_digit_article, process_punctuation, vqa_accuracy

__all__ = [
    "CIDER_INSTALL_HINT", "CorpusCider", "cider_status", "compute_cider", "majority_answer", "normalize_answer",
    "process_digit_article", "process_punctuation", "ptb_tokenize", "vqa_accuracy",
]
