"""VQA and captioning splits through the real `datasets` loaders (local parquet written in-test)."""

import datasets
import numpy as np
import pytest
from PIL import Image

from vlmrobust.data.vqa import HFCaptionDataset, HFVQADataset


def _images(n):
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((12, 12, 3)) * 255).astype("uint8")) for _ in range(n)]


def test_vqa_split_from_parquet(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "question_id": datasets.Value("int64"), "answer_type": datasets.Value("string"),
                                  "answers": [{"answer": datasets.Value("string")}]})
    ds = datasets.Dataset.from_dict({"image": _images(3), "question": ["what colour?", "how many?", "is it red?"],
                                     "question_id": [7, 8, 9], "answer_type": ["other", "number", "yes/no"],
                                     "answers": [[{"answer": "red"}] * 10, [{"answer": "2"}] * 10,
                                                 [{"answer": "yes"}] * 10]}, features=features)
    ds.to_parquet(str(tmp_path / "vqa.parquet"))
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "vqa.parquet"), split="train")
    vqa = HFVQADataset(loaded, max_samples=2)
    assert len(vqa) == 2
    item = vqa[1]
    assert item["question"] == "how many?" and item["answers"] == ["2"] * 10 and item["question_id"] == 8
    assert item["question_type"] == "number" and item["image"].mode == "RGB"


def test_caption_split_from_parquet(tmp_path):
    ds = datasets.Dataset.from_dict(
        {"image": _images(2), "captions": [["a red circle", "a circle that is red"], ["two blue squares"]],
         "image_id": [11, 12]},
        features=datasets.Features({"image": datasets.Image(), "captions": [datasets.Value("string")],
                                    "image_id": datasets.Value("int64")}))
    ds.to_parquet(str(tmp_path / "cap.parquet"))
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "cap.parquet"), split="train")
    caps = HFCaptionDataset(loaded)
    assert len(caps) == 2
    item = caps[0]
    assert item["answers"] == ["a red circle", "a circle that is red"] and item["question_id"] == 11
    assert item["question_type"] == "caption" and item["image"].size == (12, 12)
    with pytest.raises(ValueError, match="captions_field"):
        HFCaptionDataset(loaded, captions_field="sentences")
