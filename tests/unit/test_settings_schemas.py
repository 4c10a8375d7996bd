"""Settings from MMCL_* env vars, one-line errors naming the variable, masked secrets, exported JSON Schemas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmcl.errors import ConfigError
from streams.schemas import render, schemas
from streams.settings import load_settings, masked

ROOT = Path(__file__).resolve().parents[2]


def test_nested_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMCL_BATCH__MAX_SIZE", "8")
    monkeypatch.setenv("MMCL_JOIN__REQUIRED", '["text"]')
    monkeypatch.setenv("MMCL_POLICY__AGENT", '["text", "audio"]')
    monkeypatch.setenv("MMCL_TOPICS__PREFIX", "tenant1")
    s = load_settings()
    assert s.batch.max_size == 8 and s.join.required == ("text",) and s.policy.allowed("agent") == ("text", "audio")
    assert s.topics.feature("audio") == "tenant1.features.audio" and s.topics.dlq == "tenant1.dlq"


@pytest.mark.parametrize(("var", "value", "words"), [
    ("MMCL_BATCH__MAX_SIZE", "lots", "integer"),
    ("MMCL_REDIS__URL", "http://x", "redis://"),
    ("MMCL_ALERT__N", "9", "cannot exceed"),
    ("MMCL_MODEL__DEVICE", "tpu", "cuda"),
    ("MMCL_JOIN__REQUIRED", '["smell"]', "text"),
])
def test_a_bad_value_names_its_variable(monkeypatch: pytest.MonkeyPatch, var: str, value: str, words: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as e:
        load_settings()
    text = str(e.value)
    assert "\n" not in text and words in text
    assert text.startswith("MMCL_ALERT") if var == "MMCL_ALERT__N" else text.startswith(var)


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMCL_REDIS__URL", "redis://user:hunter2@db:6379/0")
    monkeypatch.setenv("MMCL_REDIS__PASSWORD", "hunter3")
    monkeypatch.setenv("MMCL_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("MMCL_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("MMCL_KAFKA__SASL_USERNAME", "svc")
    monkeypatch.setenv("MMCL_KAFKA__SASL_PASSWORD", "hunter4")
    shown = json.dumps(masked(load_settings()))
    assert "hunter" not in shown and "user:***@db" in shown and "svc" in shown


def test_exported_schemas_match_the_models() -> None:
    """docs/schemas/ is what `mmcl schemas export` writes; regenerate it when a message changes."""
    for name, schema in schemas().items():
        path = ROOT / "docs" / "schemas" / f"{name}.schema.json"
        assert path.exists(), f"missing {path}: run `mmcl schemas export`"
        assert path.read_text() == render(schema), f"{path} is stale: run `mmcl schemas export`"
    assert {p.name for p in (ROOT / "docs" / "schemas").glob("*.json")} == {f"{n}.schema.json" for n in schemas()}


def test_unknown_env_names_are_found_known_ones_are_not() -> None:
    from streams.settings import env_field, unknown_env_names

    env = {"MMCL_KAFKA__BOOTSTRAP_SERVERS": "x", "MMCL_KAFKA__BOOTSTRAP_SERVER": "typo", "MMCL_STATE_DIR": "/s",
           "MMCL_TOPICS__FEATURES_RETENTION_H": "1", "MMCL_KAFKA": "not a leaf", "MMCL_LOG_LEVEL__X": "no sub",
           "PATH": "/bin"}
    assert unknown_env_names(env) == ["MMCL_KAFKA__BOOTSTRAP_SERVER", "MMCL_LOG_LEVEL__X"]
    assert env_field("MMCL_METRICS__LAG_INTERVAL_S").default == 5.0


def test_topic_specs_size_retention_and_compaction() -> None:
    from streams.kafka import HEADERS_ROOM, topic_specs
    from streams.settings import TopicSettings

    t = TopicSettings(prefix="p", partitions=6, features_retention_h=2)
    specs = topic_specs(t, max_message_bytes=1_000_000)
    assert set(specs) == {*t.all, t.model_updates}
    assert {specs[n].partitions for n in t.all} == {6} and specs[t.model_updates].partitions == 1
    assert specs[t.model_updates].config == {"cleanup.policy": "compact", "min.insync.replicas": "1"}
    # replicated: an acknowledged record survives one broker's loss (every producer uses acks=all)
    replicated = topic_specs(TopicSettings(replication=3))
    assert {spec.config["min.insync.replicas"] for spec in replicated.values()} == {"2"}
    with pytest.raises(ValueError, match="no write could ever be acknowledged"):
        TopicSettings(replication=2, min_insync_replicas=3)
    text = specs[t.feature("text")].config
    assert text["retention.ms"] == str(2 * 3600 * 1000) and text["max.message.bytes"] == str(1_000_000 + HEADERS_ROOM)
    assert specs[t.dlq].config["max.message.bytes"] == text["max.message.bytes"]  # a refused message fits the DLQ
    assert specs[t.joined].config["cleanup.policy"] == "compact,delete"
    assert int(specs[t.joined].config["max.message.bytes"]) >= 3 * 1_000_000


SECRET_WORDS = ("password", "secret", "token", "url", "credential")


def _leaves(model: type, path: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    from pydantic import BaseModel

    for name, info in model.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            yield from _leaves(sub, (*path, name))
        else:
            yield (*path, name), info


def test_every_setting_that_can_hold_a_secret_is_a_secret_type_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """One rule: a field whose name says it may hold a secret (a password, a URL with credentials in it) has a secret
    type; then every secret set at once appears nowhere in `mmcl config show`, an error message, or a repr."""
    from streams.settings import Settings, env_name, is_secret_field

    secret = [path for path, info in _leaves(Settings) if any(w in path[-1] for w in SECRET_WORDS)]
    assert {".".join(p) for p in secret} >= {"redis.url", "redis.password", "kafka.sasl_password", "registry.redis_url"}
    for path, info in _leaves(Settings):
        assert is_secret_field(info) == (path in secret), f"{'.'.join(path)}: secret type iff it may hold a secret"
    for i, path in enumerate(secret):
        value = f"redis://user:sentinel{i}@host:6379/0" if path[-1].endswith("url") else f"sentinel{i}"
        monkeypatch.setenv(env_name(path), value)
    monkeypatch.setenv("MMCL_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("MMCL_KAFKA__SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("MMCL_KAFKA__SASL_USERNAME", "svc")
    s = load_settings()
    for shown in (json.dumps(masked(s)), repr(s), str(s)):
        assert "sentinel" not in shown
    assert masked(s)["registry"]["redis_url"] == "redis://user:***@host:6379/0"  # `mmcl config show` printed it


def test_a_bad_secret_value_is_not_quoted_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMCL_REGISTRY__REDIS_URL", "http://user:sentinel@host")
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert "sentinel" not in str(e.value) and "MMCL_REGISTRY__REDIS_URL" in str(e.value)


def test_wire_and_model_modality_names_map_in_one_place() -> None:
    from mmcl.config import by_model, by_wire, model_modality

    assert model_modality("visual") == "vision" and model_modality("text") == "text"
    assert by_wire({"vision": "fer", "text": "minilm"}) == {"text": "minilm", "visual": "fer"}
    assert by_wire({"visual": "older", "vision": "newer"}) == {"visual": "newer"}  # the model's name is what is written
    assert by_model({"visual": 19, "text": 384}) == {"vision": 19, "text": 384}
