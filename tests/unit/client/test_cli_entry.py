"""The CLI's entry point: whatever goes wrong unforeseen is one line naming a log file with the details."""

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from fluxfill.client import cli
from fluxfill.client.errors import EXIT_FAILED, EXIT_UNAVAILABLE
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
