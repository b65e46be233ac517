"""R-Adapt on LVLMs (LLaVA's CLIP tower, Qwen2-VL / Qwen2.5-VL's packed tower): exactness at α = 0, the anchor,
gradients through the filter, save / reload."""

import json

import pytest
import torch

from vlmrobust.models import create_model
from vlmrobust.models.lvlm_base import LVLM
from vlmrobust.models.radapt import (
    GaussianInputFilter,
    LlavaAnchorAdapter,
    QwenVLAnchorAdapter,
    RAdaptLVLM,
    RAdaptModel,
    adapter_for,
)

SPEC = "llava:tiny"
QUESTIONS = ["what shape is this?", "what colour is it?"]
ANSWERS = ["circle", "red"]


def frozen():
    return create_model(SPEC).eval().requires_grad_(False)  # frozen weights: compare like with like


def pixels(n=2, seed=0):
    return 0.25 + 0.5 * torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def tower(model):
    """LLaVA's CLIP vision transformer (`vision_tower.vision_model`, or the tower itself where it is unwrapped)."""
    vt = model.hf_model.model.vision_tower
    return getattr(vt, "vision_model", vt)


def block1_attention_on(model, px):
    """Block 1's attention output of LLaVA's tower, recomputed from the tower's own modules (no hooks)."""
    vm = tower(model)
    z = vm.pre_layrnorm(vm.embeddings(model.image_encoder.normalize(px)))
    layer = vm.encoder.layers[0]
    return layer.self_attn(hidden_states=layer.layer_norm1(z), attention_mask=None)[0]


def test_wrapping_a_llava_gives_an_lvlm_with_the_llava_adapter():
    m = RAdaptModel.training_free(frozen())
    assert isinstance(m, RAdaptLVLM) and isinstance(m, LVLM) and isinstance(m, RAdaptModel)
    assert isinstance(adapter_for(m.base), LlavaAnchorAdapter)
    assert m.image_encoder.adapter.attention() is tower(m).encoder.layers[0].self_attn
    assert m.model is m.base.model and m.device == m.base.device
    # nothing registered twice: the parameters are the base model's, the only new tensor is the anchor
    assert [n for n, _ in m.named_parameters() if not n.startswith("base.")] == ["image_encoder.anchors.4x4"]


def test_alpha_zero_and_no_filter_is_exactly_the_base_model():
    ref = frozen()
    m = RAdaptModel.training_free(frozen(), alpha=0.0, gaussian_filter=False).eval()
    x = pixels()
    batch = ref.build_batch(QUESTIONS, ANSWERS)
    with torch.no_grad():
        assert torch.equal(m.forward_logits(x, batch), ref.forward_logits(x, batch))
        assert torch.equal(m.answer_loss(x, batch), ref.answer_loss(x, batch))
    assert m.generate(x, QUESTIONS, max_new_tokens=4) == ref.generate(x, QUESTIONS, max_new_tokens=4)
    m1 = RAdaptModel.training_free(m.unload(), alpha=1.0, gaussian_filter=False).eval()
    with torch.no_grad():
        assert not torch.allclose(m1.answer_loss(x, batch), ref.answer_loss(x, batch), atol=1e-4)  # the anchor acts
        with m1.disable_adapter():
            assert torch.equal(m1.answer_loss(x, batch), ref.answer_loss(x, batch))
        assert torch.equal(m1.unload().answer_loss(x, batch), ref.answer_loss(x, batch))


def test_training_free_anchor_is_block1_attention_of_the_llava_tower_on_a_white_image():
    ref = frozen()
    m = RAdaptModel.training_free(frozen())
    with torch.no_grad():
        white = block1_attention_on(ref, torch.ones(1, 3, 32, 32))[0]
        grey = block1_attention_on(ref, torch.full((1, 3, 32, 32), 0.5))[0]
    width = ref.hf_model.config.vision_config.hidden_size
    assert m.anchor().shape == (1 + 4 * 4, width) and list(m.image_encoder.anchors) == ["4x4"]
    torch.testing.assert_close(m.anchor().detach(), white, rtol=0, atol=1e-6)
    assert not torch.allclose(white, grey, atol=1e-3)
    assert not m.anchor().requires_grad


