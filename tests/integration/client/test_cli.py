"""`fluxfill infer` as a user runs it: a subprocess on a real tritonserver, judged by files and exit codes."""

import ctypes
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fluxfill.bridge.colour_profile import KNOWN_PRIMARIES, display_profile
from fluxfill.client.local_server import LocalTritonServer
from fluxfill.client.triton_binary import free_port
from tests.integration.client.support import (
    FOLLOW_UP_QUEUE_LIMIT_S,
    LONG_RUN_STEPS,
    box_mask,
    follow_up_queued_s,
    photo,
)
from tests.integration.server_metrics import outcome_count, wait_until_settled

pytestmark = pytest.mark.integration

FLUXFILL = str(Path(sys.executable).parent / "fluxfill")
# Linux's syscall number; None: not known here.
TGKILL = {"x86_64": 234, "aarch64": 131}.get(platform.machine())
# Whether a test's SIGINT goes to a thread other than the main one (tgkill), as the kernel may choose: only
# where tgkill's number is known.
SIGINT_TARGETS = [
    False,
    pytest.param(
        True, marks=pytest.mark.skipif(TGKILL is None, reason="tgkill's syscall number not known here")
    ),
]
HEIGHT, WIDTH = 48, 80


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    Image.fromarray(photo(HEIGHT, WIDTH)).save(folder / "photo.png")
    Image.fromarray(box_mask(HEIGHT, WIDTH)).save(folder / "mask.png")
    Image.fromarray(box_mask(HEIGHT // 2, WIDTH)).save(folder / "small-mask.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def fluxfill(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLUXFILL, *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False
    )


def infer(files: Path, server: LocalTritonServer, *extra: str | Path) -> subprocess.CompletedProcess[str]:
    return fluxfill(
        "infer",
        files / "photo.png",
        files / "mask.png",
        "--url",
        server.grpc_url,
        "--prompt",
        "a cat",
        *extra,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    assert result.returncode == code, result.stderr
    # Progress lines may come first; the error itself is one line, and the last.
    lines = [line for line in result.stderr.splitlines() if not line.startswith("step ")]
    assert len(lines) == 1, f"expected one error line on stderr, got: {result.stderr!r}"
    assert result.stderr.splitlines()[-1] == lines[0]
    assert lines[0].startswith("fluxfill infer: ")
    assert fragment in lines[0]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_infer_writes_an_image_of_the_input_size_and_prints_the_seed(
    flux_server: LocalTritonServer, files: Path, tmp_path: Path, protocol: str
) -> None:
    url = flux_server.grpc_url if protocol == "grpc" else flux_server.http_url
    output = tmp_path / "out" / "result.png"
    result = fluxfill(
        "infer", files / "photo.png", files / "mask.png", "--output", output,
        "--url", url, "--protocol", protocol, "--seed", "42",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    written = np.asarray(Image.open(output))
    assert written.shape == (HEIGHT, WIDTH, 3)
    assert "seed 42" in result.stdout
    # A box mask gives the same pixels as the mask file it describes.
    by_box = tmp_path / "box.png"
    box = f"{WIDTH // 4},{HEIGHT // 4},{WIDTH // 2},{HEIGHT // 2}"
    again = fluxfill(
        "infer",
        files / "photo.png",
        box,
        "--output",
        by_box,
        "--url",
        url,
        "--protocol",
        protocol,
        "--seed",
        "42",
    )
    assert again.returncode == 0, again.stderr
    assert np.array_equal(np.asarray(Image.open(by_box)), written)


def test_a_photo_keeps_its_transparency_and_colour_profile_where_the_output_can(
    flux_server: LocalTritonServer, files: Path, tmp_path: Path
) -> None:
    """A Display P3 cut-out through `fluxfill infer`, as through a job (bridge/model_rgb.py): the model sees
    it over white, a PNG output keeps its alpha with the colours behind it, a JPEG output is it over white;
    both carry the photo's colour profile (bridge/photo_colours.py)."""
    clear_at_top = np.linspace(0, 255, HEIGHT).astype(np.uint8)[:, None].repeat(WIDTH, axis=1)
    cut_out = np.dstack([photo(HEIGHT, WIDTH, seed=3), clear_at_top])
    display_p3 = display_profile(KNOWN_PRIMARIES[12])
    Image.fromarray(cut_out, "RGBA").save(tmp_path / "cut-out.png", icc_profile=display_p3)
    outputs = {}
    for name in ("out.png", "out.jpg"):
        result = fluxfill(
            "infer", tmp_path / "cut-out.png", files / "mask.png", "--output", tmp_path / name,
            "--url", flux_server.grpc_url, "--seed", "5",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        with Image.open(tmp_path / name) as written:
            assert written.info.get("icc_profile") == display_p3, name
            outputs[name] = np.asarray(written)
    png, jpeg = outputs["out.png"], outputs["out.jpg"]
    assert png.shape == (HEIGHT, WIDTH, 4)
    assert jpeg.shape == (HEIGHT, WIDTH, 3)
    assert np.array_equal(png[..., 3], clear_at_top)
    # Away from the edit (the mask's box and the feather around it), the colours behind the alpha are the
    # photo's own.
    untouched = np.ones((HEIGHT, WIDTH), bool)
    untouched[HEIGHT // 4 - 10 : 3 * HEIGHT // 4 + 10, WIDTH // 4 - 10 : 3 * WIDTH // 4 + 10] = False
    untouched &= clear_at_top >= 128  # where the rounding of the composite moves a colour by a level at most
    assert np.abs(png[..., :3].astype(int) - cut_out[..., :3])[untouched].max() <= 1
    assert jpeg[:3].mean() > 240, "the JPEG shows the nearly clear top over white"


def test_random_seed_is_printed(flux_server: LocalTritonServer, files: Path, tmp_path: Path) -> None:
    result = infer(files, flux_server, "--output", tmp_path / "r.png")
    assert result.returncode == 0, result.stderr
    assert re.search(r"\(80x48, seed \d+\)", result.stdout)


def test_progress_bar_advances_once_per_step(
    flux_server: LocalTritonServer, files: Path, tmp_path: Path
) -> None:
    result = infer(files, flux_server, "--output", tmp_path / "p.png", "--steps", "6")
    assert result.returncode == 0, result.stderr
    steps = [(int(a), int(b)) for a, b in re.findall(r"^step (\d+)/(\d+)", result.stderr, re.MULTILINE)]
    assert steps == [(step, 6) for step in range(1, 7)]


@pytest.mark.parametrize(
    ("mask", "fragment"),
    [
        ("small-mask.png", "the mask is 80x24 but the photo is 80x48"),
        ("notes.txt", "notes.txt: not a readable image"),
        ("missing.png", "missing.png: no such file"),
        ("70,40,20,20", "box 70,40,20,20 does not fit inside the 80x48 photo"),
    ],
)
def test_invalid_mask_exits_2_with_one_line(
    flux_server: LocalTritonServer, files: Path, tmp_path: Path, mask: str, fragment: str
) -> None:
    mask_arg = mask if "," in mask else str(files / mask)
    output = tmp_path / "never.png"
    result = fluxfill(
        "infer", files / "photo.png", mask_arg, "--output", output, "--url", flux_server.grpc_url
    )
    assert_one_line_error(result, 2, fragment)
    assert not output.exists()


def test_input_the_server_refuses_exits_2_with_its_message(
    flux_server: LocalTritonServer, files: Path, tmp_path: Path
) -> None:
    result = infer(files, flux_server, "--output", tmp_path / "x.png", "--steps", "0")
    assert_one_line_error(result, 2, "STEPS: must be between 1 and")


def test_usage_error_exits_2(files: Path) -> None:
    result = fluxfill("infer", files / "photo.png", files / "mask.png")
    assert result.returncode == 2
    assert "--output" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_stopped_server_exits_3(files: Path, tmp_path: Path, protocol: str) -> None:
    url = f"127.0.0.1:{free_port()}"
    result = fluxfill(
        "infer", files / "photo.png", files / "mask.png", "--output", tmp_path / "x.png",
        "--url", url, "--protocol", protocol, "--retries", "0",
    )  # fmt: skip
    assert_one_line_error(result, 3, url)


def test_unavailable_server_is_retried_with_backoff_before_exit_3(files: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    result = fluxfill(
        "infer", files / "photo.png", files / "mask.png", "--output", tmp_path / "x.png",
        "--url", f"127.0.0.1:{free_port()}", "--retries", "2",
    )  # fmt: skip
    assert result.returncode == 3
    *retries, error = result.stderr.splitlines()
    assert len(retries) == 2
    assert all(
        re.fullmatch(r"fluxfill infer: warning: service unavailable \(.*\); retrying in \d\.\d s", line)
        for line in retries
    )
    assert error.startswith("fluxfill infer: ")
    assert time.monotonic() - started >= 0.5 + 1.0, "backoff waits 0.5 s, then 1 s"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_timeout_exits_4(
    long_run_server: LocalTritonServer, files: Path, tmp_path: Path, protocol: str
) -> None:
    """Over HTTP the call waits in a greenlet of its own: its error once came with gevent's report of the
    greenlet's failure (two lines more, one a timestamp)."""
    url = long_run_server.grpc_url if protocol == "grpc" else long_run_server.http_url
    result = infer(
        files, long_run_server, "--output", tmp_path / "t.png", "--steps", str(LONG_RUN_STEPS),
        "--timeout", "1", "--url", url, "--protocol", protocol,
    )  # fmt: skip
    assert_one_line_error(result, 4, "deadline exceeded")


# Run from the background (nohup, `cmd &`, some CI runners) the tests inherit SIGINT ignored, and so would the
# CLI, which then never sees Ctrl-C: this prefix gives it the disposition a terminal's foreground job has.
SIGINT_AS_FROM_A_TERMINAL = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])",
]


@pytest.mark.parametrize("to_another_thread", SIGINT_TARGETS)
def test_sigint_during_an_http_call_prints_the_one_line_alone(
    files: Path, tmp_path: Path, to_another_thread: bool
) -> None:
    """tritonclient.http waits in gevent's hub, which printed the KeyboardInterrupt, with a timestamp, to
    stderr before the command's own line. Here the server takes the connection and never answers.

    The kernel may hand a process's SIGINT to any of its threads: handed to one of gevent's resolver threads,
    it did not wake the hub from its poll, and the command went on waiting (a CI run timed out on it)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(30)
        process = subprocess.Popen(
            [*SIGINT_AS_FROM_A_TERMINAL, FLUXFILL, "infer", str(files / "photo.png"), str(files / "mask.png"),
             "--output", str(tmp_path / "never.png"), "--protocol", "http",
             "--url", f"127.0.0.1:{listener.getsockname()[1]}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )  # fmt: skip
        try:
            connection, _ = listener.accept()
            with connection:
                connection.recv(4096)  # its request: the command now waits for the answer
                if to_another_thread:
                    _interrupt_another_thread(process.pid)
                else:
                    process.send_signal(signal.SIGINT)
                _, errors = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            # SIGABRT makes faulthandler print where each of its threads was.
            process.send_signal(signal.SIGABRT)
            _, errors = process.communicate(timeout=10)
            pytest.fail(f"fluxfill infer did not end within 10 s of its Ctrl-C:\n{errors}")
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 4, errors
    assert errors.splitlines() == [
        "fluxfill infer: interrupted (Ctrl-C): cancelled; HTTP cannot stop a started run"
    ]


def _interrupt_another_thread(pid: int) -> None:
    """SIGINT to a thread of process `pid` other than its main one (tgkill), as the kernel may choose."""
    others = [int(task) for task in os.listdir(f"/proc/{pid}/task") if int(task) != pid]
    assert others, "the command runs no thread besides its main one"
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(TGKILL, pid, others[0], signal.SIGINT) == 0, os.strerror(ctypes.get_errno())


# Loaded by the command's Python at its start (PYTHONPATH): a Ctrl-C, as a terminal sends it, while the
# command line's modules are being imported.
INTERRUPT_WHILE_IMPORTING = """
import os, signal, sys

class InterruptWhileImporting:
    def find_spec(self, name, path=None, target=None):
        if name == "fluxfill.client.cli":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, InterruptWhileImporting())
"""


def test_sigint_while_the_command_line_is_imported_is_one_line(files: Path, tmp_path: Path) -> None:
    """The first few tenths of a second of every command (numpy, Pillow, the Triton and Google clients):
    a Ctrl-C then printed Python's traceback."""
    (tmp_path / "sitecustomize.py").write_text(INTERRUPT_WHILE_IMPORTING)
    result = subprocess.run(
        [*SIGINT_AS_FROM_A_TERMINAL, FLUXFILL, "infer", str(files / "photo.png"), str(files / "mask.png"),
         "--output", str(tmp_path / "never.png")],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])},
    )  # fmt: skip
    assert (result.returncode, result.stderr.splitlines()) == (4, ["fluxfill infer: interrupted (Ctrl-C)"])
    assert not (tmp_path / "never.png").exists()


