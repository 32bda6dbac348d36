"""Every command given bad input, as a user runs it: its documented exit code and one line, no traceback.

Each case runs `fluxfill` (or `python -m fluxfill.bridge`) as a subprocess with no Google credentials, no
emulator variables and a private HOME, as on a newcomer's machine. The cases run in parallel (each is a
process start); a failure names every case that broke its promise.
"""

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fluxfill.client.local_server import LocalTritonServer
from tests.integration.conftest import TINY_MODEL_DIR
from tests.support import frozen_grpc_server
from tests.unit.client.test_images import png_without_pixels

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
FLUXFILL = str(BIN / "fluxfill")
H, W = 48, 64


@dataclass(frozen=True)
class Case:
    """argv (after `fluxfill`), the exit code, a fragment of the last stderr line, extra environment."""

    argv: tuple[str, ...]
    code: int
    fragment: str
    env: dict[str, str] = field(default_factory=dict)
    # Lines allowed before the error (help output, a warning); None = exactly one stderr line.
    prefix_lines_allowed: bool = False
    # About how long it runs here (most take a second; some wait out a timeout): the longest start first, so
    # that their waits overlap the others' work instead of ending the run alone.
    expected_s: float = 1.0


def _files(folder: Path) -> dict[str, str]:
    Image.fromarray(np.full((H, W, 3), 120, np.uint8)).save(folder / "photo.png")
    mask = np.zeros((H, W), np.uint8)
    mask[10:30, 10:40] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(folder / "black.png")
    red = np.zeros((H, W, 3), np.uint8)
    red[10:30, 10:40, 0] = 255
    Image.fromarray(red).save(folder / "red.png")
    strokes = np.zeros((H, W, 4), np.uint8)  # strokes painted opaque on a transparent layer
    strokes[10:20, 10:20] = 255
    Image.fromarray(strokes, mode="RGBA").save(folder / "strokes.png")
    Image.fromarray(np.zeros((H, W * 2), np.uint8)).save(folder / "wide-mask.png")
    # A Samsung's 200 MP photo (one grey: 0.2 MB as a PNG), and a header naming more pixels than any server
    # takes (its pixel data is never read).
    Image.new("L", (16320, 12240), 120).save(folder / "200mp.png")
    (folder / "too-large.png").write_bytes(png_without_pixels(20001, 20001))
    (folder / "empty-dir").mkdir()
    (folder / "bad-config.json").write_text('{"defaults": {"steps": 0}}')
    incomplete = folder / "incomplete-weights"
    (incomplete / "vae").mkdir(parents=True)
    (incomplete / "model_index.json").write_text('{"_class_name": "FluxFillPipeline", "vae": ["d", "A"]}')
    return {
        name: str(folder / name)
        for name in (
            "photo.png",
            "mask.png",
            "black.png",
            "red.png",
            "strokes.png",
            "200mp.png",
            "too-large.png",
        )
    } | {
        "wide": str(folder / "wide-mask.png"),
        "out": str(folder / "out.png"),
        "empty": str(folder / "empty-dir"),
        "incomplete": str(incomplete),
        "folder": str(folder),
        "bad-config": str(folder / "bad-config.json"),
    }


