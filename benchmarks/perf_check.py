"""One performance check over the real code paths: every registered method's training step, FARE on two LVLM towers,
and the APGD-CE-100 robust-accuracy pass, each against a plain fp32 PyTorch step of the same maths in the same run.

    python benchmarks/perf_check.py            # on a CUDA GPU: ViT-B/32 and ViT-L/14, LLaVA / Qwen towers, eval
    python benchmarks/perf_check.py --smoke    # the same code paths with tiny models (CPU, ~1 minute)

Training rows go through the method's own trainer (`METHODS[name]`: config class, trainer class, its trainer
arguments), with the toolkit's defaults (on a GPU: bf16 autocast, compiled CLIP encoder, fused AdamW; on the CPU:
plain fp32); every registered method of `DEFAULT_METHODS` is picked up by name, and its plain twin from
`perf_models.PLAIN_STEPS` (FARE, TeCoA, DiGraP, GRACE; tests/test_perf_twins.py checks that the DiGraP and GRACE
twins compute the trainer's loss and gradients). Each row reports
images/s (each training image once, median step), FLOPs per image counted with `torch.utils.flop_counter` on one
eager fp32 step of the same trainer (batch 2), MFU against the card's dense bf16 peak (named), peak memory, and the
plain fp32 twin's images/s and the ratio. Rows run in priority order under a time budget (`--budget-s`); a row that
fails or does not fit is recorded with its reason, never silently dropped. Writes `benchmarks/results/<name>.json`.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perf_models as pm  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
#: methods benchmarked when registered (in this order); others via --methods
DEFAULT_METHODS = ("fare", "tecoa", "grace", "digrap")


def toolkit_step(method_name, model, dataset, batch, steps, warmup, device, overrides=None) -> tuple[dict, object]:
    """Median step time of `method_name`'s trainer on `model` (the toolkit's own defaults unless overridden)."""
    from transformers import TrainerCallback

    from vlmrobust.trainers import METHODS

    method = METHODS.get(method_name)
    out = tempfile.mkdtemp()
    kw = dict(output_dir=out, max_steps=steps + warmup, per_device_train_batch_size=batch, warmup_steps=0,
              epsilon=4 / 255, attack_steps=10, attack_step_size=1 / 255, save_strategy="no", logging_steps=10**9,
              report_to="none", disable_tqdm=True, use_cpu=device.type == "cpu", seed=0)
    if method_name == "fare":
        kw["log_clean_loss"] = False
    kw.update(overrides or {})
    args = method.config_class(**kw)
    trainer = method.trainer_class(model, args, train_dataset=dataset, **method.trainer_kwargs(dataset))
    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **k):
            pm.sync(device)
            if state.global_step == warmup:
                pm.reset_peak(device)
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **k):
            pm.sync(device)
            if state.global_step > warmup:
                times.append(time.perf_counter() - self.t)

    trainer.add_callback(Timer())
    trainer.train()
    times.sort()
    settings = {"precision": args.precision, "compiled": bool(getattr(trainer, "compiled", False)),
                "compile_mode": args.compile_mode, "optim": str(getattr(args.optim, "value", args.optim)),
                "dataloader_num_workers": args.dataloader_num_workers}
    return {"step_s": times[len(times) // 2], "step_times_s": [round(t, 5) for t in times],
            "peak_mem_gib": round(pm.peak_memory_gib(device), 3), "settings": settings}, trainer


def flops_per_image(method_name, model, dataset, device) -> int:
    """FLOPs of one eager fp32 step of the method's trainer at batch 2, per image: its `training_step` (loss and
    backward, and every further pass of the step, e.g. GRACE's second pass at θ + Δ; not the optimizer)."""
    from vlmrobust.trainers import METHODS

    method = METHODS.get(method_name)
    kw = dict(output_dir=tempfile.mkdtemp(), max_steps=1, per_device_train_batch_size=2, epsilon=4 / 255,
              attack_steps=10, attack_step_size=1 / 255, save_strategy="no", report_to="none", disable_tqdm=True,
              use_cpu=device.type == "cpu", precision="fp32", compile_encoder=False, fast_dataloader=False)
    trainer = method.trainer_class(model, method.config_class(**kw), train_dataset=dataset,
                                   **method.trainer_kwargs(dataset))
    enc = trainer.model.train()
    x = torch.stack([dataset[i]["pixel_values"] for i in range(2)]).to(device)
    y = torch.tensor([dataset[i]["labels"] for i in range(2)], device=device)

    trainer.current_gradient_accumulation_steps = 1  # (set by the Trainer's loop otherwise)

    def step():
        trainer.training_step(enc, {"pixel_values": x, "labels": y})

    return pm.count_flops(step) // 2


