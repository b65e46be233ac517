"""FRAMES-VQA's datasets (seed 004, CVPR 2025) read from their official files, and where each one is expected.

`FRAMES_DATASETS` describes each dataset: its level (ID / near / far OOD) and shift, its file format, the files
expected under the FRAMES root (`data_dir`, else `$VLMROBUST_FRAMES_ROOT`, else `~/data/frames-vqa`), where to get
them, and its Hub copy where one exists. The formats:

* `vqa`: VQAv2's `{"questions": [...]}` + `{"annotations": [...]}` (VQAv2, IV-VQA, CV-VQA, VQA-Rephrasings, AdVQA,
  OK-VQA) — read by [`VQAJsonDataset`];
* `vqa-cp`: VQA-CP v2's bare lists of questions and annotations, each question naming its `coco_split`;
* `vqa-ce`: VQAv2 val restricted to the question ids of VQA-CE's `counterexamples.json` (a list of ids);
* `textvqa`: `{"data": [{"question_id", "question", "image_id", "answers": [10 strings]}]}`;
* `vizwiz`: a list of `{"image", "question", "answers": [{"answer", "answer_confidence"}], "answer_type"}`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch.utils.data import Dataset

from .vqa import VQAJsonDataset

_COCO = "https://cocodataset.org/#download"
#: name -> level, shift, format, files (questions, annotations / ids, image folder, image pattern), url, Hub copy
FRAMES_DATASETS: dict[str, dict] = {
    "vqav2": dict(level="id", shift="none", format="vqa",
                  questions="vqav2/v2_OpenEnded_mscoco_val2014_questions.json",
                  annotations="vqav2/v2_mscoco_val2014_annotations.json", images="coco/val2014",
                  pattern="COCO_val2014_{image_id:012d}.jpg", url="https://visualqa.org/download.html",
                  hub="HuggingFaceM4/VQAv2"),
    "iv-vqa": dict(level="near", shift="vision", format="vqa", questions="iv-vqa/questions.json",
                   annotations="iv-vqa/annotations.json", images="iv-vqa/images", pattern=None,
                   url="https://github.com/AgarwalVedika/CausalVQA (IV-VQA: object-removed COCO images, VQA format)"),
    "cv-vqa": dict(level="near", shift="vision", format="vqa", questions="cv-vqa/questions.json",
                   annotations="cv-vqa/annotations.json", images="cv-vqa/images", pattern=None,
                   url="https://github.com/AgarwalVedika/CausalVQA (CV-VQA: counting-edited COCO images, VQA format)"),
    "vqa-rephrasings": dict(level="near", shift="question", format="vqa",
                            questions="vqa-rephrasings/v2_OpenEnded_mscoco_valrep2014_humans_og_questions.json",
                            annotations="vqa-rephrasings/v2_mscoco_valrep2014_humans_og_annotations.json",
                            images="coco/val2014", pattern="COCO_val2014_{image_id:012d}.jpg",
                            url="https://facebookresearch.github.io/VQA-Rephrasings/ (+ COCO val2014 images, " + _COCO
                                + ")"),
    "vqa-cp-v2": dict(level="near", shift="answer", format="vqa-cp",
                      questions="vqa-cp-v2/vqacp_v2_test_questions.json",
                      annotations="vqa-cp-v2/vqacp_v2_test_annotations.json", images="coco",
                      pattern="{coco_split}/COCO_{coco_split}_{image_id:012d}.jpg",
                      url="https://www.cc.gatech.edu/grads/a/aagrawal307/vqa-cp/ (+ COCO train2014 and val2014 "
                          "images, " + _COCO + ")"),
    "vqa-ce": dict(level="near", shift="multi-modal", format="vqa-ce", questions="vqav2/"
                   "v2_OpenEnded_mscoco_val2014_questions.json", annotations="vqav2/v2_mscoco_val2014_annotations.json",
                   ids="vqa-ce/counterexamples.json", images="coco/val2014",
                   pattern="COCO_val2014_{image_id:012d}.jpg",
                   url="https://github.com/cdancette/detect-shortcuts (VQA-CE counterexamples.json; VQAv2 val files "
                       "and images, https://visualqa.org/download.html)"),
    "advqa": dict(level="near", shift="adversarial", format="vqa",
                  questions="advqa/v1_OpenEnded_mscoco_val2017_advqa_questions.json",
                  annotations="advqa/v1_mscoco_val2017_advqa_annotations.json", images="coco/val2014",
                  pattern="COCO_val2014_{image_id:012d}.jpg",
                  url="https://adversarialvqa.org (dl.fbaipublicfiles.com/advqa/; images: COCO val2014, " + _COCO + ")",
                  hub="HuggingFaceM4/AdVQA"),
    "textvqa": dict(level="far", shift="text", format="textvqa", questions="textvqa/TextVQA_0.5.1_val.json",
                    images="textvqa/train_images", pattern="{image_id}.jpg",
                    url="https://textvqa.org/dataset (val JSON + train_val_images.zip)", hub="facebook/textvqa"),
    "vizwiz": dict(level="far", shift="vision + question", format="vizwiz", questions="vizwiz/val.json",
                   images="vizwiz/val", pattern=None, url="https://vizwiz.org/tasks-and-datasets/vqa/ (val.json, "
                                                           "val.zip)", hub="lmms-lab/VizWiz-VQA"),
    "okvqa": dict(level="far", shift="knowledge", format="vqa",
                  questions="okvqa/OpenEnded_mscoco_val2014_questions.json",
                  annotations="okvqa/mscoco_val2014_annotations.json", images="coco/val2014",
                  pattern="COCO_val2014_{image_id:012d}.jpg", url="https://okvqa.allenai.org/download.html (+ COCO "
                                                                     "val2014 images)", hub="lmms-lab/OK-VQA"),
}


def frames_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The FRAMES-VQA root: `data_dir`, else `$VLMROBUST_FRAMES_ROOT`, else `~/data/frames-vqa`."""
    return Path(os.path.expanduser(str(data_dir or os.environ.get("VLMROBUST_FRAMES_ROOT") or "~/data/frames-vqa")))


