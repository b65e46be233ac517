"""The same numbers from the same seed on CPU whatever the thread count (and deterministic kernels on GPU).

On CPU, several kernels split their work by the number of intra-op threads, and the split changes the rounding
(measured with PyTorch 2.14 / MKL 2024.2 on an AVX-512 Xeon, 1 vs 2 / 3 / 4 / 8 threads):

* MKL's GEMM (every `Linear`, forward and backward; the weight gradient sums over batch × tokens) gives
  thread-count-dependent last bits unless MKL's strict conditional numerical reproducibility mode is on
  (`MKL_CBWR=AUTO,STRICT`; `COMPATIBLE` works too but is ~4x slower). MKL reads the variable once, at its first
  call: set later it is silently ignored (`configure_mkl_cbwr`, run when `vlmrobust` is imported).
* oneDNN's convolution weight gradient (the patch embedding of every ViT tower) differs at 4 threads; PyTorch's own
  convolution (im2col + MKL GEMM, `torch.backends.mkldnn.enabled = False`) does not.
* `LayerNorm`'s fused backward sums the γ / β gradients in one partial buffer per thread; the same layer written as
  `layer_norm(x) * γ + β` lets autograd reduce them over rows, which PyTorch does in a fixed order.
* Element-wise kernels whose vectorised and scalar code paths round differently (`sigmoid`, `silu`, tanh-`gelu`, so
  also QuickGELU) compute the elements at the ends of each thread's chunk with the scalar path; the chunk ends move
  with the thread count. Written with `exp` / `tanh` (vectorised on the whole tensor) and exact `+ * /` they do not.
* Full reductions of large tensors (`x.sum()` over ~1e6 elements: one partial sum per thread) differ too. Nothing in
  vlmrobust's training, attack or evaluation path reduces a large tensor to a scalar (losses reduce per sample first,
  `clip_grad_norm_` uses a per-tensor norm that does not depend on the thread count), so none is rewritten.

Scope: bitwise equality holds on machines with the same CPU instruction set (MKL's `AUTO` picks the code path per
CPU, and so does PyTorch's vectorisation); across CPU generations pin both (`MKL_CBWR=AVX2,STRICT`,
`ATEN_CPU_CAPABILITY=avx2`) — not tested here. Element-wise ops called functionally inside a model's own `forward`
(not as modules) are out of `make_thread_invariant`'s reach.
"""

from __future__ import annotations

import ctypes
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

#: MKL's strict conditional numerical reproducibility mode on the CPU's own code path
MKL_CBWR_STRICT = "AUTO,STRICT"
_MKL_CBWR_STRICT_BIT = 0x10000  # MKL_CBWR_STRICT in mkl_service.h
_MKL_CBWR_ALL = -1  # MKL_CBWR_ALL (~0)
_GELU_TANH_C = 0.7978845608028654  # sqrt(2 / pi)


def configure_mkl_cbwr() -> str:
    """Ask MKL for strict conditional numerical reproducibility unless the user chose a mode.

    Sets `MKL_CBWR=AUTO,STRICT` when `MKL_CBWR` is unset: matrix products then give the same bits for any number of
    threads, at no measurable speed cost. MKL reads the variable at its first call in the process (the first
    matrix product, even a tiny one), so this must run before any torch computation; importing `vlmrobust` does it.
    A user's own value (e.g. `MKL_CBWR=AUTO`, MKL's default behaviour) is left alone.

    Returns:
        `str`: the value of `MKL_CBWR` now in effect for MKL's first call.
    """
    return os.environ.setdefault("MKL_CBWR", MKL_CBWR_STRICT)


def mkl_cbwr_mode() -> int | None:
    """MKL's active reproducibility mode (`mkl_cbwr_get(MKL_CBWR_ALL)`), or `None` where it cannot be read.

    Reading it initialises MKL's mode for the process (as the first matrix product does), so call it only after
    `configure_mkl_cbwr`. The strict bit is `0x10000`; `AUTO,STRICT` reads `65538`.
    """
    if not torch.backends.mkl.is_available():
        return None
    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        get = lib.mkl_serv_cbwr_get  # MKL is linked statically into torch; this is mkl_cbwr_get's own symbol
    except (OSError, AttributeError):
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    return int(get(_MKL_CBWR_ALL))


