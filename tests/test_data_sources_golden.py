"""Every data source gives the same items, in the same order, with the same seeded subsets, as main's code did.

`RECORDED` holds checksums computed with main's loaders (commit c211f11, before the data-source registry) through
the public entry points that both versions have: the suite loaders (`load_suite_dataset`, `load_vqa_dataset`,
`load_caption_dataset`), the recipes' `load_datasets` / `load_vqa_datasets` and `load_classification_dataset`. Each
case has two checksums: `ids` (labels, question ids, questions, answers, class names, templates: what was picked and
in which order, independent of library versions) and `pixels` (the float tensors or decoded images, which a
different torch / torchvision / Pillow could change in the last bit).

Re-record only on purpose, from the commit whose behaviour is the reference:
`python tests/test_data_sources_golden.py` prints the table for `RECORDED`.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from vlmrobust.data import default_image_transform

#: the offline shapes-VQA set's name in the LVLM recipe (main's code called it `shapes`)
RECIPE_SHAPES_NAME = "shapes-vqa"


# -- stand-ins for the model and the suite's dataset spec -------------------------------------------------------------
class _Model:
    """What the loaders read from a model: its resolution and preprocessing, and (LVLMs) the answer methods."""

    image_size = 24

    def __init__(self):
        self.preprocess = default_image_transform(self.image_size)

    def rank_answers(self, *a, **k):  # pragma: no cover - only its presence is checked
        raise NotImplementedError

    answer_loss = generate = rank_answers


def _spec(**kw):
    base = dict(name="d", source="digits", split="test", n_samples=None, seed=0, data_dir=None, image_column=None,
                label_column=None, classnames=None, templates=None, download=None, vqa=None, caption=None)
    return SimpleNamespace(**{**base, **kw})


def _vqa(**kw):
    base = dict(answer_mode="generate", candidates=None, max_new_tokens=10, questions_file=None,
                annotations_file=None, image_dir=None, image_pattern=None, answers_field="answers", image_size=64)
    return SimpleNamespace(**{**base, **kw})


def _caption(**kw):
    base = dict(prompt="Provide a short caption for this image.", max_new_tokens=20, annotations_file=None,
                image_dir=None, image_size=64)
    return SimpleNamespace(**{**base, **kw})


# -- deterministic local fixtures (written in the test's folder, read back through the real loaders) -------------------
def _rgb(rng, h, w):
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))


def _pets(n, seed):
    rng = np.random.default_rng(seed)
    return [_rgb(rng, 20 + i % 3, 30 - i % 4) for i in range(n)], [i % 3 for i in range(n)]


_NAMES = ["cat", "dog_house", "bird"]


def _write_parquet(path, n, seed):
    images, labels = _pets(n, seed)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=_NAMES)})
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(str(path))


def _write_imagefolder(root, split, n, seed):
    images, labels = _pets(n, seed)
    for i, (im, y) in enumerate(zip(images, labels)):
        d = root / split / _NAMES[y]
        d.mkdir(parents=True, exist_ok=True)
        im.save(d / f"{i:03d}.png")


def _write_webdataset(root, n, seed):
    images, labels = _pets(n, seed)
    (root / "test").mkdir(parents=True)
    with tarfile.open(root / "test" / "0.tar", "w") as tar:
        for i, (im, y) in enumerate(zip(images, labels)):
            buf = io.BytesIO()
            im.save(buf, format="png")
            for ext, blob in (("png", buf.getvalue()), ("cls", str(y).encode())):
                info = tarfile.TarInfo(f"s{i:04d}.{ext}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))


def _vqa_rows(n, seed):
    rng = np.random.default_rng(seed)
    return [{"image": _rgb(rng, 16, 16), "question": f"question {i}?", "question_id": 100 + i,
             "answer_type": ["other", "number", "yes/no"][i % 3],
             "answers": [{"answer": f"a{i % 4}"}] * 3 + [{"answer": f"b{i % 2}"}]} for i in range(n)]


def _write_hub_vqa(folder, n, seed):
    rows = _vqa_rows(n, seed)
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "question_id": datasets.Value("int64"), "answer_type": datasets.Value("string"),
                                  "answers": [{"answer": datasets.Value("string")}]})
    ds = datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in rows[0]}, features=features)
    datasets.DatasetDict({"validation": ds}).save_to_disk(str(folder))


def _write_vqa_json(root, n, seed):
    rows = _vqa_rows(n, seed)
    (root / "images").mkdir(parents=True)
    qs, anns = [], []
    for i, r in enumerate(rows):
        r["image"].save(root / "images" / f"COCO_val2014_{i:012d}.jpg")
        qs.append({"question_id": r["question_id"], "image_id": i, "question": r["question"]})
        anns.append({"question_id": r["question_id"], "answers": r["answers"], "answer_type": r["answer_type"]})
    (root / "q.json").write_text(json.dumps({"data_subtype": "val2014", "questions": qs}))
    (root / "a.json").write_text(json.dumps({"annotations": anns}))


def _write_coco_json(root, n, seed):
    rng = np.random.default_rng(seed)
    (root / "val2014").mkdir(parents=True)
    images, anns = [], []
    for i in range(n):
        name = f"COCO_val2014_{i:012d}.jpg"
        _rgb(rng, 18, 14).save(root / "val2014" / name)
        images.append({"id": 500 + i, "file_name": name})
        anns += [{"image_id": 500 + i, "caption": f"caption {j} of image {i}"} for j in range(2 + i % 2)]
    images.append({"id": 999, "file_name": "no_captions.jpg"})  # an image without captions is left out
    (root / "captions.json").write_text(json.dumps({"images": images, "annotations": anns}))


# -- checksums ---------------------------------------------------------------------------------------------------------
def _digest(parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else repr(p).encode())
    return h.hexdigest()[:16]


def _pixels(item) -> bytes:
    if "pixel_values" in item:
        x = torch.as_tensor(item["pixel_values"]).float().contiguous()
        return repr(tuple(x.shape)).encode() + x.numpy().tobytes()
    im = item["image"]
    return repr(im.size).encode() + im.tobytes()


def checksums(ds) -> dict[str, object]:
    """`{"n", "ids", "pixels"}` of a dataset's items in order (plus class names / templates where it has them)."""
    items = [ds[i] for i in range(len(ds))]
    meta = [(len(items), getattr(ds, "classnames", None), getattr(ds, "templates", None))]
    for it in items:
        meta.append(tuple((k, it[k]) for k in ("labels", "question", "answers", "question_id", "question_type")
                          if k in it))
    return {"n": len(items), "ids": _digest(meta), "pixels": _digest(_pixels(it) for it in items)}


