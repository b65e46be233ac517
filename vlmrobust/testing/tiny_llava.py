"""Tiny, randomly initialised LLaVA checkpoints built entirely offline.

Each ``build_tiny_*`` function writes a complete Hugging Face checkpoint (safetensors weights, config, generation
config, tokenizer, image / video processor, chat template) that the stock loaders read back:

```python
>>> from transformers import AutoProcessor, LlavaForConditionalGeneration
>>> path = build_tiny_llava("/tmp/tiny-llava")
>>> processor = AutoProcessor.from_pretrained(path)
>>> model = LlavaForConditionalGeneration.from_pretrained(path)
```

The ``make_tiny_*`` functions return the same model and processor in memory without touching the disk. Nothing
here downloads anything: the tokenizer is a word-level `tokenizers` model over [`SHAPES_VQA_VOCAB`] plus each
family's special tokens, and every weight is drawn from a seeded generator (the caller's global RNG state is left
untouched).
"""

from __future__ import annotations

import os
import pathlib

from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from .vocab import LLAVA_CHAT_TEMPLATE, LLAVA_SPECIAL_TOKENS, _check_sizes, _init_model, _save, make_tokenizer


def make_tiny_llava(
    *,
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    vision_hidden: int = 32,
    text_hidden: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """
    Build a tiny random LLaVA-1.5-style model (CLIP vision tower + Llama) and its processor in memory.

    The vision tower sees ``image_size`` px images in ``patch_size`` px patches; as in LLaVA-1.5 the projector reads
    layer -2 and drops CLS (``vision_feature_select_strategy="default"``), so each image becomes
    ``(image_size // patch_size) ** 2`` ``<image>`` tokens (16 by default).

    Args:
        seed (`int`, *optional*, defaults to 0):
            Seed of the weight initialisation.
        image_size (`int`, *optional*, defaults to 32):
            Side of the (square) CLIP input in pixels; the image processor resizes and crops to it.
        patch_size (`int`, *optional*, defaults to 8):
            CLIP patch side in pixels; must divide ``image_size``.
        vision_hidden (`int`, *optional*, defaults to 32):
            Width of the CLIP vision tower.
        text_hidden (`int`, *optional*, defaults to 32):
            Width of the Llama language model.
        num_layers (`int`, *optional*, defaults to 2):
            Depth of both the vision tower and the language model.
        num_heads (`int`, *optional*, defaults to 4):
            Attention heads of both towers.
        num_kv_heads (`int`, *optional*, defaults to 2):
            Key/value heads of the language model (grouped-query attention).
    """
    if image_size % patch_size:
        raise ValueError(f"patch_size={patch_size} must divide image_size={image_size}")
    _check_sizes(vision_hidden, num_heads, num_heads)
    _check_sizes(text_hidden, num_heads, num_kv_heads)
    tokenizer = make_tokenizer(
        LLAVA_SPECIAL_TOKENS,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    num_image_tokens = (image_size // patch_size) ** 2
    vision_config = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden,
    )
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden,
        intermediate_size=2 * text_hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=num_image_tokens,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        dtype="float32",
    )
    model = _init_model(LlavaForConditionalGeneration, config, seed)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS, which "default" then drops again
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    return model, processor


def build_tiny_llava(
    output_dir: str | os.PathLike,
    *,
    seed: int = 0,
    image_size: int = 32,
    vision_hidden: int = 32,
    text_hidden: int = 32,
    num_layers: int = 2,
) -> pathlib.Path:
    """
    Write a tiny random LLaVA checkpoint (see [`make_tiny_llava`]) to ``output_dir`` and return its path.

    Args:
        output_dir (`str` or `os.PathLike`):
            Directory to write into; created if missing.
        seed (`int`, *optional*, defaults to 0):
            Seed of the weight initialisation.
        image_size (`int`, *optional*, defaults to 32):
            Side of the CLIP input in pixels (8 px patches).
        vision_hidden (`int`, *optional*, defaults to 32):
            Width of the CLIP vision tower.
        text_hidden (`int`, *optional*, defaults to 32):
            Width of the Llama language model.
        num_layers (`int`, *optional*, defaults to 2):
            Depth of both towers.
    """
    model, processor = make_tiny_llava(
        seed=seed, image_size=image_size, vision_hidden=vision_hidden, text_hidden=text_hidden, num_layers=num_layers
    )
    return _save(model, processor, output_dir)
