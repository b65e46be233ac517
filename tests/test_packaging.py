"""The built wheel works without the source tree: suites ship inside it and `vlmrobust eval` runs from it."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installs_and_evaluates_the_stand_in_without_the_source_tree(tmp_path):
    # build from a copy of the sources: a build/ folder left in the checkout would feed stale files into the wheel
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                             "outputs", "mutants", ".*_cache"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(src)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheels.glob("vlmrobust-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "vlmrobust/eval_suites/digits.yaml" in names and "vlmrobust/eval_suites/_common/datasets.yaml" in names

    # a fresh venv: the wheel installed into it, the dependencies borrowed from this environment through a path
    # entry (a .pth line adds the folder without running its .pth files, so this checkout's editable hook stays out)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    venv_site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                    check=True, capture_output=True, text=True).stdout.strip())
    (venv_site / "_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VLMROBUST_SUITES_DIR")}
    where = subprocess.run([str(py), "-c", "import vlmrobust; print(vlmrobust.__file__)"], check=True,
                           capture_output=True, text=True, env=env, cwd=tmp_path).stdout.strip()
    assert Path(where).is_relative_to(venv), f"imported {where}, not the installed wheel"

    out = tmp_path / "eval"
    proc = subprocess.run([str(venv / "bin" / "vlmrobust"), "eval", "--model", "vlmrobust:tiny-digits-clip", "--suite",
                           "digits", "--output", str(out), "--n-samples", "16", "--device", "cpu", "--no-progress",
                           "--threads", "1"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["cells"] and (out / "report.md").is_file()