def compute_all(root: Path) -> dict[str, dict]:
    """Every case's checksums; local fixtures are written under `root`."""
    from vlmrobust.data import load_classification_dataset
    from vlmrobust.data.sources import load_caption_dataset, load_suite_dataset, load_vqa_dataset
    from vlmrobust.script_utils import ScriptArguments, load_datasets
    from vlmrobust.vlm_recipe_main import LVLMScriptArguments, load_vqa_datasets

    m = _Model()
    out: dict[str, dict] = {}
    # digits: suite (seeded subset, whole split), recipe (train + eval), direct
    out["suite/digits-240"] = checksums(load_suite_dataset(_spec(n_samples=240, templates="digits"), m))
    out["suite/digits-all-seed3"] = checksums(load_suite_dataset(_spec(n_samples=None, seed=3), m))
    tr, ev = load_datasets(ScriptArguments(dataset_name="digits", max_train_samples=64, eval_max_samples=40), m,
                           seed=1)
    out["recipe/digits-train"], out["recipe/digits-eval"] = checksums(tr), checksums(ev)
    out["direct/digits-train-16"] = checksums(load_classification_dataset("digits", "train", image_size=16,
                                                                          max_samples=100, seed=2))
    # shapes-VQA / shapes-caption: suite and recipe
    out["suite/shapes-vqa"] = checksums(load_vqa_dataset(_spec(source="shapes-vqa", n_samples=12, seed=5,
                                                               vqa=_vqa(answer_mode="rank", image_size=48)), m))
    tr, ev = load_vqa_datasets(LVLMScriptArguments(dataset_name=RECIPE_SHAPES_NAME, train_samples=10,
                                                   eval_samples=6), m, seed=2)
    out["recipe/shapes-vqa-train"], out["recipe/shapes-vqa-eval"] = checksums(tr), checksums(ev)
    out["suite/shapes-caption"] = checksums(load_caption_dataset(
        _spec(source="shapes-caption", n_samples=7, seed=4, caption=_caption(image_size=40)), m))
    # local classification sources through `datasets`
    _write_parquet(root / "pq" / "one.parquet", 9, seed=0)
    out["suite/parquet-file"] = checksums(load_suite_dataset(
        _spec(source=f"parquet:{root / 'pq' / 'one.parquet'}", n_samples=5, seed=1), m))
    _write_parquet(root / "pqdir" / "test-00000.parquet", 8, seed=1)
    _write_parquet(root / "pqdir" / "train-00000.parquet", 11, seed=2)
    tr, ev = load_datasets(ScriptArguments(dataset_name=f"parquet:{root / 'pqdir'}", max_train_samples=6,
                                           eval_max_samples=None), m, seed=0)
    out["recipe/parquet-dir-train"], out["recipe/parquet-dir-eval"] = checksums(tr), checksums(ev)
    _write_imagefolder(root / "imf", "train", 7, seed=3)
    _write_imagefolder(root / "imf", "test", 5, seed=4)
    out["suite/imagefolder-test"] = checksums(load_suite_dataset(_spec(source=f"imagefolder:{root / 'imf'}"), m))
    out["suite/imagefolder-data_dir-train"] = checksums(load_suite_dataset(
        _spec(source="imagefolder", data_dir=str(root / "imf"), split="train", n_samples=4, seed=9), m))
    _write_webdataset(root / "wds", 6, seed=5)
    out["suite/webdataset"] = checksums(load_suite_dataset(
        _spec(source=f"webdataset:{root / 'wds'}", label_column="cls", classnames=["x", "y", "z"]), m))
    _write_parquet(root / "hubdir" / "test-00000.parquet", 6, seed=6)
    out["suite/hub-local-folder"] = checksums(load_suite_dataset(_spec(source=str(root / "hubdir"), n_samples=4), m))
    # VQA / captions from files
    _write_hub_vqa(root / "hubvqa", 9, seed=7)
    out["suite/hub-vqa-save_to_disk"] = checksums(load_vqa_dataset(
        _spec(source=str(root / "hubvqa"), split="validation", n_samples=5, seed=2, vqa=_vqa()), m))
    _write_vqa_json(root / "vqajson", 8, seed=8)
    out["suite/vqa-json"] = checksums(load_vqa_dataset(_spec(
        source="vqa-json", data_dir=str(root / "vqajson"), n_samples=5, seed=1,
        vqa=_vqa(questions_file="q.json", annotations_file="a.json", image_dir="images")), m))
    v = root / "vqajson"
    tr, ev = load_vqa_datasets(LVLMScriptArguments(dataset_name=f"vqa-json:{v / 'q.json'},{v / 'a.json'},"
                                                                f"{v / 'images'}", train_samples=4, eval_samples=3),
                               m, seed=0)
    out["recipe/vqa-json-train"], out["recipe/vqa-json-eval"] = checksums(tr), checksums(ev)
    _write_coco_json(root / "coco", 6, seed=9)
    out["suite/coco-json"] = checksums(load_caption_dataset(_spec(
        source="coco-json", data_dir=str(root / "coco"), n_samples=4, seed=3,
        caption=_caption(annotations_file="captions.json", image_dir="val2014")), m))
    return out


