"""`create_model(name)`: one short dispatcher over registered backends."""

from __future__ import annotations

from collections.abc import Callable

from ..layout import detect_layout
from ..registry import Registry
from ..utils.hub_access import hub_download, needs_hub
from .base import VisionLanguageModel

#: prefix -> loader(spec: str, **kwargs) -> VisionLanguageModel. Later backends (`llava:`, `qwen_vl:`, `paligemma:`) register here.
BACKENDS: Registry[Callable[..., VisionLanguageModel]] = Registry("model backend")


@BACKENDS.register("open_clip")
def _open_clip(spec: str, **kw) -> VisionLanguageModel:
    from .open_clip_backend import load_open_clip

    arch, _, pretrained = spec.partition("/")
    if not arch:
        raise ValueError("'open_clip:' needs an architecture, e.g. 'open_clip:ViT-B-32/openai'.")
    return load_open_clip(arch, pretrained or None, **kw)


@BACKENDS.register("hf-hub")
def _hf_hub(spec: str, **kw) -> VisionLanguageModel:
    from .open_clip_backend import load_open_clip

    return load_open_clip(f"hf-hub:{spec}", **kw)


@BACKENDS.register("local-dir")
def _local_dir(spec: str, **kw) -> VisionLanguageModel:
    from pathlib import Path

    from .open_clip_backend import load_open_clip

    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"'local-dir:{spec}': folder not found. Give the path of a saved checkpoint.")
    layout = detect_layout(path)
    if layout == "radapt":
        raise ValueError(f"'{path}' is an R-Adapt folder (anchor + settings, no backbone weights): load it with "
                         f"'radapt:{spec}'.")
    if layout == "transformers":
        raise ValueError(f"'{path}' is in transformers' layout, not open_clip's: load it with 'hf-clip:{spec}'.")
    return load_open_clip(f"local-dir:{spec}", **kw)


@BACKENDS.register("hf-clip")
def _hf_clip(spec: str, **kw) -> VisionLanguageModel:
    from .hf_clip_backend import load_hf_clip

    return load_hf_clip(spec, **kw)


@BACKENDS.register("vlmrobust")
def _builtin(spec: str, **kw) -> VisionLanguageModel:
    from ..testing.stand_in import TINY_DIGITS_NAME, get_tiny_digits_clip
    from .open_clip_backend import load_open_clip

    if spec != TINY_DIGITS_NAME:
        raise ValueError(f"Unknown built-in model 'vlmrobust:{spec}'. Built-ins: 'vlmrobust:{TINY_DIGITS_NAME}'.")
    progress = kw.pop("progress", True)
    path = get_tiny_digits_clip(progress=progress)
    model = load_open_clip(f"local-dir:{path}", **kw)
    model.name_or_path = f"vlmrobust:{spec}"
    return model


@BACKENDS.register("llava")
def _llava(spec: str, **kw) -> VisionLanguageModel:
    from .llava_backend import load_llava

    return load_llava(spec, **kw)


@BACKENDS.register("qwen_vl")
def _qwen_vl(spec: str, **kw) -> VisionLanguageModel:
    from .qwen_vl_backend import load_qwen_vl

    return load_qwen_vl(spec, **kw)


@BACKENDS.register("paligemma")
def _paligemma(spec: str, **kw) -> VisionLanguageModel:
    from .paligemma_backend import load_paligemma

    return load_paligemma(spec, **kw)


def create_model(name: str, **kwargs) -> VisionLanguageModel:
    """Create a model from an id with a backend prefix.

    Args:
        name (`str`): one of `open_clip:<arch>/<pretrained>` (e.g. `open_clip:ViT-B-32/openai`; no `/<pretrained>`
            gives random weights), `hf-hub:<org>/<repo>` (open_clip layout on the Hub), `local-dir:<path>`
            (open_clip layout on disk), `hf-clip:<id or path>` (transformers CLIP), `vlmrobust:tiny-digits-clip`
            (the offline stand-in, pre-trained on first use and cached), `llava:<id or path>` (LLaVA-1.5 and later),
            `qwen_vl:<id or path>` (Qwen2-VL / Qwen2.5-VL), `paligemma:<id or path>` (PaliGemma; `llava:tiny` /
            `qwen_vl:tiny` / `paligemma:tiny` build random offline fixtures); further backends register in `BACKENDS`.
        kwargs: passed to the backend loader (`device`, `precision`, ...).
    """
    prefix, sep, spec = name.partition(":")
    if not sep or prefix not in BACKENDS:
        known = ", ".join(f"'{p}:'" for p in BACKENDS.names())
        raise ValueError(
            f"Unknown model '{name}'. A model id starts with a backend prefix ({known}), "
            "e.g. 'open_clip:ViT-B-32/openai', 'hf-clip:openai/clip-vit-base-patch32' or 'local-dir:./outputs/fare'."
        )
    loader = BACKENDS.get(prefix)
    if not needs_hub(name):
        return loader(spec, **kwargs)
    # a Hub id: probe the endpoint first (seconds, not minutes, without network) and report a cache miss in one line
    with hub_download(f"'{name}'"):
        return loader(spec, **kwargs)
