"""deploy/ parsed and checked without a Docker engine or a cluster: schemas (the compose spec, Kubernetes' own),
wiring (env names exist in the settings model and parse, ports agree, probes ask for paths the service serves,
commands are real `mmcl` commands), the image recipe, the dashboard, and the alert rules (promtool)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Any

import jsonschema
import pytest

from streams.cli.main import build_parser
from streams.health import PATHS
from streams.settings import ENV_PREFIX, Settings, env_field, load_settings

from . import files as f

SCHEMA = json.loads((f.ROOT / "tests" / "deploy" / "schemas" / "compose-spec.json").read_text())
WORKER_PORT = Settings().metrics.port
TRAINER_PORT = Settings().trainer.metrics_port
MMCL_SERVICES = ("topics", "demo-model", "worker", "trainer", "demo-producer")
SECRETS = {"REDIS_PASSWORD": "s3cret", "GRAFANA_ADMIN_PASSWORD": "s3cret"}


def settings_field(name: str) -> Any:
    info = env_field(name)
    assert info is not None, f"{name} is not a setting"
    return info


def check_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Every MMCL_* name is a field, and the values parse (a bad one raises ConfigError naming it)."""
    for name in env:
        settings_field(name)
    with monkeypatch.context() as m:
        for k in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
            m.delenv(k)
        for k, v in env.items():
            m.setenv(k, v)
        return load_settings()


def service_env(svc: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    return {k: f.interpolate(v, env) for k, v in (svc.get("environment") or {}).items()}


def mmcl_command(args: list[str], env: dict[str, str]) -> None:
    try:
        build_parser().parse_args([f.interpolate(a, env) for a in args])
    except SystemExit as e:
        raise AssertionError(f"`mmcl {' '.join(args)}` is not a valid command") from e


# --- compose ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["compose.yaml", "compose.gpu.yaml"])
def test_compose_files_follow_the_compose_spec(name: str) -> None:
    doc = f.load_yaml(f.DEPLOY / name)
    errors = [e.message for e in jsonschema.Draft202012Validator(SCHEMA).iter_errors(doc)]
    assert not errors, errors


def test_the_schema_check_catches_a_misspelt_key() -> None:
    doc = f.compose()
    doc["services"]["worker"]["helthcheck"] = doc["services"]["worker"].pop("healthcheck")
    assert list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(doc))


