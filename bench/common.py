"""Shared benchmark helpers: interleaved timing, the one printed table, PNG plots, the machine, crop plans.

These machines are small and noisy: absolute times drift between runs, so every script times its variants
interleaved in one run (round-robin, order rotated each round) and reports medians and ratios.
"""

import argparse
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from fluxfill.inpaint.config import ModelConfig
from fluxfill.inpaint.contract import MASK_THRESHOLD
from fluxfill.inpaint.geometry import CropPlan

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
TINY_MODEL_DIR = REPO_ROOT / "build" / "tiny-flux-fill"
DEFAULT_PLOT_DIR = REPO_ROOT / "out" / "bench"
DEMO_PHOTO = REPO_ROOT / "demo" / "chelsea.png"


def parser(description: str | None) -> argparse.ArgumentParser:
    """The options every benchmark takes: --quick (few repeats, small sizes) and --plot-dir."""
    arguments = argparse.ArgumentParser(description=(description or "").splitlines()[0])
    arguments.add_argument("--quick", action="store_true", help="a fast smoke run (the tests use it)")
    arguments.add_argument("--plot-dir", type=Path, default=DEFAULT_PLOT_DIR, help="where the PNG plot goes")
    return arguments


def interleaved(
    variants: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each variant, run round-robin (rotating the order) so drift hits all alike."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - started)
    return times


def children_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process's living descendants: the emulators and
    fake-gcs-server the bridge benchmarks start. Linux /proc; 0.0 elsewhere."""
    tick = os.sysconf("SC_CLK_TCK")
    parents, used = {}, {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            # After the command's closing parenthesis: state, ppid, ... utime (12th), stime (13th).
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # exited meanwhile
            continue
        parents[int(entry.name)] = int(fields[1])
        used[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    family, grown = {os.getpid()}, True
    while grown:
        found = {pid for pid, parent in parents.items() if parent in family} - family
        family |= found
        grown = bool(found)
    return sum(used[pid] for pid in family - {os.getpid()})


def median_ms(samples: Sequence[float]) -> float:
    """Median of samples in seconds, as milliseconds."""
    return statistics.median(samples) * 1000.0


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table, so the printed output can be pasted into the README as it is."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """Date, core count and CPU model: what a reader needs to weigh the figures."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{today}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {model}"


def report(title: str, table: str, notes: Sequence[str] = ()) -> None:
    """Print the one table of a benchmark with its title, machine and notes."""
    print(f"\n## {title}\n\n{machine()}\n\n{table}\n")
    for note in notes:
        print(f"- {note}")


def save_plot(figure: Any, plot_dir: Path, name: str) -> Path:
    """Write a matplotlib figure as PNG under plot_dir and say where."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    path = plot_dir / f"{name}.png"
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"plot: {path}")
    return path


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend (no display on servers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def shipped_parameters() -> dict[str, str]:
    """flux_fill_stream's parameters exactly as its config.pbtxt ships them."""
    path = MODEL_REPOSITORY / "flux_fill_stream" / "config.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    return {key: value.string_value for key, value in config.parameters.items()}


def engine_plan(mask: npt.NDArray[np.uint8], config: ModelConfig, crop_to_mask: bool) -> CropPlan:
    """What the engine denoises for this mask and configuration (the engine's own plan)."""
    plan = replace(config.crop_geometry, crop_to_mask=crop_to_mask).plan(mask >= MASK_THRESHOLD)
    if plan is None:
        raise ValueError("the benchmark's mask is empty")
    return plan
