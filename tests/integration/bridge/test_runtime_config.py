"""The runtime config document on the real Firestore emulator and tritonserver: set with `fluxfill config`,
applied to the next jobs within the cache lifetime, an invalid one ignored, per-job fields winning."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fluxfill.client.local_server import LocalTritonServer
from tests.integration.bridge.harness import PROJECT, JobSystem, is_terminal, running_bridge

pytestmark = pytest.mark.integration

FLUXFILL = str(Path(sys.executable).parent / "fluxfill")
CACHE_S = 0.5


def config(document: str, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "FLUXFILL_PROJECT": PROJECT, "FLUXFILL_CONFIG_DOCUMENT": document}
    return subprocess.run(
        [FLUXFILL, "config", *args], env=environment, capture_output=True, text=True, timeout=60, check=False
    )


def run_job(jobs: JobSystem, **fields: Any) -> dict[str, Any]:
    user, session = jobs.new_job()
    jobs.publish({"userId": user, "sessionId": session, **fields})
    document = jobs.wait_for(user, session, is_terminal, timeout_s=60)
    assert document["status"] == "done", document
    return document


def test_the_document_sets_defaults_and_experiments_without_a_redeploy(
    jobs: JobSystem, flux_server: LocalTritonServer, tmp_path: Path
) -> None:
    document = f"fluxfillConfig/runtime-{jobs.name}"
    three = tmp_path / "three.json"
    three.write_text(json.dumps({"defaults": {"steps": 3, "prompt": "a configured prompt"}}))
    written = config(document, "set", str(three))
    assert written.returncode == 0, written.stderr
    settings = jobs.settings(
        flux_server.grpc_url, runtime_config_document=document, runtime_config_cache_s=CACHE_S
    )
    with running_bridge(settings):
        first = run_job(jobs)
        assert first["model"]["steps"] == 3
        assert first["model"]["prompt"] == "a configured prompt"
        assert first["progress"]["total"] == 3, "Triton ran the configured steps"

        four = tmp_path / "four.json"
        four.write_text(json.dumps({"defaults": {"steps": 4}}))
        assert config(document, "set", str(four)).returncode == 0
        time.sleep(CACHE_S)  # the cache lifetime itself is what is under test
        assert run_job(jobs)["model"]["steps"] == 4

        # Refused by the CLI before writing...
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"defaults": {"steps": 500}}))
        refused = config(document, "set", str(bad))
        assert refused.returncode == 2
        assert "defaults.steps" in refused.stderr
        assert "nothing was written" in refused.stderr
        assert json.loads(config(document, "show").stdout) == {"defaults": {"steps": 4}}
        # ...and ignored by the bridge when written some other way: the last good one stays.
        jobs.db.document(document).set({"defaults": {"steps": 500}})
        time.sleep(CACHE_S)
        assert run_job(jobs)["model"]["steps"] == 4

        # Per-job fields win; an experiment's variant is recorded.
        experiment = {
            "defaults": {"steps": 3},
            "experiment": {"name": "one-arm", "variants": [{"name": "two-steps", "weight": 1, "steps": 2}]},
        }
        jobs.db.document(document).set(experiment)
        time.sleep(CACHE_S)
        own = run_job(jobs, steps=1)
        assert own["model"]["steps"] == 1
        assert own["model"]["experiment"] == {"name": "one-arm", "variant": "two-steps"}
        varied = run_job(jobs)
        assert varied["model"]["steps"] == 2
        assert varied["progress"]["total"] == 2


def test_a_configured_prompt_the_model_refuses_is_the_services_fault_and_the_job_is_kept_for_a_replay(
    jobs: JobSystem, flux_server: LocalTritonServer, tmp_path: Path
) -> None:
    """Within the document's 4,096 bytes, beyond the 512 tokens the model reads: each job without a prompt of
    its own failed as `model_rejected_input`, its user blamed for a prompt they never sent, and acked."""
    document = f"fluxfillConfig/runtime-{jobs.name}"
    long = tmp_path / "long.json"
    long.write_text(json.dumps({"defaults": {"prompt": "a " * 600, "steps": 2}}))
    assert config(document, "set", str(long)).returncode == 0
    settings = jobs.settings(flux_server.grpc_url, runtime_config_document=document, max_delivery_attempts=2)
    user, session = jobs.new_job()
    with running_bridge(settings) as bridge:
        jobs.publish({"userId": user, "sessionId": session})
        failed = jobs.wait_for(user, session, is_terminal, timeout_s=60)
        dead = jobs.dead_letters(expected=1)
        assert bridge.counted("retry") == 1
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] == "retries_exhausted", "the service's failure, not the job's input"
    assert failed["error"]["message"] == (
        "gave up after 2 attempts; last error: the model refused the input: PROMPT: is 601 tokens long; the "
        "model reads at most 512 (max_sequence_length of its T5 text encoder): shorten it (the runtime "
        "config's defaults.prompt, not the job's: mend the document with `fluxfill config set`)"
    )
    assert dead[0].attributes["fluxfillErrorCode"] == "retries_exhausted", "kept for `fluxfill dlq replay`"
