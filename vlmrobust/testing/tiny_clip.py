"""Tiny, randomly initialised CLIP models saved in each backend's native layout.

They are what the tests and the offline quickstart run on: built in memory, written to disk and loaded back through
the *real* loaders (`open_clip.create_model_and_transforms("local-dir:...")`, `CLIPModel.from_pretrained`), so no
code path is skipped and nothing touches the network.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def tiny_open_clip_config(
    image_size: int = 32, patch_size: int = 8, width: int = 32, layers: int = 2, embed_dim: int = 32,
    context_length: int = 16, heads: int = 4, patch_dropout: float = 0.0,
) -> dict:
    """open_clip `model_cfg` of a tiny ViT CLIP (default: 2 layers, width 32, 32 px).

    `patch_dropout > 0` drops that fraction of patch tokens in train mode only, so a train / eval mode mistake
    changes the outputs.
    """
    vision_cfg = {"image_size": image_size, "layers": layers, "width": width, "patch_size": patch_size,
                  "head_width": width // heads}
    if patch_dropout:
        vision_cfg["patch_dropout"] = float(patch_dropout)
    return {
        "embed_dim": embed_dim,
        "vision_cfg": vision_cfg,
        "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": width, "heads": heads,
                     "layers": layers},
    }


def build_tiny_open_clip(
    output_dir: str | os.PathLike, *, seed: int = 0, image_size: int = 32, patch_size: int = 8, width: int = 32,
    layers: int = 2, embed_dim: int = 32, context_length: int = 16, patch_dropout: float = 0.0,
) -> Path:
    """Build a tiny open_clip CLIP with random weights and save it in open_clip's layout (`patch_dropout`: see
    `tiny_open_clip_config`).

    Returns the folder; load it with `create_model("local-dir:<folder>")` or plain
    `open_clip.create_model_and_transforms("local-dir:<folder>")`.
    """
    from open_clip.model import CLIP

    from ..layout import save_open_clip

    cfg = tiny_open_clip_config(image_size, patch_size, width, layers, embed_dim, context_length,
                                heads=max(1, width // 16), patch_dropout=patch_dropout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**cfg)
    preprocess_cfg = {"size": image_size, "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
                      "interpolation": "bicubic", "resize_mode": "shortest"}
    return save_open_clip(model, output_dir, cfg, preprocess_cfg, extra_config={"note": "tiny random CLIP fixture"})


def _clip_bpe_tokenizer():
    """A transformers CLIPTokenizer with OpenAI CLIP's BPE, built from the vocabulary that ships with open_clip."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    simple = SimpleTokenizer()
    merges = [tuple(pair) for pair, _ in sorted(simple.bpe_ranks.items(), key=lambda kv: kv[1])]
    vocab = dict(simple.encoder)
    # open_clip names the specials <start_of_text>/<end_of_text>; transformers' CLIP uses <|startoftext|>/<|endoftext|>
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    return CLIPTokenizer(vocab=vocab, merges=merges)


def build_tiny_hf_clip(
    output_dir: str | os.PathLike, *, seed: int = 0, image_size: int = 32, patch_size: int = 8, width: int = 32,
    layers: int = 2, embed_dim: int = 32, max_position_embeddings: int = 16,
) -> Path:
    """Build a tiny transformers `CLIPModel` + `CLIPProcessor` and `save_pretrained` both into `output_dir`."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = _clip_bpe_tokenizer()
    heads = max(1, width // 16)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": width, "intermediate_size": 4 * width,
                     "num_hidden_layers": layers, "num_attention_heads": heads,
                     "max_position_embeddings": max_position_embeddings,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={"hidden_size": width, "intermediate_size": 4 * width, "num_hidden_layers": layers,
                       "num_attention_heads": heads, "image_size": image_size, "patch_size": patch_size},
        projection_dim=embed_dim,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    tokenizer.model_max_length = max_position_embeddings
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD),
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    out = Path(output_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
