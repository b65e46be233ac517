"""`hf:<id>`, a bare Hub dataset id, or a `save_to_disk` folder: data read by Hugging Face `datasets`.

Every `source:` string that names no registered source ends up here, so `uoft-cs/cifar10`, `imagenet-1k` and
`hf:HuggingFaceM4/VQAv2` all load through `datasets.load_dataset` (from the local cache when offline).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .base import DATA_SOURCES, LoadRequest, register_source, source_forms, subset_indices
from .labelled import ClassificationSource, ref_file_of_repo

if TYPE_CHECKING:
    import datasets


class HubSource(ClassificationSource):
    """A Hub dataset (by id, with the split and optional `data_dir` sub-folder of `datasets.load_dataset`), or a
    folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`.

    Serves classification (image + label columns), VQA (`image`, `question`, an answers column named by the
    `answers_field` option; see [`HFVQADataset`]) and captions (`image` + `captions`; see [`HFCaptionDataset`]).
    """

    name = "hf"
    syntax = ("hf:<Hub dataset id>", "<Hub dataset id>", "<save_to_disk folder>")
    tasks = ("classification", "vqa", "caption")
    description = "a Hugging Face Hub dataset (online or cached), or a datasets save_to_disk folder"
    expects = ("To use it without network: where there is network, load it once with the same HF_HOME "
               "(`python -c \"import datasets; datasets.load_dataset('<id>')\"`) and then run with "
               "HF_DATASETS_OFFLINE=1; or download it beforehand with `huggingface-cli download --repo-type dataset "
               "<id> --local-dir <dir>` (`hf download` in newer clients) and point source at the local copy: "
               "'parquet:<dir>' or 'imagefolder:<dir>'")
    located = True

    def dataset_id(self, request: LoadRequest) -> str:
        return request.location or request.source

    def rows(self, request: LoadRequest) -> datasets.Dataset:
        import datasets
        from huggingface_hub.errors import HfHubHTTPError

        dataset_id, split = self.dataset_id(request), request.split
        local = Path(os.path.expanduser(dataset_id))
        if (local / "dataset_info.json").is_file() or (local / "dataset_dict.json").is_file():
            if request.data_dir is not None:
                raise ValueError(f"{dataset_id!r} is a save_to_disk folder; drop data_dir={request.data_dir!r}.")
            loaded = datasets.load_from_disk(str(local))
            if not isinstance(loaded, datasets.DatasetDict):
                return loaded
            if split not in loaded:
                raise ValueError(f"{dataset_id} has splits {sorted(loaded)}, not {split!r}; pass split= one of them.")
            return loaded[split]
        try:
            return datasets.load_dataset(dataset_id, split=split, data_dir=request.data_dir)
        except (ConnectionError, FileNotFoundError, HfHubHTTPError) as err:
            raise RuntimeError(
                f"Could not load the Hub dataset {dataset_id!r} (split={split!r}): {type(err).__name__}: {err}. "
                + self.expects.replace("<id>", dataset_id) + "." + self._not_a_hub_id(dataset_id, request.task)
            ) from err

    @staticmethod
    def _not_a_hub_id(dataset_id: str, task: str) -> str:
        if "/" in dataset_id:
            return ""
        close = difflib.get_close_matches(dataset_id, DATA_SOURCES.names(), n=1)
        hint = f" Did you mean the registered source {close[0]!r}?" if close else ""
        return f"{hint} Names that are not registered sources are read as Hub ids; {task} sources: " \
               f"{source_forms(task)}."

    def load(self, request: LoadRequest):
        if request.task == "classification":
            return super().load(request)
        from ..vqa import HFCaptionDataset, HFVQADataset

        rows = self.rows(request)
        if request.task == "vqa":
            ds = HFVQADataset(rows, answers_field=request.option("answers_field", "answers"))
        else:
            kw = {k: request.options[k] for k in ("captions_field", "image_field", "prompt")
                  if request.options.get(k) is not None}
            ds = HFCaptionDataset(rows, **kw)
        idx = subset_indices(len(ds), request.n_samples, request.seed)
        return torch.utils.data.Subset(ds, idx) if len(idx) < len(ds) else ds

    def read_ref_file(self, request: LoadRequest, filename: str) -> list[str]:
        return ref_file_of_repo(self.dataset_id(request), filename)


register_source(HubSource())
