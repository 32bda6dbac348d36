"""Cloud Run, GKE, Pub/Sub and Cloud Build descriptions: they parse and agree with the code they deploy."""

import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from chaos.chaos_run import SHIPPED_PER_USER_LIMIT
from fluxfill.bridge.http_app import HttpEntryPoint
from fluxfill.bridge.metrics import BridgeMetrics
from fluxfill.bridge.monitor import hung_after_s
from fluxfill.bridge.settings import (
    BRIDGE_BASELINE_BYTES,
    ENV_PREFIX,
    JOB_BYTES_PER_PIXEL,
    SHUTDOWN_CLEANUP_S,
    BridgeSettings,
)
from tests.support import FLUX_FILL_STREAM_CONFIG, REPO_ROOT, read_model_config
from tests.unit.deploy.support import (
    BRIDGE_IMAGE,
    DEPLOY,
    PLACEHOLDER,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    TRITON_IMAGE,
    TRITON_METRICS_PORT,
    config_env,
    containers,
    documents,
    env_names,
    env_of,
    image_variables,
    json_files,
    pod_spec,
    render,
    workloads,
    yaml_files,
)

SETTINGS_VARIABLES = {ENV_PREFIX + name.upper() for name in BridgeSettings.model_fields}
CONFIG = config_env()


def bridge_routes(mode: str) -> set[str]:
    """The paths the bridge's HTTP server really serves in this mode."""
    settings = BridgeSettings(project="p", subscription="s", bucket="b", mode=mode, push_auth=False)
    bridge = SimpleNamespace(settings=settings, metrics=BridgeMetrics())
    app = HttpEntryPoint(bridge).app  # type: ignore[arg-type]
    return {route.path for route in app.routes}  # type: ignore[attr-defined]


def probes(container: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        container[k]["httpGet"] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in container
    ]


def test_every_description_parses() -> None:
    assert len(yaml_files()) >= 10
    for path in yaml_files():
        docs = documents(path)
        assert docs, path
        assert all(isinstance(doc, dict) for doc in docs), path
    assert len(json_files()) >= 6
    for path in json_files():
        import json

        assert isinstance(json.loads(render(path.read_text())), dict), path


def test_every_placeholder_is_defined_in_config_env() -> None:
    files = [*yaml_files(), *json_files(), DEPLOY / "pubsub-iam.sh"]
    used = {name for path in files for name in PLACEHOLDER.findall(path.read_text())}
    # cloudbuild.yaml's own substitutions start with an underscore and are Cloud Build's.
    assert used - {"_IMAGE_REPOSITORY", "_TAG"} <= set(CONFIG)
    assert not {n for path in yaml_files() for n in PLACEHOLDER.findall(render(path.read_text()))} - {
        "_IMAGE_REPOSITORY",
        "_TAG",
    }


