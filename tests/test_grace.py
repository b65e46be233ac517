"""GRACE (arXiv 2603.27139): the Gram volume, the rank allocation, the two-pass LAR-AWP step against a hand-written
SAM reference, its reductions, gradient-accumulation exactness, and the merged checkpoint through the plain loaders.

Planted bugs, checked once by hand (each makes the named test fail):
* ascent sign flipped (Δ = −ρ·P_r(G)/‖·‖): the SAM reference.
* perturbation not removed before the optimizer step (`awp.clear()` skipped): perturbation removed; the branch left
  in perturbed mode after a pass: perturbation removed and gradient accumulation.
* Gram term dropped from the loss: the SAM reference (λ_GV = 1 there).
* ascent from the last micro-batch only (probe gradients zeroed every micro-batch): gradient accumulation.
* the probe scaling the gradient it passes on: the λ = 0 / ρ = 0 reductions.
* bottom fraction floored instead of rounded: rank allocation (24 layers); ranks sorted by layer order instead of
  curvature: rank allocation; ranks never re-allocated after the first step: re-allocation every K steps.
* `sqrt(|det| + eps)` without `− sqrt(eps)`: zero volume for identical embeddings.
* (tests/test_scale.py, DDP) probe gradients not averaged over the processes: 2 processes miss the 1-process weights
  by 3.5e-3 (~1300 × atol).
"""

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlmrobust.models import create_model
from vlmrobust.optim import CurvatureEMA, allocate_ranks, gram_volume, low_rank_ascent
from vlmrobust.trainers import METHODS, load_config
from vlmrobust.trainers.grace_config import GRACEConfig
from vlmrobust.trainers.grace_trainer import GRACETrainer


# -- the Gram volume -----------------------------------------------------------------------------------------------
def test_gram_volume_is_zero_for_identical_or_coinciding_embeddings():
    torch.manual_seed(0)
    a, c = torch.randn(5, 16), torch.randn(5, 16)
    assert gram_volume(a, a, a).item() == 0.0
    assert gram_volume(a, 3 * a, a).item() == 0.0  # normalised: a scaled copy is the same direction
    assert gram_volume(a, a, c).abs().item() < 1e-6  # two coincide: no volume, whatever the third
    assert gram_volume(a, c, torch.randn(5, 16)).item() > 0.1


def test_gram_volume_equals_a_direct_numpy_computation():
    a = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.3, 0.4, -2.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.1, 0.9, 0.5, -0.2]])
    c = torch.tensor([[1.0, 0.5, 2.0, 0.0], [-1.0, 0.2, 0.3, 0.7]])
    want = []
    for i in range(2):
        rows = [t[i].numpy().astype(np.float64) for t in (a, b, c)]
        v = np.stack([r / np.linalg.norm(r) for r in rows])
        want.append(math.sqrt(abs(np.linalg.det(v @ v.T))))
    # first sample by hand: e1, (e1+e2)/√2, (e1+e2/2+2e3)/√5.25 -> det = (1/2)·(4/5.25)
    assert want[0] == pytest.approx(math.sqrt(0.5 * 4 / 5.25), rel=1e-12)
    got = gram_volume(a, b, c, eps=0.0, reduction="none")
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    assert gram_volume(a, b, c, eps=0.0).item() == pytest.approx(np.mean(want), rel=1e-6)
    # the default eps changes a volume of this size by well under 1e-3
    assert gram_volume(a, b, c).item() == pytest.approx(np.mean(want), abs=1e-3)


def test_gram_volume_gradient_reaches_all_three_inputs_and_is_finite_when_degenerate():
    torch.manual_seed(1)
    xs = [torch.randn(4, 8, requires_grad=True) for _ in range(3)]
    gram_volume(*xs).backward()
    for x in xs:
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    same = torch.randn(4, 8)
    ys = [same.clone().requires_grad_(True) for _ in range(3)]
    gram_volume(*ys).backward()
    for y in ys:
        assert torch.isfinite(y.grad).all()


