"""VQA / captioning data: loaders (local official JSON + image folders, or `datasets`), the official VQA answer
normalisation, and the collator that masks prompt and image tokens out of the labels.

Every item is a dict `{"image": PIL.Image, "question": str, "answers": list[str], "question_id": ...,
"question_type": str}` (captions: `question` is the captioning prompt and `answers` the reference captions).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

IGNORE_INDEX = -100

# -- official VQA answer normalisation (VQA evaluation toolkit, vqaEval.py) ------------------------------------------
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
               "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = ("a", "an", "the")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: the toolkit's pattern, kept for identical results
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


def process_punctuation(text: str) -> str:
    """The toolkit's `processPunctuation`."""
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def process_digit_article(text: str) -> str:
    """The toolkit's `processDigitArticle`: lower-case, number words -> digits, drop articles, fix contractions."""
    words = [_MANUAL_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """Official VQA answer normalisation: whitespace, punctuation, digits / articles, contractions."""
    answer = str(answer).replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(answer))


# -- collation with label masking -------------------------------------------------------------------------------------
def build_supervised_batch(tokenizer, prompts: Sequence[str], answers: Sequence[str] | None = None, *,
                           eot_token_id: int | None = None, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Tokenise `prompts` (+ `answers`) into `input_ids`, `attention_mask` and, with answers, `labels`.

    Prompt and answer are tokenised separately and concatenated, so the boundary is exact: `labels` is -100 on
    every prompt token (chat template, image placeholders, question) and on padding, and equals `input_ids` on the
    answer tokens and the end-of-turn token `eot_token_id` appended after them.

    Args:
        tokenizer: the model's tokenizer (its own special tokens, e.g. LLaVA's BOS, are added to the prompt).
        prompts (`Sequence[str]`): full prompts with image placeholders already expanded.
        answers (`Sequence[str]`, *optional*): target strings, one per prompt.
        eot_token_id (`int`, *optional*): appended to each answer (and supervised); skipped when None.
        padding_side (`str`, *optional*, defaults to `"right"`): `"right"` for losses, `"left"` for generation.
    """
    if answers is not None and len(answers) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers.")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows, labels = [], []
    for i, prompt in enumerate(prompts):
        ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
        lab = [IGNORE_INDEX] * len(ids)
        if answers is not None:
            ans = list(tokenizer(answers[i], add_special_tokens=False)["input_ids"])
            if eot_token_id is not None:
                ans.append(int(eot_token_id))
            ids += ans
            lab += ans
        rows.append(ids)
        labels.append(lab)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    label_t = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (ids, lab) in enumerate(zip(rows, labels)):
        n = len(ids)
        sl = slice(0, n) if padding_side == "right" else slice(width - n, width)
        input_ids[i, sl] = torch.tensor(ids)
        attention[i, sl] = 1
        label_t[i, sl] = torch.tensor(lab)
    batch = {"input_ids": input_ids, "attention_mask": attention}
    if answers is not None:
        batch["labels"] = label_t
    return batch


def majority_answer(answers: Sequence[str]) -> str:
    """Most frequent reference answer after normalisation (ties: first seen); the training target."""
    norm = [normalize_answer(a) for a in answers]
    best = Counter(norm).most_common(1)[0][0]
    return answers[norm.index(best)]


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
