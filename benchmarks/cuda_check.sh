#!/usr/bin/env bash
# One short, prepared check of the CUDA path on a lent GPU machine (not CI): the predictor and training tests
# through device="auto", then the inference and training-time benchmarks on the card; tables go to $OUT.
# That machine has torch, numpy, safetensors, tqdm and pytest but no pydantic and no network. Prepare here:
#   pip download pydantic pydantic-settings --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 -d .wheels && echo /.wheels/ >> .git/info/exclude
# then run this script with `.wheels` carried.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
PY=${PY:-python3}
if [ -d .wheels ]; then
  "$PY" -m pip install --quiet --no-index --find-links .wheels pydantic pydantic-settings
fi
export PYTHONPATH=$PWD
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.cuda.get_device_name())"
"$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/unit/test_checkpoint_predictor.py \
    "tests/unit/test_train.py::test_device_auto_trains_on_what_is_there" 2>&1 | tee "$OUT/tests.txt"
"$PY" benchmarks/inference_throughput.py --device cuda | tee "$OUT/inference_cuda.md"
"$PY" benchmarks/train_time.py --device cuda | tee "$OUT/train_time_cuda.md"
