#!/usr/bin/env bash
# The GPU measurement of README "Training at GPU speed", in one run:
#   1. an ImageNet-like synthetic folder (20,000 JPEGs, 1,000 classes) unless present;
#   2. the GPU-decoding loader's GPU test (decoded on the GPU vs on the CPU);
#   3. RepVGG-A0, batch 256, bf16 + channels-last, 16 loader workers, end-to-end
#      images/s with (a) configs/repvgg-a0.py's CPU pipeline, (b) the GPU-decoding
#      loader (configs/repvgg-a0_gpudecode.py), (c) the same + torch.compile, and the
#      model alone on a batch already on the GPU (eager and compiled), side by side.
# Usage: tools/analysis/gpu_speed_check.sh [DATA_ROOT] (default data/synthetic_imagenet)
# Environment: PYTHON (default python), IMAGES (20000), WORKERS (16), ITERS (30),
# WARMUP (10; compilation happens there).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python}
ROOT=${1:-data/synthetic_imagenet}
IMAGES=${IMAGES:-20000}
WORKERS=${WORKERS:-16}
ITERS=${ITERS:-30}
WARMUP=${WARMUP:-10}

"$PYTHON" - <<'PY'
import torch, torchvision
print(f'torch {torch.__version__}, torchvision {torchvision.__version__}, '
      f'GPU {torch.cuda.get_device_name() if torch.cuda.is_available() else "none"}')
PY
nproc
if [ ! -f "$ROOT/train_list.txt" ]; then
    mkdir -p "$(dirname "$ROOT")"
    "$PYTHON" tools/analysis/make_synthetic_imagenet.py "$ROOT" --images "$IMAGES" \
        --workers "$WORKERS"
fi
"$PYTHON" -m pytest -q -m gpu tests/test_gpu_loader.py
"$PYTHON" tools/analysis/train_speed.py configs/repvgg-a0.py configs/repvgg-a0_gpudecode.py \
    --compiled configs/repvgg-a0_gpudecode.py --model-only --data-root "$ROOT" \
    --batch-size 256 --workers "$WORKERS" --amp --channels-last \
    --iters "$ITERS" --warmup "$WARMUP"
