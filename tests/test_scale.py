"""Scale-out: every accelerate config launches, and 2 processes train the same weights as 1.

The launched tests start `accelerate launch` for real (2 CPU processes, gloo) on `tests/dist_train_run.py`, which
trains several methods in one process group, 2 optimizer steps each, and writes the final checkpoint (the backend's
native layout) plus the full gradients the gradient hook saw. The 1-process reference (launched with
single_gpu.yaml) runs the same jobs with the same global batch (4 images: 1 x 4 against 2 x 2, or 2 x 1 x 2
accumulation steps). Each of the 9 files in recipes/accelerate_configs/ is launched by one of these tests.

The `@digrap` / `@ftp` / `@spd` jobs train with the shipped weight-space methods: the same weights, and the same ω
(DiGraP) / radius γ (FTP) per tensor and number of decayed tensors (SPD), under DDP, ZeRO-2 and ZeRO-3 (also fully
partitioned) as on 1 process, also for the `digrap` method with LoRA adapters (merged checkpoint); DiGraP's state
(ω, its Adam moments, the previous component) survives a kill and resume under ZeRO-3. Observed: ω and γ equal to
1e-6, weights within the tolerances below.

The `digrap_vqa@digrap` job is the `digrap_vqa` method (LoRA r2 on the tiny LLaVA's language model, DiGraP with ω
from 0.5, the answer cross-entropy of PGD images of shapes-VQA): under DDP and ZeRO-2 the same merged weights,
adapters, hook gradients and ω as on 1 process (it refuses ZeRO-3). Planted bug, checked once by hand: the loss
summed instead of averaged over the batch misses the merged weights by 3e-6 (3 x atol; the check stops at that
file).

The `@ws` jobs add the weight-space hooks (L2-SP from the config, a stateful transform, a gradient log and an L2 ball
around θ₀ as post-step constraint; tests/ws_hooks.py): under DDP, ZeRO-2 and ZeRO-3 (also with every parameter
partitioned) they must give the 1-process weights, the transform must see the same full gradients exactly once per
optimizer step, and their state must survive a kill and resume.

The GRACE jobs (DDP and ZeRO-2; ZeRO-3 is refused, `test_methods_refuse_unsupported_zero_stages`) run its two-pass
step on the tiny open_clip CLIP (`grace`) and, LoRA on the language model and the projector trained on shapes-VQA
answers, on the tiny LLaVA (`grace_vqa`, also with λ_LAR = 0: `grace_vqa_gv`). Planted bug, checked once by hand:
the LVLM second pass's feature, answer and perturbed-feature passes as three forwards of the DDP wrapper (as before
`LVLMAnswerModule(compute=...)`) fail under DDP ("Expected to mark a variable ready only once").

Equality holds because the attack's random start is keyed to each image's position in the global batch
(`attack_seed_scope="sample"`), so it does not depend on how the batch is split over processes / micro-batches.

Tolerances (float32, SGD so that a wrong gradient scale shows 1:1 in the weights; `scale` = the largest magnitude
in the reference file):
* weights: `rtol=1e-5`, `atol=1e-6 * scale`. Observed: <= 6e-8 absolute, <= 0.07 x atol (DDP, ZeRO-2, ZeRO-3):
  float32 rounding, the all-reduce averaging two half-batch means instead of one 4-image mean.
* hook gradients: `rtol=1e-4`, `atol=1e-5 * scale`. Observed: <= 6e-5 absolute (LLaVA tower, gradients in the
  hundreds), <= 0.04 x atol; ZeRO reduces flattened buckets in another order.
Planted bugs, checked once by hand: a skipped DDP all-reduce (forward + backward under `no_sync`) misses the weights
by 2.6e-2 (~1e4 x atol); a loss not divided by the accumulation steps (DDP, or ZeRO-2's `engine.backward`) misses
the hook gradients by a factor 2 (1.7 absolute, ~9e3 x atol).
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
GRACE = ["grace", "grace@ga2"]  # DDP and ZeRO-2 (GRACE refuses ZeRO-3): its LAR-AWP ascent uses the full gradient
# GRACE's LVLM trainer on the tiny LLaVA (the same stages), also with the Gram term alone in the second pass
GRACE_VQA = ["grace_vqa", "grace_vqa@ga2", "grace_vqa_gv"]
WS = ["fare@ws", "at@ws"]  # weight-space hooks on FARE's encoder and on AT's encoder + head
# the shipped weight-space methods (3 steps each): DiGraP's projection and learned ω, FTP's learned radius, SPD
WS_METHODS = ["fare@digrap", "at@digrap", "fare@ftp", "fare@spd", "digrap_lora@digrap"]  # + the digrap method, LoRA
# the digrap_vqa method (LoRA on the tiny LLaVA's language model, adversarial images): DDP and ZeRO-2 (it refuses
# ZeRO-3, like grace_vqa)
DIGRAP_VQA = ["digrap_vqa@digrap"]
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
    key = f"{config} {' '.join(map(str, launch_args))} {Path(script).name} {' '.join(map(str, args))[:60]}"
    TIMINGS[key] = round(time.time() - t0, 1)
    if check:
        _check(proc, f"accelerate launch {config}")
    return proc


def run_jobs(out, jobs, env, config, launch_args=(), check=True, extra=()):
    """Launch tests/dist_train_run.py with an accelerate config."""
    return launch(config, RUNNER, [out, "--jobs", ",".join(jobs), *extra], env, launch_args=launch_args, check=check)


def info(run_dir):
    return json.loads((Path(run_dir) / "info.json").read_text())


def assert_same_training(ref_dir, run_dir, *, weights=(1e-5, 1e-6), grads=(1e-4, 1e-5), check_grads=True):
    """Same final checkpoint files (all tensors) and, optionally, the same full gradients in the hook."""
    ref_dir, run_dir = Path(ref_dir), Path(run_dir)
    files = sorted(p.relative_to(ref_dir) for p in (ref_dir / "final").glob("*.safetensors"))
    assert files, f"no checkpoint in {ref_dir / 'final'}"
    assert sorted(p.relative_to(run_dir) for p in (run_dir / "final").glob("*.safetensors")) == files
    pairs = [(f, weights) for f in files] + ([(Path("hook.safetensors"), grads)] if check_grads else [])
    if check_grads and (ref_dir / "transform.safetensors").is_file():  # what the gradient transforms saw
        pairs.append((Path("transform.safetensors"), grads))
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


def assert_weight_space_ran(run_dir, steps=2):
    """An `@ws` job: the transform ran once per optimizer step on every trained tensor, the stateful transform's
    state covers every step, and the ball constraint projected something."""
    ws = info(run_dir)["weight_space"]
    assert ws["transform_calls"] == [steps] and ws["n_logged"] == ws["n_trainable"], ws
    assert ws["ema_calls"] == [steps] and ws["projected"] > 0, ws


def assert_trained(ref_dir, atol_rel=1e-6, factor=1e3, atol=None):
    """The reference run moved the weights `factor` x beyond the comparison tolerance (so it means something)."""
    ref_dir = Path(ref_dir)
    for f in (ref_dir / "final").glob("*.safetensors"):
        init_f = ref_dir / "init" / f.name
        if not init_f.is_file():  # R-Adapt writes its anchor only once trained
            continue
        final, init = load_file(f), load_file(init_f)
        scale = max(t.float().abs().max().item() for t in final.values())
        moved = max((final[k].float() - init[k].float()).abs().max().item() for k in final)
        assert moved > factor * (atol if atol is not None else atol_rel * scale), f"{f}: training moved the weights by only {moved:.2e}"


# -- fast checks -------------------------------------------------------------------------------------------------
def test_accelerate_configs_are_consistent():
    import yaml

    names = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    launched = Path(__file__).read_text()
    assert not [n for n in names if f'"{n}"' not in launched], "every accelerate config is launched by a test here"
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
    # every shipped method supports every stage (tested below with 2 processes), except GRACE and its LVLM variant
    # (same two-pass step) and DiGraP's LVLM method (its recipe evaluates the in-memory model): DDP and ZeRO-2
    from vlmrobust.trainers import METHODS

    for name in METHODS.names():
        stages = METHODS.get(name).trainer_class.supported_zero_stages
        assert stages == (0, 2) if name in ("grace", "grace_vqa", "digrap_vqa") else 3 in stages, name


@pytest.mark.parametrize("attack", ["pgd", "apgd"])
@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_per_sample_random_starts_do_not_depend_on_the_batch_split(attack, norm):
    """With `sample_seeds`, an image's random start (and so its adversarial example) is the same in any batch."""
    from vlmrobust.attacks import APGD, PGD

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    seeds = torch.tensor([11, 12, 13, 14])
    eps = 4 / 255 if norm == "Linf" else 0.5

    def run(idx, seed):
        if attack == "pgd":
            atk = PGD(net, norm=norm, eps=eps, steps=2, random_start=True, seed=seed)
            atk.sample_seeds = seeds[idx]
            return atk(x[idx], y[idx])
        atk = APGD(net, norm=norm, eps=eps, steps=2, random_start=True, seed=seed, early_stop=False)
        atk.sample_seeds = seeds[idx]
        return atk.perturb(x[idx], y[idx]).x_max_loss

    whole = run(torch.arange(4), seed=0)
    split = torch.cat([run(torch.tensor([0, 1]), seed=5), run(torch.tensor([2, 3]), seed=9)])
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-6)
    assert not torch.equal(whole, x)


