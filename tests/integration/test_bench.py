"""Each benchmark runs end to end in quick mode, so none can rot: it prints its table and draws its plot.

Speed is not asserted here (the benchmarks report it); only that they run and say what they measured. Each
runs as the script it is, in its own process, so its logging setup and servers never leak into other tests.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

pytestmark = pytest.mark.integration


def run_quick(module: str, plot_dir: Path) -> str:
    """Run `python -m bench.MODULE --quick`; its stdout, after checking it succeeded and drew its plot."""
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", "--quick", "--plot-dir", str(plot_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (plot_dir / f"{module}.png").is_file(), "no plot written"
    return done.stdout


def table_row(output: str, first_cells: str) -> list[str]:
    """The cells of the table row starting with `first_cells` (e.g. "| 10% |")."""
    row = next(line for line in output.splitlines() if line.startswith(first_cells))
    return [cell.strip() for cell in row.strip("|").split("|")]


def named_cells(output: str, first_cells: str) -> dict[str, str]:
    """The cells of the row starting with `first_cells`, by its table's headers."""
    lines = output.splitlines()
    at = next(index for index, line in enumerate(lines) if line.startswith(first_cells))
    header = next(lines[index - 1] for index in range(at, 0, -1) if lines[index].startswith("|---"))
    names = [cell.strip() for cell in header.strip("|").split("|")]
    return dict(zip(names, table_row(output, first_cells), strict=True))


def test_serving_overhead_measures_every_path_against_in_process(tmp_path: Path) -> None:
    output = run_quick("serving_overhead", tmp_path)
    for path in ("HTTP unary (flux_fill)", "gRPC unary (flux_fill)", "gRPC stream (flux_fill_stream)"):
        added_serving_ms = table_row(output, f"| 256x256 | {path} |")[4]
        assert float(added_serving_ms) > 0, "a serving path cannot be cheaper than no serving at all"
    assert "not measured in quick mode" in output


def test_intake_compares_the_service_path_and_the_draft_candidate_with_naive(tmp_path: Path) -> None:
    output = run_quick("intake", tmp_path)
    for path in ("naive", "service (", "draft candidate"):
        cells = table_row(output, f"| 30% | {path}")
        assert float(cells[5]) > 0, f"{path}: no peak memory measured"
    # The draft candidate decodes at reduced scale for a 30% mask: it must need less memory than naive.
    assert float(table_row(output, "| 30% | draft")[5]) < float(table_row(output, "| 30% | naive")[5])


def test_crop_to_mask_denoises_fewer_tokens_than_the_full_frame_at_the_same_density(tmp_path: Path) -> None:
    cells = table_row(run_quick("crop_to_mask", tmp_path), "| 10% |")
    crop_tokens, same_density_tokens = int(cells[3]), int(cells[4])
    assert crop_tokens < same_density_tokens


def test_gpu_transformer_runs_the_scaled_down_config_on_cpu(tmp_path: Path) -> None:
    output = run_quick("gpu_transformer", tmp_path)
    for name in ("bf16", "bf16+compile", "bf16+fbcache", "gguf-q4"):
        assert float(table_row(output, f"| {name} |")[1]) > 0, f"{name} did not run"
    assert table_row(output, "| bf16+offload leaf |")[1] == "unavailable (CPU offload needs a CUDA device)"
    assert table_row(output, "| fp8 |")[1].startswith("unavailable (")


def test_bridge_throughput_runs_jobs_through_the_emulators(tmp_path: Path) -> None:
    output = run_quick("bridge_throughput", tmp_path)
    for concurrency in (1, 4):
        cells = named_cells(output, f"| {concurrency} |")
        assert float(cells["jobs/s"]) > 0
        assert float(cells["bridge CPU ms per job"]) > 0
        assert float(cells["emulators CPU ms per job"]) > 0, "the emulators' CPU time was not read"


def test_result_formats_compares_png_results_with_the_originals_format(tmp_path: Path) -> None:
    output = run_quick("result_formats", tmp_path)
    png, spliced = (
        named_cells(output, "| 1 MP | PNG result |"),
        named_cells(output, "| 1 MP | original's format |"),
    )
    assert (png["encoding"], spliced["encoding"]) == ("lossless", "dct_splice")
    # A spliced JPEG of a 10 % edit is about the original's size; a PNG of a photo is several times it.
    assert float(spliced["x original"]) < 1.2 < float(png["x original"])
    assert float(spliced["bridge CPU ms"]) > 0


def test_context_request_moves_less_than_the_whole_photo_and_less_again_reduced(tmp_path: Path) -> None:
    # The bench itself refuses to report when the whole photo and its context give different images, or the
    # reduced context touches pixels beyond the feather.
    cells = named_cells(run_quick("context_request", tmp_path), "| 10% |")
    assert cells["context, reduction"].endswith(", 1/2"), "the quick photo's context is reduced by 2"
    moved = [float(cells[f"MB moved ({name})"]) for name in ("whole", "context", "reduced")]
    assert moved[0] > moved[1] > moved[2]
    assert float(cells["whole photo (until 2026-12-04): ms"]) > 0
    assert float(cells["context reduced (now): ms"]) > 0


def test_session_writes_counts_fewer_snapshots_per_job_with_heartbeats_that_write_only_what_is_due(
    tmp_path: Path,
) -> None:
    output = run_quick("session_writes", tmp_path)
    before = named_cells(output, "| every heartbeat writes")
    now = named_cells(output, "| due renewals and progress")
    # Each job has at least its claim's and its final write's snapshots, seen by the app's listener.
    assert 2 <= float(now["snapshots per job"]) < float(before["snapshots per job"])
