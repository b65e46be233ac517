"""Faults: a run SIGKILLed at a step or during a checkpoint save resumes to the uninterrupted weights; a full disk
gives a clear error and leaves no corrupt or temporary file (issue 18)."""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlmrobust.layout import OPEN_CLIP_WEIGHTS_NAME

ROOT = Path(__file__).resolve().parent.parent


def _run(tiny, out, kill_at=0, mode="none", resume=False, method="fare") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "tests" / "fault_run.py"), str(tiny), str(out), str(kill_at),
                           mode, "1" if resume else "0", method], env=env, capture_output=True, text=True, timeout=300)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / OPEN_CLIP_WEIGHTS_NAME)


@pytest.fixture(scope="module")
def uninterrupted(tiny_open_clip_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "full"
    proc = _run(tiny_open_clip_dir, out)
    assert proc.returncode == 0 and "DONE 4" in proc.stdout, proc.stderr[-3000:]
    return _weights(out)


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_equals_the_uninterrupted_run(tiny_open_clip_dir, uninterrupted,
                                                                          tmp_path):
    step = random.Random(os.environ.get("PYTHONHASHSEED", "0")).randint(1, 3)  # reproducible: same seed, same step
    out = tmp_path / "cut"
    killed = _run(tiny_open_clip_dir, out, step, "after-save")
    assert killed.returncode == -9, (step, killed.stderr[-2000:])
    assert (out / f"checkpoint-{step}" / "trainer_state.json").is_file()
    assert not (out / f"checkpoint-{step + 1}").exists()
    resumed = _run(tiny_open_clip_dir, out, resume=True)
    assert resumed.returncode == 0 and "DONE 4" in resumed.stdout, (step, resumed.stderr[-3000:])
    _assert_same(_weights(out), uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize("lvlm", ["llava:tiny", "qwen_vl:tiny"])
def test_sigkill_then_resume_equals_the_uninterrupted_run_for_an_lvlm(lvlm, tmp_path):
    """The same for FARE on a tiny LVLM's tower (transformers layout: the whole LVLM is saved and resumed; LLaVA is
    saved in transformers' legacy key layout, which the resume must map back)."""
    full, out = tmp_path / "full", tmp_path / "cut"
    proc = _run(lvlm, full)
    assert proc.returncode == 0 and "DONE 4" in proc.stdout, proc.stderr[-3000:]
    killed = _run(lvlm, out, 2, "after-save")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "checkpoint-2" / "trainer_state.json").is_file() and not (out / "checkpoint-3").exists()
    resumed = _run(lvlm, out, resume=True)
    assert resumed.returncode == 0 and "DONE 4" in resumed.stdout, resumed.stderr[-3000:]
    _assert_same(load_file(out / "model.safetensors"), load_file(full / "model.safetensors"))
    assert not torch.equal(load_file(out / "model.safetensors")[_a_tower_weight(out)],
                           load_file(out / "checkpoint-2" / "model.safetensors")[_a_tower_weight(out)])  # it trained on


@pytest.mark.slow
@pytest.mark.parametrize("lvlm", ["llava:tiny", "qwen_vl:tiny"])
def test_sigkill_then_resume_equals_the_uninterrupted_run_for_grace_vqa(lvlm, tmp_path):
    """GRACE's LVLM trainer (LoRA on the language model and the projector, LAR-AWP with K = 2): SIGKILLed right after
    checkpoint 1, resumed (adapters, optimizer, curvature EMA and ranks), its merged final weights equal the
    uninterrupted run's. Planted bug, checked once by hand on LLaVA: the adapters not restored fails here. (The LAR-AWP
    state not restored does not: on these 6 adapted layers the fresh curvature EMA gives the same ranks; the
    in-process resume test of tests/test_grace_vqa.py compares the restored ranks and EMA directly.)"""
    full, out = tmp_path / "full", tmp_path / "cut"
    proc = _run(lvlm, full, method="grace")
    assert proc.returncode == 0 and "DONE 4" in proc.stdout, proc.stderr[-3000:]
    killed = _run(lvlm, out, 1, "after-save", method="grace")  # step 2 (not a multiple of K) needs the saved ranks
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "checkpoint-1" / "vlmrobust_lar_awp.json").is_file() and not (out / "checkpoint-2").exists()
    resumed = _run(lvlm, out, resume=True, method="grace")
    assert resumed.returncode == 0 and "DONE 4" in resumed.stdout, resumed.stderr[-3000:]
    final, at_1 = load_file(out / "model.safetensors"), load_file(out / "checkpoint-1" / "model.safetensors")
    _assert_same(final, load_file(full / "model.safetensors"))
    assert any(not torch.equal(final[k], at_1[k]) for k in final)  # it trained on after the resume


