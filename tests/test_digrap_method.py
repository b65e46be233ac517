"""The `digrap` method (CLIP classifier fine-tuning with DiGraP or a baseline): full fine-tuning and LoRA (merged
native checkpoint, resumable adapters, θ₀ = 0 for adapters), LP-FT's probe-then-fine-tune, the adversarial option."""

import open_clip
import pytest
import torch
from conftest import TensorImageDataset
from safetensors.torch import load_file

from vlmrobust.layout import EXTRA_WEIGHTS_NAME
from vlmrobust.models import create_model
from vlmrobust.optim import DiGraP
from vlmrobust.trainers import METHODS
from vlmrobust.trainers.digrap_config import DiGraPConfig
from vlmrobust.trainers.digrap_trainer import LP_HEAD_NAME, DiGraPTrainer


def _args(out, **kw):
    base = dict(output_dir=str(out), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2,
                lr_scheduler_type="constant", warmup_steps=0, use_cpu=True, save_strategy="no", report_to="none",
                disable_tqdm=True, seed=0, logging_steps=1, attack_steps=1, attack_step_size=2 / 255)
    return DiGraPConfig(**{**base, **kw})


def _trainer(model_dir, out, **kw):
    model = create_model(f"local-dir:{model_dir}")
    data = TensorImageDataset()
    return model, DiGraPTrainer(model, _args(out, **kw), train_dataset=data, classnames=data.classnames)


def test_registered_with_its_metadata(tmp_path):
    m = METHODS.get("digrap")
    assert (m.needs_classnames, m.paper, m.recipe) == (True, "2502.15895", "recipes/digrap_clip.py")
    assert not m.is_classifier(_args(tmp_path)) and m.is_classifier(_args(tmp_path, train_head=True))
    assert _args(tmp_path).weight_space == "digrap"
    with pytest.raises(ValueError, match="train_head"):
        _args(tmp_path, lp_steps=5)


def test_full_fine_tuning_saves_a_plain_open_clip(tiny_open_clip_dir, tmp_path):
    model, trainer = _trainer(tiny_open_clip_dir, tmp_path, adversarial=True)
    before = {n: p.detach().clone() for n, p in model.image_encoder.named_parameters()}
    head = trainer.model.head.weight.detach().clone()
    trainer.train()
    assert [type(t) for t in trainer.weight_space.transforms] == [DiGraP]
    moved = [n for n, p in model.image_encoder.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before) and torch.equal(trainer.model.head.weight, head)  # frozen zero-shot head
    trainer.save_model(str(tmp_path / "out"))
    oc, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'out'}")
    torch.testing.assert_close(oc.visual.proj, model.model.visual.proj)


def test_lora_trains_adapters_merges_on_save_and_resumes(tiny_open_clip_dir, tmp_path):
    model, trainer = _trainer(tiny_open_clip_dir, tmp_path / "run", lora_r=2, max_steps=2, save_strategy="steps",
                              save_steps=1, learning_rate=5e-2)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # θ₀ = 0 for the adapters: DiGraP's g₂ is the adapter itself
    name = next(n for n in trainable if ".lora_A." in n)
    assert torch.equal(trainer.reference.anchor(name), torch.zeros_like(trainer.reference[name]))
    assert trainer.reference[name].abs().sum() > 0  # (their snapshot is the random initialisation)
    x = torch.rand(3, 3, 32, 32)
    trainer.train()
    with torch.no_grad():
        want = model.image_encoder(x)
    trainer.save_model(str(tmp_path / "out"))
    merged = create_model(f"local-dir:{tmp_path / 'out'}")  # plain open_clip layout, adapters merged
    sd = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'out'}")[0].state_dict()
    assert not any("lora" in k or "base_layer" in k for k in sd)
    with torch.no_grad():
        torch.testing.assert_close(merged.image_encoder(x), want, rtol=1e-4, atol=1e-5)
    # resume from checkpoint-1 (adapters from the extra-weights file) reaches the same weights
    assert (tmp_path / "run" / "checkpoint-1" / EXTRA_WEIGHTS_NAME).is_file()
    model2, trainer2 = _trainer(tiny_open_clip_dir, tmp_path / "run2", lora_r=2, max_steps=2,
                                save_strategy="steps", save_steps=1, learning_rate=5e-2)
    trainer2.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1"))
    for (n, a), b in zip(trainer.model.named_parameters(), trainer2.model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")


def test_lp_ft_probes_the_head_then_fine_tunes_everything(tiny_open_clip_dir, tmp_path):
    model, trainer = _trainer(tiny_open_clip_dir, tmp_path, weight_space="l2sp", train_head=True, lp_steps=5,
                              lp_learning_rate=0.05, max_steps=2)
    zero_shot = trainer.model.head.weight.detach().clone()
    tower = {n: p.detach().clone() for n, p in model.image_encoder.named_parameters()}
    trainer._linear_probe(resumed=False)
    probed = trainer.model.head.weight.detach().clone()
    assert not torch.allclose(probed, zero_shot)  # the probe moved the head...
    assert all(torch.equal(p, tower[n]) for n, p in model.image_encoder.named_parameters())  # ...not the tower
    assert torch.equal(trainer.reference["head.weight"], probed)  # the FT stage is anchored at the probed head
    assert (tmp_path / LP_HEAD_NAME).is_file()
    trainer.train()  # probes (from the probed head: a fresh run would start at the zero-shot head), then fine-tunes
    probed = load_file(tmp_path / LP_HEAD_NAME)["weight"]
    assert torch.equal(trainer.reference["head.weight"], probed)
    assert not torch.equal(trainer.model.head.weight, probed)
    assert not torch.equal(model.image_encoder.state_dict()["tower.proj"], tower["tower.proj"])


def test_lp_ft_train_alone_runs_the_probe_first(tiny_open_clip_dir, tmp_path):
    """`train()` by itself (no prior `_linear_probe` call) probes the head, saves it and anchors θ₀ of the head there."""
    model, trainer = _trainer(tiny_open_clip_dir, tmp_path, weight_space="l2sp", train_head=True, lp_steps=3,
                              lp_learning_rate=0.05, max_steps=1)
    zero_shot = trainer.model.head.weight.detach().clone()
    trainer.train()
    probed = load_file(tmp_path / LP_HEAD_NAME)["weight"]
    assert not torch.allclose(probed, zero_shot)
    assert torch.equal(trainer.reference["head.weight"], probed)
