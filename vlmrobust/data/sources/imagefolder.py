"""`imagefolder:<dir>`: a local folder of class sub-folders (optionally under split folders), read by `datasets`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .base import LoadRequest, register_source
from .labelled import ClassificationSource, contains_file, is_unsplit, local_path, pick_split, ref_file_next_to

if TYPE_CHECKING:
    import datasets


class ImageFolderSource(ClassificationSource):
    """Class sub-folders of images; the class names are the sub-folder names (underscores read as spaces)."""

    name = "imagefolder"
    syntax = ("imagefolder:<dir>", "imagefolder + data_dir")
    description = "a local folder of class sub-folders, optionally under split folders"
    expects = ("imagefolder:<dir> expects <dir>/<split>/<class>/*.png or <dir>/<class>/*.png "
               "(class names come from the sub-folder names; any PIL-readable image format works)")
    located = True

    def rows(self, request: LoadRequest) -> datasets.Dataset:
        import datasets

        directory = local_path(self, request)
        source = f"imagefolder:{directory}"
        if not os.path.isdir(directory):
            raise self.missing(f"{source}: folder {directory!r} does not exist")
        if not contains_file(directory):
            raise self.missing(f"{source}: folder {directory!r} holds no files")
        loaded = datasets.load_dataset("imagefolder", data_dir=directory)
        return pick_split(loaded, request.split, source, unsplit=is_unsplit(directory))

    def read_ref_file(self, request: LoadRequest, filename: str) -> list[str]:
        return ref_file_next_to(local_path(self, request), filename)


register_source(ImageFolderSource())
