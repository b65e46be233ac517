"""Captioning CIDEr (PTB tokenizer + pycocoevalcap, needs Java), `evaluate_captioning`, `task: caption` suites, and the
local official-format loaders (`CaptionJsonDataset`, `VQAJsonDataset`)."""

from __future__ import annotations

import json

import pytest

from vlmrobust.eval import EVAL_TASKS, SuiteError, load_suite, run_suite
from vlmrobust.eval.runner import load_results
from vlmrobust.metrics import CorpusCider, cider_status, compute_cider

CIDER_OK, CIDER_WHY = cider_status()
needs_cider = pytest.mark.skipif(not CIDER_OK, reason=CIDER_WHY)

REFS = {
    1: ["a red circle on a grey background", "a picture of a red circle", "a red circle"],
    2: ["two blue squares on a grey background", "a picture of two blue squares", "two blue squares"],
    3: ["three green triangles on a grey background", "an image showing three green triangles",
        "three green triangles"],
    4: ["a yellow diamond on a grey background", "a picture of a yellow diamond", "a yellow diamond"],
}


# -- CIDEr ----------------------------------------------------------------------------------------------------------
@needs_cider
def test_cider_identical_beats_unrelated_and_is_deterministic():
    good = {k: v[0] for k, v in REFS.items()}
    bad = {1: "a man riding a horse", 2: "a plate of food on a table", 3: "people walking down a street",
           4: "a dog sleeping on a couch"}
    s_good, per_good = compute_cider(good, REFS, per_image=True)
    s_bad = compute_cider(bad, REFS)
    assert s_good > 100.0 and s_bad < 5.0 and s_good > 50 * s_bad  # "a" / "on a" still overlap a little
    assert compute_cider(good, REFS) == s_good  # deterministic
    assert s_good == pytest.approx(sum(per_good.values()) / len(per_good))
    # PTB tokenisation: case and punctuation do not matter
    assert compute_cider({k: v.upper() + "." for k, v in good.items()}, REFS) == pytest.approx(s_good)
    with pytest.raises(KeyError, match="no prediction"):
        compute_cider({1: "a red circle"}, REFS)


@needs_cider
def test_corpus_cider_matches_the_toolkit_per_image():
    """Per-image scores against the corpus IDF are the terms of the official corpus score, for any subset."""
    preds = {1: "a red circle", 2: "a blue square", 3: "green triangles", 4: ""}
    total, per = compute_cider(preds, REFS, per_image=True)
    scorer = CorpusCider(REFS)
    assert scorer.corpus(preds) == pytest.approx(total)
    assert scorer.score([3, 1], [preds[3], preds[1]]) == pytest.approx([per[3], per[1]])
    assert scorer.score([4], [""]) == [0.0]


