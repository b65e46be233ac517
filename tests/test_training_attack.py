"""The training attack comes from the attack registry; every attack spells its loss `loss_fn`; per-image seeds are a
constructor / call argument."""

import inspect
import warnings

import pytest
import torch
from conftest import TensorImageDataset

from vlmrobust.attacks import APGD, ATTACKS, PGD, Attack, build_attack, ce_loss
from vlmrobust.models import create_model
from vlmrobust.trainers import AdversarialConfig, AdversarialTrainer, FAREConfig, FARETrainer
from vlmrobust.trainers.training_attack import _keywords, training_attack_kwargs


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))


def _fare_args(tmp_path, **kw):
    return FAREConfig(**{**dict(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, attack_steps=2,
                                use_cpu=True, save_strategy="no", report_to="none", disable_tqdm=True, learning_rate=1e-3,
                                warmup_steps=0), **kw})


def test_every_attack_spells_its_loss_loss_fn():
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    takes, fixed = [], []
    for name in ATTACKS.names():
        builder = ATTACKS.get(name)
        target = builder.__init__ if isinstance(builder, type) else builder
        assert "loss" not in inspect.signature(target).parameters or builder is APGD, name  # only the deprecated alias
        extra = {"n_classes": 5} if "n_classes" in _keywords(builder) else {}
        try:
            atk = build_attack(name, _net(), eps=4 / 255, steps=1, loss_fn=ce_loss, **extra)
        except TypeError as err:  # attacks whose losses are the protocol refuse a loss, and say so
            assert "loss_fn" in str(err), (name, err)
            fixed.append(name)
            continue
        assert atk.loss_fn is ce_loss and atk(x, y).shape == x.shape
        takes.append(name)
    assert {"pgd", "apgd"} <= set(takes) and {"apgd-ce", "apgd-dlr", "autoattack"} <= set(fixed)


def test_apgd_old_loss_keyword_warns_and_does_the_same():
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    new = APGD(_net(), eps=4 / 255, steps=3, loss_fn="dlr").perturb(x, y)
    with pytest.warns(DeprecationWarning, match="loss_fn"):
        old = APGD(_net(), eps=4 / 255, steps=3, loss="dlr").perturb(x, y)
    assert torch.equal(old.x_max_loss, new.x_max_loss)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        APGD(_net(), eps=4 / 255, steps=1, loss_fn="ce")  # the new spelling is silent


@pytest.mark.parametrize("cls", [PGD, APGD])
def test_sample_seeds_as_constructor_or_call_argument(cls):
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    seeds = torch.tensor([11, 12, 13, 14])
    kw = dict(eps=4 / 255, steps=2, random_start=True, seed=3, **getattr(cls, "training_defaults", {}))
    attr = cls(_net(), **kw)
    attr.sample_seeds = seeds
    ref = attr(x, y)
    assert torch.equal(cls(_net(), **kw, sample_seeds=seeds)(x, y), ref)
    plain = cls(_net(), **kw)
    assert torch.equal(plain(x, y, sample_seeds=seeds), ref) and plain.sample_seeds is None  # per call only
    if cls is PGD:  # (APGD's 2ε first step lands on the same corner from any start of this linear model)
        assert not torch.equal(plain(x, y), ref)  # without them: the attack's own generator


def test_apgd_training_point_is_the_max_loss_point():
    """The training attack's output is what the trainer took before (`perturb(...).x_max_loss`, no early stop)."""
    x, y = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    args = AdversarialConfig(output_dir="o", use_cpu=True, attack="apgd", attack_steps=5, report_to="none")
    kw = training_attack_kwargs(args, eps=8 / 255, loss_fn=ce_loss, seed=1, random_start=False, sample_seeds=None)
    assert kw["early_stop"] is False and kw["return_max_loss"] is True and "alpha" not in kw
    got = build_attack("apgd", _net(), **kw)(x, y)
    old = APGD(_net(), eps=8 / 255, steps=5, loss_fn=ce_loss, seed=1, random_start=False,
               early_stop=False).perturb(x, y)
    assert torch.equal(got, old.x_max_loss) and not torch.equal(old.x_adv, old.x_max_loss)
    pgd = training_attack_kwargs(FAREConfig(output_dir="o", use_cpu=True, report_to="none", attack_momentum=0.9),
                                 eps=4 / 255, loss_fn=ce_loss, seed=0, random_start=True, sample_seeds=None)
    assert pgd["alpha"] == pytest.approx(1 / 255) and pgd["momentum"] == 0.9 and pgd["momentum_style"] == "fare"


