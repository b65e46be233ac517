"""Image-classification datasets through Hugging Face `datasets`, served as [0, 1] tensors.

The sources (Hub datasets, `imagefolder:`, `parquet:`, `webdataset:`, the builtin digits; see
`vlmrobust.data.sources`) load their rows; [`build_classification_dataset`] finds the columns, turns the labels into
class indices and keeps the seeded subset. Images come out un-normalised in [0, 1] because attacks clip to that box;
the model backend normalises inside its forward.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .templates import get_templates

if TYPE_CHECKING:
    import datasets

Transform = Callable[[Image.Image], torch.Tensor]
logger = logging.getLogger(__name__)

# Tried in this order among `ClassLabel` columns, then among plain columns (CIFAR-100 has fine and coarse labels).
_LABEL_COLUMN_NAMES = ("label", "labels", "fine_label")


def default_image_transform(image_size: int = 224) -> Transform:
    """CLIP-style preprocessing without normalisation: bicubic resize of the shorter side, center crop, to [0, 1].

    Args:
        image_size (`int`, defaults to 224): side of the square output.

    Returns:
        Callable mapping an RGB `PIL.Image.Image` to a float tensor `[3, image_size, image_size]` in [0, 1].
    """
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(image_size),
            T.ToTensor(),
        ]
    )


#: what an unreadable / corrupt image does: "fail" (raise naming the row and the file) or "skip" (drop the item,
#: counted and reported)
BAD_IMAGES = ("fail", "skip")


def check_bad_images(mode: str, where: str = "bad_images") -> str:
    """`mode` if it is one of [`BAD_IMAGES`], else a `ValueError` saying what each value does."""
    if mode not in BAD_IMAGES:
        raise ValueError(f"{where} must be 'fail' (an unreadable image stops the run, naming its file) or 'skip' "
                         f"(each unreadable image is left out, counted and reported), got {mode!r}.")
    return mode


class SkippedImage:
    """A dataset item whose image could not be read under `bad_images='skip'`: falsy, and naming where it was
    (`"<source> (split s) row i, file <path>"`). The collators drop it; the training collator passes the names on
    (`skipped_images` in the batch) so that the trainer counts them, also from DataLoader worker processes."""

    __slots__ = ("where",)

    def __init__(self, where: str):
        self.where = where

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"SkippedImage({self.where!r})"

    def __reduce__(self):
        return (SkippedImage, (self.where,))


def is_skipped(item) -> bool:
    """True for a dataset item left out as unreadable (a [`SkippedImage`], or `None` from older datasets)."""
    return item is None or isinstance(item, SkippedImage)


def apply_bad_images(dataset, mode: str) -> bool:
    """Set `bad_images = mode` on `dataset`, or on the dataset(s) it wraps (`Subset.dataset`, `ConcatDataset.datasets`);
    True when some dataset takes the setting (one that reads image files: [`ClassificationDataset`])."""
    check_bad_images(mode)
    todo, seen, took = [dataset], set(), False
    while todo:
        d = todo.pop()
        if d is None or id(d) in seen:
            continue
        seen.add(id(d))
        if isinstance(getattr(type(d), "bad_images", None), str):
            d.bad_images = mode
            took = True
            continue
        todo.append(getattr(d, "dataset", None))
        todo.extend(getattr(d, "datasets", None) or [])
    return took


class ClassificationDataset(Dataset):
    """A labelled image dataset whose items are `{"pixel_values": Tensor[3, H, W] in [0, 1], "labels": int}`.

    Built by [`load_classification_dataset`] (through [`build_classification_dataset`]); wraps a `datasets.Dataset` and decodes and transforms lazily.

    Args:
        data (`datasets.Dataset`): rows holding an `Image` column and an integer label column.
        image_column (`str`): name of the image column.
        label_column (`str`): name of the label column (indices into `classnames`).
        classnames (`list[str]`): one human-readable name per class, used in prompts.
        templates (`list[str]`): prompt format strings with one `{}` slot.
        transform (`Callable[[PIL.Image.Image], torch.Tensor]`): maps an RGB image to `[3, H, W]` in [0, 1].
        name (`str`): where the data came from, e.g. `"cifar10"` or `"imagefolder:/data/pets"`.
        split (`str`, *optional*): the split that was loaded.
    """

    def __init__(
        self,
        data: datasets.Dataset,
        *,
        image_column: str,
        label_column: str,
        classnames: Sequence[str],
        templates: Sequence[str],
        transform: Transform,
        name: str,
        split: str | None = None,
    ):
        self.data = data.select_columns([image_column, label_column])
        self.image_column = image_column
        self.label_column = label_column
        self.classnames = list(classnames)
        self.templates = list(templates)
        self.transform = transform
        self.name = name
        self.split = split

    def __len__(self) -> int:
        return len(self.data)

    #: an unreadable / corrupt image: "fail" (raise naming the row and file) or "skip" (the item is a
    #: [`SkippedImage`], which the collators drop; `skipped` counts them in this process). Set by the training
    #: config's `bad_images` (see [`apply_bad_images`]).
    bad_images: str = "fail"

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int] | SkippedImage:
        try:
            row = self.data[int(index)]
            image = row[self.image_column]
            if image.mode != "RGB":
                image = image.convert("RGB")
            pixels = self.transform(image)
        except (OSError, ValueError, SyntaxError) as err:  # PIL: UnidentifiedImageError, truncated files
            where = f"{self.name} (split {self.split}) row {index}{self._file_of(index)}"
            if self.bad_images == "skip":
                self.skipped = getattr(self, "skipped", 0) + 1
                logger.warning("Skipping unreadable image %s: %s (%d skipped so far).", where, err, self.skipped)
                return SkippedImage(where)
            raise ValueError(f"Unreadable image {where}: {type(err).__name__}: {err}. Remove or replace the file; a "
                             "training run can leave such images out with --bad_images skip (bad_images='skip': "
                             "each is skipped, counted and reported); an evaluation suite with bad_images: skip "
                             "(vlmrobust eval --bad-images skip) leaves them out before any cell, n counting the "
                             "rest.") from None
        return {"pixel_values": pixels, "labels": int(row[self.label_column])}

    def without_unreadable(self) -> ClassificationDataset:
        """The same dataset less its unreadable images (each decoded and transformed once to find them), with
        `skipped_images`: the names of those left out (`"<source> (split s) row i, file <path>"`), in order. What
        an evaluation with `bad_images: skip` scores: a fixed set, the same for every model and budget."""
        mode, self.bad_images = self.bad_images, "skip"
        try:
            items = [(i, self[i]) for i in range(len(self))]
        finally:
            self.bad_images = mode
        keep = [i for i, item in items if not is_skipped(item)]
        out = ClassificationDataset(self.data.select(keep) if len(keep) < len(self) else self.data,
                                    image_column=self.image_column, label_column=self.label_column,
                                    classnames=self.classnames, templates=self.templates, transform=self.transform,
                                    name=self.name, split=self.split)
        out.skipped_images = [item.where for _, item in items if isinstance(item, SkippedImage)]
        return out

    def _file_of(self, index: int) -> str:
        try:
            import datasets

            raw = self.data.cast_column(self.image_column, datasets.Image(decode=False))[int(index)][self.image_column]
            return f", file {raw['path']}" if raw.get("path") else ""
        except Exception:  # best effort: the row number alone still finds it
            return ""

    @property
    def labels(self) -> torch.Tensor:
        """All labels as a `LongTensor`, read without decoding any image."""
        return torch.tensor(self.data[self.label_column], dtype=torch.long)

    def __repr__(self) -> str:
        return (
            f"ClassificationDataset(name={self.name!r}, split={self.split!r}, num_rows={len(self)}, "
            f"num_classes={len(self.classnames)}, templates={len(self.templates)})"
        )


def collate_classification(batch: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Stack items of [`ClassificationDataset`] or [`DigitsDataset`] into `{"pixel_values", "labels"}` tensors
    (skipped unreadable images, [`SkippedImage`], dropped)."""
    batch = [item for item in batch if not is_skipped(item)]
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in batch]),
        "labels": torch.tensor([int(item["labels"]) for item in batch], dtype=torch.long),
    }


