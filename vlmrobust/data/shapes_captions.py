"""Shapes-Captions: an offline captioning set of rendered coloured shapes, for tests and quickstarts.

Each image shows one to three shapes of one colour and kind (e.g. two blue squares) on a grey background; it has
5 reference captions in COCO's style ("two blue squares on a grey background", "a picture of two blue squares",
...). The scenes are drawn with the same palette and shapes as [`ShapesVQA`](shapes_vqa.py). Meant for the plumbing of
captioning evaluation (`task: caption` suites), not as a benchmark.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from torch.utils.data import Dataset

from .shapes_vqa import COLOURS, SHAPES, draw_shape

CAPTION_PROMPT = "Provide a short caption for this image."
_NUMBER_WORDS = {1: "a", 2: "two", 3: "three"}
_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds"}


def _phrase(k: int, colour: str, shape: str) -> str:
    return f"{_NUMBER_WORDS[k]} {colour} {shape if k == 1 else _PLURAL[shape]}"


class ShapesCaptions(Dataset):
    """Generated captioning data over rendered shapes (deterministic given `seed`).

    Args:
        n (`int`, *optional*, defaults to 64): number of images.
        image_size (`int`, *optional*, defaults to 64): rendered side in pixels.
        seed (`int`, *optional*, defaults to 0): generator seed (a private `random.Random`).
        prompt (`str`, *optional*): the captioning instruction (the item's `question`).
        transform (`Callable`, *optional*): PIL -> [0, 1] tensor (e.g. `model.preprocess`); when given, items also
            hold `pixel_values`.

    Items: `image` (PIL), `question` (the prompt), `answers` (5 reference captions), `question_id`, `question_type`
    ("caption"), and the scene (`colour`, `shape`, `count`).
    """

    def __init__(self, n: int = 64, *, image_size: int = 64, seed: int = 0, prompt: str = CAPTION_PROMPT,
                 transform: Callable | None = None):
        if n < 1:
            raise ValueError(f"ShapesCaptions needs n >= 1, got {n}.")
        self.image_size, self.prompt = image_size, prompt
        rng = random.Random(seed)
        self.items = [self._make(i, rng) for i in range(n)]
        if transform is not None:
            for it in self.items:
                it["pixel_values"] = transform(it["image"])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    def _make(self, idx: int, rng: random.Random) -> dict:
        from PIL import Image, ImageDraw

        s = self.image_size
        colour, shape, k = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.randint(1, 3)
        grey = rng.randint(215, 255)
        img = Image.new("RGB", (s, s), (grey, grey, grey))
        draw = ImageDraw.Draw(img)
        cells = rng.sample([(0, 0), (0, 1), (1, 0), (1, 1)], k)
        for gy, gx in cells:
            r = s * (0.14 if k > 1 else rng.uniform(0.18, 0.24))
            cx = (gx + 0.5) * s / 2 if k > 1 else s * rng.uniform(0.35, 0.65)
            cy = (gy + 0.5) * s / 2 if k > 1 else s * rng.uniform(0.35, 0.65)
            draw_shape(draw, shape, cx, cy, r, COLOURS[colour])
        p = _phrase(k, colour, shape)
        refs = [f"{p} on a grey background", f"a picture of {p}", p, f"an image showing {p}",
                f"{p} drawn on a plain background"]
        return {"image": img, "question": self.prompt, "answers": refs, "question_id": idx,
                "question_type": "caption", "colour": colour, "shape": shape, "count": k}
