"""The data-source registry: resolution, one name per source, errors that name the fix, recipes and suites alike."""

from __future__ import annotations

import json
from types import SimpleNamespace

import datasets
import huggingface_hub.constants
import numpy as np
import pytest
from PIL import Image

from vlmrobust.data import default_image_transform
from vlmrobust.data.sources import (
    DATA_SOURCES,
    TASKS,
    DatasetUnavailable,
    DataSource,
    LoadRequest,
    load_source,
    load_train_eval,
    load_vqa_dataset,
    register_source,
    resolve_classnames,
    resolve_source,
)
from vlmrobust.script_utils import ScriptArguments, load_datasets
from vlmrobust.vlm_recipe_main import LVLMScriptArguments, load_vqa_datasets


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets_cache"))


class _LVLM:
    image_size = 16

    def __init__(self):
        self.preprocess = default_image_transform(self.image_size)

    def rank_answers(self, *a, **k):  # pragma: no cover - only its presence is checked
        raise NotImplementedError

    answer_loss = generate = rank_answers


def _vqa_spec(**kw):
    vqa = SimpleNamespace(questions_file=None, annotations_file=None, image_dir=None, image_pattern=None,
                          answers_field="answers", image_size=32)
    base = dict(name="d", source="shapes-vqa", split="test", n_samples=4, seed=0, data_dir=None, image_column=None,
                label_column=None, classnames=None, templates=None, download=None, vqa=vqa, caption=None)
    return SimpleNamespace(**{**base, **kw})


# -- resolution ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source, name", [
    ("digits", "digits"), ("parquet:data/test-*.parquet", "parquet"), ("parquet", "parquet"),
    ("imagefolder:~/pets", "imagefolder"), ("webdataset:clip-benchmark/wds_cars", "webdataset"),
    ("uoft-cs/cifar10", "hf"), ("imagenet-1k", "hf"), ("hf:HuggingFaceM4/VQAv2", "hf"), ("/data/saved", "hf"),
    ("shapes-vqa", "shapes-vqa"), ("shapes-caption", "shapes-caption"), ("vqa-json", "vqa-json"),
    ("vqa-json:q.json,a.json,images", "vqa-json"), ("coco-json", "coco-json"), ("coco-json:c.json,val2014", "coco-json"),
])
def test_each_source_string_resolves_to_one_registered_source(source, name):
    assert resolve_source(source).name == name
    assert resolve_source(source) is DATA_SOURCES.get(name)


def test_every_source_says_what_it_accepts_serves_and_expects():
    from vlmrobust.data import sources

    sources_doc = sources.__doc__
    assert set(DATA_SOURCES.names()) == {"digits", "parquet", "imagefolder", "webdataset", "hf", "shapes-vqa",
                                         "shapes-caption", "vqa-json", "coco-json"}
    for name in DATA_SOURCES:
        s = DATA_SOURCES.get(name)
        assert s.name == name and s.syntax and s.description and s.expects
        assert s.tasks and set(s.tasks) <= set(TASKS)
        assert any(form == name or form.startswith(f"{name}:") or form.startswith(f"{name} ")
                   for form in s.syntax) or name == "hf"
        assert f"`{s.syntax[0]}" in sources_doc, f"the table in vlmrobust/data/sources/__init__.py misses {name}"


def test_unknown_prefix_lists_the_registered_sources():
    with pytest.raises(ValueError) as info:
        resolve_source("folder:/tmp/x")
    message = str(info.value)
    for form in ("digits", "imagefolder:<dir>", "parquet:<file, glob or dir>", "shapes-vqa", "vqa-json:<questions"):
        assert form in message
    with pytest.raises(ValueError, match="did you mean 'parquet:'"):
        resolve_source("parqet:/tmp/x.parquet")
    with pytest.raises(ValueError, match="takes no location"):
        resolve_source("digits:/tmp")


def test_former_name_shapes_fails_naming_shapes_vqa():
    with pytest.raises(ValueError, match="'shapes' is now called 'shapes-vqa'"):
        resolve_source("shapes")
    with pytest.raises(ValueError, match="'shapes-vqa'"):
        load_vqa_datasets(LVLMScriptArguments(dataset_name="shapes"), _LVLM())


