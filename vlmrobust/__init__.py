"""vlmrobust: robust fine-tuning and robustness evaluation of vision-language models."""

__version__ = "0.1.0"

from .models import create_model  # noqa: E402

__all__ = ["__version__", "create_model"]
