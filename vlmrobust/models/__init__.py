from . import radapt  # a package that registers its own backend, `radapt:`
from .base import ImageEncoder, VisionLanguageModel, ZeroShotClassifier, check_pixels
from .factory import BACKENDS, create_model

__all__ = ["BACKENDS", "ImageEncoder", "VisionLanguageModel", "ZeroShotClassifier", "check_pixels", "create_model",
           "radapt"]
