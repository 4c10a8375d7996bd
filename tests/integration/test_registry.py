"""The model registry, both backends behind one interface: publish, promote, rollback, corrupt entries."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from mmcl.checkpoint import CHECKSUMS, CONFIG, model_version
from streams.learning.registry import DirRegistry, RedisRegistry, Registry, RegistryError
from streams.local.embedded import Service

from .conftest import make_checkpoint


@pytest.fixture(params=["dir", "redis"])
def registry(request: pytest.FixtureRequest, tmp_path: Path, redis_service: Service) -> Iterator[Registry]:
    if request.param == "dir":
        yield DirRegistry(tmp_path / "registry")
        return
    client = redis.Redis.from_url(redis_service.url)
    prefix = f"test:{tmp_path.name}"
    yield RedisRegistry(client, tmp_path / "cache", prefix)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


def corrupt(registry: Registry, version: str) -> None:
    if isinstance(registry, DirRegistry):
        weights = registry.root / "versions" / version / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-10] ^= 0xFF
        weights.write_bytes(bytes(data))
    else:
        assert isinstance(registry, RedisRegistry)
        key = f"{registry.prefix}:v:{version}"
        data = bytearray(registry.r.hget(key, "model.safetensors"))
        data[-10] ^= 0xFF
        registry.r.hset(key, "model.safetensors", bytes(data))
        import shutil

        shutil.rmtree(registry.cache / version, ignore_errors=True)


def test_publish_promote_rollback(registry: Registry, tmp_path: Path) -> None:
    a = registry.publish(make_checkpoint(tmp_path / "a", seed=0), note="first")
    b = registry.publish(make_checkpoint(tmp_path / "b", seed=1), parent=a.version,
                         label_window={"from": 1, "to": 2, "labels": 40})
    assert registry.publish(tmp_path / "a").version == a.version  # the same weights again: the same version
    assert [v.version for v in registry.versions()] == [a.version, b.version]
    got = registry.get(b.version)
    assert got.parent == a.version and got.label_window == {"from": 1, "to": 2, "labels": 40}
    assert got.metrics == {"seed": 1} and len(got.checksum) == 64 and got.version == model_version(tmp_path / "b")
    assert registry.current() is None
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()
    registry.promote(a.version)
    registry.promote(b.version)
    registry.promote(b.version)  # promoting the current one again changes nothing
    assert registry.current() == b.version and registry.history() == [a.version, b.version]
    assert (registry.fetch(b.version) / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert registry.rollback() == a.version
    assert registry.current() == a.version and registry.history() == [a.version]
    with pytest.raises(RegistryError, match="no model version"):
        registry.promote("0123456789ab")


def test_a_corrupt_entry_is_refused(registry: Registry, tmp_path: Path) -> None:
    a = registry.publish(make_checkpoint(tmp_path / "a", seed=0))
    b = registry.publish(make_checkpoint(tmp_path / "b", seed=1))
    registry.promote(a.version)
    corrupt(registry, b.version)
    with pytest.raises(RegistryError, match="corrupt"):
        registry.fetch(b.version)
    with pytest.raises(RegistryError, match="corrupt"):
        registry.promote(b.version)
    assert registry.current() == a.version


def with_config(src: Path, dest: Path, **changes: object) -> Path:
    """A copy of a checkpoint with the same weights file and its model config changed, checksums rewritten."""
    import hashlib
    import json
    import shutil

    shutil.copytree(src, dest)
    config = json.loads((dest / CONFIG).read_text())
    config["model"].update(changes)
    (dest / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    sums = [line.split("  ") for line in (dest / CHECKSUMS).read_text().splitlines()]
    (dest / CHECKSUMS).write_text("".join(
        f"{hashlib.sha256((dest / name).read_bytes()).hexdigest()}  {name}\n" for _, name in sums))
    return dest


def test_same_weights_in_another_configuration_is_another_version(registry: Registry, tmp_path: Path) -> None:
    a = registry.publish(make_checkpoint(tmp_path / "a", seed=0))
    b = registry.publish(with_config(tmp_path / "a", tmp_path / "b", seq_len=64))
    assert a.checksum == b.checksum  # one weights file
    assert a.version != b.version and [v.version for v in registry.versions()] == [a.version, b.version]
    registry.promote(b.version)
    assert (registry.fetch(b.version) / CONFIG).read_text() == (tmp_path / "b" / CONFIG).read_text()


def test_a_version_whose_config_was_edited_is_refused(registry: Registry, tmp_path: Path) -> None:
    a = registry.publish(make_checkpoint(tmp_path / "a", seed=0))
    edited = with_config(tmp_path / "a", tmp_path / "edited", seq_len=64)  # checksums consistent, version not
    if isinstance(registry, DirRegistry):
        for name in (CONFIG, CHECKSUMS):
            (registry.root / "versions" / a.version / name).write_bytes((edited / name).read_bytes())
    else:
        assert isinstance(registry, RedisRegistry)
        registry.r.hset(f"{registry.prefix}:v:{a.version}",
                        mapping={name: (edited / name).read_bytes() for name in (CONFIG, CHECKSUMS)})
    with pytest.raises(RegistryError, match="config changed"):
        registry.promote(a.version)


def test_a_version_named_by_its_weights_alone_is_still_served(tmp_path: Path) -> None:
    """Versions published before they covered the configuration keep their names."""
    import json

    registry = DirRegistry(tmp_path / "registry")
    new = registry.publish(make_checkpoint(tmp_path / "a", seed=0))
    legacy = new.checksum[:12]
    (registry.root / "versions" / new.version).rename(registry.root / "versions" / legacy)
    meta = registry.root / "versions" / legacy / "version.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "version": legacy}))
    registry.promote(legacy)
    assert registry.current() == legacy and registry.fetch(legacy).name == legacy


def test_concurrent_promotions_keep_a_consistent_history(registry: Registry, tmp_path: Path) -> None:
    versions = [registry.publish(make_checkpoint(tmp_path / f"m{i}", seed=i)).version for i in range(4)]
    threads = [threading.Thread(target=registry.promote, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    history = registry.history()
    assert sorted(history) == sorted(versions) and registry.current() == history[-1]  # none lost, none twice


def test_one_trainer_lease_across_machines(redis_service: Service, tmp_path: Path) -> None:
    from mmcl.errors import ConfigError
    from streams.learning.lease import RedisLease

    client = redis.Redis.from_url(redis_service.url)
    key = f"test:{tmp_path.name}:lease"
    first = RedisLease(client, key, ttl_s=1.0)
    first.acquire()
    second = RedisLease(client, key, ttl_s=1.0)
    with pytest.raises(ConfigError, match="another trainer is active"):
        second.acquire()
    assert client.pttl(key) > 0
    import time

    time.sleep(1.5)  # past the TTL: the holder renews, so it is still held
    with pytest.raises(ConfigError):
        second.acquire()
    first.release()
    second.acquire()
    second.release()
    assert client.get(key) is None
