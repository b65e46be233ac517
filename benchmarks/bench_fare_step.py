"""Throughput and memory of one FARE training step (PGD-10, ε = 4/255), vlmrobust vs a plain fp32 PyTorch step.

    python benchmarks/bench_fare_step.py                      # tiny CLIP on CPU
    python benchmarks/bench_fare_step.py --models ViT-B-32 ViT-L-14 --batch-size 128 --bf16   # on a GPU

Random weights, synthetic 224 px batches (the tiny model uses its own 32 px). Reports images/s (each training
image counted once), model FLOP utilisation against `--peak-tflops` (H100 dense bf16: 989), and peak memory, and
writes `benchmarks/results/fare_step_<device>.json`. Cost model (../shared/docs/performance.md): one FARE step is
~24 forward-equivalents per image (frozen target 1, PGD 10 × (forward + input backward) 20, train fwd+bwd 3).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from vlmrobust import __version__, create_model
from vlmrobust.trainers import FAREConfig, FARETrainer
from vlmrobust.utils.io import atomic_write_json

FWD_EQUIV_PER_IMAGE = 24


class SyntheticImages(torch.utils.data.Dataset):
    def __init__(self, n, size):
        self.x = torch.rand(n, 3, size, size)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i]}


def forward_flops(encoder, size, device):
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, size, size, device=device)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        encoder(x)
    return fc.get_total_flops()


def peak_memory_gib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB -> GiB (process-wide)


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_vlmrobust(model_id, batch, steps, warmup, bf16, device):
    model = create_model(model_id)
    size = model.image_size
    ds = SyntheticImages(batch * (steps + warmup), size)
    with tempfile.TemporaryDirectory() as out:
        args = FAREConfig(output_dir=out, max_steps=steps + warmup, per_device_train_batch_size=batch,
                          learning_rate=1e-5, warmup_steps=0, epsilon=4 / 255, attack_steps=10,
                          attack_step_size=1 / 255, save_strategy="no", logging_steps=10**9, bf16=bf16,
                          use_cpu=device.type == "cpu", disable_tqdm=True, report_to="none",
                          dataloader_num_workers=0, log_clean_loss=False)
        trainer = FARETrainer(model, args, train_dataset=ds)
        times = []

        from transformers import TrainerCallback

        class Timer(TrainerCallback):
            def on_step_begin(self, a, state, control, **kw):
                sync(device)
                if state.global_step == warmup:
                    reset_peak(device)
                self.t = time.perf_counter()

            def on_step_end(self, a, state, control, **kw):
                sync(device)
                if state.global_step > warmup:
                    times.append(time.perf_counter() - self.t)

        trainer.add_callback(Timer())
        trainer.train()
    flops = forward_flops(model.image_encoder, size, device)
    return {"img_per_s": batch / (sum(times) / len(times)), "peak_mem_gib": peak_memory_gib(device),
            "forward_gflop_per_image": flops / 1e9, "image_size": size}


def bench_plain_fp32(model_id, batch, steps, warmup, device):
    """The same maths in plain PyTorch, fp32: frozen target, PGD-10 (sign steps, random start), AdamW step."""
    model = create_model(model_id).to(device)
    enc = model.image_encoder.train()
    ref = copy.deepcopy(enc).eval().requires_grad_(False)
    opt = torch.optim.AdamW(enc.parameters(), lr=1e-5, weight_decay=1e-4)
    size, eps, alpha = model.image_size, 4 / 255, 1 / 255
    times = []
    for i in range(steps + warmup):
        x = torch.rand(batch, 3, size, size, device=device)
        sync(device)
        if i == warmup:
            reset_peak(device)
        t = time.perf_counter()
        with torch.no_grad():
            target = ref(x)
        delta = torch.empty_like(x).uniform_(-eps, eps)
        for _ in range(10):
            delta.requires_grad_(True)
            loss = ((enc((x + delta).clamp(0, 1)) - target) ** 2).sum()
            (g,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + alpha * g.sign()).clamp(-eps, eps)
        x_adv = (x + delta).clamp(0, 1)
        loss = ((enc(x_adv) - target) ** 2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return {"img_per_s": batch / (sum(times) / len(times)), "peak_mem_gib": peak_memory_gib(device)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=None, help="open_clip architectures (default: tiny on CPU, "
                   "ViT-B-32 and ViT-L-14 on a GPU)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for vlmrobust's step")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense peak of the card for MFU")
    p.add_argument("--output", default=None)
    a = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if a.models is None:
        a.models = ["ViT-B-32", "ViT-L-14"] if device.type == "cuda" else ["tiny"]
    batch = a.batch_size or (128 if device.type == "cuda" else 32)
    results = []
    for arch in a.models:
        if arch == "tiny":
            from vlmrobust.testing import build_tiny_open_clip

            tmp = tempfile.mkdtemp()
            model_id = f"local-dir:{build_tiny_open_clip(tmp, image_size=32, patch_size=4, width=64)}"
        else:
            model_id = f"open_clip:{arch}"
        ours = bench_vlmrobust(model_id, batch, a.steps, a.warmup, a.bf16, device)
        plain = bench_plain_fp32(model_id, batch, a.steps, a.warmup, device)
        tflops = ours["img_per_s"] * FWD_EQUIV_PER_IMAGE * ours["forward_gflop_per_image"] / 1e3
        row = {"model": arch, "batch": batch, "bf16": a.bf16, **ours, "achieved_tflops": tflops,
               "mfu": tflops / a.peak_tflops if device.type == "cuda" else None,
               "plain_fp32_img_per_s": plain["img_per_s"], "plain_fp32_peak_mem_gib": plain["peak_mem_gib"],
               "speedup_vs_plain_fp32": ours["img_per_s"] / plain["img_per_s"]}
        results.append(row)
        print(json.dumps(row, indent=2), flush=True)
    dev_name = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or 'cpu'} " \
        f"({torch.get_num_threads()} threads)"
    out = Path(a.output or Path(__file__).parent / "results" / f"fare_step_{device.type}.json")
    atomic_write_json(out, {"benchmark": "fare_step", "device": dev_name, "torch": torch.__version__,
                            "vlmrobust": __version__, "python": sys.version.split()[0], "results": results,
                            "note": "CPU peak memory is the process-wide max RSS (GiB)."})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
