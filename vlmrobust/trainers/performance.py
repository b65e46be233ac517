"""The fast paths of the robust training step, as config: on by default on a CUDA GPU, off (plain fp32) on the CPU.

One FARE step is ~24 forward-equivalents per image, 20 of them in the inner attack, so the attack is where speed
comes from (../shared/docs/performance.md). The paths, each a `RobustTrainingArguments` field whose default `"auto"` /
`None` resolves here:

- `precision` (`"auto"` → `"bf16"` on a CUDA GPU with bf16, without DeepSpeed; else `"fp32"`): bf16 autocast
  around the whole training step (frozen target, every attack iteration, the training forward). The perturbation δ,
  its sign / L2 step and its projection onto the ε-ball and the [0, 1] box stay fp32 (autocast leaves element-wise
  ops alone and the attacks keep δ fp32), and the losses are taken in fp32.
- `compile_encoder` (`None` → on for CLIP backends on a CUDA GPU): `torch.compile` of the trained image encoder and
  of the frozen target encoder in place (`nn.Module.compile`, so state-dict keys and checkpoints do not change).
  During the attack the encoder's parameters are frozen, so the compiled input-gradient graph computes no weight
  gradients (eager autograd prunes them anyway).
- `fused_optimizer` (`None` → on a CUDA GPU; elsewhere HF's default): `optim="adamw_torch_fused"` when the
  optimizer is plain AdamW; `False` asks for the unfused one. Resolved to whether the optimizer is fused AdamW.
- `fast_dataloader` (`None` → on a CUDA GPU): DataLoader workers (`min(4, cpus // 2)` when 0 were asked for),
  persistent workers, pinned memory, and no per-step NaN check of the loss (HF's `logging_nan_inf_filter`, a host
  sync every step).

Attention: open_clip's towers run `nn.MultiheadAttention` with `need_weights=False`, which calls
`scaled_dot_product_attention`; transformers models (hf-clip, LLaVA, Qwen-VL) load with `attn_implementation="sdpa"`
by default. `attention_implementation` reports which one a module uses.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
#: backends whose encoders `compile_encoder=None` compiles on a GPU (tested); LVLM towers stay eager unless asked
COMPILE_BY_DEFAULT = ("open_clip", "hf-clip")


def cuda_target(args) -> bool:
    """True when the run will train on a CUDA GPU (CUDA is there and the config does not ask for the CPU)."""
    return bool(torch.cuda.is_available() and not getattr(args, "use_cpu", False))


def fast_defaults(on_cuda: bool, *, deepspeed: bool = False, bf16_supported: bool = True) -> dict:
    """What the `"auto"` / `None` settings resolve to: `{"precision", "fused_optimizer", "fast_dataloader"}`."""
    return {"precision": "bf16" if on_cuda and bf16_supported and not deepspeed else "fp32",
            "fused_optimizer": on_cuda, "fast_dataloader": on_cuda}


def resolve_fast_paths(args) -> None:
    """Resolve the auto settings of `args` in place (called by `RobustTrainingArguments.__post_init__` before the
    `TrainingArguments` checks). Explicit settings win; `precision="fp32"` with `bf16=True` is refused."""
    if args.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {args.precision!r}.")
    on_cuda = cuda_target(args)
    bf16_ok = on_cuda and torch.cuda.is_bf16_supported()
    auto = fast_defaults(on_cuda, deepspeed=bool(args.deepspeed), bf16_supported=bf16_ok)
    if args.precision == "fp32" and (args.bf16 or args.fp16):
        raise ValueError("precision='fp32' contradicts bf16=True / fp16=True; drop one of them.")
    if args.precision == "auto":
        args.precision = "bf16" if args.bf16 else ("fp16" if args.fp16 else auto["precision"])
    if args.precision == "bf16":
        args.bf16 = True
    elif args.precision == "fp16":
        args.fp16 = True
    optim = str(getattr(args.optim, "value", args.optim))
    wanted = auto["fused_optimizer"] if args.fused_optimizer is None else args.fused_optimizer
    if wanted and optim == "adamw_torch":
        args.optim = "adamw_torch_fused"
    elif args.fused_optimizer is False and optim == "adamw_torch_fused":
        args.optim = "adamw_torch"
    # (None on the CPU keeps HF's own default, fused AdamW in recent transformers: it has a CPU kernel)
    args.fused_optimizer = str(getattr(args.optim, "value", args.optim)) == "adamw_torch_fused"
    if args.fast_dataloader is None:
        args.fast_dataloader = auto["fast_dataloader"]
    if args.fast_dataloader:
        if args.dataloader_num_workers == 0:
            args.dataloader_num_workers = min(4, max(1, (os.cpu_count() or 2) // 2))
        args.dataloader_persistent_workers = True
        args.dataloader_pin_memory = True
        args.logging_nan_inf_filter = False
    if args.compile_mode is not None and args.compile_encoder is None:
        args.compile_encoder = True


def take_over_hf_compile(args) -> None:
    """`torch_compile=True` (HF's flag) compiles the *wrapped* model, which the attack never calls (it runs on the
    unwrapped module): turn it into `compile_encoder`, which compiles the encoder itself, every caller included."""
    if args.torch_compile:
        args.compile_encoder = True
        args.compile_mode = args.compile_mode or args.torch_compile_mode
        args.torch_compile = False
        args.torch_compile_mode = args.torch_compile_backend = None
        os.environ.pop("ACCELERATE_DYNAMO_BACKEND", None)
        os.environ.pop("ACCELERATE_DYNAMO_MODE", None)


def wants_compile(args, backend: str | None) -> bool:
    """Whether the trainer compiles the encoder: the explicit setting, else on a GPU for CLIP backends."""
    if args.compile_encoder is not None:
        return bool(args.compile_encoder)
    return cuda_target(args) and backend in COMPILE_BY_DEFAULT and not args.deepspeed


def compile_in_place(module: nn.Module, mode: str | None = None) -> nn.Module:
    """`module.compile(mode=...)`: compiles its forward in place (parameters and state-dict keys unchanged)."""
    module.compile(mode=mode)
    return module


def autocast_context(args, device: torch.device | str):
    """bf16 autocast on `device` when `args.bf16` (the training step's precision), else a no-op context."""
    if not getattr(args, "bf16", False):
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


@contextlib.contextmanager
def frozen_parameters(module: nn.Module | None) -> Iterator[None]:
    """Set `requires_grad=False` on `module`'s trainable parameters for the duration, and restore them.

    The attack wants gradients w.r.t. δ only: eager autograd prunes the weight gradients, but a compiled graph's
    backward computes every gradient its inputs require, so the parameters are frozen while it runs.
    """
    if module is None:
        yield
        return
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def attention_implementation(module: nn.Module) -> str:
    """Which attention a module's transformer uses: `"sdpa"` (`scaled_dot_product_attention`), an HF
    `attn_implementation` name, or `"unknown"`."""
    for m in module.modules():
        cfg = getattr(m, "config", None)
        impl = getattr(cfg, "_attn_implementation", None)
        if impl:
            return str(impl)
    for m in module.modules():
        if isinstance(m, nn.MultiheadAttention):
            return "sdpa"  # F.multi_head_attention_forward with need_weights=False calls scaled_dot_product_attention
    return "unknown"
