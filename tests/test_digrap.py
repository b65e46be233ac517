"""DiGraP (arXiv 2502.15895) as a gradient transform: the projection rule, ω's hypergradient and its scalar Adam
against hand computations, the endpoints ω = 0 (plain AdamW, exactly) and ω = 1 (no component along θ − θ₀), ω kept
in [0, 1], state keyed by parameter name and restored on resume. The same runs under DeepSpeed ZeRO-2 / 3 are
compared with one process in test_scale.py (`@digrap` jobs of dist_train_run.py)."""

import math

import pytest
import torch
from conftest import TensorImageDataset

from vlmrobust.layout import WEIGHT_SPACE_STATE_NAME
from vlmrobust.models import create_model
from vlmrobust.optim import DiGraP, ReferenceWeights, ScalarAdam, is_lora_adapter
from vlmrobust.trainers import FAREConfig, FARETrainer


def _args(out, **kw):
    base = dict(output_dir=str(out), max_steps=3, per_device_train_batch_size=4, learning_rate=0.1, optim="sgd",
                lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0, attack_steps=1,
                attack_step_size=2 / 255, use_cpu=True, save_strategy="no", report_to="none", disable_tqdm=True,
                seed=0, logging_steps=1, weight_space="digrap")
    return FAREConfig(**{**base, **kw})


def _trained(model):
    return {n: p.detach().clone() for n, p in model.image_encoder.named_parameters()}


class RawGradients(FARETrainer):
    """Records θ and the task gradient (before the transforms) at each optimizer step."""

    def on_full_backward(self, model):
        for n, p in self.unwrapped(model).named_parameters():
            if p.requires_grad and p.grad is not None:
                self.raw[(self.state.global_step, n)] = (p.detach().clone(), p.grad.detach().clone())


# -- the rule, on tensors --------------------------------------------------------------------------------------------
def test_no_projection_without_conflict():
    theta0 = torch.zeros(4)
    theta = torch.tensor([1.0, 0.0, 0.0, 0.0])
    d = DiGraP(omega_init=1.0, learn_omega=False)
    for g in (torch.tensor([1.0, 2.0, 0.0, 0.0]), torch.tensor([0.0, 3.0, -1.0, 0.0])):  # g·(θ−θ₀) > 0, = 0
        assert torch.equal(d.transform("w", theta, g.clone(), theta0), g)
    g = torch.tensor([-1.0, 2.0, 0.0, 0.0])  # conflict: projected
    assert not torch.equal(d.transform("w", theta, g.clone(), theta0), g)
    # θ = θ₀ (the first step): no direction to project on
    assert torch.equal(d.transform("v", theta0, g.clone(), theta0), g)


@pytest.mark.parametrize("omega", [1.0, 0.3])
def test_projection_formula_and_omega_one_removes_the_component(omega):
    torch.manual_seed(0)
    theta0, theta = torch.randn(6, 5), torch.randn(6, 5)
    g2 = theta - theta0
    g1 = torch.randn(6, 5) - 2 * g2  # conflicts with g2
    assert (g1 * g2).sum() < 0
    out = DiGraP(omega_init=omega, learn_omega=False).transform("w", theta, g1.clone(), theta0)
    expected = g1 - omega * ((g1 * g2).sum() / (g2 * g2).sum()) * g2
    torch.testing.assert_close(out, expected)
    if omega == 1.0:  # no component along θ − θ₀ left
        assert abs(float((out * g2).sum())) < 1e-5 * float(out.norm() * g2.norm())
    else:  # partial: still conflicting, less so
        assert (g1 * g2).sum() < (out * g2).sum() < 0


def test_lora_adapters_project_against_zero(tiny_open_clip_dir):
    assert is_lora_adapter("blocks.0.attn.q_proj.lora_A.default.weight")
    assert is_lora_adapter("lora_B.weight") and is_lora_adapter("emb.lora_embedding_A.default")
    assert not is_lora_adapter("blocks.0.attn.q_proj.base_layer.weight") and not is_lora_adapter("flora_A.weight")
    enc = torch.nn.Module()
    enc.lin = torch.nn.Linear(3, 2)
    enc.lora_A = torch.nn.ParameterDict({"default": torch.nn.Parameter(torch.ones(2, 3))})
    ref = ReferenceWeights(enc)
    assert torch.equal(ref.anchor("lora_A.default"), torch.zeros(2, 3))
    assert torch.equal(ref.anchor("lin.weight"), enc.lin.weight.detach())