def test_recipes_refuse_a_bad_dataset_name_when_parsing():
    from vlmrobust.script_utils import RecipeParser

    with pytest.raises(ValueError, match="serves vqa, not classification"):
        RecipeParser((ScriptArguments,)).parse_args_and_config(["--dataset_name", "shapes-vqa"])
    with pytest.raises(ValueError, match="now called 'shapes-vqa'"):
        RecipeParser((LVLMScriptArguments,)).parse_args_and_config(["--dataset_name", "shapes"])


def test_a_source_refuses_a_task_it_does_not_serve_and_lists_those_that_do():
    with pytest.raises(ValueError) as info:
        resolve_source("digits", "vqa")
    message = str(info.value)
    assert "serves classification, not vqa" in message and "shapes-vqa" in message and "vqa-json:" in message
    assert "digits" not in message.split("vqa sources:")[1]
    with pytest.raises(ValueError, match="serves vqa, not classification"):
        load_datasets(ScriptArguments(dataset_name="shapes-vqa"), _LVLM())
    with pytest.raises(DatasetUnavailable, match="serves classification, not vqa"):
        load_vqa_dataset(_vqa_spec(source="digits"), _LVLM())


# -- adding a source ------------------------------------------------------------------------------------------------------
class _Ones(DataSource):
    """A new VQA source: `ones:<k>` gives n questions whose answer is k."""

    name = "ones"
    syntax = ("ones:<answer>",)
    tasks = ("vqa",)
    description = "test source"
    expects = "nothing"
    located = True

    def load(self, request: LoadRequest):
        img = Image.new("RGB", (8, 8), (255, 255, 255))
        return [{"image": img, "question": "which?", "answers": [request.location] * 3, "question_id": i + request.seed,
                 "question_type": request.split} for i in range(request.n_samples)]


def test_a_new_source_is_one_class_and_one_registration(monkeypatch, capsys):
    monkeypatch.setattr(DATA_SOURCES, "_items", dict(DATA_SOURCES._items))
    register_source(_Ones())
    with pytest.raises(ValueError, match="already registered"):
        register_source(_Ones())
    # the suites' loader and the LVLM recipe both reach it
    suite = load_vqa_dataset(_vqa_spec(source="ones:7", n_samples=3, seed=5), _LVLM())
    assert [q["question_id"] for q in suite] == [5, 6, 7] and suite[0]["answers"] == ["7"] * 3
    train, evald = load_vqa_datasets(LVLMScriptArguments(dataset_name="ones:2", train_samples=4, eval_samples=2),
                                     _LVLM())
    assert (len(train), len(evald)) == (4, 2)
    assert (train[0]["question_type"], evald[0]["question_type"]) == ("train", "validation")
    from vlmrobust.cli import main

    main(["info"])
    assert "ones:<answer>" in capsys.readouterr().out


def test_a_source_needs_a_name_and_known_tasks():
    class Bad(_Ones):
        tasks = ("segmentation",)

    with pytest.raises(ValueError, match="tasks from"):
        register_source(Bad())


