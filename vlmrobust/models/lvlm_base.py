"""What LLaVA and Qwen-VL share: [0, 1] pixels in, teacher-forced answer losses, generation and answer ranking.

An `LVLM` wraps a transformers image-text-to-text model (`.model`) and its processor. Images enter as [0, 1] pixels
at the resolution `preprocess` produced (resizing / cropping happens *before* any attack); the backend's
`pixel_inputs` turns them into the model's `pixel_values` with plain, differentiable torch (mean/std normalisation,
and Qwen's patchification), so attacks optimise real pixels.

Text is built from the model's own chat template. A supervised batch (`build_batch`) concatenates
`tokenize(prompt)` and `tokenize(answer) + [end-of-turn]`; the labels are -100 on every prompt token (system text,
the image placeholder tokens, the question, the assistant header) and on padding, so only the answer tokens and the
end-of-turn token (`</s>` for LLaVA-1.5, `<|im_end|>` for Qwen) are supervised — the end-of-turn token is kept so a
fine-tuned model learns to stop.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from .base import VisionLanguageModel, check_pixels

IGNORE_INDEX = -100


class LVLM(VisionLanguageModel):
    """Base of the `llava`, `qwen_vl` and `paligemma` backends (large vision-language models that generate text).

    Subclasses set `model`, `processor`, `image_encoder`, `image_size`, `image_token`, `eot_token` and implement
    `pixel_inputs`, `num_image_tokens` and `preprocess`.

    Args:
        model (`transformers.PreTrainedModel`): the image-text-to-text model (possibly wrapped by PEFT).
        processor (`transformers.ProcessorMixin`): its processor (tokenizer + image processor + chat template).
        name_or_path (`str`): the id or folder the model came from.
    """

    image_token: str
    eot_token: str

    def __init__(self, model: nn.Module, processor, name_or_path: str):
        super().__init__()
        self.model = model
        self.processor = processor
        self.name_or_path = name_or_path

    # -- what the subclasses provide ----------------------------------------------------------------------------
    def pixel_inputs(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """[0, 1] pixels `(B, 3, H, W)` -> the model's image kwargs (`pixel_values`, ...), differentiably."""
        raise NotImplementedError

    def num_image_tokens(self, height: int, width: int) -> int:
        """Number of image placeholder tokens the language model sees for an image of this size."""
        raise NotImplementedError

    def extra_text_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Further token-aligned model inputs (Qwen's `mm_token_type_ids`)."""
        return {}

    # -- text ---------------------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def hf_model(self) -> nn.Module:
        """The transformers model itself, under any PEFT wrapper."""
        m = self.model
        return m.get_base_model() if hasattr(m, "get_base_model") else m

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompt(self, question: str) -> str:
        """The chat-template prompt of one user turn (image then question) up to the assistant's answer."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def expand_image_tokens(self, text: str, height: int, width: int) -> str:
        """Replace the single image placeholder by as many as the image occupies (what the processor does)."""
        if text.count(self.image_token) != 1:
            raise ValueError(f"Expected exactly one {self.image_token!r} in the prompt, got {text!r}.")
        return text.replace(self.image_token, self.image_token * self.num_image_tokens(height, width))

    def build_batch(self, questions: Sequence[str], answers: Sequence[str] | None = None, *,
                    image_hw: tuple[int, int] | None = None, padding_side: str | None = None) -> dict[str, torch.Tensor]:
        """Tokenise prompts (and answers) into model inputs, with prompt/image/padding tokens masked in `labels`.

        Args:
            questions (`Sequence[str]`): one question per image.
            answers (`Sequence[str]`, *optional*): one answer (or target string) per image; gives `labels`. Without
                answers the batch is a generation prompt, left-padded.
            image_hw (`tuple[int, int]`, *optional*): image height and width (all images in a batch share it);
                defaults to `(image_size, image_size)`.
            padding_side (`str`, *optional*): `"right"` (default with answers) or `"left"` (default without).
        """
        h, w = image_hw or (self.image_size, self.image_size)
        prompts = [self.expand_image_tokens(self.prompt(q), h, w) for q in questions]
        batch = build_supervised_batch(
            self.tokenizer, prompts, answers, eot_token_id=self.tokenizer.convert_tokens_to_ids(self.eot_token),
            padding_side=padding_side or ("right" if answers is not None else "left"))
        batch.update(self.extra_text_inputs(batch["input_ids"]))
        return batch

    # -- likelihoods --------------------------------------------------------------------------------------------
    def forward_logits(self, pixels: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits `(B, T, V)` of the language model on `batch` with the images `pixels` ([0, 1])."""
        dev = self.device
        inputs = {k: v.to(dev) for k, v in batch.items() if k != "labels"}
        out = self.model(**inputs, **self.pixel_inputs(pixels.to(dev)), use_cache=False)
        return out.logits

    def answer_loss(self, pixels: torch.Tensor, batch: dict[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
        """Per-sample teacher-forced cross-entropy of the supervised tokens (`labels != -100`), in fp32.

        Args:
            pixels (`torch.Tensor`): `(B, 3, H, W)` images in [0, 1]; differentiable.
            batch (`dict`): from `build_batch(questions, answers)`.
            reduction (`str`, *optional*, defaults to `"mean"`): `"mean"` over a sample's answer tokens, or `"sum"`
                (the negative log-likelihood of the whole answer, used to rank candidates).
        """
        logits = self.forward_logits(pixels, batch)
        return sequence_ce(logits, batch["labels"].to(logits.device), reduction)

    @torch.no_grad()
    def generate(self, pixels: torch.Tensor, questions: Sequence[str], max_new_tokens: int = 10) -> list[str]:
        """Greedy answers to `questions` about `pixels` ([0, 1]), special tokens stripped."""
        check_pixels(pixels)
        batch = self.build_batch(questions, image_hw=tuple(pixels.shape[-2:]))
        dev = self.device
        inputs = {k: v.to(dev) for k, v in batch.items()}
        out = self.model.generate(**inputs, **self.pixel_inputs(pixels.to(dev)), max_new_tokens=max_new_tokens,
                                  do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [s.strip() for s in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    @torch.no_grad()
    def rank_answers(self, pixels: torch.Tensor, questions: Sequence[str], candidates: Sequence[str]) -> list[str]:
        """For each image, the candidate answer with the highest likelihood (answer + end-of-turn token).

        Closed-set answering: it scores every candidate by teacher forcing (no sampling, no parsing), which is more
        reliable than free generation for a small model.
        """
        b, k = pixels.shape[0], len(candidates)
        if k == 0:
            raise ValueError("rank_answers needs at least one candidate answer.")
        rep_pix = pixels.repeat_interleave(k, dim=0)
        rep_q = [q for q in questions for _ in range(k)]
        rep_a = [c for _ in range(b) for c in candidates]
        batch = self.build_batch(rep_q, rep_a, image_hw=tuple(pixels.shape[-2:]))
        nll = self.answer_loss(rep_pix, batch, reduction="sum").view(b, k)
        return [candidates[i] for i in nll.argmin(1).tolist()]

    # -- saving -------------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, state_dict: dict | None = None,
                        merge_lora: bool = False, **extra_config) -> None:
        """Write transformers' own layout (`config.json`, `model.safetensors`, processor files).

        A LoRA-wrapped model writes PEFT's adapter layout (`adapter_config.json`, `adapter_model.safetensors`)
        unless `merge_lora`, which merges the adapters into a copy and writes the full model.
        """
        from ..utils.io import atomic_write_json, umask_modes

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        model = self.model
        if merge_lora and hasattr(model, "merge_and_unload"):
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
        self.processor.save_pretrained(out)
        atomic_write_json(out / "vlmrobust_config.json",
                          {"vlmrobust_version": __version__, "backend": self.backend, **extra_config})
        umask_modes(out)  # transformers saves safetensors as 0600, its JSON as 0644

    # -- not meaningful for a generative model ------------------------------------------------------------------
    def encode_text(self, texts, normalize: bool = False) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} generates text; it has no text embedding for zero-shot "
                                  "classification. Use answer_loss / generate / rank_answers.")


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


def sequence_ce(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Per-sample next-token cross-entropy over `labels != -100` (shifted by one), in fp32."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}.")
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    tok = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none")
    mask = target != IGNORE_INDEX
    total = (tok * mask).sum(1)
    if reduction == "sum":
        return total
    return total / mask.sum(1).clamp_min(1)


def lora_config(lora=None, lora_r: int | None = None, lora_alpha: int | None = None, lora_dropout: float = 0.0,
                target_modules: Sequence[str] = ("q_proj", "v_proj")):
    """A PEFT `LoraConfig` on the language model's attention projections (the vision tower is left alone)."""
    if lora is not None:
        return lora
    if lora_r is None:
        return None
    from peft import LoraConfig

    names = "|".join(target_modules)
    return LoraConfig(r=int(lora_r), lora_alpha=int(lora_alpha or 2 * lora_r), lora_dropout=lora_dropout,
                      target_modules=rf".*language_model.*\.({names})")


def apply_lora(model: nn.Module, config) -> nn.Module:
    """Wrap `model` with PEFT LoRA; only the adapters stay trainable."""
    if config is None:
        return model
    from peft import get_peft_model

    return get_peft_model(model, config)


def load_pretrained_lvlm(model_class, name_or_path: str, backend: str, label: str, *, processor=None,
                         torch_dtype=None, **kwargs) -> tuple[nn.Module, object]:
    """`model_class.from_pretrained(name_or_path)` and the folder's own processor (None when `processor` is given);
    `model_class` may be a function of `name_or_path` returning the class. A folder or id that cannot be read raises
    naming the offline fix (`<backend>:/path`)."""
    from transformers import AutoProcessor

    try:
        cls = model_class if isinstance(model_class, type) else model_class(name_or_path)
        model = cls.from_pretrained(name_or_path, dtype=torch_dtype, **kwargs)
        own = AutoProcessor.from_pretrained(name_or_path) if processor is None else None
    except OSError as e:
        raise RuntimeError(f"Could not load the {label} '{name_or_path}': {e}\nWithout network access, download it "
                           f"beforehand or pass the path of a local folder: '{backend}:/path'.") from e
    return model, own
