"""Run as pid 1 of a new pid namespace (tests/unit/client/test_process_groups.py): recycle a reaped group
leader's pid for another group on purpose, with `ns_last_pid`, then try each way of ending the old group.

Prints one JSON object: what the kernel did and what survived."""

import json
import signal
import subprocess
import sys
from pathlib import Path

from fluxfill.client.process_groups import end_group, exit_status, group_members, signal_group, stop_group

NEXT_PID = Path("/proc/sys/kernel/ns_last_pid")
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
EXITER = [sys.executable, "-c", "pass"]


def started_with_pid(pid: int, argv: list[str]) -> subprocess.Popen[bytes]:
    """A new session (a group of its own, as the project starts its servers) whose leader asks for `pid`."""
    NEXT_PID.write_text(str(pid - 1))
    return subprocess.Popen(argv, start_new_session=True)


def main() -> None:
    report: dict[str, object] = {}
    # A leader that exits and is reaped (a caller's poll or wait): its pid is free for the next taker.
    old = subprocess.Popen(EXITER, start_new_session=True)
    old.wait()
    stranger = started_with_pid(old.pid, SLEEPER)
    report["reused"] = stranger.pid == old.pid
    report["stranger_in_old_group"] = group_members(old.pid) == [stranger.pid]
    end_group(old, timeout_s=1.0)
    signal_group(old, signal.SIGKILL)
    stop_group(old, name="old", grace_s=0.5, kill_after_s=1.0)
    report["stranger_alive"] = exit_status(stranger, timeout_s=0.5) is None
    stranger.kill()
    stranger.wait()

    # A leader that exited and is not reaped yet (what exit_status leaves): its pid is still held.
    zombie = subprocess.Popen(EXITER, start_new_session=True)
    report["zombie_status"] = exit_status(zombie, timeout_s=10.0)
    other = started_with_pid(zombie.pid, SLEEPER)
    report["zombie_pid_reused"] = other.pid == zombie.pid
    end_group(zombie, timeout_s=1.0)
    report["other_alive"] = exit_status(other, timeout_s=0.5) is None
    other.kill()
    other.wait()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