def test_trainer_keys_random_starts_to_the_global_batch_position(tiny_open_clip_dir, image_dataset):
    """Micro-batch k of rank r (of N, batch B) starts at global position (k*N + r)*B."""
    from vlmrobust.models import create_model
    from vlmrobust.trainers import FAREConfig, FARETrainer

    args = FAREConfig(output_dir="o", use_cpu=True, per_device_train_batch_size=2, report_to="none")
    trainer = FARETrainer(create_model(f"local-dir:{tiny_open_clip_dir}"), args, train_dataset=image_dataset)
    trainer._micro_batch = (0, 1)  # second micro-batch of step 0, 1 process
    one = trainer._sample_seeds(2)
    trainer._attack_call = 0
    trainer._micro_batch = (0, 0)
    object.__setattr__(args, "per_device_train_batch_size", 4)
    four = trainer._sample_seeds(4)
    torch.testing.assert_close(one, four[2:])


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


# -- launched runs (2 CPU processes, gloo) -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tiny_open_clip_dir):
    return _env(tiny_open_clip_dir)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    """Every job on 1 process, global batch 4, with the untrained weights saved too (launched with single_gpu.yaml,
    which on a machine without GPUs runs on the CPU; fp32, as the runs it is compared with)."""
    out = tmp_path_factory.mktemp("ref_1proc")
    run_jobs(out, [*ALL, "fare@adam", *WS, *WS_METHODS, "grace", "grace_vqa", "grace_vqa_gv", *DIGRAP_VQA], env,
             config="single_gpu.yaml", launch_args=("--mixed_precision", "no"), extra=["--save_init"])
    for job in [*ALL, "grace", "grace_vqa", "grace_vqa_gv"]:
        assert info(out / job)["world_size"] == 1
        assert_trained(out / job)
    for job in WS:
        assert_weight_space_ran(out / job.replace("@", "-"))
    assert_trained(out / "fare-adam", atol=3e-4, factor=5)  # Adam at lr 1e-3: 2 steps move ~2e-3
    return out


