#!/usr/bin/env bash
# One short, prepared check of the CUDA path, for a machine with a GPU (not CI): the predictor and training
# through device="auto", then the inference benchmark on the card. Writes its tables under ${OUT:-/tmp/out}.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python -m venv .venv-gpu
.venv-gpu/bin/pip install --quiet torch numpy safetensors pydantic pydantic-settings tqdm pytest pytest-timeout
export PYTHONPATH=$PWD
.venv-gpu/bin/python -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.cuda.get_device_name())"
.venv-gpu/bin/python -m pytest -q -p no:cacheprovider tests/unit/test_checkpoint_predictor.py \
    "tests/unit/test_train.py::test_device_auto_trains_on_what_is_there" | tee "$OUT/tests.txt"
.venv-gpu/bin/python benchmarks/inference_throughput.py --device cuda | tee "$OUT/inference_cuda.md"
.venv-gpu/bin/python benchmarks/train_time.py --device cuda | tee "$OUT/train_time_cuda.md"
