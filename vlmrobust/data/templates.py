"""Prompt templates for zero-shot classification with CLIP-style models.

Templates are format strings with one ``{}`` slot for the class name. Look them up by name with
[`get_templates`]; `TEMPLATES` is the plain name -> templates mapping (users pass their own lists rather than
registering new names).
"""

from __future__ import annotations

# The 80 prompts of the CLIP ImageNet zero-shot evaluation (arXiv:2103.00020), in the order of OpenAI's notebook
# and open_clip's `OPENAI_IMAGENET_TEMPLATES`, so accuracies match published numbers.
OPENAI_IMAGENET_TEMPLATES: list[str] = [
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
]

# TeCoA (arXiv:2212.07016) trains and evaluates with this single prompt.
SIMPLE_TEMPLATES: list[str] = ["This is a photo of a {}"]

# Written for `DIGIT_CLASSNAMES` ("zero" ... "nine").
DIGITS_TEMPLATES: list[str] = [
    "a photo of the digit {}.",
    "a handwritten digit {}.",
    "a photo of the number {}.",
    "a blurry photo of the digit {}.",
    "a low resolution photo of the number {}.",
    "a black and white photo of the digit {}.",
    "the handwritten number {}.",
    "a scan of the digit {}.",
]

TEMPLATES: dict[str, list[str]] = {
    "openai_imagenet": OPENAI_IMAGENET_TEMPLATES,
    "simple": SIMPLE_TEMPLATES,
    "digits": DIGITS_TEMPLATES,
}


def get_templates(name: str) -> list[str]:
    """Return a fresh copy of the templates called `name`.

    Args:
        name (`str`): one of `"openai_imagenet"` (80 CLIP prompts), `"simple"` (TeCoA's single prompt) or
            `"digits"` (prompts for the builtin handwritten digits).

    Returns:
        `list[str]`: format strings with one `{}` slot for the class name.
    """
    if name not in TEMPLATES:
        raise KeyError(
            f"Unknown template set {name!r}. Known: {', '.join(sorted(TEMPLATES))}; "
            "or pass your own list of format strings with one '{}' slot."
        )
    return list(TEMPLATES[name])
