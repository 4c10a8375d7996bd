"""All service settings in one place: env vars `MMCL_*`, nested with `__` (e.g. MMCL_KAFKA__BOOTSTRAP_SERVERS)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, cast, get_args

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mmcl.config import WIRE_MODALITIES as WIRE_MODALITIES  # re-exported: the service's code imports them from here
from mmcl.config import model_modality as model_modality
from mmcl.errors import ConfigError

Modality = Literal["text", "audio", "visual"]
Role = Literal["agent", "customer", "unknown"]
ENV_PREFIX, ENV_DELIM = "MMCL_", "__"


class SecretUrl(SecretStr):
    """A URL that may carry a password (redis://user:secret@host): shown with the password masked, everywhere."""

    def __str__(self) -> str:
        return mask_url(self.get_secret_value())

    def __repr__(self) -> str:
        return f"SecretUrl({mask_url(self.get_secret_value())!r})"


def mask_url(url: str) -> str:
    """scheme://user:secret@host -> scheme://user:***@host (and scheme://secret@host -> scheme://***@host)."""
    head, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    cred, _, host = rest.rpartition("@")
    user, colon, _ = cred.partition(":")
    return f"{head}{sep}{user}:***@{host}" if colon else f"{head}{sep}***@{host}"


def _redis_scheme(v: SecretUrl | None) -> SecretUrl | None:
    if v is not None and not v.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return v


class KafkaSettings(BaseModel):
    """The broker: endpoints, security, consumer group and client timings."""

    bootstrap_servers: str = "127.0.0.1:9092"
    # SASL / TLS pass through to every client (librdkafka and aiokafka names differ; see streams.kafka).
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    group_id: str = "mmcl-worker"
    # Measured on Apache Kafka (benchmarks/client_timings.py): a crashed worker's calls get no results for about the
    # session timeout, and Kafka's own 45 s is a long silence for a live feed; at 10 s a worker saturating two cores
    # missed no heartbeat (the consumer heartbeats from its own thread). The local profile (streams.local.runtime)
    # applies the embedded broker's timings.
    session_timeout_s: float = Field(10.0, gt=0, le=300)  # a dead worker's partitions move after this long
    heartbeat_interval_s: float = Field(1.0, gt=0)
    # Kafka answers a fetch as soon as data arrives: the wait bounds only idle fetches (50 and 500 ms measured alike)
    fetch_max_wait_ms: int = Field(500, ge=1, le=30_000)
    commit_interval_s: float = Field(1.0, gt=0)
    # how long every producer of ours (the worker's outputs, the simulator, the extractors, feedback ingestion) waits
    # to fill a batch before sending it
    linger_ms: int = Field(2, ge=0, le=1_000)
    # which broker implementation answers: "tansu" (the embedded broker; the local profile sets it) turns on the
    # workarounds for its protocol deviations, and nothing else does
    broker_kind: Literal["apache", "tansu"] = "apache"

    @model_validator(mode="after")
    def _check(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (self.sasl_mechanism and self.sasl_username):
            raise ValueError("SASL needs sasl_mechanism and sasl_username")
        if self.heartbeat_interval_s >= self.session_timeout_s:
            raise ValueError("heartbeat_interval_s must be below session_timeout_s")
        return self


class RedisSettings(BaseModel):
    """Redis: URL, credentials, timeouts and the back-off of failed writes."""

    url: SecretUrl = SecretUrl("redis://127.0.0.1:6379/0")  # rediss:// for TLS; may carry a password
    username: str | None = None
    password: SecretStr | None = None
    ssl_ca_certs: Path | None = None
    socket_timeout_s: float = Field(2.0, gt=0)
    retry_initial_s: float = Field(0.05, gt=0)  # back-off on a failed write doubles from here ...
    retry_max_s: float = Field(2.0, gt=0)  # ... up to here; consumption stays paused until a write succeeds

    _scheme = field_validator("url")(_redis_scheme)


class TopicSettings(BaseModel):
    """Topic names (under a prefix), partitions, replication and retention."""

    prefix: str = "mmcl"  # every name below is <prefix>.<name>: tests and tenants get their own set
    partitions: int = Field(4, ge=1, le=1024)
    replication: int = Field(1, ge=1)
    # replicas that must have a record before the broker acknowledges it to an acks=all producer (all of ours);
    # unset: 2 when there are at least 2 replicas, so one broker can fail without losing an acknowledged record
    min_insync_replicas: int | None = Field(None, ge=1)
    # retention (hours) of the topics `mmcl topics create` / `mmcl up` make; existing topics are left as they are
    features_retention_h: float = Field(24.0, gt=0)  # replay window for the worker
    output_retention_h: float = Field(7 * 24.0, gt=0)  # predictions and alerts, for downstream consumers
    dlq_retention_h: float = Field(14 * 24.0, gt=0)  # time to look at what was refused
    feedback_retention_h: float = Field(30 * 24.0, gt=0)
    joined_retention_h: float = Field(14 * 24.0, gt=0)  # at least as long as labels take to come (trainer retention)

    @model_validator(mode="after")
    def _in_sync_fits(self) -> TopicSettings:
        if self.min_insync_replicas is not None and self.min_insync_replicas > self.replication:
            raise ValueError(f"min_insync_replicas ({self.min_insync_replicas}) is more than the replication "
                             f"({self.replication}): no write could ever be acknowledged")
        return self

    @property
    def min_in_sync(self) -> int:
        """min.insync.replicas of the topics we create."""
        return self.min_insync_replicas or min(2, self.replication)

    def feature(self, modality: str) -> str:
        """The feature topic of a wire modality."""
        return f"{self.prefix}.features.{modality}"

    @property
    def features(self) -> tuple[str, ...]:
        """The three feature topics, in wire modality order."""
        return tuple(self.feature(m) for m in WIRE_MODALITIES)

    @property
    def predictions(self) -> str:
        """Where predictions are published."""
        return f"{self.prefix}.predictions"

    @property
    def alerts(self) -> str:
        """Where alerts are published."""
        return f"{self.prefix}.alerts"

    @property
    def dlq(self) -> str:
        """The dead-letter topic."""
        return f"{self.prefix}.dlq"

    @property
    def feedback(self) -> str:
        """Where feedback labels come in."""
        return f"{self.prefix}.feedback"

    @property
    def joined(self) -> str:
        """The joined features the trainer learns from."""
        return f"{self.prefix}.joined"  # give it long retention on a real cluster: labels come days later

    @property
    def model_updates(self) -> str:
        """The workers' announcements of promotions and rollbacks."""
        return f"{self.prefix}.model-updates"  # one partition, compacted

    @property
    def all(self) -> tuple[str, ...]:
        """The topics with `partitions` partitions (model_updates has one)."""
        return (*self.features, self.predictions, self.alerts, self.dlq, self.feedback, self.joined)


class JoinSettings(BaseModel):
    """The utterance join: which modalities are required and how long parts are waited for."""

    timeout_s: float = Field(2.0, gt=0, le=3600)  # from the first part of an utterance
    required: tuple[Modality, ...] = ("text", "audio")  # of those the serving model reads; the rest do not count
    max_pending: int = Field(10_000, ge=1)  # beyond this the oldest pending utterance is decided early
    remember_emitted: int = Field(100_000, ge=0)  # emitted ids kept to recognise late and re-delivered parts
    # A producer clock further than this from its partition's consensus (or ahead of the worker's) is corrected for the
    # join and counted; the join then still gives a missing part at least timeout_s - 2 * max_clock_skew_s.
    # Default: a quarter of timeout_s, at most 0.5 s.
    max_clock_skew_s: float | None = Field(None, ge=0)
    max_wait_s: float = Field(30.0, gt=0)  # an utterance is decided after this long at most, whatever the clocks say
    # A required modality's partition that was delivering parts and falls silent is waited for this long before its
    # parts are presumed absent: a leader failover holds a partition's parts in the producers for 10 s and more, while the
    # other modalities' partitions flow. A partition silent for longer than this is presumed idle: timeout_s applies.
    stall_wait_s: float = Field(15.0, gt=0)

    @field_validator("required")
    @classmethod
    def _nonempty(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one modality must be required")
        return tuple(dict.fromkeys(v))

    @property
    def clock_skew_s(self) -> float:
        """The producer clock skew the join tolerates (the default derives from timeout_s)."""
        return self.max_clock_skew_s if self.max_clock_skew_s is not None else min(0.5, self.timeout_s / 4)

    @model_validator(mode="after")
    def _check(self) -> JoinSettings:
        if self.max_clock_skew_s is not None and 2 * self.max_clock_skew_s >= self.timeout_s:
            raise ValueError(f"max_clock_skew_s={self.max_clock_skew_s:g} must be below half of timeout_s={self.timeout_s:g}")
        if self.max_wait_s < self.timeout_s:
            raise ValueError(f"max_wait_s={self.max_wait_s:g} cannot be below timeout_s={self.timeout_s:g}")
        if not self.timeout_s <= self.stall_wait_s <= self.max_wait_s:
            raise ValueError(f"stall_wait_s={self.stall_wait_s:g} must lie between timeout_s={self.timeout_s:g} and "
                             f"max_wait_s={self.max_wait_s:g}")
        return self


class BatchSettings(BaseModel):
    """Micro-batching: batch size, batch wait and how many utterances may be in flight."""

    max_size: int = Field(64, ge=1, le=4096)
    wait_ms: float = Field(10.0, ge=0, le=10_000)
    queue_size: int = Field(512, ge=1)  # utterances in flight (queued, in the model, being written): back-pressure
    # a second thread forms and fits the next batch while the model runs this one: auto = on a CUDA device only (on
    # a CPU the two threads would share the same cores)
    prepare_ahead: Literal["auto", "on", "off"] = "auto"

    def prepares_ahead(self, device: str) -> bool:
        """Whether batches are prepared ahead for a model on `device` (a torch device type: cpu, cuda, ...)."""
        return self.prepare_ahead == "on" or (self.prepare_ahead == "auto" and device == "cuda")


class WorkerSettings(BaseModel):
    # SIGTERM: stop taking messages, let writes in flight finish for at most this long, commit what was written, exit.
    # Kubernetes kills a pod 30 s after SIGTERM by default (terminationGracePeriodSeconds): stay well below.
    """The worker's own lifecycle."""

    shutdown_timeout_s: float = Field(10.0, gt=0, le=300)


class ModelSettings(BaseModel):
    """The model to serve when the registry has none, and the device it runs on."""

    checkpoint: Path | None = None  # a checkpoint directory (mmcl train --out)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # the network's arithmetic: auto is bf16 on CUDA, and int8 on a CPU with VNNI (both within 0.05 of fp32, tests),
    # fp32 elsewhere
    precision: Literal["auto", "fp32", "bf16", "int8"] = "auto"

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda", "mps") and not (v.startswith("cuda:") and v[5:].isdigit()):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return v


class RegistrySettings(BaseModel):
    """Where versioned models live. `dir`: a folder (one machine; default <state_dir>/registry). `redis`: Redis at
    `redis_url` (default: MMCL_REDIS__URL), for workers on several machines. When the registry has a current
    version, workers serve it and follow promotions; otherwise they serve MMCL_MODEL__CHECKPOINT."""

    backend: Literal["dir", "redis"] = "dir"
    path: Path | None = None
    redis_url: SecretUrl | None = None
    prefix: str = "mmcl:registry"
    poll_s: float = Field(30.0, gt=0)  # workers also re-check `current` this often, in case an announcement was missed

    _scheme = field_validator("redis_url")(_redis_scheme)


class TrainerSettings(BaseModel):
    """`mmcl trainer`: feedback labels in, retrained models out, behind a validation gate."""

    keep_joined: bool = True  # workers publish joined features to the joined topic (needed to learn from labels)
    group_id: str = "mmcl-trainer"
    match_grace_s: float = Field(60.0, ge=0)  # a label waits this long for its features before it is `unmatched`
    feature_retention_s: int = Field(14 * 24 * 3600, ge=60)  # joined features kept this long ...
    max_features: int = Field(200_000, ge=100)  # ... and at most this many (oldest go first)
    max_examples: int = Field(10_000, ge=10)  # labelled examples kept (oldest labels go first); ~150 kB each at MOSI size
    min_examples: int = Field(200, ge=10)  # no run below this many (a small holdout makes a noisy gate)
    retrain_every_s: float = Field(24 * 3600.0, gt=0)  # retrain when this much time has passed (and labels are new) ...
    retrain_after_labels: int = Field(500, ge=1)  # ... or this many new labels arrived, whichever first
    holdout_frac: float = Field(0.2, gt=0, lt=0.9)  # the newest labels, held out for the gate
    valid_frac: float = Field(0.15, gt=0, lt=0.9)  # of the rest (the newest of it), to pick the epoch
    gate_metric: Literal["mae", "acc2_has0", "acc2_non0", "f1_has0", "corr"] = "mae"
    gate_margin: float = Field(0.0, ge=0)  # the candidate must beat the current model by more than this
    fine_tune: bool = True  # start from the current model's weights (else from scratch)
    epochs: int = Field(10, ge=1)
    act_reward: bool = True  # the MMCL act-reward loop (False: supervised only, about 3x faster)
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(64, ge=1)
    device: str = "cpu"  # `auto` to train on a GPU when there is one
    threads: int = Field(1, ge=1)  # CPU threads for training: leave the cores to the workers beside it
    nice: int = Field(10, ge=0, le=19)  # and run below their priority
    metrics_port: int = Field(9465, ge=0, le=65535)


class MetricsSettings(BaseModel):
    """Where /metrics, /healthz and /readyz are served, and how often lag is measured."""

    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)  # 0: pick a free port (tests)
    lag_interval_s: float = Field(5.0, gt=0)  # how often the worker reads its partitions' lag from the broker


class OutputSettings(BaseModel):
    """Redis retention and the aggregates' parameters."""

    utterance_ttl_s: int = Field(7 * 24 * 3600, ge=1)
    call_ttl_s: int = Field(7 * 24 * 3600, ge=1)
    timeline_maxlen: int = Field(10_000, ge=1)
    feed_maxlen: int = Field(100_000, ge=1)
    alerts_maxlen: int = Field(10_000, ge=1)
    ewma_alpha: float = Field(0.3, gt=0, le=1)
    shift_window: int = Field(3, ge=1, le=100)  # start-vs-recent: mean of the first k vs the last k utterances


class AlertSettings(BaseModel):
    """The alert rule: which roles, what counts as negative, n of the last m."""

    roles: tuple[Role, ...] = ("customer",)
    negative_below: float = Field(-0.5, le=0)  # a score below this counts as negative
    n: int = Field(3, ge=1)  # alert when n of the last m utterances of the role are negative
    m: int = Field(4, ge=1, le=64)

    @model_validator(mode="after")
    def _check(self) -> AlertSettings:
        if self.n > self.m:
            raise ValueError(f"n={self.n} cannot exceed m={self.m}")
        return self


class PolicySettings(BaseModel):
    """Modalities each speaker role may be analysed on. Default: text only for agents, a common reading of rules on
    emotion recognition at the workplace (EU AI Act art. 5(1)(f)); customers and unknown speakers use all three."""

    agent: tuple[Modality, ...] = ("text",)
    customer: tuple[Modality, ...] = ("text", "audio", "visual")
    unknown: tuple[Modality, ...] = ("text", "audio", "visual")

    def allowed(self, role: str) -> tuple[str, ...]:
        """The modalities a speaker role may be analysed on."""
        return tuple(getattr(self, role))


class LimitSettings(BaseModel):
    """The largest input accepted: message bytes, frames and feature dims."""

    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_frames: int = Field(2000, ge=1)  # T
    max_dim: int = Field(4096, ge=1)  # D


class WireSettings(BaseModel):
    """How the producers we ship write feature messages. The worker reads both versions whatever these say."""

    format: Literal["v2", "v1"] = "v2"  # v2: a JSON header and the array's raw bytes; v1: JSON, base64 float32
    dtype: Literal["float16", "float32"] = "float16"  # of v2 arrays (float16: half the bytes, scores within 0.01)


class Settings(BaseSettings):
    """Every setting of the service, read from MMCL_* environment variables."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_DELIM, extra="forbid")

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    topics: TopicSettings = TopicSettings()
    join: JoinSettings = JoinSettings()
    batch: BatchSettings = BatchSettings()
    worker: WorkerSettings = WorkerSettings()
    model: ModelSettings = ModelSettings()
    registry: RegistrySettings = RegistrySettings()
    trainer: TrainerSettings = TrainerSettings()
    metrics: MetricsSettings = MetricsSettings()
    output: OutputSettings = OutputSettings()
    alert: AlertSettings = AlertSettings()
    policy: PolicySettings = PolicySettings()
    limits: LimitSettings = LimitSettings()
    wire: WireSettings = WireSettings()
    # configured: the endpoints above, as they are (production). local: the embedded broker and Redis `mmcl up`
    # recorded in state_dir, with their client timings and the demo's model (development; also `mmcl --local`).
    runtime: Literal["configured", "local"] = "configured"
    state_dir: Path = Path(".mmcl")  # embedded broker / Redis data, logs, the demo's model
    log_level: Literal["debug", "info", "warning", "error"] = "info"


def env_name(loc: tuple[Any, ...]) -> str:
    """The MMCL_* variable that sets the setting at `loc`."""
    return ENV_PREFIX + ENV_DELIM.join(str(p).upper() for p in loc if not isinstance(p, int))


def env_field(name: str) -> Any:
    """The settings field an MMCL_* variable sets, or None: pydantic-settings ignores names it does not know, so a
    misspelt variable would otherwise change nothing, silently."""
    if not name.startswith(ENV_PREFIX):
        return None
    model: Any = Settings
    parts = name[len(ENV_PREFIX):].lower().split(ENV_DELIM)
    for i, part in enumerate(parts):
        info = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if info is None:
            return None
        if i < len(parts) - 1:
            model = info.annotation
    return info


def unknown_env_names(environ: Any = os.environ) -> list[str]:
    """MMCL_* variables that set nothing (misspelt or obsolete)."""
    return sorted(k for k in environ if k.startswith(ENV_PREFIX) and env_field(k) is None)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment; a bad value is one ConfigError naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(p for p in err["loc"] if p not in ("function-after",))
        name = env_name(loc) if loc else ENV_PREFIX + "*"
        raw = os.environ.get(name)
        shown = f" (got {_shown(loc, raw)!r})" if raw is not None else ""
        raise ConfigError(f"{name}: {err['msg']}{shown}") from None


def is_secret_field(info: Any) -> bool:
    """The one rule: a field is secret when its type is a secret type (SecretStr, or SecretUrl that shows its URL
    with the password masked). Every value shown to a person goes through `shown`."""
    return any(isinstance(t, type) and issubclass(t, SecretStr) for t in (info.annotation, *get_args(info.annotation)))


def shown(value: Any) -> Any:
    """A setting's value as it may be shown (printed, logged, returned by `mmcl config show`)."""
    if isinstance(value, SecretStr):
        return str(value)  # '**********', or the URL with '***' for its password
    if isinstance(value, BaseModel):
        return {k: shown(getattr(value, k)) for k in type(value).model_fields}
    if isinstance(value, (list, tuple)):
        return [shown(x) for x in value]
    if isinstance(value, Path):
        return str(value)
    return value


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings as JSON-able data, every secret masked."""
    return cast("dict[str, Any]", shown(settings))


def _shown(loc: tuple[Any, ...], raw: str) -> str:
    """An env value quoted in an error message: masked when the field it was meant for is a secret."""
    model: Any = Settings
    for part in loc:
        info = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if info is None:
            break
        if is_secret_field(info):
            return str(SecretUrl(raw)) if "://" in raw else "***"
        model = info.annotation
    return raw