@pytest.mark.skipif(shutil.which("envsubst") is None, reason="envsubst (gettext-base) not installed")
def test_render_script_fills_placeholders_as_the_tests_do() -> None:
    path = DEPLOY / "cloudrun" / "bridge-push-service.yaml"
    env = {"PATH": "/usr/bin:/bin", "PROJECT": "overridden"}
    printed = subprocess.run(
        ["bash", str(DEPLOY / "render.sh"), str(path)], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert printed == render(path.read_text(), {**CONFIG, "PROJECT": "overridden"})


def test_bridge_variables_are_settings_fields() -> None:
    seen = 0
    for path, _, container in containers(BRIDGE_IMAGE):
        seen += 1
        names = {n for n in env_names(container) if n.startswith("FLUXFILL_")}
        assert names <= SETTINGS_VARIABLES, f"{path}: {names - SETTINGS_VARIABLES}"
    assert seen == 3  # Cloud Run worker pool, Cloud Run push service, GKE


def test_bridge_settings_accept_each_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    modes = set()
    for path, _, container in containers(BRIDGE_IMAGE):
        values = {k.removeprefix(ENV_PREFIX).lower(): v for k, v in env_of(container).items()}
        settings = BridgeSettings(**values)  # type: ignore[arg-type]
        modes.add(settings.mode)
        assert settings.max_delivery_attempts == int(CONFIG["MAX_DELIVERY_ATTEMPTS"]), path
        # The subscriptions' own count, before which the bridge carries jobs over (bridge/carry_over.py).
        subscription_attempts = int(CONFIG["SUBSCRIPTION_MAX_DELIVERY_ATTEMPTS"])
        assert settings.subscription_max_delivery_attempts == subscription_attempts, path
        assert settings.job_deadline_s == float(CONFIG["JOB_DEADLINE_S"]), path
        assert settings.dead_letter_topic == CONFIG["DEAD_LETTER_TOPIC"], path
        if settings.mode == "pull":
            assert settings.subscription == CONFIG["PULL_SUBSCRIPTION"], path
        else:
            assert settings.push_auth, path
            assert (settings.push_audience, settings.push_service_account) == (
                CONFIG["PUSH_AUDIENCE"],
                CONFIG["PUSH_SA"],
            )
    assert modes == {"pull", "push"}


def stream_model() -> str:
    config = read_model_config(FLUX_FILL_STREAM_CONFIG)
    assert config.model_transaction_policy.decoupled
    return str(config.name)


def test_triton_startup_probe_is_the_weight_holding_models_readiness() -> None:
    ready = f"/v2/models/{stream_model()}/ready"
    found = 0
    for path, _, container in containers(TRITON_IMAGE):
        found += 1
        assert container["startupProbe"]["httpGet"] == {"path": ready, "port": TRITON_HTTP_PORT}, path
        # Loading, hashing and warming the weights takes minutes: the probe must allow 15 at least.
        probe = container["startupProbe"]
        assert probe["periodSeconds"] * probe["failureThreshold"] >= 900, path
        assert container.get("readinessProbe", {"httpGet": {"path": ready}})["httpGet"]["path"] == ready
        assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": TRITON_HTTP_PORT}
    assert found == 4  # Cloud Run service, worker pool, push service; GKE


def test_triton_variables_are_ones_its_entrypoint_lets_through() -> None:
    """The entrypoint refuses any other FLUXFILL_* variable (its container would exit 2 at every start)."""
    let_through = image_variables()
    seen = 0
    for path, _, container in containers(TRITON_IMAGE):
        seen += 1
        names = {n for n in env_names(container) if n.upper().startswith("FLUXFILL_")}
        assert "FLUXFILL_WEIGHTS_SHA256" in names, path
        assert names <= let_through, f"{path}: {names - let_through}"
    assert seen == 4


def test_bridge_probes_use_routes_the_bridge_serves() -> None:
    for path, _, container in containers(BRIDGE_IMAGE):
        settings_port = int(env_of(container)["FLUXFILL_BRIDGE_HTTP_PORT"])
        routes = bridge_routes(env_of(container)["FLUXFILL_BRIDGE_MODE"])
        for probe in probes(container):
            assert probe["path"] in routes, path
            assert probe["port"] == settings_port, path


def test_bridges_reach_triton_grpc() -> None:
    for path, workload, container in containers(BRIDGE_IMAGE):
        host, port = env_of(container)["FLUXFILL_BRIDGE_TRITON_URL"].rsplit(":", 1)
        assert int(port) == TRITON_GRPC_PORT, path
        images = {c["image"] for c in pod_spec(workload)["containers"]}
        if host == "127.0.0.1":
            assert render(TRITON_IMAGE) in images, f"{path}: no Triton beside the bridge"
        else:
            service_name = host.split(".")[0]
            (service,) = [
                d
                for p in yaml_files()
                for d in documents(p)
                if d.get("apiVersion") == "v1"
                and d["kind"] == "Service"
                and d["metadata"]["name"] == service_name
            ]
            assert TRITON_GRPC_PORT in {p["port"] for p in service["spec"]["ports"]}


def test_weights_are_mounted_where_the_model_looks_read_only() -> None:
    weights_dir = Path(read_model_config(FLUX_FILL_STREAM_CONFIG).parameters["weights_dir"].string_value)
    for path, workload, container in containers(TRITON_IMAGE):
        env = env_of(container)
        assert env["FLUXFILL_WEIGHTS_SHA256"] == CONFIG["WEIGHTS_SHA256"], path
        assert re.fullmatch(r"[0-9a-f]{64}", env["FLUXFILL_WEIGHTS_SHA256"])
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "weights"]
        assert Path(mount["mountPath"]) in weights_dir.parents, path
        assert mount["readOnly"], path
        (volume,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == "weights"]
        assert volume["csi"]["readOnly"], path
        assert volume["csi"]["volumeAttributes"]["bucketName"] == CONFIG["WEIGHTS_BUCKET"], path
        shm = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        assert shm, f"{path}: the Python backend's shared memory needs a /dev/shm volume"


