"""DiGraP for LVLM VQA (`DiGraPVQATrainer`, method `digrap_vqa`) on the tiny LLaVA and Qwen2-VL: ω = 0 and
`weight_space none` are plain AdamW on the LoRA adapters; the projection with ω = 1 removes the component along
θ − θ₀ (θ₀ = 0 for adapters) exactly when the two conflict; `adversarial` trains on attacked images; ω survives a
kill and resume; LP-FT's probe; the merged checkpoint; the recipe end to end; WiSE-FT of a LoRA delta.

Planted bugs, checked once by hand (each makes the named test fail):
* DiGraP's projection scaled by ω/2 instead of ω (`optim/digrap.py`): the conflict projection test.
* `RobustTrainer._load_optimizer_and_scheduler` not restoring the weight-space state: the resume test (ω and the
  adapters differ from the uninterrupted run).
* `compute_loss` ignoring `adversarial` (training on the clean images): the adversarial test.
"""

import copy
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from vlmrobust.data.shapes_vqa import ShapesVQA
from vlmrobust.layout import EXTRA_WEIGHTS_NAME
from vlmrobust.models import create_model
from vlmrobust.trainers import METHODS
from vlmrobust.trainers.digrap_trainer import LP_HEAD_NAME
from vlmrobust.trainers.digrap_vqa_config import DiGraPVQAConfig
from vlmrobust.trainers.digrap_vqa_trainer import DiGraPVQATrainer
from vlmrobust.vlm_recipe_main import VQAPixels

ROOT = Path(__file__).parent.parent
SPECS = ["llava:tiny", "qwen_vl:tiny"]


def vqa_args(out, **kw):
    base = dict(output_dir=str(out), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2,
                optim="adamw_torch", lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                max_grad_norm=0.0, epsilon=8 / 255, attack_steps=2, attack_step_size=4 / 255, logging_steps=1,
                save_strategy="no", seed=0, use_cpu=True, disable_tqdm=True, report_to="none", lora_r=4)
    base.update(kw)
    return DiGraPVQAConfig(**base)


