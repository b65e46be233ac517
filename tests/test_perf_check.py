"""benchmarks/gpu_check.sh --smoke: the GPU performance check's code paths, on the CPU with tiny models."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_row(tmp_path):
    out = tmp_path / "smoke.json"
    env = dict(os.environ, PYTHON=sys.executable,
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", "--output", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["smoke"] and data["device_type"] == "cpu" and data["versions"]["torch"]
    rows = data["results"]
    assert not [r for r in rows if "error" in r or "skipped" in r], rows
    methods = {r["method"] for r in rows}
    assert {"fare", "tecoa", "eval apgd-ce"} <= methods
    towers = {r["model"] for r in rows if "tower" in r["model"]}
    assert towers == {"tiny llava tower", "tiny qwen tower"}
    for r in rows:
        assert r["img_per_s"] > 0
        if r["method"] in ("fare", "tecoa", "digrap", "grace", "eval apgd-ce"):  # with a plain twin (PLAIN_STEPS)
            assert r["ratio_vs_plain_fp32"] > 0
        if r["method"] != "eval apgd-ce":
            assert r["gflop_per_image"] > 0 and r["peak_mem_gib"] > 0
            assert r["plain_fp32"] is None or r["plain_fp32"]["img_per_s"] > 0
            assert r["settings"]["precision"] == "fp32" and not r["settings"]["compiled"]  # the CPU's plain path


def test_card_peak_is_named():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import perf_models

    assert perf_models.card_peak("NVIDIA H100 80GB HBM3") == ("H100 dense bf16", 989.0)
    assert perf_models.card_peak("NVIDIA GH200 480GB")[1] == 989.0
    assert perf_models.card_peak("Some other card") == (None, None)


def test_plan_covers_the_issue_rows():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import perf_check

    rows = perf_check.plan(False, ["fare", "tecoa", "grace"])
    keys = {(r["kind"], r["model"], r.get("method")) for r in rows}
    for arch in ("ViT-B-32", "ViT-L-14"):
        assert {("clip", arch, m) for m in ("fare", "tecoa", "grace")} <= keys
    assert ("llava", "llava", "fare") in keys and ("qwen", "qwen", "fare") in keys
    assert ("eval", "ViT-L-14", None) in keys and rows[1]["model"] == "ViT-L-14"  # the target row runs first
