"""vlmrobust: robust fine-tuning and robustness evaluation of vision-language models."""

__version__ = "0.1.0"
