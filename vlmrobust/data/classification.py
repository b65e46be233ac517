"""Image-classification datasets through Hugging Face `datasets`, served as [0, 1] tensors.

One loader covers Hub datasets, local copies (`imagefolder:`, `parquet:`) and the builtin offline digits. Images
come out un-normalised in [0, 1] because attacks clip to that box; the model backend normalises inside its forward.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .digits import _DIGITS_MAX_VALUE, DIGIT_CLASSNAMES, _raw_digits, _resize_digits, _split_indices
from .templates import get_templates

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

Transform = Callable[[Image.Image], torch.Tensor]

# Tried in this order among `ClassLabel` columns, then among plain columns (CIFAR-100 has fine and coarse labels).
_LABEL_COLUMN_NAMES = ("label", "labels", "fine_label")

_SOURCE_FORMS = (
    "a Hub dataset id ('cifar10', 'org/name'), 'imagefolder:<dir>', 'parquet:<file, glob or dir>', "
    "'webdataset:<Hub id or dir>' or 'digits'"
)
_IMAGEFOLDER_LAYOUT = (
    "imagefolder:<dir> expects <dir>/<split>/<class>/*.png or <dir>/<class>/*.png "
    "(class names come from the sub-folder names; any PIL-readable image format works)"
)
_WEBDATASET_LAYOUT = (
    "webdataset:<Hub id or dir> expects WebDataset shards <split>/*.tar (e.g. the clip-benchmark/wds_* repositories: "
    "test/0.tar, ... with one image file and one .cls label per sample)"
)
_PARQUET_LAYOUT = (
    "parquet:<path> expects a .parquet file, a glob such as data/test-*.parquet, or a folder of them "
    "(named <split>-*.parquet to hold several splits), with an image column and a label column"
)


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


class _DigitsToTensor:
    """Default digits transform: the exact pixels of `load_digits_splits(image_size)`, not a bicubic resample."""

    def __init__(self, image_size: int):
        self.image_size = image_size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        grey = torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32) / 255.0)
        # Undo the 8-bit storage: the 17 grey levels are recovered exactly.
        grey = torch.round(grey * _DIGITS_MAX_VALUE) / _DIGITS_MAX_VALUE
        return _resize_digits(grey[None, None], self.image_size)[0]


class ClassificationDataset(Dataset):
    """A labelled image dataset whose items are `{"pixel_values": Tensor[3, H, W] in [0, 1], "labels": int}`.

    Built by [`load_classification_dataset`]; wraps a `datasets.Dataset` and decodes and transforms lazily.

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

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        row = self.data[int(index)]
        image = row[self.image_column]
        if image.mode != "RGB":
            image = image.convert("RGB")
        return {"pixel_values": self.transform(image), "labels": int(row[self.label_column])}

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
    """Stack items of [`ClassificationDataset`] or [`DigitsDataset`] into `{"pixel_values", "labels"}` tensors."""
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in batch]),
        "labels": torch.tensor([int(item["labels"]) for item in batch], dtype=torch.long),
    }


