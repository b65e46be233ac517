"""Tiny, randomly initialised LLaVA / Qwen2-VL / Qwen2.5-VL checkpoints built entirely offline.

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

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
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

__all__ = [
    "LLAVA_CHAT_TEMPLATE",
    "LLAVA_SPECIAL_TOKENS",
    "QWEN_CHAT_TEMPLATE",
    "QWEN_SPECIAL_TOKENS",
    "SHAPES_VQA_VOCAB",
    "build_tiny_llava",
    "build_tiny_qwen2_5_vl",
    "build_tiny_qwen2_vl",
    "make_tiny_llava",
    "make_tiny_qwen2_5_vl",
    "make_tiny_qwen2_vl",
    "make_tokenizer",
]

_COLOURS = (
    "red green blue yellow orange purple pink brown black white gray grey cyan magenta violet gold silver "
    "dark light bright colour color colours colors colored coloured"
)
_SHAPES = (
    "circle circles square squares triangle triangles rectangle rectangles star stars ellipse oval diamond "
    "hexagon pentagon cross heart line dot shape shapes object objects thing things"
)
_NUMBERS = (
    "zero one two three four five six seven eight nine ten eleven twelve first second third last 0 1 2 3 4 5 6 7 8 9"
)
_POSITIONS = (
    "left right top bottom above below center centre middle corner corners upper lower side next to near far "
    "between inside outside behind front over under beside around across edge"
)
_SIZES = "small large big tiny medium huge little larger smaller bigger biggest smallest largest"
_QUESTIONS = (
    "what which where who when why how many much is are was were does do did there here the a an of in on at "
    "and or with than more most fewer less least same different both any all none only no yes not it this that "
    "these those its s count number total size kind type position located contain contains containing has have "
    "image picture photo video scene background foreground true false answer question word single phrase using "
    "please describe tell me see shown show visible"
)
# Words the chat templates themselves emit ("USER:", "ASSISTANT:", Qwen's default system prompt, "Picture 1:").
_CHAT = "user assistant system you helpful"
_PUNCTUATION = ". , ? ! : ; ' \" ( ) - / [ ] + = * &"

SHAPES_VQA_VOCAB: tuple[str, ...] = tuple(
    dict.fromkeys(" ".join([_COLOURS, _SHAPES, _NUMBERS, _POSITIONS, _SIZES, _QUESTIONS, _CHAT, _PUNCTUATION]).split())
)
"""Lower-case word vocabulary of the shapes-VQA fixtures; each tokenizer puts its special tokens before it."""

LLAVA_SPECIAL_TOKENS: tuple[str, ...] = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
"""LLaVA tokenizer special tokens; their ids are their positions (``<image>`` is 4)."""

QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<unk>",
)
"""Qwen2-VL / Qwen2.5-VL tokenizer special tokens; their ids are their positions (``<|image_pad|>`` is 5)."""

# The llava-hf/llava-1.5 template: "USER: <image>\n{question} ASSISTANT: {answer}".
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ content['text'] + ' ' }}{% endgeneration %}"
    "{% else %}{{ content['text'] + ' ' }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# Qwen2-VL-Instruct's ChatML template (shared by Qwen2.5-VL).
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2-VL geometry: 14 px patches merged 2x2, so one merged token covers 28x28 px. Pinning min = max pixels to
# 56x56 (the default `image_size`) resizes every square image to 4x4 patches -> 4 placeholder tokens; other aspect
# ratios keep their shape (a 40x30 image becomes 84x56 px -> 6 tokens).
_QWEN_PATCH = 14
_QWEN_MERGE = 2
_QWEN_TEMPORAL_PATCH = 2


def make_tokenizer(
    special_tokens: tuple[str, ...],
    *,
    unk_token: str,
    bos_token: str | None = None,
    chat_template: str | None = None,
    padding_side: str = "left",
    **special_token_kwargs: str,
) -> PreTrainedTokenizerFast:
    """
    Build a word-level tokenizer over ``special_tokens + SHAPES_VQA_VOCAB``.

    Text is lower-cased, split on whitespace, punctuation and single digits; unknown words map to ``unk_token``.

    Args:
        special_tokens (`tuple[str, ...]`):
            Special tokens, given ids ``0 .. len(special_tokens) - 1`` in this order.
        unk_token (`str`):
            Token for out-of-vocabulary words; must be one of ``special_tokens``.
        bos_token (`str`, *optional*):
            When given, prepended to every encoded sequence (as Llama's tokenizer does).
        chat_template (`str`, *optional*):
            Jinja chat template stored on the tokenizer.
        padding_side (`str`, *optional*, defaults to `"left"`):
            Side padded in batches; left suits batched generation with decoder-only language models.
        **special_token_kwargs (`str`):
            Further named special tokens (``eos_token``, ``pad_token``, ...).
    """
    vocab = {token: i for i, token in enumerate(special_tokens + SHAPES_VQA_VOCAB)}
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token=unk_token))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits(individual_digits=True)]
    )
    # WordPiece's decoder with an unused prefix joins words with single spaces and tidies " ?" -> "?".
    backend.decoder = decoders.WordPiece(prefix="\x00", cleanup=True)
    if bos_token is not None:
        bos = (bos_token, vocab[bos_token])
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A {bos_token} $B", special_tokens=[bos]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=unk_token,
        bos_token=bos_token,
        chat_template=chat_template,
        model_max_length=512,
        padding_side=padding_side,
        **special_token_kwargs,
    )
    # Registering them as special keeps their vocabulary ids, matches them before lower-casing and pre-splitting
    # (so "<|im_start|>" is not cut at "|"), and lets `skip_special_tokens` drop them. transformers 5 saves them as
    # `extra_special_tokens`.
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in special_tokens if t != unk_token]})
    return tokenizer


def _check_sizes(hidden: int, num_heads: int, num_kv_heads: int) -> None:
    if hidden % num_heads or (hidden // num_heads) % 2:
        raise ValueError(f"hidden={hidden} must split into {num_heads} heads of even width")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}")


def _mrope_section(head_dim: int) -> list[int]:
    # Qwen splits the rotary half-dim into (temporal, height, width) as 16:24:24 at head_dim 128; keep that ratio.
    half = head_dim // 2
    spatial = (half * 3) // 8
    return [half - 2 * spatial, spatial, spatial]


def _init_model(model_cls, config, seed: int):
    # A private RNG scope: building a fixture must not reset the caller's global torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model.to(torch.float32).eval()


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


def _save(model, processor, output_dir: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(output_dir)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    return path


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
