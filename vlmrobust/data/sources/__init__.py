"""Where data comes from: the `source:` strings of eval suites and the `--dataset_name` of recipes, one registry.

Every source is a [`DataSource`] registered by name in `DATA_SOURCES` from its own module:

| source                                                                         | tasks           | module        |
|--------------------------------------------------------------------------------|-----------------|---------------|
| `digits`                                                                       | classification  | `digits`      |
| `parquet:<file, glob or dir>` (or `parquet` + `data_dir`)                      | classification  | `parquet`     |
| `imagefolder:<dir>` (or `imagefolder` + `data_dir`)                            | classification  | `imagefolder` |
| `webdataset:<Hub id or dir>`                                                   | classification  | `webdataset`  |
| `hf:<Hub dataset id>`, a bare Hub id, or a `save_to_disk` folder               | all three       | `hub`         |
| `shapes-vqa` (generated, offline; formerly the LVLM recipe's `shapes`)         | vqa             | `shapes`      |
| `shapes-caption` (generated, offline)                                          | caption         | `shapes`      |
| `vqa-json:<questions.json>,<annotations.json>,<image dir>` (or the suite keys) | vqa             | `json_files`  |
| `coco-json:<captions.json>,<image dir>` (or the suite keys)                    | caption         | `json_files`  |

`vlmrobust info` lists what is registered. To add a source: a module with a `DataSource` subclass (`name`, `syntax`,
`tasks`, `expects`, `load`) ending in `register_source(MySource())`, imported below.
"""

# Each of these modules registers its source(s) when imported.
from . import digits, hub, imagefolder, json_files, parquet, shapes, webdataset  # noqa: F401
from .base import (
    DATA_SOURCES,
    TASKS,
    DatasetUnavailable,
    DataSource,
    LoadRequest,
    describe_sources,
    register_source,
    resolve_source,
    source_forms,
    sources_for,
    subset_indices,
)
from .loading import load_classification_dataset, load_source, load_train_eval
from .suite import load_caption_dataset, load_suite_dataset, load_vqa_dataset, resolve_classnames, resolve_templates

__all__ = [
    "DATA_SOURCES",
    "TASKS",
    "DataSource",
    "DatasetUnavailable",
    "LoadRequest",
    "describe_sources",
    "load_caption_dataset",
    "load_classification_dataset",
    "load_source",
    "load_suite_dataset",
    "load_train_eval",
    "load_vqa_dataset",
    "register_source",
    "resolve_classnames",
    "resolve_source",
    "resolve_templates",
    "source_forms",
    "sources_for",
    "subset_indices",
]
