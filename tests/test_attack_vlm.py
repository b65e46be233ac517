"""The answer-loss attacks and the ensemble on a fake LVLM whose answer loss is a closed-form cross-entropy (CPU, fast).

The fake model has the two methods the attacks use: `build_batch(questions, answers, image_hw=...)` and
`answer_loss(pixels, batch) -> [B]` (teacher-forced CE of each answer); it records which answers it was asked about.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlmrobust.attacks.vlm import AnswerLoss, attack_answers, ensemble_attack

EPS = 8 / 255
VOCAB = ["red", "blue", "green", "circle", "square", "yes", "no", "purple"]


class FakeLVLM:
    """Answer loss = CE of a linear read-out of the (internally normalised) image over a one-word vocabulary."""

    def __init__(self, seed: int = 0):
        self.weight = torch.randn(len(VOCAB), 3 * 8 * 8, generator=torch.Generator().manual_seed(seed)) * 0.3
        self.built: list[tuple[list[str], list[str]]] = []
        self.dtypes: set[torch.dtype] = set()
        self.n_calls = 0

    def build_batch(self, questions, answers, image_hw=None):
        assert image_hw == (8, 8)  # the attacks pass the images' size
        self.built.append((list(questions), list(answers)))
        return {"ids": torch.tensor([VOCAB.index(a) for a in answers])}

    def logits(self, pixels):
        return ((pixels - 0.5) / 0.25).flatten(1) @ self.weight.T

    def answer_loss(self, pixels, batch):
        self.dtypes.add(pixels.dtype)
        self.n_calls += 1
        return F.cross_entropy(self.logits(pixels), batch["ids"], reduction="none")


@pytest.fixture
def setup():
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1
    qs = [f"q{i}" for i in range(4)]
    return FakeLVLM(), x, qs


def _ce(model, x, qs, answers):
    return model.answer_loss(x, {"ids": torch.tensor([VOCAB.index(a) for a in answers])})


def test_answer_loss_sign():
    model = FakeLVLM()
    x = torch.full((2, 3, 8, 8), 0.5)
    batch = model.build_batch(["a", "b"], ["red", "no"], image_hw=(8, 8))
    ce = model.answer_loss(x, batch)
    torch.testing.assert_close(AnswerLoss(model, batch)(x), ce)
    torch.testing.assert_close(AnswerLoss(model, batch, targeted=True)(x), -ce)


def test_untargeted_raises_the_answer_loss_beyond_random_noise(setup):
    model, x, qs = setup
    ans = ["red", "blue", "circle", "yes"]
    clean = _ce(model, x, qs, ans)
    res = attack_answers(model, x, qs, ans, eps=EPS, steps=10)
    assert model.built[-1] == (qs, ans)
    assert (res.x_adv - x).abs().max() <= EPS + 1e-6 and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert torch.equal(res.x_adv, res.x_max_loss)
    adv = _ce(model, res.x_adv, qs, ans)
    torch.testing.assert_close(res.loss, adv, atol=1e-5, rtol=0)  # the plain CE, sign restored
    gen = torch.Generator().manual_seed(2)
    noise = torch.stack([_ce(model, (x + (torch.rand(x.shape, generator=gen) * 2 - 1) * EPS).clamp(0, 1), qs, ans)
                         for _ in range(8)])
    assert (adv > noise.max(0).values).all() and (adv > clean).all()


def test_targeted_lowers_the_target_loss_below_random_noise(setup):
    model, x, qs = setup
    target = ["purple"] * 4
    clean = _ce(model, x, qs, target)
    res = attack_answers(model, x, qs, target, eps=EPS, steps=10, targeted=True)
    adv = _ce(model, res.x_adv, qs, target)
    torch.testing.assert_close(res.loss, adv, atol=1e-5, rtol=0)  # positive CE, not its negation
    gen = torch.Generator().manual_seed(3)
    noise = torch.stack([_ce(model, (x + (torch.rand(x.shape, generator=gen) * 2 - 1) * EPS).clamp(0, 1), qs, target)
                         for _ in range(8)])
    assert (adv < noise.min(0).values).all() and (adv < clean).all()


def test_attack_answers_passes_its_options_through(setup):
    model, x, qs = setup
    ans = ["red"] * 4
    assert torch.equal(attack_answers(model, x, qs, ans, eps=EPS, steps=0).x_adv, x)  # no random start by default
    a = attack_answers(model, x, qs, ans, eps=EPS, steps=0, random_start=True, seed=0).x_adv
    b = attack_answers(model, x, qs, ans, eps=EPS, steps=0, random_start=True, seed=1).x_adv
    assert not torch.equal(a, x) and not torch.equal(a, b)
    l2 = attack_answers(model, x, qs, ans, eps=0.5, steps=10, norm="L2").x_adv
    d = (l2 - x).flatten(1)
    assert (d.norm(dim=1) <= 0.5 + 1e-5).all() and (d.norm(dim=1) > 0.45).all() and d.abs().max() > 0.1
    model.n_calls = 0
    attack_answers(model, x, qs, ans, eps=EPS)
    assert model.n_calls == 1 + 1 + 100  # clean, start, 100 APGD iterations by default
    half = attack_answers(model, x.bfloat16(), qs, ans, eps=EPS, steps=2)
    assert model.dtypes == {torch.float32} and half.x_adv.dtype == torch.bfloat16  # the model always sees fp32
    few = _ce(model, attack_answers(model, x, qs, ans, eps=EPS, steps=2).x_adv, qs, ans)
    many = _ce(model, attack_answers(model, x, qs, ans, eps=EPS, steps=10).x_adv, qs, ans)
    assert (many >= few - 1e-6).all() and (many > few).any()


def test_ensemble_keeps_the_worst_case_per_image(setup):
    model, x, qs = setup
    refs = [["red"] * 4 + ["blue"] * 6, ["circle"] * 10, ["red", "green", "green"], ["square"] * 10]
    calls: list[tuple[torch.Tensor, list[int]]] = []

    def score(imgs, idx):  # minus the CE of the first listed reference: lower = worse for the model
        calls.append((imgs.clone(), idx.tolist()))
        return -_ce(model, imgs, qs, [refs[i][0] for i in idx.tolist()])

    x_worst, worst = ensemble_attack(model, x, qs, refs, eps=EPS, score_fn=score, steps=4, targets=["yes", "no"],
                                     floor=None)
    # runs: distinct references most frequent first (image 0: blue then red; image 2: green then red), then targets
    assert [b[1] for b in model.built] == [
        ["blue", "circle", "green", "square"], ["red", "red"], ["yes"] * 4, ["no"] * 4
    ]
    assert [c[1] for c in calls] == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 2], [0, 1, 2, 3], [0, 1, 2, 3]]
    assert model.n_calls == 4 * (1 + 1 + 4) + len(calls)  # 4 runs of steps=4, and the scores
    for (imgs, _), target in zip(calls[3:], ["yes", "no"]):  # the targeted runs force their string
        assert (_ce(model, imgs, qs, [target] * 4) < _ce(model, x, qs, [target] * 4)).all()
    # per image: the lowest score over the clean images and every run, and the images that scored it
    where = []  # where the worst case came from: 0 = the clean images, 1 = the last run that saw the image
    for i in range(4):
        seen = []
        for imgs, ids in calls:
            if i in ids:
                pos = ids.index(i)
                seen.append((float(-_ce(model, imgs[pos : pos + 1], [qs[i]], [refs[i][0]])), imgs[pos]))
        best_val, best_img = min(seen, key=lambda t: t[0])
        where.append(min(range(len(seen)), key=lambda j: seen[j][0]) / (len(seen) - 1))
        assert float(worst[i]) == pytest.approx(best_val, abs=1e-5)
        torch.testing.assert_close(x_worst[i], best_img)
    assert min(where) > 0 and min(where) < 1, "some image's worst case must come from a run before its last"
    assert (x_worst - x).abs().max() <= EPS + 1e-6


def test_ensemble_stops_attacking_images_at_the_floor(setup):
    model, x, qs = setup
    with torch.no_grad():
        pred = model.logits(x).argmax(1)
    # image 0's only reference is already wrong (score 0 = the floor): never attacked; the others are right.
    refs = [[VOCAB[(pred[0] + 1) % len(VOCAB)]]] + [[VOCAB[p]] for p in pred[1:].tolist()]
    calls: list[list[int]] = []

    def accuracy(imgs, idx):
        calls.append(idx.tolist())
        return (model.logits(imgs).argmax(1) == torch.tensor([VOCAB.index(refs[i][0]) for i in idx.tolist()])).float()

    x_worst, worst = ensemble_attack(model, x, qs, refs, eps=0.3, score_fn=accuracy, steps=10, targets=["yes"])
    assert calls[1] == [1, 2, 3]  # the untargeted run skips image 0
    assert worst[0] == 0 and torch.equal(x_worst[0], x[0])
    broken = [i for i in (1, 2, 3) if worst[i] == 0]
    assert broken, "eps=0.3 should break some image"
    if len(calls) > 2:  # the targeted run only sees images still above the floor
        assert calls[2] == [i for i in (1, 2, 3) if i not in broken]
    max_refs = FakeLVLM()
    ensemble_attack(max_refs, x, qs, [["red", "blue", "blue", "green"]] * 4, eps=EPS,
                    score_fn=lambda imgs, idx: torch.ones(len(idx)), steps=1, max_references=2, floor=None)
    assert [b[1] for b in max_refs.built] == [["blue"] * 4, ["red"] * 4]


def test_ensemble_floor_ties_and_norm(setup):
    model, x, qs = setup
    refs = [["red", "blue"], ["circle"], ["square"], ["green"]]
    # scripted scores per call: clean, round 0 (all), [round 1: only image 0, but it is at the floor], target run
    script = iter([torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([0.0, 0.5, 1.0, 2.0]), torch.tensor([0.2, 1.0, 1.5])])
    calls = []

    def score(imgs, idx):
        calls.append((imgs.clone(), idx.tolist()))
        return next(script)

    x_worst, worst = ensemble_attack(model, x, qs, refs, eps=EPS, score_fn=score, steps=2, targets=["yes"])
    assert [c[1] for c in calls] == [[0, 1, 2, 3], [0, 1, 2, 3], [1, 2, 3]]  # round 1 skipped, the target run not
    torch.testing.assert_close(worst, torch.tensor([0.0, 0.2, 1.0, 1.0]))
    assert torch.equal(x_worst[0], calls[1][0][0]) and torch.equal(x_worst[1], calls[2][0][0])
    assert not torch.equal(x_worst[0], x[0]) and not torch.equal(x_worst[1], x[1])
    # image 2 only tied its clean score and image 3 never went below it: their clean images stay
    assert torch.equal(x_worst[2], x[2]) and torch.equal(x_worst[3], x[3])
    # a tie with the best score so far keeps the earlier images
    script = iter([torch.ones(4), torch.ones(4)])
    x_tie, _ = ensemble_attack(model, x, qs, [["red"]] * 4, eps=EPS, score_fn=lambda i, j: next(script), steps=2)
    assert torch.equal(x_tie, x)
    # the threat model reaches the attacks
    x_l2, _ = ensemble_attack(model, x, qs, [["red"]] * 4, eps=0.5, norm="L2", steps=5, floor=None,
                              score_fn=lambda imgs, idx: -_ce(model, imgs, qs, ["red"] * len(idx)))
    d = (x_l2 - x).flatten(1)
    assert (d.norm(dim=1) <= 0.5 + 1e-5).all() and d.abs().max() > EPS
    model.n_calls = 0
    ensemble_attack(model, x, qs, [["red"]] * 4, eps=EPS, score_fn=lambda i, j: torch.ones(len(j)))
    assert model.n_calls == 1 + 1 + 100  # one run of 100 APGD iterations by default
    # no images: nothing to attack
    empty, empty_scores = ensemble_attack(model, x[:0], [], [], eps=EPS, score_fn=lambda i, j: torch.zeros(len(j)))
    assert empty.shape == (0, 3, 8, 8) and empty_scores.shape == (0,)
