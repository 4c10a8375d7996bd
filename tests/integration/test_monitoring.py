"""The monitoring stack against real processes: a worker and a trainer on the embedded broker and Redis, scraped by
a real Prometheus (Debian's package) loaded with deploy/prometheus's rules.

- every metric the dashboard and the alert rules query is one the worker or the trainer exports (live /metrics);
- the probe paths the deployment uses answer on both;
- Prometheus scrapes both over loopback, evaluates every rule without error (one fires on the dead letters sent
  here), and answers the dashboard's queries, the key ones with data;
- the lag gauges settle on the broker's truth: end offsets = messages sent, lag 0 once all is committed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from streams.health import PATHS
from streams.local.embedded import free_port
from streams.messages import FeedbackLabel
from tests.deploy import files as deploy

from .conftest import DIMS, Stack, Worker, features, part, wait_for

SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "info": ("_info",), "gauge": ("",), "summary": ("", "_sum", "_count", "_created"), "unknown": ("",)}
# panels whose query must return data once traffic has flowed (the rest must at least be valid PromQL)
KEY_PANELS = ("Utterances scored / s", "End-to-end p95", "Workers ready", "Consumer lag (messages)", "Dead letters / s",
              "Model version", "Throughput by modality", "Join outcomes", "Pending joins and utterances in flight",
              "Batch size", "Join wait (first part to scored)", "Inference time per batch",
              "End-to-end latency (last part produced to Redis)", "Sentiment by speaker (dashboard range)",
              "Dead letters by reason", "Model version per worker", "Feedback labels", "Training set",
              "Write errors (each is retried)", "Redis write time per batch", "Consumer lag by topic",
              "Seconds since the last message, by topic")


def exported_names(text: str) -> set[str]:
    """Sample names an exposition can carry, from its families: labelled metrics with no child yet still declare
    their family (HELP / TYPE), so a counter no run has touched is found too."""
    names = set()
    for fam in text_string_to_metric_families(text):
        names |= {fam.name + s for s in SUFFIXES[fam.type]}
        names |= {s.name for s in fam.samples}
    return names


class Prometheus:
    def __init__(self, config: Path, data: Path, log: Path) -> None:
        self.port = free_port()
        exe = shutil.which("prometheus")
        assert exe, "prometheus is missing: scripts/test.sh installs Debian's prometheus package"
        with log.open("wb") as out:
            self.proc = subprocess.Popen([exe, f"--config.file={config}", f"--storage.tsdb.path={data}",
                                          f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                                         stdout=out, stderr=subprocess.STDOUT)
        self.log = log
        wait_for(self.ready, 30, "Prometheus to be ready", every=0.2)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:
            body = json.loads(e.read())
        assert body["status"] == "success", f"{path} {params}: {body.get('error')}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        res = self.query(expr)
        return float(res[0]["value"][1]) if res else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def scrape_config(targets: dict[str, str], rules: Path) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with its jobs pointed at loopback, and a 1 s scrape / evaluation interval."""
    conf = deploy.load_yaml(deploy.DEPLOY / "prometheus" / "prometheus.yml")
    conf["global"].update(scrape_interval="1s", evaluation_interval="1s")
    conf["rule_files"] = [str(rules)]
    jobs = []
    for job in conf["scrape_configs"]:
        if job["job_name"] in targets:
            jobs.append({"job_name": job["job_name"], "static_configs": [{"targets": [targets[job["job_name"]]]}]})
    assert {j["job_name"] for j in jobs} == set(targets), "the shipped config lost a job"
    conf["scrape_configs"] = jobs
    return conf


@pytest.fixture(scope="module")
def services(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> tuple[Worker, Worker]:
    worker = stack.start_worker(MMCL_METRICS__LAG_INTERVAL_S="0.5")
    state = tmp_path_factory.mktemp("trainer-state")
    port = free_port()
    log = state / "trainer.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "trainer"], stdout=out, stderr=subprocess.STDOUT,
                                env=stack.env(MMCL_TRAINER__METRICS_PORT=str(port), MMCL_STATE_DIR=str(state),
                                              MMCL_TRAINER__MATCH_GRACE_S="1"))
    trainer = Worker(proc, port, log)
    stack.workers.append(trainer)
    wait_for(lambda: trainer.get("/healthz")[0] == 200, 60, "the trainer's metrics endpoint")
    return worker, trainer


