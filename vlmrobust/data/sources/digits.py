"""`digits`: scikit-learn's 1,797 handwritten digits, always offline (they ship inside scikit-learn)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from PIL import Image

from ..digits import _DIGITS_MAX_VALUE, DIGIT_CLASSNAMES, _raw_digits, _resize_digits, _split_indices
from .base import LoadRequest, register_source
from .labelled import ClassificationSource

if TYPE_CHECKING:
    import datasets


class DigitsToTensor:
    """The digits' pixels at `image_size`: exactly those of `load_digits_splits(image_size)`, not a bicubic resample
    of the stored 8-bit images."""

    def __init__(self, image_size: int):
        self.image_size = image_size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        grey = torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32) / 255.0)
        # Undo the 8-bit storage: the 17 grey levels are recovered exactly.
        grey = torch.round(grey * _DIGITS_MAX_VALUE) / _DIGITS_MAX_VALUE
        return _resize_digits(grey[None, None], self.image_size)[0]


class DigitsSource(ClassificationSource):
    """scikit-learn's handwritten digits, split 80 / 20 (stratified, seed 0) into `train` (1,437) and `test` (360).

    The model's preprocessing is not used: the 8x8 scans are upsampled to the model's resolution as in
    [`load_digits_splits`] (an explicit `transform` is still honoured).
    """

    name = "digits"
    syntax = ("digits",)
    description = "scikit-learn's handwritten digits (offline; splits train / test)"
    expects = "The digits ship with scikit-learn: `pip install scikit-learn`."
    default_templates: ClassVar[str] = "digits"

    def image_transform(self, request: LoadRequest):
        return request.transform or DigitsToTensor(request.image_size)

    def rows(self, request: LoadRequest) -> datasets.Dataset:
        import datasets

        if request.data_dir is not None:
            raise ValueError("source='digits' ships with scikit-learn; drop data_dir.")
        try:
            raw, labels = _raw_digits()
        except ImportError as err:
            raise ImportError(f"{err}. {self.expects}") from err
        train_idx, test_idx = _split_indices(labels, test_fraction=0.2, seed=0)
        splits = {"train": train_idx, "test": test_idx}
        if request.split not in splits:
            raise ValueError(f"source='digits' has splits 'train' and 'test', not {request.split!r}.")
        idx = splits[request.split]
        # 8-bit storage of the 17 grey levels; `DigitsToTensor` recovers them exactly.
        grey = np.round(raw[idx] * (255.0 / _DIGITS_MAX_VALUE)).astype(np.uint8)
        features = datasets.Features({"image": datasets.Image(),
                                      "label": datasets.ClassLabel(names=DIGIT_CLASSNAMES)})
        return datasets.Dataset.from_dict(
            {"image": [Image.fromarray(g) for g in grey], "label": labels[idx].tolist()}, features=features)


register_source(DigitsSource())
