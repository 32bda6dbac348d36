"""The progress bar's two renderings, and every command's --help and usage errors."""

import io
import sys
from pathlib import Path

import pytest
from PIL import Image

from fluxfill.client import cli, launch
from fluxfill.client.cli import build_parser, main
from fluxfill.client.errors import EXIT_STOPPED
from fluxfill.client.progress import ProgressBar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_pipe_gets_one_line_per_step() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream)
    for step in (1, 2, 3):
        bar(step, 3)
    assert [line.split("  ")[0] for line in stream.getvalue().splitlines()] == [
        "step 1/3",
        "step 2/3",
        "step 3/3",
    ]


def test_a_terminal_gets_one_bar_redrawn_in_place() -> None:
    stream = Terminal()
    bar = ProgressBar(stream, width=10)
    bar(1, 4)
    bar(4, 4)
    text = stream.getvalue()
    assert text.startswith("\r[##........] step 1/4")
    assert "\r[##########] step 4/4" in text
    assert text.endswith("\n")
    assert text.count("\n") == 1


def test_an_interrupted_bar_ends_its_line() -> None:
    stream = Terminal()
    bar = ProgressBar(stream)
    bar(1, 4)
    bar.interrupt()
    assert stream.getvalue().endswith("\n")


COMMANDS = [name for name in build_parser()._subparsers._group_actions[0].choices]  # type: ignore[union-attr]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([command, "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: fluxfill {command}")
    assert len(out.splitlines()) > 3


@pytest.mark.parametrize(
    "argv",
    [["no-such-command"], ["infer"], ["infer", "a.png", "b.png", "--output", "o.png", "--steps", "x"]],
)
def test_usage_errors_exit_2_with_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("fluxfill")


def test_no_command_prints_the_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fluxfill")
    assert "infer" in err


def test_an_unknown_output_format_exits_2_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["infer", "a.png", "1,1,2,2", "--output", "out.nope", "--url", "127.0.0.1:1"]) == 2
    assert (
        capsys.readouterr().err
        == "fluxfill infer: out.nope: unknown image format '.nope' (use .png, .jpg, .webp, ...)\n"
    )


def test_a_prompt_with_a_byte_that_is_not_utf8_exits_2_saying_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A terminal in another encoding passes bytes Python keeps as half surrogates: the codec's own words
    ("surrogates not allowed") said nothing of what to change."""
    Image.new("RGB", (16, 12)).save(tmp_path / "photo.png")
    prompt = b"a hat \xff".decode("utf-8", "surrogateescape")  # as Python reads such an argument
    argv = ["infer", str(tmp_path / "photo.png"), "1,1,2,2", "--prompt", prompt, "--output", "o.png"]
    assert main([*argv, "--url", "127.0.0.1:1"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "fluxfill infer: PROMPT: holds U+DCFF at character 6, half of a UTF-16 surrogate pair (a character "
        "cut in two, or a byte that is not UTF-8): send whole characters"
    )


def test_a_heic_cut_short_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """libheif refuses it with ValueError, which was an "unexpected error" (exit 1 and a log file)."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(buffer, format="HEIF")
    photo = tmp_path / "photo.heic"
    photo.write_bytes(buffer.getvalue()[:-10])  # its pixel data cut short, as by a failed transfer

    argv = ["infer", str(photo), "1,1,2,2", "--output", str(tmp_path / "out.png"), "--url", "127.0.0.1:1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fluxfill infer: {photo}: not a readable image (")
    assert len(err.splitlines()) == 1


def test_the_entry_points_exit_code_for_a_ctrl_c_is_the_command_lines() -> None:
    assert launch.EXIT_STOPPED == EXIT_STOPPED


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["fluxfill", "submit", "photo.jpg", "1,1,2,2"], "fluxfill submit: interrupted (Ctrl-C)"),
        (["fluxfill", "weights-digest", "w.safetensors"], "fluxfill weights-digest: interrupted (Ctrl-C)"),
        (["fluxfill", "--version"], "fluxfill: interrupted (Ctrl-C)"),
        (["fluxfill"], "fluxfill: interrupted (Ctrl-C)"),
    ],
)
def test_a_ctrl_c_before_the_command_line_takes_over_names_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], line: str
) -> None:
    """It said "fluxfill: interrupted" whatever the command, where the command's own lines name it."""

    def interrupted() -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "main", interrupted)
    monkeypatch.setattr(sys, "argv", argv)
    assert launch.main() == EXIT_STOPPED
    assert capsys.readouterr().err == line + "\n"
