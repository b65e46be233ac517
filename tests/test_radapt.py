import json

import open_clip
import pytest
import torch

from vlmrobust.models import create_model
from vlmrobust.models.radapt import GaussianInputFilter, RAdaptModel, adapter_for
from vlmrobust.trainers import METHODS, FAREConfig, FARETrainer, RAdaptConfig, RAdaptTrainer, load_config

BACKENDS = ["open_clip", "hf_clip"]


@pytest.fixture
def spec(request, tiny_open_clip_dir, tiny_hf_clip_dir):
    return f"local-dir:{tiny_open_clip_dir}" if request.param == "open_clip" else f"hf-clip:{tiny_hf_clip_dir}"


def frozen(spec):
    m = create_model(spec).eval()
    return m.requires_grad_(False)  # frozen parameters take another attention kernel: compare like with like


def block1_attention_on(model, pixels):
    """Block 1's attention output (B, tokens, width), recomputed from the tower's own modules (no hooks)."""
    enc = model.image_encoder
    x = enc.normalize(pixels)
    if model.backend == "open_clip":
        tower = enc.tower
        blk = tower.transformer.resblocks[0]
        z = blk.ln_1(tower._embeds(x))
        return blk.attn(z, z, z, need_weights=False)[0]
    vm = enc.tower.vision_model
    z = vm.pre_layrnorm(vm.embeddings(x))
    layer = vm.encoder.layers[0]
    return layer.self_attn(hidden_states=layer.layer_norm1(z), attention_mask=None)[0]


def fare_args(out, cls=FAREConfig, **kw):
    base = dict(output_dir=str(out), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2,
                warmup_steps=0, epsilon=4 / 255, attack_steps=2, attack_step_size=2 / 255, logging_steps=1,
                save_strategy="no", seed=0, use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)
    base.update(kw)
    return cls(**base)


@pytest.mark.parametrize("spec", BACKENDS, indirect=True)
def test_alpha_zero_and_no_filter_is_exactly_the_base_model(spec):
    ref = frozen(spec)
    m = RAdaptModel.training_free(frozen(spec), alpha=0.0, gaussian_filter=False).eval()
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(m.encode_image(x), ref.encode_image(x))
    assert torch.equal(m.encode_text(["a dog"]), ref.encode_text(["a dog"]))
    m11 = RAdaptModel.training_free(m.unload(), alpha=1.0, gaussian_filter=False).eval()
    assert not torch.allclose(m11.encode_image(x), ref.encode_image(x), atol=1e-3)  # the anchor does act


@pytest.mark.parametrize("spec", BACKENDS, indirect=True)
@pytest.mark.parametrize("coefs", [dict(alpha=0.3), dict(alpha=1.0, attn_coef=0.5, anchor_coef=2.0)])
def test_block1_attention_is_mixed_with_the_anchor(spec, coefs):
    m = RAdaptModel.training_free(frozen(spec), gaussian_filter=False, **coefs).eval()
    a, b = m.settings.coefficients
    assert (a, b) == ((1 - coefs["alpha"], coefs["alpha"]) if "attn_coef" not in coefs else (0.5, 2.0))
    x = torch.rand(2, 3, 32, 32)
    adapter = adapter_for(m.base)
    raw, mixed = [], []
    adapter.attention().register_forward_hook(lambda _m, _a, o: raw.append(adapter.tokens(o)), prepend=True)
    adapter.attention().register_forward_hook(lambda _m, _a, o: mixed.append(adapter.tokens(o)))
    m.encode_image(x)
    torch.testing.assert_close(mixed[0], a * raw[0] + b * m.anchor()[None], rtol=0, atol=1e-6)


