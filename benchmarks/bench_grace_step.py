"""Throughput of one GRACE training step (arXiv 2603.27139) against a plain adversarial LoRA step, same run.

    python benchmarks/bench_grace_step.py                                   # tiny CLIP on CPU
    python benchmarks/bench_grace_step.py --models ViT-B-32 --batch-size 256 --bf16   # on a GPU

Both are `GRACETrainer` on the same model, data and LoRA (rank `--lora-r`), PGD-10 at ε = 4/255: the plain step is
`lambda_lar = lambda_gv = 0` (one pass: the attack, then CE forward / backward at θ), the GRACE step the paper's
defaults (the attack, pass 1 with the gradient probes, the rank-r ascent, pass 2: two forward passes at θ and two
at θ + Δ, one backward). Cost model in forward-equivalents per image (backward ≈ 2 forwards): plain = PGD 10 × 3 +
3 = 33; GRACE ≈ 33 + probes (~1) + pass 2 (4 forwards + backward through them, ~12) ≈ 46, i.e. ~0.7× the
throughput. Random weights, synthetic images; writes `benchmarks/results/grace_step_<device>.json`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from vlmrobust import __version__, create_model
from vlmrobust.trainers import GRACEConfig, GRACETrainer
from vlmrobust.utils.io import atomic_write_json


class SyntheticImages(torch.utils.data.Dataset):
    def __init__(self, n, size, classes=10):
        self.x, self.y = torch.rand(n, 3, size, size), torch.arange(n) % classes
        self.classnames = [f"class {i}" for i in range(classes)]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": int(self.y[i])}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(model_id, batch, steps, warmup, bf16, device, lora_r, **grace):
    model = create_model(model_id)
    ds = SyntheticImages(batch * (steps + warmup), model.image_size)
    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            _sync(device)
            if device.type == "cuda" and state.global_step == warmup:
                torch.cuda.reset_peak_memory_stats(device)
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            _sync(device)
            if state.global_step > warmup:
                times.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as out:
        args = GRACEConfig(output_dir=out, max_steps=steps + warmup, per_device_train_batch_size=batch,
                           lora_r=lora_r, save_strategy="no", logging_steps=10**9, bf16=bf16,
                           use_cpu=device.type == "cpu", disable_tqdm=True, report_to="none",
                           dataloader_num_workers=0, merge_lora_at_end=False, **grace)
        trainer = GRACETrainer(model, args, train_dataset=ds, classnames=ds.classnames)
        trainer.add_callback(Timer())
        trainer.train()
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"img_per_s": batch / (sum(times) / len(times)), "peak_mem_gib": mem}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=None, help="open_clip architectures (default: tiny on CPU, "
                   "ViT-B-32 on a GPU)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default: 64; 16 for the tiny model)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--output", default=None)
    a = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    a.models = a.models or (["ViT-B-32"] if device.type == "cuda" else ["tiny"])
    batch = a.batch_size or (256 if device.type == "cuda" else 32)
    results = []
    for arch in a.models:
        if arch == "tiny":
            from vlmrobust.testing import build_tiny_open_clip

            model_id = f"local-dir:{build_tiny_open_clip(tempfile.mkdtemp(), image_size=32, patch_size=4, width=64)}"
        else:
            model_id = f"open_clip:{arch}"
        r = a.lora_r or (16 if arch == "tiny" else 64)
        plain = bench(model_id, batch, a.steps, a.warmup, a.bf16, device, r, lambda_lar=0.0, lambda_gv=0.0)
        grace = bench(model_id, batch, a.steps, a.warmup, a.bf16, device, r)
        row = {"model": arch, "batch": batch, "bf16": a.bf16, "lora_r": r, "plain_adv_lora_img_per_s":
               plain["img_per_s"], "grace_img_per_s": grace["img_per_s"],
               "grace_vs_plain": grace["img_per_s"] / plain["img_per_s"],
               "plain_peak_mem_gib": plain["peak_mem_gib"], "grace_peak_mem_gib": grace["peak_mem_gib"]}
        results.append(row)
        print(json.dumps(row, indent=2), flush=True)
    dev_name = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or 'cpu'} " \
        f"({torch.get_num_threads()} threads)"
    out = Path(a.output or Path(__file__).parent / "results" / f"grace_step_{device.type}.json")
    atomic_write_json(out, {"benchmark": "grace_step", "device": dev_name, "torch": torch.__version__,
                            "vlmrobust": __version__, "python": sys.version.split()[0], "results": results})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
