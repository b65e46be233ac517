"""LLaVA / Qwen-VL backends: differentiable preprocessing, label masking, save / reload, swaps, bad combinations."""

import numpy as np
import pytest
import torch
from PIL import Image

from vlmrobust.models import create_model
from vlmrobust.models.llava_backend import Llava, check_tower_compatible
from vlmrobust.models.qwen_vl_backend import QwenVL, patchify


def _image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def llava():
    return create_model("llava:tiny")


@pytest.fixture(scope="module", params=["tiny", "tiny-2.5"])
def qwen(request):
    return create_model(f"qwen_vl:{request.param}")


# -- differentiable preprocessing == the processor ----------------------------------------------------------------
def test_llava_pixels_match_processor(llava):
    img = _image(40, 50)
    ref = llava.processor(images=img, text="<image>", return_tensors="pt")["pixel_values"]
    x = llava.preprocess(img)[None]
    assert x.shape == (1, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
    ours = llava.pixel_inputs(x)["pixel_values"]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("hw", [(56, 56), (56, 84)])
def test_qwen_patchify_matches_processor(qwen, hw):
    x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(0))
    ref = qwen.processor.image_processor(images=list(x), do_resize=False, do_rescale=False, return_tensors="pt")
    ours = qwen.pixel_inputs(x)
    assert ours["pixel_values"].shape == ref["pixel_values"].shape
    torch.testing.assert_close(ours["pixel_values"], ref["pixel_values"], atol=2e-6, rtol=0)
    torch.testing.assert_close(ours["image_grid_thw"], ref["image_grid_thw"])


def test_qwen_preprocess_uses_processor_resolution(qwen):
    img = _image(30, 40)  # smart_resize -> 56 x 84 (6 tokens)
    enc = qwen.processor.image_processor(images=img, return_tensors="pt")
    t, gh, gw = enc["image_grid_thw"][0].tolist()
    x = qwen.preprocess(img)
    assert x.shape == (3, gh * 14, gw * 14) == (3, 56, 84)
    assert qwen.num_image_tokens(*x.shape[-2:]) == gh * gw // 4
    with pytest.raises(ValueError, match="multiples of 28"):
        patchify(torch.rand(1, 3, 50, 56), 14, 2, 2)


@pytest.mark.parametrize("hw", [(30, 40), (100, 37), (64, 64), (57, 113)])
def test_qwen_resize_matches_processor_pixels_and_logits(qwen, hw):
    # with resizing on: preprocess (before the attack) + the differentiable path == the processor's pixel_values,
    # and the language model's logits agree
    img = _image(*hw)
    enc = qwen.processor.image_processor(images=img, return_tensors="pt")
    x = qwen.preprocess(img)[None]
    ours = qwen.pixel_inputs(x)
    torch.testing.assert_close(ours["image_grid_thw"], enc["image_grid_thw"])
    torch.testing.assert_close(ours["pixel_values"], enc["pixel_values"], atol=2e-6, rtol=0)
    batch = qwen.build_batch(["what shape is it?"], image_hw=tuple(x.shape[-2:]))
    with torch.no_grad():
        logits = qwen.forward_logits(x, batch)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        ref = qwen.model(**inputs, pixel_values=enc["pixel_values"], image_grid_thw=enc["image_grid_thw"],
                         use_cache=False).logits
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["llava", "qwen"])
def test_prompt_tokens_match_processor(name, llava, request):
    model = llava if name == "llava" else create_model("qwen_vl:tiny")
    img = _image(56, 56)
    x = model.preprocess(img)
    q = "what colour is the circle?"
    ref = model.processor(text=[model.prompt(q)], images=[img], return_tensors="pt")
    ours = model.build_batch([q], image_hw=tuple(x.shape[-2:]))
    assert ours["input_ids"].tolist() == ref["input_ids"].tolist()
    if "mm_token_type_ids" in ref:
        assert ours["mm_token_type_ids"].tolist() == ref["mm_token_type_ids"].tolist()


def test_gradient_reaches_pixels(llava, qwen):
    for model in (llava, qwen):
        s = model.image_size
        x = torch.rand(2, 3, s, s, requires_grad=True)
        batch = model.build_batch(["what shape is this?"] * 2, ["circle", "square"])
        model.answer_loss(x, batch).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0


