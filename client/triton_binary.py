"""Locate tritonserver, prepare its backends and environment, and clean up its shared memory."""

import http.client
import importlib.util
import logging
import os
import re
import secrets
import shutil
import socket
import sys
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# NVIDIA's container puts backends here; a tritonserver found on PATH is assumed to use this layout.
CONTAINER_BACKENDS = Path("/opt/tritonserver/backends")
STUB_NAME = "triton_python_backend_stub"
# What the python backend needs beside its stub, as shipped in nvidia-pytriton.
PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")


class TritonNotFoundError(RuntimeError):
    """No usable tritonserver: none on PATH and nvidia-pytriton is missing or incomplete."""


@dataclass(frozen=True)
class TritonBinary:
    """A tritonserver executable and where its pieces live."""

    executable: Path
    # Backend directory to pass as-is (container), or None when one must be assembled (pytriton wheel).
    backends: Path | None
    # nvidia-pytriton only: the wheel's tritonserver directory and its bundled shared libraries.
    pytriton_root: Path | None = None
    libs: Path | None = None

    def prepare_backends(self, run_dir: Path) -> Path:
        """Return the --backend-directory, assembling one under run_dir for the pytriton wheel."""
        if self.backends is not None:
            return self.backends
        if self.pytriton_root is None:
            raise TritonNotFoundError(f"{self.executable}: no backend directory known")
        return assemble_python_backend(self.pytriton_root, run_dir / "backends")

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Server environment: this interpreter's bin/ first on PATH, bundled libs on the loader path."""
        env = dict(os.environ)
        # The python backend stub embeds libpython in isolated mode and finds its site-packages through
        # the `python3` first on PATH (reading its pyvenv.cfg): our venv first gives models our packages.
        # dirname of sys.executable, not its resolved target: the venv's bin/ is what carries pyvenv.cfg.
        bin_dir = os.path.dirname(sys.executable)
        env["PATH"] = os.pathsep.join(p for p in (bin_dir, env.get("PATH", "")) if p)
        if self.libs is not None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                p for p in (str(self.libs), env.get("LD_LIBRARY_PATH", "")) if p
            )
        if extra:
            env.update(extra)
        return env


def find_tritonserver() -> TritonBinary:
    """Prefer a tritonserver on PATH (NVIDIA container), else the one shipped in nvidia-pytriton."""
    on_path = shutil.which("tritonserver")
    if on_path is not None:
        executable = Path(on_path)
        # Backends sit beside bin/ in the container (/opt/tritonserver/{bin,backends}).
        beside = executable.resolve().parent.parent / "backends"
        backends = beside if beside.is_dir() else CONTAINER_BACKENDS
        logger.debug("using tritonserver on PATH: %s (backends %s)", executable, backends)
        return TritonBinary(executable=executable, backends=backends)
    return _pytriton_binary()


def _pytriton_binary() -> TritonBinary:
    # find_spec instead of import: importing pytriton pulls in its whole client stack for nothing.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotFoundError("no tritonserver on PATH and nvidia-pytriton is not installed")
    package = Path(next(iter(spec.submodule_search_locations)))
    root = package / "tritonserver"
    executable = root / "bin" / "tritonserver"
    if not executable.is_file():
        raise TritonNotFoundError(f"nvidia-pytriton has no tritonserver binary at {executable}")
    libs = package.parent / "nvidia_pytriton.libs"
    logger.debug("using tritonserver from nvidia-pytriton: %s", executable)
    return TritonBinary(
        executable=executable, backends=None, pytriton_root=root, libs=libs if libs.is_dir() else None
    )


