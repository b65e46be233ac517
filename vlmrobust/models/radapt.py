"""R-Adapt: robustness from two small, frozen-backbone changes in the shallow layers (arXiv 2603.12799).

No public code exists; where the paper is silent the choice is a knob of :class:`RAdaptSettings`, marked [recon].

- **Gaussian input filter** (:class:`GaussianInputFilter`): a per-channel Fourier low-pass of the [0, 1] pixels,
  inside the differentiable graph, before the patch embedding.
- **Robustness anchor**: block 1's attention output is mixed with a fixed per-token tensor `A`,
  `h₁ = z + attn_coef · MHSA₁(LN₁(z)) + anchor_coef · A` (paper: `attn_coef = 1 − α`, `anchor_coef = α`).

`A` comes from a uniform white image through the standard model (training-free), through another checkpoint such as
a FARE model (model-guided), or is trained on a few adversarial images (R-Adapt+, `RAdaptTrainer`).

How the anchor reaches block 1 differs per backend; an :class:`AnchorAdapter` subclass per backend (registered in
`ANCHOR_ADAPTERS` under the backend name) says where block 1's attention is, how its output is laid out and which
patch grid an input has: open_clip, transformers CLIP, LLaVA's CLIP tower and Qwen2-VL / Qwen2.5-VL's vision tower
(packed tokens, one anchor per `(grid_t, grid_h, grid_w)`). Wrapping an LVLM gives an :class:`RAdaptLVLM`, whose
`pixel_inputs` (the path of `answer_loss`, `generate`, `rank_answers`) runs the [0, 1] pixels through the filter.
"""

from __future__ import annotations

import contextlib
import json
import os
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..registry import Registry
from .base import ImageEncoder, VisionLanguageModel
from .lvlm_base import LVLM

RADAPT_CONFIG_NAME = "radapt_config.json"
RADAPT_WEIGHTS_NAME = "radapt_anchor.safetensors"
PARADIGMS = ("training-free", "model-guided", "radapt-plus")

Grid = tuple[int, ...]


# -- Gaussian input filter ---------------------------------------------------------------------------------------

