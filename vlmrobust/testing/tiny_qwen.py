"""Tiny, randomly initialised Qwen2-VL / Qwen2.5-VL checkpoints built offline (see `tiny_llava` for the pattern:
`make_tiny_*` in memory, `build_tiny_*` on disk, loaded back with plain `from_pretrained`)."""

from __future__ import annotations

import os
import pathlib

from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from .vocab import (
    _QWEN_MERGE,
    _QWEN_PATCH,
    _QWEN_TEMPORAL_PATCH,
    QWEN_CHAT_TEMPLATE,
    QWEN_SPECIAL_TOKENS,
    _check_sizes,
    _init_model,
    _mrope_section,
    _save,
    make_tokenizer,
)


def _make_qwen_tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer(
        QWEN_SPECIAL_TOKENS,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=QWEN_CHAT_TEMPLATE,
    )


def _qwen_processors(image_size: int = 56) -> tuple[Qwen2VLImageProcessor, Qwen2VLVideoProcessor]:
    unit = _QWEN_PATCH * _QWEN_MERGE
    if image_size <= 0 or image_size % unit:
        raise ValueError(f"image_size={image_size} must be a positive multiple of {unit} px (14 px patches, 2x2 merge)")
    geometry = {
        "min_pixels": image_size * image_size,
        "max_pixels": image_size * image_size,
        "patch_size": _QWEN_PATCH,
        "temporal_patch_size": _QWEN_TEMPORAL_PATCH,
        "merge_size": _QWEN_MERGE,
    }
    return Qwen2VLImageProcessor(**geometry), Qwen2VLVideoProcessor(**geometry)


def _qwen_text_kwargs(tokenizer, hidden: int, num_layers: int, num_heads: int, num_kv_heads: int) -> dict:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "max_position_embeddings": 512,
        "max_window_layers": num_layers,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1_000_000.0,
            "mrope_section": _mrope_section(hidden // num_heads),
        },
        "bos_token_id": None,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _qwen_token_ids(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


def _qwen_generation_config(tokenizer) -> GenerationConfig:
    return GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )


def make_tiny_qwen2_vl(
    *,
    seed: int = 0,
    hidden: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    image_size: int = 56,
) -> tuple[Qwen2VLForConditionalGeneration, Qwen2VLProcessor]:
    """
    Build a tiny random Qwen2-VL model and its processor in memory.

    Square images are resized to ``image_size`` px (56 by default: 4x4 patches of 14 px, merged 2x2 into 4
    ``<|image_pad|>`` tokens; 112 gives 8x8 patches and 16 tokens).

    Args:
        seed (`int`, *optional*, defaults to 0):
            Seed of the weight initialisation.
        hidden (`int`, *optional*, defaults to 32):
            Width of both the vision tower and the language model.
        num_layers (`int`, *optional*, defaults to 2):
            Depth of both the vision tower and the language model.
        num_heads (`int`, *optional*, defaults to 4):
            Attention heads of both towers.
        num_kv_heads (`int`, *optional*, defaults to 2):
            Key/value heads of the language model (grouped-query attention).
        image_size (`int`, *optional*, defaults to 56):
            Side in pixels of the square the image processor resizes to (``min_pixels = max_pixels =
            image_size**2``); a multiple of 28.
    """
    _check_sizes(hidden, num_heads, num_kv_heads)
    tokenizer = _make_qwen_tokenizer()
    config = Qwen2VLConfig(
        vision_config={
            "depth": num_layers,
            "embed_dim": hidden,
            "hidden_size": hidden,  # the merger's output width, i.e. the language model's width
            "mlp_ratio": 2,
            "num_heads": num_heads,
            "patch_size": _QWEN_PATCH,
            "spatial_merge_size": _QWEN_MERGE,
            "temporal_patch_size": _QWEN_TEMPORAL_PATCH,
        },
        text_config=_qwen_text_kwargs(tokenizer, hidden, num_layers, num_heads, num_kv_heads),
        dtype="float32",
        **_qwen_token_ids(tokenizer),
    )
    model = _init_model(Qwen2VLForConditionalGeneration, config, seed)
    model.generation_config = _qwen_generation_config(tokenizer)
    image_processor, video_processor = _qwen_processors(image_size)
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    return model, processor


