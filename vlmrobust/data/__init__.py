"""Datasets, collators, prompt templates and offline fixtures (handwritten digits)."""

from .classification import (
    ClassificationDataset,
    collate_classification,
    default_image_transform,
    load_classification_dataset,
)
from .digits import DIGIT_CLASSNAMES, DigitsDataset, digits_captions, load_digits_splits
from .templates import DIGITS_TEMPLATES, OPENAI_IMAGENET_TEMPLATES, SIMPLE_TEMPLATES, TEMPLATES, get_templates

__all__ = [
    "ClassificationDataset",
    "DIGITS_TEMPLATES",
    "DIGIT_CLASSNAMES",
    "DigitsDataset",
    "OPENAI_IMAGENET_TEMPLATES",
    "SIMPLE_TEMPLATES",
    "TEMPLATES",
    "collate_classification",
    "default_image_transform",
    "digits_captions",
    "get_templates",
    "load_classification_dataset",
    "load_digits_splits",
]