def mkl_strict() -> bool | None:
    """True when MKL runs in a strict reproducibility mode, False when not, None when it cannot be read."""
    mode = mkl_cbwr_mode()
    if mode is None:
        return None
    return bool(mode & _MKL_CBWR_STRICT_BIT) or mode == 3  # 3 = MKL_CBWR_COMPATIBLE, strict by construction


# -- thread-invariant replacements of fused kernels -------------------------------------------------------------------
class ThreadInvariantLayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` as `layer_norm(x) * weight + bias`: the same parameters and state dict, and γ / β gradients
    summed over rows by autograd in a fixed order instead of in one partial buffer per thread."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x, self.normalized_shape, None, None, self.eps)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y


def thread_invariant_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """`sigmoid(x)` from `exp` of a non-positive argument and exact arithmetic (no overflow, so no inf / NaN in the
    gradient): `1 / (1 + e)` for x ≥ 0 and `e / (1 + e)` below, with `e = exp(-|x|)`."""
    pos = x >= 0
    e = torch.exp(torch.where(pos, -x, x))  # not -x.abs(): its gradient at 0 would be 0
    return torch.where(pos, 1 / (1 + e), e / (1 + e))


class ThreadInvariantSigmoidLinear(nn.Module):
    """`x · sigmoid(scale · x)` with `thread_invariant_sigmoid`: SiLU (`scale=1`) or QuickGELU (`scale=1.702`).

    Args:
        scale (`float`, *optional*, defaults to 1.0): slope inside the sigmoid.
    """

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * thread_invariant_sigmoid(x if self.scale == 1.0 else self.scale * x)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class ThreadInvariantSigmoid(nn.Module):
    """`sigmoid(x)` as `thread_invariant_sigmoid`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return thread_invariant_sigmoid(x)


class ThreadInvariantGELUTanh(nn.Module):
    """The tanh approximation of GELU, `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, from `tanh` and `+ * /`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1 + torch.tanh(_GELU_TANH_C * (x + 0.044715 * x * x * x)))


class ThreadInvariantPatchConv(nn.Module):
    """Mixin forward of a patch-embedding convolution (kernel = stride, no padding / dilation / groups) written as
    patchify + `linear`: one MKL matrix product (strict-reproducible) instead of oneDNN, whose weight gradient
    depends on the thread count. Swapped in by class (`ThreadInvariantConv2d`, `ThreadInvariantConv3d`) so the
    parameters and state dict stay those of the original `nn.Conv2d` / `nn.Conv3d`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        n = len(k)
        out = [s // kk for s, kk in zip(x.shape[-n:], k)]
        x = x[(..., *(slice(0, o * kk) for o, kk in zip(out, k)))]  # conv drops a partial patch at the edge
        split = [d for o, kk in zip(out, k) for d in (o, kk)]
        x = x.reshape(*x.shape[:-n], *split)  # (B, C, o1, k1, o2, k2, ...)
        lead = x.dim() - 1 - 2 * n  # batch dims (1, or 0 for an unbatched input)
        order = [*range(lead), *range(lead + 1, x.dim(), 2), lead, *range(lead + 2, x.dim(), 2)]
        patches = x.permute(order).flatten(lead + n)  # (B, o1, o2, ..., C·k1·k2...)
        y = F.linear(patches, self.weight.flatten(1), self.bias)  # (B, o1, ..., O)
        return y.movedim(-1, lead).contiguous()


class ThreadInvariantConv2d(ThreadInvariantPatchConv, nn.Conv2d):
    """`nn.Conv2d` patch embedding as patchify + `linear` (see `ThreadInvariantPatchConv`)."""


class ThreadInvariantConv3d(ThreadInvariantPatchConv, nn.Conv3d):
    """`nn.Conv3d` patch embedding (Qwen-VL's temporal patches) as patchify + `linear`."""


def _is_patch_conv(m: nn.Module) -> bool:
    """A convolution that cuts its input into disjoint patches: kernel = stride, no padding, dilation or groups."""
    no_pad = m.padding == "valid" or (not isinstance(m.padding, str) and all(p == 0 for p in m.padding))
    return no_pad and tuple(m.stride) == tuple(m.kernel_size) and all(d == 1 for d in m.dilation) and m.groups == 1


_PATCH_CONVS = {nn.Conv2d: ThreadInvariantConv2d, nn.Conv3d: ThreadInvariantConv3d}


#: activation module class names (torch and transformers) -> their thread-invariant replacement
_ACTIVATIONS = {
    "SiLU": lambda m: ThreadInvariantSigmoidLinear(1.0),
    "SiLUActivation": lambda m: ThreadInvariantSigmoidLinear(1.0),
    "QuickGELUActivation": lambda m: ThreadInvariantSigmoidLinear(1.702),
    "Sigmoid": lambda m: ThreadInvariantSigmoid(),
    "GELUTanh": lambda m: ThreadInvariantGELUTanh(),
    "PytorchGELUTanh": lambda m: ThreadInvariantGELUTanh(),
    "GELU": lambda m: ThreadInvariantGELUTanh() if getattr(m, "approximate", "none") == "tanh" else None,
}


def make_thread_invariant(model: nn.Module) -> int:
    """Swap, in place, the modules whose fused CPU kernels depend on the thread count for equivalent ones that do not.

    `nn.LayerNorm` becomes `ThreadInvariantLayerNorm` and patch-embedding convolutions (kernel = stride) become
    patchify + `linear` (`ThreadInvariantConv2d` / `ThreadInvariantConv3d`), by class swap: same parameters and state
    dict keys, so checkpoints save and load unchanged. SiLU, QuickGELU, sigmoid and tanh-GELU activation modules
    become compositions of `exp` / `tanh` and exact arithmetic. Outputs agree with the originals to float32 rounding
    (~1e-6 relative). Erf-GELU, ReLU, RMSNorm (plain torch ops in transformers), softmax and attention are
    thread-invariant already and stay. Idempotent.

    Args:
        model (`nn.Module`): any module (an LVLM, its tower, a CLIP); modified in place.

    Returns:
        `int`: the number of modules swapped.
    """
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            cls = type(child)
            if cls is nn.LayerNorm:
                child.__class__ = ThreadInvariantLayerNorm
            elif cls in _PATCH_CONVS and _is_patch_conv(child):
                child.__class__ = _PATCH_CONVS[cls]
            elif (make := _ACTIVATIONS.get(cls.__name__)) is not None and (new := make(child)) is not None:
                setattr(parent, name, new)
            else:
                continue
            swapped += 1
    return swapped


def _other_convs(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.modules.conv._ConvNd) and not isinstance(m, ThreadInvariantPatchConv)]