@pytest.mark.parametrize("coefs", [dict(alpha=0.3), dict(alpha=1.0, attn_coef=0.5, anchor_coef=2.0)])
def test_block1_attention_is_mixed_inside_the_lvlm_forward(coefs):
    m = RAdaptModel.training_free(frozen(), gaussian_filter=False, **coefs).eval()
    a, b = m.settings.coefficients
    adapter = m.image_encoder.adapter
    raw, mixed = [], []
    h1 = adapter.attention().register_forward_hook(lambda _m, _a, o: raw.append(adapter.tokens(o)), prepend=True)
    h2 = adapter.attention().register_forward_hook(lambda _m, _a, o: mixed.append(adapter.tokens(o)))
    with torch.no_grad():
        m.answer_loss(pixels(), m.build_batch(QUESTIONS, ANSWERS))
        m.generate(pixels(), QUESTIONS, max_new_tokens=2)
    h1.remove()
    h2.remove()
    assert len(raw) == len(mixed) == 2  # once per answer_loss, once in generate's prefill
    for r, mx in zip(raw, mixed):
        torch.testing.assert_close(mx, a * r + b * m.anchor()[None], rtol=0, atol=1e-6)


def test_the_filter_is_in_the_pixel_path():
    m = RAdaptModel.training_free(frozen(), d0=35, d0_reference_size=224).eval()
    x = pixels()
    f = GaussianInputFilter(35, 224)
    ours = m.pixel_inputs(x)["pixel_values"]
    torch.testing.assert_close(ours, m.base.pixel_inputs(f(x))["pixel_values"], rtol=0, atol=0)
    assert not torch.allclose(ours, m.base.pixel_inputs(x)["pixel_values"], atol=1e-3)
    with m.disable_adapter():
        assert torch.equal(m.pixel_inputs(x)["pixel_values"], m.base.pixel_inputs(x)["pixel_values"])


def test_gradients_of_the_answer_loss_reach_the_pixels_through_the_filter():
    m = RAdaptModel.training_free(frozen(), d0=35, d0_reference_size=224).eval()
    batch = m.build_batch(QUESTIONS, ANSWERS)
    x = pixels()

    def loss(px):
        return m.answer_loss(px, batch).sum()

    xg = x.clone().requires_grad_()
    loss(xg).backward()
    assert xg.grad.abs().sum() > 0
    g = torch.Generator().manual_seed(1)
    v = torch.randn(x.shape, generator=g)
    v = v / v.norm()
    h = 1e-2
    with torch.no_grad():
        fd = (loss(x + h * v) - loss(x - h * v)) / (2 * h)
    an = (xg.grad * v).sum()
    assert abs(fd - an) <= 0.05 * abs(an) + 1e-4, (fd.item(), an.item())
    m2 = RAdaptModel.training_free(m.unload(), gaussian_filter=False).eval()
    xg2 = x.clone().requires_grad_()
    m2.answer_loss(xg2, batch).sum().backward()
    assert not torch.allclose(xg.grad, xg2.grad, atol=1e-5)


def test_rank_answers_runs_through_the_adapted_model():
    m = RAdaptModel.training_free(frozen(), alpha=0.0, gaussian_filter=False).eval()
    ref = frozen()
    x = pixels()
    assert m.rank_answers(x, QUESTIONS, ["circle", "square", "red"]) == \
        ref.rank_answers(x, QUESTIONS, ["circle", "square", "red"])


def test_save_reload_through_create_model_gives_identical_answer_losses(tmp_path):
    m = RAdaptModel.training_free(frozen(), alpha=0.8, d0=50).eval()
    with torch.no_grad():
        m.anchor().add_(0.1 * torch.randn_like(m.anchor()))  # so the test cannot pass by recomputing the anchor
    m.save_pretrained(tmp_path / "ra")
    cfg = json.loads((tmp_path / "ra" / "radapt_config.json").read_text())
    assert cfg["base_model"] == SPEC and cfg["alpha"] == 0.8 and cfg["anchor_grids"] == ["4x4"]
    assert not (tmp_path / "ra" / "model.safetensors").exists()  # no backbone weights in the folder
    r = create_model(f"radapt:{tmp_path / 'ra'}").eval()
    assert isinstance(r, RAdaptLVLM) and r.settings == m.settings
    assert torch.equal(r.anchor(), m.anchor())
    x = pixels()
    batch = m.build_batch(QUESTIONS, ANSWERS)
    with torch.no_grad():
        torch.testing.assert_close(r.answer_loss(x, batch), m.answer_loss(x, batch), rtol=0, atol=0)
    assert r.generate(x, QUESTIONS, max_new_tokens=3) == m.generate(x, QUESTIONS, max_new_tokens=3)


def test_model_guided_anchor_from_another_llava_tower():
    guide = create_model(SPEC, seed=1).eval().requires_grad_(False)
    mg = RAdaptModel.model_guided(frozen(), guide, alpha=0.0, gaussian_filter=False).eval()
    with torch.no_grad():
        guide_white = block1_attention_on(guide, torch.ones(1, 3, 32, 32))[0]
    torch.testing.assert_close(mg.anchor().detach(), guide_white, rtol=0, atol=1e-6)
    assert not torch.allclose(mg.anchor(), RAdaptModel.training_free(frozen()).anchor(), atol=1e-3)
    assert isinstance(mg, RAdaptLVLM) and mg.settings.paradigm == "model-guided"


