"""deploy/ without a cluster: the Kubernetes manifests validate against the schemas (offline), their
commands are the real CLI's, their probes the receiver's real routes, their config the real model;
the compose file's files exist and the container file builds the wheel and runs as a user."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate
import pytest
import yaml

from gateway.configfile import env_name, secret_fields
from receiver.config import ReceiverConfig
from smartpole.cli import build_parser
from tests.conftest import ROOT, start_receiver, stop_receiver

DEPLOY = ROOT / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
KUBERNETES = "1.30.0"  # the oldest release the manifests promise to work on (preStop sleep is GA there)
AWS_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION"}


def documents() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents() if doc["kind"] == kind]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in documents():
        spec = doc.get("spec", {})
        if doc["kind"] == "Deployment":
            yield doc["metadata"]["name"], spec["template"]["spec"]
        elif doc["kind"] == "CronJob":
            yield doc["metadata"]["name"], spec["jobTemplate"]["spec"]["template"]["spec"]


def containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, pod in pod_specs():
        for container in pod["containers"]:
            yield name, container


def parse_cli(argv: list[str]) -> Any:
    """``argv`` (after the program name) as the real ``smartpole`` parser reads it; a failure names it."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"smartpole {' '.join(argv)}: the CLI refuses it (exit {exc.code})")


def receiver_config() -> ReceiverConfig:
    (configmap,) = of_kind("ConfigMap")
    return ReceiverConfig.model_validate(tomllib.loads(configmap["data"]["receiver.toml"]))


def test_there_is_every_kind_of_manifest() -> None:
    kinds = {doc["kind"] for doc in documents()}
    expected = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "CronJob"}
    assert expected <= kinds


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
@pytest.mark.parametrize("version", [KUBERNETES, "1.37.0"])
def test_every_manifest_validates_against_the_kubernetes_schemas(path: Path, version: str) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {exc.message} at {'.'.join(map(str, exc.path))}")


def test_a_broken_manifest_is_caught() -> None:
    (deployment,) = of_kind("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pth"] = "/health"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def test_the_configmaps_receiver_toml_is_a_valid_receiver_config() -> None:
    config = receiver_config()
    assert config.receiver.bind == "0.0.0.0"
    assert config.media.store == "s3"


def container_args() -> dict[str, Any]:
    """Each manifest's container command, parsed by the real CLI."""
    seen = {}
    for name, container in containers():
        argv = [*container.get("command", []), *container.get("args", [])]
        assert argv[0] == "smartpole", f"{name}: runs {argv[0]}"
        seen[name] = parse_cli(argv[1:])
        assert seen[name].command == "receiver"
        assert seen[name].config == "/etc/smartpole/receiver.toml"
    return seen