def _cases(f: dict[str, str], held_port: int, frozen_port: int, server: LocalTritonServer) -> dict[str, Case]:
    infer = ("infer", f["photo.png"], f["mask.png"], "--output", f["out"])
    offline = ("--url", "127.0.0.1:9", "--retries", "0")  # port 9 (discard) answers nothing here
    job = ("--project", "p", "--user", "u")
    return {
        "no command": Case((), 2, "", prefix_lines_allowed=True),
        "dlq without action": Case(("dlq",), 2, "", prefix_lines_allowed=True),
        "seed too large": Case((*infer, "--seed", "99999999999999999999"), 2, "SEED: must be 0..", {}),
        "negative seed": Case((*infer, "--seed", "-1"), 2, "SEED: must be 0.."),
        # Told what is wrong with the box, not "the following arguments are required: mask".
        "negative box": Case(
            ("infer", f["photo.png"], "-5,0,10,10", "--output", f["out"]),
            2,
            "box must be x,y,w,h in whole pixels, got '-5,0,10,10'",
        ),
        "steps too large": Case((*infer, "--steps", "9999999999"), 2, "STEPS: must be a 32-bit integer"),
        "port over 65535": Case((*infer, "--url", "127.0.0.1:99999"), 2, "port from 1 to 65535"),
        "url with scheme": Case((*infer, "--url", "http://127.0.0.1:8001"), 2, "without a scheme"),
        "url without port": Case((*infer, "--url", "localhost"), 2, "expected HOST:PORT"),
        "missing photo": Case(("infer", "nope.png", f["mask.png"], "--output", f["out"]), 2, "no such file"),
        # Refused before the server is asked (it answers nothing here): each was found after the inference.
        "output Pillow only reads": Case(
            ("infer", f["photo.png"], f["mask.png"], "--output", "x.psd", *offline), 2, ".psd (PSD) is not a"
        ),
        "output not in colour": Case(
            ("infer", f["photo.png"], f["mask.png"], "--output", "x.xbm", *offline), 2, ".xbm (XBM) is not a"
        ),
        "output in a folder that cannot be written": Case(
            ("infer", f["photo.png"], f["mask.png"], "--output", "/proc/fluxfill/x.png", *offline),
            2,
            "/proc/fluxfill/x.png: cannot be written (",
        ),
        "photo is a directory": Case(
            ("infer", f["folder"], f["mask.png"], "--output", f["out"]), 2, "directory"
        ),
        "unknown output format": Case(
            ("infer", f["photo.png"], f["mask.png"], "--output", "x.nope"), 2, "format"
        ),
        "mask of another aspect": Case(
            ("infer", f["photo.png"], f["wide"], "--output", f["out"]), 2, "aspect"
        ),
        "box outside": Case(
            ("infer", f["photo.png"], "50,40,30,30", "--output", f["out"]), 2, "does not fit"
        ),
        "negative retries": Case((*infer, "--retries", "-1"), 2, "--retries must be 0 or more"),
        "timeout of nan": Case((*infer, "--timeout", "nan"), 2, "expected a finite number, got 'nan'"),
        "guidance of inf": Case((*infer, "--guidance", "inf"), 2, "expected a finite number, got 'inf'"),
        "no server": Case((*infer, *offline), 3, "127.0.0.1:9"),
        # A server that took the connection and answered nothing: "Deadline Exceeded", exit 4 (a time limit
        # the user never set), over HTTP after 60 s.
        "a server frozen mid-command": Case(
            (*infer, "--url", f"127.0.0.1:{frozen_port}", "--retries", "0"),
            3,
            f"127.0.0.1:{frozen_port} took the connection but did not answer within 30 s (asked for "
            "flux_fill_stream's metadata): the server is hung or overloaded",
            expected_s=30,
        ),
        "an HTTP server that never answers": Case(
            (*infer, "--url", f"127.0.0.1:{held_port}", "--protocol", "http", "--retries", "0"),
            3,
            f"127.0.0.1:{held_port} took the connection but did not answer within 30 s",
            expected_s=30,
        ),
        "a frozen server past the user's own timeout": Case(
            (*infer, "--url", f"127.0.0.1:{frozen_port}", "--timeout", "2"),
            4,
            f"deadline exceeded: 127.0.0.1:{frozen_port} did not answer within 2 s",
        ),
        # Opened, not called a "decompression bomb" by Pillow nor warned of in two lines: the server decides.
        "a 200 MP photo": Case(
            ("infer", f["200mp.png"], "0,0,64,64", "--output", f["out"], *offline), 3, "127.0.0.1:9"
        ),
        "a photo larger than any server takes": Case(
            ("infer", f["too-large.png"], "0,0,64,64", "--output", f["out"], *offline),
            2,
            "20001x20001 = 400040001 pixels, more than any fluxfill server takes",
        ),
        "http at the grpc port": Case(
            (*infer, "--protocol", "http", "--url", server.grpc_url, "--retries", "0"),
            3,
            "is this the gRPC port",
        ),
        "grpc at the http port": Case(
            (*infer, "--url", server.http_url, "--retries", "0"), 3, "is this the HTTP port"
        ),
        "black mask warns": Case(
            ("infer", f["photo.png"], f["black.png"], "--output", f["out"], *offline),
            3,
            "127.0.0.1:9",
            prefix_lines_allowed=True,
        ),
        "red strokes warn": Case(
            ("infer", f["photo.png"], f["red.png"], "--output", f["out"], *offline),
            3,
            "127.0.0.1:9",
            prefix_lines_allowed=True,
        ),
        "strokes on transparency warn": Case(
            ("infer", f["photo.png"], f["strokes.png"], "--output", f["out"], *offline),
            3,
            "127.0.0.1:9",
            prefix_lines_allowed=True,
        ),
        "watch id with slash": Case(("watch", "a/b", *job), 2, "session id 'a/b' is not valid"),
        "cancel user with slash": Case(
            ("cancel", "s1", "--project", "p", "--user", "a/b"), 2, "user id 'a/b'"
        ),
        "cancel user ..": Case(("cancel", "s1", "--project", "p", "--user", ".."), 2, "user id '..'"),
        "watch session with a uid's bar": Case(("watch", "a|b", *job), 2, "session id 'a|b' is not valid"),
        "fetch reserved id": Case(("fetch", "__x__", *job, "--bucket", "b"), 2, "session id '__x__'"),
        "watch without project": Case(("watch", "s1"), 2, "no project given"),
        "watch every nan seconds": Case(("watch", "s1", "--interval", "nan", *job), 2, "a finite number"),
        "watch without credentials": Case(("watch", "s1", *job), 2, "no credentials"),
        # Each read ended by --timeout: Google's client gave a read that got no answer 300 s.
        "watch a Firestore that never answers": Case(
            ("watch", "s1", *job, "--timeout", "2"),
            4,
            "s1 not read after 2 s (cannot read users/u/sessions/s1: 504 Deadline Exceeded)",
            {"FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{held_port}"},
            expected_s=3,
        ),
        "watch in a database of a bad name": Case(
            ("watch", "s1", *job, "--database", "Pets"), 2, "database 'Pets' is not a Firestore database id"
        ),
        "cancel without credentials": Case(("cancel", "s1", *job), 2, "no credentials"),
        "fetch without credentials": Case(("fetch", "s1", *job, "--bucket", "b"), 2, "no credentials"),
        "submit without credentials": Case(
            ("submit", f["photo.png"], f["mask.png"], *job, "--bucket", "b", "--topic", "t"),
            2,
            "no credentials",
        ),
        "submit without topic": Case(
            ("submit", f["photo.png"], f["mask.png"], *job, "--bucket", "b"), 2, "no topic"
        ),
        "submit black mask": Case(
            ("submit", f["photo.png"], f["black.png"], *job, "--bucket", "b", "--topic", "t"),
            2,
            "the bridge would fail the job (mask_empty)",
        ),
        "submit bad steps": Case(
            ("submit", f["photo.png"], f["mask.png"], *job, "--bucket", "b", "--topic", "t", "--steps", "0"),
            2,
            "steps",
        ),
        # Its pull ended at the deadline, as when nothing is queued: "0 dead-lettered job(s)", exit 0.
        "dlq list of a Pub/Sub that never answers": Case(
            ("dlq", "list", "--project", "p", "--dead-letter-subscription", "s"),
            3,
            "cannot pull from projects/p/subscriptions/s: Pub/Sub did not answer within 3 s",
            {"PUBSUB_EMULATOR_HOST": f"127.0.0.1:{held_port}"},
            expected_s=5,
        ),
        # Connected, its call taken and never answered: the pull ended at its deadline all the same.
        "dlq list of a Pub/Sub frozen mid-command": Case(
            ("dlq", "list", "--project", "p", "--dead-letter-subscription", "s"),
            3,
            "cannot pull from projects/p/subscriptions/s: Pub/Sub did not answer within 3 s",
            {"PUBSUB_EMULATOR_HOST": f"127.0.0.1:{frozen_port}"},
            expected_s=5,
        ),
        "dlq list without credentials": Case(
            ("dlq", "list", "--project", "p", "--dead-letter-subscription", "s"), 2, "no credentials"
        ),
        "dlq replay without id": Case(
            ("dlq", "replay", "--project", "p", "--dead-letter-subscription", "s", "--topic", "t"),
            2,
            "exactly one",
        ),
        "config without action": Case(("config",), 2, "", prefix_lines_allowed=True),
        "config set of a missing file": Case(
            ("config", "set", "/nonexistent.json", "--project", "p"), 2, "no such"
        ),
        "config set of an endless file": Case(
            ("config", "set", "/dev/zero", "--project", "p"), 2, "longer than a Firestore document can be"
        ),
        "config set of an invalid document": Case(
            ("config", "set", f["bad-config"], "--project", "p"), 2, "defaults.steps: Input should be greater"
        ),
        "config show without credentials": Case(("config", "show", "--project", "p"), 2, "no credentials"),
        "serve missing weights": Case(("serve", "--weights-dir", "/nonexistent"), 2, "not a directory"),
        "serve incomplete weights": Case(
            ("serve", "--weights-dir", f["incomplete"]), 2, "incomplete: no weights for vae"
        ),
        "serve missing gguf": Case(("serve", "--gguf-file", "/nonexistent.gguf"), 2, "no such file"),
        "serve gguf of a folder": Case(("serve", "--gguf-file", f["empty"]), 2, "not a file"),
        "serve not a repository": Case(
            ("serve", "--model-repository", f["folder"]), 2, "no flux_fill_stream"
        ),
        "serve on a taken port": Case(("serve", "--grpc-port", str(held_port)), 2, f"grpc port {held_port}"),
        "serve one port twice": Case(
            ("serve", "--http-port", "8105", "--grpc-port", "8105"), 2, "are both 8105"
        ),
        "serve port out of range": Case(("serve", "--metrics-port", "70000"), 2, "1 to 65535"),
        "stack on a taken port": Case(
            ("stack", "--pubsub-port", str(held_port)), 2, f"pubsub port {held_port}"
        ),
        "stack without the Cloud SDK": Case(
            ("stack",), 3, "the Pub/Sub emulator is missing", {"FLUXFILL_CLOUD_SDK": "/nonexistent"}
        ),
        "stack without java": Case(("stack",), 3, "java not found", {"PATH": str(BIN)}),
        "stack with a parameter the model refuses": Case(
            ("stack", "--weights-dir", str(TINY_MODEL_DIR / "pipeline"), "--param", "dtype=nope"),
            3,
            "flux_fill_stream failed to load: UNAVAILABLE",
            prefix_lines_allowed=True,  # the INFO lines of what it started and stopped
            expected_s=10,
        ),
        "digest of nothing": Case(("weights-digest", "/nonexistent"), 2, "no such file or directory"),
        "digest of an empty directory": Case(("weights-digest", f["empty"]), 2, "no weight files"),
        "digest of a device": Case(("weights-digest", "/dev/zero"), 2, "neither a weights file nor a dir"),
        "tiny model where it cannot write": Case(
            ("tiny-model", "--output", "/proc/fluxfill"), 2, "cannot build"
        ),
        "unknown option": Case((*infer, "--nope"), 2, "unrecognized arguments", prefix_lines_allowed=True),
    }