# -- ω: hypergradient, scalar Adam, clip -----------------------------------------------------------------------------
def test_scalar_adam_against_a_hand_computation():
    adam, state = ScalarAdam(0.5), {}
    x = adam.step(0.2, 0.3, state)  # first step: m̂ = h, v̂ = h², so the step is μ·sign(h) (up to ε)
    assert x == pytest.approx(0.2 - 0.5 * 0.3 / (0.3 + 1e-8))
    x2 = adam.step(x, -0.6, state)
    m = 0.9 * 0.1 * 0.3 + 0.1 * -0.6
    v = 0.999 * 0.001 * 0.09 + 0.001 * 0.36
    expected = x - 0.5 * (m / (1 - 0.9**2)) / (math.sqrt(v / (1 - 0.999**2)) + 1e-8)
    assert x2 == pytest.approx(expected, rel=1e-12) and state["n"] == 2


def test_hypergradient_step_against_a_hand_computation():
    """Three steps on one tensor, every number by hand: ω moves by cos(g₁_t, c_{t−1}) through the scalar Adam."""
    theta0 = torch.zeros(2)
    d = DiGraP(mu=0.5)
    # step 1: θ − θ₀ = (1, 0), g₁ = (−2, 1): conflict (dot −2), c₁ = (−2, 0); ω = 0 so g = g₁; no previous component
    out = d.transform("w", torch.tensor([1.0, 0.0]), torch.tensor([-2.0, 1.0]), theta0)
    assert torch.equal(out, torch.tensor([-2.0, 1.0])) and d.state["w"]["omega"] == 0.0
    torch.testing.assert_close(d.state["w"]["prev"], torch.tensor([-2.0, 0.0]))
    # step 2: g₁ = (1, 1): h = cos((1, 1), (−2, 0)) = −1/√2 < 0 -> ω = 0 + 0.5 (Adam's first step is μ·sign)
    # θ − θ₀ = (1, 1): dot = 2 >= 0, no conflict, no component for the next step
    out = d.transform("w", torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0]), theta0)
    assert d.state["w"]["omega"] == pytest.approx(0.5, abs=1e-7) and d.state["w"]["prev"] is None
    assert torch.equal(out, torch.tensor([1.0, 1.0]))
    # step 3: no previous component: ω unchanged; θ − θ₀ = (0, 2), g₁ = (3, −1): conflict (dot −2),
    # c₃ = (−2/4)·(0, 2) = (0, −1), g = g₁ − 0.5·c₃ = (3, −0.5)
    out = d.transform("w", torch.tensor([0.0, 2.0]), torch.tensor([3.0, -1.0]), theta0)
    torch.testing.assert_close(out, torch.tensor([3.0, -0.5]))
    assert d.state["w"]["n"] == 1
    # step 4: θ − θ₀ = (0, −2), g₁ = (0, 1): h = cos((0, 1), c₃) = −1, second Adam step by hand; conflict (dot −2),
    # c₄ = (−2/4)·(0, −2) = (0, 1), g = g₁ − ω·c₄
    out = d.transform("w", torch.tensor([0.0, -2.0]), torch.tensor([0.0, 1.0]), theta0)
    adam = {"m": 0.1 * (-1 / math.sqrt(2)), "v": 0.001 * 0.5, "n": 1}

    def by_hand(x, h):
        adam["n"] += 1
        adam["m"] = 0.9 * adam["m"] + 0.1 * h
        adam["v"] = 0.999 * adam["v"] + 0.001 * h * h
        n = adam["n"]
        return x - 0.5 * (adam["m"] / (1 - 0.9**n)) / (math.sqrt(adam["v"] / (1 - 0.999**n)) + 1e-8)

    omega = by_hand(0.5, -1.0)  # the cosines are float32 sums: equal to ~1e-7
    assert 0.9 < omega < 1 and d.state["w"]["omega"] == pytest.approx(omega, rel=1e-6)
    torch.testing.assert_close(out, torch.tensor([0.0, 1.0 - omega]), rtol=1e-5, atol=1e-6)
    # step 5: h = cos((1, −1), (0, 1)) = −1/√2 pushes ω above 1: clipped
    d.transform("w", torch.tensor([0.0, -2.0]), torch.tensor([1.0, -1.0]), theta0)
    assert by_hand(omega, -1 / math.sqrt(2)) > 1 and d.state["w"]["omega"] == 1.0
    # and downwards: a positive hypergradient from ω = 0 stays at 0
    d2 = DiGraP(mu=0.5)
    d2.transform("w", torch.tensor([1.0, 0.0]), torch.tensor([-2.0, 1.0]), theta0)
    d2.transform("w", torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0]), theta0)  # h = +1
    assert d2.state["w"]["omega"] == 0.0


