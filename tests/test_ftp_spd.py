"""FTP (arXiv 2310.19182) and SPD (arXiv 2411.01713) as post-step constraints: each against a hand-computed step,
and in a trainer against a replay from the recorded gradients (the constraint observes the gradient before the step
and rewrites the weights after it). DDP / ZeRO-2 / ZeRO-3: test_scale.py (`@ftp`, `@spd` jobs)."""

import math

import pytest
import torch
from conftest import TensorImageDataset

from vlmrobust.models import create_model
from vlmrobust.optim import FTP, SPD
from vlmrobust.trainers import TeCoAConfig, TeCoATrainer


def _adam(x, hs, lr):
    """Adam on a scalar, by hand, over the hypergradients `hs`."""
    m = v = 0.0
    for n, h in enumerate(hs, 1):
        m, v = 0.9 * m + 0.1 * h, 0.999 * v + 0.001 * h * h
        x = x - lr * (m / (1 - 0.9**n)) / (math.sqrt(v / (1 - 0.999**n)) + 1e-8)
    return x


# -- FTP -------------------------------------------------------------------------------------------------------------
def test_ftp_step_by_hand():
    theta0 = torch.zeros(2, 2)
    ftp = FTP(lr=0.5, k=1.0)
    # step 1: c = θ̃ − θ₀, row L1 norms (3, 4); γ = 1e-8: each row pulled back to L1 length 1e-8
    c1 = torch.tensor([[1.0, -2.0], [4.0, 0.0]])
    out = ftp.apply("w", c1, theta0)
    n1 = torch.tensor([[3.0], [4.0]]) + 1e-8
    torch.testing.assert_close(out, 1e-8 * c1 / n1)
    assert ftp.state["w"]["gamma"] == 1e-8
    # step 2: g = (−1, 0; 0, −1): h = Σ g·c₁/n₁ = −1/3 − 0 = −1/3 < 0: the radius grows by lr (Adam's first step)
    g = torch.tensor([[-1.0, 0.0], [0.0, -1.0]])
    ftp.observe("w", out, g, theta0)
    c2 = torch.tensor([[2.0, 0.0], [0.0, 0.25]])  # row norms 2, 0.25
    out2 = ftp.apply("w", c2, theta0)
    gamma = _adam(1e-8, [-1 / 3], 0.5)
    assert gamma == pytest.approx(0.5, abs=1e-6) and ftp.state["w"]["gamma"] == pytest.approx(gamma, rel=1e-6)
    # row 0 (norm 2 > γ) is clipped to L1 length γ, row 1 (0.25 < γ) is left alone
    torch.testing.assert_close(out2, torch.tensor([[gamma, 0.0], [0.0, 0.25]]), rtol=1e-5, atol=1e-7)
    # the radius is clipped to the largest row norm of the current deviation
    ftp.observe("w", out2, -torch.ones(2, 2), theta0)
    ftp.apply("w", torch.full((2, 2), 0.1), theta0)  # row norms 0.2
    assert ftp.state["w"]["gamma"] == pytest.approx(0.2, rel=1e-6)


def test_ftp_k_anneals_positive_hypergradients_as_a_float():
    """k = 0.5 halves positive hypergradients (the reference's script would truncate it to int(0.5) = 0)."""
    def run(k):
        theta0 = torch.zeros(1, 2)
        ftp = FTP(lr=0.1, k=k)
        prev = ftp.apply("w", torch.tensor([[1.0, 1.0]]), theta0)  # c₁/n₁ = (0.5, 0.5)
        for g in ([[-1.0, -1.0]], [[2.0, 2.0]]):  # h = −1, then +2 (annealed to 2k)
            ftp.observe("w", prev, torch.tensor(g), theta0)
            prev = ftp.apply("w", torch.tensor([[5.0, 5.0]]), theta0)  # row norm 10: no clip of γ
        return ftp.state["w"]["gamma"]

    for k in (1.0, 0.5, 0.0):
        assert run(k) == pytest.approx(_adam(1e-8, [-1.0, 2.0 * k], 0.1), rel=1e-6), k
    assert run(0.5) != pytest.approx(run(0.0))


# -- SPD -------------------------------------------------------------------------------------------------------------
def test_spd_step_by_hand():
    theta0 = torch.zeros(2)
    prev = torch.tensor([3.0, 4.0])  # ‖θ_{t−1} − θ₀‖ = 5
    spd = SPD(lam=0.5)
    # condition −g·(θ−θ₀) = −(3 + 4) < 0 (gradient points back to θ₀) and the step grew the deviation to 10: decay
    spd.observe("w", prev, torch.tensor([1.0, 1.0]), theta0)
    new = torch.tensor([6.0, 8.0])
    r = (10 - 5) / 10
    torch.testing.assert_close(spd.apply("w", new, theta0), new - 0.5 * r * new)
    # same condition, but the step shrank the deviation: r clipped to 0, no change
    spd.observe("w", prev, torch.tensor([1.0, 1.0]), theta0)
    assert spd.apply("w", torch.tensor([1.5, 2.0]), theta0) is None
    # consistent descent direction (condition >= 0): the deviation may grow freely
    spd.observe("w", prev, torch.tensor([-1.0, -1.0]), theta0)
    assert spd.apply("w", new, theta0) is None
    assert spd.decayed == 1 and spd.state == {}


# -- in a trainer: the constraints see the gradient before the step and rewrite the weights after it -----------------
class RawGradients(TeCoATrainer):
    def on_full_backward(self, model):
        for n, p in self.unwrapped(model).named_parameters():
            if p.requires_grad and p.grad is not None:
                self.raw[(self.state.global_step, n)] = (p.detach().clone(), p.grad.detach().clone())


@pytest.mark.parametrize("method", ["ftp", "spd"])
def test_constraint_in_a_trainer_replays_by_hand(method, tiny_open_clip_dir, tmp_path):
    lr, steps = 0.05, 4
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    theta0 = {n: p.detach().clone() for n, p in model.image_encoder.named_parameters()}
    args = TeCoAConfig(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=4, learning_rate=lr,
                      optim="sgd", lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0,
                      attack_steps=1, attack_step_size=2 / 255, use_cpu=True, save_strategy="no", report_to="none",
                      disable_tqdm=True, seed=0, weight_space=method, ftp_lr=0.05, spd_lambda=1.0)
    data = TensorImageDataset()
    trainer = RawGradients(model, args, train_dataset=data, classnames=data.classnames)
    trainer.raw = {}
    trainer.train()
    final = {n: p.detach().clone() for n, p in model.image_encoder.named_parameters()}
    replay = FTP(lr=0.05) if method == "ftp" else SPD(lam=1.0)
    changed = 0
    for step in range(steps):
        for name, (theta, grad) in ((n, v) for (s, n), v in trainer.raw.items() if s == step):
            replay.observe(name, theta, grad, theta0[name])
            stepped = theta - lr * grad
            out = replay.apply(name, stepped, theta0[name])
            expected = stepped if out is None else out
            changed += int(out is not None and not torch.allclose(out, stepped))
            nxt = trainer.raw[(step + 1, name)][0] if step < steps - 1 else final[name]
            torch.testing.assert_close(nxt, expected, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    assert changed > 0
    hook = trainer.weight_space.constraints[0]
    if method == "ftp":
        assert hook.radii() == pytest.approx(replay.radii(), rel=1e-5) and max(hook.radii().values()) > 1e-3
