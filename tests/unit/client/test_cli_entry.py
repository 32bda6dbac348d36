"""The CLI's entry point: whatever goes wrong unforeseen is one line naming a log file with the details."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from fluxfill.client import cli
from fluxfill.client.errors import EXIT_FAILED, EXIT_UNAVAILABLE, EXIT_USAGE
from fluxfill.client.job_commands import misspelt_variables
from fluxfill.client.triton_binary import free_port


def test_an_unexpected_error_is_one_line_and_a_log_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "ERROR_LOG_DIR", tmp_path / "errors")

    def broken(_path: Path) -> int:
        raise RuntimeError("something nobody foresaw\non two lines")

    monkeypatch.setattr(cli, "_weights_digest", broken)
    code = cli.main(["weights-digest", str(tmp_path)])
    assert code == EXIT_FAILED
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    expected = "fluxfill weights-digest: unexpected error: RuntimeError: something nobody foresaw"
    assert lines[0].startswith(expected)
    (log,) = (tmp_path / "errors").iterdir()
    assert f"(details in {log})" in lines[0]
    details = log.read_text()
    assert "Traceback" in details
    assert "in broken" in details
    assert f"fluxfill weights-digest {tmp_path}" in details


def test_without_a_writable_log_directory_the_line_still_says_what_happened(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "ERROR_LOG_DIR", Path("/proc/fluxfill-errors"))
    monkeypatch.setattr(cli, "_weights_digest", lambda _path: 1 // 0)
    assert cli.main(["weights-digest", "."]) == EXIT_FAILED
    line = capsys.readouterr().err.strip()
    assert "ZeroDivisionError" in line
    assert "no log:" in line


def test_a_librarys_warning_is_one_line_of_the_commands(tmp_path: Path) -> None:
    """Pillow warns as it reads a photo's corrupt EXIF: two lines naming its own source file, amid the
    command's one-line messages. Run as a user runs it (a process without this suite's warnings-as-errors)."""
    photo = tmp_path / "photo.png"
    corrupt_exif = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff"  # a directory of 65535 entries, cut short
    Image.new("RGB", (16, 12), (90, 120, 150)).save(photo, exif=corrupt_exif)
    command = Path(sys.executable).with_name("fluxfill")
    done = subprocess.run(
        [command, "infer", photo, "2,2,4,4", "--output", tmp_path / "out.png",
         "--url", f"127.0.0.1:{free_port()}", "--retries", "0"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == EXIT_UNAVAILABLE, done.stderr
    warning, error = done.stderr.splitlines()
    assert warning.startswith("fluxfill infer: warning: Corrupt EXIF data"), done.stderr
    assert error.startswith("fluxfill infer: "), done.stderr


def test_a_misspelt_variable_is_told_before_the_setting_it_would_have_given_is_missed() -> None:
    """`FLUXFILL_PROJCT` set, `FLUXFILL_PROJECT` not: the command said only that the project is required.
    A misspelt FLUXFILL_FIRESTORE_DATABASE was worse: every command went to the `(default)` database."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.upper().startswith("FLUXFILL_") and key != "GOOGLE_CLOUD_PROJECT"
    }
    environment["FLUXFILL_PROJCT"] = "my-project"
    command = Path(sys.executable).with_name("fluxfill")
    done = subprocess.run(
        [command, "watch", "--user", "u1", "s1"],
        env=environment, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == EXIT_USAGE, done.stderr
    warning, error = done.stderr.splitlines()
    assert warning == (
        "fluxfill watch: warning: FLUXFILL_PROJCT is set but read by nothing: did you mean FLUXFILL_PROJECT?"
    )
    assert "FLUXFILL_PROJECT" in error, error


def test_only_variables_like_ones_read_are_told() -> None:
    environ = {
        "FLUXFILL_FIRESTORE_DATABSE": "db-1",
        "fluxfill_bridge_edited_templat": "users/{userId}/sessions/{sessionId}/out.*",
        "FLUXFILL_FIRESTORE_DATABASE": "db-2",  # read: nothing to say
        "fluxfill_bucket": "b",  # the command line reads its own names as written (the bridge's in any case)
        "FLUXFILL_GGUF_FILE": "q8.gguf",  # the Triton image's: not this command's business
        "FLUXFILL_SOMETHING_ELSE": "x",
        "PATH": "/bin",
    }
    assert misspelt_variables(environ) == [
        "FLUXFILL_FIRESTORE_DATABSE is set but read by nothing: did you mean FLUXFILL_FIRESTORE_DATABASE?",
        "fluxfill_bridge_edited_templat is set but read by nothing: did you mean "
        "FLUXFILL_BRIDGE_EDITED_TEMPLATE?",
        "fluxfill_bucket is set but read by nothing: did you mean FLUXFILL_BUCKET?",
    ]
