#!/usr/bin/env bash
# The GPU check in one go, on a lent GPU machine: Python 3.12 with torch, no network, and none
# of rasterio, zarr, nibabel, MONAI or smp. Those travel as wheels in .whl/ (bench/wheels.sh
# downloads them here, 51 MiB); this script installs nothing from the network.
#
#   bash bench/wheels.sh                      # here, once: the wheels for Python 3.12
#   bash bench/gpu.sh                         # there: GPU tests, then python -m bench --device cuda
#
# About 6 minutes on one H200 (input generation included); results go to $OUT (or bench/out/gpu).
# Case 18 (model formats: TorchScript, .pt2, ONNX Runtime's CUDA and TensorRT providers) comes
# last; to run it alone: BENCH_ARGS="--cases 18" bash bench/gpu.sh. Its ONNX rows need
# onnxruntime-gpu (and onnx, to export), which do not travel in .whl/: without them those rows
# are skipped, each with its reason in the table, and the other rows still run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
started=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 GIGASEG_BENCH_DATA=${GIGASEG_BENCH_DATA:-/tmp/gigaseg-bench}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/machine.txt"
python3 - <<'EOF' | tee -a "$OUT/machine.txt" || exit 1
import os, torch, rasterio, zarr, nibabel, monai, segmentation_models_pytorch as smp, numpy
print(f"cores {os.cpu_count()}; python {os.sys.version.split()[0]}; torch {torch.__version__} cuda {torch.version.cuda}; "
      f"numpy {numpy.__version__}; rasterio {rasterio.__version__} (GDAL {rasterio.__gdal_version__}); zarr {zarr.__version__}; "
      f"monai {monai.__version__}; smp {smp.__version__}; gpu {torch.cuda.get_device_name(0)}")
EOF
python3 - <<'EOF' | tee -a "$OUT/machine.txt"
try:
    import onnxruntime as ort
    print(f"onnxruntime {ort.__version__}: providers {', '.join(ort.get_available_providers())}")
except ImportError:
    print("onnxruntime: not installed (case 18 skips its ONNX rows)")
try:
    import onnx
    print(f"onnx {onnx.__version__}")
except ImportError:
    print("onnx: not installed (torch.onnx.export needs it: case 18 skips its ONNX rows)")
EOF
echo "== GPU tests (pytest -m gpu)"
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider --basetemp=/tmp/gigaseg-pytest \
  tests/test_tiler_stitch.py tests/test_segment.py tests/test_model_grid.py 2>&1 | tail -20 | tee "$OUT/gpu-tests.log"
echo "== python -m bench --device cuda ($(( $(date +%s) - started )) s so far)"
timeout "${BENCH_TIMEOUT:-390}" python3 -m bench --device cuda --json "$OUT/gpu-bench.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/gpu-bench.log"
echo "== done in $(( $(date +%s) - started )) s"
