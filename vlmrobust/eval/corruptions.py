"""Common corruptions (ImageNet-C style; Hendrycks & Dietterich 2019, arXiv 1903.12261) with seeded noise.

Corruptions come from `imagecorruptions-imaug` (`pip install "vlmrobust[corruptions]"`). They are applied to the
[0, 1] image *at the model's input resolution* (ImageNet-C likewise corrupted 224 px centre crops), as uint8, so a
model sees exactly what it would see on a stored corrupted copy. Every image gets its own numpy seed derived from
(seed, image index, corruption, severity), inside a context that restores numpy's global RNG afterwards, so results
do not depend on batch size, worker count or evaluation order.

Two quirks of the package are handled here: `glass_blur` and `impulse_noise` ignore the global numpy seed and take a
`seed=` argument instead (without it they are non-deterministic), and `frost` reads one of six overlay pictures
from the package; should an install lack some of them, `frost` draws among those present (see `_frost_seed`).
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

#: The 15 ImageNet-C benchmark corruptions, in the paper's order (noise, blur, weather, digital).
COMMON_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
#: The 4 extra ("validation") corruptions of the package; no published AlexNet reference, so no CE for them.
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS: tuple[str, ...] = COMMON_CORRUPTIONS + EXTRA_CORRUPTIONS

#: AlexNet top-1 error on ImageNet-C per corruption and severity 1..5 (Hendrycks & Dietterich 2019, arXiv
#: 1903.12261, the normalisers of mCE; the same numbers as in the authors' `ImageNet-C/test.py` and timm's
#: `imagenetc_alexnet_error_rates_list`). The mean over severities gives the familiar per-corruption values
#: (gaussian_noise 0.886428, ...).
ALEXNET_IMAGENET_C_ERRORS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.69528, 0.82542, 0.93554, 0.98138, 0.99452),
    "shot_noise": (0.71224, 0.85108, 0.93574, 0.98182, 0.99146),
    "impulse_noise": (0.78374, 0.89808, 0.9487, 0.9872, 0.99548),
    "defocus_blur": (0.65624, 0.73202, 0.85036, 0.91364, 0.94714),
    "glass_blur": (0.64308, 0.75054, 0.88806, 0.91622, 0.93344),
    "motion_blur": (0.5843, 0.70048, 0.82108, 0.8975, 0.92638),
    "zoom_blur": (0.70008, 0.76992, 0.80784, 0.84198, 0.87198),
    "snow": (0.71726, 0.88392, 0.86468, 0.9187, 0.94952),
    "frost": (0.6139, 0.79734, 0.8879, 0.89942, 0.9343),
    "fog": (0.67474, 0.7605, 0.84378, 0.8726, 0.945),
    "brightness": (0.4514, 0.48502, 0.54048, 0.62166, 0.7244),
    "contrast": (0.64548, 0.7615, 0.88874, 0.9776, 0.9927),
    "elastic_transform": (0.52596, 0.70116, 0.55686, 0.64076, 0.80554),
    "pixelate": (0.52218, 0.5462, 0.73728, 0.87092, 0.91262),
    "jpeg_compression": (0.51002, 0.54718, 0.57294, 0.65458, 0.74778),
}
ALEXNET_SOURCE = "AlexNet ImageNet-C top-1 errors, Hendrycks & Dietterich 2019 (arXiv 1903.12261)"

_SEED_KWARG = ("glass_blur", "impulse_noise")


def _require_imagecorruptions():
    try:
        import imagecorruptions
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Common corruptions need the imagecorruptions-imaug package: pip install \"vlmrobust[corruptions]\" "
            "(or pip install imagecorruptions-imaug)."
        ) from err
    return imagecorruptions


def corruption_seed(seed: int, index: int, corruption: str, severity: int) -> int:
    """A 32-bit seed that depends only on (seed, image index, corruption, severity)."""
    h = hashlib.sha256(f"{seed}|{index}|{corruption}|{severity}".encode()).digest()
    return int.from_bytes(h[:4], "little")


@contextlib.contextmanager
def numpy_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG for the block and restore the caller's state afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _installed_frost_overlays() -> int:
    """How many of the package's 6 frost pictures are installed (they are drawn by np.random.randint(6))."""
    from importlib import resources

    root = resources.files("imagecorruptions") / "frost"
    names = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg"]
    present = [(root / n).is_file() for n in names]
    # frost picks index randint(6); only a prefix of present files can be used safely
    k = 0
    while k < 6 and present[k]:
        k += 1
    return k


def _frost_seed(seed: int) -> int:
    """A seed whose first `randint(6)` draw picks an installed frost overlay.

    `frost` reads overlay `np.random.randint(6)`; an install lacking frost4-6 would crash on half the images. Walking
    the seed forward until the draw lands on an installed overlay keeps the result deterministic and the overlay
    uniform among the installed ones; with all six installed the seed is unchanged.
    """
    k = _installed_frost_overlays()
    if k == 0:
        raise RuntimeError("imagecorruptions is installed without its frost overlay pictures; drop 'frost'.")
    s = seed
    while k < 6 and np.random.RandomState(s).randint(6) >= k:
        s = (s + 1) % (2**32)
    return s


