"""The one protocol every model backend implements.

Attacks and losses always see images in [0, 1] pixel space at the model's input resolution; the mean/std
normalisation lives *inside* the model (in :class:`ImageEncoder`), so everything from pixels to embeddings is one
differentiable graph. Resizing / cropping happens *before* the attack (:meth:`VisionLanguageModel.preprocess`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def check_pixels(pixels: torch.Tensor) -> None:
    """Raise a clear error when images are not unnormalised [0, 1] pixels."""
    if not torch.is_tensor(pixels) or pixels.dim() != 4:
        shape = tuple(pixels.shape) if torch.is_tensor(pixels) else type(pixels).__name__
        raise ValueError(f"Expected a batch of images shaped (B, C, H, W), got {shape}.")
    lo, hi = torch.aminmax(pixels.detach())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(
            f"Images must be unnormalised pixels in [0, 1] (got values in [{lo.item():.3f}, {hi.item():.3f}]). "
            "vlmrobust normalises inside the model: pass the output of `model.preprocess` (or ToTensor()), "
            "not mean/std-normalised tensors."
        )


class ImageEncoder(nn.Module):
    """[0, 1] pixels -> image embedding, with the backend's mean/std normalisation inside.

    This is the module robust fine-tuning trains (FARE, TeCoA, ...): it owns the vision tower's parameters and two
    non-trainable buffers, so it can be handed to a `Trainer` / DeepSpeed on its own.

    Args:
        tower (`nn.Module`): maps normalised pixels to either the embedding or a hidden state.
        mean (`Sequence[float]`): per-channel normalisation mean.
        std (`Sequence[float]`): per-channel normalisation std.
        image_size (`int`): input resolution the tower expects.
        head (`Callable`, *optional*): maps the tower's output to the embedding (e.g. HF CLIP's pooler +
            projection). Identity when omitted.
    """

    def __init__(
        self,
        tower: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: int,
        head: nn.Module | None = None,
    ):
        super().__init__()
        self.tower = tower
        self.head = head
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        dtype = next(self.tower.parameters()).dtype
        # normalise in fp32 (bf16 cannot hold a 1/255 step near 1.0), cast only for the tower
        x = (pixels.float() - self.mean) / self.std
        return x.to(dtype)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.tower(self.normalize(pixels))
        return out if self.head is None else self.head(out)


class ZeroShotClassifier(nn.Module):
    """Images in [0, 1] -> zero-shot logits `scale * cos(image_embedding, class_embedding)`.

    Args:
        image_encoder (`ImageEncoder`): the (possibly robust) image encoder.
        class_embeddings (`torch.Tensor`): `(num_classes, dim)` L2-normalised text embeddings, one per class.
        logit_scale (`float`): temperature; CLIP's learned `exp(logit_scale)` (100 for OpenAI CLIP).
    """

    def __init__(self, image_encoder: nn.Module, class_embeddings: torch.Tensor, logit_scale: float = 100.0):
        super().__init__()
        self.image_encoder = image_encoder
        self.register_buffer("class_embeddings", F.normalize(class_embeddings.detach().float(), dim=-1))
        self.logit_scale = float(logit_scale)

    @property
    def num_classes(self) -> int:
        return self.class_embeddings.shape[0]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        emb = F.normalize(self.image_encoder(pixels).float(), dim=-1)
        return self.logit_scale * emb @ self.class_embeddings.T


class VisionLanguageModel(nn.Module):
    """Base class of every backend (`open_clip`, `hf-clip`; `llava`, `qwen_vl`, `paligemma` build on it).

    Subclasses set `image_encoder`, `image_size`, `backend`, `name_or_path` and implement `encode_text`,
    `tokenize`, `preprocess` and `save_pretrained`.
    """

    backend: str = "base"
    image_encoder: ImageEncoder
    image_size: int
    name_or_path: str

    # -- images -------------------------------------------------------------------------------------------------
    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Embed images given as [0, 1] pixels at `image_size` (differentiable w.r.t. `pixels`)."""
        emb = self.image_encoder(pixels)
        return F.normalize(emb, dim=-1) if normalize else emb

    @property
    def preprocess(self) -> Callable:
        """PIL image -> `(3, image_size, image_size)` float tensor in [0, 1] (resize / crop, no normalisation)."""
        raise NotImplementedError

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.image_encoder.mean.flatten().tolist())

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.image_encoder.std.flatten().tolist())

    # -- text ---------------------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def encode_text(self, texts: Sequence[str] | torch.Tensor, normalize: bool = False) -> torch.Tensor:
        raise NotImplementedError

    @property
    def logit_scale(self) -> float:
        """CLIP's temperature `exp(logit_scale)` as a float."""
        raise NotImplementedError

    @property
    def text_parameters(self) -> list[nn.Parameter]:
        """Parameters that are not part of the image encoder (text tower, logit scale, ...)."""
        vis = {id(p) for p in self.image_encoder.parameters()}
        return [p for p in self.parameters() if id(p) not in vis]

    @torch.no_grad()
    def class_embeddings(
        self, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 256
    ) -> torch.Tensor:
        """One L2-normalised text embedding per class: the mean of the normalised template embeddings."""
        if not classnames:
            raise ValueError("classnames is empty.")
        if not templates:
            raise ValueError("templates is empty: give at least one prompt such as 'a photo of a {}.'.")
        was_training = self.training
        self.eval()
        try:
            out = []
            for name in classnames:
                prompts = [t.format(name) if "{}" in t else t.replace("{c}", name) for t in templates]
                embs = []
                for i in range(0, len(prompts), batch_size):
                    embs.append(self.encode_text(prompts[i : i + batch_size], normalize=True).float())
                out.append(F.normalize(torch.cat(embs).mean(0), dim=-1))
            return torch.stack(out)
        finally:
            self.train(was_training)

    def zero_shot_classifier(
        self, classnames: Sequence[str], templates: Sequence[str], logit_scale: float | None = None
    ) -> ZeroShotClassifier:
        """Build a classifier `pixels -> scale * cos(image, class)` sharing this model's image encoder.

        Args:
            classnames (`Sequence[str]`): class names, formatted into each template.
            templates (`Sequence[str]`): prompt templates with `{}` for the class name.
            logit_scale (`float`, *optional*): temperature; defaults to the model's learned scale.
        """
        scale = self.logit_scale if logit_scale is None else float(logit_scale)
        return ZeroShotClassifier(self.image_encoder, self.class_embeddings(classnames, templates), scale)

    # -- saving -------------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, **extra_config) -> None:
        raise NotImplementedError