# Recorded on main's code (c211f11; torch 2.14, torchvision 0.29, Pillow 13.0, datasets 5.2), see the module docstring.
RECORDED: dict[str, dict] = {
    'direct/digits-train-16': {'n': 100, 'ids': 'd2bab02a607e2be0', 'pixels': 'f86c807cbd7fbed9'},
    'recipe/digits-eval': {'n': 40, 'ids': 'b4eeac8c41af5779', 'pixels': '5a3ca1bf5ca65bc1'},
    'recipe/digits-train': {'n': 64, 'ids': '8bcb51a7cf909c01', 'pixels': '3c3d0ada6585b677'},
    'recipe/parquet-dir-eval': {'n': 8, 'ids': '5b507b5ffc242be8', 'pixels': '0e2b7f5fe799a14e'},
    'recipe/parquet-dir-train': {'n': 6, 'ids': 'fa32567bf39513f1', 'pixels': '81383b98190aeae6'},
    'recipe/shapes-vqa-eval': {'n': 6, 'ids': '708a89ed4141ec68', 'pixels': 'c65992d89a4911da'},
    'recipe/shapes-vqa-train': {'n': 10, 'ids': 'abdce5e20dc401d5', 'pixels': 'ad334cc67156223b'},
    'recipe/vqa-json-eval': {'n': 3, 'ids': '1b80f44a4fcc9795', 'pixels': '2a764e307ee12ebd'},
    'recipe/vqa-json-train': {'n': 4, 'ids': '4f24c62a820f3a06', 'pixels': '03b88eee6aaf9cbd'},
    'suite/coco-json': {'n': 4, 'ids': 'a8a95d10ea917db5', 'pixels': '328d44a00965043d'},
    'suite/digits-240': {'n': 240, 'ids': '75aebf06b0b2eb90', 'pixels': 'f1a19628d64f49d4'},
    'suite/digits-all-seed3': {'n': 360, 'ids': '8e3361f5a2fa25fb', 'pixels': 'c9459bb5497c1c44'},
    'suite/hub-local-folder': {'n': 4, 'ids': 'af064dacd4a59ee9', 'pixels': 'cc22fd2e5aaa2a10'},
    'suite/hub-vqa-save_to_disk': {'n': 5, 'ids': '2b983d9f1e8905d6', 'pixels': '9c365eb7a2122dcd'},
    'suite/imagefolder-data_dir-train': {'n': 4, 'ids': '7c74809bfe552a11', 'pixels': 'c40113e7c810d79a'},
    'suite/imagefolder-test': {'n': 5, 'ids': '8c00f31e998bbb64', 'pixels': '196f065c1252aebc'},
    'suite/parquet-file': {'n': 5, 'ids': '51ae450ec41a9e01', 'pixels': '7de3cdfa5e9bd3f5'},
    'suite/shapes-caption': {'n': 7, 'ids': '0e2843981ae2c843', 'pixels': 'c8f0e29aef2cae8c'},
    'suite/shapes-vqa': {'n': 12, 'ids': 'f2e81cc9076e042a', 'pixels': '6628a3769f480d84'},
    'suite/vqa-json': {'n': 5, 'ids': 'a4553e7a9b7b7bcf', 'pixels': '0e294ad7f0be3799'},
    'suite/webdataset': {'n': 6, 'ids': '54239e6a729ff693', 'pixels': '658164cf5e9e446b'},
}


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    datasets.config.HF_DATASETS_CACHE = str(root / "hf_cache")
    return compute_all(root / "data")


@pytest.mark.parametrize("case", sorted(RECORDED))
def test_same_items_as_main(computed, case):
    want, got = RECORDED[case], computed[case]
    assert (got["n"], got["ids"]) == (want["n"], want["ids"]), f"{case}: other items / order / subset than main"
    assert got["pixels"] == want["pixels"], f"{case}: same items as main but other pixels"


def test_every_case_is_recorded(computed):
    assert sorted(computed) == sorted(RECORDED)


if __name__ == "__main__":
    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        datasets.config.HF_DATASETS_CACHE = str(Path(tmp) / "hf_cache")
        table = compute_all(Path(tmp) / "data")
    print("RECORDED: dict[str, dict] = {")
    for k, v in sorted(table.items()):
        print(f"    {k!r}: {v!r},")
    print("}")
