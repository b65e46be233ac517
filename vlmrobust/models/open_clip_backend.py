"""open_clip backend: `open_clip:<arch>/<pretrained>`, `hf-hub:<org>/<repo>`, `local-dir:<path>`."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision import transforms as T

from ..layout import OPEN_CLIP_CONFIG_NAME, OPEN_CLIP_WEIGHTS_NAME
from .base import ImageEncoder, VisionLanguageModel


def _strip_normalize(preprocess: Callable) -> tuple[Callable, tuple[float, ...], tuple[float, ...]]:
    """Split open_clip's eval transform into (resize/crop/ToTensor) and the Normalize it ends with."""
    if not isinstance(preprocess, T.Compose):
        raise TypeError(f"Expected open_clip's Compose preprocess, got {type(preprocess).__name__}.")
    keep, mean, std = [], None, None
    for t in preprocess.transforms:
        if isinstance(t, T.Normalize):
            mean, std = tuple(float(m) for m in t.mean), tuple(float(s) for s in t.std)
        else:
            keep.append(t)
    if mean is None:
        raise ValueError("open_clip preprocess has no Normalize transform; cannot move normalisation into the model.")
    return T.Compose(keep), mean, std


class OpenCLIP(VisionLanguageModel):
    """An open_clip CLIP behind vlmrobust's protocol.

    Args:
        model (`open_clip.CLIP`): the open_clip model (its `visual` becomes the trainable image encoder).
        preprocess (`Callable`): open_clip's eval transform (its Normalize moves inside the model).
        tokenizer (`Callable`): open_clip tokenizer.
        model_cfg (`dict`): open_clip model config, written back on save so plain open_clip reloads the checkpoint.
        name_or_path (`str`): the id the model was created from.
    """

    backend = "open_clip"

    def __init__(self, model: nn.Module, preprocess: Callable, tokenizer: Callable, model_cfg: dict, name_or_path: str):
        super().__init__()
        self.model = model
        self._preprocess, mean, std = _strip_normalize(preprocess)
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.image_encoder = ImageEncoder(model.visual, mean, std, self.image_size)
        self._tokenizer = tokenizer
        self.model_cfg = copy.deepcopy(model_cfg)
        self.name_or_path = name_or_path

    @property
    def preprocess(self) -> Callable:
        return self._preprocess

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self._tokenizer(list(texts))

    def encode_text(self, texts: Sequence[str] | torch.Tensor, normalize: bool = False) -> torch.Tensor:
        tokens = texts if torch.is_tensor(texts) else self.tokenize(texts)
        device = next(self.model.parameters()).device
        return self.model.encode_text(tokens.to(device), normalize=normalize)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().float().item())

    @property
    def preprocess_cfg(self) -> dict:
        cfg = dict(getattr(self.model.visual, "preprocess_cfg", {}) or {})
        cfg.setdefault("mean", list(self.mean))
        cfg.setdefault("std", list(self.std))
        cfg.setdefault("size", self.image_size)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}

    def save_pretrained(self, save_directory: str | os.PathLike, state_dict: dict | None = None, **extra_config):
        """Write open_clip's own layout (`open_clip_config.json` + `open_clip_model.safetensors`).

        Plain open_clip loads the result without vlmrobust: `open_clip.create_model_and_transforms("local-dir:<dir>")`.
        """
        from ..layout import save_open_clip

        save_open_clip(self.model, save_directory, self.model_cfg, self.preprocess_cfg, state_dict=state_dict,
                       extra_config=extra_config)


#: the weight files open_clip's `local-dir:` loader looks for, in its order of preference
LOCAL_WEIGHT_NAMES = (OPEN_CLIP_WEIGHTS_NAME, "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                      "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth",
                      "model.pth")


def _check_local_weights(path: Path, name: str) -> None:
    """Refuse a folder without weights (open_clip would only warn and build a *random* model) or with a corrupt
    safetensors file (whose error would not name it)."""
    from ..utils.io import check_safetensors

    found = [path / n for n in LOCAL_WEIGHT_NAMES if (path / n).is_file()]
    if not found:
        raise FileNotFoundError(
            f"'{name}': {path} has {OPEN_CLIP_CONFIG_NAME} but no weights ({OPEN_CLIP_WEIGHTS_NAME}); open_clip would "
            "build a randomly initialised model from the config alone. Copy the weights file beside the config, or "
            "point at the folder that has them.")
    if found[0].suffix == ".safetensors":
        check_safetensors(found[0])


def load_open_clip(name: str, pretrained: str | None = None, *, device: str | torch.device = "cpu",
                   precision: str = "fp32", **kwargs) -> OpenCLIP:
    """Create an :class:`OpenCLIP` from an open_clip name.

    Args:
        name (`str`): `<arch>` (e.g. `ViT-B-32`), `hf-hub:<org>/<repo>` or `local-dir:<path>`.
        pretrained (`str`, *optional*): open_clip pretrained tag (`openai`, `laion2b_s34b_b79k`, ...) or a weights
            file; ignored for `hf-hub:` / `local-dir:`. `None` gives random weights.
        device (`str`): where to put the model.
        precision (`str`): open_clip precision (`fp32`, `bf16`, `amp`, ...).
    """
    import open_clip

    if name.startswith("local-dir:"):
        path = Path(name[len("local-dir:"):])
        if not (path / OPEN_CLIP_CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"'{name}': no {OPEN_CLIP_CONFIG_NAME} in {path}. A local-dir: model must be in open_clip's layout "
                f"({OPEN_CLIP_CONFIG_NAME} + {OPEN_CLIP_WEIGHTS_NAME}), as written by vlmrobust's recipes or "
                "`open_clip.push_to_hf_hub`."
            )
        _check_local_weights(path, name)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, device=device, precision=precision, **kwargs
        )
    except RuntimeError as e:
        msg = str(e)
        if "not found in built-ins" in msg:
            raise ValueError(
                f"Unknown open_clip architecture '{name}'. Pick one of open_clip.list_models(), "
                "e.g. 'open_clip:ViT-B-32/openai'."
            ) from e
        if "download" in msg.lower() or "hf hub" in msg.lower():
            raise RuntimeError(
                f"Could not fetch the weights for '{name}' (pretrained={pretrained!r}): {msg}\n"
                "Download them once with network access (they are cached under ~/.cache/huggingface), "
                "or point vlmrobust at a local copy with 'local-dir:<path>'."
            ) from e
        raise
    tokenizer = open_clip.get_tokenizer(name)
    if name.startswith("local-dir:"):
        cfg = json.loads((Path(name[len("local-dir:"):]) / OPEN_CLIP_CONFIG_NAME).read_text())
        model_cfg = cfg.get("model_cfg", cfg)
    else:
        model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise ValueError(f"open_clip has no model config for '{name}'.")
    spec = name if pretrained is None or name.startswith(("hf-hub:", "local-dir:")) else f"{name}/{pretrained}"
    return OpenCLIP(model, preprocess, tokenizer, model_cfg, name_or_path=spec)
