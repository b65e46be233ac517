"""scikit-learn's handwritten digits as a tiny, offline image-classification dataset.

`sklearn.datasets.load_digits` holds 1,797 real 8×8 grey scans (values 0–16) and ships inside scikit-learn, so
tests and smoke runs of the trainers, attacks and eval suites get real images without touching the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .templates import DIGITS_TEMPLATES

DIGIT_CLASSNAMES: list[str] = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# Grey levels in `load_digits` run from 0 to 16.
_DIGITS_MAX_VALUE = 16.0


def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as `(images [N, 8, 8] float 0–16, labels [N] int)`."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def _split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train / test indices, each sorted; the same seed gives the same split."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
    )
    return np.sort(train_idx), np.sort(test_idx)


def _resize_digits(grey: torch.Tensor, image_size: int) -> torch.Tensor:
    """Turn grey digits `[N, 1, 8, 8]` in [0, 1] into RGB `[N, 3, S, S]` in [0, 1].

    Args:
        grey (`torch.Tensor`): float images of shape `[N, 1, H, W]`, values in [0, 1].
        image_size (`int`): output side `S` in pixels.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}.")
    if grey.shape[-2:] != (image_size, image_size):
        grey = F.interpolate(grey, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    # Bilinear with antialias can overshoot [0, 1] by rounding; attacks assume a valid image box.
    return grey.clamp(0.0, 1.0).repeat(1, 3, 1, 1).contiguous()


class DigitsDataset(Dataset):
    """Handwritten digits held in memory as RGB float images.

    Items are `{"pixel_values": FloatTensor[3, S, S] in [0, 1], "labels": int}`.

    Args:
        images (`torch.Tensor`): `[N, 3, S, S]` float images in [0, 1].
        labels (`torch.Tensor`): `[N]` class indices into `classnames`.
        classnames (`list[str]`, defaults to `DIGIT_CLASSNAMES`): one name per class, used in prompts.
        templates (`list[str]`, defaults to `DIGITS_TEMPLATES`): prompt format strings with one `{}` slot.
    """

    name = "digits"

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        classnames: Sequence[str] = DIGIT_CLASSNAMES,
        templates: Sequence[str] = DIGITS_TEMPLATES,
    ):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape [N, 3, S, S], got {tuple(images.shape)}.")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels.")
        self.images = images
        self.labels = labels.long()
        self.classnames = list(classnames)
        self.templates = list(templates)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        return {"pixel_values": self.images[index], "labels": int(self.labels[index])}


def load_digits_splits(
    image_size: int = 16, test_fraction: float = 0.2, seed: int = 0
) -> tuple[DigitsDataset, DigitsDataset]:
    """Load the 1,797 digits as a stratified `(train, test)` pair of [`DigitsDataset`].

    Args:
        image_size (`int`, defaults to 16): side of the square RGB images; 8×8 scans are upsampled with
            antialiased bilinear interpolation.
        test_fraction (`float`, defaults to 0.2): share of each class put in the test split.
        seed (`int`, defaults to 0): seed of the split; the same seed always gives the same split.

    Returns:
        `tuple[DigitsDataset, DigitsDataset]`: train and test splits (1,437 and 360 images by default).
    """
    raw, labels = _raw_digits()
    grey = torch.from_numpy(raw / _DIGITS_MAX_VALUE).unsqueeze(1)
    images = _resize_digits(grey, image_size)
    targets = torch.from_numpy(labels)
    train_idx, test_idx = _split_indices(labels, test_fraction, seed)
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return DigitsDataset(images[train_idx], targets[train_idx]), DigitsDataset(images[test_idx], targets[test_idx])


def digits_captions(
    labels: torch.Tensor | Sequence[int],
    templates: Sequence[str],
    generator: torch.Generator | None = None,
    classnames: Sequence[str] = DIGIT_CLASSNAMES,
) -> list[str]:
    """Caption each label with a randomly drawn template, e.g. for contrastive pre-training text.

    Args:
        labels (`torch.Tensor` or `Sequence[int]`): class indices.
        templates (`Sequence[str]`): format strings with one `{}` slot.
        generator (`torch.Generator`, *optional*): source of the template draws; pass one to keep the global RNG
            untouched and the captions reproducible.
        classnames (`Sequence[str]`, defaults to `DIGIT_CLASSNAMES`): names put into the templates.

    Returns:
        `list[str]`: one caption per label.
    """
    if len(templates) == 0:
        raise ValueError("templates is empty; pass at least one format string with a '{}' slot.")
    labels = torch.as_tensor(labels).reshape(-1).tolist()
    picks = torch.randint(len(templates), (len(labels),), generator=generator).tolist()
    return [templates[t].format(classnames[y]) for t, y in zip(picks, labels)]
