"""LLaVA backend: `llava:<hub id or path>` (transformers `LlavaForConditionalGeneration`, LLaVA-1.5 and later).

Images are resized (shortest edge) and centre-cropped to the CLIP tower's native size *before* any attack
(`preprocess`, the processor's own resize with normalisation off: 336 px for LLaVA-1.5); inside the model only
`(x - mean) / std` remains, so attacks optimise the pixels the tower really sees. LLaVA-NeXT's any-resolution tiling
is not supported (it is a different class).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .base import ImageEncoder
from .hf_clip_backend import unnormalized_preprocess
from .lvlm_base import LVLM, apply_lora, load_pretrained_lvlm, lora_config

FEATURE_TARGETS = ("projector_input", "pooled")


class LlavaVisionFeatures(nn.Module):
    """Normalised pixels -> the CLIP features FARE / TeCoA train on.

    Args:
        vision_tower (`transformers.CLIPVisionModel`): LLaVA's tower (shared, not copied).
        feature_layer (`int`): hidden layer LLaVA's projector reads (`vision_feature_layer`, -2 for LLaVA-1.5).
        select_strategy (`str`): `"default"` drops CLS, `"full"` keeps it (`vision_feature_select_strategy`).
        target (`str`, *optional*, defaults to `"projector_input"`): `"projector_input"` = the `(B, T, D)` patch
            tokens the projector consumes (what LLaVA actually uses; default) or `"pooled"` = CLIP's pooled `(B, D)`
            output of the last layer (the FARE paper trains the CLIP embedding of a stand-alone CLIP).
    """

    def __init__(self, vision_tower: nn.Module, feature_layer: int, select_strategy: str,
                 target: str = "projector_input"):
        super().__init__()
        if target not in FEATURE_TARGETS:
            raise ValueError(f"target must be one of {FEATURE_TARGETS}, got {target!r}.")
        if isinstance(feature_layer, (list, tuple)):
            raise ValueError("LLaVA configs with several vision_feature_layer values are not supported.")
        self.vision_tower = vision_tower
        self.feature_layer = int(feature_layer)
        self.select_strategy = select_strategy
        self.target = target

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.vision_tower(pixel_values=pixel_values, output_hidden_states=self.target == "projector_input",
                                return_dict=True)
        if self.target == "pooled":
            return out.pooler_output
        feats = out.hidden_states[self.feature_layer]
        return feats[:, 1:] if self.select_strategy == "default" else feats


class Llava(LVLM):
    """A transformers LLaVA behind vlmrobust's protocol.

    `image_encoder` maps [0, 1] pixels to the tower features selected by `fare_target` (see
    [`LlavaVisionFeatures`]); it shares its parameters with `model`, so training it trains the LVLM's tower.

    Args:
        model (`LlavaForConditionalGeneration` or a PEFT wrapper of it): the model.
        processor (`LlavaProcessor`): its processor; checked against the model (image size, tokenizer).
        name_or_path (`str`): the id or folder the model came from.
        fare_target (`str`, *optional*, defaults to `"projector_input"`): features `image_encoder` returns.
    """

    backend = "llava"
    image_token = "<image>"

    def __init__(self, model: nn.Module, processor, name_or_path: str, fare_target: str = "projector_input"):
        super().__init__(model, processor, name_or_path)
        hf = self.hf_model
        cfg = hf.config
        vcfg = cfg.vision_config
        self.image_size = int(vcfg.image_size)
        self.patch_size = int(vcfg.patch_size)
        check_llava_processor(hf, processor)
        self.eot_token = self.tokenizer.eos_token
        ip = processor.image_processor
        tower = LlavaVisionFeatures(hf.model.vision_tower, cfg.vision_feature_layer,
                                    cfg.vision_feature_select_strategy, fare_target)
        self.image_encoder = ImageEncoder(tower, ip.image_mean, ip.image_std, self.image_size)

    def num_image_tokens(self, height: int, width: int) -> int:
        if (height, width) != (self.image_size, self.image_size):
            raise ValueError(f"LLaVA's tower takes {self.image_size}x{self.image_size} px images, got "
                             f"{height}x{width}: resize with `model.preprocess` before attacking.")
        n = (self.image_size // self.patch_size) ** 2
        return n + (1 if self.hf_model.config.vision_feature_select_strategy == "full" else 0)

    def pixel_inputs(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = pixels.shape[-2:]
        self.num_image_tokens(h, w)
        return {"pixel_values": self.image_encoder.normalize(pixels)}

    @property
    def preprocess(self) -> Callable:
        return unnormalized_preprocess(self.processor.image_processor)

    def load_vision_tower(self, source) -> None:
        """Copy a (robust) CLIP vision tower into this LLaVA, after checking that it fits.

        Args:
            source: a vlmrobust `HFCLIP` (e.g. `create_model("hf-clip:<dir>")` of a FARE checkpoint), a
                transformers `CLIPModel` / `CLIPVisionModel`, or the path of a transformers CLIP folder.

        Raises:
            ValueError: when the architecture or resolution differs, naming the fix.
        """
        vision = _clip_vision_model(source)
        check_tower_compatible(vision.config, self.hf_model.config.vision_config)
        target = self.hf_model.model.vision_tower
        # copies in place: the parameters (and the image encoder that shares them) keep their identity
        with torch.no_grad():
            target.load_state_dict(vision.state_dict(), strict=True)


def _clip_vision_model(source) -> nn.Module:
    """The `CLIPVisionModel` inside a path / `CLIPModel` / `CLIPVisionModel` / vlmrobust `hf-clip` model."""
    from transformers import AutoConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

    if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        cfg = AutoConfig.from_pretrained(source)
        source = (CLIPVisionModel if isinstance(cfg, CLIPVisionConfig) else CLIPModel).from_pretrained(source)
    if getattr(source, "backend", None) == "hf-clip":
        source = source.model
    if isinstance(source, CLIPModel):
        source = source.vision_model  # a CLIPVisionModel in transformers 5
    if isinstance(source, CLIPVisionModel):
        return source
    raise TypeError(f"Cannot take a vision tower from {type(source).__name__}: give a transformers CLIP "
                    "(CLIPModel / CLIPVisionModel, or its folder) or a vlmrobust 'hf-clip:' model. open_clip "
                    "checkpoints must be converted to transformers' CLIP layout first.")


def check_tower_compatible(src, dst) -> None:
    """Raise a ValueError naming the fix when CLIP vision config `src` cannot replace LLaVA's tower `dst`."""
    if src.image_size != dst.image_size:
        hint = {336: "ViT-L/14-336 (e.g. openai/clip-vit-large-patch14-336)",
                224: "ViT-L/14 at 224 px (e.g. openai/clip-vit-large-patch14)"}.get(dst.image_size,
                                                                                   f"{dst.image_size} px")
        raise ValueError(f"The CLIP tower is {src.image_size} px but this LLaVA expects {dst.image_size} px: use a "
                         f"CLIP trained at {dst.image_size} px ({hint}), e.g. run FARE on that checkpoint.")
    fields = ("hidden_size", "patch_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    bad = [f"{f}: tower {getattr(src, f)} vs LLaVA {getattr(dst, f)}" for f in fields
           if getattr(src, f) != getattr(dst, f)]
    if bad:
        raise ValueError("The CLIP tower has another architecture than this LLaVA's (" + "; ".join(bad) + "): "
                         "fine-tune the same CLIP that LLaVA was built on (LLaVA-1.5: ViT-L/14-336) and swap that.")


