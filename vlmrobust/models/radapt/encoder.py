"""The wrapped image encoder: [0, 1] pixels -> Gaussian input filter -> frozen base encoder with the anchor mixed
into block 1."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch
from torch import nn

from ..base import ImageEncoder
from .adapters import AnchorAdapter, Grid, block1_attention_output, grid_key
from .filter import GaussianInputFilter
from .settings import RAdaptSettings

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