def batches(dataset, batch, device):
    n = len(dataset.images)

    def fn():
        idx = torch.randint(0, n, (batch,))
        return dataset.images[idx].to(device), dataset.labels[idx].to(device)

    return fn


def train_row(spec, ctx) -> dict:
    """One method on one model: toolkit step, counted FLOPs, plain fp32 twin."""
    device, smoke = ctx["device"], ctx["smoke"]
    kind, name, method = spec["kind"], spec["model"], spec["method"]
    if kind == "clip":
        base = ctx["clip_models"].setdefault(name, pm.clip_model(name, torch.device("cpu")))
        make = lambda: copy.deepcopy(base).to(device)  # noqa: E731
    else:
        builder = pm.llava_tower if kind == "llava" else pm.qwen_tower
        make = lambda: builder(smoke, device, torch.float32 if smoke else torch.bfloat16)  # noqa: E731
    probe = make()
    size = probe.image_size
    dataset = pm.SyntheticImages(spec["batch"] * (ctx["steps"] + ctx["warmup"]), size)
    row = {"model": spec["label"], "method": method, "batch": spec["batch"], "image_size": size,
           "attention": _attention(probe)}
    fl = flops_per_image(method, probe, dataset, device) if spec.get("count_flops", True) else None
    del probe
    plain = pm.PLAIN_STEPS.get(method) if spec.get("plain", True) else None
    pb = spec.get("plain_batch", spec["batch"])
    ours_times, plain_times, ours, p, paired = [], [], None, None, []
    # toolkit and plain twin alternate, `repeats` times: on a loaded machine both see the same background
    for _ in range(ctx["repeats"]):
        model = make()
        ours, trainer = toolkit_step(method, model, dataset, spec["batch"], ctx["steps"], ctx["warmup"], device,
                                     spec.get("overrides"))
        ours_times += ours["step_times_s"]
        del trainer, model
        _free(device)
        if plain is not None:
            model = make().float()
            kw = {"classnames": dataset.classnames} if "classnames" in inspect.signature(plain).parameters else {}
            p = plain(model, batches(dataset, pb, device), ctx["plain_steps"], ctx["plain_warmup"], device, **kw)
            plain_times += p["step_times_s"]
            # toolkit / plain of this repeat (adjacent in time: the same background load), per image
            paired.append((spec["batch"] / _median(ours["step_times_s"])) / (pb / _median(p["step_times_s"])))
            del model
            _free(device)
    step_s = _median(ours_times)
    row.update(img_per_s=spec["batch"] / step_s, step_s=step_s, step_times_s=ours_times,
               peak_mem_gib=ours["peak_mem_gib"], settings=ours["settings"], repeats=ctx["repeats"])
    if fl:
        row["gflop_per_image"] = fl / 1e9
        row["achieved_tflops"] = row["img_per_s"] * fl / 1e12
        row["mfu"] = row["achieved_tflops"] / ctx["peak"] if ctx["peak"] else None
    if plain is None:
        row["plain_fp32"] = None
        row["plain_note"] = f"no plain twin of {method!r} in benchmarks/perf_models.PLAIN_STEPS"
        return row
    row["plain_fp32"] = {"batch": pb, "img_per_s": pb / _median(plain_times), "step_times_s": plain_times,
                         "peak_mem_gib": p["peak_mem_gib"]}
    row["ratio_vs_plain_fp32"] = row["img_per_s"] / row["plain_fp32"]["img_per_s"]
    row["paired_ratios"] = [round(r, 4) for r in paired]
    row["median_paired_ratio"] = _median(paired)
    return row


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def eval_row(spec, ctx) -> dict:
    """APGD-CE (100 iterations) robust-accuracy pass (`attack_survivors`), fp32 and bf16 autocast, every image
    attacked (no early exit: random weights leave nearly every point unbroken)."""
    from vlmrobust.eval.zero_shot import attack_survivors

    device = ctx["device"]
    base = ctx["clip_models"].setdefault(spec["model"], pm.clip_model(spec["model"], torch.device("cpu")))
    model = copy.deepcopy(base).to(device).eval()
    data = pm.SyntheticImages(spec["images"], model.image_size, distinct=spec["images"])
    clf = model.zero_shot_classifier(data.classnames, data.templates)
    with torch.no_grad():
        data.labels = torch.cat([clf(data.images[i:i + spec["batch"]].to(device)).argmax(-1).cpu()
                                 for i in range(0, len(data.images), spec["batch"])])
    row = {"model": spec["label"], "method": "eval apgd-ce", "steps": spec["steps"], "images": spec["images"],
           "batch": spec["batch"], "image_size": model.image_size}
    idx = list(range(spec["images"]))
    for bf16 in ((True, False) if device.type == "cuda" else (False,)):
        attack_survivors(clf, data, idx[:2], 4 / 255, steps=2, batch_size=2, device=device, bf16=bf16)  # warm-up
        pm.reset_peak(device)
        t = time.perf_counter()
        survived, _ = attack_survivors(clf, data, idx, 4 / 255, steps=spec["steps"], seed=0,
                                       batch_size=spec["batch"], device=device, bf16=bf16)
        pm.sync(device)
        sec = time.perf_counter() - t
        row["bf16" if bf16 else "plain_fp32"] = {
            "img_per_s": len(idx) / sec, "seconds": round(sec, 3), "peak_mem_gib": round(pm.peak_memory_gib(device), 3),
            "robust_fraction": round(survived.float().mean().item(), 4)}
    fast = row.get("bf16", row["plain_fp32"])
    row["img_per_s"] = fast["img_per_s"]
    row["ratio_vs_plain_fp32"] = fast["img_per_s"] / row["plain_fp32"]["img_per_s"]
    return row


