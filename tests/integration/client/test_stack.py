"""`fluxfill stack` as the README walkthrough uses it: start, paste its exports, submit, watch, fetch, Ctrl-C.

Only the commands a user types: the stack is a subprocess, the job commands are subprocesses with nothing but
the printed `export` lines added to a clean environment.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from fluxfill.inpaint.tiny import TinyModel
from tests.integration.client.support import box_mask, photo

pytestmark = pytest.mark.integration

FLUXFILL = str(Path(sys.executable).parent / "fluxfill")
EXPORT = re.compile(r"^export (\w+)=(\S+)$")
HOST_PORT = re.compile(r"127\.0\.0\.1:(\d+)")
# The stack starts with SIGINT ignored, as a shell without job control starts a background job (a CI
# runner's, `cmd &` in a script); Python keeps that unless the program installs a handler of its own.
IGNORING_SIGINT = ["sh", "-c", 'trap "" INT; exec "$0" "$@"']


def _clean_environment() -> dict[str, str]:
    hidden = ("_EMULATOR_HOST", "FLUXFILL_")
    return {k: v for k, v in os.environ.items() if not any(h in k for h in hidden)}


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def stack(
    tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    log = tmp_path_factory.mktemp("stack") / "stack.err"
    with log.open("w") as errors:
        process = subprocess.Popen(
            [
                *IGNORING_SIGINT,
                FLUXFILL,
                "stack",
                "--weights-dir",
                str(tiny_model.pipeline_dir),
                "--param",
                "default_steps=2",
            ],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=_clean_environment(),
            start_new_session=True,
        )
        try:
            assert process.stdout is not None
            printed = []
            deadline = time.monotonic() + 180
            for line in process.stdout:
                printed.append(line)
                if line.startswith("READY"):
                    break
                assert time.monotonic() < deadline, "no READY line"
            else:
                raise AssertionError(f"the stack exited {process.wait()}:\n{log.read_text()[-3000:]}")
            yield process, "".join(printed)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                process.wait(timeout=60)
            if process.stdout is not None:
                process.stdout.close()


def test_the_walkthrough_runs_a_job_with_only_the_printed_exports(
    stack: tuple[subprocess.Popen[str], str], tmp_path: Path
) -> None:
    _, printed = stack
    exports = dict(m.groups() for line in printed.splitlines() if (m := EXPORT.match(line)))
    assert set(exports) >= {
        "PUBSUB_EMULATOR_HOST",
        "FIRESTORE_EMULATOR_HOST",
        "STORAGE_EMULATOR_HOST",
        "FLUXFILL_PROJECT",
        "FLUXFILL_BUCKET",
        "FLUXFILL_TOPIC",
        "FLUXFILL_URGENT_TOPIC",
        "FLUXFILL_DLQ_SUBSCRIPTION",
    }
    # The relation between the CLI's and the bridge's settings is spelled out.
    assert f"FLUXFILL_BRIDGE_PROJECT={exports['FLUXFILL_PROJECT']}" in printed
    assert "{" not in printed, "a placeholder left unfilled in what the stack printed"
    Image.fromarray(photo(40, 56)).save(tmp_path / "photo.jpg", quality=95)
    Image.fromarray(box_mask(40, 56)).save(tmp_path / "mask.png")
    environment = {**_clean_environment(), **exports}

    def fluxfill(*args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FLUXFILL, *args],
            env={**environment, **overrides},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    submitted = fluxfill(
        "submit", str(tmp_path / "photo.jpg"), str(tmp_path / "mask.png"), "--prompt", "a hat"
    )
    assert submitted.returncode == 0, submitted.stderr
    session = submitted.stdout.strip()
    watched = fluxfill("watch", session, "--timeout", "90")
    assert watched.returncode == 0, watched.stderr
    fetched = fluxfill("fetch", session, "--output-dir", str(tmp_path / "results"))
    assert fetched.returncode == 0, fetched.stderr
    # A JPEG photo comes back a JPEG (its edit spliced in), named so.
    edited = tmp_path / "results" / f"{session}-edited.jpg"
    with Image.open(edited) as image:
        assert (image.format, image.size) == ("JPEG", (56, 40))
    assert fluxfill("dlq", "list").returncode == 0
    # An urgent job travels on the urgent topic and subscription alone: the bulk topic may not even exist.
    urgent = fluxfill(
        "submit",
        str(tmp_path / "photo.jpg"),
        str(tmp_path / "mask.png"),
        "--priority",
        "urgent",
        FLUXFILL_TOPIC="no-such-topic",
    )
    assert urgent.returncode == 0, urgent.stderr
    watched = fluxfill("watch", urgent.stdout.strip(), "--timeout", "90")
    assert watched.returncode == 0, watched.stderr


def test_ctrl_c_stops_every_part(stack: tuple[subprocess.Popen[str], str]) -> None:
    process, printed = stack
    ports = {int(port) for port in HOST_PORT.findall(printed)}
    assert len(ports) >= 6, printed  # three emulators, Triton's gRPC and metrics, the bridge
    assert all(_listening(port) for port in ports)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    assert [port for port in ports if _listening(port)] == []
