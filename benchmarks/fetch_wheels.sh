#!/usr/bin/env bash
# Fetch, here, the wheels gpu_check.sh needs on a machine without a registry (x86-64, Python 3.12): open_clip and
# its two dependencies the lent GPU machines lack. They land in .whl/ (git-ignored); carry that folder.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .whl "open_clip_torch==${OPEN_CLIP_VERSION:-3.3.0}" "ftfy==6.3.1" "wcwidth==0.2.13"
ls -la .whl