# -- label masking --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["llava", "qwen"])
def test_labels_cover_exactly_the_answer(name, llava):
    model = llava if name == "llava" else create_model("qwen_vl:tiny")
    tok = model.tokenizer
    questions = ["what colour is the shape?", "how many shapes are there?"]
    answers = ["dark blue", "3"]
    batch = model.build_batch(questions, answers)
    image_id = tok.convert_tokens_to_ids(model.image_token)
    eot = tok.convert_tokens_to_ids(model.eot_token)
    for i, (q, a) in enumerate(zip(questions, answers)):
        ids, labels, mask = batch["input_ids"][i], batch["labels"][i], batch["attention_mask"][i]
        supervised = labels != -100
        prompt_len = len(tok(model.expand_image_tokens(model.prompt(q), model.image_size, model.image_size))
                         ["input_ids"])
        answer_ids = tok(a, add_special_tokens=False)["input_ids"] + [eot]
        # exactly the answer tokens + end-of-turn, right after the prompt
        assert supervised.nonzero().flatten().tolist() == list(range(prompt_len, prompt_len + len(answer_ids)))
        assert labels[supervised].tolist() == answer_ids == ids[supervised].tolist()
        assert not supervised[ids == image_id].any() and (ids == image_id).sum() == model.num_image_tokens(
            model.image_size, model.image_size)
        assert not supervised[mask == 0].any()
    assert (batch["attention_mask"] == 0).any()  # the batch really had padding to mask


# -- save / reload through plain transformers ----------------------------------------------------------------------
def test_llava_fare_checkpoint_reloads_with_plain_transformers(tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from vlmrobust.trainers import FAREConfig, FARETrainer

    model = create_model("llava:tiny")
    lm_before = {k: v.clone() for k, v in model.hf_model.model.language_model.state_dict().items()}
    tower_before = {k: v.clone() for k, v in model.hf_model.model.vision_tower.state_dict().items()}
    data = [{"pixel_values": torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i))} for i in range(8)]
    args = FAREConfig(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4,
                      learning_rate=1e-2, warmup_steps=0, attack_steps=2, epsilon=8 / 255, logging_steps=1,
                      save_strategy="no", use_cpu=True)
    trainer = FARETrainer(model, args, train_dataset=data)
    trainer.train()
    trainer.save_model(str(tmp_path / "out"))
    tower_after = model.hf_model.model.vision_tower.state_dict()
    assert any(not torch.equal(tower_before[k], tower_after[k]) for k in tower_before)
    for k, v in model.hf_model.model.language_model.state_dict().items():
        assert torch.equal(lm_before[k], v), k

    plain = LlavaForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    proc = AutoProcessor.from_pretrained(tmp_path / "out")
    img = _image(32, 32)
    enc = proc(text=["USER: <image>\nwhat shape is this? ASSISTANT:"], images=[img], return_tensors="pt")
    with torch.no_grad():
        ref = plain(**enc).logits
        ours = model.hf_model(**enc).logits
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    reloaded = create_model(f"llava:{tmp_path / 'out'}")
    x = reloaded.preprocess(img)[None]
    batch = reloaded.build_batch(["what shape is this?"], ["circle"])
    torch.testing.assert_close(reloaded.answer_loss(x, batch), model.answer_loss(x, batch), atol=1e-5, rtol=0)


def test_qwen_save_reload_identical_logits(tmp_path):
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    model = create_model("qwen_vl:tiny")
    with torch.no_grad():
        model.hf_model.model.visual.patch_embed.proj.weight.mul_(1.5)  # not the fixture's seed any more
    model.save_pretrained(tmp_path)
    plain = Qwen2VLForConditionalGeneration.from_pretrained(tmp_path).eval()
    proc = AutoProcessor.from_pretrained(tmp_path)
    img = _image(56, 56)
    enc = proc(text=[model.prompt("what colour is the shape?")], images=[img], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model.hf_model(**enc).logits, plain(**enc).logits, atol=1e-5, rtol=0)


