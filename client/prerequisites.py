"""What the local commands need from the machine beyond Python packages, checked up front.

`fluxfill serve`, `fluxfill stack`, `make demo` and the tests start real servers: tritonserver's Python
backend stub (it embeds the system libpython3.11), and the Google Cloud SDK's Pub/Sub and Firestore emulators
(Java).
Without a check, a missing part shows up late and buried: a 120 s wait for a model that never loads, or a
FileNotFoundError traceback after the first half of the demo ran. Each check names what is missing, why it
is needed and how to install it, in one line (the README's Prerequisites section says the same).
"""

import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from fluxfill.client.errors import EXIT_UNAVAILABLE, FluxFillError, InvalidInputError

DEFAULT_CLOUD_SDK = Path("/usr/lib/google-cloud-sdk")
# Set to use a Google Cloud SDK installed elsewhere (e.g. ~/google-cloud-sdk from the tarball).
CLOUD_SDK_VARIABLE = "FLUXFILL_CLOUD_SDK"
_APT_SDK = "apt install google-cloud-cli-pubsub-emulator google-cloud-cli-firestore-emulator"
_LDD_MISSING = re.compile(r"^\s*(\S+)\s+=>\s+not found", re.MULTILINE)


class MissingPrerequisiteError(FluxFillError):
    """Something the machine must provide is not there; the message says what and how to install it."""

    exit_code = EXIT_UNAVAILABLE


def cloud_sdk_root(environ: Mapping[str, str] = os.environ) -> Path:
    """The Google Cloud SDK's root: FLUXFILL_CLOUD_SDK, else that of `gcloud` on PATH, else Debian's."""
    if environ.get(CLOUD_SDK_VARIABLE):
        return Path(environ[CLOUD_SDK_VARIABLE])
    gcloud = shutil.which("gcloud", path=environ.get("PATH"))
    if gcloud is not None:
        # .../google-cloud-sdk/bin/gcloud, often reached through a link in /usr/bin.
        return Path(gcloud).resolve().parent.parent
    return DEFAULT_CLOUD_SDK


def pubsub_emulator(root: Path) -> Path:
    """The Pub/Sub emulator's start script inside an SDK."""
    return root / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"


def firestore_jar(root: Path) -> Path:
    """The Firestore emulator's jar inside an SDK."""
    return root / "platform" / "cloud-firestore-emulator" / "cloud-firestore-emulator.jar"


def emulator_problems(environ: Mapping[str, str] = os.environ) -> list[str]:
    """What the local Google Cloud stand-ins lack: Java, and the two emulators of the Cloud SDK."""
    problems = []
    if shutil.which("java", path=environ.get("PATH")) is None:
        problems.append(
            "java not found on PATH: the Pub/Sub and Firestore emulators run on Java 11 or newer "
            "(Debian/Ubuntu: apt install default-jre-headless)"
        )
    root = cloud_sdk_root(environ)
    for what, path in (("Pub/Sub", pubsub_emulator(root)), ("Firestore", firestore_jar(root))):
        if not path.is_file():
            problems.append(
                f"the {what} emulator is missing ({path}): install the Google Cloud SDK's emulators "
                f"({_APT_SDK}, or gcloud components install), or set {CLOUD_SDK_VARIABLE} to the SDK's root"
            )
    return problems


def missing_libraries(executable: Path, environment: Mapping[str, str]) -> list[str]:
    """Shared libraries the dynamic loader cannot find for `executable` (read with ldd)."""
    try:
        listing = subprocess.run(
            ["ldd", str(executable)],
            capture_output=True,
            text=True,
            env=dict(environment),
            timeout=30,
            check=False,
        ).stdout
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return []  # no ldd (not glibc): the server's own start reports it, later
    return _LDD_MISSING.findall(listing)


def triton_problems() -> list[str]:
    """What tritonserver from the nvidia-pytriton wheel lacks: its Python backend stub's shared libraries."""
    from fluxfill.client.triton_binary import TritonNotFoundError, find_tritonserver, stub_for_running_python

    try:
        binary = find_tritonserver()
        if binary.pytriton_root is None:
            return []  # NVIDIA's container: complete by construction
        stub = stub_for_running_python(binary.pytriton_root)
    except TritonNotFoundError as error:
        return [f"{error} (pip install nvidia-pytriton, or make demo, which sets up .venv)"]
    return [
        f"{library} not found: Triton's Python backend stub embeds the system Python's shared library "
        f"(Debian/Ubuntu: apt install lib{library.split('.so')[0].removeprefix('lib')})"
        if library.startswith("libpython")
        else f"{library} not found: Triton's Python backend stub ({stub}) needs it"
        for library in missing_libraries(stub, binary.environment())
    ]


def require(*checks: Callable[[], list[str]]) -> None:
    """Raise MissingPrerequisiteError with every problem the checks find, one sentence each."""
    problems = [problem for check in checks for problem in check()]
    if problems:
        raise MissingPrerequisiteError("; ".join(problems))


def require_free_ports(host: str, ports: Mapping[str, int]) -> None:
    """InvalidInputError naming the first port that is taken (or given twice), before any server starts."""
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if not 0 < port <= 65535:
            raise InvalidInputError(f"--{name}-port {port}: a port is 1 to 65535")
        if port in seen:
            raise InvalidInputError(f"--{name}-port and --{seen[port]}-port are both {port}")
        seen[port] = name
    for name, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # SO_REUSEADDR: a port in TIME_WAIT is free for the server too; one with a listener is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as error:
                raise InvalidInputError(
                    f"{name} port {port} on {host} is not available ({error.strerror}): "
                    f"stop what holds it, or pass --{name}-port"
                ) from None


def require_writable_folder(folder: Path, what: str) -> None:
    """InvalidInputError unless a file can be made in `folder` (made first if missing), before the work whose
    result goes there: found after it, the work was lost (an inference, a download)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise InvalidInputError(f"{what}: cannot be written ({error.strerror or error})") from None
