"""FRAMES-VQA: mini-FRAMES splits, the `frames` tags and averages, the real datasets' loaders on hand-made fixtures in
their official formats, and the Mahalanobis shift analysis (maths against numpy, `vlmrobust shift` end to end)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlmrobust.data.frames_vqa import FRAMES_DATASETS, load_frames_files
from vlmrobust.data.mini_frames import MINI_FRAMES_VARIANTS, mini_frames
from vlmrobust.data.shapes_vqa import ShapesVQA
from vlmrobust.data.sources import DatasetUnavailable, load_source
from vlmrobust.eval import SuiteError, load_results, load_suite
from vlmrobust.eval.shift import fit_gaussian, mahalanobis_scores, pearson, spearman
from vlmrobust.testing.vocab import SHAPES_VQA_VOCAB


# -- mini-FRAMES ------------------------------------------------------------------------------------------------------
def test_mini_frames_variants_are_deterministic_tagged_and_in_the_fixture_vocabulary():
    vocab = set(SHAPES_VQA_VOCAB)
    for variant, (_, level, shift) in MINI_FRAMES_VARIANTS.items():
        a, b = mini_frames(variant, 10, seed=3), mini_frames(variant, 10, seed=3)
        assert [x["question"] for x in a] == [x["question"] for x in b]
        assert [x["image"].tobytes() for x in a] == [x["image"].tobytes() for x in b]
        assert level in ("id", "near", "far") and shift
        for item in a:
            words = item["question"].replace("?", " ?").replace(".", " .").replace(",", " ,").replace(":", " :")
            assert set(words.split()) <= vocab, (variant, item["question"])
            assert len(item["answers"]) == 10 and item["answer"] in a.answer_candidates()
    # the ID split is shapes-VQA itself (the adversarial split starts from the same scenes); the others differ
    ident = ShapesVQA(10, seed=3)
    assert [x["question"] for x in mini_frames("id", 10, seed=3)] == [x["question"] for x in ident]
    assert mini_frames("colour", 10, seed=3)[0]["image"].tobytes() != ident[0]["image"].tobytes()


def test_shipped_suites_tag_every_dataset():
    mf = load_suite("mini_frames")
    assert [d.analyses["frames"].level for d in mf.datasets].count("far") == 3
    assert next(d for d in mf.datasets if d.name == "mf-adversarial").vqa.perturb["eps"] == pytest.approx(4 / 255)
    fv = load_suite("frames_vqa")
    assert {d.name: d.analyses["frames"].level for d in fv.datasets} == {n: d["level"] for n, d in
                                                                        FRAMES_DATASETS.items()}
    with pytest.raises(SuiteError, match=r"datasets\[0\]\.frames\.level: must be one of id, near, far"):
        load_suite({"name": "x", "datasets": [{"name": "a", "task": "vqa", "source": "mini-frames:id",
                                               "n_samples": 4, "frames": {"level": "middle"}}]})


# -- the real datasets' loaders, on hand-made fixtures in the official formats ----------------------------------------
def _jpg(path, colour=(200, 30, 30)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _vqa_files(root, qfile, afile, image_name, ids=(1, 2)):
    _write(root / qfile, {"data_subtype": "val2014", "questions": [
        {"question_id": i, "image_id": 7, "question": f"what colour {i}?"} for i in ids]})
    _write(root / afile, {"annotations": [
        {"question_id": i, "answer_type": "other", "answers": [{"answer": "red"}] * 10} for i in ids]})
    _jpg(root / image_name)


@pytest.mark.parametrize("name", list(FRAMES_DATASETS))
def test_each_frames_dataset_reads_its_official_format(name, tmp_path):
    d, root = FRAMES_DATASETS[name], tmp_path
    if d["format"] in ("vqa", "vqa-ce"):
        image = f"{d['images']}/" + (d["pattern"] or "x.jpg").format(image_id=7)
        _vqa_files(root, d["questions"], d["annotations"], image)
        if d["pattern"] is None:  # edited-image sets name the file in the question entry
            q = json.loads((root / d["questions"]).read_text())
            for x in q["questions"]:
                x["image"] = "x.jpg"
            _write(root / d["questions"], q)
        if d["format"] == "vqa-ce":
            _write(root / d["ids"], [2])
    elif d["format"] == "vqa-cp":
        _write(root / d["questions"], [{"question_id": 1, "image_id": 7, "coco_split": "train2014", "question": "q?"},
                                       {"question_id": 2, "image_id": 8, "coco_split": "val2014", "question": "r?"}])
        _write(root / d["annotations"], [{"question_id": i, "answer_type": "other",
                                          "answers": [{"answer": "red"}] * 10} for i in (1, 2)])
        _jpg(root / d["images"] / "train2014/COCO_train2014_000000000007.jpg")
        _jpg(root / d["images"] / "val2014/COCO_val2014_000000000008.jpg")
    elif d["format"] == "textvqa":
        _write(root / d["questions"], {"data": [{"question_id": i, "question": "what does it say?", "image_id": "ab",
                                                 "answers": ["red"] * 10} for i in (1, 2)]})
        _jpg(root / d["images"] / "ab.jpg")
    else:  # vizwiz
        _write(root / d["questions"], [{"image": "VizWiz_val_00000000.jpg", "question": "what colour?",
                                        "answers": [{"answer": "red", "answer_confidence": "yes"}] * 10,
                                        "answer_type": "other", "answerable": 1}] * 2)
        _jpg(root / d["images"] / "VizWiz_val_00000000.jpg")
    ds = load_source(f"frames:{name}", "vqa", data_dir=str(root))
    assert len(ds) == (1 if d["format"] == "vqa-ce" else 2)
    item = ds[0]
    assert item["answers"] == ["red"] * 10 and item["question"] and item["image"].size == (8, 8)


def test_a_missing_frames_dataset_names_its_expected_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as err:
        load_frames_files("vqa-cp-v2", tmp_path)
    msg = str(err.value)
    assert "vqacp_v2_test_questions.json" in msg and "vqacp_v2_test_annotations.json" in msg
    assert "COCO_{coco_split}_{image_id:012d}.jpg" in msg and "vqa-cp" in msg
    # through a suite: the dataset, the files and the download hint; a Hub copy that cannot be had is said too
    from vlmrobust.data.sources import load_vqa_dataset

    spec = next(d for d in load_suite("frames_vqa").datasets if d.name == "textvqa")
    spec = __import__("dataclasses").replace(spec, data_dir=str(tmp_path))

    class _LVLM:
        image_size, preprocess = 32, None

        def rank_answers(self): ...

        def answer_loss(self): ...

    with pytest.raises(DatasetUnavailable, match=r"dataset 'textvqa'.*TextVQA_0\.5\.1_val\.json.*textvqa\.org.*"
                                                  r"facebook/textvqa"):
        load_vqa_dataset(spec, _LVLM())


# -- Mahalanobis ----------------------------------------------------------------------------------------------------
def _direct(z_ref, z, ridge=1e-8):
    mu = z_ref.mean(0)
    c = (z_ref - mu).T @ (z_ref - mu) / (len(z_ref) - 1)
    inv = np.linalg.inv(c + ridge * np.eye(len(mu)))
    return np.array([-np.sqrt((x - mu) @ inv @ (x - mu)) for x in z])


def test_mahalanobis_equals_a_direct_numpy_computation():
    rng = np.random.default_rng(0)
    z_ref = rng.normal(size=(50, 4)) @ rng.normal(size=(4, 4))
    z = rng.normal(size=(7, 4)) * 2
    mu, prec = fit_gaussian(z_ref)
    np.testing.assert_allclose(mahalanobis_scores(z, mu, prec), _direct(z_ref, z), rtol=1e-9)
    np.testing.assert_allclose(mu, z_ref.mean(0))
    assert mahalanobis_scores(mu[None], mu, prec)[0] == 0.0


def test_mahalanobis_with_a_singular_covariance():
    rng = np.random.default_rng(1)
    basis = rng.normal(size=(2, 5))
    z_ref = rng.normal(size=(6, 2)) @ basis  # rank 2 in 5 dimensions: Σ is singular
    mu, prec = fit_gaussian(z_ref)
    assert np.linalg.matrix_rank(np.cov(z_ref, rowvar=False)) == 2
    # inside the span the ridge changes nothing: the exact pseudo-inverse of Σ gives the same scores
    inside = rng.normal(size=(4, 2)) @ basis + mu
    exact = np.linalg.pinv(np.cov(z_ref, rowvar=False), rcond=1e-10)
    want = -np.sqrt(np.einsum("nd,de,ne->n", inside - mu, exact, inside - mu))
    np.testing.assert_allclose(mahalanobis_scores(inside, mu, prec), want, rtol=1e-5)
    # off the span: the definition pinv(Σ + 1e-8·I) weighs the unseen directions by 1e8 (direct formula agrees)
    off = rng.normal(size=(3, 5))
    np.testing.assert_allclose(mahalanobis_scores(off, mu, prec), _direct(z_ref, off), rtol=1e-4)
    assert (mahalanobis_scores(off, mu, prec) < -1e3).all()


def test_correlations_by_hand():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)  # monotone, not linear
    assert pearson([1, 2, 3, 4], [1, 8, 27, 64]) < 1
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1])
    assert pearson([1, 2], [1, 2]) is None and pearson([1, 1, 1], [1, 2, 3]) is None


# -- end to end: mini-FRAMES eval, then `vlmrobust shift` with tiny local encoders ----------------------------------
@pytest.fixture(scope="module")
def tiny_encoders(tmp_path_factory):
    """A 2-layer width-32 ViT and BERT saved as transformers folders (the `image:<id>` / `text:<id>` of a test)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast, ViTConfig, ViTImageProcessor, ViTModel

    root = tmp_path_factory.mktemp("encoders")
    vit = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64), add_pooling_layer=False)
    vit.save_pretrained(root / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "vit")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *SHAPES_VQA_VOCAB]))
    tok = BertTokenizerFast(vocab_file=str(vocab))
    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64), add_pooling_layer=False)
    bert.save_pretrained(root / "bert")
    tok.save_pretrained(root / "bert")
    return root