def test_triton_containers_start_through_the_images_entrypoint() -> None:
    """A `command` would replace the image's entrypoint, NVIDIA's with it, and so CUDA forward compatibility
    on R535 (Dockerfile.triton); arguments alone go on to tritonserver."""
    found = list(containers(TRITON_IMAGE))
    assert found
    for path, _, container in found:
        assert "command" not in container, f"{path}: a command bypasses NVIDIA's entrypoint"


def test_cloud_run_gpu_workloads() -> None:
    for path, workload in workloads():
        if workload["apiVersion"] == "apps/v1":
            continue
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert pod_spec(workload)["nodeSelector"] == {"run.googleapis.com/accelerator": "nvidia-l4"}, path
        gpus = [
            c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
            for c in pod_spec(workload)["containers"]
        ]
        assert gpus.count("1") == 1, path
        if workload["kind"] == "Service":
            assert workload["metadata"]["annotations"]["run.googleapis.com/ingress"] == "internal", path
            assert annotations["run.googleapis.com/cpu-throttling"] == "false", path


def test_push_service_matches_its_subscription() -> None:
    (push,) = [
        (p, w, c) for p, w, c in containers(BRIDGE_IMAGE) if env_of(c)["FLUXFILL_BRIDGE_MODE"] == "push"
    ]
    _, workload, container = push
    spec = pod_spec(workload)
    assert spec["containerConcurrency"] == int(env_of(container)["FLUXFILL_BRIDGE_MAX_CONCURRENT_JOBS"])
    assert spec["timeoutSeconds"] == int(CONFIG["PUSH_ACK_DEADLINE_S"])
    assert [p["containerPort"] for p in container["ports"]] == [
        int(env_of(container)["FLUXFILL_BRIDGE_HTTP_PORT"])
    ]
    assert CONFIG["PUSH_AUDIENCE"].endswith("/push")
    assert "/push" in bridge_routes("push")


def test_subscription_settings_respect_pubsub_limits_and_the_bridge() -> None:
    assert 10 <= int(CONFIG["PULL_ACK_DEADLINE_S"]) <= 600
    assert 10 <= int(CONFIG["PUSH_ACK_DEADLINE_S"]) <= 600
    # Push: Pub/Sub waits the ack deadline for the answer, so the whole job must fit in it: its wait for a
    # slot and for a late upload (the shipped waits: no deployment sets others), its run to the deadline, and
    # the download and upload around it (all that a run may take before it is taken for hung).
    grace = BridgeSettings.model_fields["upload_grace_s"].default
    slot_wait = BridgeSettings.model_fields["push_slot_wait_s"].default
    longest_run = hung_after_s(float(CONFIG["JOB_DEADLINE_S"]), grace)
    assert int(CONFIG["PUSH_ACK_DEADLINE_S"]) >= slot_wait + longest_run
    assert 5 <= int(CONFIG["SUBSCRIPTION_MAX_DELIVERY_ATTEMPTS"]) <= 100
    # The bridge records retries_exhausted itself before Pub/Sub dead-letters behind its back.
    assert int(CONFIG["SUBSCRIPTION_MAX_DELIVERY_ATTEMPTS"]) > int(CONFIG["MAX_DELIVERY_ATTEMPTS"])
    assert 0 < int(CONFIG["MIN_RETRY_BACKOFF_S"]) <= int(CONFIG["MAX_RETRY_BACKOFF_S"]) <= 600


