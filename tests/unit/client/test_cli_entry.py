"""The CLI's entry point: whatever goes wrong unforeseen is one line naming a log file with the details."""

from pathlib import Path

import pytest

from fluxfill.client import cli
from fluxfill.client.errors import EXIT_FAILED


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
