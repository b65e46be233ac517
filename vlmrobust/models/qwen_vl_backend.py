"""Qwen-VL backend: `qwen_vl:<hub id or path>` (transformers Qwen2-VL and Qwen2.5-VL).

Qwen-VL reads images at (nearly) their native resolution: the processor resizes each image so both sides are
multiples of `patch_size * merge_size` (28 px) and the pixel count lies in `[min_pixels, max_pixels]`
(`smart_resize`). vlmrobust does that resize *before* any attack (`preprocess`), then normalises and patchifies in
plain torch inside the model (`patchify`, a faithful port of the image processor's reshape/permute, including the
duplication of a still image over the 2-frame temporal patch), so attacks optimise real pixels at the model's
resolution. All images in one attacked batch must share a size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .base import ImageEncoder
from .lvlm_base import LVLM, apply_lora, load_pretrained_lvlm, lora_config

FEATURE_TARGETS = ("merged", "patch")


def patchify(images: torch.Tensor, patch_size: int, temporal_patch_size: int, merge_size: int) -> torch.Tensor:
    """Normalised images `(B, C, H, W)` -> Qwen-VL `pixel_values` `(B * grid_h * grid_w, C * t * p * p)`.

    Same element order as `Qwen2VLImageProcessor`: merge-window-major patch order, each patch flattened as
    (channel, temporal, row, column), the single frame repeated `temporal_patch_size` times.
    """
    b, c, h, w = images.shape
    unit = patch_size * merge_size
    if h % unit or w % unit:
        raise ValueError(f"Qwen-VL images must have sides that are multiples of {unit} px, got {h}x{w}: resize "
                         "with `model.preprocess` (smart_resize) before attacking.")
    gh, gw = h // patch_size, w // patch_size
    x = images.reshape(b, c, gh // merge_size, merge_size, patch_size, gw // merge_size, merge_size, patch_size)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # b, gh/m, gw/m, m, m, c, p, p
    x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, temporal_patch_size, -1, -1)
    return x.reshape(b * gh * gw, c * temporal_patch_size * patch_size * patch_size)


class QwenVisionFeatures(nn.Module):
    """Normalised pixels `(B, C, H, W)` -> Qwen-VL vision features `(B, T, D)`.

    Args:
        visual (`nn.Module`): the model's vision transformer (shared, not copied).
        patch_size, temporal_patch_size, merge_size (`int`): the image processor's geometry.
        target (`str`, *optional*, defaults to `"merged"`): `"merged"` = the merger's output, i.e. the tokens the
            language model consumes (default), or `"patch"` = the last layer's patch tokens before merging.
    """

    def __init__(self, visual: nn.Module, patch_size: int, temporal_patch_size: int, merge_size: int,
                 target: str = "merged"):
        super().__init__()
        if target not in FEATURE_TARGETS:
            raise ValueError(f"target must be one of {FEATURE_TARGETS}, got {target!r}.")
        self.visual = visual
        self.patch_size, self.temporal_patch_size, self.merge_size = patch_size, temporal_patch_size, merge_size
        self.target = target

    def grid_thw(self, batch: int, height: int, width: int, device) -> torch.Tensor:
        row = [1, height // self.patch_size, width // self.patch_size]
        return torch.tensor([row] * batch, dtype=torch.long, device=device)

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        return patchify(images, self.patch_size, self.temporal_patch_size, self.merge_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        out = self.visual(self.pixel_values(images), grid_thw=self.grid_thw(b, h, w, images.device))
        feats = out.pooler_output if self.target == "merged" else out.last_hidden_state
        return feats.reshape(b, -1, feats.shape[-1])


class QwenVL(LVLM):
    """A transformers Qwen2-VL / Qwen2.5-VL behind vlmrobust's protocol.

    Args:
        model: `Qwen2VLForConditionalGeneration` / `Qwen2_5_VLForConditionalGeneration` (or a PEFT wrapper).
        processor: its processor; checked against the model (tokenizer, patch geometry).
        name_or_path (`str`): the id or folder the model came from.
        fare_target (`str`, *optional*, defaults to `"merged"`): features of `image_encoder` (see
            [`QwenVisionFeatures`]).
        default_size (`int`, *optional*, defaults to 448): `image_size` is the side `smart_resize` gives a square
            image of this size (what fixtures and square datasets use); real images keep their aspect ratio.
    """

    backend = "qwen_vl"
    image_token = "<|image_pad|>"
    eot_token = "<|im_end|>"

    def __init__(self, model: nn.Module, processor, name_or_path: str, fare_target: str = "merged",
                 default_size: int = 448):
        super().__init__(model, processor, name_or_path)
        hf = self.hf_model
        ip = processor.image_processor
        self.patch_size, self.temporal_patch_size = int(ip.patch_size), int(ip.temporal_patch_size)
        self.merge_size = int(ip.merge_size)
        check_qwen_processor(hf, processor)
        self.image_size = self.target_size(default_size, default_size)[0]
        tower = QwenVisionFeatures(hf.model.visual, self.patch_size, self.temporal_patch_size, self.merge_size,
                                   fare_target)
        self.image_encoder = ImageEncoder(tower, ip.image_mean, ip.image_std, self.image_size)

    @property
    def _pixel_range(self) -> tuple[int, int]:
        ip = self.processor.image_processor
        size = ip.size if isinstance(ip.size, dict) else dict(ip.size)
        lo = getattr(ip, "min_pixels", None) or size.get("shortest_edge")
        hi = getattr(ip, "max_pixels", None) or size.get("longest_edge")
        return int(lo), int(hi)

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) the processor resizes an image of this size to (`smart_resize`)."""
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        lo, hi = self._pixel_range
        return smart_resize(height, width, factor=self.patch_size * self.merge_size, min_pixels=lo, max_pixels=hi)

    def num_image_tokens(self, height: int, width: int) -> int:
        unit = self.patch_size * self.merge_size
        if height % unit or width % unit:
            raise ValueError(f"Image of {height}x{width} px is not at Qwen-VL's resolution (multiples of {unit} px):"
                             " resize with `model.preprocess` first.")
        return (height // self.patch_size) * (width // self.patch_size) // self.merge_size**2

    def extra_text_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        image_id = self.hf_model.config.image_token_id
        return {"mm_token_type_ids": (input_ids == image_id).to(torch.int)}

    def pixel_inputs(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        tower: QwenVisionFeatures = self.image_encoder.tower
        b, _, h, w = pixels.shape
        self.num_image_tokens(h, w)
        return {"pixel_values": tower.pixel_values(self.image_encoder.normalize(pixels)),
                "image_grid_thw": tower.grid_thw(b, h, w, pixels.device)}

    @property
    def preprocess(self) -> Callable:
        """PIL image -> `(3, H', W')` in [0, 1] at Qwen's resolution, resized exactly as the image processor does
        (`smart_resize` size, the processor's `resample` filter with antialiasing, `torchvision.transforms.v2` on the
        uint8 image), so the attack starts from the pixels the processor would give the model."""
        from torchvision.transforms import functional as TF
        from torchvision.transforms.v2 import functional as TF2

        interpolation = _torch_interpolation(getattr(self.processor.image_processor, "resample", None))

        def _pre(image) -> torch.Tensor:
            t = TF.pil_to_tensor(image.convert("RGB")) if not torch.is_tensor(image) else image
            if t.is_floating_point():
                t = (t.clamp(0, 1) * 255).round().to(torch.uint8)
            h, w = self.target_size(t.shape[-2], t.shape[-1])
            t = TF2.resize(t, [h, w], interpolation=interpolation, antialias=True)
            return (t.float() / 255.0).clamp(0, 1)

        return _pre


def _torch_interpolation(resample):
    """The torchvision interpolation an HF torchvision-backend image processor uses for `resample`."""
    from torchvision.transforms import InterpolationMode
    from transformers.image_utils import PILImageResampling, pil_torch_interpolation_mapping

    if resample is None:
        return InterpolationMode.BICUBIC
    if isinstance(resample, InterpolationMode):
        return resample
    return pil_torch_interpolation_mapping[PILImageResampling(int(resample))]


def check_qwen_processor(model: nn.Module, processor) -> None:
    """Raise a ValueError naming the fix when `processor` belongs to another model."""
    cfg = model.config
    vcfg = cfg.vision_config
    ip = processor.image_processor
    for name, want in (("patch_size", vcfg.patch_size), ("temporal_patch_size", vcfg.temporal_patch_size),
                       ("merge_size", vcfg.spatial_merge_size)):
        if int(getattr(ip, name)) != int(want):
            raise ValueError(f"The processor's {name} is {getattr(ip, name)} but the model's vision tower uses "
                             f"{want}: the processor belongs to another model. Load processor and model from the "
                             "same id / folder.")
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    vocab = cfg.text_config.vocab_size
    if image_id != cfg.image_token_id or len(tok) > vocab:
        raise ValueError(f"The processor's tokenizer does not match the model (<|image_pad|> id {image_id} vs the "
                         f"model's {cfg.image_token_id}; {len(tok)} tokens vs a {vocab}-row embedding): the "
                         "processor belongs to another model. Load processor and model from the same id / folder.")


def load_qwen_vl(name_or_path: str, *, device: str | torch.device = "cpu", torch_dtype=None, processor=None,
                 fare_target: str = "merged", default_size: int = 448, lora=None, lora_r: int | None = None,
                 lora_alpha: int | None = None, seed: int = 0, tiny_kwargs: dict | None = None,
                 **kwargs) -> QwenVL:
    """Load `qwen_vl:<id or path>` (Qwen2-VL or Qwen2.5-VL) with plain transformers `from_pretrained`.

    Args:
        name_or_path (`str`): hub id or folder; `tiny` / `tiny-2.5` build vlmrobust's random offline Qwen2-VL /
            Qwen2.5-VL fixture in memory.
        device, torch_dtype, processor, lora, lora_r, lora_alpha, seed: as in [`load_llava`].
        fare_target (`str`, *optional*, defaults to `"merged"`): features of `image_encoder`.
        default_size (`int`, *optional*, defaults to 448): see [`QwenVL`].
        tiny_kwargs (`dict`, *optional*): further keyword arguments of the `tiny` / `tiny-2.5` fixture builders
            (`image_size`, `hidden`, `num_layers`, ...).
    """
    from transformers import (
        AutoConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLForConditionalGeneration,
    )

    if name_or_path in ("tiny", "tiny-2.5"):
        from ..testing.tiny_qwen import make_tiny_qwen2_5_vl, make_tiny_qwen2_vl

        model, own = (make_tiny_qwen2_vl if name_or_path == "tiny" else make_tiny_qwen2_5_vl)(seed=seed, **(tiny_kwargs or {}))
    else:
        def qwen_class(path: str):
            mtype = AutoConfig.from_pretrained(path).model_type
            classes = {"qwen2_vl": Qwen2VLForConditionalGeneration, "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration}
            if mtype not in classes:
                raise ValueError(f"'{path}' is a {mtype!r} model; 'qwen_vl:' loads Qwen2-VL and Qwen2.5-VL.")
            return classes[mtype]

        model, own = load_pretrained_lvlm(qwen_class, name_or_path, "qwen_vl", "Qwen-VL", processor=processor,
                                          torch_dtype=torch_dtype, **kwargs)
    model = apply_lora(model.to(device).eval(), lora_config(lora, lora_r, lora_alpha))
    return QwenVL(model, processor or own, name_or_path, fare_target=fare_target, default_size=default_size)
