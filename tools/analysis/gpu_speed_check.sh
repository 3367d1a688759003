#!/usr/bin/env bash
# The GPU measurement of README "Training at GPU speed", in one run that fits one
# 10-minute command on a bare GPU machine (torch and torchvision installed, nothing of
# OpenMMLab):
#   1. CUDA must be visible, else one line and exit 1;
#   2. the OpenMMLab stack is installed from a wheel folder (make gpu-wheels) into a
#      private folder, --no-index --no-deps: the machine's torch is never replaced;
#   3. an ImageNet-like synthetic folder (IMAGES JPEGs, 1,000 classes) unless present;
#   4. the GPU-decoding loader's GPU tests (GPU vs CPU path, no CPU fallback on clean
#      JPEGs, a delayed side stream changes no pixel);
#   5. RepVGG-A0, batch 256, bf16 + channels-last, WORKERS loader workers, end-to-end
#      images/s side by side: MMPretrain's stock config through its own Runner (the
#      reference), configs/repvgg-a0.py's CPU pipeline, the GPU-decoding loader eager
#      and with torch.compile, and the model alone on a batch already on the GPU.
# Usage: [PYTHON=python3] [WHEELS=.whl] tools/analysis/gpu_speed_check.sh [DATA_ROOT]
# Environment: IMAGES (7000: 27 batches of 256 per run), WORKERS (16), ITERS (20),
# WARMUP (5; compilation happens there), SITE (/tmp/repvgg_mm_site).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
ROOT=${1:-data/synthetic_imagenet}
IMAGES=${IMAGES:-7000}
WORKERS=${WORKERS:-16}
ITERS=${ITERS:-20}
WARMUP=${WARMUP:-5}
SITE=${SITE:-/tmp/repvgg_mm_site}

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_speed_check.sh: $PYTHON sees no CUDA device (torch.cuda.is_available() is" \
         "False); this check needs a GPU" >&2
    exit 1
fi
if [ -n "${WHEELS:-}" ]; then
    if ls "$WHEELS" | grep -qiE '^(torch|torchvision)-'; then
        echo "gpu_speed_check.sh: $WHEELS holds torch/torchvision wheels; the machine's" \
             "own must stay: remove them" >&2
        exit 1
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # repvgg_mm from this checkout

"$PYTHON" - <<'PY'
import os, torch, torchvision, mmengine, mmpretrain
print(f'torch {torch.__version__}, torchvision {torchvision.__version__}, '
      f'mmengine {mmengine.__version__}, mmpretrain {mmpretrain.__version__}, '
      f'GPU {torch.cuda.get_device_name()}, {os.cpu_count()} CPU cores')
PY
if [ ! -f "$ROOT/train_list.txt" ]; then
    mkdir -p "$(dirname "$ROOT")"
    "$PYTHON" tools/analysis/make_synthetic_imagenet.py "$ROOT" --images "$IMAGES" \
        --val-images 0 --workers "$WORKERS"
fi
"$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu_loader.py
"$PYTHON" tools/analysis/train_speed.py configs/repvgg-a0.py configs/repvgg-a0_gpudecode.py \
    --reference mmpretrain::repvgg/repvgg-A0_8xb32_in1k.py \
    --compiled configs/repvgg-a0_gpudecode.py --model-only --data-root "$ROOT" \
    --batch-size 256 --workers "$WORKERS" --amp --channels-last \
    --iters "$ITERS" --warmup "$WARMUP"
