"""`vqa-json` and `coco-json`: the official JSON annotation files of VQA / COCO captions plus an image folder.

Both take their files inline (`vqa-json:<questions.json>,<annotations.json>,<image dir>`, handy on a recipe's
command line) or from the suite's keys (`vqa: {questions_file, annotations_file, image_dir}`), relative to
`data_dir` when it is given. The files hold one split, so `split` is ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import torch

from ..vqa import CaptionJsonDataset, VQAJsonDataset
from .base import DataSource, LoadRequest, register_source, subset_indices


class _JsonSource(DataSource):
    """Files named inline or by options; `files` lists the option keys in inline order, the last one a folder."""

    files: ClassVar[tuple[str, ...]] = ()
    located = True

    def paths(self, request: LoadRequest) -> list[Path]:
        """The files (and, last, the image folder), checked to exist."""
        given = [request.option(k) for k in self.files]
        if request.location:
            if any(given):
                raise ValueError(f"{request.source!r} names its files inline; drop {', '.join(self.files)}.")
            given = request.location.split(",")
            if len(given) != len(self.files) or not all(given):
                raise ValueError(f"{request.source!r}: write {self.syntax[0]} ({len(self.files)} comma-separated "
                                 "paths).")
        elif not all(given):
            missing = [k for k, v in zip(self.files, given) if not v]
            raise ValueError(f"source {self.name!r} needs {', '.join(missing)} (or write {self.syntax[0]}).")
        root = Path(os.path.expanduser(request.data_dir)) if request.data_dir else Path(".")
        paths = [root / os.path.expanduser(p) for p in given]
        for key, path in zip(self.files[:-1], paths[:-1]):
            if not path.is_file():
                raise self.missing(f"{self.name}: {key} {str(path)!r} not found")
        if not paths[-1].is_dir():
            raise self.missing(f"{self.name}: {self.files[-1]} {str(paths[-1])!r} is not a folder")
        return paths

    def whole(self, request: LoadRequest) -> torch.utils.data.Dataset:
        raise NotImplementedError

    def load(self, request: LoadRequest) -> torch.utils.data.Dataset:
        ds = self.whole(request)
        idx = subset_indices(len(ds), request.n_samples, request.seed)
        return torch.utils.data.Subset(ds, idx) if len(idx) < len(ds) else ds

    def load_train_eval(self, train: LoadRequest, evaluation: LoadRequest):
        """One split for both: the evaluation set is the first `evaluation.n_samples` items, the training set the
        `train.n_samples` after them (disjoint, in file order)."""
        full = self.whole(train)
        n = len(full)
        n_eval = min(n, n if evaluation.n_samples is None else evaluation.n_samples)
        n_train = n if train.n_samples is None else train.n_samples
        sub = torch.utils.data.Subset
        return sub(full, list(range(n_eval, min(n, n_eval + n_train)))), sub(full, list(range(n_eval)))


class VQAJsonSource(_JsonSource):
    """[`VQAJsonDataset`]: VQAv2-format questions and annotations (VQAv2, TextVQA / VizWiz / OK-VQA converted)."""

    name = "vqa-json"
    syntax = ("vqa-json:<questions.json>,<annotations.json>,<image dir>",
              "vqa-json + questions_file / annotations_file / image_dir")
    tasks = ("vqa",)
    description = "VQA's official questions + annotations JSON and an image folder"
    expects = ("vqa-json expects VQA's official JSON files and an image folder: the questions (e.g. "
               "v2_OpenEnded_mscoco_val2014_questions.json), the annotations (v2_mscoco_val2014_annotations.json) "
               "and the images (val2014/, file names from image_pattern, by default COCO_{split}_{image_id:012d}"
               ".jpg); VQAv2's are at https://visualqa.org/download.html")
    files = ("questions_file", "annotations_file", "image_dir")

    def whole(self, request: LoadRequest) -> VQAJsonDataset:
        questions, annotations, images = self.paths(request)
        pattern = request.option("image_pattern")
        return VQAJsonDataset(questions, annotations, image_dir=images,
                              **({"image_pattern": pattern} if pattern else {}))


class CocoJsonSource(_JsonSource):
    """[`CaptionJsonDataset`]: COCO-format captions (`captions_val2014.json`, or the Karpathy split in that format)."""

    name = "coco-json"
    syntax = ("coco-json:<captions.json>,<image dir>", "coco-json + annotations_file / image_dir")
    tasks = ("caption",)
    description = "a COCO-format caption JSON and its image folder"
    expects = ("coco-json expects a COCO-format caption file ({'images': [{'id', 'file_name'}], 'annotations': "
               "[{'image_id', 'caption'}]}, e.g. captions_val2014.json or the Karpathy test split in COCO format) "
               "and the folder of its images (val2014/); COCO's are at https://cocodataset.org/#download")
    files = ("annotations_file", "image_dir")

    def whole(self, request: LoadRequest) -> CaptionJsonDataset:
        annotations, images = self.paths(request)
        prompt = request.option("prompt")
        return CaptionJsonDataset(annotations, images, **({"prompt": prompt} if prompt else {}))


register_source(VQAJsonSource())
register_source(CocoJsonSource())