def expected_files(name: str, root: Path, files: dict | None = None) -> list[str]:
    """The paths a dataset needs under `root` (`files` overrides the defaults of `FRAMES_DATASETS`)."""
    d = {**FRAMES_DATASETS[name], **(files or {})}
    out = [str(root / d[k]) for k in ("questions", "annotations", "ids") if d.get(k)]
    return out + [str(root / d["images"]) + "/" + (d["pattern"] or "<image file named in the questions>")]


def _image(item: dict, image_dir: Path) -> dict:
    from PIL import Image

    path = image_dir / item.pop("_file")
    if not path.is_file():
        raise FileNotFoundError(f"Image {path} of question {item['question_id']} not found.")
    return {**item, "image": Image.open(path).convert("RGB")}


class _ListVQA(Dataset):
    """Items with their image file (`_file`, relative to `image_dir`), the image read on access."""

    def __init__(self, items: list[dict], image_dir: str | os.PathLike):
        self.items, self.image_dir = items, Path(image_dir)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return _image(dict(self.items[i]), self.image_dir)


def load_frames_files(name: str, root: Path, files: dict | None = None) -> Dataset:
    """One FRAMES-VQA dataset from its official files under `root` (checked to exist first).

    Raises:
        `FileNotFoundError`: naming every expected file that is missing and where to get the dataset.
    """
    d = {**FRAMES_DATASETS[name], **(files or {})}
    paths = {k: root / d[k] for k in ("questions", "annotations", "ids", "images") if d.get(k)}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"FRAMES-VQA dataset {name!r}: missing {', '.join(missing)}; it expects "
                                f"{', '.join(expected_files(name, root, files))} — get it from {d['url']}")
    fmt, images = d["format"], paths["images"]
    if fmt in ("vqa", "vqa-ce"):
        ds = VQAJsonDataset(paths["questions"], paths["annotations"], image_dir=images,
                            **({"image_pattern": d["pattern"]} if d["pattern"] else {}))
        if fmt == "vqa-ce":
            keep = set(json.loads(paths["ids"].read_text()))
            ds.questions = [q for q in ds.questions if q["question_id"] in keep]
        return ds
    if fmt == "vqa-cp":
        anns = {a["question_id"]: a for a in json.loads(paths["annotations"].read_text())}
        items = []
        for q in json.loads(paths["questions"].read_text()):
            a = anns.get(q["question_id"], {})
            items.append({"question": q["question"], "question_id": q["question_id"],
                          "answers": [x["answer"] for x in a.get("answers", [])],
                          "question_type": a.get("answer_type", ""),
                          "_file": d["pattern"].format(coco_split=q["coco_split"], image_id=q["image_id"])})
        return _ListVQA(items, images)
    if fmt == "textvqa":
        items = [{"question": q["question"], "question_id": q["question_id"], "answers": list(q.get("answers", [])),
                  "question_type": "text", "_file": d["pattern"].format(image_id=q["image_id"])}
                 for q in json.loads(paths["questions"].read_text())["data"]]
        return _ListVQA(items, images)
    if fmt == "vizwiz":
        items = [{"question": q["question"], "question_id": i, "answers": [a["answer"] for a in q.get("answers", [])],
                  "question_type": q.get("answer_type", ""), "_file": q["image"]}
                 for i, q in enumerate(json.loads(paths["questions"].read_text()))]
        return _ListVQA(items, images)
    raise ValueError(f"unknown FRAMES-VQA format {fmt!r}")


__all__ = ["FRAMES_DATASETS", "expected_files", "frames_root", "load_frames_files"]
