"""`mmcl` is usable from a notebook: stable exports, and importing it pulls in no service client."""

from __future__ import annotations

import subprocess
import sys

import mmcl


def test_public_exports() -> None:
    assert set(mmcl.__all__) == {
        "MMCL", "MODALITIES", "Checkpoint", "CheckpointError", "ConfigError", "DataFormatError", "DimensionMismatch",
        "FeatureProfile", "InvalidInput", "LateFusionBaseline", "MMCLError", "ModelConfig", "PredictionBatch", "Predictor",
        "TaskConfig", "TaskKind", "TrainConfig", "build_model", "load_checkpoint", "save_checkpoint",
    }
    assert all(hasattr(mmcl, name) for name in mmcl.__all__)


def test_import_pulls_no_kafka_redis_or_faust() -> None:
    code = (
        "import sys, mmcl, mmcl.train, mmcl.data.formats, mmcl.data.synth\n"
        "bad = {'confluent_kafka', 'aiokafka', 'faust', 'redis', 'prometheus_client'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