@pytest.mark.slow
def test_mini_frames_eval_then_shift_report_and_resume(tiny_encoders, tmp_path):
    from vlmrobust.cli import main

    out = tmp_path / "mf"
    datasets = "mf-id,mf-colour,mf-adversarial,mf-text"
    common = ["--model", "llava:tiny", "--suite", "mini_frames", "--output", str(out), "--n-samples", "4",
              "--datasets", datasets, "--no-progress"]
    assert main(["eval", *common]) == 0
    res = load_results(out)
    clean = res["cells"]["llava:tiny|mf-id|clean"]
    assert "{question}" in clean["prompt_template"] and clean["decoding"]["mode"] == "rank"
    frames = res["summary"]["models"]["llava:tiny"]["frames"]
    assert set(frames["levels"]) == {"id", "near", "far"} and frames["n_datasets"] == {"id": 1, "near": 2, "far": 1}
    report = (out / "report.md").read_text()
    assert "### ID / near / far OOD" in report and (out / "frames_accuracy_by_shift.png").is_file()

    shift = [*common, "--encoder", f"image:{tiny_encoders / 'vit'}", "--encoder", f"text:{tiny_encoders / 'bert'}",
             "--reference-samples", "12"]
    assert main(["shift", *shift]) == 0
    res = load_results(out)
    assert res["last_run"]["reused_cells"] == 4  # the eval's accuracy cells
    kinds = [f"image:{tiny_encoders / 'vit'}", f"text:{tiny_encoders / 'bert'}", "vlm-image", "vlm-question",
             "vlm-joint"]
    for d in datasets.split(","):
        for k in kinds:
            cell = res["cells"][f"llava:tiny|{d}|shift|{k}"]
            assert cell["n"] == 4 and cell["mean"] == pytest.approx(np.mean(cell["scores"]), abs=1e-4)
            assert all(s <= 0 for s in cell["scores"])
    summary = res["summary"]["models"]["llava:tiny"]
    assert set(summary["shift"]["correlation_with_accuracy"]) == set(kinds)
    assert set(summary["shift"]["by_level"]["vlm-image"]) == {"id", "near", "far"}
    report = (out / "report.md").read_text()
    assert "### Mahalanobis shift" in report and "Per-sample correlation" in report
    assert (out / "shift_vs_accuracy.png").is_file() and (out / "shift_hist_llava_tiny.png").is_file()
    # resumable: nothing is recomputed
    assert main(["shift", *shift]) == 0
    assert load_results(out)["last_run"] == {"computed_cells": 0, "reused_cells": 4 + 4 * len(kinds)}
