#!/usr/bin/env bash
# The one script for the GPU host (docs/benchmarks.md): carried wheels → `pytest -m gpu` → bench suites at ViT-H/14
# (the training step at batch 128 beside the official-style reference; the kernels; the data loaders, PyTorch backend
# with nvJPEG decode) → a short table last. JSON and logs go to OUT_DIR, one bench JSON per suite.
#
#   bash benchmarks/gpu_check.sh OUT_DIR     # on the GPU host ($OUT there); at most GPU_CHECK_BUDGET s (330)
#   bash benchmarks/gpu_check.sh /tmp/dry    # here, without a GPU: the same steps on the tiny config (dry run)
#
# Every part has a cap and the whole a deadline, so one device call (at most 6 minutes) always ends with the summary;
# each suite writes its JSON when it finishes, so a part stopped by its cap costs only itself.
# WHEELS (default .whl) holds the wheels the host lacks (tools/device_wheels.sh); PYTHON picks the interpreter.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$out" && out=$(cd "$out" && pwd)  # absolute: the script runs from the repository's root
cd "$(dirname "$0")/.."
start=$(date +%s)
deadline=$(( start + ${GPU_CHECK_BUDGET:-330} ))
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
wheels=${WHEELS:-.whl}
if ls "$wheels"/*.whl >/dev/null 2>&1; then
  rm -rf /tmp/site
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$wheels"/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-} && echo "gpu_check: wheels from $wheels in /tmp/site"
fi
export PYTHONUNBUFFERED=1

# cap SECONDS: the smaller of SECONDS and what is left before the deadline (10 s kept for the summary)
cap() { local left=$(( deadline - $(date +%s) - 10 )); echo $(( left < $1 ? (left > 1 ? left : 1) : $1 )); }

# GPU_CHECK_SUITES: "suite:cap ..." in order ("step,loop:200": one bench.py, the loop sees the step's figures);
# GPU_CHECK_TESTS: the test files run with -m gpu (a file whose library is missing skips itself: test_dali_backend.py
# without DALI), or none. The DALI round: GPU_CHECK_SUITES="data:200"
# GPU_CHECK_TESTS=tests/unit/test_dali_backend.py, with DALI from the chunks on PYTHONPATH (docs/benchmarks.md).
suites=${GPU_CHECK_SUITES:-"step:110 kernels:80 data:45"}
tests=${GPU_CHECK_TESTS:-"tests/unit/test_kernels.py tests/e2e/test_compile.py tests/unit/test_dali_backend.py"}
if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  cfg=configs/vith14_in1k.yaml
else
  cfg=configs/tiny_cpu.yaml
  echo "gpu_check: no CUDA device: dry run on $cfg"
fi
$PY -c "import torch, triton, deepspeed, webdataset, datetime; print('gpu_check:', torch.cuda.get_device_name(0) \
if torch.cuda.is_available() else 'CPU', '| torch', torch.__version__, '| CUDA', torch.version.cuda, '| triton', \
triton.__version__, '| deepspeed', deepspeed.__version__, '(' + deepspeed.__file__.split('/deepspeed/')[0] + ')', \
'|', datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))" 2>&1 | grep -v '^\[20' \
  | tee "$out/device.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv,noheader >> "$out/device.txt" 2>/dev/null
$PY -c "import nvidia.dali as d; print('DALI', d.__version__, 'from', d.__file__.split('/nvidia/')[0])" \
  >> "$out/device.txt" 2>/dev/null || echo "no DALI" >> "$out/device.txt"

if [ "$tests" = none ]; then  # GPU_CHECK_TESTS=none: a round of bench suites only
  echo "no tests run (GPU_CHECK_TESTS=none)" > "$out/pytest_gpu.log"
else
  # shellcheck disable=SC2086  # $tests is a list of files
  timeout "$(cap 90)" $PY -m pytest -m gpu $tests -q -rs -s -p no:cacheprovider 2>&1 | tee "$out/pytest_gpu.log" \
    | tail -15
fi
for item in $suites; do
  suite=${item%%:*}
  echo; echo "== $suite (cap $(cap "${item##*:}") s) =="
  timeout "$(cap "${item##*:}")" $PY bench.py --config "$cfg" --suite "$suite" --out "$out/bench_$suite.json" 2>&1 \
    | tee "$out/bench_$suite.log" | grep -v '^\[20' | tail -25
  [ "${PIPESTATUS[0]}" = 124 ] && echo "gpu_check: suite $suite stopped by its cap" | tee -a "$out/bench_$suite.log"
done
echo
echo "== gpu_check summary ($(( $(date +%s) - start )) s of ${GPU_CHECK_BUDGET:-330}) =="
cat "$out/device.txt"
grep -E "passed|failed|error|skipped" "$out/pytest_gpu.log" | tail -1
$PY benchmarks/summary.py "$out"
