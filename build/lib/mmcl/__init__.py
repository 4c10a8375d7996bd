"""MMCL: multi-modality collaborative learning for sentiment analysis (model, training, data, metrics).

Pure PyTorch + numpy: nothing here touches Kafka, Redis, the environment or the network.
"""

from mmcl.checkpoint import Checkpoint, FeatureProfile, load_checkpoint, save_checkpoint
from mmcl.config import MODALITIES, ModelConfig, TaskConfig, TaskKind, TrainConfig
from mmcl.errors import (
    CheckpointError,
    ConfigError,
    DataFormatError,
    DimensionMismatch,
    InvalidInput,
    MMCLError,
)
from mmcl.model import MMCL, LateFusionBaseline, build_model
from mmcl.predictor import PredictionBatch, Predictor

__all__ = [
    "MMCL", "MODALITIES", "Checkpoint", "CheckpointError", "ConfigError", "DataFormatError", "DimensionMismatch",
    "FeatureProfile", "InvalidInput", "LateFusionBaseline", "MMCLError", "ModelConfig", "PredictionBatch", "Predictor",
    "TaskConfig", "TaskKind", "TrainConfig", "build_model", "load_checkpoint", "save_checkpoint",
]
