"""`frames:<dataset>`: a FRAMES-VQA dataset (VQAv2, IV-VQA, CV-VQA, VQA-Rephrasings, VQA-CP v2, VQA-CE, AdVQA, TextVQA,
VizWiz, OK-VQA) from its official files under the FRAMES root, else from its Hub copy where one exists.

The root is `data_dir`, else `$VLMROBUST_FRAMES_ROOT`, else `~/data/frames-vqa`; the layout under it is in
`vlmrobust.data.frames_vqa.FRAMES_DATASETS` (the suite keys `questions_file`, `annotations_file`, `image_dir`,
`image_pattern` override a dataset's defaults). A dataset found neither locally nor on the Hub fails with the files
it expected and where to get them.
"""

from __future__ import annotations

import dataclasses

import torch

from ..frames_vqa import FRAMES_DATASETS, expected_files, frames_root, load_frames_files
from .base import DataSource, LoadRequest, register_source, resolve_source, subset_indices

_OVERRIDES = {"questions_file": "questions", "annotations_file": "annotations", "image_dir": "images",
              "image_pattern": "pattern"}


class FramesSource(DataSource):
    """One FRAMES-VQA dataset: local official files first, then the Hub copy."""

    name = "frames"
    syntax = ("frames:<dataset>",)
    tasks = ("vqa",)
    description = "a FRAMES-VQA dataset from its official files (local root first) or its Hub copy"
    located = True
    expects = ("frames:<dataset> expects the dataset's official question / annotation JSON and images under the "
               "FRAMES root (data_dir, $VLMROBUST_FRAMES_ROOT or ~/data/frames-vqa); see "
               "vlmrobust/data/frames_vqa.py for each dataset's files and download page")

    def load(self, request: LoadRequest) -> torch.utils.data.Dataset:
        name = request.location
        if name not in FRAMES_DATASETS:
            raise ValueError(f"unknown FRAMES-VQA dataset {name!r} in {request.source!r}; datasets: "
                             f"{', '.join(FRAMES_DATASETS)}.")
        root = frames_root(request.data_dir)
        files = {v: request.option(k) for k, v in _OVERRIDES.items() if request.option(k) is not None}
        try:
            ds = load_frames_files(name, root, files)
        except FileNotFoundError as local_err:
            hub = FRAMES_DATASETS[name].get("hub")
            if not hub:
                raise
            try:
                return resolve_source(hub, "vqa").load(dataclasses.replace(request, source=hub, data_dir=None))
            except Exception as hub_err:  # offline or gated: say both what is missing locally and what the Hub said
                raise FileNotFoundError(f"{local_err}; its Hub copy {hub!r} (split {request.split!r}) could not be "
                                        f"loaded either: {type(hub_err).__name__}: {str(hub_err)[:300]}") from hub_err
        idx = subset_indices(len(ds), request.n_samples, request.seed)
        return torch.utils.data.Subset(ds, idx) if len(idx) < len(ds) else ds


register_source(FramesSource())

__all__ = ["FramesSource", "expected_files"]
