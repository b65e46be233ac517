"""Tests of vlmrobust.data: templates, builtin digits, and local / Hub classification loaders (all offline)."""

from __future__ import annotations

import datasets
import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image

from vlmrobust.data import (
    DIGIT_CLASSNAMES,
    DIGITS_TEMPLATES,
    OPENAI_IMAGENET_TEMPLATES,
    SIMPLE_TEMPLATES,
    ClassificationDataset,
    collate_classification,
    digits_captions,
    get_templates,
    load_classification_dataset,
    load_digits_splits,
)

# One saturated colour per class, so a label can be read back from the pixels.
COLOURS = {"cat": (255, 0, 0), "dog_house": (0, 0, 255)}


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path, monkeypatch):
    # Keep Arrow caches of the local loaders out of the user's ~/.cache.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets_cache"))


def _write_pngs(directory, per_class=3):
    for name, colour in COLOURS.items():
        (directory / name).mkdir(parents=True)
        for i in range(per_class):
            # Non-square and larger than the target, so resize + center crop both act.
            Image.new("RGB", (20 + i, 12), colour).save(directory / name / f"{i}.png")


def _assert_colour_matches_label(ds):
    for item in ds:
        x = item["pixel_values"]
        assert x.shape == (3, 16, 16)
        assert x.dtype == torch.float32
        assert 0.0 <= x.min() and x.max() <= 1.0
        red_dominant = bool(x[0].mean() > x[2].mean())
        assert red_dominant == (ds.classnames[item["labels"]] == "cat")


# --- templates ---------------------------------------------------------------------------------------------------


def test_templates():
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80
    assert len(set(OPENAI_IMAGENET_TEMPLATES)) == 80
    assert SIMPLE_TEMPLATES == ["This is a photo of a {}"]
    for name in ("openai_imagenet", "simple", "digits"):
        templates = get_templates(name)
        assert templates and all(t.count("{}") == 1 for t in templates)
    assert get_templates("digits") == DIGITS_TEMPLATES
    # A copy: callers may edit it without changing the library's constants.
    get_templates("simple").append("x {}")
    assert SIMPLE_TEMPLATES == ["This is a photo of a {}"]
    with pytest.raises(KeyError, match="openai_imagenet"):
        get_templates("nope")


# --- digits ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [16, 32])
def test_digits_splits(size):
    train, test = load_digits_splits(image_size=size)
    assert len(train) + len(test) == 1797
    assert len(test) == 360
    for ds in (train, test):
        assert ds.images.shape == (len(ds), 3, size, size)
        assert ds.images.dtype == torch.float32
        assert ds.images.min() >= 0.0 and ds.images.max() <= 1.0
        assert ds.images.max() > 0.9  # strokes reach full intensity, i.e. values were scaled by 1/16, not 1/255
        assert ds.labels.dtype == torch.long
        assert set(ds.labels.tolist()) == set(range(10))
        assert ds.classnames == DIGIT_CLASSNAMES
        assert ds.templates == DIGITS_TEMPLATES
        item = ds[5]
        assert item["pixel_values"].shape == (3, size, size)
        assert isinstance(item["labels"], int)
        assert torch.equal(item["pixel_values"][0], item["pixel_values"][2])  # grey copied to RGB
    # Stratified: each class keeps about the same share in test as overall.
    share = torch.bincount(test.labels, minlength=10).float() / torch.bincount(
        torch.cat([train.labels, test.labels]), minlength=10
    )
    assert torch.allclose(share, torch.full((10,), 0.2), atol=0.02)


def test_digits_split_depends_only_on_seed():
    train_a, test_a = load_digits_splits(image_size=8, seed=0)
    train_b, test_b = load_digits_splits(image_size=8, seed=0)
    _, test_c = load_digits_splits(image_size=8, seed=1)
    assert torch.equal(test_a.images, test_b.images) and torch.equal(test_a.labels, test_b.labels)
    assert torch.equal(train_a.images, train_b.images)
    assert not torch.equal(test_a.images, test_c.images)


