"""Tiny models built offline, for tests, examples and the offline quickstart.

Each one is built in memory, written in its backend's native layout and loaded back through the *real* loaders
(`open_clip.create_model_and_transforms("local-dir:...")`, `CLIPModel` / `LlavaForConditionalGeneration` / Qwen
`from_pretrained`), so no code path is skipped and nothing touches the network:

- `build_tiny_open_clip` / `build_tiny_hf_clip`: random tiny CLIPs (open_clip and transformers layouts);
- `make_tiny_llava` / `make_tiny_qwen2_vl` / `make_tiny_qwen2_5_vl` (in memory) and their `build_tiny_*` (on disk):
  random tiny LVLMs with word-level offline tokenizers, processors and chat templates (`llava:tiny`, `qwen_vl:tiny`,
  `qwen_vl:tiny-2.5`); `make_tiny_paligemma` / `build_tiny_paligemma`: a random SigLIP + Gemma PaliGemma with
  PaliGemmaProcessor (`paligemma:tiny`);
- `get_tiny_digits_clip`: the offline stand-in `vlmrobust:tiny-digits-clip`, a tiny CLIP contrastively pre-trained on
  the digits train split on first use and cached.
"""

from .stand_in import TINY_DIGITS_NAME, get_tiny_digits_clip, pretrain_tiny_digits_clip
from .tiny_clip import OPENAI_MEAN, OPENAI_STD, build_tiny_hf_clip, build_tiny_open_clip, tiny_open_clip_config
from .tiny_llava import build_tiny_llava, make_tiny_llava
from .tiny_paligemma import build_tiny_paligemma, make_tiny_paligemma
from .tiny_qwen import build_tiny_qwen2_5_vl, build_tiny_qwen2_vl, make_tiny_qwen2_5_vl, make_tiny_qwen2_vl
from .vocab import (
    LLAVA_CHAT_TEMPLATE,
    LLAVA_SPECIAL_TOKENS,
    QWEN_CHAT_TEMPLATE,
    QWEN_SPECIAL_TOKENS,
    SHAPES_VQA_VOCAB,
    make_tokenizer,
)

__all__ = [
    "LLAVA_CHAT_TEMPLATE", "LLAVA_SPECIAL_TOKENS", "OPENAI_MEAN", "OPENAI_STD", "QWEN_CHAT_TEMPLATE",
    "QWEN_SPECIAL_TOKENS", "SHAPES_VQA_VOCAB", "TINY_DIGITS_NAME", "build_tiny_hf_clip", "build_tiny_llava",
    "build_tiny_open_clip", "build_tiny_paligemma", "build_tiny_qwen2_5_vl", "build_tiny_qwen2_vl",
    "get_tiny_digits_clip", "make_tiny_llava", "make_tiny_paligemma", "make_tiny_qwen2_5_vl", "make_tiny_qwen2_vl", "make_tokenizer", "pretrain_tiny_digits_clip",
    "tiny_open_clip_config",
]
