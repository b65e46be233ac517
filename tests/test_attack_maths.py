"""Exact-maths tests of the attacks: PGD's momentum rules against reference loops written here, APGD's step-size
schedule against a hand-traced case, and the projection / random-start primitives on their own (CPU, < 2 s)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlmrobust.attacks import APGD, PGD
from vlmrobust.attacks.apgd import apgd_checkpoints


def _identity(out, target):
    return out


class Recorder:
    """A plain-function model that records every input it is called with."""

    def __init__(self, fn):
        self.fn = fn
        self.inputs: list[torch.Tensor] = []

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.inputs.append(z.detach().clone())
        return self.fn(z)


def _unit(g: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit norm, written independently of the library."""
    if norm == "Linf":
        return torch.sign(g)
    return F.normalize(g.flatten(1), p=2, dim=1, eps=1e-12).view_as(g)


def _proj(x: torch.Tensor, delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """The projection the attacks document: into the box [0, 1], and into the ε-ball by shrinking toward x."""
    if norm == "Linf":
        return (x + delta.clamp(-eps, eps)).clamp(0, 1) - x
    delta = (x + delta).clamp(0, 1) - x
    n = delta.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
    return delta * torch.clamp(eps / n, max=1.0)


# -- PGD momentum -----------------------------------------------------------------------------------------------


def _smooth_loss():
    """A non-linear per-sample loss whose gradient turns as the point moves (so momentum changes the path)."""
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(24, 2 * 4 * 4, generator=gen) * 3
    b = torch.randn(24, generator=gen)

    def fn(z):
        h = torch.tanh(z.flatten(1) @ w.T + b)
        return (h * torch.linspace(-1, 1, 24)).sum(1) + (h**2).sum(1)

    return fn


def _reference_pgd(fn, x, *, eps, alpha, steps, mu, style, norm):
    """PGD from the clean image: the iterates x + δ_0 … x + δ_steps, following the update rules in PGD's docstring."""
    delta, v, points = torch.zeros_like(x), torch.zeros_like(x), []
    for _ in range(steps):
        points.append(x + delta)
        d = delta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(x + d).sum(), d)
        if mu == 0:
            step = _unit(g, norm)
        elif style == "fare":  # RobustVLM train/pgd_train.py: v = normalize(mu*v + normalize(grad)); delta += a*v
            v = _unit(mu * v + _unit(g, norm), norm)
            step = v
        else:  # MI-FGSM: v = mu*v + grad/||grad||_1; delta += a*normalize(v)
            v = mu * v + g / g.abs().flatten(1).sum(1).view(-1, 1, 1, 1)
            step = _unit(v, norm)
        delta = _proj(x, delta + alpha * step, eps, norm)
    points.append(x + delta)
    return points