# -- rank allocation, curvature, the low-rank ascent -------------------------------------------------------------
@pytest.mark.parametrize("n", [5, 10, 24, 25])
def test_rank_allocation_gives_the_stated_fractions(n):
    curv = torch.rand(n, generator=torch.Generator().manual_seed(n)).tolist()
    ranks = allocate_ranks(curv, 4)
    k = math.floor(0.2 * n + 0.5)
    assert ranks.count(4) == k and ranks.count(0) == k and ranks.count(2) == n - 2 * k
    order = sorted(range(n), key=lambda i: -curv[i])
    assert {ranks[i] for i in order[:k]} == {4} and {ranks[i] for i in order[n - k:]} == {0}
    assert allocate_ranks(curv, 4, middle_rank=3).count(3) == n - 2 * k
    assert allocate_ranks(curv, 4, top_fraction=0.5, bottom_fraction=0.0).count(4) == math.floor(0.5 * n + 0.5)
    with pytest.raises(ValueError, match="sum to at most 1"):
        allocate_ranks(curv, 4, top_fraction=0.7, bottom_fraction=0.5)


def test_curvature_ema():
    ema = CurvatureEMA(beta=0.9)
    assert ema.update("l", torch.full((2, 2), 2.0)) == pytest.approx(4.0)  # first update: the value itself
    assert ema.update("l", torch.zeros(2, 2)) == pytest.approx(3.6)


@pytest.mark.parametrize("shape", [(6, 10), (10, 6)])
def test_low_rank_ascent_is_the_truncated_svd(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    for r in (1, 3):
        b, a = low_rank_ascent(g, r)
        assert b.shape == (shape[0], r) and a.shape == (r, shape[1])
        torch.testing.assert_close(b @ a, u[:, :r] @ torch.diag(s[:r]) @ vh[:r], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("radius", ["global", "layer"])
def test_probe_records_weight_gradients_and_the_perturbation_has_radius_rho(radius):
    from vlmrobust.optim import LowRankWeightPerturbation

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5), torch.nn.Tanh(),
                              torch.nn.Linear(5, 3))
    layers = {"a": net[0], "b": net[2], "c": net[4]}
    awp = LowRankWeightPerturbation(layers, rho=0.3, max_rank=2, interval=1, radius=radius,
                                    top_fraction=1 / 3, bottom_fraction=1 / 3)
    x = torch.randn(2, 4, 6)  # token-shaped inputs: the probe sums over every leading dimension
    with awp.probing():
        net(x).pow(2).sum().backward()
    for name, layer in layers.items():
        torch.testing.assert_close(awp.grads[name], layer.weight.grad)
    awp.compute(step=0)
    assert sorted(awp.ranks.values()) == [0, 1, 2] and len(awp.factors) == 2
    norms = {n: torch.linalg.matrix_norm(b @ a).item() for n, (b, a) in awp.factors.items()}
    if radius == "global":
        assert math.sqrt(sum(v * v for v in norms.values())) == pytest.approx(0.3, rel=1e-5)
    else:
        assert list(norms.values()) == pytest.approx([0.3, 0.3], rel=1e-5)
    with torch.no_grad(), awp.perturbed():
        got = net(x)
    weights = {f"{i}.weight": layers[n].weight + (b @ a) for i, n in zip((0, 2, 4), layers)
               for m, (b, a) in awp.factors.items() if m == n}
    with torch.no_grad():
        torch.testing.assert_close(got, torch.func.functional_call(net, weights, (x,), strict=False))
        awp.clear()
        with awp.perturbed():
            torch.testing.assert_close(net(x), torch.func.functional_call(net, {}, (x,), strict=False))