def _check_ws(run, ref, jobs=WS):
    for job in jobs:
        d = job.replace("@", "-")
        assert_weight_space_ran(run / d)
        assert_same_training(ref / d.replace("-ga2", ""), run / d)


def _check_ws_methods(run, ref, jobs=(*WS_METHODS, "at@digrap@ga2")):
    """Same weights, gradients, and per-tensor ω / γ / SPD decay count as the 1-process run."""
    _check_ws_jobs(run, ref, jobs)
    assert any(0 < w < 1 or w == 1.0 for w in info(ref / "at-digrap")["weight_space"]["omega"].values())


def _check_ws_jobs(run, ref, jobs):
    for job in jobs:
        d = job.replace("@", "-")
        assert_same_training(ref / d.replace("-ga2", ""), run / d)
        want, got = info(ref / d.replace("-ga2", ""))["weight_space"], info(run / d)["weight_space"]
        assert want.keys() == got.keys() and want, (job, got)
        for key, value in want.items():
            assert got[key] == (pytest.approx(value, abs=1e-6) if isinstance(value, dict) else value), (job, key)


def _check_digrap_vqa(run, ref, stage):
    """digrap_vqa: same adapters (merged checkpoint and unmerged extra weights), gradients and ω as 1 process."""
    job = DIGRAP_VQA[0].replace("@", "-")
    assert (info(run / job)["world_size"], info(run / job)["zero_stage"]) == (2, stage)
    assert_trained(ref / job)
    _check_ws_jobs(run, ref, DIGRAP_VQA)
    omega = info(ref / job)["weight_space"]["omega"]
    assert omega and all(".lora_" in n for n in omega) and any(w != 0.5 for w in omega.values())