def test_cider_status_without_java_names_what_to_install(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    ok, msg = cider_status()
    assert not ok and msg.startswith("CIDEr unavailable")
    assert "Java" in msg and "default-jre-headless" in msg and "vlmrobust[caption]" in msg
    with pytest.raises(RuntimeError, match="no Java runtime"):
        compute_cider({1: "a red circle"}, {1: ["a red circle"]})


def test_cider_status_without_pycocoevalcap(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("pycocoevalcap"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    ok, msg = cider_status()
    assert not ok and "pycocoevalcap" in msg and "pip install" in msg


def test_evaluate_captioning_says_plainly_when_cider_is_unavailable(monkeypatch):
    import shutil

    from vlmrobust.eval.caption import evaluate_captioning

    monkeypatch.setattr(shutil, "which", lambda name: None)
    res = evaluate_captioning(object(), [{"answers": ["a"]}], (2 / 255,), steps=1)
    assert res["cider_available"] is False and res["clean"] is None and "Java" in res["message"]
    json.dumps(res)


# -- official-format loaders ----------------------------------------------------------------------------------------
def _png(path, colour):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), colour).save(path)


def test_caption_json_dataset_loads_coco_format(tmp_path):
    from vlmrobust.data.vqa import CaptionJsonDataset

    ann = {"images": [{"id": 7, "file_name": "a.png"}, {"id": 9, "file_name": "b.png"},
                      {"id": 11, "file_name": "no_captions.png"}],
           "annotations": [{"image_id": 7, "id": 1, "caption": "a red square"},
                           {"image_id": 9, "id": 2, "caption": "a blue square"},
                           {"image_id": 7, "id": 3, "caption": "red square on white"}]}
    (tmp_path / "captions.json").write_text(json.dumps(ann))
    _png(tmp_path / "imgs" / "a.png", (255, 0, 0))
    _png(tmp_path / "imgs" / "b.png", (0, 0, 255))
    ds = CaptionJsonDataset(tmp_path / "captions.json", tmp_path / "imgs", prompt="Describe.")
    assert len(ds) == 2  # images without captions are dropped
    it = ds[0]
    assert it["question_id"] == 7 and it["question"] == "Describe." and it["question_type"] == "caption"
    assert it["answers"] == ["a red square", "red square on white"]
    assert it["image"].mode == "RGB" and it["image"].size == (12, 10) and it["image"].getpixel((0, 0)) == (255, 0, 0)
    assert len(CaptionJsonDataset(tmp_path / "captions.json", tmp_path / "imgs", max_samples=1)) == 1
    (tmp_path / "imgs" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match="b.png"):
        ds[1]


def test_vqa_json_dataset_loads_official_files(tmp_path):
    from vlmrobust.data.vqa import VQAJsonDataset

    questions = {"data_subtype": "val2014", "questions": [
        {"question_id": 101, "image_id": 5, "question": "What colour is it?"},
        {"question_id": 102, "image_id": 6, "question": "How many?"}]}
    answers = ["red"] * 8 + ["Red.", "pink"]
    annotations = {"annotations": [
        {"question_id": 101, "image_id": 5, "answer_type": "other", "question_type": "what color",
         "answers": [{"answer": a, "answer_id": i + 1, "answer_confidence": "yes"} for i, a in enumerate(answers)]},
        {"question_id": 102, "image_id": 6, "answer_type": "number", "question_type": "how many",
         "answers": [{"answer": "2", "answer_id": i + 1} for i in range(10)]}]}
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    _png(tmp_path / "val2014" / "COCO_val2014_000000000005.png", (200, 10, 10))
    ds = VQAJsonDataset(tmp_path / "q.json", tmp_path / "a.json", image_dir=tmp_path / "val2014",
                        image_pattern="COCO_{split}_{image_id:012d}.png")
    assert len(ds) == 2
    it = ds[0]
    assert it["question"] == "What colour is it?" and it["question_id"] == 101 and it["question_type"] == "other"
    assert len(it["answers"]) == 10 and it["answers"][:2] == ["red", "red"] and it["answers"][-1] == "pink"
    assert it["image"].mode == "RGB" and it["image"].getpixel((3, 3)) == (200, 10, 10)
    with pytest.raises(FileNotFoundError, match="COCO_val2014_000000000006.png"):
        ds[1]
    # without annotations: questions only, no answers
    bare = VQAJsonDataset(tmp_path / "q.json", image_dir=tmp_path / "val2014",
                          image_pattern="COCO_{split}_{image_id:012d}.png", max_samples=1)
    assert len(bare) == 1 and bare[0]["answers"] == []


# -- suites ---------------------------------------------------------------------------------------------------------
def _caption_suite(**dataset) -> dict:
    base = {"name": "caps", "task": "caption", "source": "shapes-caption", "n_samples": 6, "batch_size": 6,
            "caption": {"max_new_tokens": 6},
            "attacks": [{"attack": "apgd", "eps": ["2/255", "4/255"], "steps": 2, "n_references": 1}]}
    return {"name": "tiny-caption", "datasets": [{**base, **dataset}]}


def test_shipped_shapes_caption_suite_validates():
    suite = load_suite("shapes_caption")
    (d,) = suite.datasets
    assert d.task == "caption" and d.source == "shapes-caption" and d.n_samples == 30
    (a,) = d.attacks
    assert a.components == ("apgd",) and a.eps == (2 / 255, 4 / 255) and a.n_references == 2
    assert EVAL_TASKS.get(d.task).data_config(d)["task"] == "caption" and d.caption.max_new_tokens == 12


@pytest.mark.parametrize("patch, field", [
    ({"caption": {"max_new_token": 5}}, "datasets[0].caption.max_new_token"),
    ({"source": "coco-json"}, "datasets[0].caption.annotations_file"),
    ({"caption": {"image_dir": "imgs"}}, "datasets[0].caption.image_dir"),
    ({"source": "some/hub-captions"}, "datasets[0].source"),
    ({"templates": "digits"}, "datasets[0].templates"),
    ({"vqa": {"answer_mode": "rank"}}, "datasets[0].vqa"),
    ({"attacks": [{"attack": "apgd-ce", "eps": ["2/255"]}]}, "datasets[0].attacks[0].attack"),
    ({"attacks": [{"attack": "apgd", "eps": ["2/255"], "targets": ["x"]}]}, "datasets[0].attacks[0].targets"),
    ({"attacks": [{"attack": "apgd", "eps": ["2/255"], "n_references": 0}]}, "datasets[0].attacks[0].n_references"),
    ({"n_samples": None}, "datasets[0].n_samples"),
])
def test_malformed_caption_field_is_named(patch, field):
    import re

    with pytest.raises(SuiteError, match=rf"suite 'tiny-caption': {re.escape(field)}:"):
        load_suite(_caption_suite(**patch))


def test_caption_field_on_classification_dataset_is_named():
    raw = {"name": "x", "datasets": [{"name": "digits", "source": "digits", "caption": {"max_new_tokens": 5}}]}
    with pytest.raises(SuiteError, match=r"datasets\[0\]\.caption: only for task: caption"):
        load_suite(raw)


@pytest.fixture(scope="module")
def llava_tiny():
    from vlmrobust.models import create_model

    return create_model("llava:tiny")


@needs_cider
def test_caption_suite_runs_writes_cells_and_resumes(llava_tiny, tmp_path):
    suite = load_suite(_caption_suite())
    res = run_suite({"llava:tiny": llava_tiny}, suite, tmp_path, device="cpu", progress=False)
    cells = load_results(tmp_path)["cells"]
    clean = cells["llava:tiny|caps|clean"]
    assert clean["kind"] == "caption_clean" and clean["metric"] == "cider" and clean["n"] == 6
    assert len(clean["scores"]) == 6 and len(clean["captions"]) == 6 and clean["cider"] >= 0
    attacks = sorted((c for c in cells.values() if c["kind"] == "caption_attack"), key=lambda c: c["eps"])
    assert [c["eps"] for c in attacks] == [2 / 255, 4 / 255]  # a robust CIDEr cell per ε
    prev = clean
    for c in attacks:  # worst case per image: never above the smaller ε (or clean)
        assert c["cider"] <= prev["cider"] + 1e-9 and len(c["captions"]) == 6
        assert all(r <= p + 1e-9 for r, p in zip(c["scores"], prev["scores"]))
        prev = c
    # the stored per-image scores are the CIDEr of the stored captions against the subset's references
    from vlmrobust.data.shapes_captions import ShapesCaptions

    refs = {i: it["answers"] for i, it in enumerate(ShapesCaptions(6, seed=0))}
    assert compute_cider(dict(enumerate(attacks[-1]["captions"])), refs) == pytest.approx(attacks[-1]["cider"],
                                                                                          abs=1e-3)
    assert res["last_run"] == {"computed_cells": 3, "reused_cells": 0}
    row = res["summary"]["models"]["llava:tiny"]["caption"]["caps"]
    assert row["clean"] == pytest.approx(clean["cider"])
    assert set(row["robust"]["apgd-ensemble (Linf)"]) == {2 / 255, 4 / 255}
    report = (tmp_path / "report.md").read_text()
    assert "### Captioning CIDEr" in report and "apgd-ensemble (Linf) ε=4/255" in report
    again = run_suite({"llava:tiny": llava_tiny}, suite, tmp_path, device="cpu", progress=False)
    assert again["last_run"] == {"computed_cells": 0, "reused_cells": 3}


def test_caption_suite_without_java_is_skipped_with_the_reason(llava_tiny, tmp_path, monkeypatch):
    import shutil

    from vlmrobust.eval.runner import DatasetUnavailable

    monkeypatch.setattr(shutil, "which", lambda name: None)
    suite = load_suite(_caption_suite(attacks=[]))
    with pytest.raises(DatasetUnavailable, match="CIDEr unavailable.*Java"):
        run_suite({"llava:tiny": llava_tiny}, suite, tmp_path, device="cpu", progress=False)
    res = run_suite({"llava:tiny": llava_tiny}, suite, tmp_path, device="cpu", progress=False, skip_missing=True)
    assert "Java" in res["skipped"]["llava:tiny|caps"]
    assert "## Skipped datasets" in (tmp_path / "report.md").read_text()


def test_caption_dataset_on_a_clip_model_is_skipped_with_a_reason(tmp_path, tiny_open_clip_dir):
    from vlmrobust.eval.runner import DatasetUnavailable

    suite = load_suite(_caption_suite(attacks=[]))
    with pytest.raises(DatasetUnavailable, match="not an LVLM|CIDEr"):
        run_suite([f"local-dir:{tiny_open_clip_dir}"], suite, tmp_path, device="cpu", progress=False)


@needs_cider
def test_cli_eval_shapes_caption(tmp_path, capsys):
    from vlmrobust.cli import main

    out = tmp_path / "out"
    assert main(["eval", "--model", "llava:tiny", "--suite", "shapes_caption", "--output", str(out),
                 "--n-samples", "6", "--no-progress"]) == 0
    assert "shapes-caption (CIDEr): clean" in capsys.readouterr().out
    kinds = sorted(c["kind"] for c in json.loads((out / "results.json").read_text())["cells"].values())
    assert kinds == ["caption_attack", "caption_attack", "caption_clean"]


@needs_cider
def test_evaluate_captioning_on_llava_tiny(llava_tiny):
    from vlmrobust.data.shapes_captions import ShapesCaptions
    from vlmrobust.eval.caption import evaluate_captioning

    ds = ShapesCaptions(4, transform=llava_tiny.preprocess)
    res = evaluate_captioning(llava_tiny, ds, (2 / 255, 4 / 255), steps=2, n_references=2, max_new_tokens=6)
    json.dumps(res)
    assert res["cider_available"] and res["n_images"] == 4 and set(res["robust"]) == {"2/255", "4/255"}
    assert res["robust"]["4/255"] <= res["robust"]["2/255"] <= res["clean"]
    assert len(res["captions"]["4/255"]) == 4