def corrupt_image(image: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """Corrupt one uint8 HxWx3 image (H, W >= 32) deterministically for `seed`."""
    ic = _require_imagecorruptions()
    kwargs = {"seed": seed} if corruption in _SEED_KWARG else {}
    if corruption == "frost":
        seed = _frost_seed(seed)
    # spatter divides by a zero maximum on some seeds (the package's own NaN, cast to 0); keep the log readable
    with numpy_seed(seed), np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return ic.corrupt(image, corruption_name=corruption, severity=int(severity), **kwargs)


def corrupt_tensor(pixels: torch.Tensor, corruption: str, severity: int, seed: int, min_size: int = 32) -> torch.Tensor:
    """Corrupt a `[3, H, W]` image in [0, 1]; returns the same shape in [0, 1] (quantised to 8 bits).

    Images smaller than `min_size` are upsampled (nearest, by an integer factor) before corrupting and brought back
    by averaging, because the package needs at least 32 px; the corruption then acts on the upsampled grid.
    """
    if pixels.dim() != 3 or pixels.shape[0] not in (1, 3):
        raise ValueError(f"corrupt_tensor expects one [3, H, W] image, got {tuple(pixels.shape)}.")
    x = pixels.detach().float().cpu().clamp(0, 1)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    h, w = x.shape[-2:]
    factor = max(1, -(-min_size // min(h, w)))
    if factor > 1:
        x = F.interpolate(x[None], scale_factor=factor, mode="nearest")[0]
    img = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    out = corrupt_image(np.ascontiguousarray(img), corruption, severity, seed)
    y = torch.from_numpy(np.asarray(out, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    if y.shape[-2:] != x.shape[-2:]:  # a few corruptions may return a different size; match the input grid
        y = F.interpolate(y[None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
    if factor > 1:
        y = F.avg_pool2d(y[None], factor)[0]
    return y.clamp(0, 1)


class CorruptedDataset(Dataset):
    """Wraps a dataset of `{"pixel_values", "labels"}` items and corrupts each image deterministically.

    Args:
        base (`Dataset`): items with `pixel_values` `[3, H, W]` in [0, 1] and `labels`.
        corruption (`str`): an imagecorruptions name.
        severity (`int`): 1..5.
        seed (`int`, *optional*, defaults to 0): seed of the corruption noise.
        indices (`Sequence[int]`, *optional*): positions of `base` to serve (their index also seeds the noise).
        min_size (`int`, *optional*, defaults to 32): see `corrupt_tensor`.
    """

    def __init__(self, base: Dataset, corruption: str, severity: int, *, seed: int = 0,
                 indices: Sequence[int] | None = None, min_size: int = 32):
        if corruption not in ALL_CORRUPTIONS:
            raise ValueError(f"Unknown corruption {corruption!r}; known: {', '.join(ALL_CORRUPTIONS)}.")
        if severity not in (1, 2, 3, 4, 5):
            raise ValueError(f"severity must be in 1..5, got {severity}.")
        self.base, self.corruption, self.severity = base, corruption, int(severity)
        self.seed, self.min_size = int(seed), int(min_size)
        self.indices = list(range(len(base))) if indices is None else [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        idx = self.indices[i]
        item = self.base[idx]
        seed = corruption_seed(self.seed, idx, self.corruption, self.severity)
        pixels = corrupt_tensor(torch.as_tensor(item["pixel_values"]), self.corruption, self.severity, seed,
                                self.min_size)
        return {"pixel_values": pixels, "labels": int(item["labels"])}


def corruption_errors(acc: dict[str, dict[int, float]], reference: dict[str, Sequence[float]] | None = None) -> dict:
    """Mean corruption accuracy, per-corruption CE and mCE from accuracies `acc[corruption][severity]`.

    CE_c = Σ_s err_{c,s} / Σ_s ref_{c,s} over the severities present (Hendrycks & Dietterich 2019); mCE is the mean
    CE over the corruptions that have a reference. Without a reference, `mce` is None and `mean_error` (the
    unnormalised mean error over all cells) is what is reported.

    Returns:
        `dict` with `mean_accuracy`, `mean_error`, `accuracy_by_type`, `accuracy_by_severity`, `ce` (per type),
        `mce`, `mce_types` (which types entered mCE).
    """
    cells = [(c, s, a) for c, by_s in acc.items() for s, a in by_s.items()]
    if not cells:
        return {}
    mean_acc = float(np.mean([a for _, _, a in cells]))
    by_type = {c: float(np.mean(list(by_s.values()))) for c, by_s in acc.items()}
    sev = sorted({s for _, s, _ in cells})
    by_sev = {s: float(np.mean([a for _, s2, a in cells if s2 == s])) for s in sev}
    ce: dict[str, float] = {}
    if reference:
        for c, by_s in acc.items():
            ref = reference.get(c)
            if ref is None:
                continue
            num = sum(1 - by_s[s] for s in by_s)
            den = sum(ref[s - 1] for s in by_s)
            if den > 0:
                ce[c] = num / den
    return {
        "mean_accuracy": mean_acc, "mean_error": 1 - mean_acc, "accuracy_by_type": by_type,
        "accuracy_by_severity": by_sev, "ce": ce, "mce": float(np.mean(list(ce.values()))) if ce else None,
        "mce_types": sorted(ce),
    }


__all__ = [
    "ALEXNET_IMAGENET_C_ERRORS", "ALEXNET_SOURCE", "ALL_CORRUPTIONS", "COMMON_CORRUPTIONS", "CorruptedDataset",
    "EXTRA_CORRUPTIONS", "corrupt_image", "corrupt_tensor", "corruption_errors", "corruption_seed", "numpy_seed",
]
