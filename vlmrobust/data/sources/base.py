"""The data-source registry: one object per family of `source:` strings, shared by eval suites and recipes.

A suite's `source: parquet:data/test-*.parquet` and a recipe's `--dataset_name parquet:data/test-*.parquet` resolve
through [`resolve_source`] to the same [`DataSource`], which loads a split at the model's resolution with a seeded
subset and says, when the data is missing, which files it expected and where to get them.

Adding a source is one module with a `DataSource` subclass and one `register_source(MySource())` line (imported from
`vlmrobust/data/sources/__init__.py`).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ...registry import Registry

#: the tasks a source can serve
TASKS: tuple[str, ...] = ("classification", "vqa", "caption")


class DatasetUnavailable(RuntimeError):
    """A suite dataset cannot be loaded; the message says what to download and where to put it."""


def subset_indices(n: int, k: int | None, seed: int) -> list[int]:
    """A seeded subset of `range(n)` of size `k` (all of it when `k` is None or >= n), sorted.

    The subset of VQA and captioning sources (and of the suite runner's corruption / margin subsets); classification
    sources keep their own NumPy-seeded subset (`data.classification`), so that the digits numbers stay the same.
    """
    if k is None or k >= n:
        return list(range(n))
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:k].sort().values.tolist()


@dataclass(frozen=True)
class LoadRequest:
    """What to load from a source: one split, at one model's resolution, as a seeded subset.

    Args:
        source (`str`): the source string as written in the suite or recipe, e.g. `"parquet:data/test-*.parquet"`.
        task (`str`, defaults to `"classification"`): `"classification"`, `"vqa"` or `"caption"`.
        split (`str`, defaults to `"test"`): the split; sources with a single split (local files named one by one,
            JSON files, generators) ignore it.
        n_samples (`int`, *optional*): keep a seeded subset of this many items (all of them when `None`).
        seed (`int`, defaults to 0): seed of the subset, and of generated sources.
        image_size (`int`, defaults to 224): the model's input side.
        transform (`Callable`, *optional*): PIL image -> `[3, H, W]` in [0, 1]; always used when given.
        preprocess (`Callable`, *optional*): the model's preprocessing; used by sources that need one (the digits
            serve their exact pixels at `image_size` instead of resampling 8x8 scans).
        data_dir (`str`, *optional*): the local folder of bare `imagefolder` / `parquet`, the root of `vqa-json` /
            `coco-json` file names, or the sub-folder of a Hub dataset repository.
        options (`Mapping[str, Any]`): the family's own keys, `None` values meaning "the default": `image_column`,
            `label_column`, `classnames`, `templates` (classification); `questions_file`, `annotations_file`,
            `image_dir`, `image_pattern`, `answers_field` (VQA); `prompt`, `captions_field`, `image_field` (captions);
            `render_size` (the generated shapes' side).
    """

    source: str
    task: str = "classification"
    split: str = "test"
    n_samples: int | None = None
    seed: int = 0
    image_size: int = 224
    transform: Callable | None = None
    preprocess: Callable | None = None
    data_dir: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def location(self) -> str:
        """What follows `<name>:` in the source string (`""` for a bare name), with `~` expanded."""
        _, sep, rest = self.source.partition(":")
        return os.path.expanduser(rest) if sep else ""

    def option(self, key: str, default: Any = None) -> Any:
        value = self.options.get(key)
        return default if value is None else value


class DataSource:
    """A family of `source:` strings: how to recognise them, load a split of them, and explain what is missing.

    Subclasses set the class attributes and implement [`DataSource.load`]; register one instance with
    [`register_source`].

    Attributes:
        name (`str`): the registry name; also the `<name>:` prefix of located forms and the bare form.
        syntax (`tuple[str, ...]`): the `source:` forms accepted, as shown to users (`"parquet:<file, glob or dir>"`).
        tasks (`tuple[str, ...]`): the tasks it serves, from `TASKS`.
        description (`str`): one line for `vlmrobust info`.
        expects (`str`): the files it expects and where to get them; said whenever they are missing.
        located (`bool`): it accepts `<name>:<location>`.
        former_names (`tuple[str, ...]`): old spellings, refused with a message naming `name`.
    """

    name: ClassVar[str] = ""
    syntax: ClassVar[tuple[str, ...]] = ()
    tasks: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    expects: ClassVar[str] = ""
    located: ClassVar[bool] = False
    former_names: ClassVar[tuple[str, ...]] = ()

    def load(self, request: LoadRequest) -> torch.utils.data.Dataset:
        """The split, subset and resolution of `request` (items as the task's evaluators and trainers expect).

        Raises:
            `FileNotFoundError`: local files are missing; the message says what is expected and where to get it.
            `RuntimeError`: a remote dataset cannot be reached.
            `ValueError`: the request does not fit the data (no such split, column or class names).
        """
        raise NotImplementedError

    def load_train_eval(self, train: LoadRequest, evaluation: LoadRequest):
        """A recipe's `(train, eval)` pair; by default each request's own split and seeded subset."""
        return self.load(train), self.load(evaluation)

    def read_ref_file(self, request: LoadRequest, filename: str) -> list[str]:
        """Non-empty lines of a file shipped with the data (clip-benchmark's `classnames.txt`, templates)."""
        raise FileNotFoundError(f"source {self.name!r} ships no reference files such as {filename!r}; give the class "
                                "names / templates as a list instead.")

    def missing(self, what: str) -> FileNotFoundError:
        """The error for missing data: `what` is missing, followed by what the source expects."""
        return FileNotFoundError(f"{what}. {self.expects.rstrip('.')}.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, tasks={self.tasks})"


#: every data source, by name; see `register_source`
DATA_SOURCES: Registry[DataSource] = Registry("data source")
#: the source of strings that name no registered source: a Hub dataset id or a `save_to_disk` folder
HUB_SOURCE = "hf"


def register_source(source: DataSource) -> DataSource:
    """Register `source` under `source.name` (a duplicate name fails); returns it."""
    bad = [t for t in source.tasks if t not in TASKS]
    if not source.name or not source.tasks or bad:
        raise ValueError(f"{type(source).__name__}: a data source needs a name and tasks from {TASKS}, got "
                         f"name={source.name!r}, tasks={source.tasks!r}.")
    return DATA_SOURCES.register(source.name, source)


def sources_for(task: str | None = None) -> list[DataSource]:
    """The registered sources, by name (those serving `task` when given)."""
    return [s for s in map(DATA_SOURCES.get, DATA_SOURCES.names()) if task is None or task in s.tasks]


def source_forms(task: str | None = None) -> str:
    """`"digits | parquet:<file, glob or dir> | ..."`: the accepted forms, for messages and help texts."""
    return " | ".join(form for s in sources_for(task) for form in s.syntax)


def resolve_source(source: str, task: str | None = None) -> DataSource:
    """The registered source of a `source:` string, checked against `task` when given.

    `<name>:<location>` picks the source `name`; a bare registered name picks it; anything else is a Hub dataset id
    or a `save_to_disk` folder (source `hf`).

    Raises:
        `ValueError`: the name is a former spelling, the prefix is not registered, or the source does not serve
            `task`; the message lists what is registered.
    """
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"empty data source; use one of: {source_forms(task)}.")
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}.")
    for s in sources_for():
        if source in s.former_names:
            raise ValueError(f"data source {source!r} is now called {s.name!r} (one name for recipes and suites): "
                             f"write {s.name!r} instead.")
    prefix, sep, _ = source.partition(":")
    if sep:
        if prefix not in DATA_SOURCES:
            close = difflib.get_close_matches(prefix, DATA_SOURCES.names(), n=1)
            hint = f" (did you mean '{close[0]}:'?)" if close else ""
            raise ValueError(f"unknown data source prefix {prefix + ':'!r} in {source!r}{hint}; "
                             f"{task or 'registered'} sources: {source_forms(task)}.")
        found = DATA_SOURCES.get(prefix)
        if not found.located:
            raise ValueError(f"data source {prefix!r} takes no location ({source!r}); write it as "
                             f"{' or '.join(found.syntax)}.")
    else:
        found = DATA_SOURCES.get(source if source in DATA_SOURCES else HUB_SOURCE)
    if task is not None and task not in found.tasks:
        raise ValueError(f"data source {source!r} ({found.name}) serves {' / '.join(found.tasks)}, not {task}; "
                         f"{task} sources: {source_forms(task)}.")
    return found


def describe_sources() -> list[str]:
    """One line per registered source: name, tasks, accepted forms (for `vlmrobust info`)."""
    return [f"{s.name:<15} {'/'.join(s.tasks):<28} {' | '.join(s.syntax)}" for s in sources_for()]
