"""Scale-out: every accelerate config launches, and 2 processes train the same weights as 1.

The launched tests start `accelerate launch` for real (2 CPU processes, gloo) on `tests/dist_train_run.py`, which
trains several methods in one process group, 2 optimizer steps each, and writes the final checkpoint (the backend's
native layout) plus the full gradients the gradient hook saw. The 1-process reference runs the same jobs with the
same global batch (4 images: 1 x 4 against 2 x 2, or 2 x 1 x 2 accumulation steps).

Equality holds because the attack's random start is keyed to each image's position in the global batch
(`attack_seed_scope="sample"`), so it does not depend on how the batch is split over processes / micro-batches.

Tolerances (float32, SGD so that a wrong gradient scale shows 1:1 in the weights; `scale` = the largest magnitude
in the reference file):
* weights: `rtol=1e-5`, `atol=1e-6 * scale`. Observed: <= 6e-8 absolute (DDP, ZeRO-2, ZeRO-3), from the
  all-reduce summing two half-batch means instead of one 4-image mean.
* hook gradients: `rtol=1e-4`, `atol=1e-5 * scale`. Observed: <= 6e-6 absolute on gradients up to ~10, i.e.
  ~1e-6 relative; ZeRO reduces flattened buckets in another order.
A skipped gradient all-reduce or a loss scaled wrongly under accumulation moves them by O(1) x scale.
* Adam (ZeRO-3 with CPU offload runs DeepSpeed's CPU Adam): `atol=3e-4` on weights moved by up to 2e-3 in
  2 steps at lr 1e-3. Adam's normalised step turns rounding-level gradient differences on near-zero coordinates
  into up to ~lr-sized weight differences, so only a loose bound is meaningful there.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("deepspeed")

HERE = Path(__file__).parent
ROOT = HERE.parent
CONFIGS = ROOT / "recipes" / "accelerate_configs"
RUNNER = HERE / "dist_train_run.py"
ALL = ["fare", "tecoa", "at", "trades", "radapt", "fare_llava", "fare_qwen_vl"]
TIMINGS: dict[str, float] = {}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(open_clip_dir):
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "VLMROBUST_TEST_OPEN_CLIP_DIR": str(open_clip_dir)}


def _accelerate():
    exe = Path(sys.executable).parent / "accelerate"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "accelerate.commands.accelerate_cli"]


def _check(proc, what):
    tail = (proc.stdout[-3000:] + "\n" + proc.stderr[-6000:])
    assert proc.returncode == 0, f"{what} failed (rc {proc.returncode}):\n{tail}"


def launch(config, script, args, env, *, launch_args=(), timeout=900, check=True):
    """`accelerate launch --config_file recipes/accelerate_configs/<config> <script> <args>` from the repo root."""
    cmd = [*_accelerate(), "launch", "--config_file", str(CONFIGS / config), *launch_args]
    if "--main_process_port" not in launch_args:
        cmd += ["--main_process_port", str(_free_port())]
    t0 = time.time()
    proc = subprocess.run([*cmd, str(script), *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    TIMINGS[f"{config} {' '.join(map(str, launch_args))}".strip()] = round(time.time() - t0, 1)
    if check:
        _check(proc, f"accelerate launch {config}")
    return proc


def run_jobs(out, jobs, env, config=None, launch_args=(), check=True, extra=()):
    args = [out, "--jobs", ",".join(jobs), *extra]
    if config is None:  # the 1-process reference: plain python, no launcher
        proc = subprocess.run([sys.executable, str(RUNNER), *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=900)
        _check(proc, "1-process reference")
        return proc
    return launch(config, RUNNER, args, env, launch_args=launch_args, check=check)


def info(run_dir):
    return json.loads((Path(run_dir) / "info.json").read_text())


def assert_same_training(ref_dir, run_dir, *, weights=(1e-5, 1e-6), grads=(1e-4, 1e-5), check_grads=True):
    """Same final checkpoint files (all tensors) and, optionally, the same full gradients in the hook."""
    ref_dir, run_dir = Path(ref_dir), Path(run_dir)
    files = sorted(p.relative_to(ref_dir) for p in (ref_dir / "final").glob("*.safetensors"))
    assert files, f"no checkpoint in {ref_dir / 'final'}"
    assert sorted(p.relative_to(run_dir) for p in (run_dir / "final").glob("*.safetensors")) == files
    pairs = [(f, weights) for f in files] + ([(Path("hook.safetensors"), grads)] if check_grads else [])
    for name, (rtol, atol_rel) in pairs:
        ref, got = load_file(ref_dir / name), load_file(run_dir / name)
        atol = atol_rel * max(t.float().abs().max().item() for t in ref.values())
        for k in sorted(ref.keys() | got.keys()):
            a, b = ref.get(k), got.get(k)
            if a is None or b is None:  # a parameter the loss does not reach: no .grad in PyTorch, zeros in ZeRO
                assert not (a if a is not None else b).any(), f"{run_dir / name}: {k} only on one side"
                continue
            torch.testing.assert_close(b.float(), a.float(), rtol=rtol, atol=atol,
                                       msg=lambda m, k=k, n=name: f"{run_dir / n} [{k}]: {m}")


def assert_trained(ref_dir, atol_rel=1e-6):
    """The reference run moved the weights far beyond the comparison tolerance (the comparison means something)."""
    ref_dir = Path(ref_dir)
    for f in (ref_dir / "final").glob("*.safetensors"):
        init_f = ref_dir / "init" / f.name
        if not init_f.is_file():  # R-Adapt writes its anchor only once trained
            continue
        final, init = load_file(f), load_file(init_f)
        scale = max(t.float().abs().max().item() for t in final.values())
        moved = max((final[k].float() - init[k].float()).abs().max().item() for k in final)
        assert moved > 1e3 * atol_rel * scale, f"{f}: training moved the weights by only {moved:.2e}"


# -- fast checks -------------------------------------------------------------------------------------------------
def test_accelerate_configs_are_consistent():
    import yaml

    names = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert {"single_gpu.yaml", "multi_gpu.yaml", "multi_node.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml",
            "deepspeed_zero3_offload.yaml"} <= set(names)
    for name in names:
        cfg = yaml.safe_load((CONFIGS / name).read_text())
        ds = (cfg.get("deepspeed_config") or {}).get("deepspeed_config_file")
        if ds:
            # accelerate refuses these next to a DeepSpeed JSON; precision comes from the JSON's bf16 / fp16 sections
            assert "mixed_precision" not in cfg, name
            assert (ROOT / ds).is_file(), f"{name}: {ds} does not exist"
            stage = json.loads((ROOT / ds).read_text())["zero_optimization"]["stage"]
            assert f"zero{stage}" in name, name
        if cfg.get("num_machines", 1) > 1:
            assert cfg["num_processes"] % cfg["num_machines"] == 0, name


def test_use_cpu_follows_the_launcher(monkeypatch):
    """`accelerate launch` on CPU exports ACCELERATE_USE_CPU (or, for DeepSpeed, nothing): the recipes set use_cpu."""
    from vlmrobust.script_utils import RecipeParser, ScriptArguments
    from vlmrobust.trainers import FAREConfig
    from vlmrobust.utils.distributed import launched_on_cpu

    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "False")
    assert not launched_on_cpu()
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    _, args = RecipeParser((ScriptArguments, FAREConfig)).parse_args_and_config(["--output_dir", "o"])
    assert args.use_cpu
    monkeypatch.setenv("ACCELERATE_USE_CPU", "False")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # the DeepSpeed launcher: no CPU flag at all
    assert launched_on_cpu() == (not torch.accelerator.is_available())


def test_methods_refuse_unsupported_zero_stages(tiny_open_clip_dir, image_dataset):
    from vlmrobust.models import create_model
    from vlmrobust.trainers import FAREConfig, FARETrainer
    from vlmrobust.utils.distributed import check_zero_stage, zero_stage

    ds3 = SimpleNamespace(hf_deepspeed_config=None, deepspeed_plugin=None,
                          deepspeed={"zero_optimization": {"stage": 3}})
    assert zero_stage(ds3) == 3 and zero_stage(SimpleNamespace()) == 0
    with pytest.raises(ValueError, match=r"does not support DeepSpeed ZeRO-3; supported: no DeepSpeed / DDP, ZeRO-2"):
        check_zero_stage(ds3, (0, 2), "Stage2Only")

    class Stage2Only(FARETrainer):
        supported_zero_stages = (0, 1, 2)

    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    args = FAREConfig(output_dir="o", use_cpu=True, max_steps=1)
    args.deepspeed = str(ROOT / "recipes/ds_configs/zero3.json")  # what the check reads; nothing is initialised
    with pytest.raises(ValueError, match="Stage2Only does not support DeepSpeed ZeRO-3; supported: .*ZeRO-2"):
        Stage2Only(model, args, train_dataset=image_dataset)
    # every shipped method supports every stage (tested below with 2 processes)
    from vlmrobust.trainers import METHODS

    for name in METHODS.names():
        assert 3 in METHODS.get(name).trainer_class.supported_zero_stages, name


def test_activation_checkpointing_on_lvlm_towers_gives_the_same_gradients(tmp_path):
    """FARE on the LLaVA / Qwen-VL towers with --activation_checkpointing: same weights, recomputed activations."""
    from vlmrobust.models import create_model
    from vlmrobust.trainers import FAREConfig, FARETrainer

    sys.path.insert(0, str(HERE))
    from conftest import TensorImageDataset

    for spec in ("llava:tiny", "qwen_vl:tiny"):
        out = {}
        for ckpt in (False, True):
            model = create_model(spec)
            args = FAREConfig(output_dir=str(tmp_path / f"{ckpt}"), max_steps=1, per_device_train_batch_size=2,
                              learning_rate=0.05, optim="sgd", attack_steps=1, use_cpu=True, save_strategy="no",
                              report_to="none", disable_tqdm=True, activation_checkpointing=ckpt)
            trainer = FARETrainer(model, args, train_dataset=TensorImageDataset(n=2, size=model.image_size))
            trainer.train()
            tower = model.image_encoder
            if ckpt:
                hf = [m for m in tower.modules() if getattr(m, "gradient_checkpointing", False)]
                assert hf, f"{spec}: activation checkpointing was not switched on"
            out[ckpt] = {k: v.detach().clone() for k, v in tower.state_dict().items()}
        for k, v in out[False].items():
            torch.testing.assert_close(out[True][k], v, rtol=1e-5, atol=1e-6, msg=lambda m, k=k, s=spec: f"{s} {k}: {m}")
