"""Evaluation throughput: images/s of an APGD-CE (100 iterations) robust-accuracy pass.

Runs `attack_survivors` (the suite runner's attack cell) on every image of a batch, so the number counts the full
~101 forward+input-backward passes per image, before any early exit for already-broken points. Two settings:

- CPU: the tiny digits CLIP stand-in (16 px, `vlmrobust:tiny-digits-clip`, built on first use) on digits.
- CUDA (when available): open_clip ViT-L/14 with random weights at 224 px on random images, fp32/TF32 and bf16
  autocast (perturbation in fp32), compared in the same run. Random weights make nearly every point "robust" under
  its own random prediction, so the attack runs all its iterations on every point: the worst case.

    python benchmarks/bench_eval.py                      # CPU part, and the GPU part when CUDA is available
    python benchmarks/bench_eval.py --skip-gpu --cpu-images 240

Writes `benchmarks/results/bench_eval-<device>.json` (atomically).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from vlmrobust.eval.zero_shot import attack_survivors
from vlmrobust.utils.io import atomic_write_json

RESULTS = Path(__file__).parent / "results"


class _Labelled(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.images[i], "labels": int(self.labels[i])}


def _time_pass(clf, data, *, eps: float, steps: int, batch_size: int, device, bf16: bool, repeats: int) -> dict:
    idx = list(range(len(data)))
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        survived, _ = attack_survivors(clf, data, idx, eps, attacks=["apgd-ce"], steps=steps, seed=0,
                                       batch_size=batch_size, device=device, bf16=bf16)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"images": len(idx), "seconds": round(best, 3), "images_per_s": round(len(idx) / best, 3),
            "robust_fraction_of_attacked": round(survived.float().mean().item(), 4), "repeats": repeats,
            "batch_size": batch_size, "bf16": bf16}


def bench_cpu(n_images: int, threads: int | None, steps: int) -> dict:
    from vlmrobust.data import load_classification_dataset
    from vlmrobust.eval.zero_shot import predict
    from vlmrobust.models import create_model

    if threads:
        torch.set_num_threads(threads)
    model = create_model("vlmrobust:tiny-digits-clip")
    data = load_classification_dataset("digits", "test", image_size=model.image_size)
    clf = model.zero_shot_classifier(data.classnames, data.templates)
    correct, _ = predict(clf, data)
    # attack only correctly classified points (what the suite does), n_images of them
    idx = correct.nonzero().flatten()[:n_images].tolist()
    images = torch.stack([data[i]["pixel_values"] for i in idx])
    labels = torch.tensor([data[i]["labels"] for i in idx])
    res = _time_pass(clf, _Labelled(images, labels), eps=4 / 255, steps=steps, batch_size=len(idx), device="cpu",
                     bf16=False, repeats=1)
    return {"model": "vlmrobust:tiny-digits-clip (16 px)", "device": "cpu", "torch_threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "eps": "4/255", "steps": steps, **res}


def bench_gpu(n_images: int, batch_size: int, steps: int) -> list[dict]:
    from vlmrobust.models import create_model

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    model = create_model("open_clip:ViT-L-14").cuda().eval()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n_images, 3, model.image_size, model.image_size, generator=g)
    classnames = [f"class {i}" for i in range(10)]
    clf = model.zero_shot_classifier(classnames, ["a photo of a {}."])
    with torch.no_grad():
        labels = torch.cat([clf(images[i:i + batch_size].cuda()).argmax(-1).cpu()
                            for i in range(0, n_images, batch_size)])
    data = _Labelled(images, labels)
    out = []
    for bf16 in (False, True):
        _time_pass(clf, _Labelled(images[:batch_size], labels[:batch_size]), eps=4 / 255, steps=2,
                   batch_size=batch_size, device="cuda", bf16=bf16, repeats=1)  # warm-up
        torch.cuda.reset_peak_memory_stats()
        res = _time_pass(clf, data, eps=4 / 255, steps=steps, batch_size=batch_size, device="cuda", bf16=bf16,
                         repeats=1)
        res["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out.append({"model": "open_clip:ViT-L-14 random weights (224 px)", "device": torch.cuda.get_device_name(),
                    "precision": "bf16 autocast, fp32 perturbation" if bf16 else "fp32 / TF32", "eps": "4/255",
                    "steps": steps, **res})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-images", type=int, default=240)
    p.add_argument("--cpu-threads", type=int, default=None, help="torch threads on CPU (default: torch's choice)")
    p.add_argument("--gpu-images", type=int, default=256)
    p.add_argument("--gpu-batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--skip-cpu", action="store_true")
    p.add_argument("--skip-gpu", action="store_true")
    args = p.parse_args()
    meta = {"torch": torch.__version__, "python": platform.python_version(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "load_average_1min_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "what": "images/s of an APGD-CE robust-accuracy pass (attack_survivors), L-inf 4/255, every image "
                    "attacked (no early exit for points misclassified before the attack)"}
    if not args.skip_cpu:
        cpu = bench_cpu(args.cpu_images, args.cpu_threads, args.steps)
        print(f"CPU  {cpu['model']}: {cpu['images_per_s']:.1f} img/s ({cpu['images']} images, {cpu['seconds']} s, "
              f"{cpu['torch_threads']} threads)")
        atomic_write_json(RESULTS / "bench_eval-cpu.json", {**meta, "results": [cpu]})
    if not args.skip_gpu and torch.cuda.is_available():
        gpu = bench_gpu(args.gpu_images, args.gpu_batch_size, args.steps)
        for r in gpu:
            print(f"GPU  {r['model']} {r['precision']}: {r['images_per_s']:.2f} img/s, peak {r['peak_memory_gib']} GiB")
        atomic_write_json(RESULTS / "bench_eval-cuda.json", {**meta, "results": gpu})
    elif not args.skip_gpu:
        print("No CUDA device: GPU part skipped.")


if __name__ == "__main__":
    main()