def build_classification_dataset(
    data: datasets.Dataset,
    *,
    name: str,
    split: str | None,
    transform: Transform,
    templates: str | Sequence[str],
    image_column: str | None = None,
    label_column: str | None = None,
    classnames: list[str] | None = None,
    max_samples: int | None = None,
    seed: int = 0,
) -> ClassificationDataset:
    """Wrap a loaded `datasets.Dataset` as a [`ClassificationDataset`]: find (or check) the image and label columns,
    turn the labels into class indices, and keep a seeded subset.

    What every classification source does once its rows are loaded (see `vlmrobust.data.sources`).

    Args:
        data (`datasets.Dataset`): the loaded split.
        name (`str`): the source string, for `.name` and messages.
        split (`str`, *optional*): the split that was loaded.
        transform (`Callable[[PIL.Image.Image], torch.Tensor]`): RGB image -> `[3, H, W]` in [0, 1].
        templates (`str` or `list[str]`): a template-set name for [`get_templates`], one format string, or a list.
        image_column (`str`, *optional*): image column; defaults to the first `datasets.Image` feature. A column
            of paths or bytes is cast to `datasets.Image`.
        label_column (`str`, *optional*): label column; defaults to the `ClassLabel` feature (preferring
            `label`, `labels`, `fine_label`), else a column with one of those names.
        classnames (`list[str]`, *optional*): one name per class; defaults to the `ClassLabel` names with
            underscores replaced by spaces. Required when the labels are plain integers.
        max_samples (`int`, *optional*): keep a random subset of this many rows, in dataset order.
        seed (`int`, defaults to 0): seed of the `max_samples` subset.

    Raises:
        `ValueError`: no image or label column can be found, or the class names do not fit the labels.
    """
    templates = resolve_template_list(templates)
    image_column = _find_image_column(data, image_column, name)
    if not _is_image_feature(data.features[image_column]):
        import datasets

        data = data.cast_column(image_column, datasets.Image())
    data, label_column, classnames = _resolve_labels(data, label_column, classnames, name)
    if max_samples is not None:
        data = data.select(_subset_indices(len(data), max_samples, seed))
    return ClassificationDataset(data, image_column=image_column, label_column=label_column, classnames=classnames,
                                 templates=templates, transform=transform, name=name, split=split)