def _check_ga(run, ref, job):
    got = info(run / f"{job}-ga2")
    assert (got["world_size"], got["per_device"], got["ga"]) == (2, 1, 2)
    # the hook saw the full gradient of the 4-image global batch, once per optimizer step
    assert_same_training(ref / job, run / f"{job}-ga2")


@pytest.mark.slow
def test_ddp_two_processes_match_one(reference, env, tmp_path):
    run_jobs(tmp_path, [*ALL, "fare@ga2", "at@ga2", *WS, "fare@ws@ga2", *WS_METHODS, "at@digrap@ga2", *GRACE,
                        *GRACE_VQA, *DIGRAP_VQA], env, config="cpu_multi.yaml")
    for job in [*ALL, "grace", "grace_vqa", "grace_vqa_gv"]:
        assert (info(tmp_path / job)["world_size"], info(tmp_path / job)["zero_stage"]) == (2, 0), job
        assert_same_training(reference / job, tmp_path / job)
    _check_ws(tmp_path, reference, [*WS, "fare@ws@ga2"])
    _check_ws_methods(tmp_path, reference)
    for job in ("fare", "at", "grace", "grace_vqa"):
        _check_ga(tmp_path, reference, job)
    _check_digrap_vqa(tmp_path, reference, 0)


def _plain_loaders_read(ckpt_dir, saved_file):
    """A ZeRO-3 checkpoint holds the gathered weights, in a layout plain open_clip / transformers load."""
    saved = load_file(saved_file)
    if saved_file.name == "open_clip_model.safetensors":
        import open_clip

        model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{ckpt_dir}")
        sd = model.state_dict()
    else:
        from transformers import AutoModelForImageTextToText

        sd = AutoModelForImageTextToText.from_pretrained(ckpt_dir).state_dict()
    visual = [k for k in saved if "visual" in k or "vision" in k]
    assert visual and all(saved[k].numel() > 0 for k in visual), "partitioned (empty) tensors were saved"
    for k in visual:
        if k in sd:
            torch.testing.assert_close(sd[k], saved[k].to(sd[k].dtype))


