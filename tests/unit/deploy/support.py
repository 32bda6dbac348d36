"""Read the deployment descriptions as the deploy does: placeholders filled from deploy/config.env."""

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.support import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
PLACEHOLDER = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")
# What deploy/triton/entrypoint.sh starts tritonserver with (its test checks the flags themselves).
TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT = 8000, 8001, 8002
BRIDGE_IMAGE, TRITON_IMAGE = "${IMAGE_REPOSITORY}/bridge:${TAG}", "${IMAGE_REPOSITORY}/triton:${TAG}"
TRITON_ENTRYPOINT = DEPLOY / "triton" / "entrypoint.sh"
# The entrypoint's list of the FLUXFILL_* variables the Triton image reads (it refuses any other).
IMAGE_VARIABLES_LINE = re.compile(r'^IMAGE_VARIABLES="([^"]*)"\n', re.MULTILINE)


def image_variables() -> set[str]:
    """The variables the Triton image's entrypoint lets through."""
    listed = IMAGE_VARIABLES_LINE.search(TRITON_ENTRYPOINT.read_text())
    assert listed is not None, "no IMAGE_VARIABLES line in the entrypoint"
    return set(listed.group(1).split())


def config_env() -> dict[str, str]:
    """deploy/config.env as NAME -> value."""
    pairs = (line.split("=", 1) for line in (DEPLOY / "config.env").read_text().splitlines())
    return {name: value for name, value in (p for p in pairs if len(p) == 2) if not name.startswith("#")}


def render(text: str, values: dict[str, str] | None = None) -> str:
    """What deploy/render.sh prints: every ${NAME} that config.env defines, replaced."""
    values = config_env() if values is None else values
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def yaml_files() -> list[Path]:
    """Every YAML description under deploy/."""
    return sorted(DEPLOY.rglob("*.yaml"))


def json_files() -> list[Path]:
    """Every JSON description under deploy/ (dashboard, alert policies)."""
    return sorted(DEPLOY.rglob("*.json"))


def documents(path: Path, rendered: bool = True) -> list[dict[str, Any]]:
    """The YAML documents of one file, rendered by default."""
    text = path.read_text()
    return [doc for doc in yaml.safe_load_all(render(text) if rendered else text) if doc is not None]


def load_json(path: Path) -> Any:
    """One rendered JSON file."""
    return json.loads(render(path.read_text()))


def workloads() -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every Cloud Run service, worker pool and Kubernetes Deployment, rendered."""
    for path in yaml_files():
        for doc in documents(path):
            if doc.get("kind") in {"Service", "WorkerPool", "Deployment"} and "template" in doc.get(
                "spec", {}
            ):
                yield path, doc


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    """The pod (revision) spec of a workload."""
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(image: str) -> Iterator[tuple[Path, dict[str, Any], dict[str, Any]]]:
    """(file, workload, container) for every container running the given unrendered image reference."""
    wanted = render(image)
    for path, workload in workloads():
        for container in pod_spec(workload)["containers"]:
            if container["image"] == wanted:
                yield path, workload, container


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """A container's literal environment values (valueFrom entries are left out); all must be strings."""
    values = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    not_strings = {name: value for name, value in values.items() if not isinstance(value, str)}
    assert not not_strings, f"environment values must be YAML strings (quote them): {not_strings}"
    return values


def env_names(container: dict[str, Any]) -> set[str]:
    """Every environment variable a container sets, literal or not."""
    return {e["name"] for e in container.get("env", [])}