def _environment(home: Path, extra: dict[str, str]) -> dict[str, str]:
    # A newcomer's machine: no credentials, no emulators, nothing cached.
    hidden = ("_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "FLUXFILL_")
    environment = {k: v for k, v in os.environ.items() if not any(h in k for h in hidden)}
    return {
        **environment,
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / "cache"),
        "NO_GCE_CHECK": "True",
        **extra,
    }


@pytest.fixture(scope="module")
def results(
    tmp_path_factory: pytest.TempPathFactory, flux_server: LocalTritonServer
) -> Iterator[dict[str, tuple[Case, subprocess.CompletedProcess[str]]]]:
    folder = tmp_path_factory.mktemp("cli-errors")
    files = _files(folder)
    with socket.socket() as held, frozen_grpc_server() as frozen_port:
        held.bind(("127.0.0.1", 0))
        held.listen()
        cases = _cases(files, held.getsockname()[1], frozen_port, flux_server)

        def run(case: Case) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [FLUXFILL, *case.argv],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                cwd=folder,
                env=_environment(folder / "home", case.env),
            )

        order = sorted(cases, key=lambda name: -cases[name].expected_s)
        with ThreadPoolExecutor(max_workers=4) as pool:
            done = dict(zip(order, pool.map(run, [cases[name] for name in order]), strict=True))
        yield {name: (cases[name], result) for name, result in done.items()}


