"""The error boundaries, logs, credentials and settings of the bridge."""

import base64
import json
import os
import subprocess
import sys
from typing import Any

import pytest
import structlog
from google.auth.credentials import AnonymousCredentials
from pydantic import ValidationError
from tritonclient.utils import InferenceServerException

from fluxfill.bridge import credentials
from fluxfill.bridge.adapters.triton_errors import map_triton_exception
from fluxfill.bridge.contract import ErrorCode
from fluxfill.bridge.errors import (
    JobCancelledError,
    JobDeadlineExceededError,
    ModelRefusedInputError,
    PermanentJobError,
    TritonBusyError,
    TritonUnavailableError,
)
from fluxfill.bridge.logs import PROCESSORS
from fluxfill.bridge.settings import RETIRED_SETTINGS, BridgeSettings, environment_problems
from fluxfill.inpaint.contract import MAX_TIMEOUT_S


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            InferenceServerException("MASK: must have shape", status="StatusCode.INVALID_ARGUMENT"),
            ModelRefusedInputError,
        ),
        (InferenceServerException("[request id: 7] IMAGE: empty"), ModelRefusedInputError),
        (InferenceServerException("bad input", status="400"), ModelRefusedInputError),
        (
            InferenceServerException("Exceeds maximum queue size", status="StatusCode.UNAVAILABLE"),
            TritonBusyError,
        ),
        (InferenceServerException("Exceeds maximum queue size", status="503"), TritonBusyError),
        (InferenceServerException("[request id: 3] Exceeds maximum queue size"), TritonBusyError),
        (
            InferenceServerException("no available versions", status="StatusCode.NOT_FOUND"),
            TritonUnavailableError,
        ),
        (
            InferenceServerException("internal error: RuntimeError", status="StatusCode.INTERNAL"),
            TritonUnavailableError,
        ),
        (
            InferenceServerException("deadline exceeded after step 3", status="StatusCode.UNAVAILABLE"),
            JobDeadlineExceededError,
        ),
        (
            InferenceServerException("timed out", status="StatusCode.DEADLINE_EXCEEDED"),
            JobDeadlineExceededError,
        ),
        (
            InferenceServerException("Locally cancelled by application!", status="StatusCode.CANCELLED"),
            JobCancelledError,
        ),
        (ConnectionRefusedError("connection refused"), TritonUnavailableError),
        (TimeoutError("timed out"), JobDeadlineExceededError),
        (RuntimeError("anything else"), TritonUnavailableError),
    ],
)
def test_every_triton_error_is_mapped(error: BaseException, expected: type[Exception]) -> None:
    mapped = map_triton_exception(error)
    assert type(mapped) is expected
    if isinstance(mapped, PermanentJobError):
        assert mapped.code is ErrorCode.MODEL_REJECTED_INPUT


@pytest.mark.parametrize(
    ("message", "status", "tensor"),
    [
        ("PROMPT: is 601 tokens long; the model reads at most 512", "StatusCode.INVALID_ARGUMENT", "PROMPT"),
        ("[request id: 9] STEPS: must be between 1 and 50, got 80", None, "STEPS"),
        ("GUIDANCE: must be finite", "400", "GUIDANCE"),
        ("bad input", "400", None),
        ("PROMPTS: not one of ours", "StatusCode.INVALID_ARGUMENT", None),
    ],
)
def test_a_refused_input_is_named_by_the_models_sentence(
    message: str, status: str | None, tensor: str | None
) -> None:
    """The handler tells a refused value the job sent from one the runtime config gave by this name."""
    mapped = map_triton_exception(InferenceServerException(message, status=status))
    assert isinstance(mapped, ModelRefusedInputError)
    assert mapped.tensor == tensor


def render(method: str, **event: Any) -> dict[str, Any]:
    """Run one event through the bridge's processors, as configure_logging does."""
    rendered: Any = {"event": "something happened", **event}
    for processor in PROCESSORS:
        rendered = processor(None, method, rendered)
    return dict(json.loads(rendered))


@pytest.mark.parametrize(
    ("method", "severity"), [("info", "INFO"), ("warning", "WARNING"), ("error", "ERROR"), ("debug", "DEBUG")]
)
def test_log_lines_are_json_with_cloud_logging_severity(method: str, severity: str) -> None:
    line = render(method, messageId="m1")
    assert line["severity"] == severity
    assert line["message"] == "something happened"
    assert line["messageId"] == "m1"
    assert "time" in line


