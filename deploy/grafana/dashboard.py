"""Builds deploy/grafana/dashboards/mmcl.json, the dashboard Grafana provisions (python deploy/grafana/dashboard.py).

The panels are declared here, not edited in the JSON: tests/deploy checks that the JSON is this file's output, that
every metric it queries is one the worker or the trainer exports, and that a real Prometheus answers the key
queries after traffic.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "dashboards" / "mmcl.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
SLO_SECONDS = 2.5  # deploy/prometheus/alerts.yml MMCLEndToEndLatencyHigh


def quantiles(metric: str, by: str = "") -> list[tuple[str, str]]:
    grouping = f"le{', ' + by if by else ''}"
    return [(f"histogram_quantile({q}, sum by ({grouping}) (rate({metric}_bucket[{RATE}])))", f"p{int(q * 100)}")
            for q in (0.5, 0.95, 0.99)]


@dataclass
class Panel:
    title: str
    targets: list[tuple[str, str]]  # (PromQL, legend)
    w: int = 12
    h: int = 8
    kind: str = "timeseries"
    unit: str = "short"
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    custom: dict[str, Any] = field(default_factory=dict)
    thresholds: list[tuple[float | None, str]] | None = None
    instant: bool = False


ROWS: list[tuple[str, list[Panel]]] = [
    ("Now", [
        Panel("Utterances scored / s", [(f"sum(rate(mmcl_predictions_total[{RATE}]))", "utterances/s")], w=4, h=4,
              kind="stat", unit="reqps"),
        Panel("End-to-end p95", [(quantiles("mmcl_end_to_end_latency_seconds")[1][0], "p95")], w=4, h=4, kind="stat",
              unit="s", thresholds=[(None, "green"), (SLO_SECONDS * 0.8, "orange"), (SLO_SECONDS, "red")]),
        Panel("Workers ready", [("sum(mmcl_ready)", "ready")], w=4, h=4, kind="stat",
              thresholds=[(None, "red"), (1, "green")]),
        Panel("Consumer lag (messages)", [("sum(mmcl_consumer_lag)", "lag")], w=4, h=4, kind="stat",
              thresholds=[(None, "green"), (1000, "orange"), (10000, "red")]),
        Panel("Dead letters / s", [(f"sum(rate(mmcl_dead_letters_total[{RATE}]))", "dead letters/s")], w=4, h=4,
              kind="stat", unit="reqps", thresholds=[(None, "green"), (0.01, "orange"), (1, "red")]),
        Panel("Model version", [("count by (version) (mmcl_model_info)", "{{version}}")], w=4, h=4, kind="stat",
              instant=True, options={"textMode": "name", "colorMode": "none"},
              description="The version every worker serves (several: a swap in progress, or a refused model)"),
    ]),
    ("Flow", [
        Panel("Throughput by modality", [
            (f"sum by (modality) (rate(mmcl_messages_consumed_total[{RATE}]))", "{{modality}} in"),
            (f"sum(rate(mmcl_predictions_total[{RATE}]))", "utterances scored")], unit="reqps"),
        Panel("Join outcomes", [(f"sum by (outcome) (rate(mmcl_join_outcomes_total[{RATE}]))", "{{outcome}}")],
              unit="reqps", custom={"stacking": {"mode": "normal"}, "fillOpacity": 30},
              description="partial: scored without an optional modality; incomplete: a required one never came "
                          "(dead-lettered); duplicate: a part sent twice before scoring; redelivered: a part read "
                          "again after its utterance was scored (restart, rebalance; acknowledged); late: a part "
                          "the result did not use (dead-lettered)"),
        Panel("Pending joins and utterances in flight", [("sum(mmcl_pending_joins)", "pending joins"),
                                                          ("sum(mmcl_inflight_utterances)", "in flight")], w=8),
        Panel("Batch size", [*quantiles("mmcl_batch_size")[:2],
                             (f"sum(rate(mmcl_batch_size_sum[{RATE}])) / sum(rate(mmcl_batch_size_count[{RATE}]))",
                              "mean")], w=8),
        Panel("Join wait (first part to scored)", quantiles("mmcl_join_wait_seconds"), w=8, unit="s"),
    ]),
    ("Latency", [
        Panel("Inference time per batch", quantiles("mmcl_inference_seconds"), unit="s"),
        Panel("End-to-end latency (last part produced to Redis)", quantiles("mmcl_end_to_end_latency_seconds"),
              unit="s", thresholds=[(None, "transparent"), (SLO_SECONDS, "red")],
              custom={"thresholdsStyle": {"mode": "line"}}),
    ]),
    ("Results and bad input", [
        Panel("Sentiment by speaker (dashboard range)",
              [("sum by (speaker, label) (increase(mmcl_predictions_total[$__range]))", "{{speaker}} {{label}}")],
              kind="bargauge", instant=True,
              options={"orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True,
                       "reduceOptions": {"calcs": ["lastNotNull"]}}),
        Panel("Dead letters by reason",
              [(f"sum by (reason, stage) (rate(mmcl_dead_letters_total[{RATE}]))", "{{reason}} ({{stage}})")],
              unit="reqps", custom={"stacking": {"mode": "normal"}, "fillOpacity": 30}),
        Panel("Output records refused (handled alone)",
              [(f"sum by (output, why) (increase(mmcl_records_refused_total[{RATE}]))", "{{output}} {{why}}"),
               (f"sum(increase(mmcl_dead_letters_truncated_total[{RATE}]))", "dead letters cut to fit")],
              description="Records a sink refused for good (too large, invalid, unauthorized): each was skipped or "
                          "dead-lettered alone and its partition went on; see MMCLOutputRecordsRefused"),
        Panel("Producer clocks off (parts corrected)",
              [(f"sum by (modality, direction) (rate(mmcl_clock_skew_parts_total[{RATE}]))",
                "{{modality}} {{direction}}")], unit="reqps",
              description="Parts whose producer clock was off its partition's consensus by more than the allowed skew: "
                          "corrected for the join (nothing lost); fix the producer's clock"),
        Panel("Sustained-negative alerts raised", [(f"sum by (speaker) (rate(mmcl_alerts_total[{RATE}]))",
                                                    "{{speaker}}")], unit="reqps", w=12),
        Panel("Firing alerts", [('sum by (alertname, severity) (ALERTS{alertstate="firing"})',
                                 "{{alertname}} ({{severity}})")], kind="table", instant=True, w=12,
              description="Prometheus alerts (deploy/prometheus/alerts.yml); runbooks in docs/operations.md"),
    ]),
    ("Model and training", [
        Panel("Model version per worker", [("max by (instance, version, device) (mmcl_model_info)", "{{version}}")],
              kind="table", instant=True, w=8),
        Panel("Model swaps by result", [(f"sum by (result) (increase(mmcl_model_swaps_total[{RATE}]))", "{{result}}")],
              w=8, description="ok: swapped; load_failed, checksum_mismatch, profile_mismatch: refused (old one serves)"),
        Panel("Retraining runs (dashboard range)",
              [("sum by (outcome) (increase(mmcl_training_runs_total[$__range]))", "{{outcome}}")],
              kind="bargauge", instant=True, w=8),
        Panel("Held-out evaluation of the last run", [("max by (model, metric) (mmcl_training_evaluation)",
                                                       "{{model}} {{metric}}")], kind="table", instant=True, w=8),
        Panel("Feedback labels", [(f"sum by (result) (rate(mmcl_feedback_labels_total[{RATE}]))", "{{result}}")],
              unit="reqps", w=8),
        Panel("Training set", [("max(mmcl_training_set_size)", "labelled examples"),
                                            ("max(mmcl_training_in_progress)", "training now")], w=8),
    ]),
    ("Dependencies", [
        Panel("Write errors (each is retried)", [(f"sum(rate(mmcl_redis_errors_total[{RATE}]))", "Redis"),
                                                 (f"sum(rate(mmcl_kafka_produce_errors_total[{RATE}]))", "Kafka")],
              w=8, unit="reqps"),
        Panel("Redis write time per batch", quantiles("mmcl_redis_write_seconds")[1:], w=8, unit="s"),
        Panel("Consumption paused (writes failing)", [("max by (instance) (mmcl_consumption_paused)", "{{instance}}")],
              w=8),
        Panel("Consumer lag by topic", [("sum by (topic) (mmcl_consumer_lag)", "{{topic}}")]),
        Panel("Seconds since the last message, by topic",
              [("time() - max by (topic) (mmcl_last_event_timestamp_seconds)", "{{topic}}")], unit="s"),
    ]),
]

ANNOTATIONS = [
    ("Model swaps", 'sum(increase(mmcl_model_swaps_total{result="ok"}[1m])) > 0', "model swap", "blue"),
    ("Promotions", 'sum(increase(mmcl_training_runs_total{outcome="promoted"}[1m])) > 0', "retrained model promoted",
     "green"),
]


def panel_json(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": p.unit}
    if p.thresholds:
        defaults["thresholds"] = {"mode": "absolute",
                                  "steps": [{"value": v, "color": c} for v, c in p.thresholds]}
        if p.kind == "stat":
            defaults["color"] = {"mode": "thresholds"}
    if p.custom:
        defaults["custom"] = p.custom
    out: dict[str, Any] = {
        "id": pid, "type": p.kind, "title": p.title, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": p.w, "h": p.h},
        "targets": [{"refId": chr(65 + i), "datasource": DS, "expr": expr, "legendFormat": legend,
                     "instant": p.instant, "range": not p.instant,
                     "format": "table" if p.kind == "table" else "time_series"}
                    for i, (expr, legend) in enumerate(p.targets)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": p.options or ({"reduceOptions": {"calcs": ["lastNotNull"]}} if p.kind == "stat" else {}),
    }
    if p.description:
        out["description"] = p.description
    if p.kind == "table":  # one row per series, its labels as columns; the timestamp column is noise
        out["transformations"] = [{"id": "organize", "options": {"excludeByName": {"Time": True}}}]
    return out


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y, pid = 0, 1
    for title, row in ROWS:
        panels.append({"id": pid, "type": "row", "title": title, "collapsed": False,
                       "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})
        pid, y, x, row_h = pid + 1, y + 1, 0, 0
        for p in row:
            if x + p.w > 24:
                x, y, row_h = 0, y + row_h, 0
            panels.append(panel_json(p, pid, x, y))
            pid, x, row_h = pid + 1, x + p.w, max(row_h, p.h)
        y += row_h
    return {
        "uid": "mmcl-stream", "title": "mmcl-stream", "tags": ["mmcl", "kafka", "sentiment"],
        "timezone": "browser", "schemaVersion": 39, "version": 1, "editable": True, "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [{"name": "datasource", "label": "Prometheus", "type": "datasource",
                                 "query": "prometheus", "current": {}, "hide": 0}]},
        "annotations": {"list": [
            {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
             "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"},
            *({"name": name, "datasource": DS, "enable": True, "expr": expr, "iconColor": color, "step": "60s",
               "titleFormat": text, "useValueForTime": False} for name, expr, text, color in ANNOTATIONS)]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        sys.exit(0 if OUT.read_text() == render() else "deploy/grafana/dashboards/mmcl.json is stale: run "
                 "python deploy/grafana/dashboard.py")
    OUT.write_text(render())
    print(f"wrote {OUT}")
