#!/usr/bin/env bash
# Fills DIR (default .whl) with the wheels that the offline GPU host (docs/benchmarks.md) lacks, for Python 3.12 on x86-64
# (PYVER=3.11 fetches them for this machine's Python, for the dry run of benchmarks/gpu_check.sh, docs/benchmarks.md):
# deepspeed (built here as a pure-Python wheel) and webdataset with their missing dependencies.
# The GPU machine already has torch, triton, timm, torchvision, numpy, pyyaml, pytest, psutil, ninja, tqdm, einops,
# msgpack, py-cpuinfo, nvidia-ml-py and packaging. DALI (about 520 MB with its libraries) does not fit one call.
# On the GPU machine:  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site DIR/*.whl
#                      export PYTHONPATH=/tmp/site:$PYTHONPATH
set -euo pipefail
dir=${1:-.whl}
mkdir -p "$dir"
py=${PYTHON:-python3}
pyver=${PYVER:-3.12}
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp "${plat[@]}" -d "$dir" \
  webdataset==1.0.2 braceexpand hjson 'pydantic>=2,<3' annotated-types typing-inspection
# pydantic-core must match the pydantic just fetched
core=$(unzip -p "$dir"/pydantic-2*.whl '*/METADATA' | sed -n 's/^Requires-Dist: pydantic-core==\([0-9.]*\).*/\1/p' | head -1)
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp "${plat[@]}" -d "$dir" "pydantic-core==$core"
# deepspeed is published as source only; its wheel is pure Python (ops compile on first use). Building needs torch.
"$py" -m pip wheel -q --no-deps --no-build-isolation -w "$dir" deepspeed==0.19.8
ls -la "$dir"
du -sh "$dir"
