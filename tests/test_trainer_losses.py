"""Every training loss equals its formula on a crafted case where each term matters.

The trained encoder is moved away from the reference, ε-perturbed images differ from the clean ones, β / logit scales
are not 1 or the default, so swapping the reference and the trained encoder, x and x + δ, the direction of a KL or
dropping a weight all change the number. Each test also checks that the wrong variants really differ here (a test
that cannot tell them apart would pass them too), and compares gradients, so a detached term shows.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlmrobust.attacks import ce_loss
from vlmrobust.models import create_model
from vlmrobust.trainers import (
    AdversarialConfig,
    AdversarialTrainer,
    FAREConfig,
    FARETrainer,
    TeCoAConfig,
    TeCoATrainer,
)

COMMON = dict(max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3, warmup_steps=0, epsilon=4 / 255,
              attack_steps=2, attack_step_size=2 / 255, logging_steps=1, save_strategy="no", seed=0, use_cpu=True,
              disable_tqdm=True, dataloader_num_workers=0)


def _args(cls, out, **kw):
    return cls(output_dir=str(out), **{**COMMON, **kw})


def _move_away(module: torch.nn.Module, seed: int = 1, scale: float = 0.05) -> None:
    """Shift every weight by noise, so the trained encoder is not the reference (a constant shift can be a no-op:
    LayerNorm outputs sum to zero, so adding c to a projection after it changes nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


class AttackSpy:
    """Stands in for `adversarial_examples`: records what the trainer asks the attack for, returns fixed x_adv."""

    def __init__(self, x_adv: torch.Tensor):
        self.x_adv = x_adv
        self.calls: list[dict] = []

    def __call__(self, forward, images, target, loss_fn, **kw):
        self.calls.append({"forward": forward, "images": images, "target": target, "loss_fn": loss_fn, **kw})
        return self.x_adv


def _logged(trainer) -> dict[str, float]:
    """The metrics the last compute_loss recorded (what the Trainer will log), by name."""
    return {k: float(v[-1]) for k, v in trainer._metrics.items()}


def _x_and_adv(dataset, n=4, eps=4 / 255, seed=3):
    x = dataset.images[:n]
    g = torch.Generator().manual_seed(seed)
    x_adv = (x + eps * torch.sign(torch.randn(x.shape, generator=g))).clamp(0, 1)
    return x, x_adv


def _grads(loss, params):
    return torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)


def _assert_same_grads(a, b):
    for ga, gb in zip(a, b):
        assert (ga is None) == (gb is None)
        if ga is not None:
            torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)


def _differs(a, b) -> bool:
    """a and b differ by 10x more than `torch.testing.assert_close`'s float32 tolerance allows."""
    a, b = float(torch.as_tensor(a).detach()), float(torch.as_tensor(b).detach())
    return abs(a - b) > 10 * (1e-5 + 1.3e-6 * abs(b))