def sync_row(spec, ctx) -> dict:
    """Host syncs in one FARE training attack (PGD-10) on the GPU, counted by `torch.cuda.set_sync_debug_mode`."""
    import warnings

    from vlmrobust.trainers import METHODS, fare_distance

    device = ctx["device"]
    base = ctx["clip_models"].setdefault(spec["model"], pm.clip_model(spec["model"], torch.device("cpu")))
    model = copy.deepcopy(base).to(device)
    dataset = pm.SyntheticImages(spec["batch"], model.image_size)
    method = METHODS.get("fare")
    args = method.config_class(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=spec["batch"],
                               attack_steps=10, attack_step_size=1 / 255, report_to="none", save_strategy="no")
    trainer = method.trainer_class(model, args, train_dataset=dataset)
    enc = trainer.model
    x = dataset.images[: spec["batch"]].to(device)

    def attack():
        with trainer.compute_loss_context_manager():
            target = trainer.reference(x).float()
            return trainer.adversarial_examples(enc, x, target, fare_distance)

    attack()  # compiles / warms up
    pm.sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            attack()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message)[:200] for w in caught if "synchroniz" in str(w.message).lower()]
    return {"model": spec["label"], "method": "fare training attack (PGD-10)", "batch": spec["batch"],
            "compiled": bool(trainer.compiled), "precision": args.precision, "host_syncs": len(syncs),
            "sync_messages": syncs[:5]}


def _attention(model) -> str:
    from vlmrobust.trainers.performance import attention_implementation

    return attention_implementation(model.image_encoder)


def _free(device):
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def plan(smoke: bool, methods: list[str]) -> list[dict]:
    """Rows in priority order (the budget cuts from the end)."""
    if smoke:
        rows = [{"kind": "clip", "model": "tiny", "label": "tiny open_clip (32 px)", "method": m, "batch": 16}
                for m in methods]
        rows += [{"kind": k, "model": k, "label": f"tiny {k} tower", "method": "fare", "batch": 8}
                 for k in ("llava", "qwen")]
        rows.append({"kind": "eval", "model": "tiny", "label": "tiny open_clip (32 px)", "steps": 100,
                     "images": 16, "batch": 16})
        return rows
    first, rest = methods[:1], methods[1:]
    rows = [{"kind": "sync", "model": "ViT-B-32", "label": "open_clip ViT-B/32 (224 px)", "batch": 128}]
    rows += [{"kind": "clip", "model": "ViT-L-14", "label": "open_clip ViT-L/14 (224 px)", "method": m, "batch": 128,
             "plain_batch": 64} for m in first]
    rows += [{"kind": "clip", "model": "ViT-B-32", "label": "open_clip ViT-B/32 (224 px)", "method": m, "batch": 128}
             for m in first]
    rows.append({"kind": "eval", "model": "ViT-L-14", "label": "open_clip ViT-L/14 (224 px)", "steps": 100,
                 "images": 128, "batch": 128})
    rows.append({"kind": "llava", "model": "llava", "label": "LLaVA-1.5-7B tower (CLIP ViT-L/14-336, bf16)",
                 "method": "fare", "batch": 32, "plain_batch": 16})
    rows.append({"kind": "qwen", "model": "qwen", "label": "Qwen2.5-VL-3B tower (448 px, bf16)", "method": "fare",
                 "batch": 16, "plain_batch": 8})
    rows += [{"kind": "clip", "model": "ViT-B-32", "label": "open_clip ViT-B/32 (224 px)", "method": m, "batch": 128}
             for m in rest]
    rows += [{"kind": "clip", "model": "ViT-L-14", "label": "open_clip ViT-L/14 (224 px)", "method": m, "batch": 128,
              "plain_batch": 64} for m in rest]
    return rows