@pytest.fixture(scope="module")
def prometheus(services: tuple[Worker, Worker], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    worker, trainer = services
    d = tmp_path_factory.mktemp("prometheus")
    shutil.copy(deploy.ALERTS, d / "alerts.yml")
    conf = scrape_config({"mmcl-worker": f"127.0.0.1:{worker.port}", "mmcl-trainer": f"127.0.0.1:{trainer.port}"},
                         d / "alerts.yml")
    (d / "prometheus.yml").write_text(yaml.safe_dump(conf))
    check = subprocess.run([shutil.which("promtool") or "promtool", "check", "config", str(d / "prometheus.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    prom = Prometheus(d / "prometheus.yml", d / "data", d / "prometheus.log")
    yield prom
    prom.stop()


def send_wave(stack: Stack, producer: Any, wave: int, n: int, bad: int) -> tuple[list[str], int]:
    """n utterances (every fifth without visual: a partial join) and `bad` malformed messages; returns the utterance
    ids and how many feature messages went out."""
    ids, sent = [], 0
    for i in range(n):
        call, utt = f"{stack.prefix}-mon{wave}-c{i % 3}", f"{stack.prefix}-mon{wave}-u{i}"
        for m in ("text", "audio") if i % 5 == 4 else ("text", "audio", "visual"):
            stack.send(producer, m, part(utt, call, m, seed=i, speaker=("agent", "customer")[i % 2]), call.encode())
            sent += 1
        ids.append(utt)
    for j in range(bad):
        if j % 2:
            value = part(f"bad{wave}-{j}", "c", "audio", array=features("audio", j, dim=DIMS["audio"] + 1))
        else:
            value = b"{not json"
        stack.send(producer, "audio", value, b"bad")
        sent += 1
    producer.flush(10)
    return ids, sent


def test_the_dashboard_and_the_rules_ask_only_for_exported_metrics(services: tuple[Worker, Worker]) -> None:
    worker, trainer = services
    exported = exported_names(worker.get("/metrics")[1]) | exported_names(trainer.get("/metrics")[1])
    queried = {(where, name) for where, expr in [*deploy.dashboard_exprs(), *deploy.rule_exprs()]
               for name in deploy.metric_names(expr)}
    assert queried, "no metric names found in the dashboard and rules"
    unknown = sorted((w, n) for w, n in queried if n not in exported | deploy.PROMETHEUS_SERIES)
    assert not unknown, f"queried but never exported: {unknown}"


def test_the_deployments_probe_paths_answer(services: tuple[Worker, Worker]) -> None:
    for svc in services:
        for path in PATHS:
            assert svc.get(path)[0] == 200, path


def test_prometheus_scrapes_evaluates_the_rules_and_answers_the_dashboard(
        stack: Stack, services: tuple[Worker, Worker], prometheus: Prometheus) -> None:
    worker, _trainer = services
    prom = prometheus
    wait_for(lambda: {t["labels"]["job"]: t["health"] for t in prom.api("targets")["activeTargets"]}
             == {"mmcl-worker": "up", "mmcl-trainer": "up"}, 30, "both targets up")
    producer = stack.producer()
    # two waves: a counter's first sample is its baseline, so rates need increases after Prometheus has seen it
    ids, sent = send_wave(stack, producer, 1, 10, bad=2)
    wait_for(lambda: prom.value("sum(mmcl_predictions_total)") == 10, 30, "the first wave in Prometheus")
    more, sent2 = send_wave(stack, producer, 2, 30, bad=12)
    ids, sent = ids + more, sent + sent2
    base = int(time.time() * 1000)
    for i, u in enumerate(ids[:20]):
        lab = FeedbackLabel(utterance_id=u, label=float(i % 7 - 3), source="qa", labeled_at=base + i)
        producer.produce(stack.topics.feedback, lab.model_dump_json().encode(), key=u.encode())
    producer.flush(10)
    wait_for(lambda: worker.status().get("written", 0) >= 40, 60, "the worker's results")
    wait_for(lambda: prom.value("sum(mmcl_predictions_total)") == 40, 30, "every result in Prometheus")
    wait_for(lambda: (prom.value("sum(mmcl_dead_letters_total)") or 0) == 14, 30, "the dead letters in Prometheus")
    wait_for(lambda: (prom.value('sum(mmcl_feedback_labels_total{result="received"})') or 0) >= 20, 60,
             "the labels in Prometheus")

    # the lag gauges settle on the broker's truth
    wait_for(lambda: prom.value("sum(mmcl_log_end_offset)") == sent, 30, "end offsets = messages sent")
    wait_for(lambda: prom.value("sum(mmcl_consumer_lag)") == 0, 30, "lag 0 once everything is committed")

    # every rule is loaded and evaluates without error against live data; one fires on the dead letters
    rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    assert {r["name"] for r in rules} == {name for name, _ in deploy.rule_exprs()}
    wait_for(lambda: all(r["health"] == "ok" and not r["lastEvaluation"].startswith("0001")
                         for g in prom.api("rules")["groups"] for r in g["rules"]), 20, "every rule evaluated")
    wait_for(lambda: prom.query('ALERTS{alertname="MMCLDeadLettersSustained"}'), 30, "the dead-letter alert pending")
    assert not prom.query('ALERTS{alertname="MMCLTargetDown"}')

    # the dashboard: every query is valid PromQL; the key ones return data
    empty = []
    for title, expr in deploy.dashboard_exprs():
        result = prom.query(deploy.grafana_vars(expr, rate="2m"))
        if title in KEY_PANELS and not result:
            empty.append((title, expr))
    assert not empty, f"no data for: {empty}"
    by_modality = {r["metric"]["modality"]: float(r["value"][1]) for r in
                   prom.query("sum by (modality) (increase(mmcl_messages_consumed_total[5m]))")}
    assert set(by_modality) == {"text", "audio", "visual"}
    outcomes = {r["metric"]["outcome"] for r in prom.query("sum by (outcome) (mmcl_join_outcomes_total)")}
    assert {"complete", "partial"} <= outcomes
    speakers = {r["metric"]["speaker"] for r in prom.query("sum by (speaker, label) (mmcl_predictions_total)")}
    assert speakers == {"agent", "customer"}
    reasons = {r["metric"]["reason"] for r in prom.query("sum by (reason) (mmcl_dead_letters_total)")}
    assert len(reasons) == 2
    p95 = prom.value(deploy.grafana_vars(next(e for t, e in deploy.dashboard_exprs() if t == "End-to-end p95"), rate="2m"))
    assert p95 is not None and 0 < p95 < 10
