"""Offline checks of the deployment files: they parse, point at files that exist, and agree
with each other and with the gateway (port, config path, CLI flags, grace periods, limits).

No Docker or Kubernetes here; `nginx -t` runs on the rendered test config.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import ConfigError, GatewayConfig, Timeouts, load_config
from tests.deploy.deploy_support import NGINX_DIR, REPO, nginx_command, render_nginx

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
GRAFANA = REPO / "grafana"
PRODUCTION_ENV = {
    "OPENAI_API_KEY": "sk-test",
    "ANTHROPIC_API_KEY": "sk-ant-test",
    "REDIS_URL": "redis://redis:6379/0",
    "TEAM_A_KEY_SHA256": "0" * 64,
}
GRAFANA_FILES = [
    "provisioning/datasources/prometheus.yaml",
    "provisioning/dashboards/gateway.yaml",
    "dashboards/gateway.json",
]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def production_config() -> GatewayConfig:
    return load_config(DEPLOY / "config.yaml", env=PRODUCTION_ENV)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def dockerfile_cmd() -> list[str]:
    cmds = [json.loads(args) for word, args in dockerfile_instructions() if word == "CMD"]
    assert len(cmds) == 1, "the Dockerfile should have one exec-form CMD"
    return list(cmds[0])


def flag_value(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def serve_help_flags() -> set[str]:
    """The options `gateway serve --help` lists (the installed console script, as users run it)."""
    script = Path(sys.executable).with_name("gateway")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]
    out = subprocess.run(
        [*cmd, "serve", "--help"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", out))


def systemd_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file; keys may repeat (systemd allows it), so values are lists."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{path}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path}: {line!r} is not key=value"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def k8s_objects() -> dict[str, dict[str, Any]]:
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") != "Kustomization":
                assert doc["kind"] not in objects, f"two {doc['kind']} objects"
                objects[doc["kind"]] = doc
    return objects


def gateway_container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "gateway")


# --- everything parses ---------------------------------------------------------------------


def test_every_yaml_file_under_deploy_and_grafana_provisioning_parses() -> None:
    paths = [
        *sorted(DEPLOY.rglob("*.yaml")),
        *sorted(DEPLOY.rglob("*.yml")),
        *sorted((GRAFANA / "provisioning").rglob("*.yaml")),
    ]
    assert len(paths) >= 10, paths
    for path in paths:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} holds no YAML document"
    json.loads((GRAFANA / "dashboards" / "gateway.json").read_text())


def test_the_production_config_loads_and_names_what_it_needs() -> None:
    config = production_config()
    assert config.redis_url == PRODUCTION_ENV["REDIS_URL"]
    assert {p.api_key for p in config.providers} == {"sk-test", "sk-ant-test"}
    assert config.admin_key_sha256 == ""  # optional, off unless set
    for missing in ("OPENAI_API_KEY", "REDIS_URL", "TEAM_A_KEY_SHA256"):
        env = {k: v for k, v in PRODUCTION_ENV.items() if k != missing}
        with pytest.raises(ConfigError, match=missing):
            load_config(DEPLOY / "config.yaml", env=env)


def test_kubernetes_configmap_carries_deploy_config_yaml_unchanged() -> None:
    configmap = k8s_objects()["ConfigMap"]
    assert configmap["data"]["config.yaml"] == (DEPLOY / "config.yaml").read_text()


# --- the container image -------------------------------------------------------------------


def test_dockerfile_runs_gateway_serve_as_documented_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    words = [w for w, _ in instructions]
    froms = [args for w, args in instructions if w == "FROM"]
    assert all(f.split()[0] == "python:3.11-slim" for f in froms), froms
    user = [args for w, args in instructions if w == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0")
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")
    healthcheck = next(args for w, args in instructions if w == "HEALTHCHECK")
    assert "/healthz" in healthcheck and "curl" not in healthcheck

    cmd = dockerfile_cmd()
    assert cmd[:2] == ["gateway", "serve"]
    flags = [arg for arg in cmd if arg.startswith("--")]
    assert flags == ["--host", "--port", "--config"]
    known = serve_help_flags()
    assert set(flags) <= known, f"`gateway serve --help` lists {sorted(known)}"
    readme = REPO / "README.md"
    if readme.exists():
        usage = re.search(r"gateway serve \[[^\n|`]*", readme.read_text())
        assert usage is not None, "README.md should document `gateway serve [...]`"
        for flag in flags:
            assert flag in usage.group(0), f"README.md does not document {flag}"
    assert flag_value(cmd, "--host") == "0.0.0.0"
    expose = [args for w, args in instructions if w == "EXPOSE"]
    assert expose == [flag_value(cmd, "--port")] == ["8000"]


# --- compose -------------------------------------------------------------------------------


def test_compose_references_files_that_exist_and_agrees_on_ports() -> None:
    compose = load_yaml(DEPLOY / "compose.yaml")
    services = compose["services"]
    assert {"gateway-1", "gateway-2", "redis", "nginx", "prometheus", "grafana"} <= set(services)
    gateways = sorted(name for name in services if name.startswith("gateway-"))
    cmd = dockerfile_cmd()
    grace = production_config().shutdown_grace

    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
        build = service.get("build")
        if build:
            context = DEPLOY / build["context"]
            assert (context / build["dockerfile"]).is_file()
            assert (context / "pyproject.toml").is_file(), "build context is not the repository"

    for name in gateways:
        service = services[name]
        assert "command" not in service, "the image's CMD is the one source of the command line"
        mounts = dict(v.split(":")[:2] for v in service["volumes"])
        assert mounts.get("./config.yaml") == flag_value(cmd, "--config")
        assert service["expose"] == [flag_value(cmd, "--port")]
        assert service["read_only"] is True
        assert float(service["stop_grace_period"].rstrip("s")) > grace
        assert "redis" in service["depends_on"]
        assert service["environment"]["REDIS_URL"].startswith("redis://redis:")

    # nginx balances over exactly the gateway services, on the gateway's port.
    replicas = re.findall(r"^\s*server\s+(\S+)", (NGINX_DIR / "replicas.conf").read_text(), re.M)
    assert replicas == [f"{name}:8000" for name in gateways]
    nginx = services["nginx"]
    mount = next(v for v in nginx["volumes"] if v.startswith("../nginx:"))
    target = mount.split(":")[1]
    conf = flag_value(nginx["entrypoint"], "-c")
    assert conf == f"{target}/nginx.conf"
    assert nginx["ports"] == ["8080:8080"]
    assert re.search(r"^\s*listen 8080;", (NGINX_DIR / "gateway.conf").read_text(), re.M)

    # Prometheus scrapes every replica directly.
    prometheus = load_yaml(DEPLOY / "prometheus.yml")
    targets = [
        t
        for job in prometheus["scrape_configs"]
        for sc in job["static_configs"]
        for t in sc["targets"]
    ]
    assert sorted(targets) == [f"{name}:8000" for name in gateways]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]

    # Grafana gets the other engineer's provisioning and dashboard where its README says.
    grafana = {v.split(":")[0]: v.split(":")[1] for v in services["grafana"]["volumes"]}
    assert grafana["../grafana/provisioning"] == "/etc/grafana/provisioning"
    assert grafana["../grafana/dashboards"] == "/var/lib/grafana/dashboards"
    for relative in GRAFANA_FILES:
        assert (GRAFANA / relative).is_file(), f"grafana/{relative} is missing"
    datasource = load_yaml(GRAFANA / "provisioning/datasources/prometheus.yaml")
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert services["prometheus"]["ports"] == ["9090:9090"]


# --- Kubernetes ----------------------------------------------------------------------------


def test_kubernetes_manifests_probe_drain_and_run_locked_down() -> None:
    objects = k8s_objects()
    kinds = {
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    assert kinds <= set(objects)
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )

    deployment = objects["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = gateway_container(objects)
    assert container["args"] == dockerfile_cmd()
    port = int(flag_value(container["args"], "--port"))
    assert [p["containerPort"] for p in container["ports"]] == [port]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"

    grace = production_config().shutdown_grace
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # The kubelet's clock covers the preStop sleep and the drain, then some margin.
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + grace + 5

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"requests", "limits"} <= set(container["resources"])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert Path(flag_value(container["args"], "--config")).parent.as_posix() in mounts
    assert "/tmp" in mounts  # writable under a read-only root

    # The Secret supplies every ${VAR} without a default that the config reads.
    config_text = (DEPLOY / "config.yaml").read_text()
    needed = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", config_text))
    assert needed <= set(objects["Secret"]["stringData"])
    assert container["envFrom"][0]["secretRef"]["name"] == objects["Secret"]["metadata"]["name"]

    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        spec = objects[kind]["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= labels.items(), f"{kind} does not select the gateway's pods"
    assert objects["Service"]["spec"]["ports"][0]["targetPort"] in ("http", port)
    target = objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert objects["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2


# --- systemd -------------------------------------------------------------------------------


def test_systemd_unit_serves_drains_and_restarts() -> None:
    unit = systemd_unit(DEPLOY / "systemd" / "gateway.service")
    service = unit["Service"]
    [exec_start] = service["ExecStart"]
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name == "gateway" and argv[1] == "serve"
    assert {a for a in argv if a.startswith("--")} <= serve_help_flags()
    assert flag_value(argv, "--config") == "/etc/gateway/config.yaml"
    assert service["KillSignal"] == ["SIGTERM"]
    # With --workers, only the supervisor may get SIGTERM (it passes it on once).
    assert service["KillMode"] == ["mixed"]
    assert float(service["TimeoutStopSec"][0]) > production_config().shutdown_grace
    assert service["Restart"] == ["on-failure"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["User"] != ["root"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


# --- nginx ---------------------------------------------------------------------------------


def nginx_directive(name: str) -> str:
    found = re.findall(rf"^\s*{name}\s+([^;]+);", (NGINX_DIR / "gateway.conf").read_text(), re.M)
    assert len(found) == 1, f"{name}: {found}"
    return str(found[0]).strip()


def test_nginx_limits_match_the_gateways() -> None:
    size = nginx_directive("client_max_body_size")
    assert size.endswith("m") and int(size[:-1]) * 1024 * 1024 == GatewayConfig.max_body_bytes
    assert production_config().max_body_bytes == GatewayConfig.max_body_bytes
    read_timeout = float(nginx_directive("proxy_read_timeout").rstrip("s"))
    assert read_timeout > max(Timeouts.total, production_config().timeouts.total)
    assert nginx_directive("proxy_buffering") == "off"
    assert nginx_directive("proxy_ignore_client_abort") == "off"
    retries = nginx_directive("proxy_next_upstream").split()
    assert "http_503" in retries and "http_502" not in retries


@pytest.mark.nginx
def test_nginx_accepts_the_rendered_config(tmp_path: Path) -> None:
    conf = render_nginx(tmp_path / "nginx", ["127.0.0.1:8001", "127.0.0.1:8002"], 18080)
    result = subprocess.run(nginx_command(conf, "-t"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    assert "[warn]" not in result.stderr and "[emerg]" not in result.stderr, result.stderr


def test_compose_sends_the_gateways_traces_to_its_collector() -> None:
    services = load_yaml(DEPLOY / "compose.yaml")["services"]
    endpoints = {
        services[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
        for name in services
        if name.startswith("gateway-")
    }
    assert len(endpoints) == 1
    (endpoint,) = endpoints
    host, _, port = endpoint.removeprefix("http://").partition(":")
    assert host in services and port in services[host]["expose"], endpoint
    assert f"0.0.0.0:{port}" in " ".join(services[host]["command"])
    # The production config traces there when the variable is set, and not at all without it.
    env = {**PRODUCTION_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
    tracing = load_config(DEPLOY / "config.yaml", env=env).tracing
    assert tracing is not None and tracing.otlp_endpoint == endpoint
    assert production_config().tracing is None
