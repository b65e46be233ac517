"""Same seed, another thread count: the same LVLM fine-tune + attacked evaluation, to the bit (issue 19).

The LVLM recipe (SFT of the tiny random LLaVA, APGD-attacked VQA evaluation, FARE on its tower, save, reload,
attacked evaluation) runs twice in subprocesses, with 1 and 3 intra-op threads, under `full_determinism` (MKL's strict
mode, set when vlmrobust is imported, plus `vlmrobust.utils.determinism.enable_determinism`). Batches are the
quickstart's 32, so that the thread-dependent kernels actually split their work: with `full_determinism` off, or
`MKL_CBWR=AUTO`, the weights already differ after the first SFT step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from vlmrobust.utils.determinism import (
    ThreadInvariantLayerNorm,
    configure_mkl_cbwr,
    make_thread_invariant,
    thread_invariant_sigmoid,
)

ROOT = Path(__file__).resolve().parent.parent

RUN = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from vlmrobust.vlm_recipe_main import run_lvlm_fare_recipe
run_lvlm_fare_recipe("fare", sys.argv[2:])
"""

ARGS = ["--config", str(ROOT / "recipes/configs/quickstart_llava.yaml"), "--sft_steps", "6", "--train_samples", "64",
        "--max_steps", "2", "--attack_steps", "2", "--eval_samples", "24", "--eval_batch_size", "24",
        "--eval_attack_steps", "3", "--eval_targets", "yes", "--disable_tqdm", "true", "--report_to", "none",
        "--logging_steps", "1", "--use_cpu", "true"]


def _launch(threads: int, out: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUN, str(threads), *ARGS, "--output_dir", str(out)], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _strip(obj, drop=("seconds", "train_runtime", "train_samples_per_second", "train_steps_per_second", "updated",
                       "created", "timings", "attacked_questions_per_s", "attacked_images_per_s")):
    """`obj` without wall-clock fields (everything else must match to the bit)."""
    if isinstance(obj, dict):
        return {k: _strip(v, drop) for k, v in obj.items() if k not in drop}
    if isinstance(obj, list):
        return [_strip(v, drop) for v in obj]
    return obj


def _results(out: Path) -> dict:
    res = json.loads((out / "results.json").read_text())
    assert res["format"] == "vlmrobust.results/v2" and res["run"]["rows"] == ["before", "after"]
    return {"cells": _strip(res["cells"]), "train": _strip(res["run"]["train_metrics"])}


def test_lvlm_recipe_is_bitwise_identical_for_1_and_3_threads(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_CBWR")}
    # OMP_WAIT_POLICY: idle OpenMP threads sleep instead of spinning (3 threads on a shared 2-core runner)
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]), OMP_WAIT_POLICY="PASSIVE",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    procs = {t: _launch(t, tmp_path / f"threads{t}", env) for t in (1, 3)}
    for t, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{t} threads failed:\n{stdout[-2000:]}\n{stderr[-4000:]}"
    one, three = tmp_path / "threads1", tmp_path / "threads3"
    for name in ("sft/model.safetensors", "model.safetensors"):  # after SFT (whole model), after FARE (tower)
        a, b = load_file(one / name), load_file(three / name)
        assert a.keys() == b.keys()
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        assert not differ, f"{name}: {len(differ)} of {len(a)} tensors differ between 1 and 3 threads, e.g. {differ[:3]}"
    assert _results(one) == _results(three)
    cells = _results(one)["cells"]
    assert len(cells) >= 4 and all(c.get("n") == 24 for k, c in cells.items() if k.endswith("|clean"))


# -- the pieces ------------------------------------------------------------------------------------------------------
def _forward_backward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    module.zero_grad()
    x = x.clone().requires_grad_()
    y = module(x)
    (y * torch.cos(torch.arange(y.numel(), dtype=torch.float32)).view_as(y)).sum().backward()
    grads = [p.grad.flatten() for p in module.parameters()]
    return torch.cat([y.detach().flatten(), x.grad.flatten(), *grads])


