"""A NaN / Inf attack loss (or adversarial image) in the VQA / captioning attacks counts the point as broken: score 0,
never robust, with a warning naming how many (as the classification attacks count a NaN point)."""

from __future__ import annotations

import pytest
import torch

from vlmrobust.attacks.vlm import attack_answers, ensemble_attack
from vlmrobust.data.shapes_vqa import ShapesVQA
from vlmrobust.models import create_model

EPS = 8 / 255


@pytest.fixture(scope="module")
def llava():
    model = create_model("llava:tiny")
    ds = ShapesVQA(4, seed=0, question_types=["colour", "shape"], transform=model.preprocess)
    x = torch.stack([it["pixel_values"] for it in ds])
    return model, ds, x, [it["question"] for it in ds], [it["answer"] for it in ds]


def _nan_for(model, monkeypatch, bad_images: torch.Tensor):
    """Make `model.answer_loss` NaN for every image within the ε-ball of one of `bad_images` (the images are
    recognised by content, so sub-batches and perturbed copies of them are caught too)."""
    real = model.answer_loss

    def answer_loss(pixels, batch, **kwargs):
        loss = real(pixels, batch, **kwargs)
        d = (pixels.detach().unsqueeze(1) - bad_images.to(pixels.device).unsqueeze(0)).abs()
        hit = (d.flatten(2).amax(-1) <= EPS + 1e-4).any(1)
        return torch.where(hit, torch.full_like(loss, float("nan")), loss)

    monkeypatch.setattr(model, "answer_loss", answer_loss)


def test_attack_answers_marks_the_nonfinite_images(llava, monkeypatch):
    model, _, x, qs, ans = llava
    _nan_for(model, monkeypatch, x[[1]])
    res = attack_answers(model, x, qs, ans, eps=EPS, steps=3)
    assert res.nonfinite.tolist() == [False, True, False, False]


def test_ensemble_scores_a_nonfinite_point_zero_and_reports_it(llava, monkeypatch):
    model, _, x, qs, ans = llava
    _nan_for(model, monkeypatch, x[[1, 3]])
    seen = []

    def always_right(imgs, idx):  # the model answers correctly whatever the image: every finite point is robust
        assert torch.isfinite(imgs).all()  # never scored on a NaN image
        seen.append(idx.tolist())
        return torch.ones(len(idx))

    broken: list[int] = []
    _, worst = ensemble_attack(model, x, qs, [[a] for a in ans], eps=EPS, score_fn=always_right, steps=3,
                               nonfinite_out=broken)
    assert worst.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert broken == [1, 3]


def test_vqa_suite_cell_counts_nonfinite_questions_as_broken(llava, monkeypatch, tmp_path):
    import vlmrobust.metrics
    from vlmrobust.data.sources import load_vqa_dataset
    from vlmrobust.eval import load_suite, run_suite

    model = llava[0]
    # every answer scores 1 (the tiny random model is never right): every finite question stays robust
    monkeypatch.setattr(vlmrobust.metrics, "vqa_accuracy", lambda pred, refs: 1.0)
    suite = load_suite({"name": "tiny-vqa", "datasets": [{
        "name": "shapes", "task": "vqa", "source": "shapes-vqa", "n_samples": 6, "batch_size": 6,
        "vqa": {"answer_mode": "rank"},
        "attacks": [{"attack": "apgd", "eps": ["8/255"], "steps": 2, "max_references": 1}]}]})
    target = 2
    item = load_vqa_dataset(suite.datasets[0], model)[target]
    img = item["pixel_values"] if "pixel_values" in item else model.preprocess(item["image"])
    _nan_for(model, monkeypatch, torch.as_tensor(img).float().unsqueeze(0))
    with pytest.warns(RuntimeWarning, match=r"NaN / Inf for 1 questions; each is counted as broken"):
        res = run_suite({"llava:tiny": model}, suite, tmp_path, device="cpu", progress=False)
    clean = next(c for c in res["cells"].values() if c["kind"] == "vqa_clean")
    cell = next(c for c in res["cells"].values() if c["kind"] == "vqa_attack")
    assert clean["scores"] == [1.0] * 6
    assert cell["n_nonfinite"] == 1 and cell["nonfinite_questions"] == [target]
    assert cell["scores"] == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    assert cell["accuracy"] == pytest.approx(5 / 6)


