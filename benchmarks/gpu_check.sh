#!/usr/bin/env bash
# The one script for the GPU host (docs/benchmarks.md): carried wheels → `pytest -m gpu` → bench suites at
# ViT-H/14 (kernels; the training step at batch 128 beside the official-style reference; the data loaders, PyTorch
# backend with nvJPEG decode) → a short table last. Full JSON and logs go to OUT_DIR.
#
#   bash benchmarks/gpu_check.sh OUT_DIR     # on the GPU host ($OUT there); about 5 minutes
#   bash benchmarks/gpu_check.sh /tmp/dry    # here, without a GPU: the same steps on the tiny config (dry run)
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
if ls .whl/*.whl >/dev/null 2>&1; then  # deepspeed, webdataset and their needs (tools/device_wheels.sh)
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1
start=$(date +%s)
if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  cfg=configs/vith14_in1k.yaml; suites=kernels,step,data; limit=420
else
  cfg=configs/tiny_cpu.yaml; suites=step; limit=300
  echo "gpu_check: no CUDA device: dry run on $cfg"
fi
$PY -c "import torch; print('gpu_check:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU', \
'| torch', torch.__version__)" | tee "$out/device.txt"
timeout 180 $PY -m pytest -m gpu tests/test_kernels.py tests/test_compile.py -q -rs 2>&1 | tee "$out/pytest_gpu.log" | tail -15
timeout "$limit" $PY bench.py --config "$cfg" --suite "$suites" --out "$out/bench.json" 2>&1 | tee "$out/bench.log" \
  | grep -v '^\[20' | tail -60
echo
echo "== gpu_check summary ($(( $(date +%s) - start )) s) =="
cat "$out/device.txt"
grep -E "passed|failed|error|skipped" "$out/pytest_gpu.log" | tail -1
$PY - "$out/bench.json" <<'PYEOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except (OSError, ValueError) as err:
    sys.exit(f"no bench.json ({err})")
step = r["suites"].get("step", {})
ref = step.get("reference (official-style)")
for name, s in step.items():
    ratio = s["images_per_s"] / ref["images_per_s"] if ref else float("nan")
    mfu = f"{100 * s['mfu']:.1f}%" if s.get("mfu") else "n/a"
    print(f"step  {name:<38} {s['images_per_s']:8.1f} img/s/GPU  MFU {mfu:>6}  {ratio:5.2f}x ref  "
          f"GPU-h for the config's epochs {s.get('gpu_hours_for_epochs', float('nan')):.3g}")
PYEOF