# -- what a missing dataset says --------------------------------------------------------------------------------------------
def test_missing_vqa_and_coco_files_say_what_is_expected_and_where(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_source(f"vqa-json:{tmp_path / 'q.json'},{tmp_path / 'a.json'},{tmp_path}", "vqa")
    assert str(tmp_path / "q.json") in str(info.value) and "visualqa.org" in str(info.value)
    (tmp_path / "captions.json").write_text("{}")
    with pytest.raises(FileNotFoundError) as info:
        load_source("coco-json", "caption", data_dir=str(tmp_path), annotations_file="captions.json",
                    image_dir="val2014")
    assert "val2014" in str(info.value) and "cocodataset.org" in str(info.value)
    with pytest.raises(ValueError, match=r"vqa-json:<questions.json>,<annotations.json>,<image dir>"):
        load_source("vqa-json:q.json,a.json", "vqa")
    with pytest.raises(ValueError, match="questions_file, annotations_file, image_dir"):
        load_source("vqa-json", "vqa")
    with pytest.raises(ValueError, match="n_samples"):
        load_source("shapes-vqa", "vqa")
    spec = _vqa_spec(source="vqa-json", download="see https://visualqa.org/download.html",
                     vqa=SimpleNamespace(questions_file="q.json", annotations_file="a.json", image_dir="img",
                                         image_pattern=None, answers_field="answers", image_size=64))
    with pytest.raises(DatasetUnavailable, match=r"dataset 'd' \(VQA source 'vqa-json'.*q.json.*To get it: see"):
        load_vqa_dataset(spec, _LVLM())


def test_a_mistyped_source_read_as_a_hub_id_suggests_the_registered_name(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError) as info:
        load_source("shapes-vq", "vqa", n_samples=2)
    message = str(info.value)
    assert "Did you mean the registered source 'shapes-vqa'?" in message and "vqa-json:<questions" in message
    assert "huggingface-cli download --repo-type dataset shapes-vq" in message


def test_reference_files_come_from_the_sources_folder(tmp_path):
    (tmp_path / "pets" / "cat").mkdir(parents=True)
    (tmp_path / "pets" / "classnames.txt").write_text("cat\n\nkitten cat\n")
    spec = SimpleNamespace(name="p", source="imagefolder", data_dir=str(tmp_path / "pets"),
                           classnames={"file": "classnames.txt"})
    assert resolve_classnames(spec) == ["cat", "kitten cat"]
    with pytest.raises(FileNotFoundError, match="ships no reference files"):
        resolve_classnames(SimpleNamespace(name="d", source="digits", data_dir=None, classnames={"file": "x.txt"}))


# -- recipes train on any registered source of their task -------------------------------------------------------------------
def _hub_vqa(folder, sizes):
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in sizes.items():
        splits[split] = datasets.Dataset.from_dict(
            {"image": [Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)) for _ in range(n)],
             "question": [f"{split} {i}?" for i in range(n)], "question_id": list(range(n)),
             "answers": [[{"answer": "yes"}] * 3 for _ in range(n)]},
            features=datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                        "question_id": datasets.Value("int64"),
                                        "answers": [{"answer": datasets.Value("string")}]}))
    datasets.DatasetDict(splits).save_to_disk(str(folder))


def test_lvlm_recipe_trains_on_a_hub_vqa_dataset(tmp_path):
    _hub_vqa(tmp_path / "vqa", {"train": 10, "validation": 6})
    script = LVLMScriptArguments(dataset_name=f"hf:{tmp_path / 'vqa'}", train_samples=4, eval_samples=3)
    train, evald = load_vqa_datasets(script, _LVLM(), seed=1)
    assert (len(train), len(evald)) == (4, 3)
    assert all(train[i]["question"].startswith("train") for i in range(4))
    assert all(evald[i]["question"].startswith("validation") for i in range(3))
    again, _ = load_vqa_datasets(script, _LVLM(), seed=1)
    other, _ = load_vqa_datasets(script, _LVLM(), seed=2)
    ids = [[d[i]["question_id"] for i in range(4)] for d in (train, again, other)]
    assert ids[0] == ids[1] == sorted(ids[0]) and ids[0] != ids[2]  # a seeded subset, in dataset order


def test_shapes_recipe_keeps_train_and_eval_scenes_apart():
    from vlmrobust.data.shapes_vqa import ShapesVQA

    train, evald = load_train_eval("shapes-vqa", "vqa", n_train=20, n_eval=10, seed=3)
    assert (len(train), len(evald)) == (20, 10)
    for got, want in ((train, ShapesVQA(20, seed=3)), (evald, ShapesVQA(10, seed=10_003))):
        assert [it["image"].tobytes() for it in got.items] == [it["image"].tobytes() for it in want.items]


def test_vqa_json_recipe_split_is_disjoint_and_in_file_order(tmp_path):
    (tmp_path / "img").mkdir()
    qs = [{"question_id": 10 + i, "image_id": i, "question": f"q{i}", "image": f"{i}.png"} for i in range(6)]
    (tmp_path / "q.json").write_text(json.dumps({"questions": qs}))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": [
        {"question_id": 10 + i, "answers": [{"answer": "a"}]} for i in range(6)]}))
    train, evald = load_train_eval(f"vqa-json:{tmp_path / 'q.json'},{tmp_path / 'a.json'},{tmp_path / 'img'}",
                                   "vqa", n_train=10, n_eval=2)
    assert list(evald.indices) == [0, 1] and list(train.indices) == [2, 3, 4, 5]
