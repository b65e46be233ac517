"""Where block 1's attention is, per backend: one :class:`AnchorAdapter` subclass per backend, registered in
`ANCHOR_ADAPTERS` under the backend name, and the anchor read from a white image (`block1_attention_output`)."""

from __future__ import annotations

import torch
from torch import nn

from ...registry import Registry
from ..base import ImageEncoder, VisionLanguageModel
from ..factory import BACKENDS

Grid = tuple[int, ...]


class AnchorAdapter:
    """How R-Adapt reaches block 1's attention in one backend's vision tower.

    Subclasses implement :meth:`attention` and :meth:`grid`; they override :meth:`tokens` / :meth:`mix` when the
    attention output is not a `(batch, tokens, width)` tensor (or a tuple starting with one). Register them in
    `ANCHOR_ADAPTERS` under the backend name (`model.backend`).

    Args:
        encoder (`ImageEncoder`): the backend's image encoder (its tower holds block 1).
    """

    def __init__(self, encoder: ImageEncoder):
        self.encoder = encoder

    def attention(self) -> nn.Module:
        """The module whose output is block 1's attention branch (what is added to the residual stream)."""
        raise NotImplementedError

    @property
    def patch_size(self) -> tuple[int, int]:
        raise NotImplementedError

    def grid(self, height: int, width: int) -> Grid:
        """Patch grid of an input of this size: the key anchors are cached under."""
        ph, pw = self.patch_size
        if height % ph or width % pw:
            raise ValueError(f"Input of {height}x{width} px is not a multiple of the {ph}x{pw} patch size.")
        return height // ph, width // pw

    def white_image(self, grid: Grid, device=None) -> torch.Tensor:
        """A uniform white image (x = 1 in [0, 1] pixels) whose patch grid is `grid`."""
        ph, pw = self.patch_size
        return torch.ones(1, 3, grid[0] * ph, grid[1] * pw, device=device)

    def tokens(self, output) -> torch.Tensor:
        """The attention module's output as `(batch, tokens, width)`."""
        return output[0] if isinstance(output, tuple) else output

    def mix(self, output, anchor: torch.Tensor, attn_coef: float, anchor_coef: float):
        """`attn_coef · output + anchor_coef · anchor`, the anchor `(tokens, width)` broadcast over the batch."""
        out = output[0] if isinstance(output, tuple) else output
        mixed = attn_coef * out + anchor_coef * anchor.to(out.dtype)
        return (mixed, *output[1:]) if isinstance(output, tuple) else mixed

    def num_tokens(self, output) -> int:
        return self.tokens(output).shape[1]

    def fits(self, output, anchor: torch.Tensor) -> bool:
        """Whether `anchor` can be mixed into this attention output."""
        return anchor.shape[0] == self.num_tokens(output)


ANCHOR_ADAPTERS: Registry[type[AnchorAdapter]] = Registry("R-Adapt anchor adapter")


@ANCHOR_ADAPTERS.register("open_clip")
class OpenCLIPAnchorAdapter(AnchorAdapter):
    """open_clip `VisionTransformer`: block 1 is `transformer.resblocks[0]`, its attention `attn`.

    Older open_clip ViTs run the transformer sequence-first `(tokens, batch, width)`; that layout is handled here.
    """

    def __init__(self, encoder: ImageEncoder):
        super().__init__(encoder)
        tower = encoder.tower
        if not hasattr(tower, "transformer") or not hasattr(tower.transformer, "resblocks"):
            raise TypeError(f"R-Adapt needs a ViT vision tower; this open_clip model has a "
                            f"{type(tower).__name__} (e.g. a timm or ConvNeXt tower), which has no attention block 1.")
        self.batch_first = bool(getattr(tower.transformer, "batch_first", True))

    def attention(self) -> nn.Module:
        return self.encoder.tower.transformer.resblocks[0].attn

    @property
    def patch_size(self) -> tuple[int, int]:
        p = self.encoder.tower.patch_size
        return (int(p[0]), int(p[1])) if isinstance(p, (tuple, list)) else (int(p), int(p))

    def tokens(self, output) -> torch.Tensor:
        out = super().tokens(output)
        return out if self.batch_first else out.transpose(0, 1)

    def mix(self, output, anchor, attn_coef, anchor_coef):
        return super().mix(output, anchor if self.batch_first else anchor[:, None], attn_coef, anchor_coef)


@ANCHOR_ADAPTERS.register("hf-clip")
class HFCLIPAnchorAdapter(AnchorAdapter):
    """transformers CLIP vision model: block 1 is `encoder.layers[0]`, its attention `self_attn`.

    LLaVA's tower is a transformers `CLIPVisionModel` too: its adapter only has to say where the tower is.
    """

    def vision_model(self) -> nn.Module:
        vm = self.encoder.tower.vision_model
        return getattr(vm, "vision_model", vm)  # CLIPVisionModel wraps a CLIPVisionTransformer in some versions

    def attention(self) -> nn.Module:
        return self.vision_model().encoder.layers[0].self_attn

    @property
    def patch_size(self) -> tuple[int, int]:
        p = self.vision_model().embeddings.patch_size
        return int(p), int(p)


