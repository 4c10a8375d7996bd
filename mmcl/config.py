"""Frozen model and training configuration; defaults are the reference values of MMCL (arXiv 2501.12424)."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MODALITIES: tuple[str, str, str] = ("text", "audio", "vision")
WIRE_MODALITIES: tuple[str, ...] = ("text", "audio", "visual")  # in messages and producers; the model says "vision"
V = TypeVar("V")


# The one place that maps names: messages, topics and producers say "visual", the model and datasets say "vision".
WIRE_TO_MODEL: dict[str, str] = dict(zip(WIRE_MODALITIES, MODALITIES, strict=True))


def model_modality(wire: str) -> str:
    """Wire name -> MODALITIES name."""
    return WIRE_TO_MODEL[wire]


def by_wire(mapping: Mapping[str, V]) -> dict[str, V]:
    """A mapping keyed by wire or model modality names (checkpoints have recorded both) -> keyed by wire names; where
    both names are present the model name's value, the one checkpoints write now, wins."""
    return {wire: mapping[key] for wire, model in WIRE_TO_MODEL.items() for key in (wire, model) if key in mapping}


def by_model(mapping: Mapping[str, V]) -> dict[str, V]:
    """A mapping keyed by wire modality names -> keyed by model modality names."""
    return {WIRE_TO_MODEL[wire]: value for wire, value in mapping.items()}


IEMOCAP_EMOTIONS: tuple[str, ...] = ("neutral", "happy", "sad", "angry")


class TaskKind(StrEnum):
    """What the model predicts: a sentiment score, classes, or several binary emotions."""

    REGRESSION = "regression"
    CLASSIFICATION = "classification"
    MULTITASK = "multitask"  # S binary sub-tasks, e.g. IEMOCAP's 4 emotions x {absent, present}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TaskConfig(_Frozen):
    """The prediction task: its kind, label range or classes, and how outputs are named."""

    kind: TaskKind = TaskKind.REGRESSION
    # Regression: labels live in [-score_range, score_range]; 3 for MOSI/MOSEI, 1 for CH-SIMS.
    score_range: float = Field(3.0, gt=0)
    num_classes: int = Field(3, ge=2)  # classification only
    class_names: tuple[str, ...] = ()  # classification: defaults below; multitask: the sub-task names
    # A regression score within +-neutral_band of 0 is reported as "neutral" by the predictor.
    neutral_band: float = Field(0.1, ge=0)  # as a fraction of score_range

    @model_validator(mode="after")
    def _names(self) -> TaskConfig:
        if self.kind is TaskKind.CLASSIFICATION and self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} names for {self.num_classes} classes")
        return self

    @property
    def output_dim(self) -> int:
        """Outputs of the head: 1 score, C class logits, or one logit per emotion."""
        if self.kind is TaskKind.REGRESSION:
            return 1
        if self.kind is TaskKind.CLASSIFICATION:
            return self.num_classes
        return 2 * len(self.subtask_names)

    @property
    def subtask_names(self) -> tuple[str, ...]:
        """The emotions a multitask model predicts, in output order."""
        return self.class_names or IEMOCAP_EMOTIONS

    @property
    def label_names(self) -> tuple[str, ...]:
        """The names of the labels a prediction can carry."""
        if self.kind is TaskKind.CLASSIFICATION:
            if self.class_names:
                return self.class_names
            if self.num_classes == 2:
                return ("negative", "positive")
            if self.num_classes == 3:
                return ("negative", "neutral", "positive")
            return tuple(str(i) for i in range(self.num_classes))
        if self.kind is TaskKind.MULTITASK:
            return self.subtask_names
        return ("negative", "neutral", "positive")