@pytest.mark.parametrize("spec", BACKENDS, indirect=True)
def test_training_free_anchor_is_block1_attention_on_a_white_image(spec):
    m = RAdaptModel.training_free(frozen(spec))
    ref = frozen(spec)
    with torch.no_grad():
        white = block1_attention_on(ref, torch.ones(1, 3, 32, 32))[0]
        grey = block1_attention_on(ref, torch.full((1, 3, 32, 32), 0.5))[0]
    assert m.anchor().shape == (1 + 4 * 4, 32) and list(m.image_encoder.anchors) == ["4x4"]
    torch.testing.assert_close(m.anchor().detach(), white, rtol=0, atol=1e-6)
    assert not torch.allclose(white, grey, atol=1e-3)
    assert not m.anchor().requires_grad  # fixed unless R-Adapt+ trains it


def test_sequence_first_open_clip_layout_gives_the_same_model(tiny_open_clip_dir):
    spec = f"local-dir:{tiny_open_clip_dir}"
    bf = RAdaptModel.training_free(frozen(spec), alpha=0.7).eval()
    lnd = frozen(spec)
    lnd.image_encoder.tower.transformer.batch_first = False  # the (tokens, batch, width) layout of older open_clip
    for blk in lnd.image_encoder.tower.transformer.resblocks:
        blk.attn.batch_first = False
    lnd = RAdaptModel.training_free(lnd, alpha=0.7).eval()
    assert not lnd.image_encoder.adapter.batch_first
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(lnd.anchor(), bf.anchor(), rtol=0, atol=1e-6)
    torch.testing.assert_close(lnd.encode_image(x), bf.encode_image(x), rtol=1e-5, atol=1e-5)


def test_anchors_are_computed_per_patch_grid_and_cached(tiny_hf_clip_dir):
    base = frozen(f"hf-clip:{tiny_hf_clip_dir}")
    vm = base.image_encoder.tower.vision_model
    # a tower that takes other resolutions (interpolated position embeddings), as dynamic-resolution towers do
    base.image_encoder.tower.forward = lambda pv: vm(pixel_values=pv, interpolate_pos_encoding=True, return_dict=True)
    m = RAdaptModel.training_free(base, alpha=0.6).eval()
    x32, x48 = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 48, 48)
    y32 = m.encode_image(x32)
    m.encode_image(x48)
    assert list(m.image_encoder.anchors) == ["4x4", "6x6"] and m.anchor((6, 6)).shape == (1 + 6 * 6, 32)
    with torch.no_grad():
        white48 = vm.encoder.layers[0].self_attn(
            hidden_states=vm.encoder.layers[0].layer_norm1(vm.pre_layrnorm(vm.embeddings(
                base.image_encoder.normalize(torch.ones(1, 3, 48, 48)), interpolate_pos_encoding=True))),
            attention_mask=None)[0][0]
    torch.testing.assert_close(m.anchor((6, 6)).detach(), white48, rtol=0, atol=1e-6)
    anchor_6x6 = m.anchor((6, 6))
    m.encode_image(x48)
    assert m.anchor((6, 6)) is anchor_6x6  # cached, not recomputed
    assert torch.equal(m.encode_image(x32), y32)  # back at 32 px the 4x4 anchor is used again


def test_filter_huge_d0_is_identity_and_small_d0_removes_high_frequencies():
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(GaussianInputFilter(d0=1e7)(x), x, rtol=0, atol=1e-5)
    y = GaussianInputFilter(d0=35, reference_size=224)(x)  # D0 = 5 index units at 32 px
    spec_x = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1)).abs()
    spec_y = torch.fft.fftshift(torch.fft.fft2(y), dim=(-2, -1)).abs()
    u = torch.arange(32) - 16
    d = (u[:, None] ** 2 + u[None, :] ** 2).float().sqrt()
    high = d > 12
    assert spec_y[..., high].pow(2).sum() < 1e-2 * spec_x[..., high].pow(2).sum()  # H² < 3e-3 out there
    f = GaussianInputFilter(d0=35, reference_size=224, clamp=False)
    spec_f = torch.fft.fftshift(torch.fft.fft2(f(x)), dim=(-2, -1)).abs()
    torch.testing.assert_close(spec_f, f.transfer_function(32, 32) * spec_x, rtol=0, atol=1e-4)
    torch.testing.assert_close(y.mean((-2, -1)), x.mean((-2, -1)), rtol=0, atol=1e-5)  # DC kept per channel
    white = torch.ones(1, 3, 32, 32)
    torch.testing.assert_close(GaussianInputFilter(d0=2)(white), white)
    f = GaussianInputFilter(d0=35, reference_size=224)
    assert f.cutoff(32, 32) == (5.0, 5.0) and f.cutoff(448, 224) == (70.0, 35.0)
    assert GaussianInputFilter(d0=35, scaling="none").cutoff(32, 32) == (35.0, 35.0)
    # the paper's H: 1 at the centre, exp(-1/2) at distance D0
    h = f.transfer_function(32, 32)
    assert h[16, 16] == 1 and abs(h[16, 21].item() - torch.exp(torch.tensor(-0.5)).item()) < 1e-6


