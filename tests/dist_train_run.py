"""Train several robust fine-tuning methods in one process group; write what each ended with.

Used by test_scale.py, under `accelerate launch --config_file recipes/accelerate_configs/<cfg>.yaml` (2 processes:
DDP, multi-node, DeepSpeed ZeRO-2 / 3 / 3-offload) or plain `python` (the 1-process reference). Every job runs
2 optimizer steps (SGD unless the DeepSpeed JSON brings its own optimizer) on a global batch of
`--global_batch` = processes x per-device batch x gradient accumulation, with random starts keyed to each image's
position in the global batch (`attack_seed_scope="sample"`, the default), so the runs of one job can be compared
across process counts. Per job, the main process writes to
`OUT/<job>/`: the checkpoint (`trainer.save_model`, the backend's native layout), `hook.safetensors` (the full
gradients `on_full_backward` saw at each step), `info.json`, and for `@ws` jobs `transform.safetensors` (what the
last gradient transform saw, per call and parameter name).

Usage: python tests/dist_train_run.py OUT --jobs JOB[,JOB...] [--save_init]

A job is a method name from `JOBS` with optional `@` options, e.g. `fare@ga2`:
    ga<k>    gradient accumulation k (the per-device batch shrinks to keep the global batch)
    adam     AdamW (lr 1e-3) instead of SGD
    bf16     bf16 (DeepSpeed: the JSON's bf16 section; "auto" follows this flag)
    ckpt     activation checkpointing
    ws       weight-space hooks: L2-SP from the config, then the test's stateful EMAGradient and a GradientLog, and
             an L2Ball(0.05) post-step constraint around θ₀ (tests/ws_hooks.py)
    digrap   DiGraP (ω from 0.5, learned), 3 optimizer steps; `info.json` gets every tensor's ω
    ftp      FTP (radius lr 0.05), 3 optimizer steps; `info.json` gets every tensor's radius
    spd      SPD (λ = 1), 3 optimizer steps; `info.json` gets how many tensors were decayed
    kill<t>  save a checkpoint every step and die right after checkpoint-t (every rank, `os._exit`)
    resume   resume from the last checkpoint of the `kill` job of the same method
Results go to `OUT/<method>[-opt...]`; `kill` and `resume` share `OUT/<method>-resume`.
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(1)

from conftest import TensorImageDataset  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402
from ws_hooks import EMAGradient, GradientLog, L2Ball  # noqa: E402

from vlmrobust.models import create_model  # noqa: E402
from vlmrobust.trainers import (  # noqa: E402
    AdversarialConfig,
    AdversarialTrainer,
    DiGraPConfig,
    DiGraPTrainer,
    DiGraPVQAConfig,
    DiGraPVQATrainer,
    FAREConfig,
    FARETrainer,
    GRACEConfig,
    GRACETrainer,
    RAdaptConfig,
    RAdaptTrainer,
    TeCoAConfig,
    TeCoATrainer,
)
from vlmrobust.trainers.grace_vqa_config import GRACEVQAConfig  # noqa: E402
from vlmrobust.trainers.grace_vqa_trainer import GRACEVQATrainer  # noqa: E402
from vlmrobust.utils.distributed import launched_on_cpu, outside_zero3_init  # noqa: E402

OPEN_CLIP_DIR = os.environ.get("VLMROBUST_TEST_OPEN_CLIP_DIR")

# job -> (model id, config class, trainer class, config overrides, needs classnames)
JOBS = {
    "fare": ("open_clip", FAREConfig, FARETrainer, {}, False),
    "tecoa": ("open_clip", TeCoAConfig, TeCoATrainer, {}, True),
    "at": ("open_clip", AdversarialConfig, AdversarialTrainer, {"loss": "classic", "attack": "pgd"}, True),
    "trades": ("open_clip", AdversarialConfig, AdversarialTrainer, {"loss": "trades", "attack": "apgd"}, True),
    "radapt": ("open_clip", RAdaptConfig, RAdaptTrainer, {"alpha": 0.5, "d0": 10.0, "d0_reference_size": 32}, False),
    # DiGraP's own method (CE on the zero-shot head) with LoRA adapters on the tower (θ₀ = 0 for them)
    "digrap_lora": ("open_clip", DiGraPConfig, DiGraPTrainer, {"lora_r": 2, "digrap_omega_init": 0.5}, True),
    # GRACE: DDP and ZeRO-2 only (ZeRO-3 is refused); curvature_interval 1 re-allocates the ranks every step
    "grace": ("open_clip", GRACEConfig, GRACETrainer, {"lora_r": 4, "awp_max_rank": 2, "awp_rho": 0.5,
                                                       "curvature_interval": 1}, True),
    # DiGraP for VQA: LoRA r2 on the tiny LLaVA's q / v, the answer CE on the training attack's images (shapes-VQA)
    "digrap_vqa": ("llava:tiny", DiGraPVQAConfig, DiGraPVQATrainer, {"lora_r": 2, "adversarial": True}, False),
    # GRACE on the tiny LLaVA (LoRA on the language model's q/v and the projector, trained on shapes-VQA answers)
    "grace_vqa": ("llava:tiny", GRACEVQAConfig, GRACEVQATrainer, {"lora_r": 4, "awp_max_rank": 2, "awp_rho": 0.5,
                                                                  "curvature_interval": 1}, False),
    # ... with the Gram term alone in the second pass (λ_LAR = 0): it reads the projector only, so DDP sees the
    # language model's LoRA unused in the last backward (its gradient is the first pass's, accumulated locally)
    "grace_vqa_gv": ("llava:tiny", GRACEVQAConfig, GRACEVQATrainer, {"lora_r": 4, "awp_max_rank": 2, "awp_rho": 0.5,
                                                                     "curvature_interval": 1, "lambda_lar": 0.0},
                     False),
    "fare_llava": ("llava:tiny", FAREConfig, FARETrainer, {}, False),
    "fare_qwen_vl": ("qwen_vl:tiny", FAREConfig, FARETrainer, {}, False),
}


# `@<name>` job options that train with a shipped weight-space method: config overrides (3 steps, so that DiGraP's ω
# and FTP's radius take a hypergradient step: the first step has no previous component)
WEIGHT_SPACE_JOBS = {
    "digrap": {"weight_space": "digrap", "digrap_omega_init": 0.5, "digrap_mu": 0.5, "max_steps": 3},
    "ftp": {"weight_space": "ftp", "ftp_lr": 0.05, "max_steps": 3},
    "spd": {"weight_space": "spd", "spd_lambda": 1.0, "max_steps": 3},
}


def weight_space_summary(trainer):
    """The shipped hooks' per-tensor scalars (ω, γ) and counters, for info.json."""
    out = {}
    for h in trainer.weight_space.hooks:
        if hasattr(h, "omegas"):
            out["omega"] = h.omegas()
        if hasattr(h, "radii"):
            out["gamma"] = h.radii()
        if hasattr(h, "decayed"):
            out["decayed"] = h.decayed
    return out