def test_digits_captions():
    labels = torch.arange(10).repeat(5)
    captions = digits_captions(labels, DIGITS_TEMPLATES, torch.Generator().manual_seed(0))
    assert len(captions) == 50
    for caption, label in zip(captions, labels.tolist()):
        assert DIGIT_CLASSNAMES[label] in caption
        assert any(caption == t.format(DIGIT_CLASSNAMES[label]) for t in DIGITS_TEMPLATES)
    assert len({c.replace(DIGIT_CLASSNAMES[y], "{}") for c, y in zip(captions, labels.tolist())}) > 1
    again = digits_captions(labels.tolist(), DIGITS_TEMPLATES, torch.Generator().manual_seed(0))
    assert again == captions


def test_digits_source_matches_builtin_split():
    _, test = load_digits_splits(image_size=16)
    ds = load_classification_dataset("digits", image_size=16)
    assert isinstance(ds, ClassificationDataset)
    assert ds.name == "digits" and ds.classnames == DIGIT_CLASSNAMES and ds.templates == DIGITS_TEMPLATES
    batch = collate_classification([ds[i] for i in range(len(ds))])
    assert torch.equal(batch["pixel_values"], test.images)
    assert torch.equal(batch["labels"], test.labels)


# --- local sources through the real `datasets` loaders -----------------------------------------------------------