def enable_determinism(model: nn.Module | None = None, *, warn: bool = True) -> dict:
    """Make this process's runs reproducible: on CPU independent of the thread count, on GPU run to run.

    What it does:

    * checks that MKL runs in strict reproducibility mode (`MKL_CBWR=AUTO,STRICT`, set when `vlmrobust` is imported,
      see `configure_mkl_cbwr`) and warns when it does not (set too late, or the user chose another mode);
    * with `model`, `make_thread_invariant(model)`; if the model still has convolutions other than patch
      embeddings, turns oneDNN off for the process (`torch.backends.mkldnn.enabled = False`: PyTorch's own
      im2col + GEMM convolution, thread-invariant but slower);
    * `torch.use_deterministic_algorithms(True, warn_only=True)` and `CUBLAS_WORKSPACE_CONFIG=:4096:8` (if unset),
      for the rest of the process: deterministic GPU kernels where PyTorch has them, a warning naming any op that
      has none.

    Call it again on every model built later in the process (e.g. a checkpoint reloaded for evaluation). Seeds are
    the caller's business (`transformers.set_seed`).

    Args:
        model (`nn.Module`, *optional*): a model to make thread-invariant in place.
        warn (`bool`, *optional*, defaults to `True`): warn when MKL's strict mode is not active.

    Returns:
        `dict`: `{"mkl_cbwr": value of MKL_CBWR, "mkl_strict": bool | None, "modules_swapped": int,
        "onednn": bool}`.
    """
    configure_mkl_cbwr()
    strict = mkl_strict()
    if warn and strict is False:
        warnings.warn(
            f"MKL is not in strict reproducibility mode (MKL_CBWR={os.environ.get('MKL_CBWR')!r}, active mode "
            f"{mkl_cbwr_mode()}): matrix products depend on the thread count. Export MKL_CBWR=AUTO,STRICT before "
            "starting Python, or import vlmrobust before any torch computation.", RuntimeWarning, stacklevel=2)
    swapped = 0
    if model is not None:
        swapped = make_thread_invariant(model)
        if _other_convs(model):
            torch.backends.mkldnn.enabled = False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    return {"mkl_cbwr": os.environ.get("MKL_CBWR"), "mkl_strict": strict, "modules_swapped": swapped,
            "onednn": torch.backends.mkldnn.enabled}