#: rough seconds a row needs on one H100 (compile included); a row starts only if this much budget is left
ROW_COST_S = {"sync:ViT-B-32": 40, "clip:ViT-L-14": 120, "clip:ViT-B-32": 45, "eval:ViT-L-14": 60, "llava:llava": 60, "qwen:qwen": 70}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny models (CPU unless --device cuda)")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available, cpu for --smoke)")
    p.add_argument("--methods", nargs="+", default=None, help="registered method names (default: those of "
                   f"{DEFAULT_METHODS} that are registered)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per row (median reported)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting rows after this many seconds")
    p.add_argument("--only", nargs="+", default=None, help="row kinds to run: sync clip llava qwen eval")
    p.add_argument("--repeats", type=int, default=1, help="alternate toolkit / plain this many times per row")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default on the CPU: 1)")
    p.add_argument("--output", default=None)
    a = p.parse_args(argv)
    t_start = time.perf_counter()
    from vlmrobust import __version__
    from vlmrobust.trainers import METHODS

    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() and not a.smoke else "cpu"))
    if device.type == "cpu" or a.threads:
        torch.set_num_threads(a.threads or 1)  # one thread: two contending ones on a shared runner are far slower
    methods = a.methods or [m for m in DEFAULT_METHODS if m in METHODS]
    dyn = torch._dynamo.config  # every row compiles fresh encoder instances: room for their graphs
    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(dyn, key):
            setattr(dyn, key, max(getattr(dyn, key), 64))
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    peak_name, peak = pm.card_peak(card) if device.type == "cuda" else (None, None)
    ctx = {"device": device, "smoke": a.smoke, "clip_models": {}, "peak": peak,
           "steps": a.steps or (5 if device.type == "cuda" else 3), "warmup": a.warmup or (3 if device.type == "cuda" else 1),
           "plain_steps": 2 if device.type == "cuda" else (a.steps or 3), "plain_warmup": 1, "repeats": a.repeats}
    rows = plan(a.smoke, methods)
    if a.only:
        rows = [r for r in rows if r["kind"] in a.only]
    results = []
    name = a.output or RESULTS / (f"perf_check_smoke_{device.type}.json" if a.smoke else
                                  f"perf_check_{card.replace(' ', '_')}.json")

    def write():  # after every row: a run cut short still leaves its JSON
        from vlmrobust.utils.io import atomic_write_json

        meta = {"benchmark": "perf_check", "smoke": a.smoke, "device": card, "device_type": device.type,
                "peak": {"name": peak_name, "tflops": peak}, "torch": torch.__version__,
                "python": platform.python_version(), "vlmrobust": __version__, "versions": _versions(),
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "torch_threads": torch.get_num_threads(),
                "load_average_1min": os.getloadavg()[0],
                "settings": {"epsilon": "4/255", "attack": "pgd", "attack_steps": 10, "attack_step_size": "1/255",
                             "steps": ctx["steps"], "warmup": ctx["warmup"], "plain_steps": ctx["plain_steps"],
                             "repeats": a.repeats, "methods": methods,
                             "tf32_matmul": torch.backends.cuda.matmul.allow_tf32},
                "seconds": round(time.perf_counter() - t_start, 1), "results": results}
        atomic_write_json(name, meta)
        return meta

    for spec in rows:
        elapsed = time.perf_counter() - t_start
        need = 0 if a.smoke else ROW_COST_S.get(f"{spec['kind']}:{spec['model']}", 60)
        tag = {k: spec[k] for k in ("label", "method") if k in spec}
        if elapsed + need > a.budget_s:
            results.append({**tag, "skipped": f"time budget: {elapsed:.0f} s spent of {a.budget_s:.0f} s"})
            print(f"SKIP {tag} (budget)", flush=True)
            continue
        t = time.perf_counter()
        try:
            run = {"eval": eval_row, "sync": sync_row}.get(spec["kind"], train_row)
            row = run(spec, ctx)
        except Exception as err:  # a failing row is recorded and the check goes on
            row = {**tag, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-2000:]}
            _free(device)
        row["row_seconds"] = round(time.perf_counter() - t, 1)
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "traceback"}, default=str), flush=True)
        write()
    meta = write()
    print(f"wrote {name} in {meta['seconds']} s")
    return 1 if any("error" in r for r in results) else 0


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "accelerate", "open_clip_torch", "triton", "peft", "timm"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
