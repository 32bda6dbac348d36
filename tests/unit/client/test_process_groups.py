"""Ending the process groups the project starts, without reaching anyone else's."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fluxfill.client.process_groups import end_group, exit_status, group_members, signal_group, stop_group
from tests.support import REPO_ROOT

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
# Leaves a child in its group, then exits: a server that died and left its stubs running.
LEAVES_A_CHILD = [
    sys.executable,
    "-c",
    "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    "time.sleep(0.2); sys.exit(5)",
]


def state(pid: int) -> str:
    """The process's state letter from /proc (Z: exited, not reaped)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def test_exit_status_leaves_the_process_unreaped_so_its_id_stays_ours() -> None:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], start_new_session=True)
    assert exit_status(process, timeout_s=30) == 3
    assert state(process.pid) == "Z"
    assert process.returncode is None
    assert end_group(process, timeout_s=1.0) == []
    assert process.returncode == 3
    assert exit_status(process) == 3


def test_exit_status_says_which_signal_ended_it_and_none_while_it_runs() -> None:
    process = subprocess.Popen(SLEEPER, start_new_session=True)
    try:
        assert exit_status(process, timeout_s=0.1) is None
        os.kill(process.pid, signal.SIGKILL)
        assert exit_status(process, timeout_s=30) == -signal.SIGKILL
    finally:
        end_group(process, timeout_s=1.0)


def test_a_leader_that_exited_still_has_its_left_children_ended() -> None:
    leader = subprocess.Popen(LEAVES_A_CHILD, start_new_session=True)
    assert exit_status(leader, timeout_s=30) == 5
    left = group_members(leader.pid)
    assert len(left) == 1, "its child outlives it, in its group"
    assert end_group(leader, timeout_s=2.0) == []
    assert leader.returncode == 5
    assert not Path(f"/proc/{left[0]}").exists() or state(left[0]) == "Z"


def test_stop_group_asks_the_leader_first_then_ends_the_group() -> None:
    # Ignores SIGTERM: the grace runs out, then the group is ended with SIGKILL.
    stubborn = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready', flush=True); time.sleep(60)"]  # fmt: skip
    process = subprocess.Popen(stubborn, start_new_session=True, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    assert stop_group(process, name="stubborn", grace_s=0.3, kill_after_s=1.0) == []
    assert process.returncode == -signal.SIGKILL
    process.stdout.close()


def test_a_reaped_leaders_group_is_never_signalled() -> None:
    process = subprocess.Popen(LEAVES_A_CHILD, start_new_session=True)
    process.wait()  # reaped by a caller: from here its number may be handed to another group
    left = group_members(process.pid)
    try:
        signal_group(process, signal.SIGKILL)
        assert end_group(process, timeout_s=1.0) == left
        assert group_members(process.pid) == left, "nothing signalled"
    finally:
        for pid in left:
            os.kill(pid, signal.SIGKILL)


def _new_pid_namespace() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare (util-linux) to make a pid namespace")
    for argv in ([unshare, "--pid", "--fork", "--mount-proc"], [unshare, "-Urpf", "--mount-proc"]):
        if subprocess.run([*argv, "true"], capture_output=True, check=False).returncode == 0:
            return argv
    pytest.skip("this machine lets no pid namespace be made here")


def test_a_recycled_group_id_reaches_nobody_else() -> None:
    """The production of this defect: pid_max is 32768 here and a test run wraps it in minutes; a group ended
    by the number of a leader reaped minutes before reached another worker's session tritonserver. Here the
    recycling is made on purpose, in a pid namespace of its own."""
    result = subprocess.run(
        [*_new_pid_namespace(), sys.executable, "-m", "tests.unit.client.group_id_reuse"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["reused"], "the old leader's number was handed to the stranger"
    assert report["stranger_in_old_group"], "the old number names the stranger's group"
    assert report["stranger_alive"], "ending, signalling or stopping the old group killed the stranger"
    assert report["zombie_status"] == 0
    assert not report["zombie_pid_reused"], "an unreaped leader's number is held"
    assert report["other_alive"]
