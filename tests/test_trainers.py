import json

import open_clip
import pytest
import torch

from vlmrobust.models import create_model
from vlmrobust.trainers import (
    METHODS,
    AdversarialConfig,
    AdversarialTrainer,
    EpsilonSchedule,
    FAREConfig,
    FARETrainer,
    TeCoAConfig,
    TeCoATrainer,
    load_config,
)


def fare_args(out, **kw):
    base = dict(output_dir=str(out), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3,
                warmup_steps=0, epsilon=4 / 255, attack_steps=2, attack_step_size=2 / 255, logging_steps=1,
                save_strategy="no", seed=0, use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)
    base.update(kw)
    return FAREConfig(**base)


def params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_attack_leaves_parameter_gradients_untouched(tiny_open_clip_dir, image_dataset, tmp_path):
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    trainer = FARETrainer(model, fare_args(tmp_path), train_dataset=image_dataset)
    enc = trainer.model
    marker = {n: torch.full_like(p, 0.5) for n, p in enc.named_parameters()}
    for n, p in enc.named_parameters():
        p.grad = marker[n].clone()
    enc.train()
    x = image_dataset.images[:4]
    target = trainer.reference_encoder(x).detach()
    x_adv = trainer.adversarial_examples(enc, x, target, lambda e, t: ((e - t) ** 2).sum(-1))
    for n, p in enc.named_parameters():
        assert torch.equal(p.grad, marker[n]), n
    assert enc.training
    assert (x_adv - x).abs().max() <= 4 / 255 + 1e-6 and not torch.equal(x_adv, x)


def test_fare_trains_vision_tower_only(tiny_open_clip_dir, image_dataset, tmp_path):
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    text_before = {k: v.clone() for k, v in model.model.state_dict().items() if not k.startswith("visual.")}
    vis_before = params(model.image_encoder)
    trainer = FARETrainer(model, fare_args(tmp_path), train_dataset=image_dataset)
    ref_before = params(trainer.reference_encoder)
    trainer.train()
    for k, v in params(model.image_encoder).items():
        assert not torch.equal(v, vis_before[k]), f"trainable {k} did not change"
    for k, v in model.model.state_dict().items():
        if k in text_before:
            assert torch.equal(v, text_before[k]), f"frozen {k} changed"
    for k, v in params(trainer.reference_encoder).items():
        assert torch.equal(v, ref_before[k]), f"reference {k} changed"
    logged = [h for h in trainer.state.log_history if "adv_loss" in h]
    assert logged and "clean_loss" in logged[0] and "epsilon" in logged[0]


def test_gradient_accumulation_matches_large_batch(tiny_open_clip_dir, image_dataset, tmp_path):
    # L2 PGD without random start is a continuous function of the gradients (a sign step is not: float noise
    # between batched and unbatched maths could flip a sign), and SGD does not amplify rounding like Adam's
    # normalisation; the encoder starts away from the reference so the loss and its gradients are substantial.
    def run(bs, ga, out):
        model = create_model(f"local-dir:{tiny_open_clip_dir}")
        args = fare_args(out, max_steps=2, per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                         attack_random_start=False, attack_norm="L2", epsilon=0.5, attack_step_size=0.25,
                         optim="sgd", learning_rate=1e-2)
        trainer = FARETrainer(model, args, train_dataset=image_dataset)
        with torch.no_grad():  # after the reference copy was taken; at θ = θ_ref the attack gradient is 0/0
            model.image_encoder.tower.proj.mul_(1.2)
        trainer.train()
        return params(model.image_encoder)

    a = run(4, 1, tmp_path / "a")
    b = run(1, 4, tmp_path / "b")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("style", ["fare", "mi-fgsm"])
def test_training_attack_gets_the_momentum_rule(style, tiny_open_clip_dir, image_dataset, tmp_path, monkeypatch):
    from vlmrobust.attacks import ATTACKS, PGD

    built = []

    class SpyPGD(PGD):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            built.append(self)

    # the training attack is built by name through the registry
    monkeypatch.setitem(ATTACKS._items, "pgd", SpyPGD)
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    trainer = FARETrainer(model, fare_args(tmp_path, max_steps=1, attack_momentum=0.9, attack_momentum_style=style),
                          train_dataset=image_dataset)
    trainer.train()
    assert built and all(a.momentum == 0.9 and a.momentum_style == style for a in built)
    with pytest.raises(ValueError, match="mi-fgsm"):
        fare_args(tmp_path, attack_momentum_style="nesterov")