@pytest.mark.slow
@pytest.mark.parametrize("stage,config", [(2, "cpu_deepspeed_zero2.yaml"), (3, "cpu_deepspeed_zero3.yaml")])
def test_zero_two_processes_match_one_and_resume(stage, config, reference, env, tmp_path):
    jobs = [*ALL, "fare@ga2", "at@ga2", "fare@bf16", *WS, "fare@ws@ga2", *WS_METHODS, "at@digrap@ga2"] + (
        [*GRACE, *GRACE_VQA, *DIGRAP_VQA] if stage == 2 else [])
    if stage == 3:
        jobs.append("fare_llava@ckpt")  # activation checkpointing of an LVLM tower under ZeRO-3
    # the last job (with the weight-space hooks, so their state must come back too) is killed (every rank, os._exit)
    # right after checkpoint-1 is written
    proc = run_jobs(tmp_path, [*jobs, "fare@ws@kill1"], env, config=config, check=False)
    assert "KILLED after checkpoint-1" in proc.stdout and "DONE" not in proc.stdout, proc.stderr[-4000:]
    assert proc.returncode != 0
    for job in ALL:
        assert (info(tmp_path / job)["world_size"], info(tmp_path / job)["zero_stage"]) == (2, stage), job
        assert_same_training(reference / job, tmp_path / job)
    for job in ("fare", "at", *(["grace", "grace_vqa"] if stage == 2 else [])):
        _check_ga(tmp_path, reference, job)
    if stage == 2:
        for job in ("grace", "grace_vqa", "grace_vqa_gv"):
            assert info(tmp_path / job)["zero_stage"] == 2, job
            assert_same_training(reference / job, tmp_path / job)
        _check_digrap_vqa(tmp_path, reference, 2)
    _check_ws(tmp_path, reference, [*WS, "fare@ws@ga2"])
    _check_ws_methods(tmp_path, reference)
    if stage == 3:
        assert_same_training(reference / "fare_llava", tmp_path / "fare_llava-ckpt")
        _plain_loaders_read(tmp_path / "fare" / "final", tmp_path / "fare" / "final" / "open_clip_model.safetensors")
        _plain_loaders_read(tmp_path / "fare_llava" / "final", tmp_path / "fare_llava" / "final" / "model.safetensors")
    # bf16 from the JSON's bf16 section: the tower runs in bf16, the attack's images / perturbation stay fp32
    assert info(tmp_path / "fare-bf16")["attack_dtypes"] == [["torch.float32", "torch.bfloat16"]]
    # kill-and-resume: a new launch continues from checkpoint-1 (weights, optimizer, the hooks' state by parameter
    # name) and reaches the uninterrupted weights
    killed = tmp_path / "fare-ws-resume"
    assert (killed / "checkpoint-1").is_dir() and not (killed / "checkpoint-2").exists()
    run_jobs(tmp_path, ["fare@ws@resume"], env, config=config)
    assert info(killed)["resumed_from"].endswith("checkpoint-1") and info(killed)["global_step"] == 2
    assert info(killed)["weight_space"]["ema_calls"] == [2]  # 1 call before the kill, restored, + 1 after
    assert_same_training(tmp_path / "fare-ws", killed, check_grads=False)
    assert_same_training(reference / "fare-ws", killed, check_grads=False)


@pytest.mark.slow
def test_weight_space_hooks_under_zero3_with_every_parameter_partitioned(reference, env, tmp_path):
    """zero3.json keeps parameters under 1e6 elements whole on every rank (all of the tiny models'): with the
    persistence threshold at 0 every tensor is partitioned, so the constraint's write-back (fp32 master partition +
    gather / modify / re-partition) and the gathered gradients are really exercised."""
    ds = json.loads((ROOT / "recipes/ds_configs/zero3.json").read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "zero3_partitioned.json").write_text(json.dumps(ds))
    launch_args = ("--deepspeed_config_file", str(tmp_path / "zero3_partitioned.json"))
    # the last job (DiGraP, 3 steps) is killed right after checkpoint-2, then resumed
    proc = run_jobs(tmp_path, [*WS, "fare@ws@ga2", *WS_METHODS, "at@digrap@ga2", "at@digrap@kill2"], env,
                    config="cpu_deepspeed_zero3.yaml", launch_args=launch_args, check=False)
    assert "KILLED after checkpoint-2" in proc.stdout and "DONE" not in proc.stdout, proc.stderr[-4000:]
    _check_ws(tmp_path, reference, [*WS, "fare@ws@ga2"])
    _check_ws_methods(tmp_path, reference)
    run_jobs(tmp_path, ["at@digrap@resume"], env, config="cpu_deepspeed_zero3.yaml", launch_args=launch_args)
    killed = tmp_path / "at-digrap-resume"
    assert info(killed)["resumed_from"].endswith("checkpoint-2") and info(killed)["global_step"] == 3
    assert_same_training(reference / "at-digrap", killed, check_grads=False)
    assert info(killed)["weight_space"]["omega"] == pytest.approx(
        info(reference / "at-digrap")["weight_space"]["omega"], abs=1e-6)