def refused_for_s(attempts: int, min_backoff_s: int, max_backoff_s: int) -> int:
    """How long a message refused at every delivery lasts before Pub/Sub dead-letters it: the retry policy's
    backoffs between its deliveries (from the minimum, doubling, capped at the maximum)."""
    return sum(min(min_backoff_s * 2**retry, max_backoff_s) for retry in range(attempts - 1))


def test_a_push_overload_no_bridge_sees_does_not_dead_letter_jobs_within_a_night() -> None:
    """Cloud Run answers 429 itself while every push instance is busy: no bridge runs, none carries the job
    over, and each refusal spends a delivery attempt. A backlog built in the evening must still be there in
    the morning (at 10 attempts it was dead-lettered after about 40 minutes of refusals)."""
    backoffs = int(CONFIG["MIN_RETRY_BACKOFF_S"]), int(CONFIG["MAX_RETRY_BACKOFF_S"])
    assert refused_for_s(10, 10, 600) == 2430, "the old setting's 40 minutes"
    assert refused_for_s(int(CONFIG["SUBSCRIPTION_MAX_DELIVERY_ATTEMPTS"]), *backoffs) >= 12 * 3600


def test_pubsub_script_applies_those_settings() -> None:
    script = (DEPLOY / "pubsub-iam.sh").read_text()
    subprocess.run(["bash", "-n", str(DEPLOY / "pubsub-iam.sh")], check=True)
    for flag in (
        '--dead-letter-topic="${DEAD_LETTER_TOPIC}"',
        '--max-delivery-attempts="${SUBSCRIPTION_MAX_DELIVERY_ATTEMPTS}"',
        '--min-retry-delay="${MIN_RETRY_BACKOFF_S}s"',
        '--max-retry-delay="${MAX_RETRY_BACKOFF_S}s"',
        '--ack-deadline="${PULL_ACK_DEADLINE_S}"',
        '--ack-deadline="${PUSH_ACK_DEADLINE_S}"',
        '--push-auth-service-account="${PUSH_SA}"',
        "roles/iam.workloadIdentityUser",
    ):
        assert flag in script, flag
    ledger = BridgeSettings.model_fields["dead_letter_ledger"].default
    assert f"ttls update expireAt --collection-group={ledger} --enable-ttl" in script
    # Least privilege: no owner/editor, no bucket-wide admin.
    assert not re.search(r"roles/(owner|editor|storage\.admin|pubsub\.admin)", script)


def test_prometheus_scrapes_the_metrics_ports() -> None:
    scraped: dict[str, set[int]] = {}
    for path in yaml_files():
        for doc in documents(path):
            if doc.get("kind") in {"RunMonitoring", "PodMonitoring"}:
                endpoints = doc["spec"]["endpoints"]
                assert all(e["path"] == "/metrics" for e in endpoints), path
                scraped[f"{path.name}:{doc['metadata']['name']}"] = {int(e["port"]) for e in endpoints}
    bridge_port = BridgeSettings.model_fields["http_port"].default
    assert scraped == {
        "runmonitoring-triton.yaml:fluxfill-triton": {TRITON_METRICS_PORT},
        "runmonitoring-bridge.yaml:fluxfill-bridge": {TRITON_METRICS_PORT, bridge_port},
        "podmonitoring.yaml:triton": {TRITON_METRICS_PORT},
        "podmonitoring.yaml:bridge": {bridge_port},
    }