def test_epsilon_schedule_values():
    s = EpsilonSchedule(8 / 255, "linear", start=10, end=20)
    assert s(0) == 0 and s(9) == 0 and s(10) == 0
    assert s(15) == pytest.approx(4 / 255)
    assert s(20) == pytest.approx(8 / 255) and s(1000) == pytest.approx(8 / 255)
    e = EpsilonSchedule(4 / 255, "linear", start=1, end=3, unit="epochs")
    assert e(5, steps_per_epoch=10) == 0 and e(20, steps_per_epoch=10) == pytest.approx(2 / 255)
    assert EpsilonSchedule(4 / 255)(0) == 4 / 255
    with pytest.raises(ValueError, match="start"):
        EpsilonSchedule(4 / 255, "linear", start=5, end=2)


def test_scheduled_epsilon_is_used_by_the_trainer(tiny_open_clip_dir, image_dataset, tmp_path):
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    args = fare_args(tmp_path, max_steps=4, epsilon_schedule="linear", epsilon_schedule_start=1,
                     epsilon_schedule_end=3, epsilon=6 / 255)
    trainer = FARETrainer(model, args, train_dataset=image_dataset)
    trainer.train()
    eps = [h["epsilon"] for h in trainer.state.log_history if "epsilon" in h]
    assert eps == pytest.approx([0, 0, 3 / 255, 6 / 255], abs=1e-6)


@pytest.mark.parametrize("drop_last,ga,per_epoch", [(True, 1, 3), (False, 1, 4), (True, 2, 2)])
def test_epoch_schedule_counts_steps_like_the_trainer(drop_last, ga, per_epoch, tiny_open_clip_dir, image_dataset,
                                                      tmp_path):
    # 16 images, batch 5: 3 full batches with dataloader_drop_last (the quickstart's setting), 4 without; with
    # accumulation 2 the 3 batches make 2 optimizer steps (the last one short), as the Trainer counts them
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    args = fare_args(tmp_path, max_steps=-1, num_train_epochs=2, per_device_train_batch_size=5,
                     dataloader_drop_last=drop_last, gradient_accumulation_steps=ga, epsilon_schedule="linear",
                     epsilon_schedule_start=0, epsilon_schedule_end=1, epsilon_schedule_unit="epochs",
                     epsilon=6 / 255)
    trainer = FARETrainer(model, args, train_dataset=image_dataset)
    assert trainer.steps_per_epoch == per_epoch  # before training: derived the same way
    trainer.train()
    assert trainer.state.global_step == 2 * per_epoch and trainer.steps_per_epoch == per_epoch
    eps = [h["epsilon"] for h in trainer.state.log_history if "epsilon" in h]
    # full ε from the first step of the second epoch on, not a step late
    expected = [6 / 255 * min(s / per_epoch, 1) for s in range(2 * per_epoch)]
    assert eps == pytest.approx(expected, abs=1e-6)


def test_resume_reaches_the_same_weights(tiny_open_clip_dir, image_dataset, tmp_path):
    def make(out, **kw):
        model = create_model(f"local-dir:{tiny_open_clip_dir}")
        return model, FARETrainer(model, fare_args(out, max_steps=4, **kw), train_dataset=image_dataset)

    m_full, t_full = make(tmp_path / "full")
    t_full.train()
    # interrupted run: killed right after the checkpoint at step 2 (same config, so same LR schedule) ...
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                control.should_training_stop = True

    m_a, t_a = make(tmp_path / "cut", save_strategy="steps", save_steps=2)
    t_a.add_callback(Kill())
    t_a.train()
    assert t_a.state.global_step == 2
    assert (tmp_path / "cut" / "checkpoint-2" / "open_clip_model.safetensors").is_file()
    # ... and a fresh process resumes it
    m_b, t_b = make(tmp_path / "cut", save_strategy="steps", save_steps=2)
    t_b.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-2"))
    full, resumed = params(m_full.image_encoder), params(m_b.image_encoder)
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=1e-5, atol=1e-6)


def test_checkpoint_reloads_in_plain_open_clip(tiny_open_clip_dir, image_dataset, tmp_path):
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    trainer = FARETrainer(model, fare_args(tmp_path / "out"), train_dataset=image_dataset)
    trainer.train()
    trainer.save_model(str(tmp_path / "out"))
    plain, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'out'}")
    plain.eval()
    model.eval()
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(model.mean).view(1, 3, 1, 1), torch.tensor(model.std).view(1, 3, 1, 1)
    torch.testing.assert_close(plain.encode_image((x - mean) / std), model.encode_image(x), rtol=0, atol=0)
    meta = json.loads((tmp_path / "out" / "vlmrobust_config.json").read_text())
    assert meta["method"] == "fare" and "vlmrobust_version" in meta
    cfg = load_config(tmp_path / "out")
    assert isinstance(cfg, FAREConfig) and cfg.epsilon == pytest.approx(4 / 255)


