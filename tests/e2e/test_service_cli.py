"""`mmcl up`, `config show`, `produce` and `down` as a user runs them, on a machine where nothing else listens."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from streams.local.embedded import free_port, pid_alive

ROOT = Path(__file__).resolve().parents[2]
MMCL = str(ROOT / ".venv" / "bin" / "mmcl")


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MMCL, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_up_config_produce_down(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMCL_")}
    configured_kafka = f"127.0.0.1:{free_port()}"
    env.update({"MMCL_STATE_DIR": str(tmp_path / "state"), "MMCL_KAFKA__BOOTSTRAP_SERVERS": configured_kafka,
                "MMCL_REDIS__URL": f"redis://:s3cret@127.0.0.1:{free_port()}/0", "MMCL_TOPICS__PREFIX": "cli",
                "MMCL_REGISTRY__REDIS_URL": "redis://registry:r3gistry@127.0.0.1:1/0"})
    try:  # `mmcl down` also after a failure
        up = run(env, "up")
        assert up.returncode == 0, up.stderr
        runtime = json.loads((tmp_path / "state" / "runtime.json").read_text())
        assert set(runtime) == {"kafka", "redis"} and all(pid_alive(s["pid"]) for s in runtime.values())
        assert runtime["kafka"]["url"] in up.stdout and "cli.features.text" in up.stdout
        again = run(env, "up")  # idempotent: finds them running
        assert again.returncode == 0 and again.stdout.count("[already up]") == 2
        # the configured broker does not answer: without the local profile a command still uses it, and says so
        configured = run(env, "config", "show")
        assert json.loads(configured.stdout)["kafka"]["bootstrap_servers"] == configured_kafka
        assert f"broker {configured_kafka}" in configured.stderr and "(configured)" in configured.stderr
        assert "s3cret" not in configured.stderr
        worker = run(env, "worker")  # an error, never a quiet switch to the embedded broker that runs
        assert worker.returncode == 1 and "Traceback" not in worker.stderr, worker.stderr
        said = worker.stderr.splitlines()
        assert len(said) == 2 and said[0] == (f"mmcl: broker {configured_kafka}, Redis "
                                              f"redis://:***@{env['MMCL_REDIS__URL'].rsplit('@', 1)[1]} (configured)")
        assert said[1].startswith(f"mmcl: error: the broker at {configured_kafka} did not answer within 10 s (")
        local = run(env, "--local", "config", "show")
        shown = json.loads(local.stdout)
        assert shown["kafka"]["bootstrap_servers"] == runtime["kafka"]["url"]
        assert shown["kafka"]["fetch_max_wait_ms"] == 50 and shown["runtime"] == "local"  # the embedded broker's timings
        assert f"broker {runtime['kafka']['url']}" in local.stderr and "local profile" in local.stderr
        assert "s3cret" not in json.dumps(shown) and "r3gistry" not in json.dumps(shown)  # it printed the registry's
        assert shown["registry"]["redis_url"] == "redis://registry:***@127.0.0.1:1/0"
        sent = run(env, "--local", "produce", "--limit", "6", "--rate", "100", "--calls", "2", "--missing-visual", "0",
                   "--label-share", "1", "--label-delay", "0.1")
        assert sent.returncode == 0, sent.stderr
        assert "sent 6 utterances (18 messages, 2 calls" in sent.stdout and "6 labels" in sent.stdout
    finally:
        down = run(env, "down")
    assert down.returncode == 0 and "stopped: kafka, redis" in down.stdout
    assert not any(pid_alive(s["pid"]) for s in runtime.values())
    assert run(env, "down").stdout.strip() == "nothing was running"


def test_a_bad_setting_is_one_line_naming_the_variable() -> None:
    env = {**os.environ, "MMCL_BATCH__MAX_SIZE": "many"}
    r = run(env, "config", "show")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("mmcl: error: MMCL_BATCH__MAX_SIZE")


def test_topics_create_and_model_demo_for_the_deployment_init_steps(tmp_path: Path) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource

    env = {k: v for k, v in os.environ.items() if not k.startswith("MMCL_")}
    env.update({"MMCL_STATE_DIR": str(tmp_path / "state"), "MMCL_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
                "MMCL_REDIS__URL": f"redis://127.0.0.1:{free_port()}/0", "MMCL_TOPICS__PREFIX": "init",
                "MMCL_TOPICS__PARTITIONS": "3", "MMCL_TOPICS__DLQ_RETENTION_H": "5", "MMCL_TOPICS__BOGUS": "1"})
    try:  # `mmcl down` also after a failure
        up = run(env, "up")
        assert up.returncode == 0, up.stderr
        kafka = json.loads((tmp_path / "state" / "runtime.json").read_text())["kafka"]["url"]
        made = run(env, "--local", "topics", "create")  # `up` made them: the init step finds them and says so
        assert made.returncode == 0, made.stderr
        assert "exists   init.dlq  partitions=3" in made.stdout and "init.model-updates  partitions=1" in made.stdout
        assert "warning: MMCL_TOPICS__BOGUS is not a setting" in made.stderr
        admin = AdminClient({"bootstrap.servers": kafka})
        res = ConfigResource(ConfigResource.Type.TOPIC, "init.dlq")
        conf = {k: v.value for k, v in admin.describe_configs([res])[res].result(10).items()}
        assert conf["retention.ms"] == str(5 * 3600 * 1000)
        first = run(env, "--local", "model", "demo")
        assert first.returncode == 0, first.stderr
        assert "promoted" in first.stdout
        version = first.stdout.split("published ", 1)[1].split()[0]
        second = run(env, "--local", "model", "demo")  # the registry has a current version: publish only, never demote it
        assert second.returncode == 0 and "without promoting" in second.stdout
        assert f"* {version}" in run(env, "--local", "model", "list").stdout
    finally:
        run(env, "down")


def test_up_with_apache_kafka_instead_of_the_embedded_broker(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMCL_")}
    env.update({"MMCL_STATE_DIR": str(tmp_path / "state"), "MMCL_TOPICS__PREFIX": "ak"})
    try:
        up = run(env, "up", "--broker", "kafka")
        assert up.returncode == 0, up.stderr
        runtime = json.loads((tmp_path / "state" / "runtime.json").read_text())
        assert runtime["kafka"]["kind"] == "apache" and "kafka: Apache Kafka, 127.0.0.1:" in up.stdout
        other = run(env, "up")  # the embedded broker cannot run beside it for the same state folder
        assert other.returncode == 1 and other.stderr.strip().endswith("`mmcl down` first to start tansu instead")
        shown = json.loads(run(env, "--local", "config", "show").stdout)
        # Apache Kafka answers fetches early: the production client settings, not the embedded broker's
        assert shown["kafka"]["bootstrap_servers"] == runtime["kafka"]["url"]
        assert shown["kafka"]["broker_kind"] == "apache" and shown["kafka"]["fetch_max_wait_ms"] == 500
        sent = run(env, "--local", "produce", "--limit", "6", "--rate", "100", "--calls", "2", "--missing-visual", "0")
        assert sent.returncode == 0 and "sent 6 utterances (18 messages, 2 calls" in sent.stdout, sent.stderr
    finally:
        down = run(env, "down")
    assert down.returncode == 0 and "stopped: kafka, redis" in down.stdout
    assert not any(pid_alive(s["pid"]) for s in runtime.values())