def test_any_registered_attack_can_be_the_training_attack(tiny_open_clip_dir, tmp_path, monkeypatch):
    built = []

    class OneStep(Attack):
        """FGSM from the random start: registered by this test, used by the trainer by name."""

        def __init__(self, model, *, random_start=True, **kw):
            super().__init__(model, **kw)
            self.random_start = random_start
            built.append(self)

        def _perturb(self, x, target, generator):
            delta = self._random_init(x, generator) if self.random_start else torch.zeros_like(x)
            _, grad, _ = self._loss_and_grad(x, delta, target, self.loss_fn)
            from vlmrobust.attacks import AttackResult

            x_adv = x + self._project(x, delta + self.eps * self._step_direction(grad))
            return AttackResult(x_adv=x_adv, x_max_loss=x_adv, loss=torch.zeros(x.shape[0]))

    monkeypatch.setitem(ATTACKS._items, "one-step-test", OneStep)
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    args = _fare_args(tmp_path, attack="one-step-test", attack_options='{"input_dtype": null}')
    assert args.attack_options == {"input_dtype": None}
    before = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    FARETrainer(model, args, train_dataset=TensorImageDataset()).train()
    assert built[-1].loss_fn.__name__ == "<lambda>" and built[-1].sample_seeds is not None  # FARE's loss, per-image
    assert built[-1].eps == pytest.approx(4 / 255) and built[-1].steps == 2
    assert any(not torch.equal(v, model.image_encoder.state_dict()[k]) for k, v in before.items())


def test_attacks_that_fix_their_loss_are_refused_at_start(tiny_open_clip_dir, tmp_path, image_dataset):
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    with pytest.raises(ValueError, match="'apgd-ce' cannot be the training attack: .*fixes loss_fn"):
        FARETrainer(model, _fare_args(tmp_path, attack="apgd-ce"), train_dataset=image_dataset)
    with pytest.raises(ValueError, match="'apgd' cannot be the training attack: .*nope"):
        FARETrainer(model, _fare_args(tmp_path, attack="apgd", attack_options={"nope": 1}), train_dataset=image_dataset)
    with pytest.raises(ValueError, match="'pgd-x' is not a registered attack; registered: apgd, apgd-ce"):
        _fare_args(tmp_path, attack="pgd-x")


def test_attack_options_reach_the_training_attack(tiny_open_clip_dir, tmp_path, monkeypatch):
    seen = []

    class SpyAPGD(APGD):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            seen.append(self)

    monkeypatch.setitem(ATTACKS._items, "apgd", SpyAPGD)
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    data = TensorImageDataset()
    args = AdversarialConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, attack_steps=2,
                             use_cpu=True, save_strategy="no", report_to="none", disable_tqdm=True,
                             attack_options={"rho": 0.5})
    AdversarialTrainer(model, args, train_dataset=data, classnames=data.classnames).train()
    assert seen and all(a.rho == 0.5 and a.early_stop is False and a.return_max_loss for a in seen)


def test_autoattack_hands_per_image_seeds_to_its_apgd_components():
    """Per-image seeds make AutoAttack's APGD components independent of the batch split, as for APGD itself."""
    from vlmrobust.attacks import AutoAttack

    x = torch.rand(6, 3, 8, 8)
    y = _net()(x).argmax(1)  # every point starts correctly classified: each one is attacked
    seeds = torch.arange(100, 106)

    def run(idx):
        atk = AutoAttack(_net(), eps=8 / 255, n_classes=5, attacks_to_run=["apgd-ce", "apgd-t"], steps=3,
                         n_target_classes=2, seed=idx[0].item(), sample_seeds=seeds[idx])
        return atk.perturb(x[idx], y[idx]).x_adv

    whole = run(torch.arange(6))
    assert not torch.equal(whole, x)
    torch.testing.assert_close(torch.cat([run(torch.arange(3)), run(torch.arange(3, 6))]), whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize("norm,eps", [("Linf", 4 / 255), ("L2", 0.5)])
def test_per_image_starts_are_each_images_own_seeded_draw(norm, eps):
    """The per-image random start (one re-seeded generator, draws written in place, arithmetic on the whole batch) is
    bitwise the per-row definition: row i is drawn by a fresh generator seeded from its own seed."""
    x = torch.rand(6, 3, 32, 32)
    seeds = torch.tensor([3, 99, 2**40, 7, 123456789, 3])
    for k in (0, 2):
        atk = build_attack("pgd", lambda z: z.flatten(1)[:, :3], norm=norm, eps=eps, sample_seeds=seeds)
        atk._init_index, atk._init_round = None, k
        got = atk._per_sample_init(x)
        rows = []
        for s in seeds.tolist():
            g = torch.Generator().manual_seed((s * 1_000_003 + k * 7_919) % (2**63 - 1))
            if norm == "Linf":
                rows.append((torch.rand(x.shape[1:], generator=g) * 2 - 1) * eps)
            else:
                direction = torch.randn(x.shape[1:], generator=g)
                radius = eps * torch.rand((), generator=g) ** (1.0 / x[0].numel())
                rows.append(direction / (direction.norm() + 1e-12) * radius)
        assert torch.equal(got, torch.stack(rows))
        assert torch.equal(got[0], got[5])  # the same seed, the same start, wherever the image sits