def test_hf_clip_fare_checkpoint_reloads_in_plain_transformers(tiny_hf_clip_dir, image_dataset, tmp_path):
    from transformers import CLIPModel

    model = create_model(f"hf-clip:{tiny_hf_clip_dir}")
    before = params(model.image_encoder)
    trainer = FARETrainer(model, fare_args(tmp_path / "out", max_steps=2), train_dataset=image_dataset)
    trainer.train()
    trainer.save_model(str(tmp_path / "out"))
    assert any(not torch.equal(v, before[k]) for k, v in params(model.image_encoder).items())
    plain = CLIPModel.from_pretrained(tmp_path / "out").eval()
    model.eval()
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(model.mean).view(1, 3, 1, 1), torch.tensor(model.std).view(1, 3, 1, 1)
    torch.testing.assert_close(plain.get_image_features(pixel_values=(x - mean) / std).pooler_output,
                               model.encode_image(x), rtol=1e-6, atol=1e-6)


def test_tecoa_trains_against_frozen_text_embeddings(tiny_open_clip_dir, image_dataset, tmp_path):
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    before = params(model.image_encoder)
    args = TeCoAConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3,
                       warmup_steps=0, attack_steps=2, logging_steps=1, save_strategy="no", use_cpu=True,
                       disable_tqdm=True)
    trainer = TeCoATrainer(model, args, classnames=image_dataset.classnames, train_dataset=image_dataset)
    emb = trainer.class_embeddings.clone()
    trainer.train()
    assert torch.equal(trainer.class_embeddings, emb)
    assert all(not torch.equal(v, before[k]) for k, v in params(model.image_encoder).items())


@pytest.mark.parametrize("loss,protocol", [("classic", "full"), ("trades", "full"), ("trades", "lp")])
def test_adversarial_training_protocols(tiny_open_clip_dir, image_dataset, tmp_path, loss, protocol):
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    enc_before = params(model.image_encoder)
    args = AdversarialConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                             learning_rate=1e-3, attack_steps=2, loss=loss, protocol=protocol, logging_steps=1,
                             save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = AdversarialTrainer(model, args, classnames=image_dataset.classnames, train_dataset=image_dataset)
    head_before = trainer.model.head.weight.detach().clone()
    trainer.train()
    assert not torch.equal(trainer.model.head.weight, head_before)
    changed = [not torch.equal(v, enc_before[k]) for k, v in params(model.image_encoder).items()]
    assert all(changed) if protocol == "full" else not any(changed)
    trainer.save_model(str(tmp_path / "out"))
    assert (tmp_path / "out" / "vlmrobust_extra.safetensors").is_file()


def test_bad_configs_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="4/255"):
        FAREConfig(output_dir=str(tmp_path), epsilon=4)
    with pytest.raises(ValueError, match="protocol"):
        AdversarialConfig(output_dir=str(tmp_path), protocol="partial")
    with pytest.raises(KeyError, match="fare"):
        METHODS.get("fair")
    with pytest.raises(TypeError, match="create_model"):
        FARETrainer(torch.nn.Linear(2, 2), fare_args(tmp_path))


def test_bf16_autocast_keeps_perturbation_fp32_and_in_ball(tiny_open_clip_dir, image_dataset, tmp_path):
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    before = params(model.image_encoder)
    trainer = FARETrainer(model, fare_args(tmp_path, bf16=True, max_steps=2), train_dataset=image_dataset)
    seen = []
    orig = trainer.adversarial_examples

    def spy(forward, x, target, loss_fn, **kw):
        out = orig(forward, x, target, loss_fn, **kw)
        seen.append((out.dtype, (out - x).abs().max().item(), out.min().item(), out.max().item()))
        return out

    trainer.adversarial_examples = spy
    trainer.train()
    assert seen and all(d == torch.float32 and dev <= 4 / 255 + 1e-6 and lo >= 0 and hi <= 1
                        for d, dev, lo, hi in seen)
    assert all(not torch.equal(v, before[k]) for k, v in params(model.image_encoder).items())