def stub_for_running_python(pytriton_root: Path) -> Path:
    """The python backend stub built for this interpreter's major.minor version."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stubs = pytriton_root / "python_backend_stubs"
    stub = stubs / version / STUB_NAME
    if not stub.is_file():
        available = sorted(p.name for p in stubs.iterdir()) if stubs.is_dir() else []
        raise TritonNotFoundError(
            f"nvidia-pytriton has no python backend stub for Python {version} "
            f"(looked for {stub}; available: {', '.join(available) or 'none'})"
        )
    return stub


def assemble_python_backend(pytriton_root: Path, backends: Path) -> Path:
    """Build backends/python/ from links into the wheel, so the wheel itself is never modified."""
    stub = stub_for_running_python(pytriton_root)
    source = pytriton_root / "backends" / "python"
    target = backends / "python"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in PYTHON_BACKEND_FILES:
        if not (source / name).is_file():
            raise TritonNotFoundError(f"nvidia-pytriton's python backend lacks {source / name}")
        (target / name).symlink_to(source / name)
    # The backend looks for its stub next to libtriton_python.so; the wheel keeps one per Python version.
    (target / STUB_NAME).symlink_to(stub)
    return backends


# What asking a local server's HTTP endpoint may meet instead of an answer: refused, reset or timed out
# (OSError, urllib's URLError among them), a URL or status it cannot read (ValueError), or another protocol
# on the port (http.client's BadStatusLine: another server's gRPC port where the HTTP one was expected).
NO_HTTP_ANSWER: tuple[type[Exception], ...] = (OSError, ValueError, http.client.HTTPException)
# Ports for our local servers are drawn from here up to the kernel's ephemeral range (see free_port).
FIRST_SERVER_PORT = 20000
PORT_DRAWS = 64


def free_port() -> int:
    """A TCP port free right now on the loopback interface, below the kernel's ephemeral port range.

    A port bound to 0 comes from the ephemeral range, which outgoing connections draw from too: between this
    call and the server's own bind, a client socket (ours, or a parallel test worker's gRPC channel) could
    take it, and the server fails to start. Below the range only another explicit bind can take it. Where
    the range leaves no room below it, the kernel's choice is taken.
    """
    return free_ports(1)[0]


def free_ports(count: int, excluding: Iterable[int | None] = ()) -> list[int]:
    """`count` different free ports (as free_port), none of `excluding`: one server's ports are all free until
    it binds them, so drawn one by one they could be the same port (a tritonserver given one port for gRPC and
    metrics refused to start)."""
    taken = {port for port in excluding if port}
    chosen: list[int] = []
    while len(chosen) < count:
        port = free_port_between(FIRST_SERVER_PORT, _ephemeral_low(), taken)
        taken.add(port)
        chosen.append(port)
    return chosen


def given_or_free_ports(*given: int | None) -> list[int]:
    """Each port given, and a free one (free_ports) in place of each not given: all different."""
    drawn = iter(free_ports(sum(1 for port in given if not port), excluding=given))
    return [port or next(drawn) for port in given]


def free_port_between(first: int, end: int, excluding: Collection[int] = ()) -> int:
    """A free port drawn at random from [first, end) (random: parallel callers rarely draw the same one), none
    of `excluding`."""
    if end - first >= 2:
        for _ in range(PORT_DRAWS):
            port = first + secrets.randbelow(end - first)
            if port not in excluding and _bindable(port):
                return port
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            chosen: int = sock.getsockname()[1]
        if chosen not in excluding:
            return chosen


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range; Linux's default where it cannot be read."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# A stub is given its shared-memory region's name on its command line; the server unlinks it when it stops,
# but a SIGKILLed server or stub leaves it in /dev/shm (16 GB of them after a day of test runs here).
_SHM_REGION = re.compile(r"triton_python_backend_shm_region_[0-9a-f-]+")
SHM_DIR = Path("/dev/shm")  # noqa: S108 (where shm_open keeps them; we only unlink our own)


def command_line(pid: int, proc: Path = Path("/proc")) -> list[str] | None:
    """A process's arguments, its program first, from /proc; None when it has ended."""
    try:
        return (proc / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None


def shm_regions(pids: Iterable[int]) -> set[str]:
    """The Python-backend shared-memory regions these processes' command lines name."""
    names: set[str] = set()
    for pid in pids:
        arguments = command_line(pid) or []
        names.update(argument for argument in arguments if _SHM_REGION.fullmatch(argument))
    return names


def remove_shm_regions(names: Iterable[str]) -> None:
    """Unlink these regions where they are left (call once no process of their server is alive)."""
    for name in names:
        if _SHM_REGION.fullmatch(name):
            (SHM_DIR / name).unlink(missing_ok=True)
