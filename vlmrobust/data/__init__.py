"""Datasets, collators, prompt templates, offline fixtures (digits, shapes) and the data-source registry."""

from .classification import ClassificationDataset, collate_classification, default_image_transform
from .digits import DIGIT_CLASSNAMES, DigitsDataset, digits_captions, load_digits_splits
from .sources import DATA_SOURCES, DataSource, load_classification_dataset, load_source, register_source
from .templates import DIGITS_TEMPLATES, OPENAI_IMAGENET_TEMPLATES, SIMPLE_TEMPLATES, TEMPLATES, get_templates

__all__ = [
    "ClassificationDataset",
    "DATA_SOURCES",
    "DataSource",
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
    "load_source",
    "register_source",
]
