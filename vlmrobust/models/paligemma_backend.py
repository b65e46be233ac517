"""PaliGemma backend: `paligemma:<hub id or path>` (transformers `PaliGemmaForConditionalGeneration`).

PaliGemma is a prefix-LM, not a chat model: the sequence is `<image> * N`, `<bos>`, the task prompt
(`"answer en <question>"`) and `"\\n"` — the prefix, attended bidirectionally, `token_type_ids` 0 — then the answer
and `<eos>` — the suffix, causal, `token_type_ids` 1 (what `PaliGemmaProcessor(text=..., suffix=...)` builds). Only
the suffix is supervised: `labels` are -100 on the image tokens, `<bos>`, the prompt and padding.

Images are resized to SigLIP's square input (`preprocess`, the processor's own resize with normalisation off: 224 px
for PaliGemma-3B-224) *before* any attack; inside the model only `(x - 0.5) / 0.5` remains.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .base import ImageEncoder
from .hf_clip_backend import unnormalized_preprocess
from .lvlm_base import IGNORE_INDEX, LVLM, apply_lora, load_pretrained_lvlm, lora_config

#: PaliGemma's VQA task prefix (big_vision's "answer {lang} {question}"); the question follows it.
TASK_PREFIX = "answer en "


class PaliGemmaVisionFeatures(nn.Module):
    """Normalised pixels -> SigLIP's last hidden state `(B, N, D)`, the patch tokens PaliGemma's projector reads."""

    def __init__(self, vision_tower: nn.Module):
        super().__init__()
        self.vision_tower = vision_tower

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_tower(pixel_values=pixel_values, return_dict=True).last_hidden_state


class PaliGemma(LVLM):
    """A transformers PaliGemma behind vlmrobust's protocol (see the module docstring for the token layout).

    `image_encoder` maps [0, 1] pixels to SigLIP's patch features (the projector's input); it shares its parameters
    with `model`.

    Args:
        model (`PaliGemmaForConditionalGeneration` or a PEFT wrapper of it): the model.
        processor (`PaliGemmaProcessor`): its processor; checked against the model (image size, tokenizer).
        name_or_path (`str`): the id or folder the model came from.
        task_prefix (`str`, *optional*, defaults to `"answer en "`): text put before each question.
    """

    backend = "paligemma"
    image_token = "<image>"

    def __init__(self, model: nn.Module, processor, name_or_path: str, task_prefix: str = TASK_PREFIX):
        super().__init__(model, processor, name_or_path)
        hf = self.hf_model
        vcfg = hf.config.vision_config
        self.image_size = int(vcfg.image_size)
        self.patch_size = int(vcfg.patch_size)
        self.task_prefix = task_prefix
        check_paligemma_processor(hf, processor)
        self.eot_token = self.tokenizer.eos_token
        ip = processor.image_processor
        self.image_encoder = ImageEncoder(PaliGemmaVisionFeatures(hf.model.vision_tower), ip.image_mean,
                                          ip.image_std, self.image_size)

    def num_image_tokens(self, height: int, width: int) -> int:
        if (height, width) != (self.image_size, self.image_size):
            raise ValueError(f"PaliGemma's tower takes {self.image_size}x{self.image_size} px images, got "
                             f"{height}x{width}: resize with `model.preprocess` before attacking.")
        return (self.image_size // self.patch_size) ** 2

    def pixel_inputs(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = pixels.shape[-2:]
        self.num_image_tokens(h, w)
        return {"pixel_values": self.image_encoder.normalize(pixels)}

    @property
    def preprocess(self) -> Callable:
        return unnormalized_preprocess(self.processor.image_processor)

    def prompt(self, question: str) -> str:
        """The text prefix of one question (without the image tokens, `<bos>` and the closing newline)."""
        return f"{self.task_prefix}{question}"

    def build_batch(self, questions: Sequence[str], answers: Sequence[str] | None = None, *,
                    image_hw: tuple[int, int] | None = None,
                    padding_side: str | None = None) -> dict[str, torch.Tensor]:
        """Token ids, attention mask, `token_type_ids` (0 prefix, 1 suffix) and, with answers, `labels` (-100 on
        the prefix and padding): PaliGemmaProcessor's layout (see the module docstring).

        Args: as `LVLM.build_batch`.
        """
        h, w = image_hw or (self.image_size, self.image_size)
        tok = self.tokenizer
        n_img = self.num_image_tokens(h, w)
        image_id = tok.convert_tokens_to_ids(self.image_token)
        prefixes = [[image_id] * n_img + [tok.bos_token_id]
                    + list(tok(self.prompt(q) + "\n", add_special_tokens=False)["input_ids"]) for q in questions]
        suffixes = None
        if answers is not None:
            suffixes = [list(tok(a, add_special_tokens=False)["input_ids"]) + [tok.eos_token_id] for a in answers]
        return build_prefix_lm_batch(prefixes, suffixes, pad_token_id=tok.pad_token_id,
                                     padding_side=padding_side or ("right" if answers is not None else "left"))


def build_prefix_lm_batch(prefixes: Sequence[Sequence[int]], suffixes: Sequence[Sequence[int]] | None = None, *,
                          pad_token_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad prefix (+ suffix) token ids into `input_ids`, `attention_mask`, `token_type_ids` (1 on the suffix, 0 on
    the prefix and padding, as PaliGemmaProcessor) and, with suffixes, `labels` (the suffix ids, -100 elsewhere)."""
    if suffixes is not None and len(suffixes) != len(prefixes):
        raise ValueError(f"{len(prefixes)} prompts but {len(suffixes)} answers.")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
    rows = [(list(p), list(suffixes[i]) if suffixes is not None else []) for i, p in enumerate(prefixes)]
    width = max(len(p) + len(s) for p, s in rows)
    b = len(rows)
    input_ids = torch.full((b, width), int(pad_token_id), dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    types = torch.zeros((b, width), dtype=torch.long)
    labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
    for i, (p, s) in enumerate(rows):
        n = len(p) + len(s)
        start = 0 if padding_side == "right" else width - n
        input_ids[i, start:start + n] = torch.tensor(p + s)
        attention[i, start:start + n] = 1
        types[i, start + len(p):start + n] = 1
        labels[i, start + len(p):start + n] = torch.tensor(s, dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": types}
    if suffixes is not None:
        batch["labels"] = labels
    return batch


def check_paligemma_processor(model: nn.Module, processor) -> None:
    """Raise a ValueError naming the fix when `processor` belongs to another model."""
    vcfg = model.config.vision_config
    n = (int(vcfg.image_size) // int(vcfg.patch_size)) ** 2
    seq = getattr(processor, "image_seq_length", None)
    size = getattr(processor.image_processor, "size", None)
    height = size.get("height") if isinstance(size, dict) else getattr(size, "height", None)
    if (seq is not None and int(seq) != n) or (height is not None and int(height) != int(vcfg.image_size)):
        raise ValueError(f"The processor makes {height} px images of {seq} tokens but the model's SigLIP tower "
                         f"takes {vcfg.image_size} px ({n} tokens): the processor belongs to another model. Load "
                         "processor and model from the same id / folder (or save the processor next to the model).")
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<image>")
    want = model.config.image_token_id
    vocab = model.config.text_config.vocab_size
    if image_id != want or len(tok) > vocab or tok.bos_token_id is None or tok.eos_token_id is None:
        raise ValueError(f"The processor's tokenizer does not match the model (<image> id {image_id} vs the "
                         f"model's {want}; {len(tok)} tokens vs a {vocab}-row embedding; bos / eos "
                         f"{tok.bos_token_id} / {tok.eos_token_id}): the processor belongs to another model. Load "
                         "processor and model from the same id / folder.")


def load_paligemma(name_or_path: str, *, device: str | torch.device = "cpu", torch_dtype=None, processor=None,
                   lora=None, lora_r: int | None = None, lora_alpha: int | None = None, seed: int = 0,
                   tiny_kwargs: dict | None = None, task_prefix: str = TASK_PREFIX, **kwargs) -> PaliGemma:
    """Load `paligemma:<id or path>` with plain transformers `from_pretrained`.

    Args:
        name_or_path (`str`): hub id (e.g. `google/paligemma-3b-pt-224`) or folder; `tiny` builds vlmrobust's random
            offline fixture in memory.
        device (`str`, *optional*, defaults to `"cpu"`): where to put the model.
        torch_dtype (*optional*): dtype for `from_pretrained`.
        processor (*optional*): a processor to use instead of the folder's own (checked for compatibility).
        lora (`peft.LoraConfig`, *optional*) / lora_r (`int`, *optional*): wrap the model with LoRA; `lora_r` alone
            adapts the language model's `q_proj` / `v_proj` (rank r, alpha 2r).
        seed (`int`, *optional*, defaults to 0): seed of the `tiny` fixture.
        tiny_kwargs (`dict`, *optional*): keyword arguments of `make_tiny_paligemma` for the `tiny` fixture.
        task_prefix (`str`, *optional*, defaults to `"answer en "`): text before each question.
    """
    from transformers import PaliGemmaForConditionalGeneration

    if name_or_path == "tiny":
        from ..testing.tiny_paligemma import make_tiny_paligemma

        model, own = make_tiny_paligemma(seed=seed, **(tiny_kwargs or {}))
    else:
        model, own = load_pretrained_lvlm(PaliGemmaForConditionalGeneration, name_or_path, "paligemma", "PaliGemma",
                                          processor=processor, torch_dtype=torch_dtype, **kwargs)
    model = apply_lora(model.to(device).eval(), lora_config(lora, lora_r, lora_alpha))
    return PaliGemma(model, processor or own, name_or_path, task_prefix=task_prefix)
