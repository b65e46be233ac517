"""Behavioural tests of vlmrobust.attacks on tiny in-memory classifiers and encoders (CPU, no network)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vlmrobust.attacks import (
    APGD,
    APGDT,
    ATTACKS,
    PGD,
    STANDARD_ATTACKS,
    Attack,
    AutoAttack,
    apgd_checkpoints,
    build_attack,
    ce_loss,
    check_budget,
    dlr_loss,
    dlr_targeted_loss,
)

N_CLASSES = 10
EPS_LINF = 6 / 255
EPS_L2 = 0.5


class Normalize(nn.Module):
    """Normalisation lives inside the model, as the attacks require."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) / 0.1


class ModeSpy(nn.Module):
    """Records the training flag seen on every forward."""

    def __init__(self):
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.training)
        return x


def _synthetic(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    prototypes = (0.5 + 0.04 * torch.randn(N_CLASSES, 3, 16, 16, generator=torch.Generator().manual_seed(123))).clamp(0, 1)
    y = torch.randint(0, N_CLASSES, (n,), generator=generator)
    x = (prototypes[y] + 0.1 * torch.randn(n, 3, 16, 16, generator=generator)).clamp(0, 1)
    return x, y


@pytest.fixture(scope="module")
def classifier() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(Normalize(), nn.Flatten(), nn.Linear(3 * 16 * 16, 32), nn.ReLU(), nn.Linear(32, N_CLASSES))
    params = list(net.parameters())
    # Adam written out: constructing a torch.optim optimizer imports torch._dynamo (~4 s), paid again in every
    # process that runs this module alone (e.g. each mutmut mutant).
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    gen = torch.Generator().manual_seed(0)
    for t in range(1, 41):
        x, y = _synthetic(128, gen)
        grads = torch.autograd.grad(F.cross_entropy(net(x), y), params)
        with torch.no_grad():
            for p, g, m_p, v_p in zip(params, grads, m, v):
                m_p.mul_(0.9).add_(g, alpha=0.1)
                v_p.mul_(0.999).addcmul_(g, g, value=0.001)
                p -= 3e-3 / (1 - 0.9**t) * m_p / (v_p.sqrt() / (1 - 0.999**t) ** 0.5 + 1e-8)
    return net.eval()


@pytest.fixture(scope="module")
def batch(classifier) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _synthetic(32, torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (classifier(x).argmax(1) == y).float().mean() > 0.9, "the tiny classifier should be accurate"
    return x, y


def _reduced_autoattack(model, seed=0):
    return AutoAttack(
        model, eps=EPS_LINF, n_classes=N_CLASSES, seed=seed, attacks_to_run=list(STANDARD_ATTACKS),
        steps=10, n_target_classes=3, square_queries=100,
    )


ATTACK_FACTORIES = {
    "pgd-linf": (lambda m, seed=0: PGD(m, eps=EPS_LINF, steps=10, seed=seed), "Linf", EPS_LINF),
    "pgd-l2": (lambda m, seed=0: PGD(m, norm="L2", eps=EPS_L2, steps=10, seed=seed), "L2", EPS_L2),
    "pgd-momentum": (lambda m, seed=0: PGD(m, eps=EPS_LINF, steps=10, momentum=0.9, seed=seed), "Linf", EPS_LINF),
    "apgd-ce-linf": (lambda m, seed=0: APGD(m, eps=EPS_LINF, steps=20, seed=seed), "Linf", EPS_LINF),
    "apgd-ce-l2": (lambda m, seed=0: APGD(m, norm="l2", eps=EPS_L2, steps=20, seed=seed), "L2", EPS_L2),
    "apgd-dlr": (lambda m, seed=0: APGD(m, eps=EPS_LINF, steps=20, loss="dlr", seed=seed), "Linf", EPS_LINF),
    "apgd-t": (lambda m, seed=0: APGDT(m, eps=EPS_LINF, steps=10, n_target_classes=3, seed=seed), "Linf", EPS_LINF),
    "autoattack-reduced": (_reduced_autoattack, "Linf", EPS_LINF),
}


def _norms(delta: torch.Tensor) -> dict[str, torch.Tensor]:
    flat = delta.flatten(1)
    return {"Linf": flat.abs().amax(1), "L2": flat.norm(dim=1)}


@pytest.mark.parametrize("name", list(ATTACK_FACTORIES))
def test_attack_stays_in_ball_and_box_and_raises_loss(name, classifier, batch):
    factory, norm, eps = ATTACK_FACTORIES[name]
    x, y = batch
    result = factory(classifier).perturb(x, y)
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    for point in (result.x_adv, result.x_max_loss):
        assert point.min() >= 0 and point.max() <= 1
        assert (_norms(point - x)[norm] <= eps + 1e-6).all()
    with torch.no_grad():
        clean_loss = ce_loss(classifier(x), y)
        adv_out = classifier(result.x_adv)
    assert ce_loss(adv_out, y).mean() > clean_loss.mean()
    # success is exactly "misclassified at x_adv", and the attack broke something.
    assert torch.equal(result.success, adv_out.argmax(1) != y)
    assert result.success.any()
    assert result.loss.shape == (x.shape[0],)


@pytest.mark.parametrize("name", ["pgd-linf", "pgd-l2", "apgd-ce-l2", "apgd-t"])
def test_result_depends_on_the_attack_seed_not_the_global_rng(name, classifier, batch):
    # every random draw (start direction, radius, restarts) comes from the attack's own generator
    factory, _, _ = ATTACK_FACTORIES[name]
    x, y = batch
    results = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        results.append(factory(classifier, seed=0).perturb(x, y).x_adv)
    assert torch.equal(results[0], results[1])
    # a single image works too (the L2 start's uniform radius needs the dimension of one image)
    torch.manual_seed(3)
    one = factory(classifier, seed=0).perturb(x[:1], y[:1]).x_adv
    assert one.shape == x[:1].shape and ((_norms(one - x[:1])[ATTACK_FACTORIES[name][1]]) <= ATTACK_FACTORIES[name][2]
                                         + 1e-6).all()


@pytest.mark.parametrize("name", list(ATTACK_FACTORIES))
def test_seeded_and_leaves_rng_grads_and_modes_alone(name, classifier, batch):
    factory, _, _ = ATTACK_FACTORIES[name]
    x, y = batch
    spy = ModeSpy()
    model = nn.Sequential(spy, copy.deepcopy(classifier))
    model.train()
    model[1][2].eval()  # a partly frozen model must come back exactly as it was
    modes_before = [m.training for m in model.modules()]
    first, last = model[1][2], model[1][4]
    first.weight.grad = torch.full_like(first.weight, 0.5)
    preset = first.weight.grad.clone()
    rng_before = torch.get_rng_state()

    a = factory(model, seed=0)(x, y)
    b = factory(model, seed=0)(x, y)
    c = factory(model, seed=1)(x, y)

    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.equal(a, b), "same seed must give the same result"
    assert torch.equal(a, factory(model, seed=0).perturb(x, y).x_adv)
    assert not torch.equal(a, c), "different seeds must give different random starts"
    assert torch.equal(first.weight.grad, preset)
    assert first.bias.grad is None and last.weight.grad is None and last.bias.grad is None
    assert [m.training for m in model.modules()] == modes_before
    assert spy.seen and not any(spy.seen), "the model must run in eval mode during the attack"


def test_apgd_at_least_as_strong_as_pgd(classifier, batch):
    x, y = batch
    eps, steps = 8 / 255, 20
    pgd = PGD(classifier, eps=eps, steps=steps).perturb(x, y)
    apgd = APGD(classifier, eps=eps, steps=steps).perturb(x, y)
    with torch.no_grad():
        clean_acc = (classifier(x).argmax(1) == y).float().mean()
    pgd_acc = 1 - pgd.success.float().mean()
    apgd_acc = 1 - apgd.success.float().mean()
    assert pgd_acc < clean_acc
    assert apgd_acc <= pgd_acc


def test_apgd_restarts_only_add_successes(classifier, batch):
    x, y = batch
    one = APGD(classifier, eps=8 / 255, steps=10).perturb(x, y)
    three = APGD(classifier, eps=8 / 255, steps=10, n_restarts=3).perturb(x, y)
    # The first restart is the same run, later ones only attack what is still robust.
    assert (three.success | ~one.success).all()
    assert three.success.sum() > one.success.sum()
    kept = one.success
    assert torch.equal(three.x_adv[kept], one.x_adv[kept])


@pytest.mark.slow  # ~9 s: the full standard configuration
def test_autoattack_standard_at_most_apgd_ce(classifier, batch, monkeypatch):
    x, y = batch[0][:16], batch[1][:16]
    aa = AutoAttack(classifier, eps=EPS_LINF, n_classes=N_CLASSES)
    assert aa.is_standard and aa.steps == 100 and aa.square_queries == 5000 and aa.n_target_classes == 9
    assert aa.attacks_to_run == ("apgd-ce", "apgd-t", "fab-t", "square")
    ran: list[str] = []
    component = AutoAttack._component

    def record(self, name, wrapped):
        ran.append(name)
        return component(self, name, wrapped)

    monkeypatch.setattr(AutoAttack, "_component", record)
    aa_result = aa.perturb(x, y)
    apgd_result = APGD(classifier, eps=EPS_LINF, loss="ce", steps=100).perturb(x, y)
    aa_acc = 1 - aa_result.success.float().mean()
    apgd_acc = 1 - apgd_result.success.float().mean()
    assert aa_acc <= apgd_acc
    assert ran == list(STANDARD_ATTACKS), "every standard component should have had robust points left to attack"
    assert ((aa_result.x_adv - x).abs().flatten(1).amax(1) <= EPS_LINF + 1e-6).all()
    assert not AutoAttack(classifier, eps=EPS_LINF, n_classes=N_CLASSES, steps=10).is_standard


def test_apgd_checkpoint_schedule():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_embedding_distance_loss_with_plain_function_model():
    torch.manual_seed(0)
    net = nn.Sequential(Normalize(), nn.Flatten(), nn.Linear(3 * 16 * 16, 32), nn.Tanh(), nn.Linear(32, 16))

    def encoder(images):  # a plain function, not an nn.Module
        return net(images)

    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        clean = encoder(x)

    def distance(out, tgt):
        return ((out - tgt) ** 2).sum(-1)

    noise = (torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1) * EPS_LINF
    with torch.no_grad():
        random_distance = distance(encoder((x + noise).clamp(0, 1)), clean).mean()
    for attack in (
        PGD(encoder, eps=EPS_LINF, steps=10, loss_fn=distance),
        APGD(encoder, eps=EPS_LINF, steps=20, loss=distance),
    ):
        result = attack.perturb(x, clean)
        assert result.success is None
        assert ((result.x_adv - x).abs().flatten(1).amax(1) <= EPS_LINF + 1e-6).all()
        with torch.no_grad():
            attacked = distance(encoder(result.x_adv), clean)
        assert attacked.mean() > 10 * random_distance
        assert torch.allclose(result.loss, distance(encoder(result.x_max_loss), clean).detach(), rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in net.parameters())


def test_bf16_model_keeps_fp32_perturbation(classifier, batch):
    x, y = batch
    x = x.bfloat16().float()  # on the bf16 grid, so only an fp32 perturbation can move x_adv off it
    model = copy.deepcopy(classifier).to(torch.bfloat16)
    seen_dtypes: list[torch.dtype] = []
    model.register_forward_pre_hook(lambda module, args: seen_dtypes.append(args[0].dtype))
    eps = 2 / 255
    for attack in (PGD(model, eps=eps, steps=10), APGD(model, eps=eps, steps=20)):
        result = attack.perturb(x, y)
        assert result.x_adv.dtype == torch.float32
        assert ((result.x_adv - x).abs().flatten(1).amax(1) <= eps + 1e-6).all()
        # Strictly inside the ball (away from the final clamp to x ± eps), an fp32 perturbation leaves the bf16 grid;
        # one held in bf16 could not.
        inside = (result.x_adv - x).abs() < eps - 1e-4
        assert (result.x_adv != result.x_adv.bfloat16().float())[inside].float().mean() > 0.5
        with torch.no_grad():
            assert ce_loss(model(result.x_adv.bfloat16()), y).mean() > ce_loss(model(x.bfloat16()), y).mean()
    assert set(seen_dtypes) == {torch.bfloat16}

    # bf16 images come back in bf16, rounded toward the clean image so the ball survives the cast.
    xb = x.bfloat16()
    result = PGD(model, eps=eps, steps=5).perturb(xb, y)
    assert result.x_adv.dtype == torch.bfloat16
    assert ((result.x_adv.float() - xb.float()).abs().flatten(1).amax(1) <= eps + 1e-6).all()


def test_attack_inside_inference_mode(classifier, batch):
    x, y = batch
    with torch.inference_mode():
        x_adv = PGD(classifier, eps=EPS_LINF, steps=3)(x, y)
    assert ((x_adv - x).abs().max() <= EPS_LINF + 1e-6) and not torch.equal(x_adv, x)


def test_check_budget():
    with pytest.raises(ValueError, match=r"4/255 \(=0\.0157\)"):
        check_budget("Linf", 4)
    with pytest.raises(ValueError, match="4/255"):
        PGD(nn.Identity(), eps=4)
    with pytest.raises(ValueError, match=">= 0"):
        check_budget("L2", -0.1)
    with pytest.raises(ValueError, match="Linf.*L2.*L1"):
        check_budget("L3", 0.1)
    for norm in ("linf", "L2", "l1", "LINF"):
        check_budget(norm, 0.5)
    check_budget("L2", 4.0)  # an L2 radius above 1 is legitimate


def test_bad_inputs(classifier, batch):
    x, y = batch
    for bad in (x * 255, (x - 0.5) / 0.25):
        with pytest.raises(ValueError, match=r"\[0, ?1\]"):
            PGD(classifier, eps=EPS_LINF, steps=1)(bad, y)
    with pytest.raises(ValueError, match="per-sample"):
        PGD(classifier, eps=EPS_LINF, steps=1, loss_fn=lambda out, tgt: F.cross_entropy(out, tgt))(x, y)
    with pytest.raises(ValueError, match="labels"):
        AutoAttack(classifier, eps=EPS_LINF, n_classes=N_CLASSES)(x, torch.zeros(x.shape[0], 4))
    with pytest.raises(ValueError, match="supports"):
        PGD(classifier, norm="L1", eps=1.0)


def test_registry_and_build_attack(classifier):
    assert {"pgd", "apgd-ce", "apgd-dlr", "apgd-t", "autoattack"} <= set(ATTACKS.names())
    ce = build_attack("apgd-ce", classifier, eps=EPS_LINF)
    dlr = build_attack("apgd-dlr", classifier, eps=EPS_LINF, steps=5)
    assert isinstance(ce, APGD) and ce.loss == "ce" and ce.steps == 100
    assert isinstance(dlr, APGD) and dlr.loss == "dlr" and dlr.steps == 5
    assert isinstance(build_attack("apgd-t", classifier, eps=EPS_LINF), APGDT)
    assert isinstance(build_attack("pgd", classifier, eps=EPS_LINF), PGD)
    assert isinstance(build_attack("autoattack", classifier, eps=EPS_LINF, n_classes=N_CLASSES), AutoAttack)
    for name in ATTACKS.names():
        extra = {"n_classes": N_CLASSES} if name == "autoattack" else {}
        assert isinstance(build_attack(name, classifier, eps=0.01, **extra), Attack)
    with pytest.raises(KeyError, match="apgd-ce.*autoattack.*pgd"):
        build_attack("fgsm", classifier, eps=EPS_LINF)
    with pytest.raises(TypeError):
        build_attack("apgd-ce", classifier, eps=EPS_LINF, loss="dlr")


def test_losses_match_their_definitions():
    logits = torch.tensor([[4.0, 1.0, 3.0, 0.0, -1.0], [0.0, 2.0, 1.0, 5.0, 3.0]])
    labels = torch.tensor([0, 1])
    # sample 0: z_y=4, best other 3, top-3 = 4,3,1 -> -(4-3)/(4-1); sample 1: z_y=2, other 5, top 5,3,2
    assert torch.allclose(dlr_loss(logits, labels), torch.tensor([-1 / 3, 3 / 3]))
    targets = torch.tensor([2, 3])
    # targeted: -(z_y - z_t) / (z_π1 - (z_π3 + z_π4)/2)
    expected = torch.tensor([-(4 - 3) / (4 - (1 + 0) / 2), -(2 - 5) / (5 - (2 + 1) / 2)])
    assert torch.allclose(dlr_targeted_loss(logits, labels, targets), expected)
    assert torch.allclose(ce_loss(logits, labels), F.cross_entropy(logits, labels, reduction="none"))
    with pytest.raises(ValueError, match="labels"):
        ce_loss(logits, torch.rand(2, 5))


# -- every point the model sees, the budget, and random noise as the baseline ------------------------------------


class InputSpy(nn.Module):
    """Wraps a model and records every input batch it sees (the final `_clip` of returned points cannot hide these)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().float().clone())
        return self.model(x)


SPIED_ATTACKS = {
    **{name: spec for name, spec in ATTACK_FACTORIES.items() if name != "autoattack-reduced"},
    "pgd-momentum-l2": (lambda m, seed=0: PGD(m, norm="L2", eps=EPS_L2, steps=10, momentum=0.9, seed=seed), "L2",
                        EPS_L2),
    "pgd-mi-fgsm": (lambda m, seed=0: PGD(m, eps=EPS_LINF, steps=10, momentum=0.9, momentum_style="mi-fgsm",
                                          seed=seed), "Linf", EPS_LINF),
    "apgd-t-l2": (lambda m, seed=0: APGDT(m, norm="L2", eps=EPS_L2, steps=10, n_target_classes=3, seed=seed), "L2",
                  EPS_L2),
    # FAB-T is a minimum-norm attack whose iterates may leave the ball by design; AutoAttack re-projects its output.
    "autoattack-apgd-square": (
        lambda m, seed=0: AutoAttack(m, eps=EPS_LINF, n_classes=N_CLASSES, seed=seed, steps=10, n_target_classes=3,
                                     square_queries=50, attacks_to_run=["apgd-ce", "apgd-dlr", "apgd-t", "square"]),
        "Linf", EPS_LINF),
    "autoattack-l2-square": (
        lambda m, seed=0: AutoAttack(m, norm="L2", eps=0.2, n_classes=N_CLASSES, seed=seed, steps=5,
                                     n_target_classes=2, square_queries=50, attacks_to_run=["apgd-ce", "square"]),
        "L2", 0.2),
}


def _distance_to_nearest(points: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per row of `points`, the `norm` distance to the closest clean image (rows may be any sub-batch of x)."""
    diff = (points[:, None] - x[None]).flatten(2)
    dist = diff.abs().amax(2) if norm == "Linf" else diff.norm(dim=2)
    return dist.min(dim=1).values


@pytest.mark.parametrize("name", list(SPIED_ATTACKS))
def test_every_point_the_model_sees_is_in_ball_and_box(name, classifier, batch):
    factory, norm, eps = SPIED_ATTACKS[name]
    x, y = batch[0][:12], batch[1][:12]
    spy = InputSpy(classifier)
    factory(spy).perturb(x, y)
    assert len(spy.inputs) > 5
    for k, seen in enumerate(spy.inputs):
        assert seen.min() >= 0 and seen.max() <= 1, f"call {k} left the [0, 1] box"
        # the images are far apart compared with eps, so the nearest clean image is the one being attacked
        assert (_distance_to_nearest(seen, x, norm) <= eps * (1 + 1e-5) + 1e-6).all(), f"call {k} left the ball"


@pytest.mark.parametrize(
    ("name", "norm", "eps"),
    [("pgd", "Linf", EPS_LINF), ("pgd", "L2", EPS_L2), ("apgd-ce", "Linf", EPS_LINF), ("apgd-ce", "L2", EPS_L2)],
)
def test_attack_uses_its_budget(name, norm, eps, classifier, batch):
    x, y = batch
    extra = {"early_stop": False} if name.startswith("apgd") else {}
    res = build_attack(name, classifier, norm=norm, eps=eps, steps=20, **extra).perturb(x, y)
    delta = res.x_max_loss - x
    if norm == "Linf":
        room = ((x - eps >= 0) & (x + eps <= 1))  # coordinates where the box does not cut the ball
        at_edge = (delta.abs() >= eps * (1 - 1e-4))[room].float().mean()
        assert at_edge > 0.8, f"only {at_edge:.0%} of the free coordinates reach ±eps"
    else:
        norms = delta.flatten(1).norm(dim=1)
        assert (norms >= 0.95 * eps).float().mean() > 0.9 and (norms <= eps * (1 + 1e-5)).all()


def _uniform_in_ball(x: torch.Tensor, norm: str, eps: float, gen: torch.Generator) -> torch.Tensor:
    if norm == "Linf":
        delta = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    else:
        direction = torch.randn(x.shape, generator=gen)
        direction = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        delta = direction * eps * torch.rand(x.shape[0], generator=gen).pow(1 / x[0].numel()).view(-1, 1, 1, 1)
    return (x + delta).clamp(0, 1)


def _targeted_rank2(model):
    def loss(out, y):
        with torch.no_grad():
            rank2 = model(_CLEAN["x"]).argsort(1, descending=True)[:, 1]
        return dlr_targeted_loss(out, y, rank2)

    return loss


_CLEAN: dict[str, torch.Tensor] = {}


@pytest.mark.parametrize("name", list(ATTACK_FACTORIES))
def test_attack_beats_random_noise_of_the_same_budget(name, classifier, batch):
    factory, norm, eps = ATTACK_FACTORIES[name]
    x, y = batch
    _CLEAN["x"] = x
    loss_fn = {"apgd-dlr": dlr_loss, "apgd-t": _targeted_rank2(classifier)}.get(name, ce_loss)
    res = factory(classifier).perturb(x, y)
    gen = torch.Generator().manual_seed(7)
    if name == "autoattack-reduced":  # its objective is misclassification: fewer robust points than 8 noise draws
        with torch.no_grad():
            noise_broken = torch.stack([classifier(_uniform_in_ball(x, norm, eps, gen)).argmax(1) != y
                                        for _ in range(8)]).any(0)
        assert res.success.float().mean() > noise_broken.float().mean() + 0.2
        return
    with torch.no_grad():
        attacked = loss_fn(classifier(res.x_max_loss), y)
        noise = torch.stack([loss_fn(classifier(_uniform_in_ball(x, norm, eps, gen)), y) for _ in range(8)])
    # better than the best of 8 random points of the same ball, on average and for most samples
    assert attacked.mean() > noise.max(0).values.mean() + 0.1 * noise.std()
    if name != "apgd-t":  # APGD-T's max-loss point may come from a later target class than the rank-2 one
        assert (attacked >= noise.max(0).values).float().mean() > 0.7


@pytest.mark.parametrize(
    "make",
    [
        lambda m: PGD(m, eps=4),
        lambda m: APGD(m, eps=4),
        lambda m: APGDT(m, eps=4),
        lambda m: AutoAttack(m, eps=4, n_classes=N_CLASSES),
        lambda m: build_attack("apgd-ce", m, eps=8),
    ],
)
def test_every_attack_rejects_a_budget_in_255_units(make, classifier):
    with pytest.raises(ValueError, match=r"/255"):
        make(classifier)


def test_autoattack_components_run_only_on_still_robust_points(classifier, batch, monkeypatch):
    x, y = batch[0], batch[1].clone()
    y[:3] = (y[:3] + 1) % N_CLASSES  # wrong labels: misclassified before any attack, so never attacked
    eps = 6 / 255
    calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    component = AutoAttack._component

    def spying(self, name, wrapped):
        attack = component(self, name, wrapped)

        def run(x_sub, y_sub):
            rows = _distance_to_nearest(x_sub, x, "Linf")
            assert (rows == 0).all()
            idx = (x_sub[:, None] - x[None]).flatten(2).abs().amax(2).argmin(1)
            assert torch.equal(y[idx], y_sub)
            adv = attack(x_sub, y_sub)
            calls.append((name, idx, adv.detach().clone()))
            return adv

        return run

    monkeypatch.setattr(AutoAttack, "_component", spying)
    aa = AutoAttack(classifier, eps=eps, n_classes=N_CLASSES, steps=10, n_target_classes=3, square_queries=200)
    res = aa.perturb(x, y)
    assert [c[0] for c in calls] == list(STANDARD_ATTACKS), "each component must have run"
    sizes = [len(c[1]) for c in calls]
    assert sizes[0] > sizes[1] > sizes[2] > 0, sizes  # APGD-CE and APGD-T each break points the next never sees
    with torch.no_grad():
        robust = classifier(x).argmax(1) == y
    assert not robust[:3].any() and robust[3:].all()
    expected_adv = x.clone()
    for name, idx, adv in calls:
        assert torch.equal(idx, robust.nonzero().squeeze(1)), f"{name} must get exactly the still-robust points"
        assert ((adv - x[idx]).abs().flatten(1).amax(1) <= eps + 1e-6).all()
        with torch.no_grad():
            fooled = classifier(adv).argmax(1) != y[idx]
        expected_adv[idx[fooled]] = adv[fooled]
        robust[idx[fooled]] = False
    assert torch.equal(res.success, ~robust)
    torch.testing.assert_close(res.x_adv, expected_adv, atol=1e-6, rtol=0)
    torch.testing.assert_close(res.loss, ce_loss(classifier(res.x_adv), y).detach())
    assert torch.equal(res.x_max_loss, res.x_adv)


def test_apgdt_targets_the_next_classes_in_clean_rank_order_on_robust_points(classifier, batch, monkeypatch):
    import vlmrobust.attacks.apgd as apgd_module

    x, y = batch[0][:12], batch[1][:12].clone()
    y[:2] = (y[:2] + 1) % N_CLASSES  # misclassified before the attack
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = apgd_module.dlr_targeted_loss

    def recording(out, labels, targets):
        seen.append((labels.clone(), targets.clone()))
        return original(out, labels, targets)

    monkeypatch.setattr(apgd_module, "dlr_targeted_loss", recording)
    attack = APGDT(classifier, eps=1 / 255, steps=3, n_target_classes=3)
    res = attack.perturb(x, y)
    with torch.no_grad():
        ranking = classifier(x).argsort(1, descending=True)
    # 1/255 breaks nothing here, so every target class runs on the 10 correctly classified points
    assert torch.equal(res.success, torch.arange(12) < 2)
    # call 0 scores the clean images against the rank-2 class; then per target class 1 + 3 calls
    assert torch.equal(seen[0][1], ranking[:, 1]) and torch.equal(seen[0][0], y)
    assert len(seen) == 1 + 3 * 4
    for k, (labels, targets) in enumerate(seen[1:]):
        rank = 1 + k // 4
        assert torch.equal(labels, y[2:]) and torch.equal(targets, ranking[2:, rank]), (k, rank)
    assert repr(attack).startswith("APGDT(") and "n_target_classes=3" in repr(attack)
    with pytest.raises(ValueError, match="n_target_classes"):
        APGDT(classifier, eps=EPS_LINF, n_target_classes=0)
    with pytest.raises(ValueError, match="^APGDT needs integer class labels of shape"):
        APGDT(classifier, eps=EPS_LINF, steps=1)(x, torch.zeros(12, 3))
    with pytest.raises(ValueError, match="^APGDT needs a classifier returning .* n_classes >= 4"):
        APGDT(lambda z: z.flatten(1)[:, :3], eps=EPS_LINF, steps=1)(x, y)
    four = APGDT(lambda z: z.flatten(1)[:, :4], eps=1e-4, steps=2, n_target_classes=9)
    four.record_step_sizes = True
    logits4 = x.flatten(1)[:, :4]
    res4 = four.perturb(x, logits4.argmax(1))
    assert not res4.success.any() and len(four.step_sizes) == 3  # 4 classes are enough: 3 target classes
    with pytest.raises(ValueError, match="n_classes=7 but the model returns 10 logits"):
        APGD(classifier, eps=EPS_LINF, steps=1, n_classes=7)(x, y)


def test_autoattack_components_have_the_standard_settings(classifier):
    from vlmrobust.attacks.autoattack import _TorchattacksModel

    y2 = torch.tensor([0, 1])

    aa = AutoAttack(classifier, norm="L2", eps=0.5, n_classes=N_CLASSES, seed=3)
    aa._model_dtype = torch.float32
    wrapped = _TorchattacksModel(classifier, torch.device("cpu"))
    ce, dlr, t = (aa._component(name, wrapped) for name in ("apgd-ce", "apgd-dlr", "apgd-t"))
    for apgd, loss in ((ce, "ce"), (dlr, "dlr"), (t, "dlr-targeted")):
        assert (apgd.norm, apgd.eps, apgd.steps, apgd.n_restarts, apgd.seed, apgd.loss) == ("L2", 0.5, 100, 1, 3, loss)
        assert apgd.input_dtype == torch.float32 and apgd.model is classifier
    assert isinstance(t, APGDT) and t.n_target_classes == 9
    fab = aa._component("fab-t", wrapped)
    assert type(fab).__name__ == "FAB" and fab.model is wrapped
    assert (fab.norm, fab.eps, fab.steps, fab.n_restarts, fab.seed) == ("L2", 0.5, 100, 1, 3)
    assert fab.multi_targeted and fab.n_target_classes == 9
    square = aa._component("square", wrapped)
    assert type(square).__name__ == "Square" and square.model is wrapped
    assert (square.norm, square.eps, square.n_queries, square.n_restarts, square.seed) == ("L2", 0.5, 5000, 1, 3)
    assert (square.p_init, square.loss, square.rescale_schedule) == (0.8, "margin", True)
    custom = AutoAttack(classifier, eps=EPS_LINF, n_classes=N_CLASSES, steps=7, n_target_classes=3, square_queries=50)
    custom._model_dtype = torch.float32
    assert [custom._component(n, wrapped).steps for n in ("apgd-ce", "apgd-t", "fab-t")] == [7, 7, 7]
    assert custom._component("apgd-t", wrapped).n_target_classes == 3
    assert custom._component("fab-t", wrapped).n_target_classes == 3
    assert custom._component("square", wrapped).n_queries == 50
    few = AutoAttack(classifier, eps=EPS_LINF, n_classes=4, n_target_classes=9)
    few._model_dtype = torch.float32
    assert few._component("fab-t", wrapped).n_target_classes == 3  # clipped to n_classes - 1
    assert few.is_standard and "standard=True" in repr(few)
    fast = AutoAttack(classifier, eps=EPS_LINF, n_classes=N_CLASSES, version="fast")
    assert fast.attacks_to_run == ("apgd-ce", "apgd-t") and not fast.is_standard
    for bad in ({"version": "plus"}, {"attacks_to_run": ["pgd"]}, {"attacks_to_run": []}):
        with pytest.raises(ValueError):
            AutoAttack(classifier, eps=EPS_LINF, n_classes=N_CLASSES, **bad)
    with pytest.raises(ValueError, match="n_classes must be >= 2"):
        AutoAttack(classifier, eps=EPS_LINF, n_classes=1)
    flat = nn.Sequential(nn.Flatten(), nn.Linear(12, N_CLASSES))
    for name in ("fab-t", "square"):
        with pytest.raises(ValueError, match=r"^FAB-T and Square need \[B, C, H, W\] images\.$"):
            AutoAttack(flat, eps=EPS_LINF, n_classes=N_CLASSES, attacks_to_run=[name])(torch.rand(2, 12), y2)
    AutoAttack(flat, eps=EPS_LINF, n_classes=N_CLASSES, attacks_to_run=["apgd-ce"], steps=1)(torch.rand(2, 12), y2)
    with pytest.raises(ValueError, match=r"needs \[B, 5\] logits \(n_classes=5\), got \(2, 10\)\.$"):
        AutoAttack(classifier, eps=EPS_LINF, n_classes=5, steps=1)(torch.rand(2, 3, 16, 16), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"got tuple\.$"):
        AutoAttack(lambda z: (z,), eps=EPS_LINF, n_classes=5, steps=1)(torch.rand(2, 3, 16, 16), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"^AutoAttack needs integer class labels of shape \[B\] as target\.$"):
        AutoAttack(classifier, eps=EPS_LINF, n_classes=N_CLASSES)(torch.rand(2, 3, 16, 16), torch.rand(2))
    with pytest.raises(ValueError, match="n_classes=7 but the model returns 10 logits"):
        APGDT(classifier, eps=EPS_LINF, steps=1, n_classes=7)(torch.rand(2, 3, 16, 16), torch.tensor([0, 1]))
