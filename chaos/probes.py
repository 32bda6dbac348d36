"""Reading the fleet while it runs: bridge and Triton metrics, resident memory and open file descriptors."""

import contextlib
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)$")


def scrape(url: str, timeout_s: float = 2.0) -> dict[str, float]:
    """Prometheus text as {'name{labels}': value}; empty when the endpoint cannot be read."""
    with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (local http URL)
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            match = _SAMPLE.match(line)
            if match:
                samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
        return samples
    return {}


def total(samples: dict[str, float], name: str, label: str = "") -> float:
    """The sum of a family's samples whose labels contain `label`."""
    return sum(v for k, v in samples.items() if k.split("{")[0] == name and label in k)


def bridges_total(http_ports: Iterable[int], name: str, label: str = "") -> float:
    """`total` of one family summed over the bridges listening on `http_ports`."""
    return sum(total(scrape(f"http://127.0.0.1:{port}/metrics"), name, label) for port in http_ports)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (0 when it is gone)."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def open_fds(pid: int) -> int:
    """Open file descriptors of a process (0 when it is gone)."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
        return len(os.listdir(f"/proc/{pid}/fd"))
    return 0


def triton_role(pid: int) -> str:
    """`tritonserver`, its supervisor, or the model a Python-backend stub serves (read from its command
    line)."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if Path(argv[0].decode(errors="replace")).name == "tritonserver":
            return "tritonserver"
        if b"fluxfill.client.triton_supervisor" in argv:
            return "triton_supervisor"
        for model in (b"flux_fill_stream", b"flux_fill"):
            if any(model in part for part in argv):
                return f"stub {model.decode()}"
    return f"triton pid {pid}"