def test_ranks_are_reallocated_every_k_steps_from_the_curvature_ema():
    from vlmrobust.optim import LowRankWeightPerturbation

    layers = {n: torch.nn.Linear(4, 4) for n in "abcde"}
    awp = LowRankWeightPerturbation(layers, rho=0.1, max_rank=2, interval=2, beta=0.0)  # β = 0: h = this step's

    def step(t, scale):  # gradient of layer n: scale[n] · I (curvature mean(g²) = scale²/4)
        awp.zero_grad()
        for n in layers:
            awp.grads.setdefault(n, torch.zeros(4, 4)).copy_(scale[n] * torch.eye(4))
        awp.compute(step=t)
        return [awp.ranks[n] for n in layers]

    assert step(0, dict(a=5, b=4, c=3, d=2, e=1)) == [2, 1, 1, 1, 0]
    assert step(1, dict(a=1, b=2, c=3, d=4, e=5)) == [2, 1, 1, 1, 0]  # not a multiple of K: ranks kept
    assert awp.curvature["e"] == pytest.approx(25 / 4)  # ... while the curvature follows every step
    assert step(2, dict(a=1, b=2, c=3, d=4, e=5)) == [0, 1, 1, 1, 2]  # step K: re-allocated
    assert set(awp.factors) == {"b", "c", "d", "e"}


# -- the trainer ---------------------------------------------------------------------------------------------------
def grace_args(out, **kw):
    base = dict(output_dir=str(out), max_steps=2, per_device_train_batch_size=4, learning_rate=0.05, optim="sgd",
                lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, epsilon=4 / 255, attack_steps=2,
                attack_step_size=2 / 255, logging_steps=1, save_strategy="no", seed=0, use_cpu=True,
                disable_tqdm=True, report_to="none", lora_r=4, awp_max_rank=2, awp_rho=0.5, curvature_interval=1,
                merge_lora_at_end=False, max_grad_norm=0.0)
    base.update(kw)
    return GRACEConfig(**base)


class Recording(GRACETrainer):
    """Keeps each micro-batch's (x, x_adv, y) and, at each optimizer step, the LoRA weights / gradients the optimizer
    gets and whether any perturbation is left."""

    def _attack(self, model, x, y):
        x_adv = super()._attack(model, x, y)
        self.seen.append((x.clone(), x_adv.clone(), y.clone()))
        return x_adv

    def on_full_backward(self, model):
        super().on_full_backward(model)
        enc = self.unwrapped(model)
        probe = self.seen[-1][0]
        with torch.no_grad(), self.awp.perturbed():
            perturbed = enc(probe)
        with torch.no_grad():
            plain = enc(probe)
        self.at_step.append({"mode": self.awp.mode, "left": torch.equal(perturbed, plain),
                             "theta": lora_params(enc), "grad": {n: p.grad.clone() for n, p in enc.named_parameters()
                                                                 if p.requires_grad}})


def lora_params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters() if "lora_" in n}


def make_trainer(model_dir, data, out, cls=Recording, spec="local-dir", **kw):
    model = create_model(f"{spec}:{model_dir}")
    trainer = cls(model, grace_args(out, **kw), train_dataset=data, classnames=data.classnames)
    torch.manual_seed(123)
    with torch.no_grad():  # PEFT starts B at 0; a random B makes every LoRA gradient non-zero from step 0
        for n, p in trainer.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    trainer.seen, trainer.at_step = [], []
    return model, trainer