# -- Qwen2-VL / Qwen2.5-VL: packed tokens, one anchor per (grid_t, grid_h, grid_w) -------------------------------
QWEN = ["qwen_vl:tiny", "qwen_vl:tiny-2.5"]
HW = (56, 84)  # grid (1, 4, 6): 24 patch tokens per image


def qwen_frozen(spec):
    return create_model(spec).eval().requires_grad_(False)


def block1_outputs(model, px):
    """Block 1's raw attention output of the (unwrapped) Qwen tower on `px`, read with a plain hook: packed
    `(B * t*h*w, width)`."""
    attn = model.hf_model.model.visual.blocks[0].attn
    out = []
    h = attn.register_forward_hook(lambda _m, _a, o: out.append((o[0] if isinstance(o, tuple) else o).detach()),
                                   prepend=True)
    with torch.no_grad():
        model.image_encoder(px)
    h.remove()
    return out[0]


@pytest.mark.parametrize("spec", QWEN)
def test_qwen_alpha_zero_and_no_filter_is_exactly_the_base_model(spec):
    ref = qwen_frozen(spec)
    m = RAdaptModel.training_free(qwen_frozen(spec), alpha=0.0, gaussian_filter=False).eval()
    assert isinstance(m, RAdaptLVLM) and isinstance(adapter_for(m.base), QwenVLAnchorAdapter)
    x = 0.25 + 0.5 * torch.rand(2, 3, *HW, generator=torch.Generator().manual_seed(0))
    batch = ref.build_batch(QUESTIONS, ANSWERS, image_hw=HW)
    with torch.no_grad():
        assert torch.equal(m.forward_logits(x, batch), ref.forward_logits(x, batch))
    assert m.generate(x, QUESTIONS, max_new_tokens=3) == ref.generate(x, QUESTIONS, max_new_tokens=3)
    m1 = RAdaptModel.training_free(m.unload(), alpha=1.0, gaussian_filter=False).eval()
    with torch.no_grad():
        assert not torch.allclose(m1.answer_loss(x, batch), ref.answer_loss(x, batch), atol=1e-4)
        with m1.disable_adapter():
            assert torch.equal(m1.answer_loss(x, batch), ref.answer_loss(x, batch))


@pytest.mark.parametrize("spec", QWEN)
def test_qwen_anchor_per_grid_is_block1_attention_on_a_white_image_spread_over_the_packed_batch(spec):
    ref = qwen_frozen(spec)
    m = RAdaptModel.training_free(qwen_frozen(spec), alpha=0.4, gaussian_filter=False).eval()
    s = ref.image_size
    assert list(m.image_encoder.anchors) == [f"1x{s // 14}x{s // 14}"]
    torch.testing.assert_close(m.anchor().detach(), block1_outputs(ref, torch.ones(1, 3, s, s)), rtol=0, atol=1e-6)
    white = block1_outputs(ref, torch.ones(1, 3, *HW))
    assert white.shape[0] == 24  # (grid_t * grid_h * grid_w, width)
    # packed per image: two white images give the one-image output twice (Qwen2.5's windows are per image)
    torch.testing.assert_close(block1_outputs(ref, torch.ones(2, 3, *HW)), white.repeat(2, 1), rtol=0, atol=1e-5)
    x = 0.25 + 0.5 * torch.rand(3, 3, *HW, generator=torch.Generator().manual_seed(0))
    adapter = m.image_encoder.adapter
    raw, mixed = [], []
    h1 = adapter.attention().register_forward_hook(lambda _m, _a, o: raw.append(adapter.tokens(o)), prepend=True)
    h2 = adapter.attention().register_forward_hook(lambda _m, _a, o: mixed.append(adapter.tokens(o)))
    with torch.no_grad():
        m.answer_loss(x, m.build_batch(QUESTIONS + ["?"], ANSWERS + ["!"], image_hw=HW))
    h1.remove()
    h2.remove()
    assert list(m.image_encoder.anchors) == [f"1x{s // 14}x{s // 14}", "1x4x6"]  # computed for the new grid, cached
    anchor = m.anchor((1, 4, 6))
    torch.testing.assert_close(anchor.detach(), white, rtol=0, atol=1e-6)
    assert raw[0].shape == (1, 3 * 24, anchor.shape[1])
    torch.testing.assert_close(mixed[0], 0.6 * raw[0] + 0.4 * anchor.repeat(3, 1)[None], rtol=0, atol=1e-6)
    with torch.no_grad():
        m.answer_loss(x[:1], m.build_batch(QUESTIONS[:1], ANSWERS[:1], image_hw=HW))
    assert m.anchor((1, 4, 6)) is anchor