def _a_tower_weight(folder: Path) -> str:
    return next(k for k in load_file(folder / "model.safetensors") if ("vision_tower" in k or "visual" in k)
                and k.endswith("weight"))


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_save_resumes_from_the_complete_one(tiny_open_clip_dir, uninterrupted, tmp_path):
    out = tmp_path / "cut"
    killed = _run(tiny_open_clip_dir, out, 3, "during-save")
    assert killed.returncode == -9, killed.stderr[-2000:]
    # the half-saved checkpoint: weights written, trainer_state.json not
    assert (out / "checkpoint-3" / OPEN_CLIP_WEIGHTS_NAME).is_file()
    assert not (out / "checkpoint-3" / "trainer_state.json").exists()
    resumed = _run(tiny_open_clip_dir, out, resume=True)
    assert resumed.returncode == 0 and "DONE 4" in resumed.stdout, resumed.stderr[-3000:]
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    _assert_same(_weights(out), uninterrupted)


# -- a full disk ------------------------------------------------------------------------------------------------------
def _no_space(*a, **kw):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_while_writing_json_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    from vlmrobust.utils.io import atomic_write_json

    path = tmp_path / "results.json"
    atomic_write_json(path, {"old": 1})
    monkeypatch.setattr(os, "fsync", _no_space)
    with pytest.raises(OSError, match=rf"No space left on device.*{path}") as exc:
        atomic_write_json(path, {"new": 2})
    assert exc.value.errno == errno.ENOSPC
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left


def test_full_disk_while_saving_weights_names_the_file_and_keeps_the_old_one(tiny_open_clip_dir, tmp_path,
                                                                              monkeypatch):
    import safetensors.torch

    from vlmrobust.models import create_model

    model = create_model(f"local-dir:{tiny_open_clip_dir}")
    out = tmp_path / "saved"
    model.save_pretrained(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def partial_then_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)  # some bytes made it before the disk filled up
        _no_space()

    monkeypatch.setattr(safetensors.torch, "save_file", partial_then_full)
    with torch.no_grad():
        model.image_encoder.tower.proj.mul_(2)
    with pytest.raises(OSError, match=rf"No space left on device.*{out / OPEN_CLIP_WEIGHTS_NAME}"):
        model.save_pretrained(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# -- SIGKILL mid-eval ---------------------------------------------------------------------------------------------------
EVAL = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from vlmrobust.eval.runner import run_suite
tiny, out, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
suite = {"name": "faults", "datasets": [{"name": "digits", "source": "digits", "n_samples": 12, "batch_size": 6,
         "attacks": [{"attack": "apgd-ce", "norm": "Linf", "eps": ["2/255", "4/255", "8/255"], "steps": 2}]}]}
done = []
def on_cell(key, cell):
    done.append(key)
    if kill_after and len(done) == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
res = run_suite({"m": f"local-dir:{tiny}"}, suite, out, device="cpu", on_cell=on_cell, progress=False)
print("LAST_RUN", res["last_run"]["computed_cells"], res["last_run"]["reused_cells"], flush=True)
"""


def _eval(tiny, out, kill_after=0):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", EVAL, str(tiny), str(out), str(kill_after)], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_sigkill_mid_eval_resumes_from_the_stored_cells(tiny_open_clip_dir, tmp_path):
    full = _eval(tiny_open_clip_dir, tmp_path / "full")
    assert full.returncode == 0 and "LAST_RUN 4 0" in full.stdout, full.stderr[-3000:]
    killed = _eval(tiny_open_clip_dir, tmp_path / "cut", kill_after=2)
    assert killed.returncode == -9, killed.stderr[-2000:]
    stored = json.loads((tmp_path / "cut" / "results.json").read_text())  # valid JSON: written atomically
    assert len(stored["cells"]) == 2
    resumed = _eval(tiny_open_clip_dir, tmp_path / "cut")
    assert resumed.returncode == 0 and "LAST_RUN 2 2" in resumed.stdout, resumed.stderr[-3000:]
    a = json.loads((tmp_path / "full" / "results.json").read_text())["cells"]
    b = json.loads((tmp_path / "cut" / "results.json").read_text())["cells"]
    assert a.keys() == b.keys()
    for k in a:
        assert {f: v for f, v in a[k].items() if f != "seconds" and "per_s" not in f} == \
               {f: v for f, v in b[k].items() if f != "seconds" and "per_s" not in f}, k