# SGD learning rates: large enough that 2 steps move every weight far beyond the comparison tolerance
LR = {"fare_llava": 0.05, "grace": 0.05, "digrap_vqa": 0.05, "grace_vqa": 0.05, "grace_vqa_gv": 0.05}


class Recorder:
    """Mixin: keep the full gradients the hook saw (one entry per optimizer step) and the attack's dtypes."""

    def on_full_backward(self, model):
        super().on_full_backward(model)
        grads = {}
        for name, p in self.accelerator.unwrap_model(model).named_parameters():
            if p.requires_grad:
                g = self.get_full_grad(p)
                if g is not None:
                    grads[f"step{self.state.global_step}.{name}"] = g.detach().float().cpu().clone()
        self.hook_grads.update(grads)

    def adversarial_examples(self, forward, images, *args, **kwargs):
        x_adv = super().adversarial_examples(forward, images, *args, **kwargs)
        dtypes = {p.dtype for p in self.accelerator.unwrap_model(self.model_wrapped).parameters()}
        self.attack_dtypes.add((str(x_adv.dtype), ",".join(sorted(map(str, dtypes)))))
        return x_adv


class KillAfter(TrainerCallback):
    """Dies (no clean-up, every rank) right after checkpoint `step` is written: a killed run."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            print(f"KILLED after checkpoint-{self.step}", flush=True)
            os._exit(17)


def innermost(optimizer):
    """The torch / DeepSpeed optimizer inside accelerate's and ZeRO's wrappers."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def parse_job(job):
    name, *flags = job.split("@")
    o = {"ga": 1, "adam": False, "bf16": False, "ckpt": False, "ws": False, "kill": 0, "resume": False}
    o.update(dict.fromkeys(WEIGHT_SPACE_JOBS, False))
    for f in flags:
        if f.startswith("ga"):
            o["ga"] = int(f[2:])
        elif f.startswith("kill"):
            o["kill"] = int(f[4:])
        elif f in o:
            o[f] = True
        else:
            raise SystemExit(f"unknown job option {f!r} in {job!r}")
    tags = [f for f in flags if not f.startswith("kill") and f != "resume"]
    dirname = "-".join([name, *tags, *(["resume"] if o["kill"] or o["resume"] else [])])
    return name, o, dirname