def test_every_command_with_bad_input_exits_with_its_code_and_one_line(
    results: dict[str, tuple[Case, subprocess.CompletedProcess[str]]],
) -> None:
    failures = []
    for name, (case, result) in results.items():
        stderr = result.stderr
        lines = stderr.splitlines()
        problems = []
        if result.returncode != case.code:
            problems.append(f"exit {result.returncode}, expected {case.code}")
        if "Traceback" in stderr:
            problems.append("a traceback")
        if not lines:
            problems.append("nothing on stderr")
        elif case.fragment and case.fragment not in lines[-1]:
            problems.append(f"last line lacks {case.fragment!r}")
        elif not case.prefix_lines_allowed and len(lines) != 1:
            problems.append(f"{len(lines)} lines")
        if (
            lines
            and case.argv
            and not case.prefix_lines_allowed
            and not lines[-1].startswith(f"fluxfill {case.argv[0]}: ")
        ):
            problems.append("the line does not start with `fluxfill COMMAND: `")
        if problems:
            failures.append(f"{name}: {', '.join(problems)}; stderr: {stderr[-600:]!r}")
    assert not failures, "\n".join(failures)


def test_mask_warnings_say_what_the_mask_selects(
    results: dict[str, tuple[Case, subprocess.CompletedProcess[str]]],
) -> None:
    expected = {
        "black mask warns": "selects nothing",
        "red strokes warn": "pure red is only 76",
        "strokes on transparency warn": "TRANSPARENT",
    }
    for name, fragment in expected.items():
        first = results[name][1].stderr.splitlines()[0]
        assert first.startswith("fluxfill infer: warning: "), first
        assert fragment in first
    assert "warning" not in results["no server"][1].stderr


