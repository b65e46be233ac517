"""The offline tokenizers of the tiny LVLM fixtures: a word-level vocabulary over shapes-VQA's words plus each
family's special tokens and chat template, and helpers shared by the fixture builders."""

from __future__ import annotations

import os
import pathlib

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

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


def _save(model, processor, output_dir: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(output_dir)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    return path
