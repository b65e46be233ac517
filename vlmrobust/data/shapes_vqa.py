"""Shapes-VQA: an offline VQA set of rendered coloured shapes, for tests and quickstarts.

Questions ask for the colour or the shape of a single object, the number of objects (1-4), whether a named
coloured shape is present (yes / no), or whether the object is on the left or the right. Every answer is one word
from [`SHAPES_VQA_VOCAB`](../testing/vocab.py), and each question has 10 reference answers like VQAv2's (numbers are
given as digits by some "annotators" and as words by others, which the official normalisation merges; about one
question in five has one dissenting annotator).

Chance level is the majority-answer accuracy per question type ([`ShapesVQA.chance_accuracy`]).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

from torch.utils.data import Dataset

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 225), "yellow": (235, 210, 20),
    "purple": (140, 40, 170), "orange": (245, 130, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
QUESTION_TYPES: tuple[str, ...] = ("colour", "shape", "count", "yesno", "position")
_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
_TEMPLATES = {
    "colour": ("what colour is the shape?", "what color is the object?"),
    "shape": ("what shape is this?", "which shape is shown?"),
    "count": ("how many shapes are there?", "how many objects are in the image?"),
    "yesno": ("is there a {colour} {shape}?",),
    "position": ("is the {shape} on the left or right?",),
}


def draw_shape(draw, shape: str, cx: float, cy: float, r: float, fill: tuple[int, int, int]) -> None:
    """Draw one filled shape of half-size `r` centred at (cx, cy) on a `PIL.ImageDraw`."""
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:
        raise ValueError(f"Unknown shape {shape!r}; known: {SHAPES}.")


class ShapesVQA(Dataset):
    """Generated VQA over rendered shapes (deterministic given `seed`).

    Args:
        n (`int`, *optional*, defaults to 512): number of questions (one image each).
        image_size (`int`, *optional*, defaults to 64): rendered side in pixels (models resize it themselves).
        seed (`int`, *optional*, defaults to 0): generator seed (a private `random.Random`).
        question_types (`Sequence[str]`, *optional*): subset of `QUESTION_TYPES`, cycled in order.
        colours (`Sequence[str]`, *optional*): subset of `COLOURS`.
        shapes (`Sequence[str]`, *optional*): subset of `SHAPES`.
        transform (`Callable`, *optional*): PIL -> [0, 1] tensor (e.g. `model.preprocess`); when given, items also
            hold `pixel_values` (computed once, here).
    """

    def __init__(self, n: int = 512, *, image_size: int = 64, seed: int = 0,
                 question_types: Sequence[str] = QUESTION_TYPES, colours: Sequence[str] | None = None,
                 shapes: Sequence[str] | None = None, transform: Callable | None = None):
        unknown = set(question_types) - set(QUESTION_TYPES)
        if unknown:
            raise ValueError(f"Unknown question types {sorted(unknown)}; known: {QUESTION_TYPES}.")
        self.image_size = int(image_size)
        self.colours = tuple(colours or COLOURS)
        self.shapes = tuple(shapes or SHAPES)
        rng = random.Random(seed)
        self.items = [self._make(i, question_types[i % len(question_types)], rng) for i in range(n)]
        if transform is not None:
            for item in self.items:
                item["pixel_values"] = transform(item["image"])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    # -- generation -----------------------------------------------------------------------------------------------
    #: question templates per type (variants such as mini-FRAMES' rephrasings replace them)
    question_templates: dict[str, tuple[str, ...]] = _TEMPLATES

    def _canvas(self, rng: random.Random):
        from PIL import Image, ImageDraw

        grey = rng.randint(215, 255)
        img = Image.new("RGB", (self.image_size, self.image_size), (grey, grey, grey))
        return img, ImageDraw.Draw(img)

    def _draw(self, img, draw, shape: str, cx: float, cy: float, r: float, colour: str, rng: random.Random) -> None:
        """Draw one object (variants change its look: shades, textures, new shapes)."""
        draw_shape(draw, shape, cx, cy, r, COLOURS[colour])

    def _make(self, idx: int, qtype: str, rng: random.Random) -> dict:
        s = self.image_size
        colour, shape = rng.choice(self.colours), rng.choice(self.shapes)
        img, draw = self._canvas(rng)
        r = s * rng.uniform(0.16, 0.22)
        ask_c, ask_s = colour, shape  # what a yes/no question names
        if qtype == "count":
            k = rng.randint(1, 4)
            cells = rng.sample([(0, 0), (0, 1), (1, 0), (1, 1)], k)
            for gy, gx in cells:
                cx = (gx + 0.5) * s / 2 + rng.uniform(-0.05, 0.05) * s
                cy = (gy + 0.5) * s / 2 + rng.uniform(-0.05, 0.05) * s
                self._draw(img, draw, shape, cx, cy, s * 0.14, colour, rng)
            answer = str(k)
        else:
            side = rng.choice(("left", "right"))
            cx = s * (0.27 if side == "left" else 0.73) + rng.uniform(-0.04, 0.04) * s
            cy = s * rng.uniform(0.35, 0.65)
            if qtype != "position":
                cx = s * rng.uniform(0.3, 0.7)
            self._draw(img, draw, shape, cx, cy, r, colour, rng)
            if qtype == "colour":
                answer = colour
            elif qtype == "shape":
                answer = shape
            elif qtype == "position":
                answer = side
            else:
                ask_yes = rng.random() < 0.5
                if not ask_yes:  # change the colour, the shape or both
                    change = rng.choice(("colour", "shape", "both"))
                    if change in ("colour", "both"):
                        ask_c = rng.choice([c for c in self.colours if c != colour])
                    if change in ("shape", "both"):
                        ask_s = rng.choice([x for x in self.shapes if x != shape])
                answer = "yes" if ask_yes else "no"
        template = rng.choice(self.question_templates[qtype])
        question = template.format(colour=ask_c, shape=ask_s)
        return {"image": img, "question": question, "answers": self._references(answer, qtype, rng),
                "answer": answer, "question_type": qtype, "question_id": idx}

    def _references(self, answer: str, qtype: str, rng: random.Random) -> list[str]:
        refs = [answer] * 10
        if qtype == "count":
            word = _NUMBER_WORDS[int(answer)]
            refs = [word if rng.random() < 0.3 else answer for _ in range(10)]
        if rng.random() < 0.2:  # one annotator disagrees
            pool = self.candidates_for(qtype)
            refs[rng.randrange(10)] = rng.choice([a for a in pool if a != answer])
        return refs

    # -- answer sets and chance --------------------------------------------------------------------------------
    def candidates_for(self, qtype: str) -> list[str]:
        """Possible answers of one question type."""
        return {"colour": list(self.colours), "shape": list(self.shapes), "count": ["1", "2", "3", "4"],
                "yesno": ["yes", "no"], "position": ["left", "right"]}[qtype]

    def answer_candidates(self) -> list[str]:
        """Every answer of the dataset's question types (the closed answer set used to rank answers)."""
        types = dict.fromkeys(item["question_type"] for item in self.items)
        return [a for t in types for a in self.candidates_for(t)]

    def chance_accuracy(self) -> dict[str, float]:
        """Majority-answer accuracy per question type and overall (always answering each type's commonest answer)."""
        from ..metrics import vqa_accuracy

        by_type: dict[str, list[dict]] = defaultdict(list)
        for item in self.items:
            by_type[item["question_type"]].append(item)
        out, total = {}, 0.0
        for t, items in by_type.items():
            guess = Counter(it["answer"] for it in items).most_common(1)[0][0]
            accs = [vqa_accuracy(guess, it["answers"]) for it in items]
            out[t] = sum(accs) / len(accs)
            total += sum(accs)
        out["overall"] = total / max(len(self.items), 1)
        return out
