"""mini-FRAMES: an offline stand-in for FRAMES-VQA (CVPR 2025) built from shapes-VQA, with the same structure.

A model fine-tuned on shapes-VQA (the ID set) is evaluated on splits that each move one thing away from it, like
FRAMES-VQA's near-OOD sets, and on far-OOD splits that change what the scenes are:

| variant       | level | shift type  | FRAMES-VQA analogue | what changes                                               |
|---------------|-------|-------------|---------------------|------------------------------------------------------------|
| `id`          | id    | none        | VQAv2               | nothing (fresh scenes of the training distribution)        |
| `colour`      | near  | vision      | IV-VQA              | shades: every colour mixed 35-55% with white or black      |
| `texture`     | near  | vision      | CV-VQA              | striped / checkered / dotted fills instead of flat colour  |
| `rephrase`    | near  | question    | VQA-Rephrasings     | new wordings of every question type                        |
| `answer`      | near  | answer      | VQA-CP v2           | skewed answer priors per question type                     |
| `multimodal`  | near  | multi-modal | VQA-CE              | a distractor object, questions that name their target      |
| `adversarial` | near  | adversarial | AdVQA               | ID scenes, APGD-perturbed against the evaluated model *    |
| `shapes`      | far   | concept     | OK-VQA              | new shapes (star, hexagon, pentagon, cross, heart)         |
| `background`  | far   | vision      | VizWiz              | dark, saturated, gradient or noisy backgrounds             |
| `text`        | far   | text        | TextVQA             | a word written in the image: "what word is shown ...?"     |

(*) the perturbation needs a model, so it is applied by the eval task (`vqa: {perturb: ...}` in a suite), not here.

Every question keeps 10 VQAv2-style references; all words are in the tiny fixtures' vocabulary
(`vlmrobust.testing.vocab`), so the shifts are shifts of meaning, not unknown tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .shapes_vqa import COLOURS, SHAPES, ShapesVQA, draw_shape

NEW_SHAPES: tuple[str, ...] = ("star", "hexagon", "pentagon", "cross", "heart")
TEXT_WORDS: tuple[str, ...] = ("red", "blue", "green", "circle", "square", "star", "yes", "no")


def _polygon(cx: float, cy: float, r: float, k: int, start: float = -math.pi / 2, inner: float | None = None):
    pts = []
    for i in range(k * (2 if inner else 1)):
        rad = r if not inner or i % 2 == 0 else r * inner
        a = start + i * math.pi / (k if inner else k / 2)
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def draw_any_shape(draw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    """`draw_shape` plus the far-OOD shapes."""
    if shape in SHAPES:
        return draw_shape(draw, shape, cx, cy, r, fill)
    if shape == "star":
        draw.polygon(_polygon(cx, cy, r, 5, inner=0.45), fill=fill)
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, start=0.0), fill=fill)
    elif shape == "pentagon":
        draw.polygon(_polygon(cx, cy, r, 5), fill=fill)
    elif shape == "cross":
        w = r * 0.35
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
    elif shape == "heart":
        q = r * 0.5
        draw.ellipse([cx - r, cy - r * 0.8, cx, cy + q * 0.2], fill=fill)
        draw.ellipse([cx, cy - r * 0.8, cx + r, cy + q * 0.2], fill=fill)
        draw.polygon([(cx - r, cy - q * 0.2), (cx + r, cy - q * 0.2), (cx, cy + r)], fill=fill)
    else:
        raise ValueError(f"Unknown shape {shape!r}; known: {SHAPES + NEW_SHAPES}.")


class ColourShift(ShapesVQA):
    """Vision shift (IV-VQA analogue): each colour drawn as a lighter or darker shade of itself."""

    def _draw(self, img, draw, shape, cx, cy, r, colour, rng):
        base, t = COLOURS[colour], rng.uniform(0.35, 0.55)
        to = 255 if rng.random() < 0.5 else 0
        draw_shape(draw, shape, cx, cy, r, tuple(int(c + t * (to - c)) for c in base))


class TextureShift(ShapesVQA):
    """Vision shift (CV-VQA analogue): the shape filled with stripes, a checkerboard or dots of its colour."""

    def _draw(self, img, draw, shape, cx, cy, r, colour, rng):
        from PIL import Image, ImageDraw

        s = img.size[0]
        mask = Image.new("L", img.size, 0)
        draw_shape(ImageDraw.Draw(mask), shape, cx, cy, r, 255)
        tex = Image.new("RGB", img.size, (255, 255, 255))
        td, step, kind = ImageDraw.Draw(tex), max(2, s // 16), rng.choice(("stripes", "checker", "dots"))
        fill = COLOURS[colour]
        for y in range(0, s, step):
            for x in range(0, s, step):
                on = {"stripes": (x // step) % 2 == 0, "checker": ((x + y) // step) % 2 == 0,
                      "dots": (x // step) % 2 == 0 and (y // step) % 2 == 0}[kind]
                if on:
                    td.rectangle([x, y, x + step - 1, y + step - 1], fill=fill)
        img.paste(tex, (0, 0), mask)


class Rephrased(ShapesVQA):
    """Question shift (VQA-Rephrasings analogue): the same scenes asked in other words."""

    question_templates = {
        "colour": ("which colour does the object have?", "tell me the colour of the shape.",
                   "what is the color of this thing?"),
        "shape": ("what kind of shape is shown in the picture?", "the object is which shape?",
                  "tell me the shape of the object."),
        "count": ("what is the number of shapes in the picture?", "count the objects: how many?",
                  "how many things are shown?"),
        "yesno": ("does the image contain a {colour} {shape}?", "do you see a {colour} {shape} here?"),
        "position": ("where is the {shape}: left or right?", "which side is the {shape} on, left or right?"),
    }


class AnswerShift(ShapesVQA):
    """Answer-distribution shift (VQA-CP analogue): per question type a few answers dominate (ID: uniform)."""

    #: the dominant answers per type; other answers are kept with probability `keep_other`
    dominant = {"colour": {"purple", "orange"}, "shape": {"diamond"}, "count": {"4"}, "yesno": {"no"},
                "position": {"right"}}
    keep_other = 0.1

    def _make(self, idx, qtype, rng):
        while True:
            item = super()._make(idx, qtype, rng)
            if item["answer"] in self.dominant[qtype] or rng.random() < self.keep_other:
                return item


class MultiModalShift(ShapesVQA):
    """Multi-modal shift (VQA-CE analogue): a distractor object of another colour and shape in every scene, and
    questions that name their target, so neither the image alone nor the question alone gives the answer."""

    question_templates = {
        "colour": ("what colour is the {shape}?",), "shape": ("which shape is {colour}?",),
        "count": ("how many {colour} shapes are there?",), "yesno": ("is there a {colour} {shape}?",),
        "position": ("is the {colour} {shape} on the left or right?",),
    }

    def _make(self, idx, qtype, rng):
        from PIL import ImageDraw

        if qtype == "count":  # distractors of another colour
            return self._count(idx, rng)
        item = super()._make(idx, qtype, rng)
        s, (target_c, target_s) = self.image_size, self._target
        named = item["question"].split()  # a yes/no question may name another colour / shape: avoid both
        other_c = rng.choice([c for c in self.colours if c != target_c and c not in named])
        other_s = rng.choice([x for x in self.shapes if x != target_s and x + "?" not in named])
        # the distractor in a corner, on the other side from a position question's target
        cx = s * (0.85 if item["answer"] == "left" else 0.15) if qtype == "position" else s * rng.choice((0.12, 0.88))
        draw_shape(ImageDraw.Draw(item["image"]), other_s, cx, s * rng.choice((0.14, 0.86)), s * 0.1,
                   COLOURS[other_c])
        if qtype != "yesno":
            item["question"] = rng.choice(self.question_templates[qtype]).format(colour=target_c, shape=target_s)
        return item

    def _draw(self, img, draw, shape, cx, cy, r, colour, rng):
        self._target = (colour, shape)
        draw_shape(draw, shape, cx, cy, r, COLOURS[colour])

    def _count(self, idx, rng):
        s = self.image_size
        img, draw = self._canvas(rng)
        colour, other = rng.sample(self.colours, 2)
        shape = rng.choice(self.shapes)
        k = rng.randint(1, 3)
        cells = rng.sample([(0, 0), (0, 1), (1, 0), (1, 1)], k + 1)
        for j, (gy, gx) in enumerate(cells):
            draw_shape(draw, shape, (gx + 0.5) * s / 2, (gy + 0.5) * s / 2, s * 0.14,
                       COLOURS[colour if j < k else other])
        answer = str(k)
        return {"image": img, "question": self.question_templates["count"][0].format(colour=colour),
                "answers": self._references(answer, "count", rng), "answer": answer, "question_type": "count",
                "question_id": idx}


class NewShapes(ShapesVQA):
    """Far OOD (concept shift): shapes never seen in training, asked about by name."""

    def __init__(self, n: int = 512, **kwargs):
        kwargs.setdefault("shapes", NEW_SHAPES)
        super().__init__(n, **kwargs)

    def _draw(self, img, draw, shape, cx, cy, r, colour, rng):
        draw_any_shape(draw, shape, cx, cy, r, COLOURS[colour])


class NewBackgrounds(ShapesVQA):
    """Far OOD (vision): dark, saturated, gradient or noisy backgrounds instead of light grey."""

    def _canvas(self, rng):
        from PIL import Image, ImageDraw

        s, kind = self.image_size, rng.choice(("dark", "saturated", "gradient", "noise"))
        if kind == "dark":
            v = rng.randint(0, 50)
            img = Image.new("RGB", (s, s), (v, v, v))
        elif kind == "saturated":
            img = Image.new("RGB", (s, s), tuple(rng.choice((0, 90, 180)) for _ in range(3)))
        elif kind == "gradient":
            img = Image.new("RGB", (s, s))
            a, b = [tuple(rng.randint(0, 255) for _ in range(3)) for _ in range(2)]
            d = ImageDraw.Draw(img)
            for y in range(s):
                t = y / max(s - 1, 1)
                d.line([(0, y), (s, y)], fill=tuple(int(p + t * (q - p)) for p, q in zip(a, b)))
        else:
            img = Image.frombytes("RGB", (s, s), bytes(rng.randint(0, 255) for _ in range(3 * s * s)))
        return img, ImageDraw.Draw(img)


class TextInImage(ShapesVQA):
    """Far OOD (TextVQA analogue): a word written in the image; the question asks what it says."""

    QUESTIONS = ("what word is shown in the image?", "what is the word in the picture?")

    def __init__(self, n: int = 512, **kwargs):
        kwargs["question_types"] = ("colour",)  # the generator's cycle; every item is re-made as a text question
        super().__init__(n, **kwargs)

    def _make(self, idx, qtype, rng):
        from PIL import ImageFont

        img, draw = self._canvas(rng)
        s, word = self.image_size, rng.choice(TEXT_WORDS)
        font = ImageFont.load_default(size=max(8, s // 4))
        w = draw.textlength(word, font=font)
        draw.text(((s - w) / 2, s * rng.uniform(0.3, 0.5)), word, fill=(0, 0, 0), font=font)
        return {"image": img, "question": rng.choice(self.QUESTIONS), "answers": [word] * 10, "answer": word,
                "question_type": "text", "question_id": idx}

    def candidates_for(self, qtype):
        return list(TEXT_WORDS) if qtype == "text" else super().candidates_for(qtype)


#: variant -> (generator class, level, shift type); `adversarial` is `id` scenes perturbed by the eval task
MINI_FRAMES_VARIANTS: dict[str, tuple[Callable[..., ShapesVQA], str, str]] = {
    "id": (ShapesVQA, "id", "none"),
    "colour": (ColourShift, "near", "vision"),
    "texture": (TextureShift, "near", "vision"),
    "rephrase": (Rephrased, "near", "question"),
    "answer": (AnswerShift, "near", "answer"),
    "multimodal": (MultiModalShift, "near", "multi-modal"),
    "adversarial": (ShapesVQA, "near", "adversarial"),
    "shapes": (NewShapes, "far", "concept"),
    "background": (NewBackgrounds, "far", "vision"),
    "text": (TextInImage, "far", "text"),
}


def mini_frames(variant: str, n: int, *, seed: int = 0, image_size: int = 64, transform=None) -> ShapesVQA:
    """The `n` questions of one mini-FRAMES variant (see the table above), deterministic given `seed`."""
    if variant not in MINI_FRAMES_VARIANTS:
        raise ValueError(f"unknown mini-FRAMES variant {variant!r}; variants: {', '.join(MINI_FRAMES_VARIANTS)}.")
    cls = MINI_FRAMES_VARIANTS[variant][0]
    # each variant draws from its own stream, so two variants never share scenes
    offset = 0 if variant in ("id", "adversarial") else 1 + list(MINI_FRAMES_VARIANTS).index(variant)
    return cls(n, image_size=image_size, seed=seed + 1_000 * offset, transform=transform)


__all__ = ["MINI_FRAMES_VARIANTS", "NEW_SHAPES", "TEXT_WORDS", "draw_any_shape", "mini_frames"]
