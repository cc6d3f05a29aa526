#!/usr/bin/env bash
# Wheels of what a bare GPU machine with PyTorch lacks (hydra-core, omegaconf, antlr4, torchdata), at the versions
# of this environment, for Python 3.12 on x86-64: scripts/gpu_wheels.sh [DIR=.whl]. There:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site DIR/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
dir=${1:-.whl}
mkdir -p "$dir"
version() { python -c "import importlib.metadata as m; print(m.version('$1'))"; }
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 -d "$dir" "hydra-core==$(version hydra-core)" "omegaconf==$(version omegaconf)" \
  "torchdata==$(version torchdata)"
# antlr4-python3-runtime 4.9.x (what omegaconf 2.3 pins) is published as a source archive only: build its wheel.
python -m pip wheel -q --no-deps -w "$dir" "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
ls "$dir"