def load_classification_dataset(
    source: str,
    split: str = "test",
    *,
    image_size: int = 224,
    transform: Transform | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    classnames: list[str] | None = None,
    templates: str | list[str] | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    data_dir: str | None = None,
) -> ClassificationDataset:
    """Load an image-classification dataset as [0, 1] tensors at the model's resolution.

    Args:
        source (`str`): a Hub dataset id (`"cifar10"`, `"org/name"`, read with `datasets.load_dataset`),
            `"imagefolder:<dir>"` (class sub-folders, optionally under split folders), `"parquet:<file, glob or
            dir>"`, or `"digits"` (scikit-learn's handwritten digits, always offline).
        split (`str`, defaults to `"test"`): split to load. A local source without split folders or files is a
            single split and is used whatever `split` says.
        image_size (`int`, defaults to 224): output side when `transform` is not given.
        transform (`Callable[[PIL.Image.Image], torch.Tensor]`, *optional*): the model backend's preprocessing,
            mapping an RGB image to `[3, H, W]` in [0, 1]. Defaults to [`default_image_transform`] (for
            `"digits"`: the pixels of [`load_digits_splits`]).
        image_column (`str`, *optional*): image column; defaults to the first `datasets.Image` feature. A column
            of paths or bytes is cast to `datasets.Image`.
        label_column (`str`, *optional*): label column; defaults to the `ClassLabel` feature (preferring
            `label`, `labels`, `fine_label`), else a column with one of those names.
        classnames (`list[str]`, *optional*): one name per class; defaults to the `ClassLabel` names with
            underscores replaced by spaces. Required when the labels are plain integers.
        templates (`str` or `list[str]`, *optional*): a template-set name for [`get_templates`] or a list of
            format strings; defaults to `"openai_imagenet"` (`"digits"` for the digits source).
        max_samples (`int`, *optional*): keep a random subset of this many rows; the same `seed` gives the same
            rows, kept in dataset order.
        seed (`int`, defaults to 0): seed of the `max_samples` subset (the digits train/test split is fixed to
            the default of `load_digits_splits`).
        data_dir (`str`, *optional*): for a Hub id, the sub-folder of the dataset repository (as in
            `datasets.load_dataset`); with `source="imagefolder"` or `"parquet"`, the local folder.

    Returns:
        [`ClassificationDataset`]: with `.classnames`, `.templates` and `.name`.

    Raises:
        `FileNotFoundError`: a local folder or file is missing (the message shows the expected layout).
        `RuntimeError`: a Hub dataset cannot be reached or found, e.g. offline without a cached copy.
        `ValueError`: no image or label column can be found, or the split does not exist.
    """
    kind, location = _parse_source(source, data_dir)
    default_templates = "digits" if kind == "digits" else "openai_imagenet"
    templates = _resolve_templates(default_templates if templates is None else templates)

    if kind == "digits":
        data = _digits_as_hf_dataset(split)
        if transform is None:
            transform = _DigitsToTensor(image_size)
    elif kind == "imagefolder":
        data = _load_imagefolder(location, split)
    elif kind == "parquet":
        data = _load_parquet(location, split)
    elif kind == "webdataset":
        data = _load_webdataset(location, split)
    else:
        data = _load_hub(location, split, data_dir)
    if transform is None:
        transform = default_image_transform(image_size)

    image_column = _find_image_column(data, image_column, source)
    if not _is_image_feature(data.features[image_column]):
        import datasets

        data = data.cast_column(image_column, datasets.Image())
    data, label_column, classnames = _resolve_labels(data, label_column, classnames, source)

    if max_samples is not None:
        data = data.select(_subset_indices(len(data), max_samples, seed))

    return ClassificationDataset(
        data,
        image_column=image_column,
        label_column=label_column,
        classnames=classnames,
        templates=templates,
        transform=transform,
        name=source,
        split=split,
    )


def _parse_source(source: str, data_dir: str | None) -> tuple[str, str]:
    """Split `source` into `(kind, location)`: kind in {"digits", "imagefolder", "parquet", "webdataset", "hub"}."""
    if source == "digits":
        if data_dir is not None:
            raise ValueError("source='digits' ships with scikit-learn; drop data_dir.")
        return "digits", ""
    if source in ("imagefolder", "parquet"):
        if data_dir is None:
            raise ValueError(f"source={source!r} needs a local path: pass '{source}:<path>' or data_dir=<path>.")
        return source, data_dir
    prefix, sep, rest = source.partition(":")
    if sep:
        if prefix not in ("imagefolder", "parquet", "webdataset"):
            raise ValueError(f"Unknown dataset source prefix {prefix + ':'!r} in {source!r}; use {_SOURCE_FORMS}.")
        if not rest:
            raise ValueError(f"{source!r} names no path; use {_SOURCE_FORMS}.")
        if data_dir is not None:
            raise ValueError(f"{source!r} already names its path; drop data_dir={data_dir!r}.")
        return prefix, os.path.expanduser(rest)
    return "hub", source


def _resolve_templates(templates: str | Sequence[str]) -> list[str]:
    if isinstance(templates, str):
        # A single format string is accepted as a one-template list; template-set names never contain braces.
        templates = [templates] if "{}" in templates else get_templates(templates)
    templates = list(templates)
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise ValueError(f"Every template needs one '{{}}' slot for the class name; got {bad or templates!r}.")
    return templates


def _digits_as_hf_dataset(split: str) -> datasets.Dataset:
    import datasets

    raw, labels = _raw_digits()
    train_idx, test_idx = _split_indices(labels, test_fraction=0.2, seed=0)
    splits = {"train": train_idx, "test": test_idx}
    if split not in splits:
        raise ValueError(f"source='digits' has splits 'train' and 'test', not {split!r}.")
    idx = splits[split]
    # 8-bit storage of the 17 grey levels; `_DigitsToTensor` recovers them exactly.
    grey = np.round(raw[idx] * (255.0 / _DIGITS_MAX_VALUE)).astype(np.uint8)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=DIGIT_CLASSNAMES)})
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(g) for g in grey], "label": labels[idx].tolist()}, features=features
    )


