"""The forwarding side channel: a private directory per server, no links followed, nothing left behind."""

import os
from pathlib import Path

import pytest

from fluxfill.inpaint import forwarding


@pytest.fixture
def channel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "forwarding"
    monkeypatch.setenv("FLUXFILL_FORWARDING_DIR", str(directory))
    return directory


def test_the_default_directory_is_per_server_and_per_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLUXFILL_FORWARDING_DIR", raising=False)
    name = forwarding.channel_dir().name
    assert name == f"fluxfill-forwarding-{os.getuid()}-{os.getppid()}"


def test_the_directory_is_made_private(channel: Path) -> None:
    channel.mkdir(mode=0o755)
    channel.chmod(0o755)  # as a shared temp folder would be
    run = forwarding.new_forwarded_id()
    forwarding.open_run(run)
    assert channel.stat().st_mode & 0o777 == 0o700
    assert (channel / f"{run}.pending").stat().st_mode & 0o777 == 0o600
    forwarding.clear(run)
    assert list(channel.iterdir()) == []


def test_a_linked_directory_is_refused(channel: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    channel.symlink_to(elsewhere)
    with pytest.raises(forwarding.ForwardingDirError):
        forwarding.open_run(forwarding.new_forwarded_id())


def test_links_planted_where_our_files_go_are_not_followed(channel: Path, tmp_path: Path) -> None:
    run = forwarding.new_forwarded_id()
    forwarding.open_run(run)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (channel / f"{run}.error").symlink_to(victim)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        forwarding.record_error(run, "INTERNAL", "boom")
    assert victim.read_text() == "precious"
    assert forwarding.take_error(run) is None, "a link is not read as our error file"
    forwarding.clear(run)
    assert victim.exists()


def test_only_runs_the_forwarder_opened_record_errors(channel: Path) -> None:
    lookalike = forwarding.new_forwarded_id()  # a direct caller can send any request id
    forwarding.record_error(lookalike, "INVALID_ARG", "bad")
    forwarding.request_cancel(lookalike)
    assert not channel.exists() or list(channel.iterdir()) == []
    opened = forwarding.new_forwarded_id()
    forwarding.open_run(opened)
    forwarding.record_error(opened, "INVALID_ARG", "bad")
    assert forwarding.take_error(opened) == ("INVALID_ARG", "bad")
    forwarding.clear(opened)
    assert list(channel.iterdir()) == []


def test_ids_not_of_the_forwarders_form_never_name_files(channel: Path) -> None:
    for hostile in ("../../etc/passwd", "fwd-../x", "x" * 300):
        forwarding.open_run(hostile)
        forwarding.record_error(hostile, "INTERNAL", "x")
        assert forwarding.take_error(hostile) is None
    assert not channel.exists() or list(channel.iterdir()) == []