def test_state_is_keyed_by_parameter_name_not_position():
    torch.manual_seed(1)
    theta0 = {"a": torch.zeros(3), "b": torch.zeros(4)}
    steps = [{n: (torch.randn_like(t), torch.randn_like(t)) for n, t in theta0.items()} for _ in range(4)]

    def run(orders):
        d, outs = DiGraP(mu=0.5), []
        for step, order in zip(steps, orders):
            outs.append({n: d.transform(n, step[n][0], step[n][1].clone(), theta0[n]) for n in order})
        return outs, d.omegas()

    same, omegas = run([("a", "b")] * 4)
    swapped, omegas_swapped = run([("a", "b"), ("b", "a"), ("a", "b"), ("b", "a")])
    assert omegas == omegas_swapped and any(0 < w for w in omegas.values())
    for x, y in zip(same, swapped):
        for n in x:
            torch.testing.assert_close(x[n], y[n])


def test_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="omega_init"):
        DiGraP(omega_init=1.5)
    with pytest.raises(ValueError, match="omega_init"):
        _args(tmp_path, digrap_omega_init=-0.1)
    with pytest.raises(ValueError, match="mu"):
        _args(tmp_path, digrap_mu=-1.0)


# -- in a trainer ----------------------------------------------------------------------------------------------------
def test_omega_zero_is_plain_adamw_exactly(tiny_open_clip_dir, tmp_path):
    out = {}
    for ws in ("none", "digrap"):
        model = create_model(f"local-dir:{tiny_open_clip_dir}")
        args = _args(tmp_path / ws, weight_space=ws, optim="adamw_torch", learning_rate=1e-2, weight_decay=0.1,
                     max_grad_norm=1.0, digrap_learn_omega=False, digrap_omega_init=0.0)
        trainer = FARETrainer(model, args, train_dataset=TensorImageDataset())
        trainer.train()
        out[ws] = _trained(model)
        if ws == "digrap":
            assert [type(t) for t in trainer.weight_space.transforms] == [DiGraP]
    for n, v in out["none"].items():
        assert torch.equal(out["digrap"][n], v), n


@pytest.mark.parametrize("ga", [1, 2])
def test_sgd_step_is_the_projected_task_gradient(ga, tiny_open_clip_dir, tmp_path):
    """SGD: θ_{t+1} = θ_t − lr·DiGraP(g_t), replayed by hand from the recorded task gradients; with 2 accumulation
    steps a transform run per micro-batch would update ω twice per step."""
    lr = 0.1
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    theta0 = _trained(model)
    args = _args(tmp_path, learning_rate=lr, max_steps=4, per_device_train_batch_size=4 // ga,
                 gradient_accumulation_steps=ga)
    trainer = RawGradients(model, args, train_dataset=TensorImageDataset())
    trainer.raw = {}
    trainer.train()
    final, replay = _trained(model), DiGraP(mu=0.5)
    projected = 0
    for step in range(4):
        for name, (theta, grad) in ((n, v) for (s, n), v in trainer.raw.items() if s == step):
            g = replay.transform(name, theta, grad.clone(), theta0[name])
            projected += int(not torch.equal(g, grad))
            nxt = trainer.raw[(step + 1, name)][0] if step < 3 else final[name]
            torch.testing.assert_close(nxt, theta - lr * g, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    got = trainer.weight_space.transforms[0].omegas()
    assert got == pytest.approx(replay.omegas(), abs=1e-6)
    assert projected > 0 and any(w > 0 for w in got.values())  # ω was learned and the projection changed steps


def test_omega_stays_in_bounds_and_survives_a_resume(tiny_open_clip_dir, tmp_path):
    """6 steps in one go == 3 steps, then a new trainer resuming from checkpoint-3 (ω, its Adam moments and the
    previous component restored by parameter name)."""
    def run(out, resume=None):
        model = create_model(f"local-dir:{tiny_open_clip_dir}")
        args = _args(out, max_steps=6, save_strategy="steps", save_steps=1, learning_rate=0.05, digrap_mu=0.5)
        trainer = FARETrainer(model, args, train_dataset=TensorImageDataset())
        trainer.train(resume_from_checkpoint=resume)
        return _trained(model), trainer.weight_space.transforms[0]

    full, digrap = run(tmp_path / "full")
    omegas = digrap.omegas()
    assert all(0.0 <= w <= 1.0 for w in omegas.values())
    assert any(w == 1.0 for w in omegas.values()) and any(0.0 < w < 1.0 for w in omegas.values())
    saved = torch.load(tmp_path / "full" / "checkpoint-3" / WEIGHT_SPACE_STATE_NAME, weights_only=True)
    state = saved["hooks"]["digrap"]["state"]
    assert set(state) <= set(full) and {"omega", "m", "v", "n", "prev"} <= set(next(iter(state.values())))
    resumed, digrap_resumed = run(tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-3"))
    assert digrap_resumed.omegas() == pytest.approx(omegas, abs=1e-7)
    for n, v in full.items():
        torch.testing.assert_close(resumed[n], v, rtol=1e-5, atol=1e-7, msg=lambda m, n=n: f"{n}: {m}")
