"""What ships is what is tested: the built wheel, installed into a fresh venv (not the editable checkout).

The fresh venv gets the wheel only; its third-party dependencies come from the tested venv's site-packages
through a plain path entry (`.pth` files there, such as the editable install's finder, are not run), so
every `fluxfill` module is imported from the wheel or not at all.
"""

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, pubsub_v1, storage  # type: ignore[attr-defined]

from fluxfill.client.local_emulators import GoogleEmulators
from fluxfill.client.process_groups import end_group, exit_status, signal_leader
from fluxfill.client.triton_binary import free_port
from fluxfill.inpaint.tiny import TinyModel
from tests.integration.bridge.harness import JobSystem
from tests.support import REPO_ROOT

pytestmark = pytest.mark.integration
SYSTEM_PYTHON = "/usr/bin/python3.11" if Path("/usr/bin/python3.11").exists() else sys.executable

IMPORT_EVERY_MODULE = """
import importlib, pkgutil, sys
import fluxfill.bridge, fluxfill.client, fluxfill.inpaint
names = []
for package in (fluxfill.bridge, fluxfill.client, fluxfill.inpaint):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        names.append(module.name)
        loaded = importlib.import_module(module.name)
        assert loaded.__file__.startswith(sys.prefix), (module.name, loaded.__file__)
print(len(names))
"""


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheel")
    # Built from a copy of what the images copy, not in the checkout: setuptools builds through build/lib and
    # never empties it, so a file an earlier build put there (a module since deleted, a data file since
    # dropped from package-data) went into this test's wheel, and into no wheel built from a clean clone.
    source = folder / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    for name in ("inpaint", "client", "bridge", "model_repository"):
        shutil.copytree(REPO_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", folder, "."],
        cwd=source,
        check=True,
        capture_output=True,
    )
    (wheel,) = folder.glob("fluxfill-*.whl")
    venv = folder / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, wheel],
        check=True,
        capture_output=True,
    )
    (Path(site) / "tested-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_every_module_imports_from_the_installed_wheel(wheel_venv: Path) -> None:
    source_modules = [
        path
        for top in ("bridge", "client", "inpaint")
        for path in (REPO_ROOT / top).rglob("*.py")
        if path.name != "__init__.py" and "__pycache__" not in path.parts
    ]
    result = subprocess.run(
        [wheel_venv, "-c", IMPORT_EVERY_MODULE], capture_output=True, text=True, cwd="/", check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout) >= len(source_modules), "a module of the source tree is missing from the wheel"


def test_the_installed_wheel_ships_the_security_rules_its_emulators_load(wheel_venv: Path) -> None:
    """`fluxfill stack` from the wheel starts the Firestore emulator with the rules beside the contract; the
    Storage rules to merge into the app's lie beside them."""
    script = (
        "import sys; from fluxfill.bridge.contract import FIRESTORE_RULES as r, STORAGE_RULES as s; "
        "from fluxfill.client.local_emulators import FirestoreEmulator as e; "
        "assert str(r).startswith(sys.prefix), r; assert 'bridgeFields' in r.read_text(); "
        "assert f'--rules={r}' in e(1).argv(); "
        "assert s.parent == r.parent, s; assert 'service firebase.storage' in s.read_text()"
    )
    result = subprocess.run([wheel_venv, "-c", script], capture_output=True, text=True, cwd="/", check=False)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_installed_bridge_refuses_missing_settings_in_one_line(wheel_venv: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLUXFILL_")}
    result = subprocess.run(
        [wheel_venv, "-m", "fluxfill.bridge"], capture_output=True, text=True, env=env, cwd="/", check=False
    )
    assert result.returncode == 2, result.stderr
    assert "invalid settings" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.fixture
def bridge_job_system(google_emulators: GoogleEmulators) -> Iterator[JobSystem]:
    credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
    subscriber = pubsub_v1.SubscriberClient(credentials=credentials)
    system = JobSystem(
        pubsub_v1.PublisherClient(credentials=credentials),
        subscriber,
        storage.Client(project="fluxfill-test", credentials=credentials),
        firestore.Client(project="fluxfill-test", credentials=credentials),
    )
    system.create()
    yield system
    subscriber.close()


def test_the_installed_bridge_serves_health_and_stops_on_sigterm(
    wheel_venv: Path, bridge_job_system: JobSystem, google_emulators: GoogleEmulators, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("FLUXFILL_")},
        **google_emulators.environment(),
        "FLUXFILL_BRIDGE_PROJECT": "fluxfill-test",
        "FLUXFILL_BRIDGE_SUBSCRIPTION": bridge_job_system.subscription_id,
        "FLUXFILL_BRIDGE_BUCKET": bridge_job_system.bucket,
        "FLUXFILL_BRIDGE_TRITON_URL": f"127.0.0.1:{free_port()}",  # nobody there: never ready
        "FLUXFILL_BRIDGE_HTTP_HOST": "127.0.0.1",
        "FLUXFILL_BRIDGE_HTTP_PORT": str(port),
    }
    log = tmp_path / "bridge.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [wheel_venv, "-m", "fluxfill.bridge"],
            env=env,
            cwd="/",
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    health = f"http://127.0.0.1:{port}/healthz"
    try:
        deadline = time.monotonic() + 60
        status = None
        while status is None and time.monotonic() < deadline:
            assert exit_status(process) is None, log.read_text()[-3000:]
            with suppress(OSError), urllib.request.urlopen(health, timeout=1) as response:
                status = response.status
            time.sleep(0.2)
        assert status == 200
        signal_leader(process, signal.SIGTERM)
        assert exit_status(process, timeout_s=20) == 0, log.read_text()[-3000:]
    finally:
        end_group(process, timeout_s=5)


def test_the_installed_wheel_serves_the_model_from_any_directory(
    wheel_venv: Path, tiny_model: TinyModel
) -> None:
    # No model repository in the working directory: `serve` finds the one shipped in the wheel.
    ports = [str(free_port()) for _ in range(3)]
    argv = [wheel_venv, "-c", "import sys; from fluxfill.client.cli import main; sys.exit(main())", "serve"]
    options = [
        "--weights-dir",
        str(tiny_model.pipeline_dir),
        "--http-port",
        ports[0],
        "--grpc-port",
        ports[1],
    ]
    process = subprocess.Popen(
        [*argv, *options, "--metrics-port", ports[2]],
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "flux_fill and flux_fill_stream READY" in line:
                break
        assert any("flux_fill and flux_fill_stream READY" in line for line in lines), "".join(lines)[-3000:]
        served = subprocess.run(
            [wheel_venv, "-c", "from fluxfill.client.serve import default_model_repository as d; print(d())"],
            cwd="/",
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert served.startswith(str(wheel_venv.parent.parent)), served
        signal_leader(process, signal.SIGTERM)
        assert exit_status(process, timeout_s=30) == 0
    finally:
        end_group(process, timeout_s=5)
        if process.stdout is not None:
            process.stdout.close()
