"""VQA / captioning data: loaders (local official JSON + image folders, or `datasets`) and the collator that masks
prompt and image tokens out of the labels (the answer normalisation is in `vlmrobust.metrics`).

Every item is a dict `{"image": PIL.Image, "question": str, "answers": list[str], "question_id": ...,
"question_type": str}` (captions: `question` is the captioning prompt and `answers` the reference captions).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..metrics import majority_answer


class VQACollator:
    """Items -> `{"pixel_values", "input_ids", "attention_mask", "labels", ...}` for an LVLM (prompt/image masked).

    Args:
        model (`LVLM`): the vlmrobust LLaVA / Qwen-VL (chat template, image token count, tokenizer).
        with_answers (`bool`, *optional*, defaults to `True`): supervise the majority reference answer; `False`
            gives left-padded generation prompts.
        transform (`Callable`, *optional*): PIL -> [0, 1] tensor; defaults to `model.preprocess`. Items that already
            hold `pixel_values` are used as they are.
    """

    def __init__(self, model, with_answers: bool = True, transform: Callable | None = None):
        self.model = model
        self.with_answers = with_answers
        self.transform = transform or model.preprocess

    def pixels(self, features: list[dict]) -> torch.Tensor:
        imgs = [f["pixel_values"] if "pixel_values" in f else self.transform(f["image"]) for f in features]
        shapes = {tuple(i.shape) for i in imgs}
        if len(shapes) > 1:
            raise ValueError(f"Images of different sizes {sorted(shapes)} in one batch: Qwen-VL keeps each image's "
                             "aspect ratio, so batch images of one size (or use batch size 1).")
        return torch.stack([torch.as_tensor(i) for i in imgs]).float()

    def __call__(self, features: list[dict]) -> dict:
        pixels = self.pixels(features)
        questions = [f["question"] for f in features]
        answers = [f.get("answer") or majority_answer(f["answers"]) for f in features] if self.with_answers else None
        batch = self.model.build_batch(questions, answers, image_hw=tuple(pixels.shape[-2:]))
        batch["pixel_values"] = pixels
        return batch


# -- datasets ---------------------------------------------------------------------------------------------------------
class VQAJsonDataset(Dataset):
    """VQA from the official JSON files and an image folder (VQAv2, TextVQA-in-VQA-format, VizWiz, OK-VQA, ...).

    Args:
        questions_file (`str`): `..._questions.json` with `{"questions": [{"question_id", "image_id", "question"}]}`.
        annotations_file (`str`, *optional*): `..._annotations.json` with `{"annotations": [{"question_id",
            "answers": [{"answer": ...}], "question_type", "answer_type"}]}`; without it `answers` is empty.
        image_dir (`str`): folder of the images.
        image_pattern (`str`, *optional*, defaults to COCO's `"COCO_{split}_{image_id:012d}.jpg"`): file name of an
            image; `{split}` comes from the questions file's `data_subtype` (e.g. `val2014`). Also accepted:
            an `image` / `image_name` field in the question entry.
        max_samples (`int`, *optional*): keep the first n questions.
    """

    def __init__(self, questions_file: str | os.PathLike, annotations_file: str | os.PathLike | None = None,
                 image_dir: str | os.PathLike = ".", image_pattern: str = "COCO_{split}_{image_id:012d}.jpg",
                 max_samples: int | None = None):
        qdata = json.loads(Path(questions_file).read_text())
        self.split = qdata.get("data_subtype", "")
        self.questions = qdata["questions"][:max_samples] if max_samples else qdata["questions"]
        self.annotations = {}
        if annotations_file is not None:
            for ann in json.loads(Path(annotations_file).read_text())["annotations"]:
                self.annotations[ann["question_id"]] = ann
        self.image_dir = Path(image_dir)
        self.image_pattern = image_pattern

    def __len__(self) -> int:
        return len(self.questions)

    def image_path(self, q: dict) -> Path:
        name = q.get("image") or q.get("image_name") or self.image_pattern.format(split=self.split,
                                                                                   image_id=q["image_id"])
        return self.image_dir / name

    def __getitem__(self, i: int) -> dict:
        from PIL import Image

        q = self.questions[i]
        ann = self.annotations.get(q["question_id"], {})
        path = self.image_path(q)
        if not path.is_file():
            raise FileNotFoundError(f"Image {path} of question {q['question_id']} not found: check image_dir and "
                                    "image_pattern (e.g. 'COCO_val2014_{image_id:012d}.jpg').")
        return {"image": Image.open(path).convert("RGB"), "question": q["question"],
                "answers": [a["answer"] for a in ann.get("answers", [])], "question_id": q["question_id"],
                "question_type": ann.get("answer_type", ann.get("question_type", ""))}


class CaptionJsonDataset(Dataset):
    """COCO-style captions (`{"images": [...], "annotations": [{"image_id", "caption"}]}`) + an image folder.

    Args:
        annotations_file (`str`): `captions_val2014.json` or the Karpathy-split equivalent in COCO format.
        image_dir (`str`): folder of the images (`file_name` of each image entry).
        prompt (`str`, *optional*): the captioning instruction used as the question.
        max_samples (`int`, *optional*): keep the first n images.
    """

    def __init__(self, annotations_file: str | os.PathLike, image_dir: str | os.PathLike,
                 prompt: str = "Provide a short caption for this image.", max_samples: int | None = None):
        data = json.loads(Path(annotations_file).read_text())
        caps: dict = {}
        for ann in data["annotations"]:
            caps.setdefault(ann["image_id"], []).append(ann["caption"])
        self.images = [im for im in data["images"] if im["id"] in caps][:max_samples]
        self.captions = caps
        self.image_dir = Path(image_dir)
        self.prompt = prompt

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        from PIL import Image

        im = self.images[i]
        return {"image": Image.open(self.image_dir / im["file_name"]).convert("RGB"), "question": self.prompt,
                "answers": self.captions[im["id"]], "question_id": im["id"], "question_type": "caption"}


class HFVQADataset(Dataset):
    """A `datasets` VQA split mapped to vlmrobust items (`image`, `question`, `answers`).

    Args:
        dataset: a `datasets.Dataset` (e.g. `load_dataset("HuggingFaceM4/VQAv2", split="validation")` read from a
            local cache or folder).
        answers_field (`str`, *optional*, defaults to `"answers"`): a list of strings or of `{"answer": str}`.
    """

    def __init__(self, dataset, answers_field: str = "answers", max_samples: int | None = None):
        self.ds = dataset.select(range(min(max_samples, len(dataset)))) if max_samples else dataset
        self.answers_field = answers_field

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        row = self.ds[i]
        answers = row.get(self.answers_field) or []
        answers = [a["answer"] if isinstance(a, dict) else str(a) for a in answers]
        return {"image": row["image"].convert("RGB"), "question": row["question"], "answers": answers,
                "question_id": row.get("question_id", i),
                "question_type": row.get("answer_type", row.get("question_type", ""))}


class HFCaptionDataset(Dataset):
    """A `datasets` captioning split mapped to vlmrobust items (`image`, `question` = the prompt, `answers` =
    the reference captions).

    Args:
        dataset: a `datasets.Dataset` (e.g. `load_dataset("yerevann/coco-karpathy", split="test")`, or
            `load_dataset("parquet", data_files=...)` for a local copy).
        captions_field (`str`, *optional*, defaults to `"captions"`): a list of strings, a list of
            `{"caption"/"raw": str}`, or a single string.
        image_field (`str`, *optional*, defaults to `"image"`): a `datasets.Image` column.
        prompt (`str`, *optional*): the captioning instruction used as the question.
        max_samples (`int`, *optional*): keep the first n rows.
    """

    def __init__(self, dataset, captions_field: str = "captions", image_field: str = "image",
                 prompt: str = "Provide a short caption for this image.", max_samples: int | None = None):
        missing = [c for c in (captions_field, image_field) if c not in dataset.column_names]
        if missing:
            raise ValueError(f"Caption dataset has no column(s) {missing}; columns are {dataset.column_names}. "
                             "Pass captions_field= / image_field= to name them.")
        self.ds = dataset.select(range(min(max_samples, len(dataset)))) if max_samples else dataset
        self.captions_field, self.image_field, self.prompt = captions_field, image_field, prompt

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        row = self.ds[i]
        caps = row[self.captions_field]
        caps = [caps] if isinstance(caps, str) else caps
        caps = [c.get("caption", c.get("raw", "")) if isinstance(c, dict) else str(c) for c in caps]
        return {"image": row[self.image_field].convert("RGB"), "question": self.prompt, "answers": caps,
                "question_id": row.get("id", row.get("image_id", i)), "question_type": "caption"}