# -- robust CLIP swap and bad combinations -----------------------------------------------------------------------
def _clip_vision(llava, tmp_path, seed=1, **overrides):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(**{**llava.hf_model.config.vision_config.to_dict(), **overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = CLIPVisionModel(cfg).eval()
    m.save_pretrained(tmp_path)
    return m


def test_swap_compatible_clip_tower(llava, tmp_path):
    model = create_model("llava:tiny")
    clip = _clip_vision(model, tmp_path)
    ids_before = [id(p) for p in model.image_encoder.parameters()]
    model.load_vision_tower(str(tmp_path))
    for k, v in clip.state_dict().items():
        assert torch.equal(model.hf_model.model.vision_tower.state_dict()[k], v)
    assert [id(p) for p in model.image_encoder.parameters()] == ids_before  # the encoder still trains the tower
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(model.encode_image(x)[0], clip(pixel_values=model.image_encoder.normalize(x),
                                                              output_hidden_states=True).hidden_states[-2][0, 1:])


def test_swap_incompatible_tower_names_the_fix(llava, tmp_path):
    from transformers import CLIPVisionConfig

    with pytest.raises(ValueError, match=r"336 px but this LLaVA expects 224 px.*ViT-L/14"):
        check_tower_compatible(CLIPVisionConfig(image_size=336, patch_size=14),
                               CLIPVisionConfig(image_size=224, patch_size=14))
    _clip_vision(llava, tmp_path / "big", image_size=48)
    with pytest.raises(ValueError, match="48 px but this LLaVA expects 32 px"):
        llava.load_vision_tower(str(tmp_path / "big"))
    _clip_vision(llava, tmp_path / "deep", num_hidden_layers=3)
    with pytest.raises(ValueError, match="num_hidden_layers: tower 3 vs LLaVA 2"):
        llava.load_vision_tower(str(tmp_path / "deep"))


def test_processor_from_another_model_is_refused(llava):
    from vlmrobust.testing import make_tiny_llava, make_tiny_qwen2_vl

    other_model, _ = make_tiny_llava(image_size=48)
    with pytest.raises(ValueError, match="processor belongs to another model.*same id / folder"):
        Llava(other_model, llava.processor, "mixed")
    qwen_model, qwen_proc = make_tiny_qwen2_vl()
    with pytest.raises(ValueError, match="tokenizer does not match the model.*same id / folder"):
        Llava(llava.hf_model, type(llava.processor)(image_processor=llava.processor.image_processor,
                                                    tokenizer=qwen_proc.tokenizer,
                                                    patch_size=8, num_additional_image_tokens=1,
                                                    vision_feature_select_strategy="default"), "mixed")
    qwen_proc.image_processor.merge_size = 1
    with pytest.raises(ValueError, match="merge_size is 1.*another model"):
        QwenVL(qwen_model, qwen_proc, "mixed")


def test_wrong_resolution_is_refused(llava):
    with pytest.raises(ValueError, match="model.preprocess"):
        llava.answer_loss(torch.rand(1, 3, 48, 48), llava.build_batch(["what?"], ["red"]))


# -- PEFT ------------------------------------------------------------------------------------------------------------
def test_lora_trains_only_adapters(tmp_path):
    model = create_model("llava:tiny", lora_r=4)
    trainable = [n for n, p in model.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all("language_model" in n for n in trainable)
    x = torch.rand(2, 3, 32, 32)
    batch = model.build_batch(["what colour is the shape?"] * 2, ["red", "blue"])
    model.answer_loss(x, batch).sum().backward()
    grads = [n for n, p in model.model.named_parameters() if p.grad is not None]
    assert set(grads) == set(trainable)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").is_file() and (tmp_path / "processor_config.json").is_file()


def test_tiny_fixture_geometry_through_create_model_and_recipe_args():
    from vlmrobust.vlm_recipe_main import LVLMScriptArguments, tiny_fixture_kwargs

    model = create_model("qwen_vl:tiny", tiny_kwargs={"image_size": 112})
    assert model.image_size == 112 and model.num_image_tokens(112, 112) == 16
    script = LVLMScriptArguments(model_name_or_path="qwen_vl:tiny", tiny_image_size=112, tiny_hidden=64)
    assert tiny_fixture_kwargs(script) == {"tiny_kwargs": {"image_size": 112, "hidden": 64}}
    script = LVLMScriptArguments(model_name_or_path="llava:tiny", tiny_hidden=64)
    assert tiny_fixture_kwargs(script) == {"tiny_kwargs": {"vision_hidden": 64, "text_hidden": 64}}
    assert tiny_fixture_kwargs(LVLMScriptArguments(model_name_or_path="qwen_vl:/some/dir", tiny_image_size=112)) == {}
    assert tiny_fixture_kwargs(LVLMScriptArguments(model_name_or_path="llava:tiny")) == {}