def test_help_lists_every_command_and_the_version_is_printed() -> None:
    help_text = subprocess.run([FLUXFILL], capture_output=True, text=True, check=False).stderr
    commands = (
        "infer",
        "serve",
        "stack",
        "submit",
        "watch",
        "cancel",
        "fetch",
        "dlq",
        "config",
        "tiny-model",
    )
    for command in commands:
        assert f"    {command}" in help_text
    assert "exit codes" in help_text
    version = subprocess.run([FLUXFILL, "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("fluxfill 0.")
    serve_help = subprocess.run(
        [FLUXFILL, "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "(default: 8001)" in serve_help
    assert "(default: 127.0.0.1)" in serve_help
    for command in ("tiny-model", "weights-digest", "fetch", "stack"):
        text = subprocess.run(
            [FLUXFILL, command, "--help"], capture_output=True, text=True, check=True
        ).stdout
        description = text.split("\n\n")[1]
        assert len(description.split()) > 10, f"{command} --help has no description: {text!r}"


def test_the_bridge_names_the_variables_it_lacks_and_explains_itself(tmp_path: Path) -> None:
    environment = _environment(tmp_path, {})
    bridge = [sys.executable, "-m", "fluxfill.bridge"]
    missing = subprocess.run(bridge, capture_output=True, text=True, env=environment, timeout=60, check=False)
    assert missing.returncode == 2
    # The bridge logs JSON lines to stdout (what Cloud Logging reads).
    assert "FLUXFILL_BRIDGE_PROJECT: required" in missing.stdout
    assert "FLUXFILL_BRIDGE_BUCKET: required" in missing.stdout
    assert "Traceback" not in missing.stdout + missing.stderr
    helped = subprocess.run([*bridge, "--help"], capture_output=True, text=True, env=environment, check=True)
    assert "FLUXFILL_BRIDGE_TRITON_URL (default 127.0.0.1:8001)" in helped.stdout
    unknown = subprocess.run(
        [*bridge, "--nope"], capture_output=True, text=True, env=environment, check=False
    )
    assert unknown.returncode == 2
    assert "unrecognized arguments: --nope" in unknown.stderr