class GaussianInputFilter(nn.Module):
    """Per-channel Gaussian low-pass in the Fourier domain, on [0, 1] pixels.

    `x̃ = clamp(Re(IFFT2(ifftshift(fftshift(FFT2(x)) ⊙ H))), 0, 1)` with `H(u, v) = exp(−D(u, v)² / (2·D0²))` and D the
    distance from the spectrum centre in index units. It is computed as `IFFT2(FFT2(x) ⊙ ifftshift(H))`, the same
    linear map (fftshift only permutes entries), in fp32 with autocast off. Every step is differentiable, and a
    Gaussian low-pass of a [0, 1] image stays (up to ringing from the truncated spectrum) in [0, 1], so the clamp
    rarely binds and does not mask gradients.

    Args:
        d0 (`float`, *optional*, defaults to 35.0): cut-off in index units at `reference_size` px (paper: 30–40 at
            224 px).
        reference_size (`int`, *optional*, defaults to 224): resolution at which `d0` is given.
        scaling (`str`, *optional*, defaults to `"resolution"`): `"resolution"` [recon] scales the cut-off with the
            input size per axis (`D0_h = d0 · H / reference_size`, same for W), so it stays the same fraction of the
            Nyquist band at any resolution (on non-square inputs the filter becomes elliptical); `"none"` uses `d0`
            index units at every size (the formula read literally).
        clamp (`bool`, *optional*, defaults to `True`): clamp the output to [0, 1] (the paper's definition).
    """

    def __init__(self, d0: float = 35.0, reference_size: int = 224, scaling: str = "resolution", clamp: bool = True):
        super().__init__()
        if d0 <= 0:
            raise ValueError(f"d0 must be > 0, got {d0}.")
        if scaling not in ("resolution", "none"):
            raise ValueError(f"scaling must be 'resolution' or 'none', got {scaling!r}.")
        self.d0, self.reference_size, self.scaling, self.clamp = float(d0), int(reference_size), scaling, clamp
        self._kernels: dict[tuple, torch.Tensor] = {}

    def extra_repr(self) -> str:
        return f"d0={self.d0:g}, reference_size={self.reference_size}, scaling={self.scaling!r}, clamp={self.clamp}"

    def cutoff(self, height: int, width: int) -> tuple[float, float]:
        """Cut-off (D0) along the height and width axes, in index units, for an input of this size."""
        if self.scaling == "none":
            return self.d0, self.d0
        return self.d0 * height / self.reference_size, self.d0 * width / self.reference_size

    def transfer_function(self, height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """`H` on the centred (fftshift-ed) spectrum: `(height, width)`, 1 at the DC entry `[height//2, width//2]`."""
        d0_h, d0_w = self.cutoff(height, width)
        u = (torch.arange(height, device=device, dtype=torch.float64) - height // 2) / d0_h
        v = (torch.arange(width, device=device, dtype=torch.float64) - width // 2) / d0_w
        return torch.exp(-0.5 * (u[:, None] ** 2 + v[None, :] ** 2)).to(dtype)

    def _kernel(self, height: int, width: int, device, dtype) -> torch.Tensor:
        key = (height, width, str(device), dtype)
        if key not in self._kernels:  # one H per input size and device, built once
            self._kernels[key] = torch.fft.ifftshift(self.transfer_function(height, width, device, dtype))
        return self._kernels[key]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        dtype = torch.float64 if pixels.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=pixels.device.type, enabled=False):
            x = pixels.to(dtype)
            h = self._kernel(x.shape[-2], x.shape[-1], x.device, dtype)
            out = torch.fft.ifft2(torch.fft.fft2(x) * h).real
            if self.clamp:
                out = out.clamp(0, 1)
        return out.to(pixels.dtype)


# -- where block 1's attention is, per backend -------------------------------------------------------------------

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
    from .factory import BACKENDS

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


# -- settings ---------------------------------------------------------------------------------------------------

@dataclass
class RAdaptSettings:
    """What an R-Adapt model is, besides its anchor tensors; saved as `radapt_config.json`.

    Args:
        base_model (`str`): `create_model` id of the frozen backbone (reloaded from it).
        paradigm (`str`, *optional*, defaults to `"training-free"`): how the anchor was obtained:
            `"training-free"`, `"model-guided"` or `"radapt-plus"`.
        guide_model (`str`, *optional*): id of the checkpoint the anchor came from (model-guided, or the
            initialisation of R-Adapt+).
        alpha (`float`, *optional*, defaults to 1.0): anchor strength α (paper: ≈ 1, swept 0–2; 0 = no anchor).
        attn_coef (`float`, *optional*): [recon] coefficient of block 1's attention output; `None` = `1 − alpha`.
        anchor_coef (`float`, *optional*): [recon] coefficient of the anchor; `None` = `alpha`.
        gaussian_filter (`bool`, *optional*, defaults to `True`): apply the Gaussian input filter.
        d0 (`float`, *optional*, defaults to 35.0): filter cut-off at `d0_reference_size` px (paper: 30–40 at 224).
        d0_reference_size (`int`, *optional*, defaults to 224): [recon] resolution `d0` refers to.
        d0_scaling (`str`, *optional*, defaults to `"resolution"`): [recon] `"resolution"` (scale D0 with the input
            size) or `"none"`; see :class:`GaussianInputFilter`.
    """

    base_model: str = ""
    paradigm: str = "training-free"
    guide_model: str | None = None
    alpha: float = 1.0
    attn_coef: float | None = None
    anchor_coef: float | None = None
    gaussian_filter: bool = True
    d0: float = 35.0
    d0_reference_size: int = 224
    d0_scaling: str = "resolution"

    def __post_init__(self):
        if self.paradigm not in PARADIGMS:
            raise ValueError(f"paradigm must be one of {PARADIGMS}, got {self.paradigm!r}.")
        if self.d0 <= 0:
            raise ValueError(f"d0 must be > 0, got {self.d0}.")
        if self.d0_scaling not in ("resolution", "none"):
            raise ValueError(f"d0_scaling must be 'resolution' or 'none', got {self.d0_scaling!r}.")

    @property
    def coefficients(self) -> tuple[float, float]:
        """(attn_coef, anchor_coef) with the paper's defaults (1 − α, α) filled in."""
        a = 1.0 - self.alpha if self.attn_coef is None else self.attn_coef
        b = self.alpha if self.anchor_coef is None else self.anchor_coef
        return float(a), float(b)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> RAdaptSettings:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# -- the wrapped image encoder ------------------------------------------------------------------------------------

_ADAPTED: weakref.WeakSet = weakref.WeakSet()  # attention modules that already carry an R-Adapt anchor


class RAdaptImageEncoder(nn.Module):
    """[0, 1] pixels -> Gaussian input filter -> the frozen base encoder, with the anchor mixed into block 1.

    The filter runs on the [0, 1] pixels, before the mean/std normalisation: the formula clamps to [0, 1], which
    only means something there (a low-pass with `H = 1` at DC commutes with the per-channel affine normalisation, so
    apart from the clamp the order does not matter). The anchor enters through a forward hook on block 1's attention
    module, so it also acts when the tower is called from inside another model (an LVLM's `generate`) and when
    block 1 is recomputed under activation checkpointing (reasoned, not tested here); `RAdaptModel.unload()` removes
    it.

    Anchors are kept per patch grid (`anchors["16x16"]`, shape `(tokens, width)`), since their token count depends
    on the input resolution; a grid not seen before gets a training-free anchor computed on first use when
    `recompute_missing` is set (training-free models; otherwise a clear error).

    Args:
        encoder (`ImageEncoder`): the base model's image encoder (frozen; shared, not copied).
        adapter (`AnchorAdapter`): where block 1's attention is in this backend.
        settings (`RAdaptSettings`): filter and coefficient settings.
    """

    def __init__(self, encoder: ImageEncoder, adapter: AnchorAdapter, settings: RAdaptSettings):
        super().__init__()
        attention = adapter.attention()
        if attention in _ADAPTED:
            raise ValueError("This model already carries an R-Adapt anchor: call `unload()` on the first RAdaptModel "
                             "before wrapping the base model again.")
        self.encoder = encoder
        self.adapter = adapter
        self.filter = (GaussianInputFilter(settings.d0, settings.d0_reference_size, settings.d0_scaling)
                       if settings.gaussian_filter else nn.Identity())
        self.attn_coef, self.anchor_coef = settings.coefficients
        self.anchors = nn.ParameterDict()
        self.recompute_missing = False
        self.adapter_enabled = True
        self._grid: Grid | None = None
        self._handle = attention.register_forward_hook(self._inject)
        _ADAPTED.add(attention)

    # the ImageEncoder interface
    @property
    def mean(self) -> torch.Tensor:
        return self.encoder.mean

    @property
    def std(self) -> torch.Tensor:
        return self.encoder.std

    @property
    def image_size(self) -> int:
        return self.encoder.image_size

    @property
    def tower(self) -> nn.Module:
        return self.encoder.tower

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder.normalize(pixels)

    # anchors
    @property
    def default_grid(self) -> Grid:
        return self.adapter.grid(self.image_size, self.image_size)

    def set_anchor(self, grid: Grid, anchor: torch.Tensor, trainable: bool = False) -> nn.Parameter:
        """Cache `anchor` `(tokens, width)` for inputs with patch grid `grid`."""
        if anchor.dim() != 2:
            raise ValueError(f"An anchor is (tokens, width); got shape {tuple(anchor.shape)}.")
        ref = next(self.encoder.parameters())
        p = nn.Parameter(anchor.detach().to(ref.device, torch.float32).clone(), requires_grad=trainable)
        self.anchors[grid_key(grid)] = p
        return p

    def anchor_for(self, grid: Grid) -> nn.Parameter:
        key = grid_key(grid)
        if key not in self.anchors:
            if not self.recompute_missing:
                have = ", ".join(self.anchors.keys()) or "none"
                raise KeyError(f"No R-Adapt anchor for patch grid {key} (cached: {have}) and this anchor cannot be "
                               "recomputed (model-guided / R-Adapt+): feed inputs at a cached resolution.")
            self.set_anchor(grid, block1_attention_output(self.encoder, self.adapter, grid))
        return self.anchors[key]

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Within the context, this encoder is the base encoder: no filter, no anchor."""
        prev, self.adapter_enabled = self.adapter_enabled, False
        try:
            yield
        finally:
            self.adapter_enabled = prev

    def _inject(self, module: nn.Module, args, output):
        if not self.adapter_enabled:
            return None
        n = self.adapter.num_tokens(output)
        key = grid_key(self._grid) if self._grid is not None else None
        anchor = self.anchors[key] if key in self.anchors else None
        if anchor is None or not self.adapter.fits(output, anchor):
            matches = [a for a in self.anchors.values() if self.adapter.fits(output, a)]
            if len(matches) != 1:
                raise RuntimeError(f"Block 1 sees {n} tokens but no single cached R-Adapt anchor has that many "
                                   f"(cached grids: {', '.join(self.anchors.keys()) or 'none'}): call the model "
                                   "through RAdaptModel.image_encoder, which picks the anchor for the input's grid.")
            anchor = matches[0]
        return self.adapter.mix(output, anchor, self.attn_coef, self.anchor_coef)

    def remove_hook(self) -> None:
        self._handle.remove()
        _ADAPTED.discard(self.adapter.attention())

    def prepare(self, pixels: torch.Tensor) -> torch.Tensor:
        """Select (or compute) the anchor for the input's patch grid and return the filtered [0, 1] pixels.

        `forward` runs the encoder on the result; an LVLM runs it through its own `pixel_inputs` instead.
        """
        if not self.adapter_enabled:
            return pixels
        grid = self.adapter.grid(pixels.shape[-2], pixels.shape[-1])
        self.anchor_for(grid)
        # kept after the call (not reset): a checkpointed block 1 recomputed in backward must pick the same anchor
        self._grid = grid
        return self.filter(pixels)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.prepare(pixels))


# -- the model -----------------------------------------------------------------------------------------------------

class RAdaptModel(VisionLanguageModel):
    """A frozen CLIP-like model with R-Adapt's Gaussian input filter and block-1 robustness anchor (arXiv 2603.12799).

    Every pretrained weight stays frozen; the only tensors R-Adapt adds are the anchors (one per patch grid), which
    R-Adapt+ trains. Text encoding, tokenisation and preprocessing are the base model's. Like PEFT's
    `get_peft_model`, wrapping adapts the base model *in place* (a hook on block 1's attention); use
    `with model.disable_adapter():` for the standard model and :meth:`unload` to get the base model back.

    Saving writes `radapt_config.json` (the base model's `create_model` id, paradigm, guide model, α and the two
    coefficients, filter settings, vlmrobust version) and `radapt_anchor.safetensors` (one `anchor.<grid>` tensor per
    patch grid); `create_model("radapt:<folder>")` reloads it by loading the base model and re-attaching both. Plain
    open_clip (or transformers) cannot load such a folder: the filter and the anchor injection change the forward
    pass and are not open_clip / transformers modules, and the folder holds no backbone weights, only the id to
    fetch them from.

    Use :meth:`training_free`, :meth:`model_guided`, `RAdaptTrainer` (R-Adapt+) or `create_model("radapt:...")`.

    Args:
        base (`VisionLanguageModel`): the backbone (open_clip, transformers CLIP, LLaVA or Qwen-VL; an LVLM gives an
            :class:`RAdaptLVLM`); frozen here.
        settings (`RAdaptSettings`, *optional*): filter, coefficients, provenance; `base_model` defaults to
            `base.name_or_path`.
        anchors (`Mapping[str, torch.Tensor]`, *optional*): grid key (`"16x16"`) -> anchor `(tokens, width)`. When
            omitted, the training-free anchor for the base resolution is computed.
    """

    backend = "radapt"

    def __new__(cls, base: VisionLanguageModel | None = None, *args, **kwargs):  # no args: copy / pickle
        if cls is RAdaptModel and isinstance(base, LVLM):
            cls = RAdaptLVLM  # answer_loss / generate / rank_answers with the filter in the pixel path
        return super().__new__(cls)

    def __init__(self, base: VisionLanguageModel, settings: RAdaptSettings | None = None,
                 anchors: Mapping[str, torch.Tensor] | None = None):
        nn.Module.__init__(self)  # not super(): RAdaptLVLM also derives from LVLM, whose __init__ takes the model
        if isinstance(base, RAdaptModel):
            raise TypeError("The base model is already an RAdaptModel.")
        settings = settings or RAdaptSettings()
        if not settings.base_model:
            settings.base_model = model_id(base)
        self.settings = settings
        self.base = base
        base.requires_grad_(False)
        self.image_size = base.image_size
        self.name_or_path = f"radapt({settings.paradigm}):{settings.base_model}"
        self.image_encoder = RAdaptImageEncoder(base.image_encoder, adapter_for(base), settings)
        enc = self.image_encoder
        enc.recompute_missing = settings.paradigm == "training-free"
        if anchors:
            for key, a in anchors.items():
                enc.set_anchor(tuple(int(g) for g in key.split("x")), a)
        elif settings.paradigm == "model-guided":
            raise ValueError("A model-guided R-Adapt model needs its anchors: use "
                             "RAdaptModel.model_guided(base, guide).")
        else:
            enc.set_anchor(enc.default_grid, block1_attention_output(enc.encoder, enc.adapter, enc.default_grid))

    # -- constructors -----------------------------------------------------------------------------------------------
    @classmethod
    def training_free(cls, base: VisionLanguageModel, **settings) -> RAdaptModel:
        """Anchor = block 1's attention output of `base` itself on a uniform white image.

        Args:
            base (`VisionLanguageModel`): the standard model.
            settings: fields of :class:`RAdaptSettings` (`alpha`, `d0`, `gaussian_filter`, ...).
        """
        return cls(base, RAdaptSettings(paradigm="training-free", **settings))

    @classmethod
    def model_guided(cls, base: VisionLanguageModel, guide: VisionLanguageModel,
                     grids: Sequence[Grid] | None = None, **settings) -> RAdaptModel:
        """Anchor = block 1's attention output of `guide` (e.g. a FARE checkpoint) on a white image, used in `base`.

        Args:
            base (`VisionLanguageModel`): the clean backbone that runs.
            guide (`VisionLanguageModel`): the checkpoint the anchor is read from (same tower architecture).
            grids (`Sequence[tuple]`, *optional*): patch grids to compute anchors for (default: `base`'s own); the
                guide is not kept, so other resolutions cannot be added later.
            settings: fields of :class:`RAdaptSettings`.
        """
        if isinstance(guide, RAdaptModel):
            raise TypeError("The guide must be a standard (e.g. FARE) model, not an RAdaptModel.")
        settings.setdefault("guide_model", model_id(guide))
        g_adapter = adapter_for(guide)
        b_adapter = adapter_for(base)
        grids = list(grids or [b_adapter.grid(base.image_size, base.image_size)])
        anchors = {}
        for grid in grids:
            anchor = block1_attention_output(guide.image_encoder, g_adapter, grid)
            own = block1_attention_output(base.image_encoder, b_adapter, grid)
            if anchor.shape != own.shape:
                raise ValueError(f"The guide's block-1 attention output has shape {tuple(anchor.shape)} but the base "
                                 f"model's has {tuple(own.shape)} (grid {grid_key(grid)}): the guide must share the "
                                 "base model's vision architecture.")
            anchors[grid_key(grid)] = anchor
        return cls(base, RAdaptSettings(paradigm="model-guided", **settings), anchors=anchors)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs) -> RAdaptModel:
        """Load a folder written by :meth:`save_pretrained` (`kwargs` go to the base model's loader)."""
        from safetensors.torch import load_file

        from .factory import create_model

        folder = Path(path)
        cfg_path = folder / RADAPT_CONFIG_NAME
        if not cfg_path.is_file():
            raise FileNotFoundError(f"'{folder}' has no {RADAPT_CONFIG_NAME}: not an R-Adapt folder written by "
                                    "RAdaptModel.save_pretrained.")
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("method") != "radapt":
            raise ValueError(f"{cfg_path} is not an R-Adapt config (method={cfg.get('method')!r}).")
        settings = RAdaptSettings.from_dict(cfg)
        tensors = load_file(folder / RADAPT_WEIGHTS_NAME, device="cpu")
        anchors = {k.removeprefix("anchor."): v for k, v in tensors.items() if k.startswith("anchor.")}
        if not anchors:
            raise ValueError(f"{folder / RADAPT_WEIGHTS_NAME} holds no 'anchor.<grid>' tensors.")
        model = cls(create_model(settings.base_model, **kwargs), settings, anchors=anchors)
        model.name_or_path = f"radapt:{path}"
        return model

    # -- adapter control -------------------------------------------------------------------------------------------
    def disable_adapter(self) -> contextlib.AbstractContextManager:
        """Context manager: the standard base model (no filter, no anchor) inside it."""
        return self.image_encoder.disable_adapter()

    def unload(self) -> VisionLanguageModel:
        """Remove the anchor hook and return the untouched base model (its weights never changed)."""
        self.image_encoder.remove_hook()
        return self.base

    def anchor(self, grid: Grid | None = None) -> nn.Parameter:
        """The anchor `(tokens, width)` for `grid` (default: the base resolution's)."""
        return self.image_encoder.anchor_for(grid or self.image_encoder.default_grid)

    # -- delegated to the base model --------------------------------------------------------------------------------
    @property
    def preprocess(self) -> Callable:
        return self.base.preprocess

    def tokenize(self, texts: Sequence[str]):
        return self.base.tokenize(texts)

    def encode_text(self, texts, normalize: bool = False) -> torch.Tensor:
        return self.base.encode_text(texts, normalize=normalize)

    @property
    def logit_scale(self) -> float:
        return self.base.logit_scale

    # -- saving -----------------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, anchors: Mapping[str, torch.Tensor] | None = None,
                        **extra_config) -> Path:
        """Write `radapt_config.json` + `radapt_anchor.safetensors` (anchors first, so a config never points at
        missing tensors).

        Args:
            save_directory (`str`): target folder (created).
            anchors (`Mapping[str, torch.Tensor]`, *optional*): grid key -> anchor to write instead of this model's
                own (a trainer passes the gathered ones under DeepSpeed ZeRO-3).
            extra_config: added to the JSON (e.g. the training config of R-Adapt+).
        """
        from ..utils.io import atomic_save_safetensors, atomic_write_json

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        anchors = dict(self.image_encoder.anchors.items()) if anchors is None else anchors
        tensors = {f"anchor.{k}": v.detach().float().cpu() for k, v in anchors.items()}
        atomic_save_safetensors(out / RADAPT_WEIGHTS_NAME, tensors, metadata={"format": "pt", "method": "radapt"})
        attn_coef, anchor_coef = self.settings.coefficients
        cfg = {"method": "radapt", "vlmrobust_version": __version__, **self.settings.to_dict(),
               "effective_attn_coef": attn_coef, "effective_anchor_coef": anchor_coef,
               "anchor_grids": list(anchors.keys()),
               "note": "Load with vlmrobust.create_model('radapt:<this folder>'); plain open_clip / transformers "
                       "cannot: the backbone weights are not here and R-Adapt changes the forward pass.",
               **extra_config}
        atomic_write_json(out / RADAPT_CONFIG_NAME, cfg)
        return out


class RAdaptLVLM(RAdaptModel, LVLM):
    """R-Adapt on a large vision-language model (LLaVA): `RAdaptModel(llava)` builds one of these.

    The LVLM protocol (`answer_loss`, `forward_logits`, `generate`, `rank_answers`, `build_batch`) is the base
    model's, run on the same frozen weights; only :meth:`pixel_inputs` differs: the [0, 1] pixels go through the
    Gaussian input filter (inside the differentiable graph, so attacks on the answer loss see it) and select the
    anchor for their patch grid before the backend's own normalisation. The anchor itself enters through the hook on
    block 1 of the tower inside the LVLM, so it acts in every forward pass of `model`, including `generate`.
    Saving and reloading are :class:`RAdaptModel`'s (`create_model("radapt:<folder>")`).
    """

    # the LVLM attributes, all the base model's (properties: nothing is registered twice)
    @property
    def model(self) -> nn.Module:
        return self.base.model

    @property
    def processor(self):
        return self.base.processor

    @property
    def image_token(self) -> str:
        return self.base.image_token

    @property
    def eot_token(self) -> str:
        return self.base.eot_token

    def num_image_tokens(self, height: int, width: int) -> int:
        return self.base.num_image_tokens(height, width)

    def extra_text_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.base.extra_text_inputs(input_ids)

    def pixel_inputs(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """[0, 1] pixels -> Gaussian input filter -> the base model's image kwargs, with the input's anchor selected."""
        return self.base.pixel_inputs(self.image_encoder.prepare(pixels))


def load_radapt(path: str, **kwargs) -> RAdaptModel:
    """`create_model("radapt:<folder>")`."""
    return RAdaptModel.from_pretrained(path, **kwargs)