def reference_run(enc, batches, args, class_emb, steps, ga):
    """GRACE by hand: SAM's two passes on the LoRA encoder, the perturbation added functionally to the base weights,
    ranks from an independent top / bottom split of the squared-gradient EMA, plain SGD."""
    enc = copy.deepcopy(enc)
    for m in enc.modules():
        m._forward_hooks.clear()
    layers = [n for n, m in enc.named_modules()  # LAR-AWP perturbs the linear LoRA layers
              if hasattr(m, "lora_A") and isinstance(getattr(m, "base_layer", None), torch.nn.Linear)]
    lora = {n: p for n, p in enc.named_parameters() if "lora_" in n}
    base = {f"{n}.base_layer.weight": dict(enc.named_parameters())[f"{n}.base_layer.weight"] for n in layers}

    def logits(e):
        return args.logit_scale * F.normalize(e.float(), dim=-1) @ class_emb.T

    def volume(a, b, c):
        v = torch.stack([F.normalize(t.double(), dim=-1) for t in (a, b, c)], 1)
        det = torch.linalg.det(v @ v.transpose(1, 2))
        return ((det.abs() + args.gram_eps).sqrt() - math.sqrt(args.gram_eps)).mean()

    ema = {}
    for step in range(steps):
        micro = batches[step * ga:(step + 1) * ga]
        for w in base.values():
            w.requires_grad_(True)
        ce = sum(F.cross_entropy(logits(enc(xa)), y) for _, xa, y in micro) / ga
        grads = torch.autograd.grad(ce, [*lora.values(), *base.values()])
        g_lora, g_base = grads[:len(lora)], dict(zip(base, grads[len(lora):]))
        for w in base.values():
            w.requires_grad_(False)
        for k, g in g_base.items():
            h = g.pow(2).mean().item()
            ema[k] = h if k not in ema else args.curvature_beta * ema[k] + (1 - args.curvature_beta) * h
        order = sorted(base, key=lambda k: -ema[k])
        n_edge = math.floor(0.2 * len(order) + 0.5)
        rank = {k: 1 for k in order}
        rank.update({k: args.awp_max_rank for k in order[:n_edge]})
        rank.update({k: 0 for k in order[len(order) - n_edge:]})
        delta = {}
        for k, g in g_base.items():
            if rank[k]:
                u, s, vh = torch.linalg.svd(g, full_matrices=False)
                r = rank[k]
                delta[k] = u[:, :r] @ torch.diag(s[:r]) @ vh[:r]
        norm = math.sqrt(sum(d.pow(2).sum().item() for d in delta.values()))
        perturbed = {k: base[k] + args.awp_rho * d / norm for k, d in delta.items()}
        loss2 = 0
        for x, xa, y in micro:
            e_clean, e_adv = enc(x), enc(xa)
            e_p_adv = torch.func.functional_call(enc, perturbed, (xa,), strict=False)
            e_wp = torch.func.functional_call(enc, perturbed, (x,), strict=False)
            loss2 = loss2 + (args.lambda_lar * F.cross_entropy(logits(e_p_adv), y)
                             + args.lambda_gv * volume(e_clean, e_adv, e_wp)) / ga
        g2 = torch.autograd.grad(loss2, list(lora.values()), allow_unused=True)
        with torch.no_grad():
            for p, a, b in zip(lora.values(), g_lora, g2):
                p -= args.learning_rate * (a + (b if b is not None else 0))
    return lora_params(enc)


def assert_params_close(got, want, atol=2e-5):
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


def test_two_pass_step_equals_a_hand_written_sam_reference(tiny_open_clip_dir, image_dataset, tmp_path):
    model, trainer = make_trainer(tiny_open_clip_dir, image_dataset, tmp_path)
    start = copy.deepcopy(trainer.model)
    before = lora_params(trainer.model)
    trainer.train()
    got = lora_params(trainer.model)
    want = reference_run(start, trainer.seen, trainer.args, trainer.class_embeddings, steps=2, ga=1)
    moved = max((want[k] - before[k]).abs().max().item() for k in want)
    assert moved > 1e-2, moved
    assert_params_close(got, want)
    assert set(trainer.awp.ranks.values()) == {0, 1, 2}  # 4 adapted layers: 1 at the max rank, 1 unperturbed
    logged = trainer.state.log_history[0]
    assert logged["awp_norm"] == pytest.approx(0.5, rel=1e-4) and logged["gram_volume"] > 0


def test_gradient_accumulation_is_exact(tiny_open_clip_dir, image_dataset, tmp_path):
    """The ascent comes from the accumulated gradient of the whole batch: 2 x 2 micro-batches = 1 x 4."""
    # (SGD: Adam's normalised step would turn rounding-level differences of near-zero gradients into lr-sized ones)
    _, whole = make_trainer(tiny_open_clip_dir, image_dataset, tmp_path / "a")
    whole.train()
    _, split = make_trainer(tiny_open_clip_dir, image_dataset, tmp_path / "b", per_device_train_batch_size=2,
                            gradient_accumulation_steps=2)
    split.train()
    assert len(split.seen) == 2 * len(whole.seen)
    before = lora_params(make_trainer(tiny_open_clip_dir, image_dataset, tmp_path / "c")[1].model)
    moved = max((lora_params(whole.model)[k] - before[k]).abs().max().item() for k in before)
    assert moved > 1e-2, moved
    assert_params_close(lora_params(split.model), lora_params(whole.model), atol=1e-6)
    assert split.awp.curvature.values == pytest.approx(whole.awp.curvature.values, rel=1e-4)


