"""Weight-space hooks (`vlmrobust.optim`): θ₀ shared, gradient transforms once per step on the full gradient, L2-SP
against a hand-computed step, post-step constraints, and their state across a resume. The same hooks under DDP and
DeepSpeed ZeRO-2 / 3 are compared with one process in test_scale.py (`@ws` jobs of dist_train_run.py)."""

import pytest
import torch
from conftest import TensorImageDataset
from ws_hooks import EMAGradient, GradientLog, L2Ball

from vlmrobust.layout import WEIGHT_SPACE_STATE_NAME
from vlmrobust.models import create_model
from vlmrobust.optim import L2SP, ReferenceWeights, WeightSpaceRunner
from vlmrobust.trainers import FAREConfig, FARETrainer, TeCoAConfig, TeCoATrainer


def _args(out, **kw):
    base = dict(output_dir=str(out), max_steps=2, per_device_train_batch_size=4, learning_rate=0.1, optim="sgd",
                lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0, attack_steps=1,
                attack_step_size=2 / 255, use_cpu=True, save_strategy="no", report_to="none", disable_tqdm=True,
                seed=0, logging_steps=1)
    return FAREConfig(**{**base, **kw})


class RawGradients(FARETrainer):
    """Records, at each optimizer step, θ and the gradients before any transform (`on_full_backward` runs first)."""

    def on_full_backward(self, model):
        step = self.state.global_step
        for n, p in self.unwrapped(model).named_parameters():
            if p.requires_grad and p.grad is not None:
                self.raw[(step, n)] = (p.detach().clone(), p.grad.detach().clone())


def _trained(model):
    return {n: p.detach().clone() for n, p in model.image_encoder.named_parameters()}


def test_l2sp_transform_is_the_formula():
    theta, ref, g = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3)
    out = L2SP(0.3).transform("w", theta, g.clone(), ref)
    torch.testing.assert_close(out, g + 0.3 * (theta - ref))
    assert torch.equal(L2SP(0.0).transform("w", theta, g.clone(), ref), g)
    with pytest.raises(ValueError, match=">= 0"):
        L2SP(-1)