def test_filter_gradient_is_the_filter_itself():
    # H is real and even, so the filter is self-adjoint: d<v, F(x)>/dx = F(v) where the clamp does not bind
    f = GaussianInputFilter(d0=35, reference_size=224, clamp=False).double()
    x = (0.25 + 0.5 * torch.rand(1, 3, 16, 16, dtype=torch.float64)).requires_grad_()
    v = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    (f(x) * v).sum().backward()
    torch.testing.assert_close(x.grad, f(v))
    assert torch.autograd.gradcheck(GaussianInputFilter(d0=20), (x.detach().clone().requires_grad_(),))


@pytest.mark.parametrize("spec", BACKENDS, indirect=True)
def test_gradients_reach_the_pixels_through_the_filter(spec):
    m = RAdaptModel.training_free(frozen(spec), d0=35, d0_reference_size=224).eval()
    g = torch.Generator().manual_seed(0)
    x = 0.25 + 0.5 * torch.rand(2, 3, 32, 32, generator=g)
    w = torch.randn(m.encode_image(x).shape[-1], generator=g)

    def loss(px):
        return (m.encode_image(px) @ w).sum()

    xg = x.clone().requires_grad_()
    loss(xg).backward()
    assert xg.grad.abs().sum() > 0
    # the analytic directional derivative matches finite differences: nothing detached, no gradient masking
    v = torch.randn(x.shape, generator=g)
    v = v / v.norm()
    h = 1e-2
    with torch.no_grad():
        fd = (loss(x + h * v) - loss(x - h * v)) / (2 * h)
    an = (xg.grad * v).sum()
    assert abs(fd - an) <= 0.05 * abs(an) + 1e-4, (fd.item(), an.item())
    # and the filter is in that graph: the gradient differs from the same model without it
    m2 = RAdaptModel.training_free(m.unload(), gaussian_filter=False).eval()
    xg2 = x.clone().requires_grad_()
    (m2.encode_image(xg2) @ w).sum().backward()
    assert not torch.allclose(xg.grad, xg2.grad, atol=1e-4)


@pytest.mark.parametrize("spec", BACKENDS, indirect=True)
def test_save_reload_through_create_model_is_identical(spec, tmp_path):
    m = RAdaptModel.training_free(frozen(spec), alpha=0.8, d0=50).eval()
    with torch.no_grad():
        m.anchor().add_(0.1 * torch.randn_like(m.anchor()))  # so the test cannot pass by recomputing the anchor
    m.save_pretrained(tmp_path / "ra")
    cfg = json.loads((tmp_path / "ra" / "radapt_config.json").read_text())
    assert cfg["method"] == "radapt" and cfg["base_model"] == spec and cfg["alpha"] == 0.8 and cfg["d0"] == 50
    assert cfg["anchor_grids"] == ["4x4"] and "vlmrobust_version" in cfg
    r = create_model(f"radapt:{tmp_path / 'ra'}").eval()
    assert isinstance(r, RAdaptModel) and r.settings == m.settings
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(r.anchor(), m.anchor())
    torch.testing.assert_close(r.encode_image(x), m.encode_image(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="radapt:"):
        create_model(f"local-dir:{tmp_path / 'ra'}")
    with pytest.raises(Exception):  # noqa: B017 - no backbone weights, not open_clip's layout
        open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'ra'}")


