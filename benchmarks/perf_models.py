"""Models, data and plain-PyTorch twins for `benchmarks/perf_check.py` (random weights, built from config, offline).

The plain twins are the same maths as a method's step written in a few lines of plain fp32 PyTorch (eager, no
autocast, no compile, plain `torch.optim.AdamW`): the yardstick each toolkit step is divided by. A method with no
twin here (e.g. a newly registered one) is still benchmarked through its trainer; add its twin to `PLAIN_STEPS`.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from vlmrobust.trainers import fare_distance

#: dense bf16 tensor-core peak (TFLOP/s, no sparsity) of the cards MFU is reported against
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def card_peak(name: str) -> tuple[str | None, float | None]:
    """(`"H100 dense bf16"`, 989.0) for a CUDA device name; (None, None) when the card is not in the table."""
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key in name:
            return f"{key} dense bf16", PEAK_BF16_TFLOPS[key]
    return None, None


class SyntheticImages(torch.utils.data.Dataset):
    """`n` items cycling over a few random [0, 1] images (labels and class names for supervised methods)."""

    def __init__(self, n: int, size: int, distinct: int = 64, num_classes: int = 10, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(min(distinct, n), 3, size, size, generator=g)
        self.labels = torch.randint(0, num_classes, (len(self.images),), generator=g)
        self.n = n
        self.classnames = [f"class {i}" for i in range(num_classes)]
        self.templates = ["a photo of a {}."]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        j = i % len(self.images)
        return {"pixel_values": self.images[j], "labels": int(self.labels[j])}


# -- models -----------------------------------------------------------------------------------------------------
def clip_model(arch: str, device: torch.device):
    """open_clip `arch` with random weights ("tiny": vlmrobust's tiny test CLIP, 32 px)."""
    from vlmrobust.models import create_model

    if arch == "tiny":
        import tempfile

        from vlmrobust.testing import build_tiny_open_clip

        path = build_tiny_open_clip(tempfile.mkdtemp(), image_size=32, patch_size=4, width=64)
        return create_model(f"local-dir:{path}", device=device)
    return create_model(f"open_clip:{arch}", device=device)


def llava_tower(smoke: bool, device: torch.device, dtype: torch.dtype):
    """LLaVA-1.5-7B's vision tower (CLIP ViT-L/14 at 336 px, from its config) inside a vlmrobust `Llava` whose
    language model is tiny (a FARE step never runs it); `smoke`: the tiny test LLaVA."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from vlmrobust.models.llava_backend import Llava
    from vlmrobust.testing.tiny_llava import make_tiny_llava

    size, patch = (32, 8) if smoke else (336, 14)
    model, processor = make_tiny_llava(image_size=size, patch_size=patch)
    if not smoke:
        vcfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768,
                                hidden_act="quick_gelu", layer_norm_eps=1e-5)
        with torch.device(device):
            model.model.vision_tower = CLIPVisionModel(vcfg)
        model.config.vision_config = vcfg
    model = model.to(device=device, dtype=dtype)
    return Llava(model, processor, "LLaVA-1.5-7B vision tower (random weights from config)")


def qwen_tower(smoke: bool, device: torch.device, dtype: torch.dtype):
    """Qwen2.5-VL-3B's vision tower (from its config, 448 px) inside a vlmrobust `QwenVL` with a tiny language
    model; `smoke`: the tiny test Qwen2.5-VL."""
    from vlmrobust.models.qwen_vl_backend import QwenVL
    from vlmrobust.testing.tiny_qwen import make_tiny_qwen2_5_vl

    size = 56 if smoke else 448
    model, processor = make_tiny_qwen2_5_vl(image_size=size)
    if not smoke:
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
            Qwen2_5_VisionTransformerPretrainedModel,
            Qwen2_5_VLVisionConfig,
        )

        vcfg = Qwen2_5_VLVisionConfig(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                                      out_hidden_size=2048, patch_size=14, spatial_merge_size=2,
                                      temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
                                      hidden_act="silu", in_channels=3)
        vcfg._attn_implementation = "sdpa"
        with torch.device(device):
            model.model.visual = Qwen2_5_VisionTransformerPretrainedModel._from_config(vcfg)
        model.config.vision_config = vcfg
    model = model.to(device=device, dtype=dtype)
    return QwenVL(model, processor, "Qwen2.5-VL-3B vision tower (random weights from config)", default_size=size)


# -- FLOPs and memory -------------------------------------------------------------------------------------------
def count_flops(fn) -> int:
    """FLOPs of `fn()` (forward and backward ops alike), counted by `torch.utils.flop_counter`."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process-wide max RSS (KiB -> GiB)


# -- plain fp32 twins -------------------------------------------------------------------------------------------
def _pgd(forward, loss_fn, x, target, eps, alpha, steps, gen):
    delta = (torch.rand(x.shape, generator=gen, device=x.device) * 2 - 1) * eps
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        (g,) = torch.autograd.grad(loss_fn(forward(x + delta), target).sum(), delta)
        delta = (delta.detach() + alpha * g.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def plain_fare(model, batch_fn, steps, warmup, device, attack_steps=10):
    """FARE in plain fp32 PyTorch: frozen copy's clean target, PGD (sign steps, random start), AdamW step."""
    enc = model.image_encoder.float().train()
    ref = copy.deepcopy(enc).eval().requires_grad_(False)
    opt = torch.optim.AdamW([p for p in enc.parameters() if p.requires_grad], lr=1e-5, weight_decay=1e-4)
    gen = torch.Generator(device=device).manual_seed(0)

    def step(x, _y):
        with torch.no_grad():
            target = ref(x)
        enc.eval()
        enc.requires_grad_(False)
        x_adv = _pgd(enc, fare_distance, x, target, 4 / 255, 1 / 255, attack_steps, gen)
        enc.requires_grad_(True)
        enc.train()
        loss = fare_distance(enc(x_adv), target).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(enc.parameters(), 1.0)  # HF's default max_grad_norm, as the trainer does
        opt.step()

    return time_steps(step, batch_fn, steps, warmup, device)


def plain_tecoa(model, batch_fn, steps, warmup, device, attack_steps=10, classnames=None):
    """TeCoA in plain fp32 PyTorch: CE of `100 · cos(φ(x+δ), t_c)` against frozen text embeddings."""
    enc = model.image_encoder.float().train()
    with torch.no_grad():
        text = model.class_embeddings(list(classnames), ["This is a photo of a {}"]).float().to(device)
    opt = torch.optim.AdamW([p for p in enc.parameters() if p.requires_grad], lr=1e-5, weight_decay=1e-4)
    gen = torch.Generator(device=device).manual_seed(0)

    def logits(z):
        return 100.0 * F.normalize(enc(z).float(), dim=-1) @ text.T

    def step(x, y):
        enc.eval()
        enc.requires_grad_(False)
        x_adv = _pgd(logits, lambda o, t: F.cross_entropy(o, t, reduction="none"), x, y, 4 / 255, 1 / 255,
                     attack_steps, gen)
        enc.requires_grad_(True)
        enc.train()
        loss = F.cross_entropy(logits(x_adv), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(enc.parameters(), 1.0)
        opt.step()

    return time_steps(step, batch_fn, steps, warmup, device)


PLAIN_STEPS = {"fare": plain_fare, "tecoa": plain_tecoa}


def time_steps(step, batch_fn, steps, warmup, device) -> dict:
    """Median seconds per step of `step(x, y)` over `steps` timed calls after `warmup` untimed ones."""
    times = []
    for i in range(warmup + steps):
        x, y = batch_fn()
        sync(device)
        if i == warmup:
            reset_peak(device)
        t = time.perf_counter()
        step(x, y)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    times.sort()
    return {"step_s": times[len(times) // 2], "step_times_s": [round(t, 5) for t in times],
            "peak_mem_gib": round(peak_memory_gib(device), 3)}
