"""Where evaluation data comes from: the loaders behind a suite's `source:` (and, later, the recipes' datasets).

Each loader takes a dataset spec (the suite's parsed dataset entry: `name`, `source`, `split`, `n_samples`, `seed`,
...) and the model whose preprocessing and resolution the images need, and raises `DatasetUnavailable` naming the
dataset, the reason and the suite's download hint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


class DatasetUnavailable(RuntimeError):
    """A suite dataset cannot be loaded; the message says what to download and where to put it."""


def subset_indices(n: int, k: int | None, seed: int) -> list[int]:
    """A seeded subset of `range(n)` of size `k` (all of it when `k` is None or >= n), sorted."""
    if k is None or k >= n:
        return list(range(n))
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:k].sort().values.tolist()



def _read_ref_file(spec: Any, filename: str) -> list[str]:
    """Lines of `filename` from the dataset's local folder or Hub repository (e.g. clip-benchmark's classnames.txt)."""
    kind, _, loc = spec.source.partition(":")
    if kind in ("imagefolder", "parquet") and loc:
        base = Path(os.path.expanduser(loc))
        base = base if base.is_dir() else base.parent
        candidates = [base / filename, base.parent / filename]
        for c in candidates:
            if c.is_file():
                return [ln.strip() for ln in c.read_text(encoding="utf-8").splitlines() if ln.strip()]
        raise FileNotFoundError(f"{filename} not found next to {loc} (looked in {[str(c) for c in candidates]}).")
    repo = loc if kind == "webdataset" and loc else spec.source
    local = Path(os.path.expanduser(repo))
    if local.is_dir():  # a downloaded copy of a Hub repository, given by its folder
        return [ln.strip() for ln in (local / filename).read_text(encoding="utf-8").splitlines() if ln.strip()]
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo_id=repo, filename=filename, repo_type="dataset")
    except Exception as err:  # offline, gated, missing: say which file was wanted, keep the cause
        raise FileNotFoundError(f"could not fetch {filename!r} from the Hub dataset {repo!r} "
                                f"({type(err).__name__}: {err})") from err
    return [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]


def resolve_classnames(spec: Any) -> list[str] | None:
    value = spec.classnames
    if value is None or isinstance(value, list):
        return value
    if isinstance(value, dict) and "builtin" in value:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        return list(IMAGENET_CLASSNAMES)
    if isinstance(value, dict) and "file" in value:
        return _read_ref_file(spec, value["file"])
    raise ValueError(f"dataset '{spec.name}': classnames {value!r} is not a list or a reference.")


def resolve_templates(spec: Any) -> str | list[str]:
    value = spec.templates
    if isinstance(value, dict) and "file" in value:
        value = _read_ref_file(spec, value["file"])
    if isinstance(value, list):
        return [t.replace("{c}", "{}") for t in value]
    return value


def load_suite_dataset(spec: Any, model) -> Any:
    """The evaluated images of `spec` at `model`'s resolution (a seeded `n_samples` subset), with class names and
    templates attached.

    Raises:
        DatasetUnavailable: naming the dataset, the reason, and the suite's download hint.
    """
    from .classification import load_classification_dataset

    kw: dict[str, Any] = dict(image_size=model.image_size, max_samples=spec.n_samples, seed=spec.seed,
                              image_column=spec.image_column, label_column=spec.label_column, data_dir=spec.data_dir)
    if spec.source != "digits":
        kw["transform"] = model.preprocess
    try:
        kw["classnames"] = resolve_classnames(spec)
        kw["templates"] = resolve_templates(spec)
        return load_classification_dataset(spec.source, spec.split, **kw)
    except (RuntimeError, FileNotFoundError, OSError, ValueError, ImportError) as err:
        hint = f" To get it: {spec.download}" if spec.download else ""
        raise DatasetUnavailable(
            f"dataset '{spec.name}' (source {spec.source!r}, split {spec.split!r}) could not be loaded: "
            f"{type(err).__name__}: {err}.{hint}"
        ) from err


def load_vqa_dataset(spec: Any, model) -> Any:
    """The questions of a `task: vqa` dataset (the first / seeded `n_samples`), images preprocessed lazily.

    Raises:
        DatasetUnavailable: naming the dataset, the reason, and the suite's download hint.
    """
    if not (hasattr(model, "rank_answers") and hasattr(model, "answer_loss")):
        raise DatasetUnavailable(
            f"dataset '{spec.name}' is a VQA dataset (task: vqa) but model {type(model).__name__} cannot answer "
            "questions (it is not an LVLM such as llava:… / qwen_vl:…); run it on an LVLM, or --skip-missing.")
    vs = spec.vqa
    try:
        if spec.source == "shapes-vqa":
            from .shapes_vqa import ShapesVQA

            return ShapesVQA(spec.n_samples, image_size=vs.image_size, seed=spec.seed, transform=model.preprocess)
        if spec.source == "vqa-json":
            from .vqa import VQAJsonDataset

            root = Path(os.path.expanduser(spec.data_dir)) if spec.data_dir else Path(".")
            kw = {"image_pattern": vs.image_pattern} if vs.image_pattern else {}
            ds = VQAJsonDataset(root / os.path.expanduser(vs.questions_file),
                                root / os.path.expanduser(vs.annotations_file),
                                image_dir=root / os.path.expanduser(vs.image_dir), **kw)
        else:
            import datasets as hf_datasets

            from .vqa import HFVQADataset

            local = Path(os.path.expanduser(spec.source))
            raw = (hf_datasets.load_from_disk(str(local)) if (local / "dataset_info.json").is_file()
                   else hf_datasets.load_dataset(spec.source, split=spec.split, data_dir=spec.data_dir))
            if isinstance(raw, hf_datasets.DatasetDict):
                raw = raw[spec.split]
            ds = HFVQADataset(raw, answers_field=vs.answers_field)
        idx = subset_indices(len(ds), spec.n_samples, spec.seed)
        if len(idx) < len(ds):
            ds = torch.utils.data.Subset(ds, idx)
        return ds
    except (RuntimeError, FileNotFoundError, OSError, ValueError, ImportError, KeyError) as err:
        hint = f" To get it: {spec.download}" if spec.download else ""
        raise DatasetUnavailable(
            f"dataset '{spec.name}' (VQA source {spec.source!r}, split {spec.split!r}) could not be loaded: "
            f"{type(err).__name__}: {err}.{hint}") from err


def load_caption_dataset(spec: Any, model) -> Any:
    """The images of a `task: caption` dataset (the first / seeded `n_samples`: CIDEr's fixed subset).

    Raises:
        DatasetUnavailable: naming the dataset, the reason, and the suite's download hint.
    """
    if not (hasattr(model, "generate") and hasattr(model, "answer_loss")):
        raise DatasetUnavailable(
            f"dataset '{spec.name}' is a captioning dataset (task: caption) but model {type(model).__name__} cannot "
            "generate captions (it is not an LVLM such as llava:… / qwen_vl:…); run it on an LVLM, or "
            "--skip-missing.")
    cs = spec.caption
    try:
        if spec.source == "shapes-caption":
            from .shapes_captions import ShapesCaptions

            return ShapesCaptions(spec.n_samples, image_size=cs.image_size, seed=spec.seed, prompt=cs.prompt,
                                  transform=model.preprocess)
        from .vqa import CaptionJsonDataset

        root = Path(os.path.expanduser(spec.data_dir)) if spec.data_dir else Path(".")
        ds = CaptionJsonDataset(root / os.path.expanduser(cs.annotations_file),
                                root / os.path.expanduser(cs.image_dir), prompt=cs.prompt)
        idx = subset_indices(len(ds), spec.n_samples, spec.seed)
        if len(idx) < len(ds):
            ds = torch.utils.data.Subset(ds, idx)
        return ds
    except (RuntimeError, FileNotFoundError, OSError, ValueError, KeyError) as err:
        hint = f" To get it: {spec.download}" if spec.download else ""
        raise DatasetUnavailable(
            f"dataset '{spec.name}' (captioning source {spec.source!r}) could not be loaded: "
            f"{type(err).__name__}: {err}.{hint}") from err


__all__ = ["DatasetUnavailable", "load_caption_dataset", "load_suite_dataset", "load_vqa_dataset", "resolve_classnames",
           "resolve_templates", "subset_indices"]
