"""The eval suites' entry points: a suite's dataset spec -> a [`LoadRequest`] -> its registered source.

Each loader takes a dataset spec (the suite's parsed dataset entry: `name`, `source`, `split`, `n_samples`, `seed`,
`data_dir`, `image_column`, `label_column`, `classnames`, `templates`, `download`, `vqa`, `caption`) and the model
whose preprocessing and resolution the images need, and raises `DatasetUnavailable` naming the dataset, the reason
and the suite's download hint.
"""

from __future__ import annotations

from typing import Any

from .base import DatasetUnavailable, LoadRequest, resolve_source

#: what a source may raise when its data cannot be had (anything else is a bug and propagates)
_UNAVAILABLE = (RuntimeError, FileNotFoundError, OSError, ValueError, ImportError, KeyError)


def _request(spec: Any, model, task: str, **options: Any) -> LoadRequest:
    return LoadRequest(source=spec.source, task=task, split=spec.split, n_samples=spec.n_samples, seed=spec.seed,
                       image_size=getattr(model, "image_size", 224), preprocess=model.preprocess,
                       data_dir=spec.data_dir, options={k: v for k, v in options.items() if v is not None})


def _unavailable(spec: Any, kind: str, err: Exception) -> DatasetUnavailable:
    hint = f" To get it: {spec.download}" if spec.download else ""
    return DatasetUnavailable(f"dataset '{spec.name}' ({kind}source {spec.source!r}, split {spec.split!r}) could not "
                              f"be loaded: {type(err).__name__}: {err}.{hint}")


def _read_ref_file(spec: Any, filename: str) -> list[str]:
    """Lines of `filename` from the dataset's local folder or Hub repository (e.g. clip-benchmark's classnames.txt)."""
    request = LoadRequest(source=spec.source, data_dir=spec.data_dir)
    return resolve_source(spec.source).read_ref_file(request, filename)


def resolve_classnames(spec: Any) -> list[str] | None:
    """The spec's class names: a list, `{builtin: imagenet}` (OpenAI's curated names) or `{file: <name>}` (a file
    shipped with the data); `None` means the dataset's own."""
    value = spec.classnames
    if value is None or isinstance(value, list):
        return value
    if isinstance(value, dict) and "builtin" in value:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        return list(IMAGENET_CLASSNAMES)
    if isinstance(value, dict) and "file" in value:
        return _read_ref_file(spec, value["file"])
    raise ValueError(f"dataset '{spec.name}': classnames {value!r} is not a list or a reference.")


def resolve_templates(spec: Any) -> str | list[str]:
    """The spec's templates: a set name, a list (`{c}` slots accepted), or `{file: <name>}` shipped with the data."""
    value = spec.templates
    if isinstance(value, dict) and "file" in value:
        value = _read_ref_file(spec, value["file"])
    if isinstance(value, list):
        return [t.replace("{c}", "{}") for t in value]
    return value


def load_suite_dataset(spec: Any, model) -> Any:
    """The evaluated images of a classification `spec` at `model`'s resolution (a seeded `n_samples` subset), with
    class names and templates attached.

    Raises:
        DatasetUnavailable: naming the dataset, the reason, and the suite's download hint.
    """
    try:
        request = _request(spec, model, "classification", image_column=spec.image_column,
                           label_column=spec.label_column, classnames=resolve_classnames(spec),
                           templates=resolve_templates(spec))
        return resolve_source(spec.source, "classification").load(request)
    except _UNAVAILABLE as err:
        raise _unavailable(spec, "", err) from err


def load_vqa_dataset(spec: Any, model) -> Any:
    """The questions of a `task: vqa` dataset (the seeded `n_samples`), images preprocessed lazily (generated
    sources: once, at load).

    Raises:
        DatasetUnavailable: naming the dataset, the reason, and the suite's download hint.
    """
    if not (hasattr(model, "rank_answers") and hasattr(model, "answer_loss")):
        raise DatasetUnavailable(
            f"dataset '{spec.name}' is a VQA dataset (task: vqa) but model {type(model).__name__} cannot answer "
            "questions (it is not an LVLM such as llava:… / qwen_vl:…); run it on an LVLM, or --skip-missing.")
    vs = spec.vqa
    try:
        request = _request(spec, model, "vqa", questions_file=vs.questions_file,
                           annotations_file=vs.annotations_file, image_dir=vs.image_dir,
                           image_pattern=vs.image_pattern, answers_field=vs.answers_field, render_size=vs.image_size)
        return resolve_source(spec.source, "vqa").load(request)
    except _UNAVAILABLE as err:
        raise _unavailable(spec, "VQA ", err) from err


def load_caption_dataset(spec: Any, model) -> Any:
    """The images of a `task: caption` dataset (the seeded `n_samples`: CIDEr's fixed subset).

    Raises:
        DatasetUnavailable: naming the dataset, the reason, and the suite's download hint.
    """
    if not (hasattr(model, "generate") and hasattr(model, "answer_loss")):
        raise DatasetUnavailable(
            f"dataset '{spec.name}' is a captioning dataset (task: caption) but model {type(model).__name__} cannot "
            "generate captions (it is not an LVLM such as llava:… / qwen_vl:…); run it on an LVLM, or "
            "--skip-missing.")
    cs = spec.caption
    try:
        request = _request(spec, model, "caption", annotations_file=cs.annotations_file, image_dir=cs.image_dir,
                           prompt=cs.prompt, render_size=cs.image_size)
        return resolve_source(spec.source, "caption").load(request)
    except _UNAVAILABLE as err:
        raise _unavailable(spec, "captioning ", err) from err