def test_compose_runs_the_whole_stack_with_health_checks_and_restarts() -> None:
    services = f.compose()["services"]
    assert {"kafka", "redis", "prometheus", "grafana", "topics", "worker", "trainer", "demo-producer"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert "--appendonly yes" in " ".join(services["redis"]["command"])
    for name in ("kafka", "redis", "worker", "trainer", "prometheus", "grafana"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"
        assert services[name]["restart"] == "unless-stopped", name
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
    assert services["demo-producer"]["profiles"] == ["demo"] and services["demo-model"]["profiles"] == ["demo"]
    assert services["worker"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert services["worker"]["deploy"]["replicas"]  # N workers
    assert "replicas" not in services["trainer"].get("deploy", {})  # one trainer


def test_every_compose_setting_is_a_real_one_and_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**f.env_example(), **SECRETS}
    services = f.compose()["services"]
    for name in MMCL_SERVICES:
        s = check_settings(service_env(services[name], env), monkeypatch)
        assert s.kafka.bootstrap_servers == "kafka:9092" and s.redis.url.get_secret_value().startswith("redis://redis:6379")
        assert s.metrics.host == "0.0.0.0" and s.registry.backend == "redis"
        assert s.redis.password is not None and s.redis.password.get_secret_value() == SECRETS["REDIS_PASSWORD"]
        assert s.topics.partitions == int(env["STACK_PARTITIONS"])
        mmcl_command(services[name]["command"], env)
    gpu = f.load_yaml(f.DEPLOY / "compose.gpu.yaml")["services"]["worker"]
    check_settings({**service_env(services["worker"], env), **service_env(gpu, env)}, monkeypatch)
    examples = {k: v for k, v in f.env_example().items() if k.startswith(ENV_PREFIX)}
    assert examples, "the env file documents no service setting"
    check_settings(examples, monkeypatch)


def test_compose_refuses_to_start_without_its_secrets() -> None:
    text = (f.DEPLOY / "compose.yaml").read_text()
    for name in SECRETS:
        assert re.search(r"\$\{" + name + r":\?", text), f"{name} must be required, not defaulted"
        with pytest.raises(KeyError):
            f.interpolate("${" + name + ":?set it}", {})
    for key, value in re.findall(r"(\w*(?:PASSWORD|SECRET|TOKEN)\w*):\s*(\S+)", text):
        assert value.startswith("${"), f"{key} has a literal value in compose.yaml"
    assert not any(v for k, v in f.env_example().items() if k in SECRETS), ".env.example must not carry secrets"
    assert "deploy/.env" in (f.ROOT / ".gitignore").read_text().split()


def test_compose_ports_probes_and_scrape_targets_agree() -> None:
    services = f.compose()["services"]
    for name, port, path in (("worker", WORKER_PORT, "/readyz"), ("trainer", TRAINER_PORT, "/healthz")):
        assert str(port) in services[name]["expose"]
        probe = " ".join(services[name]["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}{path}" in probe and path in PATHS
    prom = f.load_yaml(f.DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    workers = jobs["mmcl-worker"]["dns_sd_configs"][0]  # every replica of the compose service
    assert workers["names"] == ["worker"] and workers["port"] == WORKER_PORT
    assert jobs["mmcl-trainer"]["static_configs"][0]["targets"] == [f"trainer:{TRAINER_PORT}"]
    assert all(j["job_name"].startswith("mmcl-") for j in prom["scrape_configs"] if j["job_name"] != "prometheus")
    # the Prometheus container sees deploy/prometheus at /etc/prometheus: its rule files must be there
    mount = next(v for v in services["prometheus"]["volumes"] if v.startswith("./prometheus:"))
    assert mount.split(":")[1] == "/etc/prometheus"
    for rule_file in prom["rule_files"]:
        assert (f.DEPLOY / "prometheus" / rule_file).exists()


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboard() -> None:
    services = f.compose()["services"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in services["grafana"]["volumes"] if v.startswith("./"))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    ds = f.load_yaml(f.DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")["datasources"][0]
    assert ds["type"] == "prometheus" and ds["isDefault"] and ds["url"] == "http://prometheus:9090"
    provider = f.load_yaml(f.DEPLOY / "grafana" / "provisioning" / "dashboards" / "mmcl.yaml")["providers"][0]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{f.DASHBOARD.name}"


# --- Kubernetes ---------------------------------------------------------------------------------------------------
def k8s_validate(docs: list[dict[str, Any]]) -> None:
    import kubernetes_validate

    for doc in docs:
        kubernetes_validate.validate(doc, "1.33.0", strict=True)


def test_k8s_manifests_validate_against_the_kubernetes_schemas() -> None:
    k8s_validate(f.k8s_objects())
    k8s_validate(f.load_all(f.K8S_BASE / "secret.example.yaml"))
    bad = copy.deepcopy(f.k8s_object("Deployment", "mmcl-worker"))
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pth"] = "/healthz"
    with pytest.raises(Exception, match="pth"):
        k8s_validate([bad])


def pod_spec(name: str) -> dict[str, Any]:
    return f.k8s_object("Deployment", name)["spec"]["template"]["spec"]


def test_k8s_workers_scale_the_trainer_stays_single_and_both_are_probed() -> None:
    config = f.k8s_object("ConfigMap", "mmcl-config")["data"]
    partitions = int(config["MMCL_TOPICS__PARTITIONS"])
    worker, trainer = f.k8s_object("Deployment", "mmcl-worker"), f.k8s_object("Deployment", "mmcl-trainer")
    assert 1 <= worker["spec"]["replicas"] <= partitions
    assert trainer["spec"]["replicas"] == 1 and trainer["spec"]["strategy"]["type"] == "Recreate"
    for name, port in (("mmcl-worker", WORKER_PORT), ("mmcl-trainer", TRAINER_PORT)):
        spec = pod_spec(name)
        c = spec["containers"][0]
        assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] != 0
        assert c["ports"][0] == {"name": "metrics", "containerPort": port}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[probe]["httpGet"]["path"] in PATHS and c[probe]["httpGet"]["port"] == "metrics", (name, probe)
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
        assert c["image"] == "mmcl-stream" and c["args"][0] == name.removeprefix("mmcl-")
        refs = {next(iter(r.values()))["name"] for r in c["envFrom"]}
        assert refs == {"mmcl-config", "mmcl-secrets"}
        annotations = f.k8s_object("Deployment", name)["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(port)
        svc = f.k8s_object("Service", name)
        pod_labels = f.k8s_object("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["ports"][0]["port"] == port and svc["spec"]["selector"].items() <= pod_labels.items()
        assert svc["metadata"]["annotations"]["prometheus.io/port"] == str(port)
        mmcl_command(c["args"], {})
    job = f.k8s_object("Job", "mmcl-topics")["spec"]["template"]["spec"]["containers"][0]
    mmcl_command(job["args"], {})
    assert job["args"] == ["topics", "create"]


def test_k8s_config_names_real_settings_that_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    config = f.k8s_object("ConfigMap", "mmcl-config")["data"]
    secret = f.load_all(f.K8S_BASE / "secret.example.yaml")[0]["stringData"]
    env = {**config, **{k: "x" for k in secret}, "MMCL_KAFKA__SASL_MECHANISM": "PLAIN", "MMCL_KAFKA__SASL_USERNAME": "u"}
    s = check_settings(env, monkeypatch)
    assert s.metrics.host == "0.0.0.0" and s.registry.backend == "redis"
    for name in ("mmcl-worker", "mmcl-trainer"):
        for e in pod_spec(name)["containers"][0].get("env", []):
            if e["name"].startswith(ENV_PREFIX):
                settings_field(e["name"])


def test_k8s_gpu_overlay_asks_for_a_gpu_and_the_cuda_image() -> None:
    gpu = f.DEPLOY / "k8s" / "overlays" / "gpu"
    kust = f.load_yaml(gpu / "kustomization.yaml")
    assert kust["resources"] == ["../../base"] and kust["images"][0]["newTag"] == "cuda"
    patch = f.load_yaml(gpu / kust["patches"][0]["path"])
    assert (patch["kind"], patch["metadata"]["name"]) == ("Deployment", "mmcl-worker")
    # a strategic merge by container name, done by hand: the result must still be a valid Deployment
    merged = copy.deepcopy(f.k8s_object("Deployment", "mmcl-worker"))
    base_c = merged["spec"]["template"]["spec"]["containers"][0]
    patch_spec = patch["spec"]["template"]["spec"]
    patch_c = patch_spec["containers"][0]
    assert patch_c["name"] == base_c["name"]
    base_c["resources"] = patch_c["resources"]
    base_c["env"] = base_c.get("env", []) + patch_c["env"]
    merged["spec"]["template"]["spec"]["tolerations"] = patch_spec["tolerations"]
    k8s_validate([merged])
    assert base_c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "MMCL_MODEL__DEVICE", "value": "cuda"} in base_c["env"]


def test_k8s_monitoring_matches_the_services_and_the_rules() -> None:
    mon = f.DEPLOY / "k8s" / "monitoring"
    sm = f.load_yaml(mon / "servicemonitor.yaml")
    names = set(sm["spec"]["selector"]["matchExpressions"][0]["values"])
    assert names == {"mmcl-worker", "mmcl-trainer"}
    for name in names:
        assert f.k8s_object("Service", name)["spec"]["ports"][0]["name"] == sm["spec"]["endpoints"][0]["port"]
    rule = f.load_yaml(mon / "prometheusrule.yaml")
    assert rule["spec"] == f.load_yaml(f.ALERTS), "prometheusrule.yaml differs from deploy/prometheus/alerts.yml"


def test_kustomization_lists_files_that_exist_and_one_image() -> None:
    kust = f.load_yaml(f.K8S_BASE / "kustomization.yaml")
    for r in kust["resources"]:
        assert (f.K8S_BASE / r).exists(), r
    images = {c["image"] for o in f.k8s_objects() if o["kind"] in ("Deployment", "Job")
              for c in (o["spec"]["template"]["spec"]["containers"])}
    assert images == {kust["images"][0]["name"]}


# --- the image ----------------------------------------------------------------------------------------------------
def dockerfile() -> list[tuple[str, str]]:
    text = (f.ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln.strip() else "")
            for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_dockerfile_builds_a_non_root_image_of_the_package() -> None:
    steps = dockerfile()
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    user = [arg for op, arg in final if op == "USER"]
    assert user and user[-1].strip() not in ("root", "0"), "the image must run as a non-root user"
    entry = json.loads(next(arg for op, arg in final if op == "ENTRYPOINT"))
    assert entry[-1] == "mmcl" and json.loads(next(arg for op, arg in final if op == "CMD")) == ["worker"]
    assert {int(p) for op, arg in final if op == "EXPOSE" for p in arg.split()} == {WORKER_PORT, TRAINER_PORT}
    env = " ".join(arg for op, arg in final if op == "ENV")
    assert "MMCL_METRICS__HOST=0.0.0.0" in env and "MMCL_STATE_DIR=/var/lib/mmcl" in env
    for op, arg in steps:
        if op == "COPY" and not arg.startswith("--from"):
            for src in arg.split()[:-1]:
                assert (f.ROOT / src).exists(), f"COPY {src}: no such path"
    runs = " ".join(arg for op, arg in steps if op == "RUN")
    bootstrap = (f.ROOT / "scripts" / "bootstrap.sh").read_text()
    torch_pin = re.search(r'"(torch==[\d.]+)"', bootstrap).group(1)  # type: ignore[union-attr]
    assert f'"{torch_pin}"' in runs, "the image must install the torch the project is tested with"
    assert "pip install ." in runs and "install_extractors.sh" in runs
    ignored = (f.ROOT / ".dockerignore").read_text().split()
    for needed in ("mmcl", "streams", "extractors", "pyproject.toml", "README.md", "scripts"):
        assert needed not in ignored


def test_dockerfile_extractor_install_uses_the_script_the_tests_use() -> None:
    script = (f.ROOT / "scripts" / "install_extractors.sh").read_text()
    assert 'PY=python EDITABLE= bash scripts/install_extractors.sh' in " ".join(a for _, a in dockerfile())
    assert '"$PY" -m pip install' in script and "EDITABLE=${EDITABLE--e}" in script


# --- the dashboard ------------------------------------------------------------------------------------------------
def test_dashboard_json_is_the_generators_output() -> None:
    out = subprocess.run([sys.executable, str(f.DEPLOY / "grafana" / "dashboard.py"), "--check"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr


def test_dashboard_layout_ids_and_datasource() -> None:
    d = f.dashboard()
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        for t in p.get("targets", []):
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"} and t["expr"].strip()
    titles = " | ".join(p["title"].lower() for p in d["panels"])
    for needed in ("throughput by modality", "join outcomes", "pending joins", "batch size", "inference",
                   "end-to-end latency", "dead letters by reason", "sentiment by speaker", "firing alerts",
                   "model version", "retraining runs", "evaluation", "write errors", "lag"):
        assert needed in titles, needed
    assert any("mmcl_model_swaps_total" in a.get("expr", "") for a in d["annotations"]["list"])


def test_dashboard_slo_line_is_the_alerts_threshold() -> None:
    expr = dict(f.rule_exprs())["MMCLEndToEndLatencyHigh"]
    slo = float(re.search(r">\s*([\d.]+)\s*$", expr.strip()).group(1))  # type: ignore[union-attr]
    panel = next(p for p in f.dashboard()["panels"] if p["title"].startswith("End-to-end latency"))
    assert panel["fieldConfig"]["defaults"]["thresholds"]["steps"][-1]["value"] == slo
    assert f"SLO {slo:g} s" in (f.ROOT / "deploy" / "prometheus" / "alerts.yml").read_text()


# --- PromQL names -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("expr", "names"), [
    ('histogram_quantile(0.95, sum by (le) (rate(mmcl_x_seconds_bucket{a="b"}[5m])))', {"mmcl_x_seconds_bucket"}),
    ("sum(a_total) / clamp_min(sum(rate(b_total[5m])), 1) > 60", {"a_total", "b_total"}),
    ("(sum(max by (topic, partition) (c)) - sum(c offset 10m) > 0) and on () (d == 0)", {"c", "d"}),
    ('time() - max by (topic) (e)', {"e"}),
    ('sum by (alertname) (ALERTS{alertstate="firing"}) + {__name__="g"}', {"ALERTS", "g"}),
    ("sum(increase(h[$__range])) / sum(rate(i[$__rate_interval])) * 2e3", {"h", "i"}),
])
def test_metric_names_are_read_out_of_promql(expr: str, names: set[str]) -> None:
    assert f.metric_names(expr) == names


# --- alert rules: promtool ----------------------------------------------------------------------------------------
def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: scripts/test.sh installs Debian's prometheus package"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def test_promtool_accepts_the_config_and_the_rules() -> None:
    for args in (("check", "config", str(f.DEPLOY / "prometheus" / "prometheus.yml")),
                 ("check", "rules", str(f.ALERTS))):
        out = promtool(*args)
        assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_fires_on_its_symptom_and_not_on_a_healthy_stack() -> None:
    out = promtool("test", "rules", str(f.DEPLOY / "prometheus" / "alerts_test.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    tested = set(re.findall(r"alertname: (\w+)", (f.DEPLOY / "prometheus" / "alerts_test.yml").read_text()))
    assert tested == {name for name, _ in f.rule_exprs()}, "every alert needs a promtool test"


def test_every_alert_has_a_runbook_entry() -> None:
    ops = (f.ROOT / "docs" / "operations.md").read_text().lower()
    for g in f.load_yaml(f.ALERTS)["groups"]:
        for r in g["rules"]:
            anchor = r["annotations"]["runbook"].split("#", 1)[1]
            assert f"### {anchor}" in ops, f"docs/operations.md has no section for {r['alert']}"