def test_imagefolder_without_splits(tmp_path):
    _write_pngs(tmp_path / "pets")
    ds = load_classification_dataset(f"imagefolder:{tmp_path / 'pets'}", image_size=16, templates="simple")
    assert ds.classnames == ["cat", "dog house"]
    assert ds.templates == SIMPLE_TEMPLATES
    assert ds.name == f"imagefolder:{tmp_path / 'pets'}"
    assert len(ds) == 6
    assert sorted(ds.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    _assert_colour_matches_label(ds)


def test_imagefolder_with_split_folders(tmp_path):
    _write_pngs(tmp_path / "pets" / "train", per_class=3)
    _write_pngs(tmp_path / "pets" / "test", per_class=1)
    source = f"imagefolder:{tmp_path / 'pets'}"
    test = load_classification_dataset(source, "test", image_size=16)
    assert len(test) == 2
    assert test.templates == OPENAI_IMAGENET_TEMPLATES
    _assert_colour_matches_label(test)
    assert len(load_classification_dataset(source, "train", image_size=16)) == 6
    with pytest.raises(ValueError, match="validation"):
        load_classification_dataset(source, "validation", image_size=16)


def test_imagefolder_with_only_a_train_folder_refuses_test(tmp_path):
    # A lone train/ folder must not be evaluated as if it were the test split.
    _write_pngs(tmp_path / "pets" / "train", per_class=1)
    with pytest.raises(ValueError, match=r"\['train'\]"):
        load_classification_dataset(f"imagefolder:{tmp_path / 'pets'}", "test", image_size=16)


def _pet_rows(n=4):
    names = list(COLOURS)
    labels = [i % 2 for i in range(n)]
    images = [Image.new("RGB", (16, 24), COLOURS[names[y]]) for y in labels]
    return images, labels, names


def test_parquet(tmp_path):
    images, labels, names = _pet_rows()
    features = datasets.Features({"picture": datasets.Image(), "kind": datasets.ClassLabel(names=names)})
    datasets.Dataset.from_dict({"picture": images, "kind": labels}, features=features).to_parquet(
        tmp_path / "pets.parquet"
    )
    seen = []

    def transform(image):
        seen.append(image.size)
        return torch.from_numpy(np.asarray(image.resize((16, 16)), dtype=np.float32) / 255).permute(2, 0, 1)

    ds = load_classification_dataset(f"parquet:{tmp_path / 'pets.parquet'}", "test", transform=transform)
    assert ds.classnames == ["cat", "dog house"]
    assert ds.labels.tolist() == labels
    _assert_colour_matches_label(ds)
    assert seen and seen[0] == (16, 24)  # the caller's transform got the original image
    batch = collate_classification([ds[0], ds[1]])
    assert batch["pixel_values"].shape == (2, 3, 16, 16)
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == labels[:2]


def test_parquet_string_and_integer_labels(tmp_path):
    images, labels, names = _pet_rows()
    datasets.Dataset.from_dict(
        {"image": images, "label": [names[y] for y in labels]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")}),
    ).to_parquet(tmp_path / "strings.parquet")
    ds = load_classification_dataset(f"parquet:{tmp_path / 'strings.parquet'}", image_size=16)
    assert ds.classnames == ["cat", "dog house"]
    _assert_colour_matches_label(ds)

    datasets.Dataset.from_dict(
        {"image": images, "label": labels},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    ).to_parquet(tmp_path / "ints.parquet")
    with pytest.raises(ValueError, match="classnames="):
        load_classification_dataset(f"parquet:{tmp_path / 'ints.parquet'}", image_size=16)
    ds = load_classification_dataset(f"parquet:{tmp_path / 'ints.parquet'}", image_size=16, classnames=names)
    assert ds.classnames == names


def test_max_samples_is_a_seeded_subset():
    full = load_classification_dataset("digits", image_size=8)
    a = load_classification_dataset("digits", image_size=8, max_samples=40, seed=3)
    b = load_classification_dataset("digits", image_size=8, max_samples=40, seed=3)
    c = load_classification_dataset("digits", image_size=8, max_samples=40, seed=4)
    assert len(a) == 40 and len(full) == 360

    def pixels(ds):
        return collate_classification(list(ds))["pixel_values"]

    assert torch.equal(pixels(a), pixels(b)) and torch.equal(a.labels, b.labels)
    assert not torch.equal(pixels(a), pixels(c))
    # Rows come from the full split, in its order.
    full_pixels = pixels(full).flatten(1)
    rows = [int((full_pixels == x).all(dim=1).nonzero()[0]) for x in pixels(a).flatten(1)]
    assert rows == sorted(rows)
    assert len(load_classification_dataset("digits", image_size=8, max_samples=10_000)) == 360


# --- errors that name the fix ------------------------------------------------------------------------------------


def test_missing_local_paths(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(FileNotFoundError) as info:
        load_classification_dataset(f"imagefolder:{missing}")
    assert str(missing) in str(info.value) and "<dir>/<class>/" in str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        load_classification_dataset(f"parquet:{tmp_path / 'nothing-*.parquet'}")
    assert "nothing-*.parquet" in str(info.value) and ".parquet file" in str(info.value)


def test_missing_columns_list_the_columns(tmp_path):
    datasets.Dataset.from_dict({"pixels": [[0.0, 1.0]] * 2, "label": [0, 1]}).to_parquet(tmp_path / "noimg.parquet")
    with pytest.raises(ValueError) as info:
        load_classification_dataset(f"parquet:{tmp_path / 'noimg.parquet'}")
    message = str(info.value)
    assert "pixels" in message and "label" in message and "image_column=" in message

    images, _, _ = _pet_rows(2)
    datasets.Dataset.from_dict(
        {"image": images, "caption": ["a", "b"]},
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}),
    ).to_parquet(tmp_path / "nolabel.parquet")
    with pytest.raises(ValueError) as info:
        load_classification_dataset(f"parquet:{tmp_path / 'nolabel.parquet'}")
    message = str(info.value)
    assert "caption" in message and "image" in message and "label_column=" in message
    with pytest.raises(ValueError) as info:
        load_classification_dataset(f"parquet:{tmp_path / 'nolabel.parquet'}", image_column="img")
    message = str(info.value)
    assert "'img'" in message and "caption" in message and "image_column=" in message


def test_hub_id_offline_names_the_id_and_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # Both libraries read the variables at import time, so their flags are set too.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    dataset_id = "vlmrobust-test/does-not-exist"
    with pytest.raises(RuntimeError) as info:
        load_classification_dataset(dataset_id)
    message = str(info.value)
    assert dataset_id in message
    assert "huggingface-cli download --repo-type dataset" in message and "imagefolder:" in message
    assert info.value.__cause__ is not None


def test_unknown_source_prefix():
    with pytest.raises(ValueError, match="imagefolder:<dir>"):
        load_classification_dataset("folder:/tmp/x")