@pytest.mark.parametrize("to_another_thread", SIGINT_TARGETS)
def test_sigint_during_a_long_run_cancels_it_on_the_server(
    long_run_server: LocalTritonServer, files: Path, tmp_path: Path, to_another_thread: bool
) -> None:
    """Over gRPC the command waits on its replies' queue 0.05 s at a time, so a Ctrl-C the kernel hands to
    one of grpc's threads is seen as soon as one handed to the main thread."""
    wait_until_settled(long_run_server)
    cancelled_before = outcome_count(long_run_server, "cancelled")
    output = tmp_path / "never.png"
    process = subprocess.Popen(
        [*SIGINT_AS_FROM_A_TERMINAL, FLUXFILL, "infer", str(files / "photo.png"), str(files / "mask.png"),
         "--output", str(output), "--url", long_run_server.grpc_url, "--steps", str(LONG_RUN_STEPS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        # Wait until the server is denoising: the progress bar has shown a few steps.
        for line in process.stderr:
            if line.startswith("step 5/"):
                break
        if to_another_thread:
            _interrupt_another_thread(process.pid)
        else:
            process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=10)
    finally:
        if process.poll() is None:  # never left running to fail a later test
            process.kill()
            process.communicate()
    assert process.returncode == 4
    assert rest.splitlines()[-1] == (
        "fluxfill infer: interrupted (Ctrl-C): cancelled; the server stopped the run"
    )
    assert "Traceback" not in rest
    assert not output.exists()
    # The model counts a cancelled outcome only once its run loop has stopped.
    deadline = time.monotonic() + 5
    while outcome_count(long_run_server, "cancelled") < cancelled_before + 1:
        assert time.monotonic() < deadline, "the server never reported the run cancelled"
        time.sleep(0.05)
    # The run had ~995 steps (20+ s) left: the next request finds the single instance free.
    waited = follow_up_queued_s(long_run_server)
    assert waited < FOLLOW_UP_QUEUE_LIMIT_S, f"the next request waited {waited:.1f} s behind the run"
