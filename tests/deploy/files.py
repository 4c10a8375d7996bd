"""The deploy/ files as data, for the tests: compose services, Kubernetes objects, PromQL of the dashboard and rules."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "mmcl.json"
K8S_BASE = DEPLOY / "k8s" / "base"
# series Prometheus makes itself, not the service: scrape health and the state of alert rules
PROMETHEUS_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def compose() -> dict[str, Any]:
    return load_yaml(DEPLOY / "compose.yaml")


def env_example() -> dict[str, str]:
    """deploy/.env.example's variables, the commented-out MMCL_* examples included."""
    out = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        m = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?::?([-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> str:
    """docker compose's ${VAR}, ${VAR:-default} and ${VAR:?error} against `env` (a missing required one raises)."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == "?":
            raise KeyError(f"{name} is required: {arg}")
        return arg or ""

    return _VAR.sub(one, str(value)).replace("$$", "$")


def k8s_objects() -> list[dict[str, Any]]:
    kust = load_yaml(K8S_BASE / "kustomization.yaml")
    return [d for r in kust["resources"] for d in load_all(K8S_BASE / r)]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    return next(o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name)


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every panel target and annotation."""
    d = dashboard()
    for p in d["panels"]:
        for t in p.get("targets", []):
            yield p["title"], t["expr"]
    for a in d["annotations"]["list"]:
        if "expr" in a:
            yield f"annotation {a['name']}", a["expr"]


def rule_exprs(path: Path = ALERTS) -> Iterator[tuple[str, str]]:
    for g in load_yaml(path)["groups"]:
        for r in g["rules"]:
            yield r.get("alert") or r["record"], r["expr"]


# --- metric names in PromQL ----------------------------------------------------------------------------------
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool",
             "inf", "nan"}
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords, labels, durations or Grafana vars)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    names = set(re.findall(r'__name__\s*=\s*"([^"]*)"', expr))
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # ranges and subqueries
    e = _LABEL_LISTS.sub(" ", e)
    e = re.sub(r"\$\w+", " ", e)  # Grafana variables
    for m in _IDENT.finditer(e):
        word, rest = m.group(1), e[m.end():].lstrip()
        if word.lower() in _KEYWORDS or rest.startswith("("):
            continue
        names.add(word)
    return names


def grafana_vars(expr: str, rate: str = "30s", range_: str = "5m") -> str:
    """A dashboard expression as Grafana sends it."""
    return expr.replace("$__rate_interval", rate).replace("$__range", range_)