@ANCHOR_ADAPTERS.register("llava")
class LlavaAnchorAdapter(HFCLIPAnchorAdapter):
    """LLaVA's CLIP tower: block 1 is `vision_tower.vision_model.encoder.layers[0].self_attn`.

    The anchor covers every token the tower runs on (CLS + patches, `577 × 1024` for LLaVA-1.5 at 336 px), whatever
    `vision_feature_select_strategy` later keeps for the projector.
    """

    def vision_model(self) -> nn.Module:
        vt = self.encoder.tower.vision_tower  # LlavaVisionFeatures -> transformers CLIPVisionModel
        return getattr(vt, "vision_model", vt)


@ANCHOR_ADAPTERS.register("qwen_vl")
class QwenVLAnchorAdapter(AnchorAdapter):
    """Qwen2-VL / Qwen2.5-VL vision transformer: block 1 is `visual.blocks[0]`, its attention `attn`.

    Qwen's tower runs on *packed* tokens: its attention output is `(sum of t·h·w over the images, width)`, with no
    batch axis (Qwen2.5-VL also permutes the tokens into attention windows before block 1, per image). The anchor of a
    grid `(t, h, w)` is block 1's output on one white image of that grid, `(t·h·w, width)`, in that same packed (and
    windowed) order; a batch of images that share the grid, which is what `pixel_inputs` builds, gets it once per
    image (`anchor.repeat`). Anchors are cached per grid (dynamic resolution). A packed batch of images with
    *different* grids is not supported by this spreading (vlmrobust never builds one: all images of a batch share a
    size).
    """

    def visual(self) -> nn.Module:
        return self.encoder.tower.visual

    def attention(self) -> nn.Module:
        return self.visual().blocks[0].attn

    @property
    def patch_size(self) -> tuple[int, int]:
        p = int(self.encoder.tower.patch_size)
        return p, p

    def grid(self, height: int, width: int) -> Grid:
        tower = self.encoder.tower
        unit = tower.patch_size * tower.merge_size
        if height % unit or width % unit:
            raise ValueError(f"Input of {height}x{width} px is not at Qwen-VL's resolution (multiples of {unit} px): "
                             "resize with `model.preprocess` first.")
        return 1, height // tower.patch_size, width // tower.patch_size  # (grid_t, grid_h, grid_w), a still image

    def white_image(self, grid: Grid, device=None) -> torch.Tensor:
        p = self.patch_size[0]
        return torch.ones(1, 3, grid[1] * p, grid[2] * p, device=device)

    def tokens(self, output) -> torch.Tensor:
        out = super().tokens(output)
        return out[None] if out.dim() == 2 else out  # packed (tokens, width) -> (1, tokens, width)

    def fits(self, output, anchor: torch.Tensor) -> bool:
        n = self.num_tokens(output)
        return n >= anchor.shape[0] and n % anchor.shape[0] == 0

    def mix(self, output, anchor, attn_coef, anchor_coef):
        out = output[0] if isinstance(output, tuple) else output
        return super().mix(output, anchor.repeat(out.shape[-2] // anchor.shape[0], 1), attn_coef, anchor_coef)


def adapter_for(model: VisionLanguageModel) -> AnchorAdapter:
    """The registered :class:`AnchorAdapter` of `model`'s backend, bound to its image encoder."""
    if model.backend not in ANCHOR_ADAPTERS:
        raise NotImplementedError(
            f"R-Adapt has no anchor adapter for the '{model.backend}' backend yet (available: "
            f"{', '.join(ANCHOR_ADAPTERS.names())}). Another backend needs a small AnchorAdapter subclass "
            "registered in vlmrobust.models.radapt.ANCHOR_ADAPTERS.")
    return ANCHOR_ADAPTERS.get(model.backend)(model.image_encoder)


def model_id(model: VisionLanguageModel) -> str:
    """The `create_model` id that loads `model` again (`name_or_path`, with the backend prefix added if missing)."""
    name = model.name_or_path
    prefix, sep, _ = name.partition(":")
    if sep and prefix in BACKENDS:
        return name
    return f"{model.backend}:{name}"


def grid_key(grid: Grid) -> str:
    return "x".join(str(int(g)) for g in grid)


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass once block 1's attention output is known."""


@torch.no_grad()
def block1_attention_output(encoder: ImageEncoder, adapter: AnchorAdapter, grid: Grid) -> torch.Tensor:
    """Block 1's attention output `(tokens, width)` of `encoder` on a uniform white image with patch grid `grid`.

    This is the training-free anchor when `encoder` is the standard model and the model-guided one when it is
    another checkpoint. The output is read before any R-Adapt mixing on the same module (the capture hook runs
    first and stops the forward pass there, so the rest of the tower is not run), and the image goes straight to
    `encoder`, without R-Adapt's input filter (a low-pass with `H = 1` at DC leaves a uniform image unchanged).
    """
    device = next(encoder.parameters()).device
    captured: list[torch.Tensor] = []

    def capture(_module, _args, output):
        captured.append(adapter.tokens(output)[0].detach().float().clone())
        raise _Captured

    handle = adapter.attention().register_forward_hook(capture, prepend=True)
    was_training = encoder.training
    encoder.eval()
    try:
        encoder(adapter.white_image(grid, device=device))
    except _Captured:
        pass
    finally:
        handle.remove()
        encoder.train(was_training)
    if len(captured) != 1:
        raise RuntimeError("Block 1's attention did not run on the white image: the adapter points at the wrong "
                           "module.")
    return captured[0]