def test_secrets_never_reach_a_log_line() -> None:
    line = render("info", authorization="Bearer abc", service_account_key_b64="c2VjcmV0", token="t", step=3)  # noqa: S106
    assert line["authorization"] == line["service_account_key_b64"] == line["token"] == "[redacted]"
    assert line["step"] == 3


LIBRARIES_LOGGING = """
import logging, warnings
import structlog
from fluxfill.bridge.logs import configure_logging
configure_logging("INFO")
structlog.contextvars.bind_contextvars(messageId="m7")
logging.getLogger("google.cloud.pubsub_v1.subscriber").error("the stream broke", extra={"token": "abc"})
try:
    raise ConnectionError("reset by peer")
except ConnectionError:
    logging.getLogger("urllib3.connectionpool").exception("retrying")
warnings.warn("Corrupt EXIF data.  Expecting to read 12 bytes but only got 0.", UserWarning)
logging.getLogger("google.auth").info("below the libraries' level: not written")
"""


def test_the_libraries_logs_and_pythons_warnings_are_json_lines_with_severity_too() -> None:
    """Plain text reaches Cloud Logging without a severity: the Pub/Sub client's ERROR would pass every
    severity filter and alert by, a traceback would be an entry per line, and Pillow's warning on a photo's
    corrupt EXIF would name no job. In a child process, configured as `python -m fluxfill.bridge` is."""
    done = subprocess.run(
        [sys.executable, "-c", LIBRARIES_LOGGING], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # every line JSON: nothing bare
    assert [(line["severity"], line["logger"]) for line in lines] == [
        ("ERROR", "google.cloud.pubsub_v1.subscriber"),
        ("ERROR", "urllib3.connectionpool"),
        ("WARNING", "py.warnings"),
    ]
    broke, retrying, warned = lines
    assert broke["message"] == "the stream broke"
    assert "ConnectionError: reset by peer" in retrying["exception"]
    assert "Corrupt EXIF data" in warned["message"]
    assert all(line["messageId"] == "m7" and "time" in line for line in lines)
    assert "abc" not in done.stderr  # a library's extra fields are not written, a token among them


UNCAUGHT = """
import gc, sys, threading
from fluxfill.bridge.logs import configure_logging
configure_logging("INFO")
def pull():
    raise KeyError("a bug in a pull thread")
thread = threading.Thread(target=pull, name="pull-normal")
thread.start()
thread.join()
class Leaky:
    def __del__(self):
        raise ValueError("a bug in a finalizer")
Leaky()
gc.collect()
raise RuntimeError("a bug at the top")
"""


def test_an_uncaught_exception_anywhere_is_a_json_entry_with_severity() -> None:
    """Python prints an exception nobody caught (the main thread's, a thread's, a finalizer's) as a bare
    traceback: on Cloud Run an entry per line without a severity, so a pull thread that died of a bug (the
    bridge then pulls nothing) passed every alert by. In a child process, configured as the bridge is."""
    done = subprocess.run(
        [sys.executable, "-c", UNCAUGHT], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 1
    lines = [json.loads(line) for line in (done.stdout + done.stderr).splitlines()]  # every line JSON
    assert [line["severity"] for line in lines] == ["CRITICAL", "ERROR", "CRITICAL"]
    thread, finalizer, top = lines
    assert thread["thread"] == "pull-normal"
    assert "KeyError: 'a bug in a pull thread'" in thread["exception"]
    assert "ValueError: a bug in a finalizer" in finalizer["exception"]
    assert "RuntimeError: a bug at the top" in top["exception"]


def settings(**overrides: Any) -> BridgeSettings:
    return BridgeSettings(**{"project": "p", "subscription": "s", "bucket": "b", **overrides})


def test_emulators_get_anonymous_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:1")
    assert isinstance(credentials.resolve_credentials(settings()), AnonymousCredentials)


def test_a_bad_key_fallback_is_refused_without_quoting_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in credentials.EMULATOR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")
    secret = base64.b64encode(b'{"type": "service_account", "private_key": "TOPSECRET"}').decode()
    with structlog.testing.capture_logs() as logs, pytest.raises(credentials.CredentialsError) as caught:
        credentials.resolve_credentials(settings(service_account_key_b64=secret))
    assert "TOPSECRET" not in str(caught.value)
    assert secret not in str(caught.value)
    assert secret not in json.dumps(logs, default=str)
    assert any(entry["log_level"] == "warning" and "falling back" in entry["event"] for entry in logs)


def test_push_mode_needs_an_audience_and_account_unless_auth_is_switched_off() -> None:
    with pytest.raises(ValidationError, match="PUSH_AUDIENCE"):
        settings(mode="push")
    assert settings(mode="push", push_auth=False).push_auth is False


def test_pull_mode_needs_a_subscription() -> None:
    with pytest.raises(ValidationError, match="SUBSCRIPTION"):
        BridgeSettings(project="p", bucket="b", subscription="")


def test_a_misspelt_setting_stops_the_bridge_naming_the_setting_it_meant() -> None:
    """Unknown FLUXFILL_BRIDGE_* variables were ignored (pydantic-settings reads only its fields), so a typo
    in a deployment left the default in force without a word: a job deadline of 300 s where 900 was meant."""
    required = {"PROJECT": "p", "SUBSCRIPTION": "s", "BUCKET": "b", "JOB_DEADLINE_SS": "900"}
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLUXFILL_BRIDGE_")}
    env |= {f"FLUXFILL_BRIDGE_{name}": value for name, value in required.items()}
    started = subprocess.run(
        [sys.executable, "-m", "fluxfill.bridge"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert started.returncode == 2, started.stderr
    [line] = [json.loads(text) for text in started.stdout.splitlines() if "invalid settings" in text]
    assert line["problems"] == (
        "FLUXFILL_BRIDGE_JOB_DEADLINE_SS: not a setting (did you mean FLUXFILL_BRIDGE_JOB_DEADLINE_S?)"
    )
    assert "Traceback" not in started.stdout + started.stderr


def test_unknown_variables_are_named_with_the_nearest_setting_or_why_it_went_and_others_left_alone() -> None:
    environ = {
        "FLUXFILL_BRIDGE_PROJECT": "p",
        "fluxfill_bridge_bucket": "b",  # pydantic-settings reads names in any case
        "FLUXFILL_BRIDGE_MAX_CONCURENT_JOBS": "4",
        "FLUXFILL_BRIDGE_COLOUR": "blue",
        "FLUXFILL_BRIDGE_MODEL_MAX_RUN_S": "300",  # a setting until the thirty-ninth session
        "FLUXFILL_PROJECT": "the command line's",
        "PATH": "/bin",
    }
    assert environment_problems(environ) == [
        "FLUXFILL_BRIDGE_COLOUR: not a setting (`python -m fluxfill.bridge --help` lists them)",
        "FLUXFILL_BRIDGE_MAX_CONCURENT_JOBS: not a setting "
        "(did you mean FLUXFILL_BRIDGE_MAX_CONCURRENT_JOBS?)",
        "FLUXFILL_BRIDGE_MODEL_MAX_RUN_S: not a setting (no longer one: the model caps TIMEOUT_S at its own "
        "max_run_seconds; remove it)",
    ]
    assert not {name.upper() for name in BridgeSettings.model_fields} & set(RETIRED_SETTINGS)


def test_a_job_deadline_beyond_what_the_model_takes_as_timeout_s_is_refused() -> None:
    """The deadline is sent as TIMEOUT_S, which the model takes up to a day: a longer one could not be kept
    (the model would stop the run at a day), so it is refused at start."""
    assert settings(job_deadline_s=MAX_TIMEOUT_S).job_deadline_s == MAX_TIMEOUT_S
    with pytest.raises(ValidationError, match="job_deadline_s"):
        settings(job_deadline_s=MAX_TIMEOUT_S + 1)


def test_a_setting_given_twice_in_two_cases_with_two_values_is_refused() -> None:
    """pydantic-settings reads names in any case and took one of the two values without a word."""
    same = {"FLUXFILL_BRIDGE_BUCKET": "b", "fluxfill_bridge_bucket": "b"}  # the same value: nothing to say
    assert environment_problems(same) == []
    environ = {"FLUXFILL_BRIDGE_PROJECT": "prod", "fluxfill_bridge_project": "staging"}
    assert environment_problems(environ) == [
        "FLUXFILL_BRIDGE_PROJECT and fluxfill_bridge_project: one setting given twice, with two values; "
        "keep one"
    ]
