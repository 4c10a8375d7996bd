"""The local profile is opt-in: configured endpoints are never swapped for embedded ones behind the user's back."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmcl.errors import ConfigError
from streams.local import runtime
from streams.local.embedded import Service
from streams.local.runtime import DEMO_MODEL, EMBEDDED_KAFKA_SETTINGS, describe_endpoints, resolve
from streams.settings import KafkaSettings, Settings, load_settings


def with_demo_model(state: Path) -> Path:
    (state / DEMO_MODEL).mkdir(parents=True)
    (state / DEMO_MODEL / "model.safetensors").write_bytes(b"")
    return state


def fake_services(monkeypatch: pytest.MonkeyPatch) -> None:
    services = {"kafka": Service("kafka", 1, 19092, "127.0.0.1:19092", "k.log"),
                "redis": Service("redis", 2, 16379, "redis://127.0.0.1:16379/0", "r.log")}
    monkeypatch.setattr(runtime, "load_runtime", lambda _state_dir: services)


def test_configured_settings_are_used_as_they_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_services(monkeypatch)  # embedded services run, and the configured ones do not answer: still not used
    settings = Settings(state_dir=with_demo_model(tmp_path), kafka=KafkaSettings(bootstrap_servers="10.0.0.9:9092"))
    assert resolve(settings) is settings
    assert settings.model.checkpoint is None  # no quiet switch to the demo model either
    assert describe_endpoints(settings) == ("broker 10.0.0.9:9092, Redis redis://127.0.0.1:6379/0 (configured)")


def test_production_defaults_are_the_ones_measured_on_apache_kafka() -> None:
    """docs/benchmarks.md (client timings) has the measurements; the embedded broker's timings are not these."""
    kafka = KafkaSettings()
    assert (kafka.session_timeout_s, kafka.heartbeat_interval_s, kafka.fetch_max_wait_ms, kafka.linger_ms) == \
        (10.0, 1.0, 500, 2)
    assert kafka.broker_kind == "apache"


def test_the_local_profile_without_mmcl_up_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no embedded kafka or redis runs .* start them with `mmcl up`"):
        resolve(Settings(state_dir=tmp_path, runtime="local"))


def test_the_local_profile_points_at_the_embedded_services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_services(monkeypatch)
    monkeypatch.setenv("MMCL_RUNTIME", "local")
    monkeypatch.setenv("MMCL_KAFKA__SESSION_TIMEOUT_S", "4")  # set explicitly: wins over the embedded timing
    monkeypatch.setenv("MMCL_STATE_DIR", str(with_demo_model(tmp_path)))
    local = resolve(load_settings())
    assert local.kafka.bootstrap_servers == "127.0.0.1:19092"
    assert local.redis.url.get_secret_value() == "redis://127.0.0.1:16379/0"
    assert local.kafka.session_timeout_s == 4
    assert local.kafka.heartbeat_interval_s == EMBEDDED_KAFKA_SETTINGS["heartbeat_interval_s"]
    assert local.kafka.fetch_max_wait_ms == EMBEDDED_KAFKA_SETTINGS["fetch_max_wait_ms"]
    assert local.model.checkpoint == tmp_path / DEMO_MODEL
    assert "local profile" in describe_endpoints(local)


def test_the_endpoints_line_masks_a_redis_password() -> None:
    settings = Settings(redis={"url": "redis://user:hunter2@10.0.0.6:6379/0"})  # type: ignore[arg-type]
    line = describe_endpoints(settings)
    assert "hunter2" not in line and "redis://user:***@10.0.0.6:6379/0" in line


def test_kraft_cluster_ids_never_look_like_an_option() -> None:
    from streams.local.apache_kafka import cluster_id

    made = {cluster_id() for _ in range(3000)}  # about one in 64 raw ids starts with '-'
    assert len(made) == 3000 and all(len(c) == 22 and not c.startswith("-") for c in made)
