"""Unreadable images in a classification dataset of a suite (`bad_images: fail | skip`): the field's check, the
subset without them, and what each cell records about them."""

from __future__ import annotations

import logging
from typing import Any

from ..schema import Ctx

logger = logging.getLogger(__name__)

#: what an unreadable image in the evaluated subset does
BAD_IMAGES_MODES = ("fail", "skip")
_MEANING = ("'fail' (an unreadable image stops the evaluation, naming its file) or 'skip' (unreadable images are "
            "left out before any cell, counted in every cell, and n is the rest)")


def check_bad_images(value: Any) -> str:
    """`value` if it is a `BAD_IMAGES_MODES` entry, else a `ValueError` saying what each one does."""
    if value not in BAD_IMAGES_MODES:
        raise ValueError(f"bad_images must be {_MEANING}, got {value!r}.")
    return value


def parse_bad_images(ctx: Ctx, value: Any, where: str) -> str:
    """The suite file's `bad_images` field, a `SuiteError` naming its place if it is not a mode."""
    if value not in BAD_IMAGES_MODES:
        raise ctx.fail(where, f"must be {_MEANING}, got {value!r}.")
    return value


def drop_unreadable(name: str, data):
    """`data` without its unreadable images (decoded once, before any cell), logged with the first files."""
    if not hasattr(data, "without_unreadable"):
        return data
    data = data.without_unreadable()
    if data.skipped_images:
        logger.warning("%s: %d unreadable image(s) left out (bad_images: skip), n = %d: %s", name,
                       len(data.skipped_images), len(data), "; ".join(data.skipped_images[:5]))
    return data


def skipped_record(run) -> dict:
    """`skipped_images` (how many unreadable images were left out) and the first files, under `bad_images: skip`."""
    if getattr(run.spec, "bad_images", "fail") != "skip":
        return {}
    names = list(getattr(run.data, "skipped_images", []))
    return {"skipped_images": len(names), "skipped_image_files": names[:5]}
