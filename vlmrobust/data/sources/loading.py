"""Loading by source string: one call for any task, the classification shortcut, and a recipe's train / eval pair."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..classification import ClassificationDataset, Transform
from .base import LoadRequest, resolve_source


def load_source(source: str, task: str = "classification", split: str = "test", *, n_samples: int | None = None,
                seed: int = 0, image_size: int = 224, transform: Callable | None = None,
                preprocess: Callable | None = None, data_dir: str | None = None,
                **options: Any) -> torch.utils.data.Dataset:
    """Load one split of any registered source for `task` (see [`LoadRequest`] for the arguments).

    Example:
        `load_source("shapes-vqa", "vqa", n_samples=64, preprocess=model.preprocess)`,
        `load_source("parquet:data/test-*.parquet", image_size=224, label_column="fine_label")`.

    Raises:
        `ValueError`: unknown source or a task it does not serve (the message lists the registered sources).
        `FileNotFoundError`: the data is missing (the message says what is expected and where to get it).
    """
    request = LoadRequest(source=source, task=task, split=split, n_samples=n_samples, seed=seed,
                          image_size=image_size, transform=transform, preprocess=preprocess, data_dir=data_dir,
                          options=options)
    return resolve_source(source, task).load(request)


def load_train_eval(source: str, task: str, *, train_split: str = "train", eval_split: str = "test",
                    n_train: int | None = None, n_eval: int | None = None, seed: int = 0, image_size: int = 224,
                    preprocess: Callable | None = None, data_dir: str | None = None, **options: Any):
    """A recipe's `(train, eval)` datasets from one source.

    Sources with splits load each split's seeded subset; single-split sources keep the two apart their own way
    (`vqa-json`: the first `n_eval` questions for evaluation, the next `n_train` for training; the generated shapes:
    another seed for evaluation).

    Args:
        source (`str`): any registered `source:` string serving `task` (`digits`, `shapes-vqa`, `vqa-json:...`, a
            Hub id, ...).
        task (`str`): `"classification"`, `"vqa"` or `"caption"`.
        train_split / eval_split (`str`): the splits, where the source has them.
        n_train / n_eval (`int`, *optional*): seeded subset sizes (all when `None`).
        seed (`int`, defaults to 0): seed of the subsets and of generated data.
        image_size (`int`), preprocess (`Callable`): the model's resolution and preprocessing.
        data_dir (`str`, *optional*), **options: as in [`load_source`].
    """
    src = resolve_source(source, task)

    def request(split: str, n: int | None) -> LoadRequest:
        return LoadRequest(source=source, task=task, split=split, n_samples=n, seed=seed, image_size=image_size,
                           preprocess=preprocess, data_dir=data_dir, options=options)

    return src.load_train_eval(request(train_split, n_train), request(eval_split, n_eval))


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
        source (`str`): a registered classification source: `"digits"` (scikit-learn's handwritten digits, always
            offline), `"imagefolder:<dir>"` (class sub-folders, optionally under split folders), `"parquet:<file,
            glob or dir>"`, `"webdataset:<Hub id or dir>"`, or a Hub dataset id (`"cifar10"`, `"org/name"`,
            `"hf:org/name"`, read with `datasets.load_dataset`) or `save_to_disk` folder.
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
        `ValueError`: unknown source, no image or label column can be found, or the split does not exist.
    """
    return load_source(source, "classification", split, n_samples=max_samples, seed=seed, image_size=image_size,
                       transform=transform, data_dir=data_dir, image_column=image_column, label_column=label_column,
                       classnames=classnames, templates=templates)