def test_captioning_scores_a_nonfinite_image_zero_and_reports_it(llava, monkeypatch):
    import vlmrobust.eval.caption as caption
    from vlmrobust.data.shapes_captions import ShapesCaptions
    from vlmrobust.metrics import cider_status

    if not cider_status()[0]:
        pytest.skip(cider_status()[1])
    model = llava[0]
    ds = ShapesCaptions(4, seed=0, transform=model.preprocess)
    x = torch.stack([torch.as_tensor(ds[i]["pixel_values"]) for i in range(4)]).float()
    _nan_for(model, monkeypatch, x[[1]])

    def fixed_scores(model, scorer, pixels, prompts, ids, max_new_tokens):  # every caption scores 50 CIDEr
        assert torch.isfinite(pixels).all()  # never captioned from a NaN image
        return [50.0] * len(ids), ["a caption"] * len(ids)

    monkeypatch.setattr(caption, "caption_scores", fixed_scores)
    with pytest.warns(RuntimeWarning, match=r"NaN / Inf for 1 images; each is counted as broken"):
        res = caption.evaluate_captioning(model, ds, [EPS], steps=2, n_references=1, batch_size=4, max_new_tokens=3)
    assert res["per_image"]["clean"] == [50.0] * 4
    assert res["per_image"]["8/255"] == [50.0, 0.0, 50.0, 50.0]
    assert res["captions"]["8/255"][1] == "" and res["nonfinite"] == {"8/255": 1}
    assert res["robust"]["8/255"] == pytest.approx(37.5)


def test_evaluate_vqa_counts_nonfinite_questions_as_broken(llava, monkeypatch):
    import vlmrobust.eval.vqa as vqa

    model, ds, x, *_ = llava
    monkeypatch.setattr(vqa, "vqa_accuracy", lambda pred, refs: 1.0)  # every finite question stays robust
    _nan_for(model, monkeypatch, x[[0]])
    with pytest.warns(RuntimeWarning, match=r"vqa \(VQA accuracy\): .*NaN / Inf for 1 questions"):
        res = vqa.evaluate_vqa(model, ds, [EPS], steps=2, batch_size=4, answer_mode="rank")
    assert res["clean"] == 1.0 and res["robust"]["8/255"] == 0.75 and res["nonfinite"] == {"8/255": 1}


def test_caption_suite_cell_counts_nonfinite_images_as_broken(llava, monkeypatch, tmp_path):
    import vlmrobust.eval.caption as caption
    from vlmrobust.data.sources import load_caption_dataset
    from vlmrobust.eval import load_suite, run_suite
    from vlmrobust.metrics import cider_status

    if not cider_status()[0]:
        pytest.skip(cider_status()[1])
    model = llava[0]
    monkeypatch.setattr(caption, "caption_scores",  # every caption scores 50 CIDEr
                        lambda model, scorer, pixels, prompts, ids, n: ([50.0] * len(ids), ["a caption"] * len(ids)))
    suite = load_suite({"name": "tiny-caption", "datasets": [{
        "name": "caps", "task": "caption", "source": "shapes-caption", "n_samples": 4, "batch_size": 4,
        "caption": {"max_new_tokens": 3},
        "attacks": [{"attack": "apgd", "eps": ["8/255"], "steps": 2, "n_references": 1}]}]})
    item = load_caption_dataset(suite.datasets[0], model)[3]
    img = item["pixel_values"] if "pixel_values" in item else model.preprocess(item["image"])
    _nan_for(model, monkeypatch, torch.as_tensor(img).float().unsqueeze(0))
    with pytest.warns(RuntimeWarning, match=r"NaN / Inf for 1 images; each is counted as broken"):
        res = run_suite({"llava:tiny": model}, suite, tmp_path, device="cpu", progress=False)
    cell = next(c for c in res["cells"].values() if c["kind"] == "caption_attack")
    assert cell["n_nonfinite"] == 1 and cell["nonfinite_images"] == [3]
    assert cell["scores"] == [50.0, 50.0, 50.0, 0.0] and cell["captions"][3] == ""