def resolve_template_list(templates: str | Sequence[str]) -> list[str]:
    """A template-set name, one format string or a list -> the list of format strings (each with one `{}`)."""
    if isinstance(templates, str):
        # A single format string is accepted as a one-template list; template-set names never contain braces.
        templates = [templates] if "{}" in templates else get_templates(templates)
    templates = list(templates)
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise ValueError(f"Every template needs one '{{}}' slot for the class name; got {bad or templates!r}.")
    return templates


def _is_image_feature(feature: object) -> bool:
    import datasets

    return isinstance(feature, datasets.Image)


def _describe_columns(data: datasets.Dataset) -> str:
    return ", ".join(f"{name} ({type(feature).__name__})" for name, feature in data.features.items())


def _find_image_column(data: datasets.Dataset, requested: str | None, source: str) -> str:
    if requested is not None:
        if requested not in data.features:
            raise ValueError(
                f"{source} has no column image_column={requested!r}; columns: {_describe_columns(data)}. "
                "Pass image_column=<name> of the column holding the images."
            )
        return requested
    for name, feature in data.features.items():
        if _is_image_feature(feature):
            return name
    raise ValueError(
        f"{source} has no datasets.Image column; columns: {_describe_columns(data)}. "
        "Pass image_column=<name> of the column holding the images (paths or bytes are cast to datasets.Image)."
    )


def _resolve_labels(
    data: datasets.Dataset, requested: str | None, classnames: list[str] | None, source: str
) -> tuple[datasets.Dataset, str, list[str]]:
    """Pick the label column, make it integer class indices and return `(data, label_column, classnames)`."""
    import datasets

    features = data.features
    if requested is not None:
        if requested not in features:
            raise ValueError(
                f"{source} has no column label_column={requested!r}; columns: {_describe_columns(data)}. "
                "Pass label_column=<name> of the column holding the class labels."
            )
        label_column = requested
    else:
        class_labels = [name for name, f in features.items() if isinstance(f, datasets.ClassLabel)]
        preferred = [name for name in _LABEL_COLUMN_NAMES if name in class_labels]
        named = [name for name in _LABEL_COLUMN_NAMES if name in features]
        candidates = preferred + class_labels + named
        if not candidates:
            raise ValueError(
                f"{source} has no label column (no ClassLabel feature and none of {list(_LABEL_COLUMN_NAMES)}); "
                f"columns: {_describe_columns(data)}. Pass label_column=<name> of the column holding the labels."
            )
        label_column = candidates[0]

    feature = features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        if classnames is None:
            classnames = [name.replace("_", " ") for name in feature.names]
        elif len(classnames) != feature.num_classes:
            raise ValueError(
                f"{len(classnames)} classnames given but label column {label_column!r} of {source} has "
                f"{feature.num_classes} classes: {feature.names}."
            )
        return data, label_column, list(classnames)

    dtype = getattr(feature, "dtype", None)
    if dtype == "string" or dtype == "large_string":
        # String labels become indices: into `classnames` when given, else into their sorted unique values.
        if classnames is None:
            data = data.class_encode_column(label_column)
            classnames = [name.replace("_", " ") for name in data.features[label_column].names]
        else:
            data = data.cast_column(label_column, datasets.ClassLabel(names=list(classnames)))
        return data, label_column, list(classnames)

    if dtype is not None and ("int" in dtype):
        if classnames is None:
            raise ValueError(
                f"Label column {label_column!r} of {source} holds plain integers, so the class names are unknown; "
                "pass classnames=[...] in label order."
            )
        return data, label_column, list(classnames)

    raise ValueError(
        f"Label column {label_column!r} of {source} is {feature!r}, not class labels; columns: "
        f"{_describe_columns(data)}. Pass label_column=<name> of an integer, string or ClassLabel column."
    )


def _subset_indices(num_rows: int, max_samples: int, seed: int) -> list[int]:
    if max_samples < 1:
        raise ValueError(f"max_samples must be positive, got {max_samples}.")
    if max_samples >= num_rows:
        return list(range(num_rows))
    picked = np.random.default_rng(seed).permutation(num_rows)[:max_samples]
    return np.sort(picked).tolist()