def test_perturbation_is_removed_before_the_optimizer_step(tiny_open_clip_dir, image_dataset, tmp_path):
    _, trainer = make_trainer(tiny_open_clip_dir, image_dataset, tmp_path)
    trainer.train()
    assert [s["mode"] for s in trainer.at_step] == ["off", "off"]
    assert all(s["left"] for s in trainer.at_step), "a weight perturbation is still active at the optimizer step"
    # SGD on the un-perturbed weights: θ_{t+1} = θ_t − lr·g_t, with θ_t what the optimizer step saw
    final = lora_params(trainer.model)
    for t, s in enumerate(trainer.at_step):
        nxt = trainer.at_step[t + 1]["theta"] if t + 1 < len(trainer.at_step) else final
        for k, theta in s["theta"].items():
            torch.testing.assert_close(nxt[k], theta - 0.05 * s["grad"][k], rtol=0, atol=1e-7)


def test_zero_lambdas_and_zero_rho_reduce_to_a_plain_adversarial_lora_step(tiny_open_clip_dir, image_dataset,
                                                                           tmp_path):
    def plain(trainer_, start, lr):  # TeCoA-style CE on the recorded adversarial images, SGD, nothing else
        enc = copy.deepcopy(start)
        lora = {n: p for n, p in enc.named_parameters() if "lora_" in n}
        for _, xa, y in trainer_.seen:
            e = F.normalize(enc(xa).float(), dim=-1)
            loss = F.cross_entropy(trainer_.args.logit_scale * e @ trainer_.class_embeddings.T, y)
            grads = torch.autograd.grad(loss, list(lora.values()))
            with torch.no_grad():
                for p, g in zip(lora.values(), grads):
                    p -= lr * g
        return lora_params(enc)

    _, off = make_trainer(tiny_open_clip_dir, image_dataset, tmp_path / "l0", lambda_lar=0.0, lambda_gv=0.0)
    start = copy.deepcopy(off.model)
    off.train()
    assert_params_close(lora_params(off.model), plain(off, start, 0.05), atol=1e-6)
    # ρ = 0 (no perturbation) with λ_GV = 0: the loss is (1 + λ_LAR)·CE, an SGD step at (1 + λ_LAR)·lr
    _, flat = make_trainer(tiny_open_clip_dir, image_dataset, tmp_path / "r0", awp_rho=0.0, lambda_lar=1.0,
                           lambda_gv=0.0)
    start = copy.deepcopy(flat.model)
    flat.train()
    assert_params_close(lora_params(flat.model), plain(flat, start, 0.1), atol=1e-6)


def _plain_image_features(spec, folder, x, mean, std):
    if spec == "local-dir":
        import open_clip

        plain, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
        return plain.eval().encode_image((x - mean) / std)
    from transformers import CLIPModel

    plain = CLIPModel.from_pretrained(folder).eval()
    return plain.get_image_features(pixel_values=(x - mean) / std).pooler_output


@pytest.mark.parametrize("spec", ["local-dir", "hf-clip"])
def test_merged_checkpoint_reloads_with_the_plain_loaders(spec, tiny_open_clip_dir, tiny_hf_clip_dir, image_dataset,
                                                          tmp_path):
    folder = tiny_open_clip_dir if spec == "local-dir" else tiny_hf_clip_dir
    model, trainer = make_trainer(folder, image_dataset, tmp_path / "out", spec=spec, max_steps=1)
    trainer.train()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(model.mean).view(1, 3, 1, 1), torch.tensor(model.std).view(1, 3, 1, 1)
    model.eval()
    with torch.no_grad():
        lora_out = model.encode_image(x)
        # saved while the adapters are separate: merged weights in the native layout, adapters beside them
        trainer.save_model(str(tmp_path / "lora"))
        torch.testing.assert_close(_plain_image_features(spec, tmp_path / "lora", x, mean, std), lora_out,
                                   rtol=1e-5, atol=1e-5)
        trainer.merge_and_unload()
        assert not any("lora_" in k or "base_layer" in k for k in model.state_dict())
        torch.testing.assert_close(model.encode_image(x), lora_out, rtol=1e-5, atol=1e-5)
        trainer.save_model(str(tmp_path / "merged"))
        torch.testing.assert_close(_plain_image_features(spec, tmp_path / "merged", x, mean, std), lora_out,
                                   rtol=1e-5, atol=1e-5)
    assert not (tmp_path / "merged" / "vlmrobust_extra.safetensors").exists()
    meta = json.loads((tmp_path / "merged" / "vlmrobust_config.json").read_text())
    assert meta["method"] == "grace" and isinstance(load_config(tmp_path / "merged"), GRACEConfig)