class ModelConfig(_Frozen):
    """Architecture. Input dims are per modality, in MODALITIES order."""

    kind: Literal["mmcl", "late_fusion"] = "mmcl"
    input_dims: tuple[int, int, int] = (768, 5, 20)  # CMU-MOSI: BERT text 768, COVAREP-style audio 5, Facet visual 20
    seq_len: int = Field(50, ge=1)  # every modality is fitted to this length (see mmcl.sequence)
    d_model: int = Field(128, ge=8)  # D in the paper
    num_heads: int = Field(4, ge=1)  # h
    ff_dim: int = Field(2048, ge=1)  # temporal encoders' feed-forward width (reference: 2048)
    dropout: float = Field(0.5, ge=0, lt=1)  # the head's dropout (reference: 0.5)
    # The reference passes no dropout to its attention and encoder layers, so PyTorch's default applies.
    encoder_dropout: float = Field(0.1, ge=0, lt=1)
    decoupling: Literal["paper", "calibrated"] = "paper"
    # calibrated only: initial inverse temperature of the similarity softmax; learnable in log space.
    init_inv_temperature: float = Field(10.0, gt=0)
    max_inv_temperature: float = Field(100.0, gt=0)
    # What a modality with no present partner (a text-only model, a sample with one modality) passes on as its common
    # and specific parts: "sequence", the sequence itself, or "mean", the published equations' uniform softmax (every
    # step becomes the sequence mean; 2.4 points of binary accuracy behind on real text, docs/benchmarks.md).
    # Checkpoints that do not record it were trained with "mean" and are read so.
    unpaired: Literal["mean", "sequence"] = "sequence"
    task: TaskConfig = TaskConfig()
    # late_fusion baseline only
    baseline_hidden: int = Field(128, ge=1)
    # The modalities the model reads, in MODALITIES order; any other is ignored wherever it is present (a text-only
    # model needs, and waits for, text alone). Training defaults it to the modalities the dataset has.
    use_modalities: tuple[str, ...] = MODALITIES

    @field_validator("use_modalities")
    @classmethod
    def _in_order(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        """MODALITIES order without repeats (unknown names are refused below)."""
        return tuple(m for m in MODALITIES if m in v) + tuple(m for m in dict.fromkeys(v) if m not in MODALITIES)

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}")
        if (self.d_model + self.num_heads) % self.num_heads:
            raise ValueError("d_model + num_heads must be divisible by num_heads (critic width)")
        bad = set(self.use_modalities) - set(MODALITIES)
        if bad or not self.use_modalities:
            raise ValueError(f"use_modalities must be a non-empty subset of {MODALITIES}, got {self.use_modalities}")
        if any(d < 1 for d in self.input_dims):
            raise ValueError(f"input_dims must be positive, got {self.input_dims}")
        return self

    @property
    def wire_modalities(self) -> tuple[str, ...]:
        """The modalities the model reads, by wire name (text, audio, visual)."""
        return tuple(wire for wire, model in WIRE_TO_MODEL.items() if model in self.use_modalities)

    @property
    def used(self) -> tuple[bool, bool, bool]:
        """Per modality in MODALITIES order, whether the model reads it."""
        text, audio, vision = (m in self.use_modalities for m in MODALITIES)
        return text, audio, vision


class TrainConfig(_Frozen):
    """Training hyper-parameters; the defaults are the reference values of the paper."""

    epochs: int = Field(200, ge=1)  # reference: up to 200
    batch_size: int = Field(128, ge=2)  # reference: 128; >= 2 because of BatchNorm in the head
    lr: float = Field(3e-4, gt=0)  # all three Adam optimisers
    w_supervised: float = Field(7.0, ge=0)  # w1
    w_rl: float = Field(13.0, ge=0)  # w2: critic and actor losses
    gamma: float = Field(0.5, ge=0, le=1)
    tau: float = Field(0.01, gt=0, le=1)  # Polyak factor of the target networks
    buffer_size: int = Field(1000, ge=1)  # replay buffer, in transitions (one per sample)
    act_reward: bool = True  # False: supervised only (an ablation)
    plateau_factor: float = Field(0.95, gt=0, lt=1)
    plateau_patience_model: int = Field(30, ge=0)
    plateau_patience_rl: int = Field(5, ge=0)
    early_stop_patience: int = Field(20, ge=1)  # epochs without validation improvement
    regression_loss: Literal["l1", "mse"] = "l1"
    modality_dropout: float = Field(0.0, ge=0, lt=1)  # per sample and modality; never drops all three
    aux_weight: float = Field(0.1, ge=0)  # calibrated decoupling's agreement loss; ignored for "paper"
    seed: int = 0
    max_grad_norm: float = Field(5.0, gt=0)
    # Re-estimate BatchNorm's statistics at the weights of each epoch's end before validation (mmcl.train.
    # refresh_batchnorm); False keeps the running averages, which trail the weights (an ablation).
    refresh_batchnorm: bool = True