def check_llava_processor(model: nn.Module, processor) -> None:
    """Raise a ValueError naming the fix when `processor` belongs to another model."""
    vcfg = model.config.vision_config
    crop = getattr(processor.image_processor, "crop_size", None)
    size = crop.get("height") if isinstance(crop, dict) else getattr(crop, "height", None)
    if size is not None and int(size) != int(vcfg.image_size):
        raise ValueError(f"The processor crops to {size} px but the model's vision tower expects {vcfg.image_size} "
                         "px: the processor belongs to another model. Load processor and model from the same "
                         "id / folder (or save the processor next to the model).")
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<image>")
    want = model.config.image_token_id
    vocab = model.config.text_config.vocab_size
    if image_id != want or len(tok) > vocab:
        raise ValueError(f"The processor's tokenizer does not match the model (<image> id {image_id} vs the "
                         f"model's {want}; {len(tok)} tokens vs a {vocab}-row embedding): the processor belongs to "
                         "another model. Load processor and model from the same id / folder.")


def load_llava(name_or_path: str, *, device: str | torch.device = "cpu", torch_dtype=None, processor=None,
               fare_target: str = "projector_input", lora=None, lora_r: int | None = None,
               lora_alpha: int | None = None, seed: int = 0, tiny_kwargs: dict | None = None, **kwargs) -> Llava:
    """Load `llava:<id or path>` with plain transformers `from_pretrained`.

    Args:
        name_or_path (`str`): hub id or folder; `tiny` builds vlmrobust's random offline fixture in memory.
        device (`str`, *optional*, defaults to `"cpu"`): where to put the model.
        torch_dtype (*optional*): dtype for `from_pretrained`.
        processor (*optional*): a processor to use instead of the folder's own (checked for compatibility).
        fare_target (`str`, *optional*, defaults to `"projector_input"`): features of `image_encoder`.
        lora (`peft.LoraConfig`, *optional*) / lora_r (`int`, *optional*): wrap the model with LoRA; `lora_r` alone
            adapts the language model's `q_proj` / `v_proj` (rank r, alpha 2r).
        seed (`int`, *optional*, defaults to 0): seed of the `tiny` fixture.
        tiny_kwargs (`dict`, *optional*): further keyword arguments of `make_tiny_llava` for the `tiny` fixture
            (`image_size`, `vision_hidden`, ...).
    """
    from transformers import LlavaForConditionalGeneration

    if name_or_path == "tiny":
        from ..testing.tiny_llava import make_tiny_llava

        model, own = make_tiny_llava(seed=seed, **(tiny_kwargs or {}))
    else:
        model, own = load_pretrained_lvlm(LlavaForConditionalGeneration, name_or_path, "llava", "LLaVA",
                                          processor=processor, torch_dtype=torch_dtype, **kwargs)
    model = apply_lora(model.to(device).eval(), lora_config(lora, lora_r, lora_alpha))
    return Llava(model, processor or own, name_or_path, fare_target=fare_target)