def make_tiny_qwen2_5_vl(
    *,
    seed: int = 0,
    hidden: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    image_size: int = 56,
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    """
    Build a tiny random Qwen2.5-VL model and its processor in memory.

    Same geometry and tokenizer as [`make_tiny_qwen2_vl`]; the vision tower uses windowed attention in every layer
    but the last, which attends globally (as Qwen2.5-VL's ``fullatt_block_indexes`` do).

    Args:
        seed (`int`, *optional*, defaults to 0):
            Seed of the weight initialisation.
        hidden (`int`, *optional*, defaults to 32):
            Width of both the vision tower and the language model.
        num_layers (`int`, *optional*, defaults to 2):
            Depth of both the vision tower and the language model.
        num_heads (`int`, *optional*, defaults to 4):
            Attention heads of both towers.
        num_kv_heads (`int`, *optional*, defaults to 2):
            Key/value heads of the language model (grouped-query attention).
        image_size (`int`, *optional*, defaults to 56):
            Side in pixels of the square the image processor resizes to (``min_pixels = max_pixels =
            image_size**2``); a multiple of 28.
    """
    _check_sizes(hidden, num_heads, num_kv_heads)
    tokenizer = _make_qwen_tokenizer()
    config = Qwen2_5_VLConfig(
        vision_config={
            "depth": num_layers,
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "out_hidden_size": hidden,
            "num_heads": num_heads,
            "patch_size": _QWEN_PATCH,
            "spatial_merge_size": _QWEN_MERGE,
            "temporal_patch_size": _QWEN_TEMPORAL_PATCH,
            "window_size": 112,
            "fullatt_block_indexes": [num_layers - 1],
        },
        text_config=_qwen_text_kwargs(tokenizer, hidden, num_layers, num_heads, num_kv_heads),
        dtype="float32",
        **_qwen_token_ids(tokenizer),
    )
    model = _init_model(Qwen2_5_VLForConditionalGeneration, config, seed)
    model.generation_config = _qwen_generation_config(tokenizer)
    image_processor, video_processor = _qwen_processors(image_size)
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    return model, processor


def build_tiny_qwen2_vl(
    output_dir: str | os.PathLike, *, seed: int = 0, hidden: int = 32, num_layers: int = 2, image_size: int = 56
) -> pathlib.Path:
    """
    Write a tiny random Qwen2-VL checkpoint (see [`make_tiny_qwen2_vl`]) to ``output_dir`` and return its path.

    Args:
        output_dir (`str` or `os.PathLike`):
            Directory to write into; created if missing.
        seed (`int`, *optional*, defaults to 0):
            Seed of the weight initialisation.
        hidden (`int`, *optional*, defaults to 32):
            Width of both towers.
        num_layers (`int`, *optional*, defaults to 2):
            Depth of both towers.
        image_size (`int`, *optional*, defaults to 56):
            Side of the square image the processor resizes to (a multiple of 28 px).
    """
    model, processor = make_tiny_qwen2_vl(seed=seed, hidden=hidden, num_layers=num_layers, image_size=image_size)
    return _save(model, processor, output_dir)


def build_tiny_qwen2_5_vl(
    output_dir: str | os.PathLike, *, seed: int = 0, hidden: int = 32, num_layers: int = 2, image_size: int = 56
) -> pathlib.Path:
    """
    Write a tiny random Qwen2.5-VL checkpoint (see [`make_tiny_qwen2_5_vl`]) to ``output_dir`` and return its path.

    Args:
        output_dir (`str` or `os.PathLike`):
            Directory to write into; created if missing.
        seed (`int`, *optional*, defaults to 0):
            Seed of the weight initialisation.
        hidden (`int`, *optional*, defaults to 32):
            Width of both towers.
        num_layers (`int`, *optional*, defaults to 2):
            Depth of both towers.
        image_size (`int`, *optional*, defaults to 56):
            Side of the square image the processor resizes to (a multiple of 28 px).
    """
    model, processor = make_tiny_qwen2_5_vl(seed=seed, hidden=hidden, num_layers=num_layers, image_size=image_size)
    return _save(model, processor, output_dir)
