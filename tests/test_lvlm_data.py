"""Shapes-VQA generator, the collator, the official VQA metric, CIDEr detection, and that a tiny LVLM learns."""

import pytest
import torch

from vlmrobust.data.shapes_vqa import QUESTION_TYPES, ShapesVQA
from vlmrobust.data.vqa import VQACollator
from vlmrobust.eval.vqa import evaluate_vqa
from vlmrobust.metrics import cider_status, compute_cider, majority_answer, normalize_answer, vqa_accuracy
from vlmrobust.models import create_model


def test_shapes_vqa_is_deterministic_and_well_formed():
    a, b = ShapesVQA(40, seed=3), ShapesVQA(40, seed=3)
    c = ShapesVQA(40, seed=4)
    assert [x["question"] for x in a] == [x["question"] for x in b]
    assert list(a[0]["image"].getdata()) == list(b[0]["image"].getdata())
    assert [x["answers"] for x in a] != [x["answers"] for x in c]
    assert {x["question_type"] for x in a} == set(QUESTION_TYPES)
    for item in a:
        assert len(item["answers"]) == 10 and item["image"].size == (64, 64)
        assert vqa_accuracy(item["answer"], item["answers"]) == 1.0  # the canonical answer is always right
        assert item["answer"] in a.candidates_for(item["question_type"])
    counts = [x for x in ShapesVQA(200, question_types=["count"]) if x["answer"] == "2"]
    assert any("two" in x["answers"] for x in counts)  # number words and digits, merged by the normalisation


def test_chance_is_majority_answer_per_type():
    ds = ShapesVQA(200, seed=0, question_types=["yesno", "colour"])
    chance = ds.chance_accuracy()
    assert 0.4 < chance["yesno"] < 0.65 and 0.1 < chance["colour"] < 0.3
    assert chance["overall"] == pytest.approx((chance["yesno"] + chance["colour"]) / 2, abs=1e-9)


def test_official_normalisation_and_accuracy():
    assert normalize_answer("Two") == "2"
    assert normalize_answer("the red circle.") == "red circle"
    assert normalize_answer("dont") == "don't"
    assert normalize_answer("yes!") == "yes"
    assert normalize_answer("3.5") == "3.5"
    refs = ["red"] * 2 + ["blue"] * 8
    # leave-one-out: 2 of 10 subsets drop a "red" (1 match -> 1/3), 8 keep both (2 matches -> 2/3)
    assert vqa_accuracy("red", refs) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    assert vqa_accuracy("Blue.", refs) == 1.0
    assert vqa_accuracy("green", refs) == 0.0
    assert vqa_accuracy("two", ["2"] * 10) == 1.0
    assert majority_answer(["2", "two", "3"]) == "2"
    with pytest.raises(ValueError):
        vqa_accuracy("x", [])


def test_cider_reports_plainly_when_unavailable(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    ok, reason = cider_status()
    assert not ok and ("Java" in reason or "pycocoevalcap" in reason)
    with pytest.raises(RuntimeError, match="CIDEr unavailable"):
        compute_cider({1: "a red circle"}, {1: ["a red circle"]})


def test_collator_batches_pixels_and_masked_labels():
    model = create_model("qwen_vl:tiny")
    ds = ShapesVQA(6, transform=model.preprocess)
    batch = VQACollator(model)([ds[i] for i in range(6)])
    assert batch["pixel_values"].shape == (6, 3, 56, 56)
    assert batch["labels"].shape == batch["input_ids"].shape
    n_sup = (batch["labels"] != -100).sum(1)
    assert n_sup.tolist() == [2] * 6  # one-word answer + <|im_end|>
    gen = VQACollator(model, with_answers=False)([ds[0], ds[1]])
    assert "labels" not in gen and model.tokenizer.padding_side == "left"


@pytest.mark.slow
def test_tiny_llava_learns_shapes_vqa_above_chance():
    from vlmrobust.vlm_recipe_main import finetune_vqa

    torch.manual_seed(0)
    model = create_model("llava:tiny")
    types = ["colour", "yesno"]
    train = ShapesVQA(256, seed=0, question_types=types, transform=model.preprocess)
    test = ShapesVQA(64, seed=1, question_types=types, transform=model.preprocess)
    before = evaluate_vqa(model, test, [], answer_mode="rank", batch_size=64)["clean"]
    model.requires_grad_(True)
    losses = finetune_vqa(model, train, steps=250, batch_size=32, lr=3e-3, log_every=0)
    after = evaluate_vqa(model, test, [], answer_mode="rank", batch_size=64)
    assert losses[-1] < losses[0]
    assert after["clean"] > test.chance_accuracy()["overall"] + 0.1, (before, after)
