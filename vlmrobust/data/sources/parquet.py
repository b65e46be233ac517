"""`parquet:<file, glob or dir>`: local Parquet files (e.g. a downloaded Hub dataset's `data/test-*.parquet`)."""

from __future__ import annotations

import glob
import os
from typing import TYPE_CHECKING

from .base import LoadRequest, register_source
from .labelled import ClassificationSource, is_unsplit, local_path, pick_split, ref_file_next_to

if TYPE_CHECKING:
    import datasets


class ParquetSource(ClassificationSource):
    """Parquet files with an image column and a label column. Files named one by one (a file or a glob) are the
    requested split, whatever its name; a folder's files are split by their names (`<split>-*.parquet`)."""

    name = "parquet"
    syntax = ("parquet:<file, glob or dir>", "parquet + data_dir")
    description = "local Parquet files (a file, a glob, or a folder of <split>-*.parquet)"
    expects = ("parquet:<path> expects a .parquet file, a glob such as data/test-*.parquet, or a folder of them "
               "(named <split>-*.parquet to hold several splits), with an image column and a label column")
    located = True

    def rows(self, request: LoadRequest) -> datasets.Dataset:
        import datasets

        path = local_path(self, request)
        source = f"parquet:{path}"
        if os.path.isdir(path):
            if not glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True):
                raise self.missing(f"{source}: folder {path!r} holds no .parquet file")
            loaded = datasets.load_dataset("parquet", data_dir=path)
            return pick_split(loaded, request.split, source, unsplit=is_unsplit(path))
        files = sorted(glob.glob(path))
        if not files:
            raise self.missing(f"{source}: no file matches {path!r}")
        # Files named explicitly are the split the caller asked for.
        return datasets.load_dataset("parquet", data_files=files, split="train")

    def read_ref_file(self, request: LoadRequest, filename: str) -> list[str]:
        return ref_file_next_to(local_path(self, request), filename)


register_source(ParquetSource())