def test_resume_restores_adapters_and_curvature(tiny_open_clip_dir, image_dataset, tmp_path):
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                control.should_training_stop = True

    kw = dict(max_steps=2, save_strategy="steps", save_steps=1, curvature_interval=2)
    _, full = make_trainer(tiny_open_clip_dir, image_dataset, tmp_path / "full", **kw)
    full.train()
    _, cut = make_trainer(tiny_open_clip_dir, image_dataset, tmp_path / "cut", **kw)
    cut.add_callback(Stop())
    cut.train()
    ckpt = tmp_path / "cut" / "checkpoint-1"
    assert json.loads((ckpt / "vlmrobust_lar_awp.json").read_text())["ranks"]
    _, resumed = make_trainer(tiny_open_clip_dir, image_dataset, tmp_path / "cut", **kw)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.awp.ranks == full.awp.ranks  # K = 2: step 1 used the ranks allocated at step 0, restored
    assert resumed.awp.curvature.values == pytest.approx(full.awp.curvature.values, rel=1e-5)
    assert_params_close(lora_params(resumed.model), lora_params(full.model), atol=1e-6)


def test_grace_is_registered_and_refuses_what_it_does_not_support(tiny_open_clip_dir, image_dataset, tmp_path):
    from pathlib import Path

    m = METHODS.get("grace")
    assert (m.needs_classnames, m.trains_classifier, m.paper) == (True, False, "2603.27139")
    assert m.config_class is GRACEConfig and m.trainer_class is GRACETrainer
    cfg = GRACEConfig(output_dir=str(tmp_path))
    assert (cfg.lora_r, cfg.awp_max_rank, cfg.learning_rate, cfg.lambda_lar, cfg.lambda_gv, cfg.awp_rho,
            cfg.curvature_interval, cfg.curvature_beta, cfg.curvature_top_fraction, cfg.curvature_bottom_fraction,
            cfg.epsilon, cfg.attack_steps, cfg.attack_step_size) == (64, 4, 2e-4, 1.0, 1.0, 0.05, 1000, 0.9, 0.2, 0.2,
                                                                     4 / 255, 10, 1 / 255)
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    args = grace_args(tmp_path)
    args.deepspeed = str(Path(__file__).parent.parent / "recipes/ds_configs/zero3.json")
    with pytest.raises(ValueError, match="GRACETrainer does not support DeepSpeed ZeRO-3; supported: no DeepSpeed / "
                                         "DDP, ZeRO-2"):
        GRACETrainer(model, args, train_dataset=image_dataset, classnames=image_dataset.classnames)
    with pytest.raises(ValueError, match="activation checkpointing"):
        GRACETrainer(model, grace_args(tmp_path, activation_checkpointing=True), train_dataset=image_dataset,
                     classnames=image_dataset.classnames)
    with pytest.raises(ValueError, match="gram_perturbed_input"):
        grace_args(tmp_path, gram_perturbed_input="both")


def test_harmonic_mean_of_the_tradeoff():
    from vlmrobust.eval.tasks.corruptions import harmonic_mean

    assert harmonic_mean(0.9, 0.6, 0.3) == pytest.approx(3 / (1 / 0.9 + 1 / 0.6 + 1 / 0.3))
    assert harmonic_mean(0.7421, 0.5701, 0.2244) == pytest.approx(0.3969, abs=1e-4)  # the paper's GRACE row
    assert harmonic_mean(0.9, 0.0, 0.5) == 0.0