@pytest.mark.parametrize("ga", [1, 2])
def test_l2sp_matches_a_hand_computed_step(ga, tiny_open_clip_dir, tmp_path):
    """SGD, no clipping: θ_{t+1} = θ_t − lr·(g_t + λ·(θ_t − θ₀)), with g_t the full (accumulated) task gradient.

    With 2 accumulation steps a transform applied per micro-batch would add the term twice."""
    lam, lr = 2.0, 0.1
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    theta0 = _trained(model)
    args = _args(tmp_path, weight_space="l2sp", l2sp_lambda=lam, learning_rate=lr, max_steps=3,
                 per_device_train_batch_size=4 // ga, gradient_accumulation_steps=ga)
    trainer = RawGradients(model, args, train_dataset=TensorImageDataset())
    trainer.raw = {}
    trainer.train()
    final = _trained(model)
    assert [type(t) for t in trainer.weight_space.transforms] == [L2SP]
    moved_by_l2sp = 0.0
    for step in range(3):
        for name, (theta, grad) in ((n, v) for (s, n), v in trainer.raw.items() if s == step):
            nxt = trainer.raw[(step + 1, name)][0] if step < 2 else final[name]
            expected = theta - lr * (grad + lam * (theta - theta0[name]))
            torch.testing.assert_close(nxt, expected, rtol=1e-5, atol=1e-6, msg=lambda m, n=name, s=step: f"{s} {n}: {m}")
            moved_by_l2sp = max(moved_by_l2sp, float((lr * lam * (theta - theta0[name])).abs().max()))
    assert moved_by_l2sp > 1e-3  # the L2-SP term is far above the tolerance


def test_a_transform_sees_the_full_gradient_once_per_step(tiny_open_clip_dir, tmp_path):
    """2 micro-batches of 2 give the transform the same gradients as 1 batch of 4, once per step and tensor."""
    logs = {}
    for ga in (1, 2):
        model = create_model(f"local-dir:{tiny_open_clip_dir}")
        log = GradientLog()
        args = _args(tmp_path / str(ga), per_device_train_batch_size=4 // ga, gradient_accumulation_steps=ga)
        trainer = FARETrainer(model, args, train_dataset=TensorImageDataset(), gradient_transforms=[log])
        trainer.train()
        n_trainable = sum(p.requires_grad for p in model.image_encoder.parameters())
        assert set(log.calls.values()) == {2} and len(log.calls) == n_trainable  # 2 steps, every tensor once each
        logs[ga] = {(k, n): g for k, n, g in log.seen}
    assert logs[1].keys() == logs[2].keys()
    for key, g in logs[1].items():
        torch.testing.assert_close(logs[2][key], g, rtol=1e-4, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")


def test_post_step_constraint_keeps_the_weights_in_the_ball(tiny_open_clip_dir, tmp_path):
    radius = 0.02
    ball = L2Ball(radius)
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    theta0 = _trained(model)
    trainer = FARETrainer(model, _args(tmp_path, max_steps=3), train_dataset=TensorImageDataset(),
                          post_step_constraints=[ball])
    trainer.train()
    dist = {n: float((p - theta0[n]).norm()) for n, p in _trained(model).items()}
    assert max(dist.values()) <= radius * (1 + 1e-5)
    assert ball.projected > 0 and sum(d > 0.99 * radius for d in dist.values()) > 0
    assert trainer.reference is not None  # the ball reads θ₀: the trainer keeps it (TeCoA does not otherwise)


def test_theta0_is_one_snapshot_shared_by_fare_and_l2sp(tiny_open_clip_dir, tmp_path, image_dataset):
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    trainer = FARETrainer(model, _args(tmp_path, weight_space="l2sp"), train_dataset=image_dataset)
    ref = trainer.reference
    assert isinstance(ref, ReferenceWeights) and trainer.weight_space.reference is ref
    assert trainer.reference_encoder is ref.module  # FARE's frozen target encoder is θ₀ itself
    names = [n for n, _ in trainer.model.named_parameters()]
    assert list(ref) == names  # keyed by the trained module's parameter names
    for n, p in ref.module.named_parameters():
        assert ref[n].data_ptr() == p.data_ptr() and not p.requires_grad  # the table is the module: no 2nd copy
        assert ref[n].data_ptr() != dict(trainer.model.named_parameters())[n].data_ptr()
    # a method that needs no θ₀ keeps none, unless a hook needs it
    tecoa = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=1)
    assert TeCoATrainer(model, TeCoAConfig(**tecoa), classnames=["a", "b"], train_dataset=image_dataset).reference is None
    t = TeCoATrainer(model, TeCoAConfig(**tecoa, weight_space="l2sp"), classnames=["a", "b"], train_dataset=image_dataset)
    assert t.reference is not None and sorted(t.reference) == sorted(n for n, _ in t.model.named_parameters())


def test_hook_state_survives_a_resume(tiny_open_clip_dir, tmp_path):
    """3 steps in one go == 1 step, then a new trainer resuming from checkpoint-1 (state restored by name)."""
    def run(out, resume=None):
        model = create_model(f"local-dir:{tiny_open_clip_dir}")
        ema = EMAGradient()
        args = _args(out, max_steps=3, save_strategy="steps", save_steps=1, weight_space="l2sp", l2sp_lambda=1.0)
        trainer = FARETrainer(model, args, train_dataset=TensorImageDataset(), gradient_transforms=[ema])
        trainer.train(resume_from_checkpoint=resume)
        return _trained(model), ema

    full, ema_full = run(tmp_path / "full")
    saved = torch.load(tmp_path / "full" / "checkpoint-1" / WEIGHT_SPACE_STATE_NAME, weights_only=True)
    assert set(saved["hooks"]) == {"l2sp", "ema"} and saved["reference"]
    assert set(saved["hooks"]["ema"]["state"]) <= set(full)  # keyed by parameter name
    resumed, ema_resumed = run(tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-1"))
    for n, v in full.items():
        torch.testing.assert_close(resumed[n], v, rtol=1e-5, atol=1e-7, msg=lambda m, n=n: f"{n}: {m}")
    assert {s["calls"] for s in ema_resumed.state.values()} == {3}


def test_resume_refuses_missing_state_and_another_theta0(tiny_open_clip_dir, tmp_path, image_dataset):
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    args = _args(tmp_path / "a", max_steps=1, save_strategy="steps", save_steps=1, weight_space="l2sp")
    FARETrainer(model, args, train_dataset=image_dataset).train()
    ckpt = tmp_path / "a" / "checkpoint-1"
    # a trainer built from the trained weights would take them as θ₀
    moved = create_model(f"local-dir:{ckpt}")
    with pytest.raises(ValueError, match="θ₀ differs"):
        FARETrainer(moved, _args(tmp_path / "b", max_steps=2, weight_space="l2sp"),
                    train_dataset=image_dataset).train(resume_from_checkpoint=str(ckpt))
    (ckpt / WEIGHT_SPACE_STATE_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="weight-space hooks"):
        FARETrainer(create_model(f"local-dir:{tiny_open_clip_dir}"), _args(tmp_path / "c", max_steps=2,
                    weight_space="l2sp"), train_dataset=image_dataset).train(resume_from_checkpoint=str(ckpt))


def test_runner_state_is_keyed_by_name_and_checked():
    ema = EMAGradient()
    ema.state = {"w": {"m": torch.ones(2), "calls": 1}}
    runner = WeightSpaceRunner([ema, EMAGradient()])
    sd = runner.state_dict()
    assert list(sd["hooks"]) == ["ema", "ema#2"] and list(sd["hooks"]["ema"]["state"]) == ["w"]
    other = WeightSpaceRunner([EMAGradient(), EMAGradient()])
    other.load_state_dict(sd, param_names=["w", "b"])
    assert torch.equal(other.transforms[0].state["w"]["m"], torch.ones(2))
    with pytest.raises(ValueError, match="lacks"):
        other.load_state_dict(sd, param_names=["b"])
    with pytest.raises(ValueError, match="same `weight_space`"):
        WeightSpaceRunner([EMAGradient()]).load_state_dict(sd)
    with pytest.raises(TypeError, match="GradientTransform"):
        WeightSpaceRunner([L2Ball(1.0)])
    with pytest.raises(ValueError, match="needs θ₀"):
        WeightSpaceRunner([L2SP(1.0)])


def test_config_names_registered_hooks_and_attacks(tmp_path):
    with pytest.raises(ValueError, match="registered: l2sp"):
        _args(tmp_path, weight_space="l2-sp")
    with pytest.raises(ValueError, match=r"'pdg' is not a registered attack; registered: .*apgd.*pgd"):
        _args(tmp_path, attack="pdg")
    assert _args(tmp_path, weight_space="none").weight_space == "none"


def test_wise_ft_interpolates_with_a_float_alpha(tiny_open_clip_dir):
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    ref = ReferenceWeights(model.image_encoder)
    ft = {n: p.detach() + 1.0 for n, p in model.image_encoder.named_parameters()}
    mixed = ref.interpolate(ft, 0.25)
    for n, t in mixed.items():
        torch.testing.assert_close(t, ref[n] + 0.25)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ref.interpolate(ft, 1.5)