@pytest.mark.parametrize("style", ["fare", "mi-fgsm"])
@pytest.mark.parametrize("norm", ["L2", "Linf"])
def test_pgd_momentum_iterates_match_reference(style, norm):
    x = (0.5 + 0.3 * torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    eps, alpha, steps, mu = (1.0, 0.3, 8, 0.6) if norm == "L2" else (0.1, 0.04, 8, 0.6)
    fn = _smooth_loss()
    spy = Recorder(fn)
    atk = PGD(spy, norm=norm, eps=eps, alpha=alpha, steps=steps, random_start=False, momentum=mu,
              momentum_style=style, loss_fn=_identity)
    atk.perturb(x, torch.zeros(3))
    ref = _reference_pgd(fn, x, eps=eps, alpha=alpha, steps=steps, mu=mu, style=style, norm=norm)
    assert len(spy.inputs) == steps + 1
    for k, (seen, want) in enumerate(zip(spy.inputs, ref)):
        torch.testing.assert_close(seen, want, atol=1e-6, rtol=0, msg=f"iterate {k}")

    # Momentum must matter in this case: the rule without it (and the other rule) walks elsewhere.
    plain = _reference_pgd(fn, x, eps=eps, alpha=alpha, steps=steps, mu=0, style=style, norm=norm)
    other = _reference_pgd(fn, x, eps=eps, alpha=alpha, steps=steps, mu=mu,
                           style="mi-fgsm" if style == "fare" else "fare", norm=norm)
    if norm == "L2" or style == "mi-fgsm":
        assert (ref[-1] - plain[-1]).abs().max() > 1e-3
    else:
        # FARE's rule under L∞ with mu < 1 is the plain sign step wherever the gradient is non-zero.
        torch.testing.assert_close(ref[-1], plain[-1], atol=0, rtol=0)
    assert (ref[-1] - other[-1]).abs().max() > 1e-3 or (norm == "Linf" and style == "fare")


def test_pgd_momentum_defaults_and_validation():
    fn = _smooth_loss()
    assert PGD(fn, eps=0.1).momentum_style == "fare"
    assert "momentum_style='mi-fgsm'" in repr(PGD(fn, eps=0.1, momentum=0.9, momentum_style="mi-fgsm"))
    with pytest.raises(ValueError, match="momentum_style"):
        PGD(fn, eps=0.1, momentum=0.9, momentum_style="nesterov")
    with pytest.raises(ValueError, match="momentum"):
        PGD(fn, eps=0.1, momentum=-0.5)
    with pytest.raises(ValueError, match="alpha"):
        PGD(fn, eps=0.1, alpha=-1.0)
    # Default step sizes: eps/4 for L∞, 2.5·eps/steps for L2.
    assert PGD(fn, eps=0.1).alpha == pytest.approx(0.025)
    assert PGD(fn, norm="L2", eps=1.0, steps=5).alpha == pytest.approx(0.5)
    assert PGD(fn, norm="L2", eps=1.0, steps=0).alpha == pytest.approx(2.5)


# -- APGD step-size schedule, hand-traced ----------------------------------------------------------------------

# 20 steps: checkpoints after iterations 5, 9, 12, 14, 16, 18, 19 (20 is the end: no decision there), so the
# windows hold 5, 4, 3, 2, 2, 2, 1 iterations and need ≥ 3.75, 3, 2.25, 1.5, 1.5, 1.5, 0.75 increases (rho = 0.75).
_STEPS = 20
# Scripted loss after each iteration k = 0 … 19 (the loss at the starting point is 0 for every sample).
_LOSSES = [
    # 0: always increases -> η never changes.
    [float(k + 1) for k in range(20)],
    # 1: never increases -> η halves at every checkpoint, always back to the starting point.
    [0.0] * 20,
    # 2: window 2 has exactly 3 of 4 increases (= rho·4: no halving); window 3 only 2 of 3 -> halve after 12;
    #    window 5 has 1 of 2 -> halve after 16.
    [1, 2, 3, 3, 4, 5, 5, 6, 7, 8, 8, 9, 10, 11, 12, 12, 13, 14, 15, 16],
    # 3: window 2 has 3 of 4 increases but never beats the best loss 5 of window 1 (and window 1 did not halve)
    #    -> halve after 9 and restart from iteration 4; window 3 counts its first step against that best loss
    #    (4.5 < 5: not an increase), so 2 of 3 -> halve after 12.
    [1, 2, 3, 4, 5, 1, 2, 3, 4, 4.5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    # 4: window 1 flat -> halve after 5; window 2 has 3 of 4 increases below the best loss, but the previous
    #    checkpoint halved, so the "nothing changed" rule does not apply -> no halving.
    [0, 0, 0, 0, 0, -3, -2, -1, -0.5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    # 5: window 1 counts all 5 iterations (from 0, not 1): 3 increases < 3.75 -> halve after 5; then always up.
    [1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18],
]
# η / ε used at each iteration, derived by hand from the rules above.
_ETA_OVER_EPS = [
    [2] * 20,
    [2] * 5 + [1] * 4 + [0.5] * 3 + [0.25] * 2 + [0.125] * 2 + [0.0625] * 2 + [0.03125] + [0.015625],
    [2] * 12 + [1] * 4 + [0.5] * 4,
    [2] * 9 + [1] * 3 + [0.5] * 8,
    [2] * 5 + [1] * 15,
    [2] * 5 + [1] * 15,
]


def test_apgd_checkpoints_hand_computed():
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99, 1.05 -> ceil(p·n), deduplicated, within 1 … n
    assert apgd_checkpoints(20) == [5, 9, 12, 14, 16, 18, 19, 20]
    assert apgd_checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(1) == [1]
    assert apgd_checkpoints(0) == []


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_apgd_step_size_schedule_and_iterates_hand_traced(norm):
    n, dim = len(_LOSSES), 16
    eps = 0.1 if norm == "Linf" else 0.5
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(n, 1, 4, 4, generator=gen) * 0.6 + 0.2
    x[:, 0, 0, :2] = torch.tensor([0.01, 0.99])  # pixels where the box, not the ball, binds
    # call 0 scores the clean image, call 1 the starting point, call k + 2 the iterate after step k.
    values = torch.tensor([[-100.0] * n, [0.0] * n] + [list(col) for col in zip(*_LOSSES)])
    grads = torch.randn(_STEPS + 2, n, dim, generator=gen)  # scripted gradient at every call (turns each time)

    def scripted(z):
        i = len(spy.inputs) - 1
        lin = (z.flatten(1) * grads[i]).sum(1)
        return values[i] + (lin - lin.detach())  # value exactly scripted, gradient = grads[i]

    spy = Recorder(scripted)
    atk = APGD(spy, norm=norm, eps=eps, steps=_STEPS, loss=_identity, seed=0)
    atk.record_step_sizes = True
    res = atk.perturb(x, torch.zeros(n))
    assert len(spy.inputs) == _STEPS + 2

    eta = torch.tensor(_ETA_OVER_EPS).T * eps  # [steps, n]
    assert len(atk.step_sizes) == 1
    torch.testing.assert_close(atk.step_sizes[0], eta, atol=1e-9, rtol=0)

    # Every iterate follows z = Π(x_k + η·s(∇)), x_{k+1} = Π(x_k + .75(z − x_k) + .25(x_k − x_{k−1})), and a halving
    # restarts from the best point with its gradient and no momentum.
    deltas = [p - x for p in spy.inputs[1:]]
    loss = values[1:]
    cur = prev = deltas[0]
    g = grads[1].view_as(x)
    best_loss, best_d, best_g = loss[0].clone(), deltas[0], g
    for k in range(_STEPS):
        if k > 0:
            restart = (eta[k] < eta[k - 1]).view(-1, 1, 1, 1)
            cur, prev = torch.where(restart, best_d, cur), torch.where(restart, best_d, prev)
            g = torch.where(restart, best_g, g)
        z = _proj(x, cur + eta[k].view(-1, 1, 1, 1) * _unit(g, norm), eps, norm)
        new = z if k == 0 else _proj(x, cur + 0.75 * (z - cur) + 0.25 * (cur - prev), eps, norm)
        torch.testing.assert_close(deltas[k + 1], new, atol=1e-6, rtol=0, msg=f"iterate {k}")
        prev, cur, g = cur, deltas[k + 1], grads[k + 2].view_as(x)
        better = loss[k + 1] > best_loss
        best_loss = torch.where(better, loss[k + 1], best_loss)
        best_d = torch.where(better.view(-1, 1, 1, 1), cur, best_d)
        best_g = torch.where(better.view(-1, 1, 1, 1), g, best_g)

    torch.testing.assert_close(res.loss, values.max(0).values)
    torch.testing.assert_close(res.x_max_loss, x + best_d, atol=1e-6, rtol=0)
    assert res.success is None and torch.equal(res.x_adv, res.x_max_loss)


def test_apgd_step_sizes_off_by_default_and_reset_per_call():
    fn = _smooth_loss()
    x = torch.full((2, 2, 4, 4), 0.5)
    atk = APGD(fn, eps=0.1, steps=3, loss=_identity, n_restarts=2)
    atk.perturb(x, torch.zeros(2))
    assert atk.step_sizes == []
    atk.record_step_sizes = True
    atk.perturb(x, torch.zeros(2))
    atk.perturb(x, torch.zeros(2))
    assert len(atk.step_sizes) == 2 and atk.step_sizes[0].shape == (3, 2)
    atk.steps = 0
    atk.perturb(x, torch.zeros(2))
    assert [s.shape for s in atk.step_sizes] == [(0, 2), (0, 2)]


# -- primitives: projection and random start --------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_project_is_the_documented_projection(norm):
    eps = 0.1 if norm == "Linf" else 0.8
    atk = PGD(_smooth_loss(), norm=norm, eps=eps)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 2, 4, 4, generator=gen)
    x[:4] = 0.5  # the box cannot bind here for small steps
    for scale in (0.01, 1.0, 10.0):
        delta = torch.randn(x.shape, generator=gen) * scale
        out = atk._project(x, delta)
        torch.testing.assert_close(out, _proj(x, delta, eps, norm), atol=1e-7, rtol=0)
        assert ((x + out) >= 0).all() and ((x + out) <= 1).all()
        if norm == "Linf":
            assert out.abs().max() <= eps + 1e-6
        else:
            assert (out.flatten(1).norm(dim=1) <= eps * (1 + 1e-6)).all()
    small = torch.full_like(x[:4], 1e-3)
    torch.testing.assert_close(atk._project(x[:4], small), small)  # inside both: unchanged


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_random_init_is_uniform_in_the_ball(norm):
    eps = 0.05 if norm == "Linf" else 0.3
    atk = PGD(_smooth_loss(), norm=norm, eps=eps)
    gen = torch.Generator().manual_seed(1)
    # d = 2: the radius of a uniform point in a disc has P(r ≤ t) = (t/ε)², so its median is ε/√2.
    x = torch.full((4000, 2), 0.5)
    delta = atk._random_init(x, gen)
    if norm == "Linf":
        assert delta.abs().max() <= eps and delta.abs().max() > 0.99 * eps
        assert delta.mean().abs() < 0.05 * eps
        # uniform on [-ε, ε]: a quarter of the samples below -ε/2
        assert (delta < -eps / 2).float().mean() == pytest.approx(0.25, abs=0.03)
    else:
        r = delta.norm(dim=1)
        assert r.max() <= eps * (1 + 1e-6)
        assert r.median() == pytest.approx(eps / 2**0.5, rel=0.05)
        assert (r < eps / 2).float().mean() == pytest.approx(0.25, abs=0.03)
        angle = torch.atan2(delta[:, 1], delta[:, 0])
        assert (angle > 0).float().mean() == pytest.approx(0.5, abs=0.05)
    # near the edge of the box the sample is projected back into [0, 1]
    edge = torch.zeros(500, 3)
    d2 = atk._random_init(edge, gen)
    assert (d2 >= 0).all() and (d2 > 0).float().mean() > 0.3


# -- losses and norms on hand-computed values --------------------------------------------------------------------


def test_per_sample_norm_matches_its_definition():
    from vlmrobust.attacks.base import per_sample_norm

    d = torch.tensor([[[3.0, -4.0]], [[0.0, -2.0]]])  # [B=2, 1, 2]
    assert torch.equal(per_sample_norm(d, "Linf"), torch.tensor([4.0, 2.0]))
    assert torch.equal(per_sample_norm(d, "L2"), torch.tensor([5.0, 2.0]))
    assert torch.equal(per_sample_norm(d, "L1"), torch.tensor([7.0, 2.0]))


def test_losses_on_ties_and_their_checks():
    from vlmrobust.attacks import ce_loss, dlr_loss, dlr_targeted_loss
    from vlmrobust.attacks.losses import resolve_loss

    # top-1 = top-3: the 1e-12 keeps the ratio finite and its sign that of the margin
    tie = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert dlr_loss(tie, torch.tensor([3])) > 1e9
    assert dlr_targeted_loss(torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]]), torch.tensor([4]), torch.tensor([0])) > 1e9
    # the smallest valid problems: 3 classes for DLR, 4 for targeted DLR
    torch.testing.assert_close(dlr_loss(torch.tensor([[3.0, 1.0, 0.0]]), torch.tensor([0])), torch.tensor([-2 / 3]))
    torch.testing.assert_close(dlr_targeted_loss(torch.tensor([[3.0, 1.0, 0.0, -1.0]]), torch.tensor([0]),
                                                 torch.tensor([1])), torch.tensor([-(3 - 1) / (3 - (0 - 1) / 2)]))
    # rescaling and shifting the logits leaves DLR unchanged; the targeted variant too
    z = torch.tensor([[2.0, -1.0, 0.5, 0.0, 3.0]])
    y, t = torch.tensor([0]), torch.tensor([2])
    torch.testing.assert_close(dlr_loss(5 * z + 7, y), dlr_loss(z, y))
    torch.testing.assert_close(dlr_targeted_loss(5 * z + 7, y, t), dlr_targeted_loss(z, y, t))
    torch.testing.assert_close(dlr_targeted_loss(z, y, t), torch.tensor([-(2.0 - 0.5) / (3.0 - (0.5 + 0.0) / 2)]))
    with pytest.raises(ValueError, match="dlr_loss needs at least 3 classes"):
        dlr_loss(torch.zeros(2, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="dlr_targeted_loss needs at least 4 classes"):
        dlr_targeted_loss(torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="dlr_targeted_loss expects integer class labels"):
        dlr_targeted_loss(torch.zeros(2, 5), torch.tensor([0, 1]), torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="ce_loss needs at least 2 classes"):
        ce_loss(torch.zeros(2, 1), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=r"ce_loss expects \[B, n_classes\] logits"):
        ce_loss(torch.zeros(2, 3, 1), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=r"dlr_loss expects integer class labels of shape \[2\]"):
        dlr_loss(torch.zeros(2, 4), torch.tensor([0, 1, 2]))
    assert resolve_loss("CE") is ce_loss and resolve_loss("dlr") is dlr_loss
    with pytest.raises(ValueError, match="Unknown loss 'hinge'"):
        resolve_loss("hinge")


# -- scripted classifiers: best-point bookkeeping, early stopping, restarts ------------------------------------------


class ScriptedById:
    """Logits [B, 3] whose column 1 follows a per-sample script indexed by how often that sample was seen.

    Samples are recognised by their nearest clean image, so sub-batches (restarts on still-robust points) work.
    Column 0 is 1 (the true class is 0), column 2 is 0: the sample is misclassified exactly when its script is > 1.
    """

    def __init__(self, x: torch.Tensor, scripts: list[list[float]], seed: int = 0):
        self.x, self.scripts = x, scripts
        self.count = [0] * len(scripts)
        self.rows: list[tuple[int, int, torch.Tensor]] = []  # (sample id, its call number, the input row)
        self.calls: list[list[int]] = []
        # the gradient of column 1: a fresh random direction at every call, so iterates keep moving
        self.direction = torch.randn(len(scripts), 32, *x.shape[1:], generator=torch.Generator().manual_seed(seed))

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        ids = (z[:, None] - self.x[None]).flatten(2).abs().amax(2).argmin(1).tolist()
        self.calls.append(ids)
        vals, dirs = [], []
        for row, i in enumerate(ids):
            dirs.append(self.direction[i, self.count[i]])
            script = self.scripts[i]
            vals.append(script[min(self.count[i], len(script) - 1)])
            self.rows.append((i, self.count[i], z[row].detach().clone()))
            self.count[i] += 1
        lin = (z * torch.stack(dirs)).flatten(1).sum(1)
        col1 = torch.tensor(vals) + (lin - lin.detach())
        return torch.stack([torch.ones_like(col1), col1, torch.zeros_like(col1)], dim=1)

    def row(self, i: int, c: int) -> torch.Tensor:
        return next(r for j, k, r in self.rows if j == i and k == c)


def _margin(out, y):
    return out[:, 1] - out[:, 0]


def _four_images():
    return torch.stack([torch.full((1, 2, 2), v) for v in (0.2, 0.4, 0.6, 0.8)])


def test_apgd_early_stop_first_success_and_restarts_on_robust_points_only():
    x, y = _four_images(), torch.zeros(4, dtype=torch.long)
    scripts = [
        [2.0],  # 0: misclassified before the attack -> never attacked
        [0.1, 0.2, 0.3, 0.5, 1.5, 1.6, 1.7],  # 1: broken at its call 4 (iteration 2) -> frozen there, no restart
        # 2: never broken; best in restart 2 (0.95), which restart 3 only ties: the earlier point stays
        [0.1, 0.2, 0.9, 0.3, 0.4, 0.2, 0.1, 0.2, 0.5, 0.3, 0.95, 0.4, 0.3, 0.95],
        [0.1, 0.2, 0.3, 0.2, 0.1, 0.2, 0.3, 0.1, 0.4, 0.5, 1.2, 0.1, 0.1],  # 3: broken in restart 2 at its call 10
    ]
    model = ScriptedById(x, scripts)
    res = APGD(model, eps=0.03, steps=5, n_restarts=3, loss=_margin, seed=0).perturb(x, y)
    assert model.calls[0] == [0, 1, 2, 3]  # the clean scoring
    assert all(0 not in ids for ids in model.calls[1:])
    assert all(ids == [1, 2, 3] for ids in model.calls[1:7]) and all(ids == [2, 3] for ids in model.calls[7:13])
    assert model.calls[13:] == [[2]] * 6  # restart 3: the one point still robust
    assert all(torch.equal(model.row(1, c), model.row(1, 4)) for c in (5, 6)), "a broken point stops moving"
    assert not torch.equal(model.row(2, 5), model.row(2, 4))
    assert torch.equal(res.success, torch.tensor([True, True, False, True]))
    assert torch.equal(res.x_adv[0], x[0])
    torch.testing.assert_close(res.x_adv[1], model.row(1, 4))
    torch.testing.assert_close(res.x_adv[3], model.row(3, 10))
    torch.testing.assert_close(res.x_max_loss[2], model.row(2, 10))
    torch.testing.assert_close(res.x_adv[2], res.x_max_loss[2])
    torch.testing.assert_close(res.loss[2], torch.tensor(0.95 - 1))
    torch.testing.assert_close(res.loss[0], torch.tensor(2.0 - 1))

    # Without early stopping every sample runs in every restart, broken or not.
    model = ScriptedById(x, scripts)
    res = APGD(model, eps=0.03, steps=5, n_restarts=2, loss=_margin, seed=0, early_stop=False).perturb(x, y)
    assert all(ids == [0, 1, 2, 3] for ids in model.calls)
    assert not torch.equal(model.row(1, 6), model.row(1, 4))
    assert torch.equal(res.success, torch.tensor([True, True, False, True]))
    torch.testing.assert_close(res.x_adv[1], model.row(1, 4))  # still the first misclassified point


def test_pgd_return_max_loss_keeps_the_first_best_iterate():
    x, y = _four_images()[:2], torch.zeros(2, dtype=torch.long)
    # calls 0-3: the iterates before each step, call 4: the last iterate
    scripts = [[0.1, 0.5, 0.5, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4, 1.5]]
    model = ScriptedById(x, scripts)
    res = PGD(model, eps=0.05, steps=4, random_start=False, loss_fn=_margin, return_max_loss=True).perturb(x, y)
    assert len(model.calls) == 5
    torch.testing.assert_close(res.x_adv[0], model.row(0, 1))  # ties keep the first
    torch.testing.assert_close(res.x_adv[1], model.row(1, 4))
    torch.testing.assert_close(res.loss, torch.tensor([0.5 - 1, 1.5 - 1]))
    assert torch.equal(res.success, torch.tensor([False, True]))
    torch.testing.assert_close(res.x_max_loss, res.x_adv)

    model = ScriptedById(x, [[0.1, 1.5, 0.5, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4, 0.9]])
    res = PGD(model, eps=0.05, steps=4, random_start=False, loss_fn=_margin).perturb(x, y)
    torch.testing.assert_close(res.x_adv[0], model.row(0, 4))  # the last iterate ...
    torch.testing.assert_close(res.x_max_loss[0], model.row(0, 1))  # ... and the best one
    assert torch.equal(res.success, torch.tensor([False, False]))  # judged at the last iterate
    # success of the max-loss point is judged by the prediction at that point, not at a later one
    model = ScriptedById(x, [[1.5, 0.2, 0.2, 1.6, 1.7], [1.5, 1.6, 1.7, 1.8, 1.9]])
    res = PGD(model, eps=0.05, steps=4, random_start=False, loss_fn=lambda out, t: -_margin(out, t),
              return_max_loss=True).perturb(x, y)
    torch.testing.assert_close(res.x_adv[0], model.row(0, 1))
    assert torch.equal(res.success, torch.tensor([False, True]))
    model = ScriptedById(x, scripts)
    PGD(model, eps=0.05, steps=4, random_start=False, loss_fn=_margin)(x, y)
    assert len(model.calls) == 4, "the training path skips scoring the last iterate"


def test_apgd_eot_averages_gradient_and_loss():
    x = torch.full((2, 2, 4, 4), 0.5)
    fn = _smooth_loss()
    spy = Recorder(fn)
    res = APGD(spy, eps=0.05, steps=4, loss=_identity, eot_iter=3, random_start=False).perturb(x, torch.zeros(2))
    # clean + 3 at the start + 3 for each of the first 3 iterations + 1 plain forward for the last
    assert len(spy.inputs) == 1 + 3 + 3 * 3 + 1
    torch.testing.assert_close(res.loss, fn(res.x_max_loss), atol=1e-5, rtol=0)
    ref = APGD(fn, eps=0.05, steps=4, loss=_identity, random_start=False).perturb(x, torch.zeros(2))
    torch.testing.assert_close(res.x_max_loss, ref.x_max_loss)  # a deterministic model: EoT changes nothing
    # _eval itself: the mean loss and the mean gradient over eot_iter calls, each with the target
    delta = torch.full_like(x, 0.01)
    d = delta.clone().requires_grad_(True)
    (want_grad,) = torch.autograd.grad((3 * fn(x + d)).sum(), d)
    for eot in (1, 2, 3):
        spy = Recorder(fn)
        atk = APGD(spy, eps=0.05, loss=lambda out, t: out * t, eot_iter=eot)
        loss, grad, _ = atk._eval(x, delta, torch.full((2,), 3.0), atk.loss_fn, need_grad=True)
        assert len(spy.inputs) == eot
        torch.testing.assert_close(loss, 3 * fn(x + delta).detach())
        torch.testing.assert_close(grad, want_grad)
        loss, grad, _ = atk._eval(x, delta, torch.full((2,), 3.0), atk.loss_fn, need_grad=False)
        assert grad is None and len(spy.inputs) == eot + 1
    with pytest.raises(ValueError, match="eot_iter"):
        APGD(fn, eps=0.05, eot_iter=0)
    with pytest.raises(ValueError, match="n_restarts"):
        APGD(fn, eps=0.05, n_restarts=0)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_clip_guards_returned_points_exactly(norm):
    eps = 3 / 255 if norm == "Linf" else 0.5
    atk = PGD(_smooth_loss(), norm=norm, eps=eps)
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(256, 3, 8, 8, generator=gen)
    far = x + torch.randn(x.shape, generator=gen)
    out = atk._clip(x, far)
    assert out.min() >= 0 and out.max() <= 1
    if norm == "Linf":
        # exactly inside in float arithmetic, not just up to rounding: x_adv ∈ [x - eps, x + eps] element-wise
        assert ((out >= x - eps) & (out <= x + eps)).all()
        edge = atk._clip(x, x + eps * torch.sign(torch.randn(x.shape, generator=gen)))
        assert ((edge >= x - eps) & (edge <= x + eps)).all()
    else:
        assert ((out - x).flatten(1).norm(dim=1) <= eps * (1 + 1e-6)).all()
    torch.testing.assert_close(out, x + _proj(x, far - x, eps, norm), atol=1e-6, rtol=0)


def test_check_budget_boundary_and_cast_toward():
    from vlmrobust.attacks import check_budget
    from vlmrobust.attacks.base import cast_toward

    check_budget("Linf", 1.0)  # the whole pixel range is still a valid L∞ radius
    with pytest.raises(ValueError, match=r"eps=1\.5 for an Linf budget .* did you mean eps=1\.5/255"):
        check_budget("Linf", 1.5)
    with pytest.raises(ValueError, match="finite"):
        check_budget("L2", float("inf"))
    with pytest.raises(ValueError, match="must be a number"):
        check_budget("L2", "big")
    # Round to nearest unless that leaves the ball; then one bf16 step toward the clean image.
    gen = torch.Generator().manual_seed(6)
    x = torch.rand(4096, generator=gen).bfloat16().float()
    x_adv = (x + (torch.rand(4096, generator=gen) * 2 - 1) * 3 / 255).clamp(0, 1)
    out = cast_toward(x_adv, x, torch.bfloat16)
    nearest = x_adv.bfloat16()
    inside = (nearest.float() - x).abs() <= (x_adv - x).abs()
    assert out.dtype == torch.bfloat16
    assert torch.equal(out[inside], nearest[inside]) and (~inside).any()
    assert ((out.float() - x).abs() <= (x_adv - x).abs()).all()
    assert torch.equal(out[~inside], torch.nextafter(nearest, x.bfloat16())[~inside])
    assert cast_toward(x_adv, x, torch.float32) is x_adv
    torch.testing.assert_close(cast_toward(x_adv.double(), x.double(), torch.float32), x_adv)
