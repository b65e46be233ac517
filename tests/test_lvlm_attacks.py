"""VLM attacks: APGD on the teacher-forced answer CE (untargeted / targeted), the ensemble, evaluate_vqa."""

import pytest
import torch

from vlmrobust.attacks.vlm import attack_answers, ensemble_attack
from vlmrobust.data.shapes_vqa import ShapesVQA
from vlmrobust.eval.vqa import evaluate_vqa
from vlmrobust.models import create_model

EPS = 8 / 255


@pytest.fixture(scope="module", params=["llava:tiny", "qwen_vl:tiny", "paligemma:tiny"])
def setup(request):
    model = create_model(request.param)
    ds = ShapesVQA(4, seed=0, question_types=["colour", "shape"], transform=model.preprocess)
    x = torch.stack([it["pixel_values"] for it in ds])
    return model, ds, x, [it["question"] for it in ds], [it["answer"] for it in ds]


def test_untargeted_attack_raises_answer_loss_inside_the_ball(setup):
    model, _, x, qs, ans = setup
    clean = model.answer_loss(x, model.build_batch(qs, ans)).detach()
    res = attack_answers(model, x, qs, ans, eps=EPS, steps=10)
    assert (res.x_adv - x).abs().max() <= EPS + 1e-6
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    adv = model.answer_loss(res.x_adv, model.build_batch(qs, ans)).detach()
    torch.testing.assert_close(adv, res.loss, atol=1e-4, rtol=0)
    assert (adv > clean).all(), (clean, adv)
    again = attack_answers(model, x, qs, ans, eps=EPS, steps=10)
    assert torch.equal(again.x_adv, res.x_adv)  # seeded


def test_targeted_attack_lowers_target_loss(setup):
    model, _, x, qs, _ = setup
    target = ["purple"] * len(qs)
    batch = model.build_batch(qs, target)
    clean = model.answer_loss(x, batch).detach()
    res = attack_answers(model, x, qs, target, eps=EPS, steps=10, targeted=True)
    assert (res.x_adv - x).abs().max() <= EPS + 1e-6
    assert (model.answer_loss(res.x_adv, batch).detach() < clean).all()


def test_ensemble_keeps_the_worst_case(setup):
    model, ds, x, qs, _ = setup
    refs = [["red"] * 6 + ["blue"] * 4, ["circle"] * 10, ["red"] * 10, ["square"] * 10]
    calls = []

    def score(imgs, idx):  # the answer loss of the majority reference, negated: lower = worse for the model
        calls.append(idx.tolist())
        batch = model.build_batch([qs[i] for i in idx.tolist()], [refs[i][0] for i in idx.tolist()])
        with torch.no_grad():
            return -model.answer_loss(imgs, batch)

    clean = score(x, torch.arange(4))
    x_worst, worst = ensemble_attack(model, x, qs, refs, eps=EPS, score_fn=score, steps=5, targets=["yes"],
                                     floor=None)
    assert (x_worst - x).abs().max() <= EPS + 1e-6
    assert (worst <= clean + 1e-6).all() and (worst < clean).any()
    # runs: 2 untargeted rounds (image 0 has two distinct references, the others only in round 1) + 1 targeted
    # (calls[0] is this test's own clean score, calls[1] the ensemble's)
    assert calls[2:] == [[0, 1, 2, 3], [0], [0, 1, 2, 3]]


def test_evaluate_vqa_reports_clean_and_robust(setup):
    model, ds, *_ = setup
    res = evaluate_vqa(model, ds, [EPS], steps=3, batch_size=4, answer_mode="rank")
    assert set(res["robust"]) == {"8/255"} and res["n"] == 4
    assert 0 <= res["robust"]["8/255"] <= res["clean"] <= 1
    assert set(res["per_type"]) == {"colour", "shape"}
    import json

    json.dumps(res)
    with pytest.raises(ValueError, match="8/255"):
        evaluate_vqa(model, ds, [8], steps=1)
