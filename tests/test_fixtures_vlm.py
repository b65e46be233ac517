"""The offline LLaVA / Qwen2-VL / Qwen2.5-VL fixtures reload through the stock transformers loaders and run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
)

from vlmrobust.testing import (
    LLAVA_SPECIAL_TOKENS,
    QWEN_SPECIAL_TOKENS,
    SHAPES_VQA_VOCAB,
    build_tiny_llava,
    build_tiny_qwen2_5_vl,
    build_tiny_qwen2_vl,
    make_tiny_llava,
    make_tiny_qwen2_5_vl,
    make_tiny_qwen2_vl,
)

QUESTION = "What colour is the circle?"
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
QWEN_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{QUESTION}<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@dataclass(frozen=True)
class Family:
    name: str
    build: Any
    make: Any
    model_cls: type
    processor_cls: type
    image_token: str
    prompt: str
    tokens_per_square_image: int


FAMILIES = [
    Family(
        "llava",
        build_tiny_llava,
        make_tiny_llava,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        "<image>",
        f"USER: <image>\n{QUESTION} ASSISTANT:",
        16,  # (32 px / 8 px) ** 2 patches, CLS dropped
    ),
    Family(
        "qwen2_vl",
        build_tiny_qwen2_vl,
        make_tiny_qwen2_vl,
        Qwen2VLForConditionalGeneration,
        Qwen2VLProcessor,
        "<|image_pad|>",
        QWEN_PROMPT,
        4,  # 56x56 px -> 4x4 patches of 14 px -> 2x2 merged
    ),
    Family(
        "qwen2_5_vl",
        build_tiny_qwen2_5_vl,
        make_tiny_qwen2_5_vl,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        "<|image_pad|>",
        QWEN_PROMPT,
        4,
    ),
]


def _image(width: int = 32, height: int = 32) -> Image.Image:
    image = Image.new("RGB", (width, height), (255, 255, 255))
    image.paste((255, 0, 0), (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    return image


@pytest.fixture(scope="module", params=FAMILIES, ids=lambda f: f.name)
def reloaded(request, tmp_path_factory):
    family: Family = request.param
    path = family.build(tmp_path_factory.mktemp(family.name))
    processor = AutoProcessor.from_pretrained(path)
    model = family.model_cls.from_pretrained(path).eval()
    return family, path, processor, model


def _inputs(processor, images):
    prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True)
    return processor(text=[prompt] * len(images), images=images, return_tensors="pt", padding=True)


def _placeholder_count_from_vision(family: Family, model, inputs) -> int:
    if family.name == "llava":
        features = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    else:
        features = model.get_image_features(
            pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"]
        ).pooler_output
    return sum(f.shape[0] for f in features)


def test_saved_checkpoint_is_complete_and_tiny(reloaded):
    family, path, processor, model = reloaded
    assert (path / "model.safetensors").is_file()
    assert (path / "model.safetensors").stat().st_size < 5 * 2**20
    assert (path / "tokenizer.json").is_file()
    assert (path / "chat_template.jinja").is_file()
    assert type(processor) is family.processor_cls
    assert model.dtype == torch.float32
    assert model.config.get_text_config().num_hidden_layers == 2
    assert model.config.get_text_config().hidden_size == 32


def test_config_token_ids_match_tokenizer(reloaded):
    family, _, processor, model = reloaded
    tokenizer = processor.tokenizer
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids(family.image_token)
    assert model.config.get_text_config().vocab_size == len(tokenizer)
    assert model.config.get_text_config().pad_token_id == tokenizer.pad_token_id is not None
    if family.name != "llava":
        ids = tokenizer.convert_tokens_to_ids
        assert model.config.video_token_id == ids("<|video_pad|>")
        assert model.config.vision_start_token_id == ids("<|vision_start|>")
        assert model.config.vision_end_token_id == ids("<|vision_end|>")
        assert model.generation_config.eos_token_id == [ids("<|im_end|>"), ids("<|endoftext|>")]


def test_chat_template_renders_family_prompt(reloaded):
    family, _, processor, _ = reloaded
    assert processor.apply_chat_template(MESSAGES, add_generation_prompt=True) == family.prompt


def test_tokenizer_knows_the_whole_prompt(reloaded):
    family, _, processor, _ = reloaded
    tokenizer = processor.tokenizer
    ids = tokenizer(family.prompt, add_special_tokens=False).input_ids
    assert tokenizer.unk_token_id not in ids
    assert ids.count(tokenizer.convert_tokens_to_ids(family.image_token)) == 1
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert "what colour is the circle?" in decoded
    assert family.image_token not in decoded


def test_forward_logits_shape_and_finite(reloaded):
    family, _, processor, model = reloaded
    inputs = _inputs(processor, [_image()])
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(processor.tokenizer))
    assert torch.isfinite(logits).all()


def test_reloaded_logits_equal_in_memory_model(reloaded):
    family, _, processor, model = reloaded
    fresh_model, _ = family.make(seed=0)
    inputs = _inputs(processor, [_image()])
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, fresh_model(**inputs).logits)


def test_seed_changes_weights_and_spares_global_rng(reloaded):
    family, _, processor, model = reloaded
    state = torch.get_rng_state()
    other, _ = family.make(seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    inputs = _inputs(processor, [_image()])
    with torch.no_grad():
        assert not torch.allclose(model(**inputs).logits, other(**inputs).logits)


@pytest.mark.parametrize("size", [(32, 32), (56, 56), (40, 30)])
def test_placeholder_count_matches_vision_tower(reloaded, size):
    family, _, processor, model = reloaded
    inputs = _inputs(processor, [_image(*size)])
    placeholders = int((inputs["input_ids"] == model.config.image_token_id).sum())
    with torch.no_grad():
        assert placeholders == _placeholder_count_from_vision(family, model, inputs)
    if family.name == "llava":
        patches = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
        assert placeholders == patches == family.tokens_per_square_image
    else:
        merge = processor.image_processor.merge_size
        assert placeholders == int(inputs["image_grid_thw"].prod()) // merge**2
        if size[0] == size[1]:
            assert placeholders == family.tokens_per_square_image


def test_batched_generate(reloaded):
    _, _, processor, model = reloaded
    prompts = [
        processor.apply_chat_template(MESSAGES, add_generation_prompt=True),
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many red squares?"}]}],
            add_generation_prompt=True,
        ),
    ]
    inputs = processor(text=prompts, images=[_image(), _image(56, 56)], return_tensors="pt", padding=True)
    assert (inputs["attention_mask"][:, 0] == 0).any()  # left padding
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    prompt_len = inputs["input_ids"].shape[1]
    assert out.shape[0] == 2 and prompt_len < out.shape[1] <= prompt_len + 3
    assert torch.equal(out[:, :prompt_len], inputs["input_ids"])
    assert all(isinstance(text, str) for text in processor.batch_decode(out[:, prompt_len:], skip_special_tokens=True))


def test_vocab_words_are_single_known_tokens():
    _, processor = make_tiny_llava()
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids(list(SHAPES_VQA_VOCAB))
    assert ids == list(range(len(LLAVA_SPECIAL_TOKENS), len(LLAVA_SPECIAL_TOKENS) + len(SHAPES_VQA_VOCAB)))
    for word in ("red", "circle", "left", "yes", "seven", "how"):
        assert tokenizer(word.upper(), add_special_tokens=False).input_ids == [tokenizer.convert_tokens_to_ids(word)]
    assert tokenizer("42", add_special_tokens=False).input_ids == tokenizer.convert_tokens_to_ids(["4", "2"])
    assert tokenizer("xylophone", add_special_tokens=False).input_ids == [tokenizer.unk_token_id]
    assert tokenizer("red").input_ids[0] == tokenizer.bos_token_id


def test_qwen_special_token_ids_are_their_positions():
    _, processor = make_tiny_qwen2_vl()
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS)) == list(range(len(QWEN_SPECIAL_TOKENS)))
    assert tokenizer("<|im_start|>user", add_special_tokens=False).input_ids == tokenizer.convert_tokens_to_ids(
        ["<|im_start|>", "user"]
    )


def test_qwen_image_size_sets_token_count(tmp_path):
    model, processor = make_tiny_qwen2_vl(image_size=112)
    inputs = _inputs(processor, [_image(64, 64)])
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 16  # 8x8 patches merged 2x2
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()
    path = build_tiny_qwen2_vl(tmp_path / "q112", image_size=112)
    reloaded_inputs = _inputs(AutoProcessor.from_pretrained(path), [_image(64, 64)])
    assert int((reloaded_inputs["input_ids"] == model.config.image_token_id).sum()) == 16
    with pytest.raises(ValueError, match="multiple of 28"):
        make_tiny_qwen2_vl(image_size=100)