@pytest.mark.slow
def test_zero3_cpu_offload_matches_one_process(reference, env, tmp_path):
    """deepspeed_zero3_offload.yaml as shipped (DeepSpeed's CPU Adam from the JSON), 2 processes."""
    run_jobs(tmp_path, ["fare@adam"], env, config="deepspeed_zero3_offload.yaml",
             launch_args=("--num_processes", "2"))
    got = info(tmp_path / "fare-adam")
    assert (got["world_size"], got["zero_stage"], got["optimizer"]) == (2, 3, "DeepSpeedCPUAdam")
    ref, run = (load_file(d / "fare-adam" / "final" / "open_clip_model.safetensors") for d in (reference, tmp_path))
    assert run.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(run[k], ref[k], rtol=1e-4, atol=3e-4, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.slow
def test_multi_node_config_on_two_local_machines(reference, env, tmp_path):
    """multi_node.yaml as 2 machines x 1 process on 127.0.0.1 (--machine_rank / --main_process_ip)."""
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        cmd = [*_accelerate(), "launch", "--config_file", str(CONFIGS / "multi_node.yaml"), "--num_processes", "2",
               "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port,
               "--mixed_precision", "no", str(RUNNER), str(tmp_path), "--jobs", "fare"]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    t0 = time.time()
    for p in procs:
        out, err = p.communicate(timeout=900)
        _check(SimpleNamespace(returncode=p.returncode, stdout=out, stderr=err), "multi_node.yaml")
    TIMINGS["multi_node.yaml (2 launchers)"] = round(time.time() - t0, 1)
    assert info(tmp_path / "fare")["world_size"] == 2
    assert_same_training(reference / "fare", tmp_path / "fare")


def _recipe_args(out, model_dir, *extra):
    return ["--config", ROOT / "recipes/configs/quickstart.yaml", "--model_name_or_path", f"local-dir:{model_dir}",
            "--output_dir", out, "--max_steps", "2", "--per_device_train_batch_size", "4", "--attack_steps", "2",
            "--save_strategy", "no", "--logging_steps", "1", "--disable_tqdm", "true", "--eval_before", "false",
            *extra]


@pytest.mark.slow
@pytest.mark.parametrize("config,launch_args", [
    ("deepspeed_zero2.yaml", ("--num_processes", "2")),  # the README's DeepSpeed command, CPU variant
    ("multi_gpu.yaml", ("--num_processes", "2")),  # bf16 autocast as shipped (CPU autocast here)
])
def test_shipped_configs_launch_the_clip_recipe(config, launch_args, env, tiny_open_clip_dir, tmp_path):
    """The GPU configs as shipped (8 GPUs -> 2 CPU processes), launching recipes/fare_clip.py end to end."""
    evals = (["--eval_max_samples", "16", "--eval_attack_steps", "2", "--eval_epsilons", "4/255"]
             if config == "deepspeed_zero2.yaml" else ["--eval_after", "false"])
    launch(config, ROOT / "recipes/fare_clip.py", _recipe_args(tmp_path, tiny_open_clip_dir, *evals), env,
           launch_args=launch_args)
    import open_clip

    open_clip.create_model_and_transforms(f"local-dir:{tmp_path}")  # a plain open_clip checkpoint
    if config == "deepspeed_zero2.yaml":
        res = json.loads((tmp_path / "results.json").read_text())
        assert res["run"]["train_metrics"]["epoch"] > 0 and "after" in res["run"]["rows"]


@pytest.mark.slow
def test_shipped_zero3_config_launches_the_llava_recipe(env, tmp_path):
    """deepspeed_zero3.yaml with recipes/fare_llava.py (the LVLM recipe under ZeRO-3, 2 CPU processes)."""
    args = ["--config", ROOT / "recipes/configs/quickstart_llava.yaml", "--output_dir", tmp_path, "--sft_steps", "0",
            "--train_samples", "16", "--eval_samples", "8", "--eval_attack_steps", "2", "--eval_before", "false",
            "--max_steps", "2", "--per_device_train_batch_size", "2", "--attack_steps", "2", "--disable_tqdm", "true"]
    launch("deepspeed_zero3.yaml", ROOT / "recipes/fare_llava.py", args, env, launch_args=("--num_processes", "2"))
    res = json.loads((tmp_path / "results.json").read_text())
    assert "after" in res["run"]["rows"] and res["format"] == "vlmrobust.results/v2"
    from transformers import LlavaForConditionalGeneration

    LlavaForConditionalGeneration.from_pretrained(tmp_path)  # gathered ZeRO-3 weights, transformers' layout


def test_zz_print_launch_timings():
    """Not a check: the wall time of each launch above (pytest -s shows it)."""
    for k, v in TIMINGS.items():
        print(f"[launch] {k}: {v} s")