def test_cloud_run_sidecar_reads_the_right_scrape_config() -> None:
    secrets = {"triton-service.yaml": "RUNMONITORING_TRITON_SECRET"}
    for path, workload in workloads():
        if workload["apiVersion"] == "apps/v1":
            continue
        (collector,) = [c for c in pod_spec(workload)["containers"] if c["name"] == "collector"]
        assert re.search(r":\d+\.\d+\.\d+$", collector["image"]), "the sidecar image is pinned to a release"
        assert collector["volumeMounts"] == [{"name": "runmonitoring", "mountPath": "/etc/rungmp/"}]
        (volume,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == "runmonitoring"]
        secret = CONFIG[secrets.get(path.name, "RUNMONITORING_BRIDGE_SECRET")]
        assert volume["secret"] == {"secretName": secret, "items": [{"key": "latest", "path": "config.yaml"}]}


def test_gke_scales_on_the_pull_backlog_not_cpu() -> None:
    autoscalers = documents(DEPLOY / "gke" / "autoscaling.yaml")
    assert {a["spec"]["scaleTargetRef"]["name"] for a in autoscalers} == {"triton", "bridge"}
    for autoscaler in autoscalers:
        metrics = autoscaler["spec"]["metrics"]
        assert {m["type"] for m in metrics} == {"External"}
        names = {m["external"]["metric"]["name"] for m in metrics}
        assert names == {
            "pubsub.googleapis.com|subscription|num_undelivered_messages",
            "pubsub.googleapis.com|subscription|oldest_unacked_message_age",
        }
        for metric in metrics:
            selector = metric["external"]["metric"]["selector"]["matchLabels"]
            assert selector == {"resource.labels.subscription_id": CONFIG["PULL_SUBSCRIPTION"]}


def test_gke_service_accounts_use_workload_identity() -> None:
    accounts = {
        d["metadata"]["name"]: d["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
        for d in documents(DEPLOY / "gke" / "namespace.yaml")
        if d["kind"] == "ServiceAccount"
    }
    assert accounts == {"bridge": CONFIG["BRIDGE_SA"], "triton": CONFIG["TRITON_SA"]}
    for path, workload in workloads():
        if workload["apiVersion"] == "apps/v1":
            spec = pod_spec(workload)
            assert spec["serviceAccountName"] in accounts, path
            assert spec["securityContext"]["runAsNonRoot"], path


def test_deployed_images_are_the_ones_cloud_build_makes_after_the_tests() -> None:
    build = yaml.safe_load((DEPLOY / "cloudbuild.yaml").read_text())
    steps = {step["id"]: step for step in build["steps"]}
    assert "make test" in " ".join(steps["test"]["args"])
    built = {}
    for step in build["steps"]:
        if step["name"].startswith("gcr.io/cloud-builders/docker"):
            assert step["waitFor"] == ["test"], step["id"]
            args = step["args"]
            built[args[args.index("-t") + 1]] = args[args.index("-f") + 1]
    assert built == {
        "${_IMAGE_REPOSITORY}/triton:${_TAG}": "Dockerfile.triton",
        "${_IMAGE_REPOSITORY}/bridge:${_TAG}": "Dockerfile.bridge",
    }
    assert set(build["images"]) == set(built)
    assert all((REPO_ROOT / dockerfile).is_file() for dockerfile in built.values())
    deployed = {c["image"] for _, w in workloads() for c in pod_spec(w)["containers"]}
    ours = {render(BRIDGE_IMAGE), render(TRITON_IMAGE)}
    assert ours <= deployed
    assert all(re.search(r":\d+\.\d+\.\d+$", image) for image in deployed - ours)


def quantity(value: str) -> float:
    """A Kubernetes CPU or memory quantity as a number (memory in GiB)."""
    units = {"Gi": 1.0, "Mi": 1 / 1024}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value.removesuffix(suffix)) * factor
    return float(value)


