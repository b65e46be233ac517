"""R-Adapt's Gaussian input filter: a per-channel Fourier low-pass of the [0, 1] pixels (arXiv 2603.12799)."""

from __future__ import annotations

import torch
from torch import nn


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