@pytest.mark.parametrize("build,shape", [
    (lambda: nn.LayerNorm(32), (64, 41, 32)),                    # fused backward: γ / β summed per thread
    (lambda: nn.SiLU(), (83_968,)),                               # vectorised vs scalar tails at chunk ends
    (lambda: nn.GELU(approximate="tanh"), (100_003,)),
    (lambda: nn.Sigmoid(), (100_003,)),
    (lambda: nn.Conv2d(3, 32, 8, stride=8), (64, 3, 32, 32)),     # oneDNN weight gradient
    (lambda: nn.Conv3d(3, 32, (2, 14, 14), stride=(2, 14, 14)), (1024, 3, 2, 14, 14)),  # Qwen's patch embedding
])
def test_swapped_modules_match_the_originals_and_do_not_depend_on_the_thread_count(build, shape):
    torch.manual_seed(0)
    original = build()
    for p in original.parameters():
        nn.init.normal_(p, std=0.5)
    swapped = nn.Sequential(build())
    swapped[0].load_state_dict(original.state_dict())
    assert make_thread_invariant(swapped) == 1 and type(swapped[0]) is not type(original)
    assert make_thread_invariant(swapped) == 0  # idempotent
    assert swapped.state_dict().keys() == nn.Sequential(original).state_dict().keys()
    x = torch.randn(*shape) * 4
    threads = torch.get_num_threads()
    try:
        runs = []
        for t in (1, 3, 4):
            torch.set_num_threads(t)
            runs.append(_forward_backward(swapped, x))
        torch.set_num_threads(1)
        reference = _forward_backward(original, x)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    torch.testing.assert_close(runs[0], reference, rtol=1e-4, atol=1e-4)


def test_thread_invariant_sigmoid_has_finite_gradients_at_large_inputs():
    x = torch.tensor([-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4], requires_grad=True)
    y = thread_invariant_sigmoid(x)
    y.sum().backward()
    torch.testing.assert_close(y, torch.sigmoid(x.detach()))
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad, (torch.sigmoid(x) * (1 - torch.sigmoid(x))).detach())


def test_layer_norm_swap_keeps_parameters_and_checkpoints():
    ln = nn.LayerNorm(8)
    weight = ln.weight
    model = nn.Sequential(ln, nn.Linear(8, 8))
    make_thread_invariant(model)
    assert type(model[0]) is ThreadInvariantLayerNorm and model[0].weight is weight
    x = torch.randn(4, 8)
    torch.testing.assert_close(model[0](x), F.layer_norm(x, (8,), ln.weight, ln.bias))


def test_configure_mkl_cbwr_respects_the_users_value(monkeypatch):
    monkeypatch.delenv("MKL_CBWR", raising=False)
    assert configure_mkl_cbwr() == "AUTO,STRICT" and os.environ["MKL_CBWR"] == "AUTO,STRICT"
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    assert configure_mkl_cbwr() == "COMPATIBLE"


MKL_PROBE = """
import torch, warnings
if {matmul_first}:
    torch.ones(4, 4) @ torch.ones(4, 4)   # MKL initialised before vlmrobust is imported: too late for MKL_CBWR
from vlmrobust.utils.determinism import enable_determinism, mkl_strict
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    info = enable_determinism()
print(mkl_strict(), info["mkl_strict"], any("strict reproducibility" in str(x.message) for x in w))
"""


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="MKL only")
def test_importing_vlmrobust_turns_mkl_strict_mode_on_and_a_late_import_warns():
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])

    def probe(matmul_first: bool, **extra) -> str:
        code = MKL_PROBE.format(matmul_first=matmul_first)
        proc = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout.split()

    assert probe(False) == ["True", "True", "False"]
    assert probe(True) == ["False", "False", "True"]
    assert probe(False, MKL_CBWR="AUTO") == ["False", "False", "True"]  # the user's own choice is kept