@pytest.mark.parametrize("spec", QWEN)
def test_qwen_gradients_reach_the_pixels_through_the_filter_and_save_reload(spec, tmp_path):
    m = RAdaptModel.training_free(qwen_frozen(spec), alpha=0.8, d0=35, d0_reference_size=224).eval()
    x = 0.25 + 0.5 * torch.rand(2, 3, *HW, generator=torch.Generator().manual_seed(0))
    batch = m.build_batch(QUESTIONS, ANSWERS, image_hw=HW)
    torch.testing.assert_close(m.pixel_inputs(x)["pixel_values"],
                               m.base.pixel_inputs(GaussianInputFilter(35, 224)(x))["pixel_values"], rtol=0, atol=0)
    xg = x.clone().requires_grad_()
    m.answer_loss(xg, batch).sum().backward()
    assert xg.grad.abs().sum() > 0
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    v = v / v.norm()
    with torch.no_grad():
        fd = (m.answer_loss(x + 1e-2 * v, batch).sum() - m.answer_loss(x - 1e-2 * v, batch).sum()) / 2e-2
    an = (xg.grad * v).sum()
    assert abs(fd - an) <= 0.05 * abs(an) + 1e-4, (fd.item(), an.item())
    with torch.no_grad():
        for a in m.image_encoder.anchors.values():
            a.add_(0.1 * torch.randn_like(a))  # so reloading cannot pass by recomputing
        m.save_pretrained(tmp_path / "ra")
        r = create_model(f"radapt:{tmp_path / 'ra'}").eval()
        assert isinstance(r, RAdaptLVLM) and r.settings == m.settings and r.settings.base_model == spec
        assert sorted(r.image_encoder.anchors) == sorted(m.image_encoder.anchors)
        assert torch.equal(r.anchor((1, 4, 6)), m.anchor((1, 4, 6)))
        torch.testing.assert_close(r.answer_loss(x, batch), m.answer_loss(x, batch), rtol=0, atol=0)


def test_radapt_plus_trains_only_the_anchor_of_llavas_tower(image_dataset, tmp_path):
    from vlmrobust.trainers import RAdaptConfig, RAdaptTrainer

    model = create_model(SPEC)
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    args = RAdaptConfig(output_dir=str(tmp_path / "plus"), max_steps=2, per_device_train_batch_size=4,
                        learning_rate=1e-2, warmup_steps=0, epsilon=4 / 255, attack_steps=1,
                        attack_step_size=2 / 255, logging_steps=1, save_strategy="no", seed=0, use_cpu=True,
                        disable_tqdm=True, dataloader_num_workers=0)
    trainer = RAdaptTrainer(model, args, train_dataset=image_dataset)
    assert isinstance(trainer.vlm, RAdaptLVLM)
    assert [n for n, p in trainer.model.named_parameters() if p.requires_grad] == ["anchors.4x4"]
    init = trainer.vlm.anchor().detach().clone()
    trainer.train()
    trainer.save_model(str(tmp_path / "plus"))
    for k, v in model.model.state_dict().items():
        assert torch.equal(v, before[k]), f"frozen {k} changed"
    assert not torch.allclose(trainer.vlm.anchor(), init, atol=1e-5)
    r = create_model(f"radapt:{tmp_path / 'plus'}").eval()
    assert isinstance(r, RAdaptLVLM) and r.settings.paradigm == "radapt-plus"
    assert torch.equal(r.anchor(), trainer.vlm.anchor().detach())
    x = pixels()
    batch = r.build_batch(QUESTIONS, ANSWERS)
    with torch.no_grad():
        torch.testing.assert_close(r.answer_loss(x, batch), trainer.vlm.eval().answer_loss(x, batch), rtol=0, atol=0)


def test_saved_radapt_llava_is_evaluated_by_the_vqa_suite(tmp_path):
    """What the README says: an R-Adapt LLaVA folder runs through `vlmrobust eval --suite shapes_vqa`."""
    from vlmrobust.cli import main

    RAdaptModel.training_free(create_model(SPEC), alpha=0.5).save_pretrained(tmp_path / "ra")
    out = tmp_path / "out"
    assert main(["eval", "--model", f"radapt:{tmp_path / 'ra'}", "--suite", "shapes_vqa", "--output", str(out),
                 "--n-samples", "4", "--no-progress"]) == 0
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert sorted(c["kind"] for c in cells.values()) == ["vqa_attack", "vqa_attack", "vqa_clean"]
    assert all(c["n"] == 4 for c in cells.values())
