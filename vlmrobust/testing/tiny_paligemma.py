"""A tiny, randomly initialised PaliGemma (SigLIP vision tower + Gemma) built entirely offline.

```python
>>> from transformers import AutoProcessor, PaliGemmaForConditionalGeneration
>>> path = build_tiny_paligemma("/tmp/tiny-paligemma")
>>> processor = AutoProcessor.from_pretrained(path)
>>> model = PaliGemmaForConditionalGeneration.from_pretrained(path)
```

As for the tiny LLaVA, the tokenizer is a word-level `tokenizers` model over [`SHAPES_VQA_VOCAB`] plus PaliGemma's
special tokens (`PaliGemmaProcessor` adds its `<image>` token and the `<locXXXX>` / `<segXXX>` tokens itself), and every
weight is drawn from a seeded generator (the caller's global RNG state is left untouched).
"""

from __future__ import annotations

import os
import pathlib

from transformers import (
    GemmaConfig,
    GenerationConfig,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    SiglipImageProcessor,
    SiglipVisionConfig,
)

from .vocab import _check_sizes, _init_model, _save, make_tokenizer

PALIGEMMA_SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<eos>", "<bos>", "<unk>", "<image>", "en")
"""Tiny PaliGemma tokenizer special tokens (ids = positions, as in Gemma: pad 0, eos 1, bos 2, unk 3); the task
prefix word `en` is added (the shapes-VQA vocabulary has `answer` but not `en`)."""


def make_tiny_paligemma(
    *,
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    vision_hidden: int = 32,
    text_hidden: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 1,
) -> tuple[PaliGemmaForConditionalGeneration, PaliGemmaProcessor]:
    """
    Build a tiny random PaliGemma-style model and its processor in memory.

    Each image becomes ``(image_size // patch_size) ** 2`` ``<image>`` tokens (16 by default): SigLIP's last hidden
    state, every patch, through PaliGemma's linear `multi_modal_projector`.

    Args:
        seed (`int`, *optional*, defaults to 0): seed of the weight initialisation.
        image_size (`int`, *optional*, defaults to 32): side of the (square) SigLIP input in pixels.
        patch_size (`int`, *optional*, defaults to 8): SigLIP patch side; must divide ``image_size``.
        vision_hidden (`int`, *optional*, defaults to 32): width of the SigLIP tower.
        text_hidden (`int`, *optional*, defaults to 32): width of the Gemma language model.
        num_layers (`int`, *optional*, defaults to 2): depth of both towers.
        num_heads (`int`, *optional*, defaults to 4): attention heads of both towers.
        num_kv_heads (`int`, *optional*, defaults to 1): key/value heads of Gemma (multi-query, as Gemma-2B).
    """
    if image_size % patch_size:
        raise ValueError(f"patch_size={patch_size} must divide image_size={image_size}")
    _check_sizes(vision_hidden, num_heads, num_heads)
    _check_sizes(text_hidden, num_heads, num_kv_heads)
    num_image_tokens = (image_size // patch_size) ** 2
    tokenizer = make_tokenizer(PALIGEMMA_SPECIAL_TOKENS, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>",
                               padding_side="left")
    # make_tokenizer prepends nothing without bos_token; PaliGemma's processor writes "<bos>" into the text itself
    tokenizer.add_special_tokens({"bos_token": "<bos>"})
    image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                                           image_std=[0.5] * 3, resample=3)
    image_processor.image_seq_length = num_image_tokens
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    tokenizer = processor.tokenizer  # with <image> and the 1024 + 128 location / segmentation tokens added
    vision_config = SiglipVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=text_hidden,
    )
    text_config = GemmaConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden,
        intermediate_size=2 * text_hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=text_hidden // num_heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        num_image_tokens=num_image_tokens,
    )
    config = PaliGemmaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=processor.image_token_id,
        projection_dim=text_hidden,
        hidden_size=text_hidden,
        dtype="float32",
    )
    model = _init_model(PaliGemmaForConditionalGeneration, config, seed)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    return model, processor


def build_tiny_paligemma(output_dir: str | os.PathLike, *, seed: int = 0, **kwargs) -> pathlib.Path:
    """Write a tiny random PaliGemma checkpoint (see [`make_tiny_paligemma`], which takes `kwargs`) to
    ``output_dir`` and return its path."""
    model, processor = make_tiny_paligemma(seed=seed, **kwargs)
    return _save(model, processor, output_dir)