def test_the_deployment_serves_with_the_real_cli() -> None:
    (deployment,) = of_kind("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = parse_cli([*container["command"], *container["args"]][1:])
    assert args.command == "receiver" and args.action is None and args.workers == 1


def test_the_cronjob_runs_maintain_with_the_real_cli() -> None:
    # `maintain` comes with partitioned storage and retention (issue 13 item 2, another branch):
    # until that is merged this fails, as it should: the CronJob would run a command that does not exist.
    assert container_args()["smartpole-receiver-maintain"].action == "maintain"


def test_config_is_mounted_where_the_command_reads_it() -> None:
    for name, pod in pod_specs():
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            mount = mounts["/etc/smartpole/receiver.toml"]
            assert volumes[mount["name"]]["configMap"]["name"] == "smartpole-receiver", name
            assert mount["subPath"] == "receiver.toml", name


def test_environment_names_are_ones_the_receiver_reads() -> None:
    readable = {env_name(path) for path in secret_fields(ReceiverConfig)}
    for name, container in containers():
        for variable in container.get("env", []):
            wanted = variable["name"]
            assert wanted in readable | AWS_VARIABLES, f"{name}: {wanted} is read by nothing"
            assert "secretKeyRef" in variable["valueFrom"], f"{name}: {wanted} is a secret, from a Secret"
    assert "SMARTPOLE_RECEIVER_DATABASE_URL" in readable


def test_probes_ports_and_grace_period_fit_the_receiver() -> None:
    config = receiver_config()
    (deployment,) = of_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == config.receiver.port
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pause + config.receiver.shutdown_timeout_s, "drains in time"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["requests"] and container["resources"]["limits"]
    (service,) = of_kind("Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    (pdb,) = of_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    (hpa,) = of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]


async def test_probe_paths_are_routes_of_the_receiver(tmp_path: Path) -> None:
    probes = set()
    for _, container in containers():
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            if kind in container:
                probes.add(container[kind]["httpGet"]["path"])
    assert probes == {"/health", "/health/ready"}
    running = await start_receiver(f"sqlite:///{tmp_path / 'rx.db'}", tmp_path / "media")
    try:
        routes = {r.resource.canonical for r in running.runner.app.router.routes() if r.resource is not None}
        async with aiohttp.ClientSession() as s:
            for path in probes:
                assert path in routes
                async with s.get(running.url + path) as r:
                    assert r.status == 200, path
    finally:
        await stop_receiver(running)


def compose_services() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"])


def test_compose_runs_two_receivers_postgres_mosquitto_and_object_storage() -> None:
    services = compose_services()
    receivers = [s for s in services.values() if s.get("image") == "smartpole-receiver"]
    assert len(receivers) == 2
    assert len({s["hostname"] for s in receivers}) == 2, "each its own MQTT client id"
    assert {"postgres", "mosquitto", "moto"} <= set(services)


def test_compose_references_files_that_exist() -> None:
    checked = 0
    for name, service in compose_services().items():
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
            checked += 1
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
                checked += 1
    assert checked >= 6


def test_compose_receivers_run_the_real_cli_with_a_valid_config() -> None:
    entrypoint = dockerfile_instruction("ENTRYPOINT")
    for name, service in compose_services().items():
        if service.get("image") != "smartpole-receiver":
            continue
        args = parse_cli([*entrypoint[1:], *service["command"]])
        assert args.command == "receiver" and args.action is None, name
        (mount,) = [v for v in service["volumes"] if v.split(":")[1] == args.config]
        config = ReceiverConfig.model_validate(tomllib.loads((DEPLOY / mount.split(":")[0]).read_text()))
        assert config.mqtt.enabled and config.media.store == "s3"
        assert config.mqtt.url.endswith("mosquitto:1883")
        readable = {env_name(path) for path in secret_fields(ReceiverConfig)}
        assert set(service["environment"]) <= readable | AWS_VARIABLES, name


def test_compose_broker_uses_the_projects_acl() -> None:
    mosquitto = compose_services()["mosquitto"]
    sources = {v.split(":")[0]: v.split(":")[1] for v in mosquitto["volumes"]}
    assert sources["../config/mosquitto/acl"] == "/mosquitto/config/smartpole.acl"
    conf = (DEPLOY / "compose" / "mosquitto.conf").read_text()
    assert "acl_file /mosquitto/config/smartpole.acl" in conf
    assert "allow_anonymous false" in conf


def dockerfile_instruction(name: str) -> list[str]:
    import json

    text = (DEPLOY / "Dockerfile").read_text()
    (line,) = [line for line in text.splitlines() if line.startswith(name + " ")]
    return list(json.loads(line.removeprefix(name + " ")))


def test_the_container_file_builds_the_wheel_and_runs_the_receiver_as_a_user() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert bases and all(re.fullmatch(r"debian:[a-z]+-slim", b) for b in bases), bases
    assert "pip wheel" in text and "/wheels/*.whl" in text
    (user,) = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user.split(":")[0] not in ("0", "root")
    args = parse_cli([*dockerfile_instruction("ENTRYPOINT")[1:], *dockerfile_instruction("CMD")])
    assert args.command == "receiver" and args.action is None
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    copies = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY ") and "--from" not in line]
    for copied in (source for sources in copies for source in sources):
        assert (ROOT / copied).exists(), copied
        assert f"!{copied}" in ignore or f"!{copied}/" in ignore, f"{copied} is left out of the build context"
