"""vlmrobust: robust fine-tuning and robustness evaluation of vision-language models."""

__version__ = "0.1.0"

# MKL reads MKL_CBWR once, at its first call in the process: set here, before any torch computation can run, so that
# matrix products give the same bits for any thread count (a user's own MKL_CBWR wins; see utils/determinism.py)
from .utils.determinism import configure_mkl_cbwr  # noqa: E402

configure_mkl_cbwr()

from .models import create_model  # noqa: E402

__all__ = ["__version__", "create_model"]