# -- FARE ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["l2sq", "l2"])
def test_fare_loss_is_the_formula(kind, tiny_open_clip_dir, image_dataset, tmp_path):
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    original = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    trainer = FARETrainer(model, _args(FAREConfig, tmp_path, fare_loss=kind), train_dataset=image_dataset)
    # the reference is the encoder as it was when the trainer was built, and stays so while the encoder trains
    for k, v in trainer.reference_encoder.state_dict().items():
        assert torch.equal(v, original[k]), k
    _move_away(model.image_encoder)
    x, x_adv = _x_and_adv(image_dataset)
    spy = AttackSpy(x_adv)
    trainer.adversarial_examples = spy
    enc, ref = model.image_encoder, trainer.reference_encoder
    params = [p for p in enc.parameters() if p.requires_grad]

    loss = trainer.compute_loss(trainer.model, {"pixel_values": x})

    def dist(a, b):
        d = ((a - b) ** 2).sum(-1)
        return d if kind == "l2sq" else d.sqrt()

    expected = dist(enc(x_adv), ref(x).detach()).mean()
    torch.testing.assert_close(loss, expected)
    logged = _logged(trainer)
    assert logged["adv_loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert logged["clean_loss"] == pytest.approx(float(dist(enc(x), ref(x)).mean()), rel=1e-5)
    _assert_same_grads(_grads(loss, params), _grads(expected, params))
    # each plausible mistake gives another number on this case
    with torch.no_grad():
        wrong = {
            "reference and trained swapped": dist(ref(x_adv), enc(x)).mean(),
            "target from the trained encoder": dist(enc(x_adv), enc(x)).mean(),
            "reference on x + δ": dist(enc(x_adv), ref(x_adv)).mean(),
            "clean input to the trained encoder": dist(enc(x), ref(x)).mean(),
            "other distance": (((enc(x_adv) - ref(x)) ** 2).sum(-1).sqrt() if kind == "l2sq"
                               else ((enc(x_adv) - ref(x)) ** 2).sum(-1)).mean(),
        }
    for name, value in wrong.items():
        assert _differs(value, expected), f"the crafted case cannot tell '{name}' apart"
    # the attack maximises the same per-sample distance to the clean reference embedding, through the trained encoder
    (call,) = spy.calls
    torch.testing.assert_close(call["target"], ref(x))
    assert call["images"] is x
    with torch.no_grad():
        torch.testing.assert_close(call["loss_fn"](call["forward"](x_adv), call["target"]), dist(enc(x_adv), ref(x)))


def test_fare_distance_on_vectors_and_token_features():
    from vlmrobust.trainers import fare_distance

    g = torch.Generator().manual_seed(0)
    emb, target = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    sq = ((emb - target) ** 2).sum(-1)
    torch.testing.assert_close(fare_distance(emb, target), sq)  # the paper's squared L2 is the default
    torch.testing.assert_close(fare_distance(emb, target, "l2"), sq.sqrt())
    small = target + 1e-3  # distances far below 1: a clamp meant for 0 must not touch them
    torch.testing.assert_close(fare_distance(small, target, "l2"), torch.full((3,), 1e-3 * 5 ** 0.5), rtol=1e-4,
                               atol=0)
    # an LVLM tower's (B, T, D) token features count as one flattened vector per sample
    tokens, tok_target = torch.randn(2, 4, 3, generator=g), torch.randn(2, 4, 3, generator=g)
    torch.testing.assert_close(fare_distance(tokens, tok_target), ((tokens - tok_target) ** 2).sum((1, 2)))
    torch.testing.assert_close(fare_distance(tokens, tok_target, "l2"), ((tokens - tok_target) ** 2).sum((1, 2)).sqrt())


def test_compute_loss_outputs_and_optional_clean_loss(tiny_open_clip_dir, image_dataset, tmp_path):
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    trainer = FARETrainer(model, _args(FAREConfig, tmp_path, log_clean_loss=False), train_dataset=image_dataset)
    x, x_adv = _x_and_adv(image_dataset)
    trainer.adversarial_examples = AttackSpy(x_adv)
    loss, outputs = trainer.compute_loss(trainer.model, {"pixel_values": x}, return_outputs=True)
    assert loss.dim() == 0 and set(outputs) == {"embeddings"}
    assert "clean_loss" not in trainer._metrics  # switched off: no extra forward pass
    from vlmrobust.trainers import RAdaptConfig, RAdaptTrainer

    radapt = RAdaptTrainer(create_model(f"local-dir:{tiny_open_clip_dir}"),
                           _args(RAdaptConfig, tmp_path / "r", log_clean_loss=False), train_dataset=image_dataset)
    radapt.adversarial_examples = AttackSpy(x_adv)
    radapt.compute_loss(radapt.model, {"pixel_values": x})
    assert "clean_loss" not in radapt._metrics and "adv_loss" in radapt._metrics
    tecoa = TeCoATrainer(create_model(f"local-dir:{tiny_open_clip_dir}"), _args(TeCoAConfig, tmp_path / "t"),
                         classnames=image_dataset.classnames, train_dataset=image_dataset)
    tecoa.adversarial_examples = AttackSpy(x_adv)
    loss, outputs = tecoa.compute_loss(tecoa.model, {"pixel_values": x, "labels": image_dataset.labels[:4]},
                                       return_outputs=True)
    assert outputs["logits"].shape == (4, len(image_dataset.classnames))


# -- TeCoA --------------------------------------------------------------------------------------------------------
def test_tecoa_loss_is_the_formula(tiny_open_clip_dir, image_dataset, tmp_path):
    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    templates = ["a photo of a {}.", "a drawing of a {}."]
    scale = 37.0
    trainer = TeCoATrainer(model, _args(TeCoAConfig, tmp_path, tecoa_logit_scale=scale, prompt_templates=templates),
                           classnames=image_dataset.classnames, train_dataset=image_dataset)
    x, x_adv = _x_and_adv(image_dataset)
    y = image_dataset.labels[:4]
    spy = AttackSpy(x_adv)
    trainer.adversarial_examples = spy
    enc = model.image_encoder
    params = [p for p in enc.parameters() if p.requires_grad]
    with torch.no_grad():  # class embeddings: mean of normalised template embeddings, normalised
        text = torch.stack([F.normalize(F.normalize(model.encode_text([t.format(c) for t in templates]), dim=-1)
                                        .mean(0), dim=0) for c in image_dataset.classnames])

    def logits(images, s=scale):
        return s * F.normalize(enc(images), dim=-1) @ text.T

    loss = trainer.compute_loss(trainer.model, {"pixel_values": x, "labels": y})
    expected = F.cross_entropy(logits(x_adv), y)
    torch.testing.assert_close(loss, expected)
    logged = _logged(trainer)
    assert logged["adv_loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert logged["adv_accuracy"] == pytest.approx(float((logits(x_adv).argmax(-1) == y).float().mean()))
    _assert_same_grads(_grads(loss, params), _grads(expected, params))
    with torch.no_grad():
        wrong = {"clean images": F.cross_entropy(logits(x), y), "logit scale 100": F.cross_entropy(logits(x_adv, 100), y),
                 "unnormalised embedding": F.cross_entropy(scale * enc(x_adv) @ text.T, y),
                 "other labels": F.cross_entropy(logits(x_adv), (y + 1) % 3)}
    for name, value in wrong.items():
        assert _differs(value, expected), f"the crafted case cannot tell '{name}' apart"
    # the attack maximises the same cross-entropy, at the same logit scale, against the true labels
    (call,) = spy.calls
    assert torch.equal(call["target"], y) and call["loss_fn"] is ce_loss
    with torch.no_grad():
        torch.testing.assert_close(call["forward"](x_adv), logits(x_adv))


# -- Classic AT and TRADES ----------------------------------------------------------------------------------------
def _adv_trainer(model_dir, dataset, out, **kw):
    model = create_model(f"local-dir:{model_dir}")
    args = _args(AdversarialConfig, out, head_logit_scale=23.0, **kw)
    trainer = AdversarialTrainer(model, args, classnames=dataset.classnames, train_dataset=dataset)
    with torch.no_grad():  # a head that is not just the zero-shot one
        trainer.model.head.weight.add_(0.1 * torch.randn(trainer.model.head.weight.shape,
                                                         generator=torch.Generator().manual_seed(5)))
    return model, trainer


def test_classifier_head_starts_as_the_zero_shot_head(tiny_open_clip_dir, image_dataset):
    from vlmrobust.trainers import CosineClassifier

    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    text = model.class_embeddings(image_dataset.classnames, image_dataset.templates) * 3.0  # unnormalised on purpose
    clf = CosineClassifier(model.image_encoder, text)
    torch.testing.assert_close(clf.head.weight.norm(dim=-1), torch.ones(len(image_dataset.classnames)))
    assert clf.head.bias is None and clf.logit_scale == 100.0
    x = image_dataset.images[:4]
    with torch.no_grad():
        torch.testing.assert_close(clf(x), model.zero_shot_classifier(image_dataset.classnames, image_dataset.templates,
                                                                      logit_scale=100.0)(x))


def test_classic_at_loss_is_the_formula(tiny_open_clip_dir, image_dataset, tmp_path):
    model, trainer = _adv_trainer(tiny_open_clip_dir, image_dataset, tmp_path, loss="classic")
    x, x_adv = _x_and_adv(image_dataset, n=3)  # 3 images: the logged accuracy is never 1/2, so it tells == from !=
    y = image_dataset.labels[:3]
    spy = AttackSpy(x_adv)
    trainer.adversarial_examples = spy
    enc, w = model.image_encoder, trainer.model.head.weight
    params = [p for p in trainer.model.parameters() if p.requires_grad]

    def logits(images, s=23.0):
        return s * F.normalize(enc(images), dim=-1) @ w.T

    loss, outputs = trainer.compute_loss(trainer.model, {"pixel_values": x, "labels": y}, return_outputs=True)
    expected = F.cross_entropy(logits(x_adv), y)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(outputs["logits"], logits(x_adv))
    logged = _logged(trainer)
    assert logged["adv_loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert logged["adv_accuracy"] == pytest.approx(float((logits(x_adv).argmax(-1) == y).float().mean()))
    _assert_same_grads(_grads(loss, params), _grads(expected, params))
    with torch.no_grad():
        for name, value in {"clean images": F.cross_entropy(logits(x), y),
                            "logit scale 100": F.cross_entropy(logits(x_adv, 100.0), y)}.items():
            assert _differs(value, expected), name
    (call,) = spy.calls
    assert torch.equal(call["target"], y) and call["loss_fn"] is ce_loss and call["forward"] is trainer.model


def test_trades_loss_is_the_formula(tiny_open_clip_dir, image_dataset, tmp_path):
    beta = 3.0
    model, trainer = _adv_trainer(tiny_open_clip_dir, image_dataset, tmp_path, loss="trades", trades_beta=beta)
    # other images as "x + δ": the formula does not care, and clean / adversarial distributions far apart make the KL
    # clearly asymmetric
    x, x_adv = image_dataset.images[:4], image_dataset.images[8:12]
    y = image_dataset.labels[:4]
    spy = AttackSpy(x_adv)
    trainer.adversarial_examples = spy
    clf = trainer.model
    params = [p for p in clf.parameters() if p.requires_grad]

    def kl(p_logits, q_logits):  # KL(softmax(p) ‖ softmax(q)) per sample, written out
        p = F.softmax(p_logits, -1)
        return (p * (F.log_softmax(p_logits, -1) - F.log_softmax(q_logits, -1))).sum(-1)

    loss = trainer.compute_loss(clf, {"pixel_values": x, "labels": y})
    clean, adv = clf(x), clf(x_adv)
    expected = F.cross_entropy(clean, y) + beta * kl(clean, adv).mean()
    torch.testing.assert_close(loss, expected)
    logged = _logged(trainer)
    assert logged["clean_loss"] == pytest.approx(float(F.cross_entropy(clean, y)), rel=1e-5)
    assert logged["trades_kl"] == pytest.approx(float(kl(clean, adv).mean()), rel=1e-4)
    assert logged["adv_accuracy"] == pytest.approx(float((adv.argmax(-1) == y).float().mean()))
    # the gradient flows through both the clean and the adversarial logits of the KL (TRADES does not detach)
    _assert_same_grads(_grads(loss, params), _grads(expected, params))
    detached = F.cross_entropy(clean, y) + beta * kl(clean.detach(), adv).mean()
    assert any(_differs(a.norm(), b.norm()) for a, b in zip(_grads(detached, params), _grads(expected, params))
               if a is not None)
    with torch.no_grad():
        wrong = {"KL reversed": F.cross_entropy(clean, y) + beta * kl(adv, clean).mean(),
                 "beta 1": F.cross_entropy(clean, y) + kl(clean, adv).mean(),
                 "CE on x + δ": F.cross_entropy(adv, y) + beta * kl(clean, adv).mean()}
    for name, value in wrong.items():
        assert _differs(value, expected), f"the crafted case cannot tell '{name}' apart"
    # the inner attack maximises KL(p_clean ‖ p(x + δ)) from a random start inside the ball
    (call,) = spy.calls
    assert call.get("random_start") is True
    with torch.no_grad():
        torch.testing.assert_close(call["target"], F.softmax(clean, -1))
        torch.testing.assert_close(call["loss_fn"](call["forward"](x_adv), call["target"]), kl(clean, adv))


def test_trades_with_a_ce_inner_attack(tiny_open_clip_dir, image_dataset, tmp_path):
    model, trainer = _adv_trainer(tiny_open_clip_dir, image_dataset, tmp_path, loss="trades", trades_beta=2.0,
                                  trades_attack_loss="ce")
    x, x_adv = image_dataset.images[:4], image_dataset.images[8:12]
    y = image_dataset.labels[:4]
    spy = AttackSpy(x_adv)
    trainer.adversarial_examples = spy
    clf = trainer.model
    loss = trainer.compute_loss(clf, {"pixel_values": x, "labels": y})
    clean, adv = clf(x), clf(x_adv)
    p = F.softmax(clean, -1)
    expected = F.cross_entropy(clean, y) + 2.0 * (p * (F.log_softmax(clean, -1) - F.log_softmax(adv, -1))).sum(-1).mean()
    torch.testing.assert_close(loss, expected)
    (call,) = spy.calls
    assert call["forward"] is clf and torch.equal(call["target"], y) and call["loss_fn"] is ce_loss
    assert call["images"] is x


@pytest.mark.parametrize("kind", ["l2sq", "l2"])
def test_radapt_plus_loss_is_the_formula(kind, tiny_open_clip_dir, image_dataset, tmp_path):
    from vlmrobust.trainers import RAdaptConfig, RAdaptTrainer

    trainer = RAdaptTrainer(create_model(f"local-dir:{tiny_open_clip_dir}"),
                            _args(RAdaptConfig, tmp_path, alpha=0.5, fare_loss=kind), train_dataset=image_dataset)
    enc = trainer.model
    with torch.no_grad():  # an anchor that is not the training-free one
        for a in enc.anchors.values():
            a.add_(0.2 * torch.randn(a.shape, generator=torch.Generator().manual_seed(2)))
    x, x_adv = _x_and_adv(image_dataset)
    spy = AttackSpy(x_adv)
    trainer.adversarial_examples = spy
    loss, outputs = trainer.compute_loss(enc, {"pixel_values": x}, return_outputs=True)
    assert set(outputs) == {"embeddings"}
    with torch.no_grad(), enc.disable_adapter():
        standard_clean, standard_adv = enc(x), enc(x_adv)

    def dist(a, b):
        d = ((a - b) ** 2).sum(-1)
        return d if kind == "l2sq" else d.sqrt()

    expected = dist(enc(x_adv), standard_clean).mean()
    torch.testing.assert_close(loss, expected)
    params = [p for p in enc.parameters() if p.requires_grad]
    _assert_same_grads(_grads(loss, params), _grads(expected, params))
    with torch.no_grad():
        for name, value in {"adapter on in the target": dist(enc(x_adv), enc(x)).mean(),
                            "adapter off in the trained output": dist(standard_adv, standard_clean).mean(),
                            "target on x + δ": dist(enc(x_adv), standard_adv).mean()}.items():
            assert _differs(value, expected), name
    logged = _logged(trainer)
    assert logged["adv_loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert logged["clean_loss"] == pytest.approx(dist(enc(x), standard_clean).mean().item(), rel=1e-5)
    (call,) = spy.calls
    torch.testing.assert_close(call["target"], standard_clean)
    assert call["forward"] is enc
    with torch.no_grad():
        torch.testing.assert_close(call["loss_fn"](enc(x_adv), call["target"]), dist(enc(x_adv), standard_clean))


# -- train / eval mode, on a model with dropout -------------------------------------------------------------------
def test_trades_clean_target_and_attack_both_in_eval_mode(tiny_open_clip_dropout_dir, image_dataset, tmp_path):
    _, trainer = _adv_trainer(tiny_open_clip_dropout_dir, image_dataset, tmp_path, loss="trades")
    x, x_adv = _x_and_adv(image_dataset)
    spy = AttackSpy(x_adv)
    trainer.adversarial_examples = spy
    clf = trainer.model
    clf.train()
    trainer.compute_loss(clf, {"pixel_values": x, "labels": image_dataset.labels[:4]})
    assert clf.training, "the trained model must come back in train mode"
    clf.eval()
    with torch.no_grad():
        eval_target = F.softmax(clf(x), -1)
    # patch dropout makes a train-mode target differ from this by far more than the tolerance
    torch.testing.assert_close(spy.calls[0]["target"], eval_target)


@pytest.mark.parametrize("method", ["fare", "tecoa", "classic", "trades"])
def test_loss_forward_runs_in_train_mode_and_attack_in_eval_mode(method, tiny_open_clip_dropout_dir, image_dataset,
                                                                  tmp_path):
    model = create_model(f"local-dir:{tiny_open_clip_dropout_dir}")
    if method == "fare":
        trainer = FARETrainer(model, _args(FAREConfig, tmp_path, attack_steps=1), train_dataset=image_dataset)
    elif method == "tecoa":
        trainer = TeCoATrainer(model, _args(TeCoAConfig, tmp_path, attack_steps=1),
                               classnames=image_dataset.classnames, train_dataset=image_dataset)
    else:
        trainer = AdversarialTrainer(model, _args(AdversarialConfig, tmp_path, loss=method, attack_steps=1),
                                     classnames=image_dataset.classnames, train_dataset=image_dataset)
    x, _ = _x_and_adv(image_dataset)
    enc = model.image_encoder
    modes: list[tuple[bool, bool]] = []  # (module in train mode, grad enabled w.r.t. parameters)
    hook = enc.register_forward_hook(lambda m, i, o: modes.append((m.training, o.requires_grad)))
    orig = trainer.adversarial_examples
    attack_modes: list[bool] = []

    def spy(*a, **k):
        out = orig(*a, **k)
        attack_modes.extend(m for m, _ in modes)
        modes.clear()
        return out

    trainer.adversarial_examples = spy
    trainer.model.train()
    try:
        trainer.compute_loss(trainer.model, {"pixel_values": x, "labels": image_dataset.labels[:4]})
    finally:
        hook.remove()
    assert attack_modes and not any(attack_modes), "the attack must see the model in eval mode"
    # after the attack: the forwards the loss is built from run in train mode, with gradients
    graded = [m for m, g in modes if g]
    assert graded and all(graded)
