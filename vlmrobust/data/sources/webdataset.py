"""`webdataset:<Hub id or dir>`: WebDataset shards `<split>/*.tar` (e.g. clip-benchmark's `wds_*` repositories)."""

from __future__ import annotations

import glob
import os
from typing import TYPE_CHECKING

from .base import LoadRequest, register_source
from .labelled import ClassificationSource, ref_file_of_repo

if TYPE_CHECKING:
    import datasets


class WebDatasetSource(ClassificationSource):
    """WebDataset shards from a local folder or a Hub dataset repository, one image file and one label per sample.

    The builder is named explicitly: repositories such as clip-benchmark/wds_* also hold .txt files (classnames.txt,
    nshards.txt) that can outnumber the shards and make `datasets` guess a text dataset.
    """

    name = "webdataset"
    syntax = ("webdataset:<Hub id or dir>",)
    description = "WebDataset shards <split>/*.tar, local or on the Hub (clip-benchmark/wds_*)"
    expects = ("webdataset:<Hub id or dir> expects WebDataset shards <split>/*.tar (e.g. the clip-benchmark/wds_* "
               "repositories: test/0.tar, ... with one image file and one .cls label per sample)")
    located = True

    def _location(self, request: LoadRequest) -> str:
        if not request.location:
            raise ValueError(f"{request.source!r} names no location; use 'webdataset:<Hub id or dir>'.")
        if request.data_dir is not None:
            raise ValueError(f"{request.source!r} already names its path; drop data_dir={request.data_dir!r}.")
        return request.location

    def rows(self, request: LoadRequest) -> datasets.Dataset:
        import datasets

        location, split = self._location(request), request.split
        source = f"webdataset:{location}"
        if os.path.isdir(location):
            files = sorted(glob.glob(os.path.join(location, split, "*.tar")))
            if not files:
                raise self.missing(f"{source}: no {split}/*.tar under {location!r}")
            return datasets.load_dataset("webdataset", data_files={split: files}, split=split)
        pattern = f"hf://datasets/{location}/{split}/*.tar"
        try:
            return datasets.load_dataset("webdataset", data_files={split: pattern}, split=split)
        except Exception as err:  # offline, gated or absent: one message that names the fix, the cause kept
            raise RuntimeError(
                f"Could not load {source} (split={split!r}, shards {pattern}): {type(err).__name__}: {err}. "
                f"Download it where there is network: `huggingface-cli download --repo-type dataset {location} "
                f"--local-dir <dir>`, then use source 'webdataset:<dir>'. {self.expects}."
            ) from err

    def read_ref_file(self, request: LoadRequest, filename: str) -> list[str]:
        return ref_file_of_repo(self._location(request), filename)


register_source(WebDatasetSource())
