"""`shapes-vqa` and `shapes-caption`: offline VQA and captioning sets generated from rendered coloured shapes."""

from __future__ import annotations

import dataclasses

from ..shapes_captions import CAPTION_PROMPT, ShapesCaptions
from ..shapes_vqa import ShapesVQA
from .base import DataSource, LoadRequest, register_source

#: a recipe's evaluation scenes are generated from `seed + EVAL_SEED_OFFSET`, apart from its training scenes
EVAL_SEED_OFFSET = 10_000


class _GeneratedSource(DataSource):
    """Generated data: `n_samples` items from `seed`, drawn at `render_size` (option, default 64 px) and passed
    through the model's preprocessing once; `split` is ignored."""

    expects = "Nothing to download: the data is generated from n_samples and seed"

    def count(self, request: LoadRequest) -> int:
        if request.n_samples is None:
            raise ValueError(f"source {self.name!r} generates its data: give the number of items (n_samples).")
        return request.n_samples

    def load_train_eval(self, train: LoadRequest, evaluation: LoadRequest):
        """Training scenes from `seed`, evaluation scenes from `seed + EVAL_SEED_OFFSET`."""
        return self.load(train), self.load(dataclasses.replace(evaluation, seed=evaluation.seed + EVAL_SEED_OFFSET))


class ShapesVQASource(_GeneratedSource):
    """[`ShapesVQA`]: colour, shape, count, yes/no and position questions with 10 VQAv2-style references each."""

    name = "shapes-vqa"
    syntax = ("shapes-vqa",)
    tasks = ("vqa",)
    description = "generated VQA over rendered coloured shapes (offline)"
    former_names = ("shapes",)

    def load(self, request: LoadRequest) -> ShapesVQA:
        return ShapesVQA(self.count(request), image_size=request.option("render_size", 64), seed=request.seed,
                         transform=request.transform or request.preprocess)


class ShapesCaptionSource(_GeneratedSource):
    """[`ShapesCaptions`]: one to three shapes of one colour and kind, 5 COCO-style reference captions each."""

    name = "shapes-caption"
    syntax = ("shapes-caption",)
    tasks = ("caption",)
    description = "generated captions of rendered coloured shapes (offline)"

    def load(self, request: LoadRequest) -> ShapesCaptions:
        return ShapesCaptions(self.count(request), image_size=request.option("render_size", 64), seed=request.seed,
                              prompt=request.option("prompt", CAPTION_PROMPT),
                              transform=request.transform or request.preprocess)


register_source(ShapesVQASource())
register_source(ShapesCaptionSource())