class Recording(DiGraPVQATrainer):
    """Keeps, per micro-batch, the batch's clean images, the images the loss was computed on, and the text side."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, out = super().compute_loss(model, inputs, return_outputs=True)
        self.seen.append((inputs["pixel_values"].detach().clone(), out["images"].detach().clone(),
                          {k: v.clone() for k, v in self.targets(inputs).items()}))
        return (loss, out) if return_outputs else loss


def make(spec, out, callbacks=(), **kw):
    model = create_model(spec)
    data = VQAPixels(ShapesVQA(16, seed=0, image_size=model.image_size), model.preprocess)
    trainer = Recording(model, vqa_args(out, **kw), train_dataset=data, callbacks=list(callbacks))
    torch.manual_seed(1)
    with torch.no_grad():  # a random B: every adapter has a gradient (and a θ − θ₀) from step 0
        for n, p in trainer.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    trainer.seen = []
    return model, trainer


def trained(module):
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("spec", SPECS)
def test_omega_zero_and_no_weight_space_are_plain_adamw_on_the_adapters(spec, tmp_path):
    _, plain = make(spec, tmp_path / "none", weight_space="none")
    start = copy.deepcopy(plain.model)
    assert plain.reference is None  # nothing reads θ₀
    plain.train()
    _, zero = make(spec, tmp_path / "zero", weight_space="digrap", digrap_omega_init=0.0, digrap_learn_omega=False)
    assert zero.reference is not None and zero.reference.module is None  # θ₀: the trained tensors only
    assert set(zero.reference) == set(trained(zero.model)) and all(".lora_" in n for n in zero.reference)
    zero.train()
    got, got0 = trained(plain.model), trained(zero.model)
    assert got.keys() == got0.keys() and all(torch.equal(got[k], got0[k]) for k in got)
    # by hand: torch AdamW on the adapters, the answer CE of the batches the trainer saw
    params = {n: p for n, p in start.named_parameters() if p.requires_grad}
    initial = trained(start)
    assert params.keys() == got.keys() and all(".lora_" in n for n in params)
    opt = torch.optim.AdamW(list(params.values()), lr=1e-2, weight_decay=0.0)
    start.train()
    for _, x, batch in plain.seen:
        opt.zero_grad()
        start(x, batch).mean().backward()
        opt.step()
    for n, p in params.items():
        torch.testing.assert_close(got[n], p.detach(), rtol=1e-5, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")
    assert min((got[n] - initial[n]).abs().max().item() for n in got) > 1e-4  # every adapter tensor moved


@pytest.mark.parametrize("spec", SPECS)
def test_omega_one_projects_out_the_component_along_theta_minus_theta0_when_they_conflict(spec, tmp_path):
    _, trainer = make(spec, tmp_path, weight_space="digrap", digrap_omega_init=1.0, digrap_learn_omega=False,
                      max_steps=2)
    seen, original = [], trainer.weight_space.after_backward

    def spy(module, grad_scale=1.0):
        params = {n: p for n, p in module.named_parameters() if p.requires_grad}
        before = {n: p.grad.detach().clone() for n, p in params.items()}
        original(module, grad_scale)
        seen.append({n: (p.detach().clone(), before[n], p.grad.detach().clone()) for n, p in params.items()})

    trainer.weight_space.after_backward = spy
    trainer.train()
    assert len(seen) == 2
    conflicts = agreements = 0
    for step in seen:
        for n, (theta, g1, g) in step.items():
            assert ".lora_" in n and torch.equal(trainer.reference.anchor(n), torch.zeros_like(theta))
            g2 = theta.double()  # θ − θ₀ with θ₀ = 0 for adapters
            dot = float((g1.double() * g2).sum())
            if dot < 0:
                conflicts += 1
                want = g1.double() - dot / float((g2 * g2).sum()) * g2
                torch.testing.assert_close(g.double(), want, rtol=1e-5, atol=1e-9)
                assert abs(float((g.double() * g2).sum())) <= 1e-5 * abs(dot)  # no component left along θ − θ₀
            else:
                agreements += 1
                assert torch.equal(g, g1)  # no conflict: untouched
    assert conflicts and agreements, (conflicts, agreements)


def test_adversarial_trains_on_attacked_images(tmp_path):
    spec = SPECS[0]
    _, clean = make(spec, tmp_path / "clean", max_steps=2)
    start = copy.deepcopy(clean.model).eval()
    clean.train()
    _, adv = make(spec, tmp_path / "adv", max_steps=2, adversarial=True)
    adv.train()
    assert [h for h in adv.state.log_history if "adv_loss" in h] and all("adv_loss" not in h for h in
                                                                         clean.state.log_history)
    x, x_adv, batch = adv.seen[0]
    cx, cx_used, _ = clean.seen[0]
    assert torch.equal(x, cx) and torch.equal(cx_used, cx)  # same data order; clean training used the clean images
    delta = (x_adv - x).abs().max().item()
    assert 0 < delta <= 8 / 255 + 1e-6
    with torch.no_grad():  # the first step's attack ran at the starting weights: it raised the answer loss there
        assert start(x_adv, batch).mean() > start(x, batch).mean() + 1e-4
    a, c = trained(adv.model), trained(clean.model)
    assert max((a[k] - c[k]).abs().max().item() for k in a) > 1e-4


class Killed(Exception):
    pass


class KillAfterSave(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed


def test_omega_survives_a_kill_and_resume(tmp_path):
    spec, kw = SPECS[0], dict(weight_space="digrap", digrap_omega_init=0.5, digrap_mu=0.5, max_steps=4)
    _, full = make(spec, tmp_path / "full", **kw)
    full.train()
    omega = full.weight_space.hooks[0].omegas()
    assert omega and all(0.0 <= w <= 1.0 for w in omega.values()) and any(w != 0.5 for w in omega.values())
    run = tmp_path / "killed"
    _, killed = make(spec, run, callbacks=[KillAfterSave(2)], save_strategy="steps", save_steps=1, **kw)
    with pytest.raises(Killed):
        killed.train()
    ckpt = run / "checkpoint-2"
    assert (ckpt / EXTRA_WEIGHTS_NAME).is_file() and not (run / "checkpoint-3").exists()
    assert set(load_file(ckpt / EXTRA_WEIGHTS_NAME)) == set(trained(killed.model))
    at_kill = killed.weight_space.hooks[0].omegas()
    _, resumed = make(spec, run, save_strategy="steps", save_steps=1, **kw)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.state.global_step == 4
    got = resumed.weight_space.hooks[0].omegas()
    assert got.keys() == omega.keys() and at_kill != omega
    for n, w in omega.items():
        assert got[n] == pytest.approx(w, abs=1e-6), n
    want = trained(full.model)
    for n, p in trained(resumed.model).items():
        torch.testing.assert_close(p, want[n], rtol=1e-5, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")


def test_lp_ft_probes_the_output_head_then_fine_tunes_adapters_and_head(tmp_path):
    model, trainer = make(SPECS[0], tmp_path, weight_space="l2sp", l2sp_lambda=0.1, lp_steps=3,
                          lp_learning_rate=0.05, max_steps=2)
    name = trainer.head_name()
    assert name.endswith("lm_head.weight") and name in trainer.reference  # θ₀ of the head is kept
    start = trained(trainer.model)
    assert set(start) - {name} and all(".lora_" in n for n in set(start) - {name})
    probed = trainer.linear_probe()
    after_probe = trained(trainer.model)
    assert not torch.equal(after_probe[name], start[name])  # the probe moved the head...
    assert all(torch.equal(after_probe[n], start[n]) for n in start if n != name)  # ...and nothing else
    assert torch.equal(trainer.reference[name], probed) and torch.equal(after_probe[name], probed)
    torch.testing.assert_close(load_file(tmp_path / LP_HEAD_NAME)["weight"], probed)
    assert [n for n, p in trainer.model.named_parameters() if p.requires_grad] == list(start)  # flags restored
    trainer.train()  # does not probe again
    end = trained(trainer.model)
    assert not torch.equal(end[name], probed) and torch.equal(trainer.reference[name], probed)
    assert all(not torch.equal(end[n], after_probe[n]) for n in end)


def test_merged_checkpoint_reloads_with_plain_transformers(tmp_path):
    spec = SPECS[0]
    model, trainer = make(spec, tmp_path / "run", max_steps=1)
    trainer.train()
    trainer.save_model(str(tmp_path / "out"))
    x = torch.rand(2, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    batch = model.build_batch(["what shape?", "what colour?"], ["circle", "red"], image_hw=tuple(x.shape[-2:]))
    reloaded = create_model(f"llava:{tmp_path / 'out'}")
    assert not any("lora_" in k or "base_layer" in k for k in reloaded.model.state_dict())
    assert set(load_file(tmp_path / "out" / EXTRA_WEIGHTS_NAME)) == set(trained(trainer.model))
    want = model.answer_loss(x, batch).detach()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.answer_loss(x, batch), want, rtol=1e-5, atol=1e-5)
    # the adapters alone, in PEFT's layout, on a fresh base
    from peft import PeftModel

    trainer.save_adapter(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    fresh = create_model(spec)
    fresh.model = PeftModel.from_pretrained(fresh.model, str(tmp_path / "adapter")).base_model.model
    with torch.no_grad():
        torch.testing.assert_close(fresh.answer_loss(x, batch), want, rtol=1e-5, atol=1e-5)
        assert (fresh.answer_loss(x, batch) - create_model(spec).answer_loss(x, batch)).abs().max() > 1e-5


def test_registered_and_config_checks(tmp_path):
    m = METHODS.get("digrap_vqa")
    assert m.backends == ("llava", "qwen_vl", "paligemma") and m.recipe == "recipes/digrap_vqa.py"
    assert DiGraPVQATrainer.supported_zero_stages == (0, 2)
    with pytest.raises(ValueError, match="lora_r must be >= 1"):
        vqa_args(tmp_path, lora_r=0)
    with pytest.raises(ValueError, match="lora_vision"):
        vqa_args(tmp_path, lora_vision="all")
    with pytest.raises(ValueError, match="Nothing to adapt"):
        vqa_args(tmp_path, lora_target_modules=[])
    with pytest.raises(ValueError, match="lp_steps"):
        vqa_args(tmp_path, lp_steps=-1)
    with pytest.raises(ValueError, match="method 'digrap'"):
        DiGraPVQATrainer(create_model("vlmrobust:tiny-digits-clip"), vqa_args(tmp_path))


def test_lora_scale_interpolates_the_delta_and_restores_it():
    from vlmrobust.models.lora import add_lvlm_lora, lora_scale

    model = create_model("llava:tiny")
    add_lvlm_lora(model, 2, vision="none")
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p)  # a non-zero delta
    layer = next(m for m in model.modules() if hasattr(m, "lora_A") and isinstance(getattr(m, "scaling", None), dict))
    x = torch.randn(2, layer.in_features)
    with torch.no_grad():
        base, full = layer.base_layer(x), layer(x)
        with lora_scale(model, 0.25):
            quarter = layer(x)
        torch.testing.assert_close(quarter, base + 0.25 * (full - base), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer(x), full)
    with pytest.raises(ValueError, match="alpha"):
        with lora_scale(model, 1.5):
            pass


def test_digrap_vqa_recipe_on_the_tiny_llava(tmp_path):
    sys.path.insert(0, str(ROOT / "recipes"))
    import digrap_vqa

    out = tmp_path / "run"
    summary = digrap_vqa.main([
        "--config", str(ROOT / "recipes/configs/quickstart_digrap_vqa.yaml"), "--output_dir", str(out),
        "--sft_steps", "20", "--sft_samples", "64", "--train_samples", "32", "--eval_samples", "12",
        "--max_steps", "4", "--per_device_train_batch_size", "8", "--wise_alphas", "0", "0.5", "--use_cpu", "true",
        "--report_to", "none", "--disable_tqdm", "true"])
    assert set(summary["results"]) == {"before", "after", "wise-ft α=0", "wise-ft α=0.5"}
    for row in summary["results"].values():
        assert set(row) == {"id", "near", "far"} and all(0 <= v <= 1 for v in row.values())
    # WiSE-FT at α = 0 is the model before LoRA fine-tuning
    assert summary["results"]["wise-ft α=0"] == summary["results"]["before"]
    omega = summary["omega"]
    assert omega and all(0 <= w <= 1 for w in omega.values()) and all(".lora_" in n for n in omega)
    assert (out / "model.safetensors").is_file() and (out / EXTRA_WEIGHTS_NAME).is_file()
    assert (out / "vlmrobust_weight_space.pt").is_file() and not (out / "adapter_config.json").exists()
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "adapter" / "adapter_model.safetensors").is_file()
    import json

    saved = json.loads((out / "results.json").read_text())
    assert saved["weight_space"] == "digrap" and saved["method"] == "digrap_vqa" and saved["adversarial"] is False
    # an earlier run in output_dir is refused (not silently overwritten)
    with pytest.raises(FileExistsError, match="already holds a run"):
        digrap_vqa.main(["--config", str(ROOT / "recipes/configs/quickstart_digrap_vqa.yaml"), "--output_dir",
                         str(out), "--sft_steps", "0", "--max_steps", "1", "--use_cpu", "true"])