def test_unload_restores_the_base_and_double_wrapping_is_refused(tiny_open_clip_dir):
    spec = f"local-dir:{tiny_open_clip_dir}"
    ref, base = frozen(spec), frozen(spec)
    m = RAdaptModel.training_free(base)
    with pytest.raises(ValueError, match="unload"):
        RAdaptModel.training_free(base)
    x = torch.rand(2, 3, 32, 32)
    with m.disable_adapter():
        assert torch.equal(m.encode_image(x), ref.encode_image(x))
    assert not torch.allclose(m.encode_image(x), ref.encode_image(x), atol=1e-3)
    assert torch.equal(m.unload().encode_image(x), ref.encode_image(x))


def test_model_guided_anchor_comes_from_a_fare_checkpoint(tiny_open_clip_dir, image_dataset, tmp_path):
    spec = f"local-dir:{tiny_open_clip_dir}"
    fare = create_model(spec)
    FARETrainer(fare, fare_args(tmp_path / "fare", max_steps=2), train_dataset=image_dataset).train()
    fare.save_pretrained(tmp_path / "fare")
    guide = frozen(f"local-dir:{tmp_path / 'fare'}")
    mg = RAdaptModel.model_guided(frozen(spec), guide, alpha=0.0, gaussian_filter=False).eval()
    tf = RAdaptModel.training_free(frozen(spec))
    with torch.no_grad():
        guide_white = block1_attention_on(guide, torch.ones(1, 3, 32, 32))[0]
    torch.testing.assert_close(mg.anchor().detach(), guide_white, rtol=0, atol=1e-6)
    assert not torch.allclose(mg.anchor(), tf.anchor(), atol=1e-3)
    assert mg.settings.paradigm == "model-guided" and mg.settings.guide_model == f"local-dir:{tmp_path / 'fare'}"
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(mg.encode_image(x), frozen(spec).encode_image(x))  # the backbone is the clean one
    with pytest.raises(KeyError, match="8x8"):  # the guide is not kept: other resolutions are refused clearly
        mg.image_encoder(torch.rand(1, 3, 64, 64))


def test_radapt_plus_trains_only_the_anchor(tiny_open_clip_dir, image_dataset, tmp_path):
    spec = f"local-dir:{tiny_open_clip_dir}"
    model = create_model(spec)
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    args = fare_args(tmp_path / "plus", cls=RAdaptConfig, d0=70)
    trainer = RAdaptTrainer(model, args, train_dataset=image_dataset)
    init = trainer.vlm.anchor().detach().clone()
    torch.testing.assert_close(init, RAdaptModel.training_free(frozen(spec)).anchor().detach())
    trained = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trained == ["anchors.4x4"]
    trainer.train()
    trainer.save_model(str(tmp_path / "plus"))
    for k, v in model.model.state_dict().items():
        assert torch.equal(v, before[k]), f"frozen {k} changed"
    assert not torch.allclose(trainer.vlm.anchor(), init, atol=1e-4)
    logged = [h for h in trainer.state.log_history if "adv_loss" in h]
    assert logged and "clean_loss" in logged[0]
    r = create_model(f"radapt:{tmp_path / 'plus'}").eval()
    assert r.settings.paradigm == "radapt-plus" and r.settings.d0 == 70
    assert torch.equal(r.anchor(), trainer.vlm.anchor().detach())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():  # the trained anchor still requires grad: same kernels only without autograd
        torch.testing.assert_close(r.encode_image(x), trainer.vlm.eval().encode_image(x), rtol=0, atol=0)
    assert load_config(tmp_path / "plus").method == "radapt" and METHODS.get("radapt").trainer_class is RAdaptTrainer