def test_cloud_run_gpu_instances_fit_an_l4_instance() -> None:
    # Cloud Run with an L4: 4 to 8 vCPU and 16 to 32 GiB per instance, counting every container.
    for path, workload in workloads():
        if workload["apiVersion"] == "apps/v1":
            continue
        limits = [c["resources"]["limits"] for c in pod_spec(workload)["containers"]]
        cpu = sum(quantity(limit["cpu"]) for limit in limits)
        memory = sum(quantity(limit["memory"]) for limit in limits)
        assert 4 <= cpu <= 8, path
        assert 16 <= memory <= 32, path


# Seconds between SIGTERM and SIGKILL: Cloud Run's is fixed; Kubernetes' default unless the pod says.
CLOUD_RUN_TERMINATION_S = 10.0
KUBERNETES_DEFAULT_TERMINATION_S = 30.0


def termination_window(workload: dict[str, Any]) -> float:
    if workload["apiVersion"].startswith(("serving.knative.dev", "run.googleapis.com")):
        return CLOUD_RUN_TERMINATION_S
    return float(pod_spec(workload).get("terminationGracePeriodSeconds", KUBERNETES_DEFAULT_TERMINATION_S))


def triton_exit_timeout_default() -> float:
    script = (DEPLOY / "triton" / "entrypoint.sh").read_text()
    match = re.search(r"--exit-timeout-secs=\"\$\{FLUXFILL_EXIT_TIMEOUT_S:-(\d+)\}\"", script)
    assert match, "the entrypoint's exit timeout is no longer a FLUXFILL_EXIT_TIMEOUT_S default"
    return float(match.group(1))


def test_bridge_shutdown_fits_each_platforms_termination_window() -> None:
    """Grace for in-flight jobs, then their cancel and give-back, all before the platform's SIGKILL."""
    default = BridgeSettings.model_fields["shutdown_grace_s"].default
    seen = 0
    for path, workload, container in containers(BRIDGE_IMAGE):
        grace = float(env_of(container).get(f"{ENV_PREFIX}SHUTDOWN_GRACE_S", default))
        window = termination_window(workload)
        assert grace + SHUTDOWN_CLEANUP_S < window, (
            f"{path.name}: {grace} + {SHUTDOWN_CLEANUP_S} s >= {window} s"
        )
        seen += 1
    assert seen >= 3
    assert default + SHUTDOWN_CLEANUP_S < CLOUD_RUN_TERMINATION_S, "the default must fit the primary platform"


def test_triton_stops_waiting_for_runs_within_each_platforms_window() -> None:
    seen = 0
    for path, workload, container in containers(TRITON_IMAGE):
        timeout = float(env_of(container).get("FLUXFILL_EXIT_TIMEOUT_S", triton_exit_timeout_default()))
        assert timeout < termination_window(workload), path.name
        seen += 1
    assert seen >= 3


def test_bridge_memory_follows_from_concurrency_and_the_pixel_limit() -> None:
    """Every job may be a photo at max_image_pixels: the limit holds them all at once beside the baseline."""
    fields = BridgeSettings.model_fields
    seen = 0
    for path, _workload, container in containers(BRIDGE_IMAGE):
        env = env_of(container)
        jobs = int(env.get(f"{ENV_PREFIX}MAX_CONCURRENT_JOBS", fields["max_concurrent_jobs"].default))
        pixels = int(env.get(f"{ENV_PREFIX}MAX_IMAGE_PIXELS", fields["max_image_pixels"].default))
        needed = BRIDGE_BASELINE_BYTES + jobs * pixels * JOB_BYTES_PER_PIXEL
        limit = quantity(container["resources"]["limits"]["memory"]) * 2**30
        assert limit >= needed, f"{path.name}: {limit / 2**30:.2f} GiB < {needed / 2**30:.2f} GiB needed"
        seen += 1
    assert seen >= 3


def test_the_chaos_run_uses_the_shipped_per_user_limit() -> None:
    """The chaos run is only as harsh as production if its bridges park and release jobs as shipped."""
    assert int(config_env()["MAX_JOBS_IN_FLIGHT_PER_USER"]) == SHIPPED_PER_USER_LIMIT > 0
