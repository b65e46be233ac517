"""transformers CLIP backend: `hf-clip:<hub id or local path>`."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from .base import ImageEncoder, VisionLanguageModel


def unnormalized_preprocess(image_processor) -> Callable:
    """PIL image -> [0, 1] tensor with the image processor's resize / crop, but its normalisation left out
    (normalisation happens inside the model, so attacks see pixels)."""

    def _pre(image) -> torch.Tensor:
        out = image_processor(images=image, do_normalize=False, return_tensors="pt")["pixel_values"][0]
        return out.float().clamp(0, 1)

    return _pre


class _PooledProjection(nn.Module):
    """HF vision transformer output -> projected image embedding (CLIP's `get_image_features`)."""

    def __init__(self, projection: nn.Module):
        super().__init__()
        self.projection = projection

    def forward(self, vision_outputs) -> torch.Tensor:
        return self.projection(vision_outputs.pooler_output)


class _VisionTower(nn.Module):
    def __init__(self, vision_model: nn.Module):
        super().__init__()
        self.vision_model = vision_model

    def forward(self, pixel_values: torch.Tensor):
        return self.vision_model(pixel_values=pixel_values, return_dict=True)


class HFCLIP(VisionLanguageModel):
    """A transformers `CLIPModel` behind vlmrobust's protocol.

    Args:
        model (`transformers.CLIPModel`): the model; `vision_model` + `visual_projection` form the image encoder.
        processor (`transformers.CLIPProcessor`): its image processor gives the resize / crop used before attacks
            and the mean / std that move inside the model; its tokenizer encodes prompts.
        name_or_path (`str`): the hub id or folder the model came from.
    """

    backend = "hf-clip"

    def __init__(self, model: nn.Module, processor, name_or_path: str):
        super().__init__()
        self.model = model
        self.processor = processor
        ip = processor.image_processor
        crop = getattr(ip, "crop_size", None)
        size = crop.get("height") if isinstance(crop, dict) else getattr(crop, "height", None)
        self.image_size = int(size or model.config.vision_config.image_size)
        if self.image_size != model.config.vision_config.image_size:
            raise ValueError(
                f"Processor crops to {self.image_size}px but the model's vision tower expects "
                f"{model.config.vision_config.image_size}px: the processor belongs to another model. Load both "
                "from the same id/folder."
            )
        self.image_encoder = ImageEncoder(
            _VisionTower(model.vision_model), ip.image_mean, ip.image_std, self.image_size,
            head=_PooledProjection(model.visual_projection),
        )
        self.name_or_path = name_or_path

    @property
    def preprocess(self) -> Callable:
        return unnormalized_preprocess(self.processor.image_processor)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.processor.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")

    def encode_text(self, texts, normalize: bool = False) -> torch.Tensor:
        device = next(self.model.parameters()).device
        if torch.is_tensor(texts):
            enc = {"input_ids": texts.to(device)}
        else:
            enc = {k: v.to(device) for k, v in self.tokenize(texts).items()}
        out = self.model.get_text_features(**enc)
        emb = out if torch.is_tensor(out) else out.pooler_output
        return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().float().item())

    def save_pretrained(self, save_directory: str | os.PathLike, state_dict: dict | None = None, **extra_config):
        """Write transformers' own layout (`config.json`, `model.safetensors`, processor files)."""
        from ..utils.io import atomic_write_json, umask_modes

        out = Path(save_directory)
        self.model.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
        self.processor.save_pretrained(out)
        atomic_write_json(out / "vlmrobust_config.json",
                          {"vlmrobust_version": __version__, "backend": self.backend, **extra_config})
        umask_modes(out)  # transformers saves safetensors as 0600, its JSON as 0644


def load_hf_clip(name_or_path: str, *, device: str | torch.device = "cpu", torch_dtype=None, **kwargs) -> HFCLIP:
    """Load `transformers.CLIPModel` + `CLIPProcessor` with `from_pretrained` (hub id or local folder)."""
    from transformers import AutoProcessor, CLIPModel

    try:
        model = CLIPModel.from_pretrained(name_or_path, dtype=torch_dtype, **kwargs)
        processor = AutoProcessor.from_pretrained(name_or_path)
    except OSError as e:
        raise RuntimeError(
            f"Could not load the transformers CLIP '{name_or_path}': {e}\nWithout network access, download it "
            "beforehand (`huggingface-cli download <id>`) or pass the path of a local folder: 'hf-clip:/path'."
        ) from e
    return HFCLIP(model.to(device).eval(), processor, name_or_path)