def run_job(job, out, opts):
    name, o, dirname = parse_job(job)
    spec, config_class, trainer_class, overrides, needs_classnames = JOBS[name]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_device, rest = divmod(opts.global_batch, world * o["ga"])
    if rest:
        raise SystemExit(f"global batch {opts.global_batch} is not divisible by {world} processes x GA {o['ga']}")
    with outside_zero3_init():  # every rank holds the whole model; ZeRO-3 partitions the trained module
        model = create_model(f"local-dir:{OPEN_CLIP_DIR}" if spec == "open_clip" else spec)
    job_dir = os.path.join(out, dirname)
    save_every = 1 if o["kill"] or o["resume"] else 0
    kw = dict(output_dir=job_dir, max_steps=opts.steps, per_device_train_batch_size=per_device,
              gradient_accumulation_steps=o["ga"], learning_rate=1e-3 if o["adam"] else LR.get(name, 0.5),
              lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
              optim="adamw_torch" if o["adam"] else "sgd", attack_steps=2, attack_step_size=2 / 255,
              epsilon=4 / 255, attack_random_start=True, seed=0, use_cpu=launched_on_cpu() or world == 1,
              disable_tqdm=True, logging_steps=1, dataloader_drop_last=True, bf16=o["bf16"],
              activation_checkpointing=o["ckpt"], save_strategy="steps" if save_every else "no",
              save_steps=save_every or 500)
    kw.update(overrides)
    for opt, job_kw in WEIGHT_SPACE_JOBS.items():
        if o[opt]:
            kw.update(job_kw)
    extra = {}
    if o["ws"]:
        kw.update(weight_space="l2sp", l2sp_lambda=1.0)
        extra = {"gradient_transforms": [EMAGradient(), GradientLog()], "post_step_constraints": [L2Ball(0.05)]}
    args = config_class(**kw)
    data = TensorImageDataset(n=16, size=model.image_size)
    if getattr(trainer_class, "trains_on_answers", False):  # VQA items (images, questions, answers)
        from vlmrobust.data.shapes_vqa import ShapesVQA
        from vlmrobust.vlm_recipe_main import VQAPixels

        data = VQAPixels(ShapesVQA(16, seed=0, image_size=model.image_size), model.preprocess)
    if needs_classnames:
        extra["classnames"] = data.classnames
    cls = type(f"Recorded{trainer_class.__name__}", (Recorder, trainer_class), {})
    callbacks = [KillAfter(o["kill"])] if o["kill"] else []
    trainer = cls(model, args, train_dataset=data, callbacks=callbacks, **extra)
    trainer.hook_grads, trainer.attack_dtypes = {}, set()
    resume = get_last_checkpoint(job_dir) if o["resume"] else None
    if o["resume"] and resume is None:
        raise SystemExit(f"resume: no checkpoint in {job_dir}")
    if opts.save_init:
        trainer.save_model(os.path.join(job_dir, "init"))
    t0 = time.time()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - t0
    trainer.save_model(os.path.join(job_dir, "final"))
    if trainer.accelerator.is_main_process:
        save_file(trainer.hook_grads, os.path.join(job_dir, "hook.safetensors"))
        ws = {}
        if o["ws"]:
            ema, log = trainer.weight_space.transforms[1:]
            save_file({f"call{k}.{n}": g for k, n, g in log.seen}, os.path.join(job_dir, "transform.safetensors"))
            ws = {"transform_calls": sorted(set(log.calls.values())), "n_logged": len(log.calls),
                  "ema_calls": sorted({s["calls"] for s in ema.state.values()}),
                  "projected": trainer.weight_space.constraints[0].projected,
                  "n_trainable": sum(p.requires_grad for p in trainer.model.parameters())}
        ws.update(weight_space_summary(trainer))
        info = {"world_size": trainer.args.world_size, "per_device": per_device, "ga": o["ga"],
                "zero_stage": trainer.accelerator.state.deepspeed_plugin.zero_stage
                if trainer.is_deepspeed_enabled else 0,
                "optimizer": type(innermost(trainer.optimizer)).__name__,
                "global_step": trainer.state.global_step, "resumed_from": resume, "train_s": round(seconds, 2),
                "attack_dtypes": sorted(trainer.attack_dtypes), "weight_space": ws}
        with open(os.path.join(job_dir, "info.json"), "w") as f:
            json.dump(info, f)
    trainer.accelerator.wait_for_everyone()
    # the next job builds its own Trainer / DeepSpeed engine: let go of this one
    del trainer
    import gc

    gc.collect()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--jobs", required=True)
    p.add_argument("--global_batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--save_init", action="store_true", help="Also save the untrained weights to <job>/init.")
    opts = p.parse_args()
    for job in opts.jobs.split(","):
        run_job(job, opts.out, opts)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
