"""What the classification sources share: rows -> [`ClassificationDataset`], split picking, reference files."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ..classification import (
    ClassificationDataset,
    Transform,
    build_classification_dataset,
    default_image_transform,
    resolve_template_list,
)
from .base import DataSource, LoadRequest

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)


class ClassificationSource(DataSource):
    """A source of labelled images: subclasses load the rows ([`ClassificationSource.rows`]); the columns, labels,
    templates and seeded subset are handled here, the same way for all of them.

    Attributes:
        default_templates (`str`): the template set used when the request names none.
    """

    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    default_templates: ClassVar[str] = "openai_imagenet"

    def rows(self, request: LoadRequest) -> datasets.Dataset:
        """The split's rows as a `datasets.Dataset` (an image column and a label column)."""
        raise NotImplementedError

    def image_transform(self, request: LoadRequest) -> Transform:
        """The request's transform, else the model's preprocessing, else [`default_image_transform`]."""
        return request.transform or request.preprocess or default_image_transform(request.image_size)

    def load(self, request: LoadRequest) -> ClassificationDataset:
        templates = request.option("templates", self.default_templates)
        resolve_template_list(templates)  # a bad template fails before any data is read
        data = self.rows(request)
        return build_classification_dataset(
            data, name=request.source, split=request.split, transform=self.image_transform(request),
            templates=templates, image_column=request.option("image_column"),
            label_column=request.option("label_column"), classnames=request.option("classnames"),
            max_samples=request.n_samples, seed=request.seed)


def local_path(source: DataSource, request: LoadRequest) -> str:
    """The folder or file of `<name>:<path>`, or of the bare `<name>` with `data_dir` (exactly one of the two)."""
    if request.location:
        if request.data_dir is not None:
            raise ValueError(f"{request.source!r} already names its path; drop data_dir={request.data_dir!r}.")
        return request.location
    if request.data_dir is None:
        raise ValueError(f"source={request.source!r} needs a local path: pass '{source.name}:<path>' or "
                         "data_dir=<path>.")
    return os.path.expanduser(request.data_dir)


def is_unsplit(directory: str) -> bool:
    """True when `datasets` finds no split folders or file names under `directory` and files all of it as "train"."""
    from datasets.data_files import get_data_patterns

    return list(get_data_patterns(directory).values()) == [["**"]]


def pick_split(loaded: datasets.DatasetDict, split: str, source: str, unsplit: bool) -> datasets.Dataset:
    """`loaded[split]`; a local dataset without a split layout (all of it filed under "train") serves any split."""
    if split in loaded:
        return loaded[split]
    if unsplit and list(loaded) == ["train"]:
        logger.info("%s has no split layout; using all of it for split=%r.", source, split)
        return loaded["train"]
    raise ValueError(f"{source} has splits {sorted(loaded)}, not {split!r}; pass split= one of them.")


def contains_file(directory: str) -> bool:
    # Stops at the first file, so a large ImageNet-style tree is not walked.
    return any(files for _, _, files in os.walk(directory))


def read_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def ref_file_next_to(path: str, filename: str) -> list[str]:
    """`filename` in the data's folder (a file's folder) or the folder above it (clip-benchmark's layout)."""
    base = Path(path)
    base = base if base.is_dir() else base.parent
    candidates = [base / filename, base.parent / filename]
    for c in candidates:
        if c.is_file():
            return read_lines(c)
    raise FileNotFoundError(f"{filename} not found next to {path} (looked in {[str(c) for c in candidates]}).")


def ref_file_of_repo(repo: str, filename: str) -> list[str]:
    """`filename` of a downloaded copy of a Hub dataset repository (a folder) or of the repository itself."""
    local = Path(os.path.expanduser(repo))
    if local.is_dir():
        return read_lines(local / filename)
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo_id=repo, filename=filename, repo_type="dataset")
    except Exception as err:  # offline, gated, missing: say which file was wanted, keep the cause
        raise FileNotFoundError(f"could not fetch {filename!r} from the Hub dataset {repo!r} "
                                f"({type(err).__name__}: {err})") from err
    return read_lines(Path(path))