def _is_unsplit(directory: str) -> bool:
    """True when `datasets` finds no split folders or file names under `directory` and files all of it as "train"."""
    from datasets.data_files import get_data_patterns

    return list(get_data_patterns(directory).values()) == [["**"]]


def _pick_split(loaded: datasets.DatasetDict, split: str, source: str, unsplit: bool) -> datasets.Dataset:
    if split in loaded:
        return loaded[split]
    if unsplit and list(loaded) == ["train"]:
        # `datasets` files data without split folders/names under "train"; here it is the whole local dataset.
        logger.info("%s has no split layout; using all of it for split=%r.", source, split)
        return loaded["train"]
    raise ValueError(f"{source} has splits {sorted(loaded)}, not {split!r}; pass split= one of them.")


def _load_imagefolder(directory: str, split: str) -> datasets.Dataset:
    import datasets

    source = f"imagefolder:{directory}"
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{source}: folder {directory!r} does not exist. {_IMAGEFOLDER_LAYOUT}.")
    if not _contains_file(directory):
        raise FileNotFoundError(f"{source}: folder {directory!r} holds no files. {_IMAGEFOLDER_LAYOUT}.")
    loaded = datasets.load_dataset("imagefolder", data_dir=directory)
    return _pick_split(loaded, split, source, unsplit=_is_unsplit(directory))


def _load_parquet(path: str, split: str) -> datasets.Dataset:
    import datasets

    source = f"parquet:{path}"
    if os.path.isdir(path):
        if not glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True):
            raise FileNotFoundError(f"{source}: folder {path!r} holds no .parquet file. {_PARQUET_LAYOUT}.")
        loaded = datasets.load_dataset("parquet", data_dir=path)
        return _pick_split(loaded, split, source, unsplit=_is_unsplit(path))
    files = sorted(glob.glob(path))
    if not files:
        raise FileNotFoundError(f"{source}: no file matches {path!r}. {_PARQUET_LAYOUT}.")
    # Files named explicitly are the split the caller asked for.
    return datasets.load_dataset("parquet", data_files=files, split="train")


def _load_webdataset(location: str, split: str) -> datasets.Dataset:
    """WebDataset shards `<location>/<split>/*.tar`, from a local folder or a Hub dataset repository.

    The builder is named explicitly: repositories such as clip-benchmark/wds_* also hold .txt files (classnames.txt,
    nshards.txt) that can outnumber the shards and make `datasets` guess a text dataset.
    """
    import datasets

    source = f"webdataset:{location}"
    if os.path.isdir(location):
        files = sorted(glob.glob(os.path.join(location, split, "*.tar")))
        if not files:
            raise FileNotFoundError(f"{source}: no {split}/*.tar under {location!r}. {_WEBDATASET_LAYOUT}.")
        return datasets.load_dataset("webdataset", data_files={split: files}, split=split)
    pattern = f"hf://datasets/{location}/{split}/*.tar"
    try:
        return datasets.load_dataset("webdataset", data_files={split: pattern}, split=split)
    except Exception as err:  # offline, gated or absent: one message that names the fix, the cause kept
        raise RuntimeError(
            f"Could not load {source} (split={split!r}, shards {pattern}): {type(err).__name__}: {err}. "
            f"Download it where there is network: `huggingface-cli download --repo-type dataset {location} "
            f"--local-dir <dir>`, then use source 'webdataset:<dir>'. {_WEBDATASET_LAYOUT}."
        ) from err


def _load_hub(dataset_id: str, split: str, data_dir: str | None) -> datasets.Dataset:
    import datasets
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return datasets.load_dataset(dataset_id, split=split, data_dir=data_dir)
    except (ConnectionError, FileNotFoundError, HfHubHTTPError) as err:
        raise RuntimeError(
            f"Could not load the Hub dataset {dataset_id!r} (split={split!r}): {type(err).__name__}: {err}. "
            "To use it without network: where there is network, load it once with the same HF_HOME "
            f"(`python -c \"import datasets; datasets.load_dataset('{dataset_id}')\"`) and then run with "
            "HF_DATASETS_OFFLINE=1; or download it beforehand with "
            f"`huggingface-cli download --repo-type dataset {dataset_id} --local-dir <dir>` (`hf download` in newer "
            "clients) and point source at the local copy: 'parquet:<dir>' or 'imagefolder:<dir>'."
        ) from err


def _contains_file(directory: str) -> bool:
    # Stops at the first file, so a large ImageNet-style tree is not walked.
    return any(files for _, _, files in os.walk(directory))


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
