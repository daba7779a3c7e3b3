#!/usr/bin/env bash
# Every GPU check of the project in ONE call on a lent GPU machine (device tool), sized to fit one
# 10-minute call: build the CUDA op, run the GPU tests, run the op's kernels under compute-sanitizer,
# time the op and the Mask R-CNN train step.
#
#   here:    sh scripts/gpu_wheels.sh                        (pycocotools for the GPU's Python 3.12)
#   device:  run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=900 or less)
#
# Outputs under $OUT (the device tool returns them): log.txt (everything), build.log, pytest_gpu.log,
# sanitize_{memcheck,racecheck,synccheck,initcheck}.log, gc_op_bf16.json, gc_op_fp32.json,
# train_step.json, train_step_bf16.json. A short summary prints last.
# Record the figures with card and date in benchmarks/RESULTS.md.
set -u -o pipefail
OUT=${OUT:-/tmp/gcrepro_gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/log.txt") 2>&1
stamp() { echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $*"; }

if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing the carried wheels failed"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
else
    echo "no .whl/ carried: pycocotools may be missing (sh scripts/gpu_wheels.sh here, carry .whl)"
    export PYTHONPATH=$PWD
fi
stamp machine
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"

stamp "build (CPU + CUDA op, sm_90)"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} GCREPRO_CUDA=1
python3 setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
python3 -c "from gcrepro import ops; assert ops.fused_available('cuda'), 'CUDA op not loaded'; print('fused op: cpu', ops.cpu_isa(), '+ cuda')" \
    || exit 1

stamp "pytest -m gpu"
# Only the files that hold GPU tests: the notebook tests import papermill/nbformat at collection,
# which the GPU image lacks (and a collection error would stop the whole run).
GPU_TEST_FILES=$(grep -l -E "mark\.gpu|gpu_test" tests/test_*.py)
python3 -m pytest -q -m gpu -p no:cacheprovider $GPU_TEST_FILES 2>&1 | tee "$OUT/pytest_gpu.log" | tail -25
TESTS=$(tail -1 "$OUT/pytest_gpu.log")

stamp "compute-sanitizer over scripts/gc_sanitize.py (the op's kernels only)"
# memcheck (out of bounds, misaligned), racecheck (shared memory), synccheck (barriers), initcheck
# (uninitialised global reads): the four tools at once, each on its own process, each limited to
# 150 s (the script is small: 25 cases, 6 op calls each); --kernel-name instruments our kernels only.
# The toolkit's own, else the one of the carried nvidia-cuda-sanitizer-api wheel (gpu_wheels.sh).
SANITIZER=$(command -v compute-sanitizer || ls "${CUDA_HOME:-/usr/local/cuda}"/bin/compute-sanitizer \
    /usr/local/cuda*/bin/compute-sanitizer /tmp/site/nvidia/cu*/bin/compute-sanitizer 2>/dev/null | head -1)
SANITIZE=""
if [ -z "$SANITIZER" ]; then
    SANITIZE="SKIPPED: compute-sanitizer not found (PATH, \$CUDA_HOME/bin, /usr/local/cuda*/bin, no carried wheel)"
    echo "$SANITIZE"
else
    echo "using $SANITIZER ($("$SANITIZER" --version | grep -m1 Version))"
    declare -A SAN_PID
    for tool in memcheck racecheck synccheck initcheck; do
        timeout 150 "$SANITIZER" --tool "$tool" --kernel-name kns=gcrepro --error-exitcode 3 --print-limit 20 \
            python3 scripts/gc_sanitize.py > "$OUT/sanitize_$tool.log" 2>&1 &
        SAN_PID[$tool]=$!
    done
    for tool in memcheck racecheck synccheck initcheck; do
        wait "${SAN_PID[$tool]}"
        rc=$?
        case $rc in
            0) verdict="clean" ;;
            3) verdict="ERRORS (see sanitize_$tool.log)" ;;
            124) verdict="timed out after 150 s" ;;
            *) verdict="failed, exit $rc (see sanitize_$tool.log)" ;;
        esac
        echo "$tool: $verdict"; tail -3 "$OUT/sanitize_$tool.log"
        SANITIZE="$SANITIZE $tool: $verdict;"
    done
fi

stamp "benchmarks/gc_op.py (bf16, fp32)"
python3 benchmarks/gc_op.py --device cuda --dtype bfloat16 --json "$OUT/gc_op_bf16.json"
python3 benchmarks/gc_op.py --device cuda --dtype float32 --json "$OUT/gc_op_fp32.json"

stamp "benchmarks/train_step.py (fp32/tf32, bf16 autocast)"
python3 benchmarks/train_step.py --json "$OUT/train_step.json"
python3 benchmarks/train_step.py --amp bf16 --json "$OUT/train_step_bf16.json"

stamp summary
echo "GPU tests: $TESTS"
echo "compute-sanitizer:$SANITIZE"
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])


def load(name):
    path = out / f"{name}.json"
    if not path.exists():
        print(f"{name}: missing (see log.txt)")
        return None
    return json.loads(path.read_text())


for name in ("gc_op_bf16", "gc_op_fp32"):
    if (r := load(name)) is None:
        continue
    print(f"{name}: {r['device']}  copy {r['copy_bandwidth_gb_s']:.0f} GB/s")
    for row in r["rows"]:
        print(f"  {'x'.join(map(str, row['shape'])):<16} {row['op']:<15} {row['mode']:<8} ref {row['reference_ms']:7.3f} "
              f"fused {row['fused_ms']:7.3f} ms  {row['speedup']:5.2f}x  {row['fused_over_floor']:5.2f}x floor"
              f"  plan {row.get('cuda_context_plan')}")
    for k, v in r["targets"].items():
        print(f"  target {k}: {'met' if v else 'NOT met'}")
for name in ("train_step", "train_step_bf16"):
    if (r := load(name)) is None:
        continue
    print(f"{name} ({r['precision']}):")
    for row in r["rows"]:
        extra = f"  GC +{row['gc_train_overhead_pct']:.2f}% train, +{row['gc_infer_overhead_pct']:.2f}% infer" if "gc_train_overhead_pct" in row else ""
        print(f"  {row['model']:<36} train {row['train_ms']:7.1f} ms  infer {row['infer_ms']:7.1f} ms  {row['train_mem_gb']:.1f} GB{extra}")
PY