def test_radapt_plus_checkpoints_resume_with_the_trained_anchor(tiny_open_clip_dir, image_dataset, tmp_path):
    spec = f"local-dir:{tiny_open_clip_dir}"
    args = fare_args(tmp_path / "ckpt", cls=RAdaptConfig, max_steps=2, save_strategy="steps", save_steps=2)
    first = RAdaptTrainer(create_model(spec), args, train_dataset=image_dataset)
    first.train()
    ckpt = tmp_path / "ckpt" / "checkpoint-2"
    assert (ckpt / "radapt_anchor.safetensors").is_file() and not (ckpt / "open_clip_model.safetensors").exists()
    second = RAdaptTrainer(create_model(spec), fare_args(tmp_path / "ckpt", cls=RAdaptConfig, max_steps=3),
                           train_dataset=image_dataset)
    assert not torch.equal(second.vlm.anchor(), first.vlm.anchor())
    second._load_from_checkpoint(str(ckpt))
    assert torch.equal(second.vlm.anchor(), first.vlm.anchor())
    second.train(resume_from_checkpoint=str(ckpt))
    assert second.state.global_step == 3


def test_radapt_plus_loss_is_fare_against_the_standard_model(tiny_open_clip_dir, image_dataset, tmp_path):
    spec = f"local-dir:{tiny_open_clip_dir}"
    trainer = RAdaptTrainer(create_model(spec), fare_args(tmp_path, cls=RAdaptConfig), train_dataset=image_dataset)
    x = image_dataset.images[:4]
    x_adv = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)
    trainer.adversarial_examples = lambda *a, **k: x_adv
    loss = trainer.compute_loss(trainer.model, {"pixel_values": x})
    ref = frozen(spec)
    expected = ((trainer.vlm.encode_image(x_adv) - ref.encode_image(x)) ** 2).sum(-1).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_trainer_refuses_a_model_whose_settings_differ(tiny_open_clip_dir, tmp_path):
    m = RAdaptModel.training_free(frozen(f"local-dir:{tiny_open_clip_dir}"), alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        RAdaptTrainer(m, fare_args(tmp_path, cls=RAdaptConfig))
    with pytest.raises(ValueError, match="guide_model"):
        fare_args(tmp_path, cls=RAdaptConfig, anchor_init="model-guided")


def test_recipe_runs_all_paradigms_and_writes_the_side_by_side_table(tiny_open_clip_dir, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent.parent / "recipes"))
    import radapt_clip

    out = tmp_path / "run"
    res = radapt_clip.main([
        "--config", str(Path(__file__).parent.parent / "recipes/configs/quickstart_radapt.yaml"),
        "--model_name_or_path", f"local-dir:{tiny_open_clip_dir}", "--guide_model", f"local-dir:{tiny_open_clip_dir}",
        "--guide_label", "guide", "--output_dir", str(out), "--max_steps", "2", "--max_train_samples", "16",
        "--per_device_train_batch_size", "8", "--attack_steps", "1", "--eval_max_samples", "8",
        "--eval_attack_steps", "2", "--eval_epsilons", "4/255", "--disable_tqdm", "true"])
    assert list(res) == ["base (standard)", "R-Adapt (training-free)", "R-Adapt (model-guided)", "R-Adapt+", "guide"]
    report = (out / "report.md").read_text()
    assert "| R-Adapt+ |" in report and "ε=4/255" in report and "α = 0.25" in report
    assert (out / "acc_vs_eps_digits.png").is_file() and json.loads((out / "results.json").read_text())["run"]["paradigms"]
    for p in ("training-free", "model-guided", "radapt-plus"):
        m = create_model(f"radapt:{out / p}")
        assert m.settings.paradigm == p and m.settings.alpha == 0.25
        m.unload()
    with pytest.raises(ValueError, match="--paradigm"):
        radapt_clip.main(["--paradigm", "bogus", "--output_dir", str(out)])
